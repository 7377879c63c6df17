"""Training speed of the CPU recipe's model (configs/cpu_recipe.yaml: tiny sizes, all five decoders)
with the tiny preset's 64 px mask decoder against the same model decoding masks at the scene's 128 px.

Both are built from the same seed and stepped (stage 2: forward, backward, Adam, one thread) on the
same synthetic rows in the same process; the 64 px decoder learns the 128 px targets pooled 2x2.
Prints samples/s of each and the ratio 64 / 128.

    .venv/bin/python bench/mask_size_speed.py [--steps 10] [--warmup 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from recipe_speed import train_rate  # bench/: the recipe benchmark's stage-2 step timing

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cpu_recipe.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from sgvla.dataset.synthetic import write_synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp:
        data = write_synthetic_dataset(Path(tmp) / "data", episodes={"train": [32] * 8})
        rates = {size: train_rate(CONFIG, data, args.steps, warmup=args.warmup,
                                  overrides=(f"model.extra.mask_size={size}",)) for size in (64, 128)}
    print(", ".join(f"mask_size {k}: {v:.1f} samples/s" for k, v in rates.items()))
    print(f"\ncpu_recipe training step (stage 2, all five decoders, one thread), mask_size 64 / 128: "
          f"{rates[64] / rates[128]:.2f}x samples/s")


if __name__ == "__main__":
    main()
