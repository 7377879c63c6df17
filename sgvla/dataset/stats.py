"""Dataset statistics, computed per shard while generating and merged without touching images.

`sgvla gen` calls `shard_stats` on the vectors of each shard it writes and stores the result
with `write_shard_stats` (before the shard is renamed into place); `merge_stats` then combines the
partial files into `meta/stats.json`. Merging never re-reads the Parquet data, so it costs
milliseconds per shard however large the images are.

How each statistic merges:

* count, mean and std: per-dimension count / mean / sum of squared deviations (M2), combined with
  Chan et al.'s parallel update, so they are exact (std is the population std, ddof=0);
* min and max: exact;
* q01 and q99: each shard keeps, per dimension, its sorted values when it has at most
  `EXACT_ROWS` rows (then the merged quantiles are exactly `numpy.quantile`'s, linear
  interpolation), otherwise `EXACT_ROWS` evenly spaced order statistics (including its min and
  max), each standing for N / EXACT_ROWS rows. With any such summary present the merge takes a
  weighted quantile over all points; its rank error is at most 1 / EXACT_ROWS of the data, i.e.
  a q01 lands between the true q0.9 and q1.1. `stats.json["quantiles"]` says which case applied.
  The points are stored as base64 of a float32 [m, D] array (`points_f32`), about 200 bytes per
  transition at most: ~1-2% of the image data, and exact.

`obj_pose` rows that are all zeros (no target pose recorded) are left out of its statistics, so
the pose normaliser describes real poses; the field's `count` says how many rows were used.
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np

from sgvla.dataset.atomic import write_json_atomic
from sgvla.dataset.layout import find_shards, read_json, shard_stats_path, stats_path
from sgvla.dataset.schema import ACTION_DIM, FEATURES, STATS_FIELDS, VECTOR_FIELDS, pose_present
from sgvla.errors import SgvlaError

#: Rows a shard keeps verbatim for quantiles; above this it keeps this many order statistics.
EXACT_ROWS = 1024
#: Upper bound on points per dimension held in memory by a merge of approximate summaries.
MERGE_BUDGET = 262_144
QUANTILES = {"q01": 0.01, "q99": 0.99}
STATS_VERSION = 1


def _short(x: np.ndarray) -> list:
    """float32 values as the shortest decimal that round-trips, to keep the JSON small."""
    return [float(str(v)) for v in np.asarray(x, dtype=np.float32).ravel()]


def _field_rows(name: str, values: np.ndarray) -> np.ndarray:
    """Rows that count for `name`'s statistics (all-zero obj_pose rows mean 'no pose')."""
    if name == "obj_pose" and len(values):
        return values[pose_present(values)]
    return values


def _summarize(values: np.ndarray) -> dict:
    """Mergeable per-dimension summary of an [N, D] array (see the module doc)."""
    n, d = values.shape
    if n == 0:
        return {"count": 0, "mean": [0.0] * d, "m2": [0.0] * d, "min": [0.0] * d, "max": [0.0] * d,
                "weight": 1.0, "points_f32": ""}
    v = values.astype(np.float64)
    mean = v.mean(axis=0)
    srt = np.sort(values.astype(np.float32), axis=0)
    if n > EXACT_ROWS:
        srt = srt[np.round(np.linspace(0, n - 1, EXACT_ROWS)).astype(int)]
    return {
        "count": int(n),
        "mean": mean.tolist(),
        "m2": ((v - mean) ** 2).sum(axis=0).tolist(),
        "min": _short(srt[0]),
        "max": _short(srt[-1]),
        "weight": n / len(srt),
        "points_f32": base64.b64encode(np.ascontiguousarray(srt, "<f4").tobytes()).decode("ascii"),
    }


def _subtask_names(subtask) -> np.ndarray:
    arr = np.asarray(subtask)
    if arr.dtype.kind in "iu":
        names = FEATURES["subtask"].names
        return np.array([names[i] for i in arr])
    return arr.astype(str)


def shard_stats(columns: dict[str, np.ndarray]) -> dict:
    """JSON-able partial statistics of one shard.

    `columns` holds every `schema.STATS_FIELDS` array shaped [N, D] (float), plus `episode_index`
    [N] and `subtask` [N] (names or ClassLabel ids) for the episode / transition counts.
    """
    missing = [k for k in (*STATS_FIELDS, "episode_index", "subtask") if k not in columns]
    if missing:
        raise ValueError(f"shard_stats needs columns {missing}")
    ep = np.asarray(columns["episode_index"]).ravel()
    sub = _subtask_names(columns["subtask"]).ravel()
    n = len(ep)
    fields = {}
    for name in STATS_FIELDS:
        arr = np.asarray(columns[name], dtype=np.float32).reshape(n, VECTOR_FIELDS[name])
        fields[name] = _summarize(_field_rows(name, arr))
    subtasks = {}
    for s in sorted(set(sub.tolist())):
        sel = sub == s
        subtasks[s] = {"episodes": int(len(np.unique(ep[sel]))), "transitions": int(sel.sum())}
    return {"version": STATS_VERSION, "num_transitions": int(n), "num_episodes": int(len(np.unique(ep))),
            "subtasks": subtasks, "fields": fields}


def write_shard_stats(root: Path, config: str, split: str, shard_i: int, stats: dict) -> Path:
    """Store one shard's partial statistics atomically at meta/shards/<config>/<split>-NNNNN.json."""
    return write_json_atomic(shard_stats_path(root, config, split, shard_i), stats)


def _merge_moments(parts: list[dict]) -> tuple[int, np.ndarray, np.ndarray]:
    """Chan's parallel combination of (count, mean, M2)."""
    n, mean, m2 = 0, None, None
    for p in parts:
        nb = p["count"]
        if nb == 0:
            continue
        mb, m2b = np.asarray(p["mean"]), np.asarray(p["m2"])
        if n == 0:
            n, mean, m2 = nb, mb, m2b
            continue
        delta = mb - mean
        tot = n + nb
        mean = mean + delta * nb / tot
        m2 = m2 + m2b + delta**2 * n * nb / tot
        n = tot
    return n, mean, m2


def points_of(part: dict, dim: int) -> np.ndarray:
    """A summary's sorted points as float64 [m, dim] (exact float32 values)."""
    raw = base64.b64decode(part.get("points_f32", ""))
    return np.frombuffer(raw, "<f4").reshape(-1, dim).astype(np.float64)


def _weighted_quantile(points: np.ndarray, weights: np.ndarray, q: float) -> float:
    order = np.argsort(points, kind="stable")
    p, w = points[order], weights[order]
    cum = np.cumsum(w)
    return float(p[min(np.searchsorted(cum, q * cum[-1]), len(p) - 1)])


def _thin(points: np.ndarray, keep: int) -> np.ndarray:
    if len(points) <= keep:
        return points
    return points[np.round(np.linspace(0, len(points) - 1, keep)).astype(int)]


def _merge_quantiles(parts: list[dict], dim: int) -> tuple[dict, bool]:
    """q01/q99 per dimension from the parts' points; True when the result is exact."""
    parts = [p for p in parts if p["count"]]
    exact = all(p["weight"] == 1.0 for p in parts)
    points = [points_of(p, dim) for p in parts]
    scale = min(1.0, MERGE_BUDGET / max(sum(len(x) for x in points), 1))
    out = {k: [0.0] * dim for k in QUANTILES}
    if exact:
        vals = np.concatenate(points)
        for k, q in QUANTILES.items():
            out[k] = np.quantile(vals, q, axis=0).tolist()
        return out, exact
    for j in range(dim):
        pts, wts = [], []
        for p, x in zip(parts, points, strict=True):
            col = x[:, j]
            kept = _thin(col, max(2, int(len(col) * scale)))
            pts.append(kept)
            wts.append(np.full(len(kept), p["count"] / len(kept)))
        pts_a, wts_a = np.concatenate(pts), np.concatenate(wts)
        for k, q in QUANTILES.items():
            out[k][j] = _weighted_quantile(pts_a, wts_a, q)
    return out, exact


def merge_field(parts: list[dict], dim: int) -> tuple[dict, bool]:
    """Combine one field's shard summaries into {"mean","std","min","max","q01","q99","count"}."""
    n, mean, m2 = _merge_moments(parts)
    if n == 0:
        zeros = [0.0] * dim
        return {"mean": zeros, "std": zeros, "min": zeros, "max": zeros, "q01": zeros, "q99": zeros,
                "count": 0}, True
    live = [p for p in parts if p["count"]]
    quant, exact = _merge_quantiles(live, dim)
    return {
        "mean": mean.tolist(),
        "std": np.sqrt(m2 / n).tolist(),
        "min": np.min([p["min"] for p in live], axis=0).tolist(),
        "max": np.max([p["max"] for p in live], axis=0).tolist(),
        **quant,
        "count": int(n),
    }, exact


def _load_parts(root: Path) -> dict[tuple[str, str], list[dict]]:
    """Partial stats of every finished shard, keyed by (config, split); missing ones are an error."""
    parts: dict[tuple[str, str], list[dict]] = {}
    for shard in find_shards(root):
        p = shard_stats_path(root, shard.config, shard.split, shard.index)
        st = read_json(p)
        if st is None:
            raise SgvlaError(f"shard {shard.path} has no statistics file {p}: re-run the same `sgvla gen` "
                             "command on this folder to redo that shard")
        parts.setdefault((shard.config, shard.split), []).append(st)
    return parts


def _counts(parts: dict[tuple[str, str], list[dict]]) -> dict:
    out: dict = {}
    for (config, split), sts in sorted(parts.items()):
        subs: dict[str, dict[str, int]] = {}
        for st in sts:
            for s, c in st["subtasks"].items():
                acc = subs.setdefault(s, {"episodes": 0, "transitions": 0})
                acc["episodes"] += c["episodes"]
                acc["transitions"] += c["transitions"]
        out.setdefault(config, {})[split] = {
            "episodes": sum(st["num_episodes"] for st in sts),
            "transitions": sum(st["num_transitions"] for st in sts),
            "subtasks": dict(sorted(subs.items())),
        }
    return out


def compute_stats(root: Path) -> dict:
    """Merged statistics of the folder (train split of every config when present, else all)."""
    root = Path(root)
    parts = _load_parts(root)
    if not parts:
        raise SgvlaError(f"{root} holds no finished shards to compute statistics from: run `sgvla gen` first")
    use = [k for k in parts if k[1] == "train"] or list(parts)
    chosen = [st for k in sorted(use) for st in parts[k]]
    stats: dict = {}
    all_exact = True
    for name in STATS_FIELDS:
        stats[name], exact = merge_field([st["fields"][name] for st in chosen], VECTOR_FIELDS[name])
        all_exact &= exact
    stats["num_episodes"] = sum(st["num_episodes"] for st in chosen)
    stats["num_transitions"] = sum(st["num_transitions"] for st in chosen)
    stats["computed_from"] = sorted({f"{c}/{s}" for c, s in use})
    stats["quantiles"] = "exact" if all_exact else f"approximate (rank error <= 1/{EXACT_ROWS})"
    stats["counts"] = _counts(parts)
    return stats


def merge_stats(root: Path) -> dict:
    """Merge every shard's partial statistics into meta/stats.json (atomically) and return it."""
    stats = compute_stats(root)
    write_json_atomic(stats_path(root), stats)
    return stats


def load_stats(root_or_file: Path) -> dict:
    """Read meta/stats.json (or a given stats file) with a clear error when it is missing."""
    p = Path(root_or_file)
    p = stats_path(p) if p.is_dir() else p
    st = read_json(p)
    if st is None:
        raise SgvlaError(f"{p} is missing: run `sgvla gen` to finish the folder (it writes the statistics)")
    return st


def require_action_stats(st: dict, where: str | Path) -> dict:
    """`st` unchanged when it holds the 13-D action q01/q99 that action normalisation needs.

    Anything else (an old or hand-written file) would fail deep inside a DataLoader worker, so it is
    refused here with the fix; `where` names the file in the message.
    """
    action = st.get("action", {}) if isinstance(st, dict) else {}
    if any(len(action.get(k, [])) != ACTION_DIM for k in ("q01", "q99")):
        raise SgvlaError(f"{where} has no {ACTION_DIM}-D action q01/q99: regenerate it with `sgvla gen` "
                         "on the folder")
    return st
