"""Val success of one subtask against training steps and against demonstrations (docs/results.md).

Each point is one model (a run's final model or a `train.export_every` snapshot) evaluated once on
the same val episodes (`sgvla eval ... --split val --out RUN/<eval>`). The points are listed in a
JSON file, one object per point:

    {"demos": 48, "steps": 12000, "seed": 0, "results": "outputs/close48/run12k/val30/results.json"}

The script reads each results.json, writes the figures with their per-episode outcomes to
OUT.json (committed with the docs, so that the plot can be redrawn without the runs) and draws
OUT.png: success against steps (one line per demo count and training seed) and against demos (at
the step count given by --at-steps, one marker per training seed, their mean as a line). A point
whose results.json is missing is skipped with a note: the evaluations can be run one at a time.

    .venv/bin/python scripts/data_steps_curves.py POINTS.json --out docs/close_curves [--at-steps 12000]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from sgvla.dataset.atomic import write_text_atomic
from sgvla.eval.report import wilson_interval


def collect(points: list[dict]) -> list[dict]:
    rows = []
    for p in points:
        path = Path(p["results"])
        if not path.is_file():
            print(f"skipped (not evaluated yet): {path}")
            continue
        res = json.loads(path.read_text())
        eps = res["episodes"]
        wins = sum(e["success"] for e in eps)
        effect = sum(bool(e.get("effect_once")) for e in eps)
        rows.append({**p, "split": res["split"], "mode": res["mode"], "episodes": len(eps), "successes": wins,
                     "wilson95": list(wilson_interval(wins, len(eps))), "effect": effect,
                     "outcomes": {str(e["seed"]): bool(e["success"]) for e in eps}})
    return rows


def plot(rows: list[dict], at_steps: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    lines = defaultdict(list)
    for r in rows:
        lines[(r["demos"], r["seed"])].append(r)
    for (demos, seed), pts in sorted(lines.items()):
        pts.sort(key=lambda r: r["steps"])
        a.plot([r["steps"] for r in pts], [r["successes"] / r["episodes"] for r in pts], "o-",
               label=f"{demos} demos, seed {seed}")
    a.set(xlabel="training steps (batch 16)", ylabel="val success", ylim=(-0.03, 1.03),
          title="against training steps")
    a.legend(fontsize=8)
    at = [r for r in rows if r["steps"] == at_steps]
    by_demos = defaultdict(list)
    for r in at:
        by_demos[r["demos"]].append(r["successes"] / r["episodes"])
        b.plot(r["demos"], r["successes"] / r["episodes"], "o", color="tab:gray")
    xs = sorted(by_demos)
    b.plot(xs, [sum(by_demos[x]) / len(by_demos[x]) for x in xs], "-", color="tab:blue", label="mean over seeds")
    b.set(xlabel="demonstrations (each recorded clean + 1 DART copy)", ylabel="val success", ylim=(-0.03, 1.03),
          title=f"against demonstrations, at {at_steps:,} steps", xticks=xs)
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("points", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="OUT.json and OUT.png are written")
    ap.add_argument("--at-steps", type=int, default=12000)
    args = ap.parse_args()
    rows = collect(json.loads(args.points.read_text()))
    write_text_atomic(args.out.with_suffix(".json"), json.dumps(rows, indent=1))
    plot(rows, args.at_steps, args.out)
    for r in sorted(rows, key=lambda r: (r["demos"], r["steps"], r["seed"])):
        lo, hi = r["wilson95"]
        print(f"{r['demos']:>3} demos {r['steps']:>6} steps seed {r['seed']}: {r['successes']}/{r['episodes']} "
              f"[{lo:.2f}, {hi:.2f}] effect {r['effect']}/{r['episodes']}")


if __name__ == "__main__":
    main()
