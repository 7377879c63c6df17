"""One way to get Ray for a command: start a private instance or join `--ray-address`, and shut
down only what was started here.

Why one helper: `sgvla train`, `sgvla eval` and `sgvla gen` all run on Ray. A command must never
shut down a Ray it did not start (a notebook's, a benchmark's, a cluster's), must not silently
join someone else's cluster when no `--ray-address` was given, and a wrong `--ray-address` must
read as one sentence naming that flag rather than Ray's ConnectionError traceback.

    with RaySession(address, num_cpus=4) as session:   # or session.start() ... session.close()
        ...

It also keeps the process's SIGTERM handler (Ray's would exit at once), bounds the wait for a
cluster that does not answer (`sgvla.waits`), and ends the Ray processes a `kill -9` of an earlier
command left behind.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sgvla.dataset.atomic import write_json_atomic
from sgvla.errors import SgvlaError
from sgvla.waits import reach_within


def _registry_file(pid: int) -> Path:
    return Path(tempfile.gettempdir()) / "sgvla-ray" / f"{pid}.json"


def _record_local_instance() -> None:
    """Note the processes of the Ray instance this command just started (all its descendants now:
    GCS, raylet, agents) under our PID. A command killed with -9 cannot stop them, and Ray's agents
    then outlive it for minutes; the next sgvla command ends them (`reap_orphaned_instances`)."""
    import psutil

    me = psutil.Process()
    procs = [(c.pid, c.create_time()) for c in me.children(recursive=True)]
    write_json_atomic(_registry_file(me.pid), {"driver": [me.pid, me.create_time()], "processes": procs})


def _alive(pid: int, created: float):
    """The process `pid` if it is still the one created at `created` (PIDs are reused)."""
    import psutil

    try:
        p = psutil.Process(pid)
        return p if abs(p.create_time() - created) < 0.01 else None
    except psutil.Error:
        return None


def reap_orphaned_instances() -> list[int]:
    """End the processes of local Ray instances whose sgvla command died without stopping them;
    returns their PIDs. Only processes recorded by `_record_local_instance` are touched."""
    import psutil

    ended = []
    for f in sorted((Path(tempfile.gettempdir()) / "sgvla-ray").glob("*.json")):
        try:
            doc = json.loads(f.read_text())
            if _alive(*doc["driver"]):
                continue
            for pid, created in doc["processes"]:
                p = _alive(pid, created)
                if p is not None:
                    p.kill()
                    ended.append(pid)
            f.unlink(missing_ok=True)
        except (OSError, ValueError, KeyError, TypeError, psutil.Error):
            continue  # another user's note, or one being written: leave it
    return ended


@contextmanager
def _keep_sigterm_handler() -> Iterator[None]:
    """`ray.init` replaces the process's SIGTERM handler with one that exits at once (status 15,
    no `finally`, no word); put back whatever the process had (the CLI's: stop like Ctrl-C)."""
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if before is not None:
            signal.signal(signal.SIGTERM, before)


class RaySession:
    """Ray for one command: `start()` starts or joins it (idempotent), `close()` undoes only that.

    `address`: the user's `--ray-address` (None = start a private local instance: Ray's "local",
    which never joins a cluster found on the machine). `num_cpus` and `include_dashboard` apply
    only to an instance started here (Ray refuses them when joining). If Ray is already
    initialised in this process (e.g. by a benchmark), it is used as it is and left running.
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 include_dashboard: bool = False, **init_kwargs: Any) -> None:
        self.address, self.num_cpus, self.include_dashboard = address, num_cpus, include_dashboard
        self.init_kwargs = {"log_to_driver": False, **init_kwargs}
        self.started = False   # True while this session owns a Ray it started

    def start(self) -> RaySession:
        import ray

        if not ray.is_initialized():
            kwargs = dict(self.init_kwargs)
            if not self.address:
                kwargs.update(num_cpus=self.num_cpus, include_dashboard=self.include_dashboard)
                reap_orphaned_instances()  # what a killed earlier command left running
            try:
                with _keep_sigterm_handler():
                    self._init(ray, kwargs)
            except (ConnectionError, ValueError) as e:
                if not self.address:
                    raise
                raise SgvlaError(f"cannot join the Ray cluster at --ray-address {self.address} "
                                 f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): start it "
                                 "with `ray start --head` or drop --ray-address to run locally") from None
            self.started = True
        return self

    def _init(self, ray, kwargs: dict) -> None:
        if not self.address:
            ray.init(address="local", **kwargs)
            _record_local_instance()
            return
        with reach_within(f"the Ray cluster at --ray-address {self.address}",
                          "check the address (`ray status` on the head node) or drop --ray-address to run "
                          "locally"):
            ray.init(address=self.address, **kwargs)

    def close(self) -> None:
        """Shut Ray down if (and only if) this session started it; safe to call twice."""
        if self.started:
            import ray

            ray.shutdown()
            self.started = False
            _registry_file(os.getpid()).unlink(missing_ok=True)

    def __enter__(self) -> RaySession:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
