"""One way to get Ray for a command: start a private instance or join `--ray-address`, and shut
down only what was started here.

Why one helper: `sgvla train`, `sgvla eval` and `sgvla gen` all run on Ray. A command must never
shut down a Ray it did not start (a notebook's, a benchmark's, a cluster's), must not silently
join someone else's cluster when no `--ray-address` was given, and a wrong `--ray-address` must
read as one sentence naming that flag rather than Ray's ConnectionError traceback.

    with RaySession(address, num_cpus=4) as session:   # or session.start() ... session.close()
        ...
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sgvla.errors import SgvlaError
from sgvla.waits import reach_within


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

    def __enter__(self) -> RaySession:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
