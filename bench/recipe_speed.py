"""Speed of the CPU-scale recipe (configs/cpu_recipe.yaml) against the tiny preset (configs/tiny.yaml).

1. Training: samples/s of one bare single-process training step loop (stage 2: action tokens plus
   every auxiliary decoder the config enables) for each config on the same synthetic rows, printed as
   recipe / tiny. The close-only model of docs/results.md (configs/diag_close_only.yaml), the one
   that learns close, is timed too. `--device cuda` times the same steps on a GPU (bf16 autocast, as
   `train.precision=auto` trains there) and skips the evaluation (`--train-only` skips it anywhere);
   `--loop-steps N` also times N steps of the real training loop (data path included) on that config.
2. Evaluation: env steps/s on held-out val pick episodes of a model built from the recipe config
   (random weights: the speed does not depend on them) in tokens and flow modes, against the
   scripted expert on the same episodes, in the same process (`EvalWorker`, scene built once).

    .venv/bin/python bench/recipe_speed.py [--steps 20] [--episodes 2] [--max-steps 60] [--device cuda]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"tiny": ROOT / "configs" / "tiny.yaml", "cpu_recipe": ROOT / "configs" / "cpu_recipe.yaml",
           "close_only": ROOT / "configs" / "diag_close_only.yaml"}


def _model_and_data(config: Path, dataset: Path, overrides: tuple[str, ...] = ()):
    from sgvla.train import modelops
    from sgvla.train.config import load_config
    from sgvla.train.preflight import inspect_dataset

    cfg = load_config(config, ["data.loader_workers=0", *overrides])
    info = dataclasses.asdict(inspect_dataset(str(dataset), cfg, modelops.model_config(cfg)))
    torch.manual_seed(0)
    model, processor = modelops.build_model(cfg, info["stats"])
    ds, _ = modelops.build_dataset(cfg, info, model.config)
    return cfg, model, processor, ds


def train_rate(config: Path, dataset: Path, steps: int, device: str = "cpu", warmup: int = 3,
               overrides: tuple[str, ...] = ()) -> float:
    """Samples/s of stage-2 steps (forward, backward, Adam) at the config's micro batch, on batches
    already collated (and on the device): the model's own cost, not the data path's."""
    from torch.utils.data import DataLoader

    from sgvla.train.loop import _to_device

    cfg, model, processor, ds = _model_and_data(config, dataset, overrides)
    dev = torch.device(device)
    loader = DataLoader(ds, batch_size=cfg.train.micro_batch_size, shuffle=True, drop_last=True,
                        collate_fn=processor.collate)
    batches = [_to_device(b, dev) for _, b in zip(range(warmup + steps), _cycle(loader), strict=False)]
    return step_rate(model.to(dev), batches, warmup, cfg)


def step_rate(model, batches: list, warmup: int, cfg) -> float:
    """Samples/s of stage-2 steps of `model` over `batches` (on its device), the first `warmup`
    not timed; Adam at the config's learning rate, autocast as the config trains."""
    from sgvla.train.loop import autocast_context

    dev = next(model.parameters()).device
    model.configure_stage(2)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    for i, batch in enumerate(batches):
        if i == warmup:
            _sync(dev)
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast_context(cfg, dev):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
    _sync(dev)
    return sum(len(b["input_ids"]) for b in batches[warmup:]) / (time.perf_counter() - t0)


def loop_rate(config: Path, dataset: Path, steps: int, device: str, batch: int = 16, warmup: int = 20) -> float:
    """Steps/s of the real training loop (`sgvla.train.loop.Worker` in this process, no Ray: data
    loading, collate, transfer, step, metrics), from the timestamps of its metrics records."""
    from sgvla.train import modelops
    from sgvla.train.config import load_config
    from sgvla.train.loop import Worker, WorkerEnv
    from sgvla.train.metrics import read_metrics
    from sgvla.train.preflight import inspect_dataset

    cfg = load_config(config, ["stage1.epochs=0", "stage3.epochs=0", "stage2.epochs=100000",
                               f"stage2.max_steps={warmup + steps}", "train.checkpoint_every=0",
                               f"train.global_batch_size={batch}", f"train.micro_batch_size={batch}",
                               "data.subtasks=[pick,place,open,close]"])  # every synthetic row: long epochs
    info = dataclasses.asdict(inspect_dataset(str(dataset), cfg, modelops.model_config(cfg)))
    with tempfile.TemporaryDirectory() as run:
        Worker(cfg, info, Path(run), WorkerEnv(device=torch.device(device))).run()
        rec = read_metrics(Path(run))[warmup - 1:]
    return (rec[-1]["global_step"] - rec[0]["global_step"]) / (rec[-1]["time"] - rec[0]["time"])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cycle(loader):
    while True:
        yield from loader


def eval_rate(model: str, mode: str, out: Path, episodes: int, max_steps: int) -> float:
    """Steady-state env steps/s over val pick episodes (one warm-up episode not counted)."""
    from sgvla.eval.runner import EvalWorker, _obs_mode_for
    from sgvla.tasks import split_seeds

    worker = EvalWorker("mini_kitchen", model, mode, str(out), False, _obs_mode_for(model)[0], max_steps)
    seeds = split_seeds("val", 0, episodes + 1)
    worker.run_batch("pick", seeds[:1])
    t, steps = time.perf_counter(), 0
    for seed in seeds[1:]:
        steps += worker.run_batch("pick", [seed])[0]["steps"]
    return steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per config")
    ap.add_argument("--episodes", type=int, default=2, help="timed val episodes per policy")
    ap.add_argument("--max-steps", type=int, default=60)
    ap.add_argument("--device", default="cpu", help="cpu (one thread, as a Ray Train worker with "
                    "train.cpus_per_worker=1) or cuda")
    ap.add_argument("--train-only", action="store_true", help="skip the evaluation (always on a GPU)")
    ap.add_argument("--loop-steps", type=int, default=0, help="also time this many steps of the real "
                    "training loop (in process, no Ray) on the close-only config")
    ap.add_argument("--loop-batch", type=int, nargs="+", default=[16], help="batch sizes of those loops "
                    "(the recipe's is 16)")
    args = ap.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    from sgvla.dataset.synthetic import write_synthetic_dataset
    from sgvla.model import save_policy

    with tempfile.TemporaryDirectory() as tmp:
        episodes = max(16, 2 * max(args.loop_batch)) if args.loop_steps else 16  # 64 loop steps an epoch
        data = write_synthetic_dataset(Path(tmp) / "data", episodes={"train": [32] * episodes})
        rates = {name: train_rate(path, data, args.steps, args.device) for name, path in CONFIGS.items()}
        print(f"\ntraining samples/s (stage 2, each config's micro batch, {args.device}): "
              + ", ".join(f"{k} {v:.1f}" for k, v in rates.items())
              + f"; ratio recipe / tiny {rates['cpu_recipe'] / rates['tiny']:.2f}")
        for batch in args.loop_batch if args.loop_steps else []:
            loop = loop_rate(CONFIGS["close_only"], data, args.loop_steps, args.device, batch)
            print(f"real training loop, close_only config, batch {batch}, {args.device}: {loop:.1f} steps/s, "
                  f"{loop * batch:.0f} samples/s")
        if args.train_only or args.device != "cpu":
            return
        _, model, processor, _ = _model_and_data(CONFIGS["cpu_recipe"], data)
        save_policy(model, processor, Path(tmp) / "recipe")
        evals = {"expert": eval_rate("expert", "auto", Path(tmp) / "e0", args.episodes, args.max_steps)}
        for mode in ("tokens", "flow"):
            evals[f"recipe/{mode}"] = eval_rate(str(Path(tmp) / "recipe"), mode, Path(tmp) / mode, args.episodes,
                                                args.max_steps)
    print("val-episode evaluation, env steps/s: " + ", ".join(f"{k} {v:.1f}" for k, v in evals.items()))
    for mode in ("tokens", "flow"):
        print(f"ratio recipe/{mode} / expert: {evals[f'recipe/{mode}'] / evals['expert']:.2f}")


if __name__ == "__main__":
    main()
