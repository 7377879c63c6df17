"""Action latency of SG-VLA's `predict_action`, as ratios against baselines measured in the same run.

For each model size (random weights; `tiny` and the paper's `sgvla-1.3b`):

* prefix   : one forward over the prefix (4 views through both towers + projector + LLM with cache),
             the work every action query has to do at least once;
* tokens   : `predict_action(mode="tokens")` (preprocessing, prefix, 12 cached single-token steps);
* flow     : `predict_action(mode="flow")` (preprocessing, prefix, 10 expert Euler steps on the cache);
* ours/hf  : our cached, action-only greedy decoding vs `transformers` `generate` with the same
             action-only logits processor, on the same inputs (both include the prefix).

Printed ratios: tokens / prefix (target <= 1.5: 13 tokens must cost little next to the prefix) and
ours / generate (target <= 1.0). Usage:

    python bench/inference.py                       # tiny + sgvla-1.3b on CPU (the big one takes minutes)
    python bench/inference.py --sizes tiny --repeats 20
    python bench/inference.py --sizes sgvla-1.3b --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from sgvla.model import SGVLAConfig, SGVLAForActionPrediction, SGVLAProcessor

STATS = {"q01": [-1.0] * 13, "q99": [1.0] * 13}
INSTRUCTION = "pick up the red bowl from the kitchen counter"


def timed(fn: Callable[[], object], repeats: int, warmup: int, device: str) -> tuple[float, object]:
    """Median wall time of fn over `repeats` runs after `warmup` untimed ones, and fn's last result."""
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def observation(seed: int = 0) -> dict:
    g = np.random.default_rng(seed)
    return {"head_rgb": g.integers(0, 256, (128, 128, 3), dtype=np.uint8),
            "hand_rgb": g.integers(0, 256, (128, 128, 3), dtype=np.uint8),
            "head_depth": g.integers(200, 4000, (128, 128), dtype=np.uint16),
            "hand_depth": g.integers(200, 4000, (128, 128), dtype=np.uint16)}


def bench_size(name: str, repeats: int, device: str, dtype: torch.dtype) -> dict[str, float]:
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = SGVLAForActionPrediction(SGVLAConfig.from_preset(name, action_stats=STATS))
    model = model.to(device=device, dtype=dtype).eval()
    build_s = time.perf_counter() - t0
    obs = observation()
    proc = SGVLAProcessor.from_config(model.config)
    pixels = {k: v.unsqueeze(0).to(device) for k, v in proc.observation_pixels(obs).items()}
    ids = torch.tensor([proc.prompt_ids(INSTRUCTION)], device=device)

    @torch.no_grad()
    def prefix():
        embeds = model._inference_inputs(pixels, ids)
        return model.llm.model(inputs_embeds=embeds, use_cache=True)

    warmup = 1 if name == "tiny" or device == "cuda" else 0  # a 30-s CPU forward needs no warm-up
    r: dict[str, float] = {"build_s": build_s}
    r["prefix_s"], _ = timed(prefix, repeats, warmup, device)
    r["tokens_s"], _ = timed(lambda: model.predict_action(obs, INSTRUCTION, mode="tokens", processor=proc), repeats,
                             warmup, device)
    r["flow_s"], _ = timed(lambda: model.predict_action(obs, INSTRUCTION, mode="flow", processor=proc), repeats,
                           warmup, device)
    r["ours_s"], ours = timed(lambda: model.decode_action_tokens(pixels, ids), repeats, warmup, device)
    r["generate_s"], ref = timed(lambda: model.generate_action_tokens(pixels, ids), repeats, warmup, device)
    r["same_tokens"] = float(torch.equal(ours, ref))
    r["prefix_tokens"] = float(len(ids[0]) + model.config.n_image_tokens)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="tiny,sgvla-1.3b", help="comma-separated presets")
    ap.add_argument("--repeats", type=int, default=0, help="timed runs per figure (0: 20 tiny, 1 full)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    print(f"device={args.device} dtype={args.dtype} threads={torch.get_num_threads()}")
    header = (f"{'model':<11} {'prefix tok':>10} {'prefix s':>9} {'tokens s':>9} {'flow s':>8} {'ours s':>8} "
              f"{'generate s':>10} {'tokens/prefix':>13} {'ours/generate':>13} {'same ids':>8}")
    rows = []
    for name in args.sizes.split(","):
        repeats = args.repeats or (20 if name == "tiny" else 1)
        r = bench_size(name, repeats, args.device, dtype)
        rows.append(f"{name:<11} {int(r['prefix_tokens']):>10} {r['prefix_s']:>9.4f} {r['tokens_s']:>9.4f} "
                    f"{r['flow_s']:>8.4f} {r['ours_s']:>8.4f} {r['generate_s']:>10.4f} "
                    f"{r['tokens_s'] / r['prefix_s']:>13.2f} {r['ours_s'] / r['generate_s']:>13.2f} "
                    f"{'yes' if r['same_tokens'] else 'NO':>8}")
        print(f"  built {name} in {r['build_s']:.1f} s", flush=True)
    print(header)
    for row in rows:
        print(row)
    print("targets: tokens/prefix <= 1.5, ours/generate <= 1.0")


if __name__ == "__main__":
    main()
