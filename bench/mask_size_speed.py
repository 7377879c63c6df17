"""Training speed of the CPU recipe's model (configs/cpu_recipe.yaml: tiny sizes, all five decoders)
with the tiny preset's 64 px mask decoder against the same model decoding masks at the scene's 128 px.

Both are built from the same seed and stepped (stage 2: forward, backward, Adam, one thread) on the
same synthetic rows in the same process; the 64 px decoder learns the 128 px targets pooled 2x2.
Prints samples/s of each and the ratio 64 / 128.

    .venv/bin/python bench/mask_size_speed.py [--steps 10] [--warmup 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cpu_recipe.yaml"


def rate(data: Path, mask_size: int, steps: int, warmup: int) -> float:
    from torch.utils.data import DataLoader

    from sgvla.train import modelops
    from sgvla.train.config import load_config
    from sgvla.train.preflight import inspect_dataset

    cfg = load_config(CONFIG, ["data.loader_workers=0", f"model.extra.mask_size={mask_size}"])
    info = dataclasses.asdict(inspect_dataset(str(data), cfg, modelops.model_config(cfg)))
    torch.manual_seed(0)
    model, processor = modelops.build_model(cfg, info["stats"])
    ds, _ = modelops.build_dataset(cfg, info, model.config)
    model.configure_stage(2)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    batch = cfg.train.micro_batch_size
    loader = DataLoader(ds, batch_size=batch, shuffle=False, drop_last=True, collate_fn=processor.collate)
    batches = [b for _, b in zip(range(warmup + steps), loader, strict=False)]
    for i, b in enumerate(batches):
        if i == warmup:
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        model(**b).loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from sgvla.dataset.synthetic import write_synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp:
        data = write_synthetic_dataset(Path(tmp) / "data", episodes={"train": [32] * 8})
        rates = {size: rate(data, size, args.steps, args.warmup) for size in (64, 128)}
    print(", ".join(f"mask_size {k}: {v:.1f} samples/s" for k, v in rates.items()))
    print(f"\ncpu_recipe training step (stage 2, all five decoders, one thread), mask_size 64 / 128: "
          f"{rates[64] / rates[128]:.2f}x samples/s")


if __name__ == "__main__":
    main()
