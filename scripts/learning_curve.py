"""Val success along a training run: every snapshot (`train.export_every`), each stage's model and
the final model, evaluated closed-loop on held-out val episodes. Resumable: a point whose
results.json exists is not evaluated again, so a killed run is continued by re-running it.

    .venv/bin/python scripts/learning_curve.py RUN [--episodes 10] [--workers 2] [--subtask all]

Snapshots from before stage 3 are evaluated with action tokens (the flow expert is not trained
yet); the final model with flow, and with tokens through stage 2's results (stage 3 freezes the
VLM); "auto" (the paper's per-subtask choice: flow for pick/place, tokens for open/close) is
assembled from those two on the same episodes.
Writes RUN/curve/<point>/<mode>/results.{json,md}, RUN/learning_curve.json and .png.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from sgvla.dataset.atomic import write_text_atomic
from sgvla.eval.report import aggregate
from sgvla.eval.runner import run_eval


def model_points(run: Path) -> list[tuple[int, str, Path]]:
    """(global step, name, model folder) of every evaluable model of a run, in step order."""
    state, first = {}, {}
    metrics = run / "metrics.jsonl"
    if metrics.is_file():  # the first and last step of each stage, from the run's own log
        for line in metrics.read_text().splitlines():
            rec = json.loads(line)
            state[rec["stage"]] = rec["global_step"]
            first.setdefault(rec["stage"], rec["global_step"])
    stages = [(state[p.name], p.name, p) for p in sorted((run / "stages").glob("stage*")) if p.name in state]
    ends = {step for step, _, _ in stages}
    # stage 3 trains only the flow expert: its snapshots have the stage-2 tokens and a half-trained expert
    flow_start = first.get("stage3", float("inf"))
    snaps = [(int(re.sub(r"\D", "", p.name)), p.name, p) for p in (run / "snapshots").glob("step-*")]
    snaps = [s for s in snaps if s[0] not in ends and s[0] < flow_start]
    return sorted(stages + snaps)


def evaluate(point: Path, out: Path, mode: str, args) -> dict:
    results_path = out / "results.json"
    if results_path.is_file():
        return json.loads(results_path.read_text())
    return run_eval(str(point), "mini_kitchen", args.subtask, args.episodes, out, mode=mode, seed=args.seed,
                    workers=args.workers, split="val")


def auto_from(tokens: dict, flow: dict, modes: dict[str, str]) -> dict:
    """The per-subtask choice of the paper, from tokens and flow runs on the same val episodes."""
    eps = [e for e in tokens["episodes"] if modes.get(e["subtask"], "tokens") == "tokens"]
    eps += [e for e in flow["episodes"] if modes.get(e["subtask"], "tokens") == "flow"]
    return {"mode": "auto", "episodes": eps, "aggregate": aggregate(eps)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--episodes", type=int, default=10, help="val episodes per subtask per point")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--subtask", default="all")
    ap.add_argument("--seed", type=int, default=0, help="first val episode")
    args = ap.parse_args()
    rows, evaluated = [], {}
    for step, name, folder in model_points(args.run):
        # stage 3 trains only the flow expert: its action tokens are stage 2's, same episodes
        tokens = evaluated.get("stage2") if name == "stage3" else None
        tokens = tokens or evaluate(folder, args.run / "curve" / name / "tokens", "tokens", args)
        evaluated[name] = tokens
        row = {"step": step, "point": name, "tokens": tokens["aggregate"]}
        if name == "stage3":
            flow = evaluate(folder, args.run / "curve" / name / "flow", "flow", args)
            modes = json.loads((folder / "config.json").read_text())["subtask_modes"]
            row["flow"] = flow["aggregate"]
            row["auto"] = auto_from(tokens, flow, modes)["aggregate"]
        rows.append(row)
        write_text_atomic(args.run / "learning_curve.json", json.dumps(rows, indent=1))
    plot(rows, args.run / "learning_curve.png")
    table = markdown(rows)
    write_text_atomic(args.run / "learning_curve.md", table + "\n")
    print(table)


def markdown(rows: list[dict]) -> str:
    """One line per (point, mode): val success per subtask and Avg."""
    subs = ("pick", "place", "open", "close")
    lines = ["| step | model | mode | " + " | ".join(subs) + " | Avg. |", "|---:|---|---|" + "---|" * 5]
    for r in rows:
        for mode in ("tokens", "flow", "auto"):
            if mode not in r:
                continue
            per = r[mode]["per_subtask"]
            cells = [_cell(per[s]) if s in per else "-" for s in subs]
            lines.append(f"| {r['step']} | {r['point']} | {mode} | " + " | ".join(cells)
                         + f" | {r[mode]['average_success_rate']:.2f} |")
    return "\n".join(lines)


def _cell(per: dict) -> str:
    """`rate (successes/episodes)`, plus how often the subtask's effect was reached (rest or not)."""
    text = f"{per['success_rate']:.2f} ({per['successes']}/{per['episodes']})"
    return text + (f", effect {per['effect_rate']:.2f}" if "effect_rate" in per else "")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for sub in ("pick", "place", "open", "close"):
        pts = [(r["step"], r["tokens"]["per_subtask"][sub]["success_rate"]) for r in rows
               if sub in r["tokens"]["per_subtask"]]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=f"{sub} (tokens)")
    last = rows[-1] if rows else {}
    if "auto" in last:
        ax.scatter([last["step"]], [last["auto"]["average_success_rate"]], marker="*", s=150, c="k",
                   label="final, auto (avg)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("val success rate")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
