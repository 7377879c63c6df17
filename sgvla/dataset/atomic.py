"""Atomic small-file writes for the dataset's metadata (JSON, README).

A generator or a user may be killed at any moment; readers must then see either the old file or the
new one, never half of one, so everything goes through a temporary file in the same folder and
`os.replace`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> Path:
    """Write `text` to `path` via a same-folder temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(path: Path, obj) -> Path:
    """JSON-dump `obj` (indented, key order kept) atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=1) + "\n")
