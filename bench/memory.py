"""Training memory of the paper-size model per sample, and the micro-batch that fits on 80 GB.

Measured rather than estimated from formulas: the full-width sgvla-1.3b model (random weights,
nothing downloaded) is built at reduced depth, and one stage-2 forward (action + decoder losses)
under bf16 autocast records the bytes of every tensor autograd saves for backward
(`torch.autograd.graph.saved_tensors_hooks`), attributed to the DINOv2 tower, the SigLIP tower, the
LLM or the rest (projector, decoders, heads). Two depths and two micro-batches separate a block's
activations per sample from what every step holds once (e.g. bf16 copies of the weights), and the
per-block figures are extrapolated to the full depths (23 DINOv2 blocks, 26 SigLIP, 24 Qwen2).

With activation checkpointing only the blocks' inputs stay saved, and the backward pass holds one
block's full activations again while recomputing it. Static memory is counted from the parameters:
fp32 weights, fp32 gradients and two fp32 Adam moments, 16 bytes per trainable parameter (DDP: every
GPU holds all of it; FSDP divides it by the world size). The printed ratio is activation memory with
checkpointing against without (the baseline), from the same measurement.

Attention runs through PyTorch's SDPA as on a GPU; the GPU's flash kernels may save less than the
CPU's, so the figures are an upper bound there. Not yet checked against `torch.cuda.max_memory_allocated`
on a GPU (none was available when this was written).

    .venv/bin/python bench/memory.py [--gpu-gb 80] [--headroom 0.9] [--configs configs/table3_*.yaml]
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sgvla.model import SGVLAConfig, SGVLAForActionPrediction, SGVLAProcessor  # noqa: E402
from sgvla.train.config import load_config  # noqa: E402
from sgvla.train.modelops import enable_gradient_checkpointing  # noqa: E402
from sgvla.transforms import raw_frames  # noqa: E402
from sgvla.vocab import view_kind  # noqa: E402

PARTS = ("dino", "siglip", "llm", "rest")
FULL_BLOCKS = {"dino": 23, "siglip": 26, "llm": 24}  # blocks run: each tower one short (vision.py)
SHORT = (1, 2)  # blocks per part in the two reduced-depth models
STATS = {k: [v] * 13 for k, v in (("q01", -1.0), ("q99", 1.0), ("mean", 0.0), ("std", 1.0),
                                   ("min", -1.0), ("max", 1.0))}


def reduced(overrides: dict, blocks: int) -> SGVLAConfig:
    layers = {"dino_config": {"num_hidden_layers": blocks + 1}, "siglip_config": {"num_hidden_layers": blocks + 1},
              "text_config": {"num_hidden_layers": blocks}}
    return SGVLAConfig.from_preset("sgvla-1.3b", **overrides, **layers, action_stats=STATS)


def random_frame(views, g: np.random.Generator, size: int = 128) -> dict[str, np.ndarray]:
    """Raw frames as the dataset stores them (128 px; the model resizes on its device)."""
    return {v: g.integers(0, 256, (size, size, 3), dtype=np.uint8) if view_kind(v) == "rgb"
            else g.integers(0, 5000, (size, size), dtype=np.uint16) for v in views}


def sample(config: SGVLAConfig, i: int) -> dict:
    g = np.random.default_rng(i)
    h = config.chunk_size
    quat = g.normal(size=4)
    return {
        "pixel_values": raw_frames([random_frame(config.views, g)] * (config.history + 1), config.views),
        "instruction": "pick up the red bowl from the kitchen counter",
        "subtask": "pick",
        "action": g.uniform(-1, 1, 13).astype(np.float32),
        "action_chunk": g.uniform(-1, 1, (h, 13)).astype(np.float32),
        "action_chunk_pad": np.zeros(h, dtype=bool),
        "aux": {"global_pos": g.normal(size=2).astype(np.float32), "grasp": np.float32(1),
                "obj_pose": np.concatenate([g.normal(size=3), quat / np.linalg.norm(quat)]).astype(np.float32),
                "qpos": g.normal(size=12).astype(np.float32),
                "head_mask": g.random((128, 128)) > 0.8,
                "hand_mask": g.random((128, 128)) > 0.8},
        "aux_valid": {k: True for k in ("global_pos", "grasp", "obj_pose", "qpos", "head_mask", "hand_mask")},
    }


class SavedBytes:
    """Bytes autograd saves for backward during a forward, per model part (parameters excluded)."""

    def __init__(self, model: SGVLAForActionPrediction):
        self.part = "rest"
        self.bytes = dict.fromkeys(PARTS, 0)
        self.seen: set[int] = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.handles = []
        for name, module in (("dino", model.vision.dino), ("siglip", model.vision.siglip), ("llm", model.llm.model)):
            self.handles.append(module.register_forward_pre_hook(lambda *_, n=name: self._enter(n)))
            self.handles.append(module.register_forward_hook(lambda *_: self._enter("rest")))

    def _enter(self, name: str) -> None:
        self.part = name

    def pack(self, t: torch.Tensor):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in self.seen:
            self.seen.add(ptr)
            self.bytes[self.part] += t.untyped_storage().nbytes()
        return t

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def saved_bytes(overrides: dict, blocks: int, batch: int, checkpointing: bool) -> dict[str, int]:
    torch.manual_seed(0)
    model = SGVLAForActionPrediction(reduced(overrides, blocks))
    model.configure_stage(2)
    if checkpointing:
        enable_gradient_checkpointing(model)
    b = SGVLAProcessor.from_config(model.config).collate([sample(model.config, i) for i in range(batch)])
    rec = SavedBytes(model)
    with torch.autograd.graph.saved_tensors_hooks(rec.pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**b)
    del out
    rec.close()
    return rec.bytes


def per_sample(overrides: dict, checkpointing: bool) -> tuple[dict, dict]:
    """(bytes per sample, bytes per step) per part at full depth, from 4 reduced measurements."""
    m = {(k, n): saved_bytes(overrides, k, n, checkpointing) for k in SHORT for n in (1, 2)}
    a, b = SHORT
    per_sample_out, per_step_out = {}, {}
    for part in PARTS:
        s1 = m[(a, 2)][part] - m[(a, 1)][part]          # per sample at depth a
        s2 = m[(b, 2)][part] - m[(b, 1)][part]          # per sample at depth b
        c1 = m[(a, 1)][part] - s1
        c2 = m[(b, 1)][part] - s2
        if part == "rest":
            per_sample_out[part], per_step_out[part] = s2, c2
            continue
        full = FULL_BLOCKS[part]
        per_sample_out[part] = s2 + (s2 - s1) * (full - b)
        per_step_out[part] = c2 + (c2 - c1) * (full - b)
        per_sample_out[part + "_block"] = s2 - s1
    return per_sample_out, per_step_out


def static_bytes(overrides: dict) -> tuple[int, int]:
    """(trainable parameters, total parameters) of the full-size model (built on the meta device)."""
    with torch.device("meta"):
        cfg = SGVLAConfig.from_preset("sgvla-1.3b", **overrides, action_stats=STATS)
        model = SGVLAForActionPrediction(cfg)
    model.configure_stage(2)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def measure_in_subprocess(config: Path) -> tuple:
    """One config's measurements in a fresh process: the allocator of a process that built and freed
    several full-width models keeps their memory, and a 24 GB machine runs out by the third."""
    import json
    import subprocess

    res = subprocess.run([sys.executable, __file__, "--measure", str(config)], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"measuring {config.name} failed:\n{res.stderr[-2000:]}")
    return tuple(json.loads(res.stdout.strip().splitlines()[-1]))


def measure(config: Path) -> tuple:
    over, _, _ = overrides_of(config)
    plain, plain_step = per_sample(over, checkpointing=False)
    ck, ck_step = per_sample(over, checkpointing=True)
    trainable, _ = static_bytes(over)
    return plain, plain_step, ck, ck_step, trainable


def overrides_of(path: Path) -> tuple[dict, int, bool]:
    cfg = load_config(path)
    return cfg.model.preset_overrides(), cfg.train.micro_batch_size, cfg.model.gradient_checkpointing


def fits(budget: float, fixed: float, per: float) -> int:
    return max(0, int((budget - fixed) // per))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu-gb", type=float, default=80.0)
    ap.add_argument("--headroom", type=float, default=0.9, help="Fraction of the GPU the step may use.")
    ap.add_argument("--configs", nargs="*", default=sorted(glob.glob(str(ROOT / "configs" / "table*.yaml"))))
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # internal: one config, JSON out
    args = ap.parse_args()
    if args.measure is not None:
        import json

        print(json.dumps(measure(args.measure)))
        return
    torch.set_num_threads(max(1, torch.get_num_threads()))
    gb = 1024 ** 3
    budget = args.gpu_gb * gb * args.headroom
    cache: dict[str, tuple] = {}
    print(f"budget: {args.headroom:.0%} of {args.gpu_gb:.0f} GB; activations in GB per sample (bf16 autocast); "
          "static = 16 B per trainable parameter (DDP)\n")
    print(f"{'config':<36} {'act/sample':>10} {'ckpt':>6} {'ratio':>6} {'static':>7} "
          f"{'max mb':>7} {'max mb ckpt':>11} {'config mb':>9}  verdict")
    for path in map(Path, args.configs):
        over, micro, ckpt_on = overrides_of(path)
        key = repr([over.get(k) for k in ("views", "history", "aux_decoders", "use_flow_expert")])
        if key not in cache:
            cache[key] = measure_in_subprocess(path)
        plain, plain_step, ck, ck_step, trainable = cache[key]
        act = sum(plain[p] for p in PARTS)
        act_ck = sum(ck[p] for p in PARTS)
        block = max(plain[p + "_block"] for p in FULL_BLOCKS)  # recomputed in backward, per sample
        static = 16 * trainable
        fixed = static + sum(plain_step.values())
        fixed_ck = static + sum(ck_step.values())
        max_plain = fits(budget, fixed, act)
        max_ck = fits(budget, fixed_ck, act_ck + block)
        need = fixed + micro * act if not ckpt_on else fixed_ck + micro * (act_ck + block)
        verdict = "fits" if need <= budget else f"needs {need / gb:.0f} GB"
        print(f"{path.name:<36} {act / gb:>10.2f} {act_ck / gb:>6.2f} {act_ck / act:>6.2f} {static / gb:>6.1f}G "
              f"{max_plain:>7} {max_ck:>11} {micro:>6}{' ck' if ckpt_on else '   '}  {verdict}")
        print(f"{'':<36} per part, no checkpointing: " + ", ".join(f"{p} {plain[p] / gb:.2f}" for p in PARTS))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
