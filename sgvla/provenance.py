"""The software and machine an artefact came from, recorded in datasets, runs and evaluations.

Results here do not reproduce bit for bit across machines even with the same sgvla commit: the same
`sgvla demos` command kept 95 of 96 place demos on one machine and 94 on another (docs/results.md,
section 4), because physics, inverse kinematics and float rounding depend on the libraries'
versions and on the CPU. So a dataset's manifest, a run's run.json and an evaluation's results.json
each say which ones produced them, and a difference can be traced instead of guessed at.
"""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import sgvla

#: The libraries whose versions change what sgvla records, trains or measures.
PACKAGES = ("torch", "numpy", "scipy", "sapien", "mani_skill", "transformers", "datasets", "ray", "safetensors")


@functools.lru_cache(maxsize=1)
def software() -> dict:
    """sgvla's version and commit, Python, OS, CPU model and the versions of PACKAGES (None: not installed)."""
    return {"sgvla": sgvla.__version__, "git_commit": _git_commit(), "python": platform.python_version(),
            "platform": platform.platform(), "cpu": _cpu_model(),
            "packages": {p: package_version(p) for p in PACKAGES}}


def package_version(package: str) -> str | None:
    """The installed distribution's version, None when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    """The checkout's commit ("+dirty" when tracked files changed); None for an installed wheel."""
    root = Path(sgvla.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def changes(recorded: dict | None) -> list[str]:
    """What differs between a recorded software() and this process's, e.g. ["torch 2.13.0 -> 2.14.1"];
    empty when nothing was recorded (artefacts from before this module)."""
    if not recorded:
        return []
    now = software()
    out = [f"{k} {recorded.get(k)} -> {now[k]}" for k in now if k != "packages" and recorded.get(k) != now[k]]
    old = recorded.get("packages") or {}
    return out + [f"{p} {old.get(p)} -> {v}" for p, v in now["packages"].items() if old.get(p) != v]
