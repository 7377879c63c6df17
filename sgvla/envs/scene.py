"""The `mini_kitchen` scene, built from primitives: room, counter with a drawer, graspable objects.

Why primitives: MS-HAB's ReplicaCAD/YCB assets are hundreds of GB and not reachable offline; boxes
and cylinders need no download, build in a few seconds on CPU and still give every label the
pipeline needs (per-actor and per-link segmentation ids, a prismatic drawer with a handle link).

World frame: z up, the counter's front face is the plane x = 0 and the robot stands at x < 0
facing +x. All sizes are metres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sapien
import sapien.physx as physx
import sapien.render
from mani_skill.agents.robots.fetch import FETCH_WHEELS_COLLISION_BIT
from mani_skill.envs.scene import ManiSkillScene
from mani_skill.utils.structs import Actor, Articulation

COUNTER_TOP_Z = 0.90
COUNTER_DEPTH = 0.60
COUNTER_HALF_WIDTH = 0.70
TOP_THICKNESS = 0.04
DRAWER_HALF_WIDTH = 0.21
DRAWER_Z = (0.63, 0.83)  # bottom and top of the drawer front
DRAWER_DEPTH = 0.50
DRAWER_RANGE = 0.25  # how far the drawer slides out
HANDLE_X = -0.10  # handle bar centre in front of the counter face (drawer closed): room for a
#                   top-down grasp, fingers straddling the bar, clear of the drawer front
HANDLE_Z = 0.73
HANDLE_HALF = (0.01, 0.07, 0.01)  # bar half sizes: x (depth), y (length), z (height)
LIGHT = 200.0  # kg/m^3 for the drawer's thin panels: a ~1.6 kg drawer, easy to pull by friction

COUNTER_COLOR = (0.72, 0.55, 0.38, 1)
BODY_COLOR = (0.55, 0.40, 0.28, 1)
DRAWER_COLOR = (0.80, 0.78, 0.72, 1)
HANDLE_COLOR = (0.15, 0.15, 0.17, 1)
MAT_COLOR = (0.96, 0.96, 0.96, 1)
MAT_HALF = (0.08, 0.08, 0.002)

#: Colour names used in instructions; each episode draws distinct colours for its objects.
COLORS: dict[str, tuple[float, float, float, float]] = {
    "red": (0.85, 0.08, 0.08, 1),
    "green": (0.10, 0.65, 0.20, 1),
    "blue": (0.10, 0.25, 0.90, 1),
    "yellow": (0.95, 0.85, 0.10, 1),
    "purple": (0.55, 0.20, 0.75, 1),
    "orange": (1.00, 0.45, 0.00, 1),
}


@dataclass(frozen=True)
class ObjectSpec:
    """A graspable primitive. Boxes are (hx, hy, hz) half sizes; cylinders (radius, half height).

    The expert grasps top-down with the fingers closing along the object's local x axis, so
    `grasp_width` is the object's extent along x.
    """

    name: str
    kind: str  # "box" or "cylinder"
    size: tuple[float, ...]

    @property
    def height(self) -> float:
        return 2 * (self.size[2] if self.kind == "box" else self.size[1])

    @property
    def grasp_width(self) -> float:
        return 2 * self.size[0]

    @property
    def grasp_height(self) -> float:
        """Height of the grasp point (finger centre) above the object's bottom face.

        High enough that the fingertips (3 cm below the finger centre) clear the counter, low
        enough that the palm (3 cm above) stays above the object's top.
        """
        return max(0.035, self.height - 0.025)


OBJECT_SPECS: tuple[ObjectSpec, ...] = (
    ObjectSpec("cube", "box", (0.025, 0.025, 0.025)),
    ObjectSpec("can", "cylinder", (0.03, 0.05)),
    ObjectSpec("box", "box", (0.02, 0.035, 0.05)),
    ObjectSpec("bottle", "cylinder", (0.024, 0.08)),
)


def _material(color) -> sapien.render.RenderMaterial:
    return sapien.render.RenderMaterial(base_color=list(color), roughness=0.7, metallic=0.0)


def _box(builder, center, half, color, collision: bool = True, density: float = 1000.0) -> None:
    pose = sapien.Pose(p=list(center))
    if collision:
        builder.add_box_collision(pose=pose, half_size=list(half), density=density)
    builder.add_box_visual(pose=pose, half_size=list(half), material=_material(color))


def _box_from_bounds(builder, lo, hi, color, collision: bool = True, density: float = 1000.0) -> None:
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    _box(builder, (lo + hi) / 2, (hi - lo) / 2, color, collision, density)


def build_room(scene: ManiSkillScene) -> Actor:
    """Floor and three walls as one static actor; the floor ignores Fetch's wheels like ManiSkill's
    own ground (the base moves through its virtual joints, not by wheel friction)."""
    b = scene.create_actor_builder()
    _box(b, (0, 0, -0.05), (3.0, 3.0, 0.05), (0.55, 0.55, 0.58, 1))
    wall = (0.90, 0.88, 0.82, 1)
    _box(b, (COUNTER_DEPTH + 0.45, 0, 1.25), (0.05, 2.0, 1.25), wall)
    _box(b, (-0.7, 2.0, 1.25), (1.8, 0.05, 1.25), wall)
    _box(b, (-0.7, -2.0, 1.25), (1.8, 0.05, 1.25), wall)
    b.initial_pose = sapien.Pose()
    room = b.build_static(name="room")
    room.set_collision_group_bit(group=2, bit_idx=FETCH_WHEELS_COLLISION_BIT, bit=1)
    return room


def build_counter(scene: ManiSkillScene) -> Articulation:
    """Kitchen counter with one drawer under its top: links `body` (fixed), `drawer` (prismatic,
    opening towards -x, qpos 0 = closed) and `handle` (fixed to the drawer, the grasp target)."""
    ab = scene.create_articulation_builder()
    top_lo = COUNTER_TOP_Z - TOP_THICKNESS
    z0, z1 = DRAWER_Z
    gap = 0.01  # clearance between the drawer and its cavity
    w = DRAWER_HALF_WIDTH + gap

    body = ab.create_link_builder()
    body.set_name("body")
    _box_from_bounds(body, (0, -COUNTER_HALF_WIDTH, top_lo),
                     (COUNTER_DEPTH, COUNTER_HALF_WIDTH, COUNTER_TOP_Z), COUNTER_COLOR)
    for sign in (-1, 1):  # cabinet blocks left and right of the drawer cavity
        _box_from_bounds(body, (0, min(sign * w, sign * COUNTER_HALF_WIDTH), 0),
                         (COUNTER_DEPTH, max(sign * w, sign * COUNTER_HALF_WIDTH), top_lo), BODY_COLOR)
    _box_from_bounds(body, (0, -w, 0), (COUNTER_DEPTH, w, z0 - gap), BODY_COLOR)  # below the cavity
    _box_from_bounds(body, (0, -w, z1 + gap), (COUNTER_DEPTH, w, top_lo), BODY_COLOR)  # above it
    _box_from_bounds(body, (DRAWER_DEPTH + 0.05, -w, z0 - gap), (COUNTER_DEPTH, w, z1 + gap), BODY_COLOR)

    drawer = ab.create_link_builder(body)
    drawer.set_name("drawer")
    hw, t = DRAWER_HALF_WIDTH, 0.015
    _box_from_bounds(drawer, (-0.02, -hw, z0), (0, hw, z1), DRAWER_COLOR, density=LIGHT)  # front panel
    _box_from_bounds(drawer, (0, -hw, z0), (DRAWER_DEPTH, hw, z0 + t), DRAWER_COLOR, density=LIGHT)  # bottom
    _box_from_bounds(drawer, (DRAWER_DEPTH - t, -hw, z0), (DRAWER_DEPTH, hw, z1 - 0.05), DRAWER_COLOR, density=LIGHT)
    for sign in (-1, 1):
        _box_from_bounds(drawer, (0, sign * hw - t * (sign > 0), z0),
                         (DRAWER_DEPTH, sign * hw + t * (sign < 0), z1 - 0.05), DRAWER_COLOR, density=LIGHT)
    # The joint frame's x axis is the sliding axis; rotating it by pi about z makes +qpos pull
    # the drawer out towards the robot.
    flip = sapien.Pose(q=[0, 0, 0, 1])
    drawer.set_joint_name("drawer_joint")
    drawer.set_joint_properties("prismatic", limits=[[0.0, DRAWER_RANGE]], pose_in_parent=flip,
                                pose_in_child=flip, friction=0.0, damping=10.0)

    # The handle link's origin is the bar centre, so its pose is the grasp target's pose.
    handle = ab.create_link_builder(drawer)
    handle.set_name("handle")
    hx, hy, hz = HANDLE_HALF
    _box(handle, (0, 0, 0), HANDLE_HALF, HANDLE_COLOR, density=LIGHT)
    for sign in (-1, 1):  # two posts joining the bar to the drawer front (at x = -0.02)
        post_y = sign * (hy - 0.01)
        _box_from_bounds(handle, (hx, post_y - 0.005, -hz), (-0.02 - HANDLE_X, post_y + 0.005, hz),
                         HANDLE_COLOR, density=LIGHT)
    handle.set_joint_name("handle_joint")
    handle.set_joint_properties("fixed", limits=[], pose_in_parent=sapien.Pose(p=[HANDLE_X, 0, HANDLE_Z]),
                                pose_in_child=sapien.Pose())

    ab.initial_pose = sapien.Pose()
    return ab.build(name="counter", fix_root_link=True)


def build_object(scene: ManiSkillScene, spec: ObjectSpec, name: str) -> Actor:
    """A dynamic primitive whose colour is set per episode (see `set_color`)."""
    b = scene.create_actor_builder()
    mat = _material((0.5, 0.5, 0.5, 1))
    physx_mat = physx.PhysxMaterial(static_friction=1.0, dynamic_friction=0.8, restitution=0.0)
    if spec.kind == "box":
        b.add_box_collision(half_size=list(spec.size), material=physx_mat)
        b.add_box_visual(half_size=list(spec.size), material=mat)
    else:
        upright = sapien.Pose(q=[np.sqrt(0.5), 0, np.sqrt(0.5), 0])  # SAPIEN cylinders lie along x
        r, hl = spec.size
        b.add_cylinder_collision(pose=upright, radius=r, half_length=hl, material=physx_mat)
        b.add_cylinder_visual(pose=upright, radius=r, half_length=hl, material=mat)
    b.initial_pose = sapien.Pose(p=[0, 0, -1 - len(scene.actors)])
    return b.build(name=name)


def build_marker(scene: ManiSkillScene, name: str, half, color, visible_shape: str = "box") -> Actor:
    """A kinematic, collision-free visual (the place mat, or the hidden goal site)."""
    b = scene.create_actor_builder()
    if visible_shape == "sphere":
        b.add_sphere_visual(radius=half, material=_material(color))
    else:
        b.add_box_visual(half_size=list(half), material=_material(color))
    b.initial_pose = sapien.Pose(p=[0, 0, -5])
    return b.build_kinematic(name=name)


def set_color(actor: Actor, rgba) -> None:
    """Recolour every visual shape of a (single-scene) actor; used to randomise colours per
    episode without rebuilding the scene."""
    for obj in actor._objs:
        body = obj.find_component_by_type(sapien.render.RenderBodyComponent)
        if body is None:  # built with render_backend="none"
            continue
        for shape in body.render_shapes:
            for part in shape.parts if hasattr(shape, "parts") else [shape]:
                part.material.set_base_color(list(rgba))
