"""SG-VLA configuration: the towers, the LLM and everything SG-VLA adds on top.

`SGVLAConfig` is a transformers `PreTrainedConfig` with three sub-configs (DINOv2-with-registers,
SigLIP vision, Qwen2) plus the fields that describe the inputs (views, history, image size), the
action space (13-D, 255 bins, chunk of 8 for the flow expert), the auxiliary decoders and the
dataset's action statistics. Everything that changes the meaning of a checkpoint lives here, so
`config.json` alone says how to feed and decode a saved model.
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from sgvla.errors import SgvlaError
from sgvla.model.action_tokenizer import ACTION_TOKEN_LAYOUTS, ActionTokenizer
from sgvla.vocab import AUX_NAMES, VIEWS, mask_cameras

#: How action tokens are turned into actions at inference (`SGVLAConfig.token_decoding`).
TOKEN_DECODINGS: tuple[str, ...] = ("greedy", "expected")
#: Paper, Sec. 6.1: lambda_pos 1, lambda_grasp 5, lambda_qpos 1, lambda_obj 1, lambda_seg 1.
PAPER_AUX_WEIGHTS: dict[str, float] = {"global_pos": 1.0, "grasp": 5.0, "obj_pose": 1.0, "qpos": 1.0, "mask": 1.0}
#: Paper, Sec. 6.4: the flow expert helps pick/place, discrete tokens are better for open/close.
DEFAULT_SUBTASK_MODES: dict[str, str] = {"pick": "flow", "place": "flow", "open": "tokens", "close": "tokens"}
ACTION_MODES: tuple[str, ...] = ("tokens", "flow")
#: Hub ids of the paper's components (used by `load_components` and the CLI's defaults).
HUB_COMPONENTS: dict[str, str] = {
    "dino": "facebook/dinov2-with-registers-large",
    "siglip": "google/siglip-so400m-patch14-224",
    "llm": "Qwen/Qwen2.5-0.5B",
}
#: MiniVLA's Qwen system prompt (the base VLM was trained with it).
QWEN_SYSTEM_PROMPT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
PROMPT_TEMPLATE = "What action should the robot take to {instruction}?"

PRESETS: tuple[str, ...] = ("tiny", "sgvla-1.3b")

# Sub-config sizes of the presets. The 1.3b numbers are the public configs of the Hub ids above
# (DINOv2 is kept at 224 px: its 518-px position grid is resampled once in `load_components`).
_PRESET_SUBCONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "dino_config": dict(model_type="dinov2_with_registers", hidden_size=32, num_hidden_layers=3,
                            num_attention_heads=2, mlp_ratio=2, patch_size=14, image_size=56,
                            num_register_tokens=4, layerscale_value=1e-5),
        "siglip_config": dict(model_type="siglip_vision_model", hidden_size=48, intermediate_size=96,
                              num_hidden_layers=3, num_attention_heads=2, patch_size=14, image_size=56,
                              vision_use_head=False),
        "text_config": dict(model_type="qwen2", vocab_size=640, hidden_size=64, intermediate_size=128,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=2048, tie_word_embeddings=True, rope_theta=1e6,
                            rms_norm_eps=1e-6, pad_token_id=256, eos_token_id=256, bos_token_id=None),
    },
    "sgvla-1.3b": {
        "dino_config": dict(model_type="dinov2_with_registers", hidden_size=1024, num_hidden_layers=24,
                            num_attention_heads=16, mlp_ratio=4, patch_size=14, image_size=224,
                            num_register_tokens=4, layerscale_value=1.0, layer_norm_eps=1e-6),
        "siglip_config": dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304,
                              num_hidden_layers=27, num_attention_heads=16, patch_size=14, image_size=224,
                              layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh", vision_use_head=False),
        "text_config": dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                            num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                            max_position_embeddings=32768, tie_word_embeddings=True, rope_theta=1e6,
                            rms_norm_eps=1e-6, pad_token_id=151643, eos_token_id=151643,
                            bos_token_id=151643, use_sliding_window=False),
    },
}
_PRESET_FIELDS: dict[str, dict[str, Any]] = {
    # mask_size 64: the 4x4 patch grid upsampled 16x; at the scene's 128 px the mask decoder was half
    # of a tiny training step with every decoder on (docs/results.md, Speed)
    "tiny": dict(image_size=56, aux_hidden_size=32, qpos_heads=2, mask_channels=16, mask_size=64,
                 expert_hidden_size=32, expert_intermediate_size=64),
    "sgvla-1.3b": dict(image_size=224, aux_hidden_size=512, qpos_heads=8, mask_channels=256,
                       expert_hidden_size=512, expert_intermediate_size=2048),
}


class SGVLAConfig(PreTrainedConfig):
    """Configuration of `SGVLAForActionPrediction`.

    Inputs: `views` (ordered subset of `VIEWS`), `history` (k previous frames besides the current
    one), `image_size`. Pixel tensors hold V = (history + 1) * len(views) images, frame-major (all
    views of frame t-k, ..., all views of frame t), views in this order. `crop_area` < 1: the
    towers see that fraction of each view, a random square per sample and camera in training and the
    centre one otherwise (MiniVLA's `image_aug` crop, 0.9 there; `transforms.CropBoxes`); 1 = whole
    views, no augmentation (default, the paper's).
    Actions: `action_dim` dims, each discretised into `n_action_bins` bins on [-1, 1] and mapped to
    the token ids `action_token_begin ...+n_action_bins-1` (the tokenizer's `<|extra_i|>`; set
    from the tokenizer when the model is built, then saved with the checkpoint).
    `action_token_layout`: "sgvla" (bin i is `action_token_begin + i`) or "minivla" (MiniVLA's
    reversed ids plus one for an action of exactly +1; for checkpoints from `sgvla import-minivla`).
    `token_chunk` K: the action tokens encode the next K actions (K x `action_dim` tokens), all K
    executed before the next query; 1 (default) is the paper's single-step tokens (OpenVLA/MiniVLA),
    K > 1 MiniVLA's action chunking in token space.
    `token_decoding`: how action tokens become actions at inference: "greedy" (each dimension's most
    likely bin, the paper's) or "expected" (each dimension's bin centres weighted by their
    probabilities, the greedy token still conditioning the next; docs/results.md section 3, fourth
    round: better closed loop at CPU-scale data). Training is the same for both.
    Flow expert: `use_flow_expert`, `chunk_size` H, `flow_steps` Euler steps, `execute_steps` of the
    chunk run open-loop; expert width `expert_hidden_size` with the LLM's depth and head geometry.
    `flow_samples` K: the flow loss draws K (noise, time) pairs per sample and averages them, all on
    the one prefix pass (pi0 draws one); the expert's gradient is then less noisy for almost no extra
    cost when the VLM dominates a step (docs/results.md, section 1: the flow half of the check).
    Auxiliary decoders: `aux_decoders` (subset of `AUX_NAMES`), `aux_weights`, `aux_detach` (decoders
    that read detached LLM features: stage 1 of the paper).
    `subtask_modes`: "tokens" or "flow" per subtask for `predict_action(mode="auto")`.
    `action_stats`: the dataset's meta/stats.json "action" entry (q01/q99 used to un-normalise).
    """

    model_type = "sgvla"
    sub_configs_defaults = {
        "dino_config": SubConfigSpec(config_class=AutoConfig, model_type="dinov2_with_registers"),
        "siglip_config": SubConfigSpec(config_class=AutoConfig, model_type="siglip_vision_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2"),
    }

    dino_config: dict | PreTrainedConfig | None = None
    siglip_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None

    views: list[str] | None = None
    history: int = 0
    image_size: int = 224
    crop_area: float = 1.0
    action_dim: int = 13
    n_action_bins: int = 255  # odd: 0 is a bin centre, so "hold still" decodes to exactly 0
    action_token_begin: int | None = None
    action_token_layout: str = "sgvla"  # or "minivla": see sgvla.model.action_tokenizer
    token_chunk: int = 1
    token_decoding: str = "greedy"
    chunk_size: int = 8
    flow_steps: int = 10
    execute_steps: int = 2
    use_flow_expert: bool = True
    expert_hidden_size: int = 512
    expert_intermediate_size: int = 2048
    flow_weight: float = 1.0
    flow_time_beta: list[float] | None = None
    flow_samples: int = 1
    aux_decoders: list[str] | None = None
    aux_weights: dict[str, float] | None = None
    aux_detach: list[str] | None = None
    aux_hidden_size: int = 512
    qpos_dim: int = 12
    qpos_layers: int = 2
    qpos_heads: int = 8
    mask_size: int = 128
    mask_channels: int = 256
    projector_hidden_size: int | None = None
    subtask_modes: dict[str, str] | None = None
    action_stats: dict[str, list[float]] | None = None
    system_prompt: str = QWEN_SYSTEM_PROMPT
    prompt_template: str = PROMPT_TEMPLATE
    built_from: dict[str, str] | None = None  # provenance: {"preset": name} or the parts load_components loaded

    def __post_init__(self, **kwargs):
        if self.views is None:
            self.views = list(VIEWS)
        if self.aux_decoders is None:
            self.aux_decoders = list(AUX_NAMES)
        if self.aux_weights is None:
            self.aux_weights = dict(PAPER_AUX_WEIGHTS)
        if self.aux_detach is None:
            self.aux_detach = []
        if self.subtask_modes is None:
            self.subtask_modes = dict(DEFAULT_SUBTASK_MODES)
        if self.flow_time_beta is None:
            self.flow_time_beta = [1.5, 1.0]
        self.views = list(self.views)
        self.aux_decoders = list(self.aux_decoders)
        self.aux_detach = list(self.aux_detach)
        self.aux_weights = {**PAPER_AUX_WEIGHTS, **dict(self.aux_weights)}
        super().__post_init__(**kwargs)
        self.validate_sgvla()

    # -- validation -------------------------------------------------------------------------
    def validate_sgvla(self) -> None:
        """Raise SgvlaError for settings that cannot work, before any weight is built."""
        bad = [v for v in self.views if v not in VIEWS]
        if bad or not self.views or len(set(self.views)) != len(self.views):
            raise SgvlaError(f"config views={self.views} is invalid: give a non-empty list of distinct names "
                             f"from {', '.join(VIEWS)}")
        if not 0.25 <= self.crop_area <= 1.0:
            raise SgvlaError(f"config crop_area={self.crop_area!r} must be in [0.25, 1] (fraction of each view's "
                             "area the towers see; 1 = no crop, MiniVLA's augmentation uses 0.9)")
        if not isinstance(self.history, int) or self.history < 0:
            raise SgvlaError(f"config history={self.history!r} must be an integer >= 0 (previous frames)")
        for key in ("aux_decoders", "aux_detach"):
            unknown = [n for n in getattr(self, key) if n not in AUX_NAMES]
            if unknown:
                raise SgvlaError(f"config {key} has unknown decoder(s) {unknown}: choose from "
                                 f"{', '.join(AUX_NAMES)}")
        if "mask" in self.aux_decoders and not self.mask_cameras:
            raise SgvlaError("config aux_decoders has 'mask' but views has no head or hand view: add a view "
                             "or drop the mask decoder")
        for sub, mode in self.subtask_modes.items():
            if mode not in ACTION_MODES:
                raise SgvlaError(f"config subtask_modes[{sub!r}]={mode!r}: use 'tokens' or 'flow'")
        patch = self.dino_config.patch_size
        if self.siglip_config.patch_size != patch or self.image_size % patch:
            raise SgvlaError(f"config image_size={self.image_size} must be a multiple of both towers' patch "
                             f"size (dino {patch}, siglip {self.siglip_config.patch_size})")
        if self.siglip_config.image_size != self.image_size:
            raise SgvlaError(f"siglip_config.image_size={self.siglip_config.image_size} differs from "
                             f"image_size={self.image_size}: use a SigLIP tower made for {self.image_size} px")
        if not 1 <= self.token_chunk <= self.chunk_size:
            raise SgvlaError(f"config token_chunk={self.token_chunk} must be in 1..chunk_size ({self.chunk_size}): "
                             "the data pipeline provides chunk_size future actions")
        if self.token_decoding not in TOKEN_DECODINGS:
            raise SgvlaError(f"config token_decoding={self.token_decoding!r}: use one of {', '.join(TOKEN_DECODINGS)}")
        if not isinstance(self.flow_samples, int) or self.flow_samples < 1:
            raise SgvlaError(f"config flow_samples={self.flow_samples!r} must be an integer >= 1 (noise draws "
                             "per sample in the flow loss)")
        if self.execute_steps < 1 or self.execute_steps > self.chunk_size:
            raise SgvlaError(f"config execute_steps={self.execute_steps} must be in 1..chunk_size "
                             f"({self.chunk_size})")
        if self.action_stats is not None:
            for key in ("q01", "q99"):
                if len(self.action_stats.get(key, [])) != self.action_dim:
                    raise SgvlaError(f"config action_stats[{key!r}] must hold {self.action_dim} values (the "
                                     "dataset's meta/stats.json 'action' entry)")
        if self.action_token_layout not in ACTION_TOKEN_LAYOUTS:
            raise SgvlaError(f"config action_token_layout={self.action_token_layout!r}: use one of "
                             f"{', '.join(ACTION_TOKEN_LAYOUTS)}")
        begin = self.action_token_begin
        n_ids = ActionTokenizer.n_ids(self.n_action_bins, self.action_token_layout)
        if begin is not None and begin + n_ids > self.text_config.vocab_size:
            raise SgvlaError(f"action tokens {begin}..{begin + n_ids - 1} do not fit the LLM "
                             f"vocabulary of {self.text_config.vocab_size} rows: resize the embeddings")

    # -- derived sizes ----------------------------------------------------------------------
    @property
    def n_action_tokens(self) -> int:
        """Action tokens in one answer (K actions of `action_dim` tokens)."""
        return self.token_chunk * self.action_dim

    @property
    def n_frames(self) -> int:
        return self.history + 1

    @property
    def n_images(self) -> int:
        """V: images per sample, (history + 1) * len(views)."""
        return self.n_frames * len(self.views)

    @property
    def pixel_shape(self) -> tuple[int, int, int, int]:
        """Per-sample shape of each tower's pixel tensor: (V, 3, image_size, image_size)."""
        return (self.n_images, 3, self.image_size, self.image_size)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.dino_config.patch_size

    @property
    def patches_per_image(self) -> int:
        return self.grid_size**2

    @property
    def n_image_tokens(self) -> int:
        return self.n_images * self.patches_per_image

    @property
    def vision_dim(self) -> int:
        """Channels of the fused per-patch feature (DINO width + SigLIP width)."""
        return self.dino_config.hidden_size + self.siglip_config.hidden_size

    @property
    def mask_cameras(self) -> tuple[str, ...]:
        """Cameras with at least one view: those whose target mask the mask decoder predicts."""
        return mask_cameras(self.views)

    def image_index(self, frame: int, view: str) -> int:
        """Position of (frame, view) among the V images; frame 0 is the oldest, `history` the current."""
        return frame * len(self.views) + self.views.index(view)

    # -- presets ----------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> SGVLAConfig:
        """Build "tiny" (tests, demo: 56 px, 2-layer LLM) or "sgvla-1.3b" (the paper's sizes).

        Overrides set top-level fields; a dict given for a sub-config (e.g. `text_config={...}`)
        is merged into the preset's sub-config.
        """
        if name not in PRESETS:
            raise SgvlaError(f"unknown model preset {name!r}: choose one of {', '.join(PRESETS)}")
        kwargs: dict[str, Any] = copy.deepcopy(_PRESET_SUBCONFIGS[name])
        kwargs.update(copy.deepcopy(_PRESET_FIELDS[name]))
        for key, value in overrides.items():
            if key in _PRESET_SUBCONFIGS[name] and isinstance(value, dict):
                kwargs[key] = {**kwargs[key], **value}
            else:
                kwargs[key] = value
        if "image_size" in overrides:
            for sub in ("dino_config", "siglip_config"):
                if isinstance(kwargs[sub], dict):
                    kwargs[sub]["image_size"] = overrides["image_size"]
        kwargs.setdefault("built_from", {"preset": name})
        return cls(**kwargs)
