"""The one vocabulary of cameras, views and labels (no heavy imports: every layer reads it).

A *camera* is one of Fetch's two cameras; a *view* is what a model reads from one camera (its RGB
or its depth image), named `<camera>_<kind>` as in the dataset's columns; the ManiSkill sensor uid
of a camera is where the simulator puts its images. Auxiliary *decoders* are the paper's Table 1
heads; a decoder's *targets* are what a batch carries for it, and its *columns* the dataset fields
they are read from. Which subtasks' rows train each decoder is `AUX_LABEL_SUBTASKS` (paper,
Section 3).
"""

from __future__ import annotations

from sgvla.tasks import SUBTASKS

CAMERAS: tuple[str, ...] = ("head", "hand")
#: ManiSkill sensor uid of each camera on the Fetch robot.
CAMERA_UIDS: dict[str, str] = {"head": "fetch_head", "hand": "fetch_hand"}
VIEW_KINDS: tuple[str, ...] = ("rgb", "depth")
RGB_VIEWS: tuple[str, ...] = tuple(f"{c}_rgb" for c in CAMERAS)
DEPTH_VIEWS: tuple[str, ...] = tuple(f"{c}_depth" for c in CAMERAS)
#: Every view, in the order models and the data pipeline stack them (RGB first).
VIEWS: tuple[str, ...] = RGB_VIEWS + DEPTH_VIEWS
MASK_FIELDS: tuple[str, ...] = tuple(f"{c}_mask" for c in CAMERAS)

ACTION_DIM = 13
QPOS_DIM = 12
#: The 12 `qpos` joints in order: Fetch's non-base joints, robot.qpos[3:] (MS-HAB's obs/agent/qpos).
QPOS_NAMES: tuple[str, ...] = ("torso_lift", "head_pan", "shoulder_pan", "head_tilt", "shoulder_lift",
                               "upperarm_roll", "elbow_flex", "forearm_roll", "wrist_flex", "wrist_roll",
                               "r_gripper_finger", "l_gripper_finger")
#: The 13 action dimensions in order (pd_joint_delta_pos): arm deltas, gripper, head pan/tilt +
#: torso, base forward velocity and yaw rate.
ACTION_NAMES: tuple[str, ...] = ("shoulder_pan", "shoulder_lift", "upperarm_roll", "elbow_flex", "forearm_roll",
                                 "wrist_flex", "wrist_roll", "gripper", "head_pan", "head_tilt", "torso_lift",
                                 "base_forward_velocity", "base_yaw_rate")
#: Components of every 7-D pose field (position, then a wxyz quaternion).
POSE_NAMES: tuple[str, ...] = ("x", "y", "z", "qw", "qx", "qy", "qz")

#: Auxiliary decoders of the paper (Table 1); "mask" covers the mask of every camera.
AUX_NAMES: tuple[str, ...] = ("global_pos", "grasp", "obj_pose", "qpos", "mask")
#: The auxiliary targets a batch carries (the mask decoder has one per camera).
AUX_TARGETS: tuple[str, ...] = ("global_pos", "grasp", "obj_pose", "qpos", *MASK_FIELDS)
#: Dataset columns each decoder is trained from (the mask decoder: the mask of each camera it sees).
AUX_COLUMNS: dict[str, tuple[str, ...]] = {
    "global_pos": ("base_pose",),
    "grasp": ("is_grasped",),
    "obj_pose": ("obj_pose",),
    "qpos": ("qpos",),
    "mask": MASK_FIELDS,
}
#: Label allocation (paper, Section 3, "Auxiliary Task Data Distribution"): which subtasks' rows
#: train each auxiliary decoder. Robot-state labels (global position, grasp, qpos) come from every
#: subtask; segmentation masks and the target-object pose only from pick and place, where a target
#: object is manipulated. Rows of other subtasks still carry those labels in the dataset; training
#: masks them out (`aux_valid`).
AUX_LABEL_SUBTASKS: dict[str, tuple[str, ...]] = {
    "global_pos": SUBTASKS,
    "grasp": SUBTASKS,
    "qpos": SUBTASKS,
    "obj_pose": ("pick", "place"),
    "mask": ("pick", "place"),
}


def view_camera(view: str) -> str:
    return view.split("_", 1)[0]


def view_kind(view: str) -> str:
    """"rgb" or "depth"."""
    return view.rsplit("_", 1)[1]


def view_sensor(view: str) -> tuple[str, str]:
    """(ManiSkill sensor uid, key in its sensor data) where the simulator puts this view."""
    return CAMERA_UIDS[view_camera(view)], view_kind(view)


def mask_cameras(views) -> tuple[str, ...]:
    """Cameras with at least one of `views`: those whose target mask a mask decoder predicts."""
    return tuple(c for c in CAMERAS if any(view_camera(v) == c for v in views))

assert len(QPOS_NAMES) == QPOS_DIM and len(ACTION_NAMES) == ACTION_DIM
