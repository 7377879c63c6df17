"""The study's outcome: per-row means with 95% intervals over training seeds, per-cell Wilson
intervals over episodes, a plot, and one JSON holding every episode of every cell.

Two kinds of uncertainty, reported separately: how much a row's success varies between training
seeds (a Student-t interval over the seeds' rates: the question a study asks) and how precisely one
cell's rate is measured on its val episodes (Wilson).
"""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

from sgvla.dataset.atomic import write_atomic, write_json_atomic, write_text_atomic
from sgvla.dataset.layout import read_json
from sgvla.study.spec import Study

#: Two-sided 95% Student-t quantiles by degrees of freedom (1..30); beyond, the normal one.
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]


def seed_interval(values: list[float]) -> tuple[float, float] | None:
    """95% t-interval of the mean over training seeds (None with fewer than two), clipped to [0, 1]."""
    n = len(values)
    if n < 2:
        return None
    t = _T95[n - 2] if n - 1 <= len(_T95) else 1.96
    half = t * statistics.stdev(values) / math.sqrt(n)
    m = statistics.fmean(values)
    return max(0.0, m - half), min(1.0, m + half)


def collect(study: Study, out: Path) -> list[dict]:
    """One record per cell: status, reason, and for finished cells the per-subtask results."""
    from sgvla.study.run import cell_status

    cells = []
    for cell in study.cells:
        st = cell_status(out, cell) or {"status": "pending"}
        rec = {"row": cell.row.name, "seed": cell.seed, "status": st["status"], "reason": st.get("reason"),
               "run": str(cell.run_dir(out)), "mode": cell.row.mode}
        if st["status"] == "done":
            res = read_json(cell.eval_dir(out) / "results.json", "delete it: the cell's evaluation is then run again")
            per = res["aggregate"]["per_subtask"]
            rec["per_subtask"] = {s: {k: per[s][k] for k in ("successes", "episodes", "success_rate", "wilson95",
                                                          "effect_rate") if k in per[s]} for s in per}
            rec["average"] = res["aggregate"]["average_success_rate"]
            rec["seeds"] = res["seeds"]
            rec["episodes"] = res["episodes"]
            rec["software"] = res.get("software")  # None for evaluations from before sgvla.provenance
        cells.append(rec)
    return cells


def summarize(study: Study, cells: list[dict]) -> list[dict]:
    """Per row: over the finished seeds, mean and 95% interval per subtask and for the average."""
    rows = []
    for row in study.rows:
        mine = [c for c in cells if c["row"] == row.name and c["status"] == "done"]
        subtasks = sorted({s for c in mine for s in c["per_subtask"]}, key=_order)
        cols, effect = {}, {}
        for s in subtasks:
            vals = [c["per_subtask"][s]["success_rate"] for c in mine if s in c["per_subtask"]]
            cols[s] = {"mean": statistics.fmean(vals), "ci95": seed_interval(vals), "n_seeds": len(vals)}
            eff = [c["per_subtask"][s]["effect_rate"] for c in mine if "effect_rate" in c["per_subtask"].get(s, {})]
            if eff:
                effect[s] = {"mean": statistics.fmean(eff), "ci95": seed_interval(eff), "n_seeds": len(eff)}
        avgs = [c["average"] for c in mine]
        rows.append({"row": row.name, "mode": row.mode, "seeds_done": len(mine), "subtasks": cols, "effect": effect,
                     "average": {"mean": statistics.fmean(avgs), "ci95": seed_interval(avgs),
                                 "n_seeds": len(avgs)} if avgs else None})
    return rows


def _order(subtask: str) -> int:
    from sgvla.tasks import SUBTASKS

    return SUBTASKS.index(subtask) if subtask in SUBTASKS else len(SUBTASKS)


def _mean_cell(d: dict | None) -> str:
    if not d:
        return "-"
    ci = d["ci95"]
    return f"{d['mean']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "") + f" (n={d['n_seeds']})"


def markdown(study: Study, rows: list[dict], cells: list[dict], command: str) -> str:
    subtasks = sorted({s for r in rows for s in r["subtasks"]}, key=_order) or ["(no finished cell)"]
    head = "| Row | " + " | ".join(s.capitalize() for s in subtasks) + " | Avg. |"
    lines = [f"# Study `{study.name}`", "",
             f"`{command}` (study file {study.path}). Data: {study.dataset}. Training seeds {list(study.seeds)}; "
             f"each cell evaluated closed-loop on {study.episodes} **val** episodes per subtask (reset seeds "
             "1,000,000 and up on the built-in scene; MS-HAB's val scenes otherwise).", "",
             "## Mean over training seeds, 95% t-interval over seeds", "", head,
             "|" + "---|" * (len(subtasks) + 2)]
    for r in rows:
        lines.append(f"| {r['row']} | " + " | ".join(_mean_cell(r["subtasks"].get(s)) for s in subtasks)
                     + f" | {_mean_cell(r['average'])} |")
    effect_cols = [s for s in subtasks if any(s in r.get("effect", {}) for r in rows)]
    if effect_cols:  # partial progress: tells rows apart where success is rare (small models, short runs)
        lines += ["", "Subtask effect reached at some step (back at rest or not), mean over seeds [95% t-interval]:",
                  "", "| Row | " + " | ".join(s.capitalize() for s in effect_cols) + " |",
                  "|" + "---|" * (len(effect_cols) + 1)]
        lines += [f"| {r['row']} | " + " | ".join(_mean_cell(r.get("effect", {}).get(s)) for s in effect_cols) + " |"
                  for r in rows]
    lines += ["", "## Every cell, 95% Wilson interval over its episodes", "",
              "| Row | Seed | " + " | ".join(s.capitalize() for s in subtasks) + " | Avg. |",
              "|" + "---|" * (len(subtasks) + 3)]
    for c in cells:
        if c["status"] != "done":
            lines.append(f"| {c['row']} | {c['seed']} | " + " | ".join("-" for _ in subtasks)
                         + f" | {c['status']}{': ' + c['reason'] if c.get('reason') else ''} |")
            continue
        parts = []
        for s in subtasks:
            p = c["per_subtask"].get(s)
            parts.append("-" if p is None else f"{p['success_rate']:.2f} ({p['successes']}/{p['episodes']}) "
                                               f"[{p['wilson95'][0]:.2f}, {p['wilson95'][1]:.2f}]")
        lines.append(f"| {c['row']} | {c['seed']} | " + " | ".join(parts) + f" | {c['average']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], cells: list[dict], path: Path) -> None:
    """Grouped bars: mean per subtask and average for each row, 95% interval over seeds as error
    bars, each training seed's rate as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subtasks = sorted({s for r in rows for s in r["subtasks"]}, key=_order) + ["avg"]
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(subtasks), 3.6))
    for i, r in enumerate(rows):
        cols = [r["subtasks"].get(s) if s != "avg" else r["average"] for s in subtasks]
        means = [c["mean"] if c else 0.0 for c in cols]
        err = [[(c["mean"] - c["ci95"][0]) if c and c["ci95"] else 0 for c in cols],
               [(c["ci95"][1] - c["mean"]) if c and c["ci95"] else 0 for c in cols]]
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(subtasks))]
        ax.bar(xs, means, width, yerr=err, capsize=3, label=r["row"])
        for c in (c for c in cells if c["row"] == r["row"] and c["status"] == "done"):
            vals = [c["per_subtask"][s]["success_rate"] if s in c["per_subtask"] else c["average"] if s == "avg"
                    else None for s in subtasks]
            ax.scatter([x for x, v in zip(xs, vals, strict=True) if v is not None], [v for v in vals if v is not None],
                       s=8, color="black", zorder=3)
    ax.set_xticks(range(len(subtasks)), [s.capitalize() for s in subtasks])
    ax.set_ylim(0, 1)
    ax.set_ylabel("val success rate")
    ax.legend(fontsize=7, ncols=2)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def write_report(study: Study, out: Path, echo: bool = True) -> dict:
    """study.json (every cell and episode), results.md and study.png, each written atomically;
    `echo` prints the tables (the final report does, the ones written after each cell do not)."""
    cells = collect(study, out)
    rows = summarize(study, cells)
    command = " ".join(["sgvla", "study", *sys.argv[2:]]) if sys.argv[1:2] == ["study"] else f"sgvla study {study.path}"
    report = {"study": study.name, "study_file": str(study.path), "dataset": study.dataset, "task": study.task,
              "seeds": list(study.seeds), "episodes_per_subtask": study.episodes, "split": "val",
              "rows": rows, "cells": cells}
    write_json_atomic(out / "study.json", report)
    md = markdown(study, rows, cells, command)
    write_text_atomic(out / "results.md", md)
    if any(r["seeds_done"] for r in rows):
        plot(rows, cells, out / "study.png")
    if not echo:
        return report
    print(md)
    failed = [c for c in cells if c["status"] == "failed"]
    if failed:
        print(f"{len(failed)} cell(s) failed (reasons above); fix and re-run with --retry-failed", file=sys.stderr)
    return report
