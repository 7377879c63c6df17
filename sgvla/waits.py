"""Bounded waits on what lies outside this machine: a Ray cluster named by `--ray-address`, the
Hugging Face Hub.

Why a watchdog rather than a library timeout: Ray's connection to a cluster's GCS and the Hub
clients retry internally for minutes, with no timeout we can pass in, so a wrong address or an
endpoint that accepts connections and never answers leaves the user staring at a silent terminal.
The first contact is therefore run under `reach_within`, which ends the process with one `error:`
line after `SGVLA_REACH_TIMEOUT` seconds (30 by default). Only the first contact is bounded: a
long upload or a long training run is not a hang.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

DEFAULT_REACH_TIMEOUT_S = 30.0


def reach_timeout() -> float:
    """Seconds to wait for a first answer (env SGVLA_REACH_TIMEOUT, default 30)."""
    try:
        return max(1.0, float(os.environ.get("SGVLA_REACH_TIMEOUT", DEFAULT_REACH_TIMEOUT_S)))
    except ValueError:
        return DEFAULT_REACH_TIMEOUT_S


@contextmanager
def reach_within(what: str, fix: str, seconds: float | None = None) -> Iterator[None]:
    """Run the block; if it has not finished after `seconds`, print `error: cannot reach <what> ...`
    and exit with status 2 (the block may be stuck in native code that no exception reaches)."""
    seconds = reach_timeout() if seconds is None else seconds
    done = threading.Event()

    def watchdog() -> None:
        if not done.wait(seconds):
            sys.stderr.write(f"error: cannot reach {what}: no answer within {seconds:.0f} s; {fix}\n")
            sys.stderr.flush()
            os._exit(2)

    threading.Thread(target=watchdog, name="sgvla-reach-watchdog", daemon=True).start()
    try:
        yield
    finally:
        done.set()
