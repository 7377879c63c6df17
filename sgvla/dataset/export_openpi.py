"""openpi's normalisation statistics (`norm_stats.json`) for a dataset exported to LeRobot.

openpi (`openpi.shared.normalize`) normalises a model's `state` and `actions` per dimension with
mean / std or, for its quantile-normalised models, q01 / q99, read from
`<assets dir>/<asset id>/norm_stats.json`, a file shaped
`{"norm_stats": {key: {"mean": [...], "std": [...], "q01": [...], "q99": [...]}}}`. Its own
`compute_norm_stats` script gets them by streaming the whole dataset through the training
transforms; the export already holds every state and action, so it writes the file in passing
and a user can copy it into openpi's assets folder instead of running that pass.

The keys are openpi's, not LeRobot's: an openpi data config's repack transform maps the LeRobot
columns `observation.state` and `action` onto `state` and `actions` (`OPENPI_KEYS`). The values
are exact over every frame (std is the population std, as openpi's running statistics give;
quantiles are numpy's linear ones, where openpi's script approximates them with histograms).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

NORM_STATS_FILE = "norm_stats.json"
#: openpi key -> the exported LeRobot feature it is computed from.
OPENPI_KEYS: dict[str, str] = {"state": "observation.state", "actions": "action"}


def norm_stats(columns: dict[str, np.ndarray]) -> dict:
    """`{"norm_stats": {...}}` from the exported features' values, each [frames, dims]."""
    out = {}
    for key, feature in OPENPI_KEYS.items():
        x = np.asarray(columns[feature], dtype=np.float64)
        q01, q99 = np.quantile(x, [0.01, 0.99], axis=0)
        out[key] = {"mean": x.mean(axis=0).tolist(), "std": x.std(axis=0).tolist(),
                    "q01": q01.tolist(), "q99": q99.tolist()}
    return {"norm_stats": out}


def write_norm_stats(folder: Path, columns: dict[str, np.ndarray]) -> Path:
    """Write `folder/norm_stats.json` (what `openpi.shared.normalize.load(folder)` reads)."""
    path = Path(folder) / NORM_STATS_FILE
    path.write_text(json.dumps(norm_stats(columns), indent=2) + "\n", encoding="utf-8")
    return path
