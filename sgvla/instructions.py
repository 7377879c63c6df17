"""The language instruction of an episode: one function for generation and evaluation.

The policy is prompted at evaluation exactly as it was trained, so the text must come from the
same place in both. Our scene states its instruction (`env.unwrapped.instruction`). MS-HAB has no
language: its demo files are named after the target (`024_bowl.h5`, `fridge.h5`,
`kitchen_counter.h5`) and the instruction is made from the subtask and that name ("pick up the
bowl", "open the drawer"). At evaluation MS-HAB's env holds a merged task plan whose objects are
renamed (`obj_0`); the original target is found through the subtask uid the merged plan keeps
(`composite_subtask_uids`) in the env's `base_task_plans`, which gives the same name as the file.
No simulator import: this module only reads attributes.
"""

from __future__ import annotations

import re


def episode_text(env, subtask: str, target_name: str | None = None, env_i: int = 0) -> tuple[str, str]:
    """(instruction, target name) of sub-scene `env_i`: the env's own when it states them (our
    scene), else made from the target's name (`target_name`, or the one in MS-HAB's task plan)."""
    u = env.unwrapped

    def pick(value):
        return value[env_i] if isinstance(value, (list, tuple)) else value

    instruction = pick(getattr(u, "instruction", None))
    name = pick(getattr(u, "target_name", None)) or target_name or mshab_target_name(env, env_i) or subtask
    if instruction:
        return str(instruction), str(name)
    return template_instruction(subtask, str(name)), str(name)


def mshab_target_name(env, env_i: int = 0) -> str | None:
    """The target of the current subtask in MS-HAB's naming (`024_bowl`, `fridge`,
    `kitchen_counter`), or None when the env has no MS-HAB task plan."""
    u = env.unwrapped
    plan = getattr(u, "task_plan", None)
    base = getattr(u, "base_task_plans", None)
    if not plan or not base:
        return None
    uid = plan[0].composite_subtask_uids[env_i]
    for tp in base.values():
        for st in tp.subtasks:
            if st.uid == uid:
                if getattr(st, "articulation_type", None) and st.type in ("open", "close"):
                    return str(st.articulation_type)
                obj = getattr(st, "obj_id", None)
                return re.sub(r"-\d+$", "", str(obj)) if obj else None
    return None


def _noun(name: str) -> str:
    """`024_bowl` -> "bowl", `kitchen_counter` -> "drawer" (the counter's articulated part)."""
    if name == "kitchen_counter":
        return "drawer"
    parts = name.split("_")
    if parts and parts[0].isdigit():
        parts = parts[1:]
    return " ".join(parts) or name


def template_instruction(subtask: str, name: str) -> str:
    noun = _noun(name)
    return {"pick": f"pick up the {noun}", "place": f"place the {noun}", "open": f"open the {noun}",
            "close": f"close the {noun}"}[subtask]
