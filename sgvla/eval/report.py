"""Evaluation results: per-episode records, aggregates, and the paper-style table."""

from __future__ import annotations

import json
import math
from pathlib import Path

from sgvla.dataset.atomic import write_text_atomic
from sgvla.tasks import SUBTASKS

_COLUMNS = {"pick": "Pick", "place": "Place", "open": "Open", "close": "Close"}
#: The paper's tables (MS-HAB SetTable): open and close are reported per articulation, and Avg.
#: is the mean of these six columns.
PAPER_COLUMNS = {("pick", None): "Pick", ("place", None): "Place", ("open", "fridge"): "Open Fridge",
                 ("open", "kitchen_counter"): "Open Drawer", ("close", "fridge"): "Close Fridge",
                 ("close", "kitchen_counter"): "Close Drawer"}


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate: honest at 0/n and n/n, where the normal
    approximation collapses to a zero-width interval."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def aggregate(episodes: list[dict]) -> dict:
    """Success rate (with its 95% Wilson interval) and mean steps per subtask, plus the average of
    the subtask rates (the paper's Avg.)."""
    per: dict[str, dict] = {}
    for sub in SUBTASKS:
        eps = [e for e in episodes if e["subtask"] == sub]
        if eps:
            wins = sum(bool(e["success"]) for e in eps)
            per[sub] = {
                "episodes": len(eps),
                "successes": wins,
                "success_rate": wins / len(eps),
                "wilson95": wilson_interval(wins, len(eps)),
                "mean_steps": sum(e["steps"] for e in eps) / len(eps),
            }
            effects = [e["effect_once"] for e in eps if e.get("effect_once") is not None]
            if effects:  # partial progress: the effect reached at some step, back at rest or not
                per[sub]["effect_rate"] = sum(effects) / len(effects)
    rates = [v["success_rate"] for v in per.values()]
    out = {"per_subtask": per, "average_success_rate": sum(rates) / len(rates) if rates else 0.0}
    if any(e.get("target") in ("fridge", "kitchen_counter") for e in episodes):
        out["paper_layout"] = paper_layout(episodes)
    return out


def paper_layout(episodes: list[dict]) -> dict:
    """MS-HAB results in the paper's six columns (open/close split by fridge and drawer)."""
    cols = {}
    for (sub, target), name in PAPER_COLUMNS.items():
        eps = [e for e in episodes if e["subtask"] == sub and (target is None or e.get("target") == target)]
        if eps:
            wins = sum(bool(e["success"]) for e in eps)
            cols[name] = {"episodes": len(eps), "successes": wins, "success_rate": wins / len(eps),
                          "wilson95": wilson_interval(wins, len(eps))}
    rates = [c["success_rate"] for c in cols.values()]
    return {"columns": cols, "average_success_rate": sum(rates) / len(rates) if rates else 0.0}


def markdown_table(results: dict) -> str:
    """A table laid out like the paper's: Pick / Place / Open / Close columns and the average."""
    per = results["aggregate"]["per_subtask"]
    paper = results["aggregate"].get("paper_layout")
    names = list(PAPER_COLUMNS.values()) if paper else list(_COLUMNS.values())
    head = "| Model | Task | " + " | ".join(names) + " | Avg. |"
    sep = "|---|---|" + "---|" * (len(names) + 1)
    if paper:
        cells = [f"{paper['columns'][c]['success_rate']:.2f}" if c in paper["columns"] else "-" for c in names]
        avg = f"{paper['average_success_rate']:.2f}"
    else:
        cells = [f"{per[s]['success_rate']:.2f}" if s in per else "-" for s in _COLUMNS]
        avg = f"{results['aggregate']['average_success_rate']:.2f}"
    row = f"| {results['model']} | {results['task']} | " + " | ".join(cells) + f" | {avg} |"
    n = ", ".join(f"{s}: {per[s]['episodes']}" for s in per)
    seeds = results.get("seeds") or [0]
    where = f", {results.get('split', '?')} episodes (reset seeds {seeds[0]}..{seeds[-1]})"
    if results.get("noise_seed"):
        where += f", flow-noise draw {results['noise_seed']}"
    lines = [head, sep, row, "", f"Success rates over episodes per subtask ({n}), mode "
             f"`{results['mode']}`{where}."]
    effect = {s: per[s]["effect_rate"] for s in per if "effect_rate" in per[s]}
    if effect:
        lines.append("Subtask effect reached at some step (rest or not): "
                     + ", ".join(f"{s} {r:.2f}" for s, r in effect.items()) + ".")
    return "\n".join(lines)


def write_results(out: Path, results: dict) -> tuple[Path, Path]:
    """Atomically write results.json and results.md into `out` (a killed eval leaves no torn file)."""
    return (write_text_atomic(out / "results.json", json.dumps(results, indent=2)),
            write_text_atomic(out / "results.md", markdown_table(results) + "\n"))
