"""sgvla.model: the SG-VLA policy (configuration, model, processor, action tokens, decoders, expert).

Importing this package registers the "sgvla" model type with transformers' Auto classes, so
`AutoConfig`/`AutoModel`/`AutoProcessor` can open a saved SG-VLA folder:

    import sgvla.model
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained("runs/tiny/model")   # an SGVLAProcessor
    model, processor = sgvla.model.load_policy("runs/tiny/model")  # strict: nothing re-initialised
"""

from transformers import AutoConfig, AutoModel, AutoProcessor

from sgvla.model.action_tokenizer import ActionTokenizer
from sgvla.model.configuration_sgvla import (
    DEFAULT_SUBTASK_MODES,
    HUB_COMPONENTS,
    PAPER_AUX_WEIGHTS,
    PRESETS,
    SGVLAConfig,
)
from sgvla.model.loading import load_components, load_model, load_policy, load_processor, save_policy
from sgvla.model.modeling_sgvla import ActionPrediction, SGVLAForActionPrediction, SGVLAOutput
from sgvla.model.processing_sgvla import SGVLAProcessor, build_byte_tokenizer, byte_tokenizer_action_begin

AutoConfig.register(SGVLAConfig.model_type, SGVLAConfig, exist_ok=True)
AutoModel.register(SGVLAConfig, SGVLAForActionPrediction, exist_ok=True)
AutoProcessor.register(SGVLAConfig, SGVLAProcessor, exist_ok=True)

__all__ = [
    "DEFAULT_SUBTASK_MODES", "HUB_COMPONENTS", "PAPER_AUX_WEIGHTS", "PRESETS", "ActionPrediction", "ActionTokenizer",
    "SGVLAConfig", "SGVLAForActionPrediction", "SGVLAOutput", "SGVLAProcessor", "build_byte_tokenizer",
    "byte_tokenizer_action_begin",
    "load_components", "load_model", "load_policy", "load_processor", "save_policy",
]
