"""Policy-server latency: one query through `sgvla serve` (websocket + msgpack, localhost) against
the same model's in-process `predict_action`, in the same run.

The model is the tiny preset with random weights and four 128-px views (what the built-in scene
renders), saved to a temporary folder and served by a separate `sgvla serve` process, so a round
trip includes packing, the socket, unpacking and the server's request checks. Printed as the
median per query and the ratio served / in-process (the socket's overhead; 1.0 is free).

    .venv/bin/python bench/serve_latency.py [--queries 100] [--warmup 10]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sgvla.eval.policies import ServerConnection  # noqa: E402
from sgvla.model import SGVLAConfig, SGVLAForActionPrediction, SGVLAProcessor, load_policy, save_policy  # noqa: E402

VIEWS = ["head_rgb", "hand_rgb", "head_depth", "hand_depth"]
STATS = {k: [v] * 13 for k, v in (("q01", -1.0), ("q99", 1.0), ("mean", 0.0), ("std", 1.0),
                                   ("min", -1.0), ("max", 1.0))}


def observation(seed: int) -> dict:
    g = np.random.default_rng(seed)
    return {"head_rgb": g.integers(0, 256, (128, 128, 3), dtype=np.uint8),
            "hand_rgb": g.integers(0, 256, (128, 128, 3), dtype=np.uint8),
            "head_depth": g.integers(0, 4000, (128, 128), dtype=np.uint16),
            "hand_depth": g.integers(0, 4000, (128, 128), dtype=np.uint16)}


def timed(fn, queries: int, warmup: int) -> float:
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(queries):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model"
        torch.manual_seed(0)
        cfg = SGVLAConfig.from_preset("tiny", views=VIEWS, use_flow_expert=False, action_stats=STATS)
        save_policy(SGVLAForActionPrediction(cfg), SGVLAProcessor.from_config(cfg), path)
        model, processor = load_policy(path)
        model.eval()
        obs = [observation(i) for i in range(8)]
        local = timed(lambda i: model.predict_action(obs[i % 8], "close the drawer", mode="tokens",
                                                     processor=processor), args.queries, args.warmup)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {"OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "sgvla.cli", "serve", str(path), "--port", str(port)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, **env})
        try:
            while "serving" not in (line := proc.stdout.readline()):
                if proc.poll() is not None or not line:
                    raise SystemExit(f"the server did not start: {proc.stdout.read()}")
            conn = ServerConnection(f"ws://127.0.0.1:{port}")
            served = timed(lambda i: conn.query({**obs[i % 8], "prompt": "close the drawer", "mode": "tokens"}),
                           args.queries, args.warmup)
            conn.close()
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    print(f"in-process predict_action: {local * 1e3:.2f} ms per query (median of {args.queries})")
    print(f"through sgvla serve:       {served * 1e3:.2f} ms per query")
    print(f"ratio served / in-process: {served / local:.2f}  (socket, msgpack and checks: "
          f"{(served - local) * 1e3:+.2f} ms)")


if __name__ == "__main__":
    main()
