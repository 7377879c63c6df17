"""`sgvla doctor`: every missing piece for a task, listed at once, before a cluster job starts.

`sgvla gen` and `sgvla eval` stop at the first missing piece; a user setting up a cluster node
wants the whole list: the rendering driver (an NVIDIA node needs NVIDIA's Vulkan ICD as well as the
CUDA driver), the ManiSkill pin, and for MS-HAB tasks the `mshab` package and its dependencies,
every asset the train and val envs read, and the demos of each subtask.
"""

from __future__ import annotations

import importlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from sgvla.provenance import package_version
from sgvla.tasks import BUILTIN_TASK, subtasks_for

MANISKILL_PIN = "3.0.1"
#: Where Vulkan loaders look for installable client drivers (ICDs).
ICD_DIRS = ("/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d", "/usr/local/share/vulkan/icd.d")
MSHAB_DEPS = ("dacite", "shortuuid", "omegaconf")


@dataclass
class Check:
    what: str
    ok: bool
    fix: str = ""


def nvidia_icd_missing(icd_dirs=ICD_DIRS) -> bool:
    """An NVIDIA GPU is present (nvidia-smi) but no NVIDIA Vulkan ICD is installed: CUDA works and
    SAPIEN still cannot render."""
    if shutil.which("nvidia-smi") is None:
        return False
    return not any(p.name.startswith("nvidia") for d in icd_dirs if Path(d).is_dir() for p in Path(d).glob("*.json"))


def _rendering() -> Check:
    if nvidia_icd_missing():
        return Check("NVIDIA Vulkan driver (ICD)", False, "install the Vulkan part of the NVIDIA driver "
                     "(e.g. libnvidia-gl-<driver version>), which provides nvidia_icd.json under "
                     "/usr/share/vulkan/icd.d")
    try:
        from sgvla.envs import make_env

        make_env(BUILTIN_TASK, "pick", obs_mode="rgb").close()
        return Check("rendering (SAPIEN + Vulkan)", True)
    except Exception as e:  # the env module turns driver problems into SgvlaError with the fix
        return Check("rendering (SAPIEN + Vulkan)", False, str(e).splitlines()[0][:300])


def _maniskill() -> Check:
    version = package_version("mani_skill")
    if version is None:
        return Check("ManiSkill", False, "run `bash scripts/setup.sh`")
    return Check(f"ManiSkill {version}", version == MANISKILL_PIN,
                 "" if version == MANISKILL_PIN else f"sgvla is pinned to mani_skill=={MANISKILL_PIN}; installing "
                 "mshab with its own dependencies replaced it: `pip install mani_skill==3.0.1`")


def _mshab_checks(task: str, subtasks: tuple[str, ...], demos: Path | None) -> list[Check]:
    from sgvla.datagen import mshab
    from sgvla.eval.mshab_env import EVAL_SPLIT

    out = []
    for name in ("mshab", *MSHAB_DEPS):
        try:
            importlib.import_module(name)
            out.append(Check(f"python package {name}", True))
        except ImportError:
            fix = ("`pip install --no-deps -e <clone of arth-shukla/mshab>` (README)" if name == "mshab"
                   else f"`pip install {name}`")
            out.append(Check(f"python package {name}", False, fix))
    splits = (mshab.PLAN_SPLIT, EVAL_SPLIT)
    paths = dict.fromkeys(p for split in splits for p in mshab.required_paths(task, subtasks, split))
    for p in paths:
        out.append(Check(f"asset {p}", p.exists(), "" if p.exists() else mshab._download_hint()))
    root = Path(demos) if demos is not None else mshab.default_demos_dir(task)
    for sub in subtasks:
        found = sorted((root / sub).glob("*.h5")) if (root / sub).is_dir() else []
        out.append(Check(f"demos of {sub} in {root / sub}", bool(found),
                         "" if found else f"download {mshab.MSHAB_DEMO_REPOS[task]} into {root}"))
    return out


def run_checks(task: str, subtask: str = "all", demos: Path | None = None) -> list[Check]:
    subtasks = subtasks_for(task, subtask)
    checks = [_maniskill(), _rendering()]
    if task != BUILTIN_TASK:
        checks += _mshab_checks(task, subtasks, demos)
    return checks


def print_checks(checks: list[Check]) -> bool:
    """One line per check, then each distinct fix once; True when all pass."""
    for c in checks:
        print(f"{'ok     ' if c.ok else 'MISSING'}  {c.what}")
    fixes = list(dict.fromkeys(c.fix for c in checks if not c.ok and c.fix))
    if fixes:
        print("to fix:")
        for f in fixes:
            print(f"  - {f}")
    bad = sum(not c.ok for c in checks)
    print(f"{len(checks) - bad} of {len(checks)} checks pass" + ("" if not bad else f"; {bad} to fix"))
    return bad == 0
