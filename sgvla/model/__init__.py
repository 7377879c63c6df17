"""sgvla.model: the SG-VLA policy (configuration, model, processor, action tokens, decoders, expert).

Importing this package registers the "sgvla" model type with transformers' Auto classes, so
`AutoConfig`/`AutoModel`/`AutoTokenizer` can open a saved SG-VLA folder.
"""

from transformers import AutoConfig, AutoModel

from sgvla.model.action_tokenizer import ActionTokenizer
from sgvla.model.configuration_sgvla import (
    DEFAULT_SUBTASK_MODES,
    HUB_COMPONENTS,
    PAPER_AUX_WEIGHTS,
    PRESETS,
    SGVLAConfig,
)
from sgvla.model.modeling_sgvla import ActionPrediction, SGVLAForActionPrediction, SGVLAOutput
from sgvla.model.processing_sgvla import SGVLAProcessor, build_byte_tokenizer

AutoConfig.register(SGVLAConfig.model_type, SGVLAConfig, exist_ok=True)
AutoModel.register(SGVLAConfig, SGVLAForActionPrediction, exist_ok=True)

__all__ = [
    "DEFAULT_SUBTASK_MODES", "HUB_COMPONENTS", "PAPER_AUX_WEIGHTS", "PRESETS", "ActionPrediction", "ActionTokenizer",
    "SGVLAConfig", "SGVLAForActionPrediction", "SGVLAOutput", "SGVLAProcessor", "build_byte_tokenizer",
]
