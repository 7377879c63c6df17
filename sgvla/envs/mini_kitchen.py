"""`mini_kitchen`: MS-HAB-style pick / place / open / close subtasks for Fetch in a primitive scene.

One env class per subtask (ids `MiniKitchen{Pick,Place,Open,Close}-v0`), sharing this base. They
expose the attributes MS-HAB's subtask envs expose for labelling (`agent`, `subtask_objs`,
`subtask_goals`, `subtask_articulations`) plus `label_target` (the Actor or Link whose segmentation
id is the target mask and whose pose is the target pose), `instruction` and `target_name`, so one
label extractor serves both. Only Fetch's own head and hand cameras are sensors (fast on CPU).

Single scene (`num_envs=1`, CPU physics): every random choice is drawn from the episode seed in
`_initialize_episode`, so `reset(seed=s)` rebuilds an episode exactly (needed for replay).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sapien
import torch
from mani_skill.agents.robots import Fetch
from mani_skill.envs.sapien_env import BaseEnv
from mani_skill.sensors.camera import CameraConfig
from mani_skill.utils import sapien_utils
from mani_skill.utils.registration import register_env
from mani_skill.utils.structs.pose import Pose, vectorize_pose
from transforms3d.quaternions import mat2quat

from sgvla.envs import scene as S

MAX_EPISODE_STEPS = 200

#: Fetch's 15 active joints are: base x, y, yaw, torso, head_pan, shoulder_pan, head_tilt,
#: shoulder_lift, upperarm_roll, elbow_flex, forearm_roll, wrist_flex, wrist_roll, r/l finger.
HEAD_TILT = 0.80  # head looks down at the counter and stays there (MS-HAB keeps the head still)
#: Rest configuration, the pose every subtask starts from and must end in (MS-HAB's rest checks):
#: torso up, gripper pointing down at about (0.35, -0.3, 1.1) in the base frame with the fingers
#: along x, to the right of the head camera's view of the counter so that neither the arm nor a
#: held object hides it.
REST_QPOS = np.array([0, 0, 0, 0.386, 0, -1.52, HEAD_TILT, -1.15, 1.25, 1.72, -0.34, 1.33, 1.37, 0.015, 0.015])
REST_EE_TOL = 0.05  # m, tcp distance to its rest position (MS-HAB: 0.05)
REST_QPOS_TOL = 0.6  # rad, max torso/head/arm joint deviation from rest (MS-HAB: 0.6 for pick)
OPEN_FRAC = 0.9  # MS-HAB's drawer threshold
CLOSED_FRAC = 0.02
GOAL_RADIUS = 0.10  # place: object centre to goal point
SLOTS_Y = (-0.30, -0.15, 0.0, 0.15, 0.30)  # object positions along the counter
SPAWN_X = {"pick": -0.45, "place": -0.45, "open": -0.82, "close": -0.82}


class MiniKitchenEnv(BaseEnv):
    """Shared scene, randomisation, observations and success checks; subclasses set SUBTASK."""

    SUBTASK = ""
    SUPPORTED_ROBOTS = ["fetch"]
    SUPPORTED_REWARD_MODES = ("normalized_dense", "dense", "sparse", "none")
    agent: Fetch

    def __init__(self, *args, robot_uids="fetch", **kwargs):
        if kwargs.get("num_envs", 1) != 1:
            raise ValueError("mini_kitchen runs one scene per process (CPU physics); use num_envs=1")
        self.instruction = ""
        self.target_name = ""
        super().__init__(*args, robot_uids=robot_uids, **kwargs)

    # ---------------------------------------------------------------- scene
    @property
    def _default_sensor_configs(self):
        return []  # only Fetch's own fetch_head / fetch_hand cameras

    @property
    def _default_human_render_camera_configs(self):
        pose = sapien_utils.look_at(eye=[-1.6, -1.2, 1.9], target=[0.0, 0.0, 0.8])
        return CameraConfig("render_camera", pose, 384, 384, 1.0, 0.01, 100)

    def _load_agent(self, options: dict):
        super()._load_agent(options, sapien.Pose(p=[SPAWN_X[self.SUBTASK or "pick"], 0, 0]))

    def _load_scene(self, options: dict):
        self.room = S.build_room(self.scene)
        self.counter = S.build_counter(self.scene)
        self.drawer_link = self.counter.links_map["drawer"]
        self.handle_link = self.counter.links_map["handle"]
        self.drawer_joint = self.counter.active_joints[0]
        self.objects = [S.build_object(self.scene, spec, f"obj_{spec.name}") for spec in S.OBJECT_SPECS]
        self.mat = S.build_marker(self.scene, "goal_mat", S.MAT_HALF, S.MAT_COLOR)
        self.goal_site = S.build_marker(self.scene, "goal_site", 0.02, (0, 1, 0, 1), "sphere")
        self._hidden_objects.append(self.goal_site)
        self.target_idx = 0
        self.object_colors = [""] * len(self.objects)
        self._refresh_targets()

    # ---------------------------------------------------------------- episode
    def _initialize_episode(self, env_idx: torch.Tensor, options: dict):
        rng = np.random.default_rng(int(self._episode_seed[0]))
        self._place_robot(rng)
        colors = rng.choice(list(S.COLORS), size=len(self.objects), replace=False)
        for obj, c in zip(self.objects, colors, strict=True):
            S.set_color(obj, S.COLORS[c])
        self.object_colors = [str(c) for c in colors]
        self.target_idx = int(rng.integers(len(self.objects)))
        slots = rng.permutation(len(SLOTS_Y))
        self._place_objects(rng, slots)
        frac = {"close": rng.uniform(0.6, 1.0), "open": rng.uniform(0.0, 0.05)}.get(self.SUBTASK, 0.0)
        self.counter.set_qpos(torch.tensor([[frac * S.DRAWER_RANGE]], dtype=torch.float32))
        self.counter.set_qvel(torch.zeros((1, 1)))
        self.mat.set_pose(Pose.create_from_pq(p=[0, 0, -5]))
        self._refresh_targets()  # before _init_subtask: its instruction names `target_name`
        self.goal_xyz = self._init_subtask(rng, slots)
        # The goal as a (1, 3) tensor too, converted once per episode for the per-step checks.
        self.goal_pos = torch.as_tensor(self.goal_xyz, dtype=torch.float32, device=self.device)[None]
        self.goal_site.set_pose(Pose.create_from_pq(p=self.goal_xyz.tolist()))

    def _place_robot(self, rng: np.random.Generator) -> None:
        x = SPAWN_X[self.SUBTASK] + rng.uniform(-0.03, 0.03)
        y, yaw = rng.uniform(-0.05, 0.05), rng.uniform(-0.1, 0.1)
        self.agent.reset(REST_QPOS.copy())
        self.agent.robot.set_pose(sapien.Pose(p=[x, y, 0], q=[np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)]))

    def _object_rest_pose(self, i: int, x: float, y: float, yaw: float) -> sapien.Pose:
        z = S.COUNTER_TOP_Z + S.OBJECT_SPECS[i].height / 2 + 1e-3
        return sapien.Pose(p=[x, y, z], q=[np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)])

    def _place_objects(self, rng: np.random.Generator, slots: np.ndarray) -> None:
        for i, obj in enumerate(self.objects):
            x = rng.uniform(0.12, 0.24)
            y = SLOTS_Y[slots[i]] + rng.uniform(-0.02, 0.02)
            obj.set_pose(self._object_rest_pose(i, x, y, rng.uniform(-np.pi / 2, np.pi / 2)))
            obj.set_linear_velocity(torch.zeros(3))
            obj.set_angular_velocity(torch.zeros(3))

    def _init_subtask(self, rng: np.random.Generator, slots: np.ndarray) -> np.ndarray:
        """Subtask-specific start state; returns the goal position (world)."""
        raise NotImplementedError

    def _refresh_targets(self) -> None:
        """Point the MS-HAB-named attributes at this episode's target."""
        target = self.objects[self.target_idx]
        uses_obj = self.SUBTASK in ("pick", "place")
        self.subtask_objs = [target if uses_obj else None]
        self.subtask_goals = [self.goal_site]
        self.subtask_articulations = [None if uses_obj else self.counter]
        spec = S.OBJECT_SPECS[self.target_idx]
        self.target_name = f"{self.object_colors[self.target_idx]} {spec.name}" if uses_obj else "drawer"

    @property
    def label_target(self):
        """Actor (pick/place) or Link (open/close) giving the target mask id and target pose."""
        return self.subtask_objs[0] if self.subtask_objs[0] is not None else self.handle_link

    @property
    def target_spec(self) -> S.ObjectSpec:
        return S.OBJECT_SPECS[self.target_idx]

    # ---------------------------------------------------------------- geometry helpers
    def fk(self, qpos: np.ndarray, link: str) -> sapien.Pose:
        """Pose of a robot link in the robot root frame for a 15-D qpos (Pinocchio forward
        kinematics: valid right after a reset, before the simulator has updated link poses)."""
        if getattr(self, "_pm", None) is None:
            self._pm = self.agent.robot._objs[0].create_pinocchio_model()
            self._link_idx = {lk.name: i for i, lk in enumerate(self.agent.robot.links)}
        self._pm.compute_forward_kinematics(np.asarray(qpos, dtype=np.float64))
        return self._pm.get_link_pose(self._link_idx[link])

    def rest_tcp_pos_wrt_base(self) -> np.ndarray:
        """Where the tcp (finger midpoint) sits at REST_QPOS, in the base frame."""
        if getattr(self, "_rest_tcp", None) is None:
            fingers = [self.fk(REST_QPOS, n).p for n in ("l_gripper_finger_link", "r_gripper_finger_link")]
            base = self.fk(REST_QPOS, "base_link")
            self._rest_tcp = np.asarray((base.inv() * sapien.Pose(p=(fingers[0] + fingers[1]) / 2)).p,
                                        dtype=np.float32)
        return self._rest_tcp

    def drawer_fraction(self) -> torch.Tensor:
        return self.counter.get_qpos()[:, 0] / S.DRAWER_RANGE

    def handle_pos_at(self, frac: float) -> np.ndarray:
        """World position of the handle bar centre with the drawer at `frac` of its range."""
        return np.array([S.HANDLE_X - frac * S.DRAWER_RANGE, 0.0, S.HANDLE_Z])

    # ---------------------------------------------------------------- evaluation
    def _tcp_rest_distance(self) -> torch.Tensor:
        """Distance of the tcp from its rest position, in the base frame."""
        tcp = (self.agent.base_link.pose.inv() * self.agent.tcp_pose).p
        rest = torch.as_tensor(self.rest_tcp_pos_wrt_base(), device=self.device)
        return torch.linalg.norm(tcp - rest, dim=-1)

    def _rest_checks(self, tcp_rest_d: torch.Tensor) -> dict[str, torch.Tensor]:
        arm = self.agent.robot.get_qpos()[:, 3:13]  # torso, head and arm, as MS-HAB's qpos[3:-2]
        arm_rest = torch.as_tensor(REST_QPOS[3:13], device=self.device, dtype=arm.dtype)
        robot_rest = torch.all(torch.abs(arm - arm_rest) <= REST_QPOS_TOL, dim=-1)
        return dict(ee_rest=tcp_rest_d <= REST_EE_TOL, robot_rest=robot_rest, is_static=self.agent.is_static(0.2))

    def target_grasped(self) -> torch.Tensor:
        """Whether Fetch holds the target; the one grasp test of success, labels and the expert."""
        return self.agent.is_grasping(self.label_target, max_angle=30)

    def evaluate(self) -> dict:
        """Success = the subtask's effect and the robot back at rest (MS-HAB's rule for all four)."""
        info = self._rest_checks(self._tcp_rest_distance())
        info["is_grasped"] = self.target_grasped()
        info["drawer_frac"] = self.drawer_fraction()
        effect, named = self._effect(info)
        info.update(named)
        # Under one name for every subtask: evaluation reports how often the effect was reached
        # even where the return to rest failed (partial progress a bare success rate hides).
        info["effect"] = effect
        info["success"] = effect & info["ee_rest"] & info["robot_rest"] & info["is_static"]
        # No failure condition ends an episode early (MS-HAB's force limits are not modelled);
        # `fail` is still reported so recorded files carry MS-HAB's `fail` array.
        info["fail"] = torch.zeros_like(info["success"])
        return info

    def _effect(self, info: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(whether the subtask's effect holds, extra info keys naming it) for the current state."""
        raise NotImplementedError

    # ---------------------------------------------------------------- observations
    def _get_obs_agent(self):
        """MS-HAB's 12-D proprioception: Fetch's qpos/qvel without the 3 virtual base joints."""
        return dict(qpos=self.agent.robot.get_qpos()[:, 3:], qvel=self.agent.robot.get_qvel()[:, 3:])

    def _get_obs_extra(self, info: dict):
        base_inv = self.agent.base_link.pose.inv()
        goal = Pose.create_from_pq(p=self.goal_pos)
        return dict(
            tcp_pose_wrt_base=vectorize_pose(base_inv * self.agent.tcp_pose),
            obj_pose_wrt_base=vectorize_pose(base_inv * self.label_target.pose),
            goal_pos_wrt_base=(base_inv * goal).p,
            is_grasped=info["is_grasped"],
        )

    # ---------------------------------------------------------------- rewards
    def compute_dense_reward(self, obs: Any, action: torch.Tensor, info: dict):
        """Staged shaping: reach the target, make subtask progress, then return to rest; 5 on
        success. Only RL would need it; it is recorded as `rewards` like MS-HAB's demos."""
        progress, done = self._progress(info)
        tcp = self.agent.tcp_pose.p
        reach = 1 - torch.tanh(5 * torch.linalg.norm(tcp - self.label_target.pose.p, dim=-1))
        rest = 1 - torch.tanh(5 * self._tcp_rest_distance())
        reward = torch.where(done, 3 + rest, reach + 2 * progress.clamp(0, 1))
        reward[info["success"]] = 5.0
        return reward

    def compute_normalized_dense_reward(self, obs: Any, action: torch.Tensor, info: dict):
        return self.compute_dense_reward(obs=obs, action=action, info=info) / 5.0

    def _progress(self, info: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(progress in [0, 1] towards the subtask's effect, whether the effect is achieved)."""
        raise NotImplementedError


@register_env("MiniKitchenPick-v0", max_episode_steps=MAX_EPISODE_STEPS)
class MiniKitchenPickEnv(MiniKitchenEnv):
    """Pick the named object up from the counter and bring the arm back to rest holding it."""

    SUBTASK = "pick"

    def _init_subtask(self, rng, slots):
        self.instruction = f"pick up the {self.target_name}"
        # Goal: the tcp's rest position, as MS-HAB's pick (the object ends up there).
        base = self.agent.robot.pose.sp * self.fk(REST_QPOS, "base_link")
        return np.asarray((base * sapien.Pose(p=self.rest_tcp_pos_wrt_base())).p)

    def _effect(self, info):
        return info["is_grasped"], {}

    def _progress(self, info):
        lifted = self.label_target.pose.p[:, 2] > S.COUNTER_TOP_Z + self.target_spec.height / 2 + 0.05
        done = info["is_grasped"] & lifted
        return info["is_grasped"].float() * 0.5, done


@register_env("MiniKitchenPlace-v0", max_episode_steps=MAX_EPISODE_STEPS)
class MiniKitchenPlaceEnv(MiniKitchenEnv):
    """Start holding the named object at rest; put it on the mat and bring the arm back to rest."""

    SUBTASK = "place"

    def _init_subtask(self, rng, slots):
        spec = self.target_spec
        self.instruction = f"place the {self.target_name} on the mat"
        # The target's slot is free; put the mat on another free slot (5 slots, 4 objects).
        free = [int(slots[self.target_idx]), int(slots[len(self.objects)])]
        slot = free[int(rng.integers(2))]
        xy = np.array([rng.uniform(0.14, 0.22), SLOTS_Y[slot] + rng.uniform(-0.02, 0.02)])
        self.mat.set_pose(Pose.create_from_pq(p=[xy[0], xy[1], S.COUNTER_TOP_Z + S.MAT_HALF[2]]))
        self._put_target_in_gripper()
        return np.array([xy[0], xy[1], S.COUNTER_TOP_Z + spec.height / 2])

    def _put_target_in_gripper(self) -> None:
        """Fingers around the object at the rest pose, as if the pick just succeeded."""
        spec = self.target_spec
        qpos = REST_QPOS.copy()
        qpos[13:15] = spec.grasp_width / 2
        gripper = self.fk(qpos, "gripper_link")
        # Object axes in the gripper frame for a top-down grasp: obj x = finger axis (gripper y),
        # obj z = against the approach direction (-gripper x).
        rot = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
        offset = sapien.Pose(p=[-(spec.height / 2 - spec.grasp_height), 0, 0], q=mat2quat(rot))
        world = self.agent.robot.pose.sp * gripper * offset
        self.agent.reset(qpos)
        obj = self.objects[self.target_idx]
        obj.set_pose(world)
        obj.set_linear_velocity(torch.zeros(3))
        obj.set_angular_velocity(torch.zeros(3))

    def _goal_distance(self) -> torch.Tensor:
        return torch.linalg.norm(self.label_target.pose.p - self.goal_pos, dim=-1)

    def _effect(self, info):
        at_goal = self._goal_distance() <= GOAL_RADIUS
        return ~info["is_grasped"] & at_goal, dict(obj_at_goal=at_goal)

    def _progress(self, info):
        return 1 - torch.tanh(5 * self._goal_distance()), info["obj_at_goal"] & ~info["is_grasped"]


@register_env("MiniKitchenOpen-v0", max_episode_steps=MAX_EPISODE_STEPS)
class MiniKitchenOpenEnv(MiniKitchenEnv):
    """Pull the drawer open (past 90% of its travel) and bring the arm back to rest."""

    SUBTASK = "open"

    def _init_subtask(self, rng, slots):
        self.instruction = "open the drawer"
        return self.handle_pos_at(1.0)

    def _effect(self, info):
        opened = info["drawer_frac"] >= OPEN_FRAC
        return opened, dict(articulation_open=opened)

    def _progress(self, info):
        return info["drawer_frac"] / OPEN_FRAC, info["articulation_open"]


@register_env("MiniKitchenClose-v0", max_episode_steps=MAX_EPISODE_STEPS)
class MiniKitchenCloseEnv(MiniKitchenEnv):
    """Push the drawer shut (under 2% of its travel) and bring the arm back to rest."""

    SUBTASK = "close"

    def _init_subtask(self, rng, slots):
        self.instruction = "close the drawer"
        return self.handle_pos_at(0.0)

    def _effect(self, info):
        closed = info["drawer_frac"] <= CLOSED_FRAC
        return closed, dict(articulation_closed=closed)

    def _progress(self, info):
        return 1 - info["drawer_frac"], info["articulation_closed"]
