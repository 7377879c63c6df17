"""Cost of crop augmentation (`crop_area` < 1) in a training step, against the same step without it.

Both models are the tiny preset from the same seed, fed the same batch of 16 samples (4 views at
128 px, target masks) shaped like the data pipeline's; a step is forward (action and mask losses)
plus backward. The crop cuts every view and mask in Python per sample and camera, so this checks
that it stays small next to the model. Printed ratio: crop / none (target <= 1.05).

    .venv/bin/python bench/crop_aug.py [--batch 16] [--steps 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from sgvla.model import SGVLAConfig, SGVLAForActionPrediction, SGVLAProcessor
from sgvla.transforms import raw_frames
from sgvla.vocab import view_kind

STATS = {"q01": [-1.0] * 13, "q99": [1.0] * 13}


def batch(config: SGVLAConfig, n: int) -> dict:
    g = np.random.default_rng(0)
    samples = []
    for _ in range(n):
        frame = {v: g.integers(0, 256, (128, 128, 3), dtype=np.uint8) if view_kind(v) == "rgb"
                 else g.integers(0, 5000, (128, 128), dtype=np.uint16) for v in config.views}
        samples.append({
            "pixel_values": raw_frames([frame], config.views), "instruction": "close the drawer",
            "subtask": "close", "action": g.uniform(-1, 1, 13).astype(np.float32),
            "aux": {f"{c}_mask": g.random((128, 128)) > 0.8 for c in ("head", "hand")},
            "aux_valid": {"head_mask": True, "hand_mask": True},
        })
    return SGVLAProcessor.from_config(config).collate(samples)


def step_seconds(model: SGVLAForActionPrediction, inputs: dict, steps: int) -> float:
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        model(**inputs, compute=["action", "mask"]).loss.backward()
    return (time.perf_counter() - start) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(2)
    models = {}
    for name, area in (("none", 1.0), ("crop", 0.9)):
        torch.manual_seed(0)
        models[name] = SGVLAForActionPrediction(SGVLAConfig.from_preset("tiny", crop_area=area, action_stats=STATS))
    inputs = batch(models["none"].config, args.batch)
    for m in models.values():
        step_seconds(m, inputs, 2)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.rounds):  # interleaved, so machine noise hits both alike
        for name, m in models.items():
            times[name].append(step_seconds(m, inputs, args.steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, t in med.items():
        print(f"{name:5s} {1000 * t:7.1f} ms/step  {args.batch / t:6.1f} samples/s")
    print(f"crop / none: {med['crop'] / med['none']:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
