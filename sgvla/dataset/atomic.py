"""Atomic file writes for the dataset (metadata, shards, pictures), and the lock of a folder being written.

A generator or a user may be killed at any moment; readers must then see either the old file or the
new one, never half of one, so everything goes through a temporary file in the same folder and
`os.replace`. `write_atomic` is the one implementation; the others only say what to write.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from sgvla.errors import SgvlaError


def write_atomic(path: Path, write_fn: Callable[[Path], object], fsync: bool = False) -> Path:
    """Call `write_fn(tmp)` on a same-folder temporary file, then rename it to `path`.

    The temporary name starts with a dot and does not end in the final suffix, so shard discovery
    (`*.parquet`) never sees a half-written file. `fsync=True` flushes the data to disk before the
    rename, for large files whose loss after a crash would otherwise go unnoticed (shards).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write_fn(tmp)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    """Write `text` to `path` via a same-folder temporary file and a rename."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: Path, obj) -> Path:
    """JSON-dump `obj` (indented, key order kept) atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=1) + "\n")


@contextlib.contextmanager
def folder_lock(folder: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `folder` (a `.<name>.lock` file beside it, so the folder itself stays
    clean to upload) while `what` writes it. A second writer fails at once naming the holder's PID
    instead of redoing the same work and racing on the folder's plan file. The kernel drops the lock
    when the holder exits, even by kill -9, so a stale lock file never blocks a later run."""
    import fcntl

    folder = Path(folder).resolve()  # `--out .` too gets a named lock file beside it
    folder.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder.parent / f".{folder.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            raise SgvlaError(f"{folder} is being written by another {what} (PID {holder}): wait for it to "
                             "finish, or choose another folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)
