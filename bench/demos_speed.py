"""Recording expert demos without camera frames (`sgvla demos`' default) against with them (`--images`).

Both record the same train episodes of one subtask through the same code (`generate_demos`), one
after the other, alternating over rounds so that machine noise hits both alike. `sgvla gen`
renders every view itself, so the frames are only worth recording for other tools that read
MS-HAB's full layout. Printed ratio: without / with, in episodes per second (higher is better).

    .venv/bin/python bench/demos_speed.py [--subtask close] [--episodes 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from sgvla.envs.demos import generate_demos


def seconds(subtask: str, episodes: int, images: bool, out: Path) -> float:
    start = time.perf_counter()
    generate_demos(subtask=subtask, episodes=episodes, out=out, images=images, progress=False)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subtask", default="close")
    ap.add_argument("--episodes", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    times: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        seconds(args.subtask, 1, False, Path(tmp) / "warm-up")  # imports, scene build
        for r in range(args.rounds):
            for images in (False, True):
                times[images].append(seconds(args.subtask, args.episodes, images, Path(tmp) / f"{images}-{r}"))
    rate = {k: args.episodes / statistics.median(v) for k, v in times.items()}
    print(f"without frames {rate[False]:.3f} ep/s, with frames (--images) {rate[True]:.3f} ep/s")
    print(f"without / with: {rate[False] / rate[True]:.2f}x")


if __name__ == "__main__":
    main()
