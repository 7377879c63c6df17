"""`sgvla info`: what a dataset folder holds, per config / split / subtask, read from the Parquet data.

Counts come from the rows themselves (two integer columns per shard, no image decoding), so the
table is right even when the card or meta/stats.json are stale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sgvla.dataset.layout import fmt_bytes, group_shards, open_shard, require_dataset
from sgvla.dataset.schema import FEATURES


def info_rows(path: Path) -> list[dict]:
    """One dict per (config, split, subtask) plus an 'all' row per (config, split)."""
    out = []
    names = FEATURES["subtask"].names
    for config, splits in group_shards(require_dataset(Path(path))).items():
        for split, shards in splits.items():
            ep, sub = [], []
            for s in shards:
                with open_shard(s.path) as pf:
                    t = pf.read(columns=["episode_index", "subtask"])
                ep.append(t.column("episode_index").to_numpy())
                sub.append(t.column("subtask").to_numpy())
            ep_a, sub_a = np.concatenate(ep), np.concatenate(sub)
            size = sum(s.path.stat().st_size for s in shards)
            for sid in np.unique(sub_a):
                sel = sub_a == sid
                out.append({"config": config, "split": split, "subtask": names[int(sid)],
                            "episodes": int(len(np.unique(ep_a[sel]))), "transitions": int(sel.sum()),
                            "shards": None, "bytes": None})
            out.append({"config": config, "split": split, "subtask": "all",
                        "episodes": int(len(np.unique(ep_a))), "transitions": int(len(ep_a)),
                        "shards": len(shards), "bytes": size})
    return out


def info_warnings(path: Path) -> list[str]:
    """What makes the table below misleading: missing or stray shards, shards off the schema
    (cheap: names and footers only; `sgvla validate` checks the rows too)."""
    from sgvla.dataset.validate import check_layout, check_schema

    shards = require_dataset(Path(path))
    problems = check_layout(Path(path), shards)
    for s in shards:
        with open_shard(s.path) as pf:
            problems += check_schema(s, pf)
    return problems


def print_info(path: Path) -> None:
    """Print the table of `info_rows` (rich) and the folder's total size on disk, after a warning
    for each layout or schema problem (the counts are then those of the shards present)."""
    import sys

    from rich.console import Console
    from rich.table import Table

    for problem in info_warnings(path):
        print(f"warning: {problem} (run `sgvla validate {path}`)", file=sys.stderr)
    rows = info_rows(path)
    table = Table(title=f"sgvla dataset {path}")
    numeric = ("episodes", "transitions", "shards", "size")
    for col in ("config", "split", "subtask", *numeric):
        table.add_column(col, justify="right" if col in numeric else "left")
    for r in rows:
        bold = r["subtask"] == "all"
        cells = [r["config"], r["split"], r["subtask"], str(r["episodes"]), str(r["transitions"]),
                 "" if r["shards"] is None else str(r["shards"]),
                 "" if r["bytes"] is None else fmt_bytes(r["bytes"])]
        table.add_row(*cells, style="bold" if bold else None)
    total = sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
    console = Console(width=max(100, Console().width))
    console.print(table)
    console.print(f"total size on disk: {fmt_bytes(total)}")
