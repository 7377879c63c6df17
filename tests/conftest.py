"""Fixtures shared by several test modules."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest


def pytest_configure(config):
    """`make test` runs the suite on two pytest-xdist workers. Each gets its own TMPDIR (Ray's
    session folders and sgvla's registry of local Ray instances both live there), so a command in
    one worker never reaps the Ray that a test in the other killed on purpose and checks on. Each
    also keeps torch (and what it starts: commands, Ray workers) to one thread: two workers with
    2-thread pools on 2 cores trained 4x slower than with one thread each."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        os.environ["OMP_NUM_THREADS"] = "1"
        own = Path(tempfile.gettempdir()) / f"sgvla-{worker}"
        own.mkdir(exist_ok=True)
        os.environ["TMPDIR"] = str(own)
        tempfile.tempdir = None  # re-read TMPDIR


@pytest.fixture(scope="module")
def ray_cluster():
    """A local 2-CPU Ray for one module: commands given no --ray-address use it and leave it running
    (they shut down only a Ray they started themselves)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


#: The longest modules (minutes each on a 2-core machine), started first so that the two xdist
#: workers of `make test` (whole modules each, `--dist loadfile`) finish at about the same time.
#: xdist's default scheduling sends the modules with the most tests first, which overrides this
#: order; `make test` keeps it (`--no-loadscope-reorder`) since the memorisation check grew to about
#: 12 minutes: a clean-clone `make test` took 18.1 min with it, 22.1 without (one run each,
#: 2026-12-05; before that check grew, 21.4 with and 19.9 without, 2026-12-04).
LONG_MODULES = ("test_learning", "test_train_ray", "test_main_job", "test_study", "test_gen_e2e", "test_eval",
                "test_hardening")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        name = Path(str(item.fspath)).stem
        return LONG_MODULES.index(name) if name in LONG_MODULES else len(LONG_MODULES)

    items.sort(key=rank)  # stable: the order within a module is kept
