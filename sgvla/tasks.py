"""Tasks and subtasks known to sgvla, free of any simulator import.

`model/`, `train/` and `dataset/` need the names (class labels, per-subtask action modes) but must
not import SAPIEN, so the registry lives here rather than in `envs/`.
"""

from __future__ import annotations

BUILTIN_TASK = "mini_kitchen"

#: Subtasks of each task, in MS-HAB's order. `mini_kitchen` is the built-in primitive scene.
TASK_SUBTASKS: dict[str, tuple[str, ...]] = {
    BUILTIN_TASK: ("pick", "place", "open", "close"),
    "tidy_house": ("pick", "place"),
    "prepare_groceries": ("pick", "place"),
    "set_table": ("open", "pick", "place", "close"),
}
TASKS: tuple[str, ...] = tuple(TASK_SUBTASKS)
SUBTASKS: tuple[str, ...] = ("pick", "place", "open", "close")

#: MS-HAB's Hugging Face demo repos and env ids (used by the MS-HAB replay path).
MSHAB_DEMO_REPOS = {
    "tidy_house": "arth-shukla/MS-HAB-TidyHouse",
    "prepare_groceries": "arth-shukla/MS-HAB-PrepareGroceries",
    "set_table": "arth-shukla/MS-HAB-SetTable",
}
CONTROL_FREQ_HZ = 20


def subtasks_for(task: str, subtask: str) -> tuple[str, ...]:
    """Expand `subtask` ("all" or one name) for `task`, raising a clear error for bad names."""
    from sgvla.errors import SgvlaError

    if task not in TASK_SUBTASKS:
        raise SgvlaError(f"unknown task {task!r} (--task): choose one of {', '.join(TASKS)}")
    have = TASK_SUBTASKS[task]
    if subtask == "all":
        return have
    if subtask not in have:
        raise SgvlaError(f"task {task!r} has no subtask {subtask!r} (--subtask): choose one of "
                         f"{', '.join(have)} or 'all'")
    return (subtask,)
