"""Auxiliary labels read from a live simulator: one extractor for MS-HAB's envs and ours.

Both env families expose the same handles (see mshab-hab-datagen.md, section 3): the Fetch `agent`
with its `base_link`, cameras `fetch_head` / `fetch_hand`, and the subtask's target. Our built-in
scene names the target directly (`label_target`: the object for pick/place, the handle link for
open/close); MS-HAB's envs have `subtask_objs[0]` for pick/place and, for open/close, the handle
link `subtask_articulations[0].links[task_plan[0].articulation_handle_link_idx]`.

Everything is read for all `num_envs` sub-scenes at once (arrays with a leading env axis), so the
same code serves one CPU env and a batch of GPU envs. Labels are read at the moment the
observation was rendered, so images and labels always describe the same simulator state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sgvla.vocab import CAMERA_UIDS

#: Dataset camera name -> ManiSkill sensor uid of Fetch.
#: Fetch's active joints are [root_x, root_y, root_yaw, 12 others]; the dataset keeps the 12.
BASE_DOF = 3


def resolve_target(env, subtask: str):
    """The Actor or Link whose mask, pose and grasp are labelled; re-resolve after every reset.

    MS-HAB rebuilds its merged target actors on each reset, so a handle kept from a previous
    episode would point at the wrong object.
    """
    u = env.unwrapped
    target = getattr(u, "label_target", None)
    if target is not None:
        return target
    if subtask in ("pick", "place"):
        objs = getattr(u, "subtask_objs", None) or []
        if objs and objs[0] is not None:
            return objs[0]
    else:
        arts = getattr(u, "subtask_articulations", None) or []
        plan = getattr(u, "task_plan", None) or []
        if arts and arts[0] is not None and plan and hasattr(plan[0], "articulation_handle_link_idx"):
            return arts[0].links[plan[0].articulation_handle_link_idx]
    raise RuntimeError(f"env {u.spec.id if u.spec else type(u).__name__} exposes no {subtask} target: it "
                       "needs `label_target`, or MS-HAB's `subtask_objs` / `subtask_articulations`")


def target_pose(env, target):
    """The labelled target pose: the target's own, except for MS-HAB's articulations, where the
    link's frame origin can be far from what is grasped (the fridge door's is near the hinge) and
    the handle point is used instead, as MS-HAB's own checks do (`handle_world_poses`: link pose x
    the plan's relative handle position). The mask stays the link's."""
    handles = getattr(env.unwrapped, "handle_world_poses", None)
    if handles and handles[0] is not None:
        return handles[0]
    return target.pose


def to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


@dataclass
class FrameLabels:
    """Everything recorded about one observation, for every sub-scene (leading axis = env)."""

    rgb: dict[str, np.ndarray]  # camera -> (N, H, W, 3) uint8
    depth: dict[str, np.ndarray]  # camera -> (N, H, W) millimetres
    mask: dict[str, np.ndarray]  # camera -> (N, H, W) bool
    qpos: np.ndarray  # (N, 12)
    base_pose: np.ndarray  # (N, 7) world, wxyz
    obj_pose_world: np.ndarray  # (N, 7)
    obj_pose: np.ndarray  # (N, 7) in the base frame
    is_grasped: np.ndarray  # (N,) bool


def is_grasped(env, info: dict, target) -> torch.Tensor:
    """The env's own `info["is_grasped"]` when it reports one (same thresholds as its success
    check), otherwise ManiSkill's `agent.is_grasping(target)`."""
    if isinstance(info, dict) and "is_grasped" in info:
        return torch.as_tensor(info["is_grasped"]).reshape(-1)
    return env.unwrapped.agent.is_grasping(target).reshape(-1)


def read_labels(env, obs: dict, info: dict, target) -> FrameLabels:
    """Images from `obs` (rendered with rgb+depth+segmentation) plus state labels read now."""
    u = env.unwrapped
    agent = u.agent
    ids = to_numpy(target.per_scene_id).reshape(-1, 1, 1)
    rgb, depth, mask = {}, {}, {}
    for cam, uid in CAMERA_UIDS.items():
        data = obs["sensor_data"][uid]
        rgb[cam] = to_numpy(data["rgb"])
        depth[cam] = to_numpy(data["depth"])[..., 0]
        mask[cam] = to_numpy(data["segmentation"])[..., 0] == ids
    base = agent.base_link.pose
    obj = target_pose(env, target)
    return FrameLabels(
        rgb=rgb,
        depth=depth,
        mask=mask,
        qpos=to_numpy(agent.robot.get_qpos())[:, BASE_DOF:].astype(np.float32),
        base_pose=to_numpy(base.raw_pose).astype(np.float32),
        obj_pose_world=to_numpy(obj.raw_pose).astype(np.float32),
        obj_pose=to_numpy((base.inv() * obj).raw_pose).astype(np.float32),
        is_grasped=to_numpy(is_grasped(env, info, target)).astype(bool),
    )
