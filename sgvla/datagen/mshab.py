"""The MS-HAB replay path: what it needs on disk, how to rebuild an env for a published demo file.

MS-HAB's published demos (`arth-shukla/MS-HAB-{TidyHouse,PrepareGroceries,SetTable}`) are one
`.h5` + `.json` per target object, recorded without env states, and their JSON drops the task
plans and spawn data the env was built with. To replay them we rebuild `{Subtask}SubtaskTrain-v0`
from the per-object task-plan file (`task_plans/<task>/<subtask>/train/<obj>.json`, not
`all.json`: `task_plan_idx` indexes the per-object plans) and the subtask's `spawn_data.pt`, then
reset each episode with its recorded `build_config_idx`, `task_plan_idx` and
`spawn_selection_idx`. Everything is checked before any simulator starts, and a missing piece
is reported with the command that fetches it.
"""

from __future__ import annotations

import os
from pathlib import Path

from sgvla.datagen.sources import DemoEpisode, DemoFile
from sgvla.errors import SgvlaError
from sgvla.tasks import MSHAB_DEMO_REPOS, SUBTASKS

MSHAB_ENV_IDS = {f"{s.capitalize()}SubtaskTrain-v0": s for s in SUBTASKS}
#: Split of the task plans / spawn data the published demos were generated with.
PLAN_SPLIT = "train"
_INSTALL = ("git clone https://github.com/arth-shukla/mshab && pip install -e ./mshab "
            "(it is not on PyPI)")


#: ManiSkill's SceneManipulationEnv rebuilds the whole apartment on every reset when num_envs == 1
#: (reconfiguration_freq=1), reloading ReplicaCAD, YCB and the spawn data each episode. sgvla asks
#: for a rebuild itself (`reconfigure=True`) only when the scene changes, and plans shards so that
#: consecutive episodes share their scene.
NO_AUTO_RECONFIGURE = {"reconfiguration_freq": 0}


def asset_root() -> Path:
    """ManiSkill's data folder: `$MS_ASSET_DIR/data`, by default `~/.maniskill/data`."""
    return Path(os.environ.get("MS_ASSET_DIR", os.path.join(os.path.expanduser("~"), ".maniskill"))) / "data"


def rearrange_dir() -> Path:
    return asset_root() / "scene_datasets" / "replica_cad_dataset" / "rearrange"


def default_demos_dir(task: str) -> Path:
    """Where MS-HAB's instructions download a task's demos (`rearrange-dataset/<task>`)."""
    return asset_root() / "scene_datasets" / "replica_cad_dataset" / "rearrange-dataset" / task


#: ManiSkill 3.0.1's downloader takes one asset uid per call. ReplicaCAD comes before
#: ReplicaCADRearrange (which lands inside its folder), and both before the demos: downloading
#: ReplicaCAD again asks "Remove?" about `replica_cad_dataset/`, and "y" deletes everything under
#: it, the demo folder `rearrange-dataset/` (up to ~490 GB) included.
DOWNLOAD_UIDS = ("ycb", "ReplicaCAD", "ReplicaCADRearrange")
REMOVE_WARNING = ("if ReplicaCAD is ever downloaded again, answer 'n' to its \"Remove?\" prompt: 'y' deletes "
                  "replica_cad_dataset/ with the demos in rearrange-dataset/")


def download_commands() -> list[str]:
    """The asset downloads, one command per asset, in the safe order."""
    return [f"MS_ASSET_DIR={asset_root().parent} python -m mani_skill.utils.download_asset {uid}"
            for uid in DOWNLOAD_UIDS]


def _download_hint() -> str:
    return " && ".join(download_commands()) + f" ({REMOVE_WARNING})"


def required_paths(task: str, subtasks: tuple[str, ...], split: str = PLAN_SPLIT) -> list[Path]:
    """Asset files and folders the rebuilt envs of `split` read (scenes, task plans, spawn data, YCB)."""
    base = asset_root() / "scene_datasets" / "replica_cad_dataset"
    paths = [base / "configs" / "scenes", rearrange_dir() / split / task]
    for s in subtasks:
        paths.append(task_plans_dir(task, s, split))
        paths.append(spawn_data_file(task, s, split))
    # MS-HAB's rearrange scene builder places the YCB objects in every subtask, open and close too
    paths.append(asset_root() / "assets" / "mani_skill2_ycb")
    return paths


def check_ready(task: str, subtasks: tuple[str, ...], split: str = PLAN_SPLIT) -> None:
    """Raise SgvlaError naming the first missing asset (with its download command) or package."""
    root = asset_root()
    if not root.is_dir():
        raise SgvlaError(f"MS-HAB asset dir {root} does not exist (set MS_ASSET_DIR): download the scenes "
                         f"with `{_download_hint()}` and the demos of {MSHAB_DEMO_REPOS[task]} into "
                         f"{default_demos_dir(task)}")
    for p in required_paths(task, subtasks, split):
        if not p.exists():
            raise SgvlaError(f"MS-HAB asset {p} is missing under MS_ASSET_DIR={root.parent}: download it "
                             f"with `{_download_hint()}`")
    try:
        import mshab.envs  # noqa: F401  (registers {Subtask}SubtaskTrain-v0)
        from mshab.envs.planner import plan_data_from_file  # noqa: F401
    except ImportError as e:
        raise SgvlaError(f"replaying MS-HAB demos needs the mshab package ({e}): {_INSTALL}") from e


def worker_runtime_env() -> dict:
    """Ray `runtime_env` for replay workers: the driver's asset folder, so every node reads the
    assets the driver checked (the folder, the demos and --out must be on a filesystem every node
    mounts at the same path)."""
    return {"env_vars": {"MS_ASSET_DIR": str(asset_root().parent)}}


def check_worker_ready(task: str, subtasks: tuple[str, ...]) -> None:
    """`check_ready` run inside a worker, its error naming the node: the driver's check says nothing
    about another machine's disks or packages."""
    import socket

    try:
        check_ready(task, subtasks)
    except SgvlaError as e:
        raise SgvlaError(f"on node {socket.gethostname()}: {e}") from None


def check_file(task: str, demo: DemoFile) -> None:
    """A file given for an MS-HAB task must come from MS-HAB's env and have its task-plan file."""
    if demo.env_id not in MSHAB_ENV_IDS:
        raise SgvlaError(f"{demo.path} was recorded in env {demo.env_id}, not an MS-HAB subtask env "
                         f"({', '.join(MSHAB_ENV_IDS)}): pass MS-HAB demos with --task {task}")
    plan = task_plan_file(task, demo)
    if not plan.is_file():
        raise SgvlaError(f"no MS-HAB task plan {plan} for demo file {demo.path}: the file name must be "
                         f"the target's (e.g. 024_bowl.h5, fridge.h5); download plans with "
                         f"`{_download_hint()}`")


def task_plans_dir(task: str, subtask: str, split: str = PLAN_SPLIT) -> Path:
    """Folder of the per-object task-plan files of one subtask and split."""
    return rearrange_dir() / "task_plans" / task / subtask / split


def spawn_data_file(task: str, subtask: str, split: str = PLAN_SPLIT) -> Path:
    return rearrange_dir() / "spawn_data" / task / subtask / split / "spawn_data.pt"


def task_plan_file(task: str, demo: DemoFile) -> Path:
    return task_plans_dir(task, demo.subtask) / f"{demo.target}.json"


def env_kwargs(task: str, demo: DemoFile) -> dict:
    """The kwargs the JSON lacks: the per-object task plans, their scene builder, the spawn data."""
    from mshab.envs.planner import plan_data_from_file

    plan_data = plan_data_from_file(task_plan_file(task, demo))
    spawn = spawn_data_file(task, demo.subtask)
    return dict(task_plans=plan_data.plans, scene_builder_cls=plan_data.dataset, spawn_data_fp=str(spawn),
                require_build_configs_repeated_equally_across_envs=False, **NO_AUTO_RECONFIGURE)


def check_subtask_uids(unwrapped, demo: DemoFile, episodes: list[DemoEpisode]) -> None:
    """After a reset: the rebuilt plan's subtask must be the one each episode was recorded on. A
    mismatch means task plans and demos of different releases (ReplicaCADRearrange was re-issued in
    2025), which otherwise shows up only as drift at step 0."""
    plan = getattr(unwrapped, "task_plan", None)
    if not plan:
        return
    for i, e in enumerate(episodes):
        got = [st.composite_subtask_uids[i] for st in plan]  # this sub-scene's subtasks, in plan order
        if e.subtask_uid and e.subtask_uid not in got:
            raise SgvlaError(f"{demo.path} {e.traj} was recorded on subtask {e.subtask_uid} but its task plan "
                             f"rebuilds subtask(s) {', '.join(got)}: the task plans and the demos come from "
                             "different releases; download both again (ReplicaCADRearrange and the MS-HAB demo "
                             "repo)")


def reset_options(episodes: list[DemoEpisode], reconfigure: bool) -> dict:
    """`env.reset(options=...)` that recreates these episodes' start states, one per sub-scene."""
    import torch

    return dict(
        reconfigure=reconfigure,
        build_config_idxs=[int(e.reset_idxs["build_config_idx"]) for e in episodes],
        task_plan_idxs=torch.tensor([int(e.reset_idxs["task_plan_idx"]) for e in episodes]),
        spawn_selection_idxs=[int(e.reset_idxs["spawn_selection_idx"]) for e in episodes],
    )
