"""Training throughput: one Ray Train worker vs a bare PyTorch loop, and 2 workers vs 1.

All runs use the same tiny model, the same dataset rows, DataLoader settings, micro batch,
gradient accumulation and Adam, and count only steady-state steps (after `--warmup`):

* bare: a single process, `for batches: forward, backward, step` (nothing else);
* ray x1: `sgvla train` (run_train) with 1 worker;
* ray x2: the same global batch over 2 workers (DDP over gloo).

Every process computes with one thread (the worker sets torch's threads to
train.cpus_per_worker=1; Ray Train alone leaves torch's pool spanning the machine), so "2 workers
vs 1" is two processes against one on the same cores.

Samples/s of the Ray runs come from the timestamps of their metrics.jsonl records, so they include
everything the trainer does per step (metrics reduction, logging, progress bar), but not Ray's
start-up. Printed as ratios: ray x1 / bare (target >= 0.9) and ray x2 / ray x1.

With a GPU (`--full-size`), also the full-size sgvla-1.3b model (random init, nothing
downloaded): samples/s and peak memory of a bare bf16-autocast training step at batch 32.

    .venv/bin/python bench/train_step.py [--steps 30] [--warmup 5] [--micro 8] [--full-size]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def overrides(args, workers: int) -> list[str]:
    # global batch = 2 micro batches: 1 worker accumulates 2, 2 workers take one each
    return [f"train.global_batch_size={2 * args.micro}", f"train.micro_batch_size={args.micro}",
            "train.checkpoint_every=0", "train.cpus_per_worker=1", "stage1.epochs=0",
            "stage2.epochs=100", f"stage2.max_steps={args.warmup + args.steps}", "stage3.epochs=0",
            f"data.loader_workers={args.loader_workers}", "model.use_flow_expert=false"]


def bare_loop(args, dataset: Path) -> float:
    """Samples/s of a plain single-process loop over the same model, data and optimizer."""
    from torch.utils.data import DataLoader

    from sgvla.train import modelops
    from sgvla.train.config import batch_plan, load_config
    from sgvla.train.preflight import inspect_dataset

    cfg = load_config(TINY, overrides(args, 1))
    torch.set_num_threads(1)  # as a Ray Train worker with train.cpus_per_worker=1
    info = dataclasses.asdict(inspect_dataset(str(dataset), cfg, modelops.model_config(cfg)))
    torch.manual_seed(0)
    model, processor = modelops.build_model(cfg, info["stats"])
    ds, _ = modelops.build_dataset(cfg, info, model.config)
    model.configure_stage(2)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    micro, accum = cfg.train.micro_batch_size, batch_plan(cfg, 1)  # as the trainer derives it
    loader = DataLoader(ds, batch_size=micro, shuffle=True, drop_last=True,
                        collate_fn=processor.collate, num_workers=args.loader_workers,
                        prefetch_factor=4 if args.loader_workers else None)
    it, times = iter(loader), []
    for _ in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        for _ in range(accum):
            try:
                batch = next(it)
            except StopIteration:
                it = iter(loader)
                batch = next(it)
            (model(**batch).loss / accum).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return micro * accum * len(times[args.warmup:]) / sum(times[args.warmup:])


def ray_run(args, dataset: Path, workers: int, out: Path) -> float:
    """Steady-state samples/s of `sgvla train` with `workers` Ray Train workers."""
    from sgvla.train.launch import run_train
    from sgvla.train.metrics import read_metrics

    run_train(TINY, str(dataset), out, workers=workers, overrides=overrides(args, workers))
    rec = read_metrics(out)[args.warmup - 1:]  # from the end of the last warm-up step
    return (rec[-1]["samples"] - rec[0]["samples"]) / (rec[-1]["time"] - rec[0]["time"])


def full_size(args) -> None:
    """bf16 samples/s and peak memory of the full-size model on one GPU (random init)."""
    from sgvla.model import SGVLAConfig, SGVLAForActionPrediction, SGVLAProcessor
    from sgvla.transforms import raw_frames
    from sgvla.vocab import view_kind

    dev = torch.device("cuda")
    cfg = SGVLAConfig.from_preset("sgvla-1.3b", aux_decoders=["grasp", "qpos", "global_pos"],
                                  use_flow_expert=False)
    model = SGVLAForActionPrediction(cfg).to(dev)
    model.configure_stage(2)
    opt = torch.optim.Adam(model.parameters(), lr=2e-5)
    b = 32
    proc = SGVLAProcessor.from_config(cfg)
    frame = {v: torch.randint(0, 256, (128, 128, 3), dtype=torch.uint8) if view_kind(v) == "rgb"
             else torch.randint(0, 5000, (128, 128)) for v in cfg.views}  # raw, as stored: 128 px
    samples = [{"instruction": "pick up the red bowl", "action": torch.rand(13) * 2 - 1,
                "pixel_values": raw_frames([frame] * (cfg.history + 1), cfg.views),
                "aux": {"grasp": torch.tensor(1.0), "qpos": torch.randn(12), "global_pos": torch.randn(2)},
                "aux_valid": {"grasp": True, "qpos": True, "global_pos": True}} for _ in range(b)]
    batch = {k: (v.to(dev) if torch.is_tensor(v) else {kk: vv.to(dev) for kk, vv in v.items()}
                 if isinstance(v, dict) else v) for k, v in proc.collate(samples).items()}
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(3 + 10):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    print(f"full-size sgvla-1.3b, batch {b}, bf16 autocast, fp32 Adam on {torch.cuda.get_device_name()}: "
          f"{b / statistics.median(times[3:]):.1f} samples/s, peak memory "
          f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30, help="measured optimizer steps")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--micro", type=int, default=8, help="samples per forward pass of one process")
    ap.add_argument("--loader-workers", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2, help="alternating repetitions; the best is reported")
    ap.add_argument("--dataset", type=Path, default=None, help="dataset folder (default: a synthetic one)")
    ap.add_argument("--full-size", action="store_true", help="also the 1.3B model on a GPU")
    args = ap.parse_args()
    runs: dict[str, list[float]] = {"bare": [], "ray1": [], "ray2": []}
    with tempfile.TemporaryDirectory() as tmp:
        dataset = args.dataset
        if dataset is None:
            from sgvla.dataset.synthetic import write_synthetic_dataset

            dataset = write_synthetic_dataset(Path(tmp) / "data", episodes={"train": [16] * 8})
        for r in range(args.rounds):  # alternate, so a busy spell on a shared machine hits all three
            runs["bare"].append(bare_loop(args, dataset))
            runs["ray1"].append(ray_run(args, dataset, 1, Path(tmp) / f"ray1-{r}"))
            runs["ray2"].append(ray_run(args, dataset, 2, Path(tmp) / f"ray2-{r}"))
    best = {k: max(v) for k, v in runs.items()}
    print(f"\n{'loop':<28} {'samples/s (best of ' + str(args.rounds) + ')':>24}   all rounds")
    for key, name in (("bare", "bare PyTorch, 1 process"), ("ray1", "Ray Train, 1 worker"),
                      ("ray2", "Ray Train, 2 workers (DDP)")):
        print(f"{name:<28} {best[key]:>24.1f}   {', '.join(f'{x:.1f}' for x in runs[key])}")
    print(f"ratio Ray x1 / bare: {best['ray1'] / best['bare']:.2f} (target >= 0.9); "
          f"Ray x2 / Ray x1: {best['ray2'] / best['ray1']:.2f} on {os.cpu_count()} CPU cores")
    if args.full_size:
        if torch.cuda.is_available():
            full_size(args)
        else:
            print("--full-size: no CUDA device here, skipped")


if __name__ == "__main__":
    main()
