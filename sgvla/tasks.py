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
#: Demo files (ManiSkill trajectory layout): the optional per-trajectory dataset holding the clean
#: expert action of each step when the executed `actions` were perturbed (`sgvla demos --noise`).
EXPERT_ACTIONS = "expert_actions"

#: Episode splits of the built-in scene. Every random choice of an episode is drawn from its reset
#: seed, so disjoint seed ranges give train, val and dev episodes that can never overlap (MS-HAB gets
#: the same guarantee from separate train/val scenes). `sgvla demos` draws train seeds, `sgvla eval`
#: val: the split results are reported on. `dev` is for choosing settings (recipes, checkpoints,
#: execution horizons) so that nothing reported was tuned on the episodes it is reported on.
SPLITS: tuple[str, ...] = ("train", "val", "dev")
SPLIT_SIZE = 1_000_000
_SPLIT_BASE = {"train": 0, "val": SPLIT_SIZE, "dev": 2 * SPLIT_SIZE}


def subtasks_for(task: str, subtask: str) -> tuple[str, ...]:
    """Expand `subtask` ("all", one name or a comma list such as "pick,place") for `task`, in the
    task's order, raising a clear error for bad names."""
    from sgvla.errors import SgvlaError

    if task not in TASK_SUBTASKS:
        raise SgvlaError(f"unknown task {task!r} (--task): choose one of {', '.join(TASKS)}")
    have = TASK_SUBTASKS[task]
    if subtask == "all":
        return have
    asked = {s.strip() for s in subtask.split(",") if s.strip()}
    bad = sorted(asked - set(have))
    if bad or not asked:
        raise SgvlaError(f"task {task!r} has no subtask {', '.join(bad) or repr(subtask)} (--subtask): choose "
                         f"from {', '.join(have)}, a comma list of them, or 'all'")
    return tuple(s for s in have if s in asked)


def split_seeds(split: str, start: int, count: int) -> list[int]:
    """Reset seeds of episodes start .. start+count-1 of a built-in split (`--seed` is `start`)."""
    from sgvla.errors import SgvlaError

    if split not in SPLITS:
        raise SgvlaError(f"unknown split {split!r} (--split): choose one of {', '.join(SPLITS)}")
    if start < 0 or start + count > SPLIT_SIZE:
        raise SgvlaError(f"--seed {start} with {count} episodes leaves the {split} split (episodes 0.."
                         f"{SPLIT_SIZE - 1}): use a --seed between 0 and {SPLIT_SIZE - count}")
    return [_SPLIT_BASE[split] + start + i for i in range(count)]


def split_of_seed(seed: int) -> str | None:
    """The built-in split a reset seed belongs to (None outside every split)."""
    return next((name for name, base in _SPLIT_BASE.items() if base <= seed < base + SPLIT_SIZE), None)
