"""The one definition of what a recorded transition holds (sgvla's dataset schema).

Every other module (the generator that writes rows, the card, the validator, the training
pipeline) reads field names, shapes and encodings from here; nothing else spells them out.

One row is one control step (20 Hz, as MS-HAB) of one episode, with the observation *before* the
action is applied. Frames and units:

* images: 128x128 renders of Fetch's ``fetch_head`` and ``fetch_hand`` cameras.
  ``*_rgb`` uint8 RGB; ``*_depth`` uint16 millimetres along the camera axis (0 = no hit / beyond
  65.535 m), stored as lossless 16-bit PNG; ``*_mask`` binary target mask (1-bit PNG) taken from
  the segmentation render: the target object's per-scene id for pick/place, the drawer/fridge
  handle link for open/close.
* ``qpos``: the 12 non-base joints of Fetch (``robot.qpos[3:]``, MS-HAB's ``obs/agent/qpos``):
  torso_lift, head_pan, shoulder_pan, head_tilt, shoulder_lift, upperarm_roll, elbow_flex,
  forearm_roll, wrist_flex, wrist_roll (rad, torso in m), r/l gripper finger (m).
* ``base_pose``: world pose of the robot's ``base_link``: x, y, z (m), qw, qx, qy, qz.
* ``obj_pose_world``: world pose of the target (object for pick/place, handle link for
  open/close), x, y, z, qw, qx, qy, qz. ``obj_pose`` is the same pose in the robot base frame,
  ``base_pose^-1 * obj_pose_world`` (MS-HAB's ``obj_pose_wrt_base``).
* ``is_grasped``: ManiSkill's ``agent.is_grasping(target)`` (finger contact forces and angle).
* ``action``: the 13-D ``pd_joint_delta_pos`` command applied at this step: arm deltas (7, rad,
  +-0.1 after scaling), gripper (1), head pan/tilt + torso deltas (3), base forward velocity and
  yaw rate (2); all in the env's normalised [-1, 1] action space.
* ``reward``: the env's normalised dense reward for this step; ``success``: the env's success flag
  after this step.
* bookkeeping (LeRobot-compatible names): ``index`` global row id within a split of a config,
  ``episode_index``, ``frame_index`` (0..T-1), ``timestamp`` = frame_index / 20 s; ``source``
  names the demo file and trajectory the row was replayed from.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from datasets import ClassLabel, Features, Image, List, Value

from sgvla.tasks import CONTROL_FREQ_HZ, SUBTASKS, TASKS
from sgvla.vocab import ACTION_DIM, DEPTH_VIEWS, MASK_FIELDS, QPOS_DIM, RGB_VIEWS

IMAGE_SIZE = 128
POSE_DIM = 7
FPS = CONTROL_FREQ_HZ
#: zlib level for the PNGs: level 1 costs ~3x less encode time than 6 for ~25% more bytes
#: (see bench/dataset_io.py); generation speed is bounded by rendering, so keep encoding cheap.
PNG_LEVEL = 1

#: Vector fields and their lengths (all float32).
VECTOR_FIELDS: dict[str, int] = {
    "qpos": QPOS_DIM,
    "base_pose": POSE_DIM,
    "obj_pose": POSE_DIM,
    "obj_pose_world": POSE_DIM,
    "action": ACTION_DIM,
}
#: Fields with dataset statistics in meta/stats.json (used for normalisation).
STATS_FIELDS = ("action", "qpos", "base_pose", "obj_pose")
IMAGE_FIELDS = RGB_VIEWS + DEPTH_VIEWS + MASK_FIELDS

FEATURES = Features(
    {
        "index": Value("int64"),
        "episode_index": Value("int64"),
        "frame_index": Value("int64"),
        "timestamp": Value("float32"),
        "task": ClassLabel(names=list(TASKS)),
        "subtask": ClassLabel(names=list(SUBTASKS)),
        "instruction": Value("string"),
        "target": Value("string"),
        "source": Value("string"),
        **{f: Image() for f in IMAGE_FIELDS},
        **{f: List(Value("float32"), length=n) for f, n in VECTOR_FIELDS.items()},
        "is_grasped": Value("bool"),
        "reward": Value("float32"),
        "success": Value("bool"),
    }
)

STATS_PATH = "meta/stats.json"


def shard_path(config: str, split: str, i: int, n: int) -> str:
    """Relative path of shard i of n: `<config>/data/<split>-NNNNN-of-NNNNN.parquet`."""
    return f"{config}/data/{split}-{i:05d}-of-{n:05d}.parquet"


def _png(array: np.ndarray, **save_kwargs) -> dict:
    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.fromarray(array).save(buf, format="PNG", compress_level=PNG_LEVEL, **save_kwargs)
    return {"bytes": buf.getvalue(), "path": None}


def encode_rgb(rgb: np.ndarray) -> dict:
    """uint8 (H, W, 3) -> PNG bytes for an `Image()` cell."""
    return _png(np.ascontiguousarray(rgb, dtype=np.uint8))


def encode_depth(depth_mm: np.ndarray) -> dict:
    """Depth in millimetres (H, W) or (H, W, 1), any int/float dtype -> lossless 16-bit PNG.

    Values are clipped to [0, 65535]; giving `Image()` a raw uint16 array would store a TIFF.
    """
    d = np.asarray(depth_mm).reshape(depth_mm.shape[0], depth_mm.shape[1])
    return _png(np.clip(d, 0, 65535).astype(np.uint16))


def encode_mask(mask: np.ndarray) -> dict:
    """Binary mask (H, W) or (H, W, 1) -> 1-bit PNG (decodes back to a bool array)."""
    m = np.asarray(mask).reshape(mask.shape[0], mask.shape[1]).astype(bool)
    return _png(m)


def decode_png(cell: dict | bytes) -> np.ndarray:
    """Inverse of the `encode_*` above: PNG bytes (or an undecoded `Image` cell) -> array.

    RGB gives uint8 HxWx3, depth uint16 millimetres, masks bool.
    """
    from PIL import Image as PILImage

    data = cell["bytes"] if isinstance(cell, dict) else cell
    with PILImage.open(io.BytesIO(data)) as im:
        return np.array(im)  # a writable copy: torch warns on read-only buffers


def pose_present(obj_pose: np.ndarray) -> np.ndarray:
    """Whether each `obj_pose` (last axis of 7) is a recorded pose: the generator writes all zeros
    for "no pose", which statistics, validation and the training targets must all leave out."""
    return np.any(np.asarray(obj_pose) != 0, axis=-1)


@dataclass(frozen=True)
class FieldDoc:
    """Human-readable description of a field for the dataset card."""

    name: str
    dtype: str
    text: str


FIELD_DOCS: tuple[FieldDoc, ...] = (
    FieldDoc("head_rgb / hand_rgb", "image uint8 128x128x3", "RGB of Fetch's head / hand camera."),
    FieldDoc("head_depth / hand_depth", "image uint16 128x128 (16-bit PNG)",
             "Depth in millimetres along the camera axis; 0 = no hit."),
    FieldDoc("head_mask / hand_mask", "image bool 128x128 (1-bit PNG)",
             "Target mask: the target object (pick/place) or the handle link (open/close)."),
    FieldDoc("qpos", "float32[12]", "Non-base joint positions (rad; torso and fingers in m), qpos[3:]."),
    FieldDoc("base_pose", "float32[7]", "Robot base_link world pose: x, y, z (m), qw, qx, qy, qz."),
    FieldDoc("obj_pose", "float32[7]", "Target pose in the robot base frame (x, y, z, qw, qx, qy, qz)."),
    FieldDoc("obj_pose_world", "float32[7]", "Target pose in the world frame (x, y, z, qw, qx, qy, qz)."),
    FieldDoc("is_grasped", "bool", "Whether the gripper grasps the target (ManiSkill is_grasping)."),
    FieldDoc("action", "float32[13]",
             "pd_joint_delta_pos action in [-1, 1]: arm (7), gripper (1), head pan/tilt + torso (3), "
             "base forward velocity + yaw rate (2)."),
    FieldDoc("reward / success", "float32 / bool", "Normalised dense reward and success after the step."),
    FieldDoc("instruction", "string", "Natural-language instruction, e.g. 'pick up the red bowl'."),
    FieldDoc("task / subtask / target", "class / class / string", "Task, subtask and target name."),
    FieldDoc("index / episode_index / frame_index / timestamp", "int64 / int64 / int64 / float32",
             f"Row id, episode id, step within the episode, frame_index / {FPS} s (LeRobot names)."),
    FieldDoc("source", "string", "Demo file and trajectory this row was replayed from."),
)


def source_name(path: str) -> str:
    """Short demo-file name for the `source` column (and the card): `pick.h5`, or
    `pick/024_bowl.h5` when the file sits in a subtask folder (MS-HAB names pick and place files
    alike). Never a machine's absolute path."""
    from pathlib import PurePath

    p = PurePath(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name in SUBTASKS else p.name
