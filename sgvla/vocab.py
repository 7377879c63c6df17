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
