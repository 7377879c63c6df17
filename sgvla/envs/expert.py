"""Scripted expert for `mini_kitchen`: a closed-loop policy that reads privileged simulator state.

Each subtask is a short list of stages (move the gripper to a pose, open or close the fingers,
return the arm to rest). Every step the expert re-reads the object / handle pose, moves the
gripper a bounded distance towards the stage's target along a straight line, solves IK from the
current joints (`ArmIK`) and emits the joint difference as a `pd_joint_delta_pos` action. Being
closed-loop it copes with controller lag and small disturbances, and it is usable through the
same `reset(env)` / `act(env, obs)` interface as a learned policy (`sgvla eval --model expert`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import sapien
from transforms3d.quaternions import mat2quat, quat2mat

from sgvla.envs import scene as S
from sgvla.envs.ik import ARM_QPOS_IDX, ArmIK, rot_error
from sgvla.envs.mini_kitchen import REST_QPOS, MiniKitchenEnv
from sgvla.vocab import ACTION_DIM

GRIPPER_OPEN, GRIPPER_CLOSED = 1.0, -1.0
ARM_DELTA_SCALE = 0.1  # rad (m for the torso) per step at action 1 (pd_joint_delta_pos)
BODY_QPOS_IDX = (4, 6, 3)  # head_pan, head_tilt, torso_lift: the order of the body action


@dataclass
class Phase:
    """One phase of a scripted motion.

    `target(env)` gives the world pose for gripper_link (None: move the arm to REST in joint
    space). With `joint=True` the pose is solved once by IK at stage start (several restarts, the
    solution nearest the current arm wins) and reached by a joint-space move: for large
    reorientations, where straight-line tracking would run into joint limits. The stage ends when
    the pose is reached within `tol` (and `done(env)` holds, if given) after at least `min_steps`,
    or after `max_steps` regardless.
    """

    name: str
    gripper: float
    target: Callable[[MiniKitchenEnv], sapien.Pose] | None = None
    tol: float = 0.01
    speed: float = 0.03  # m per step along the straight line
    min_steps: int = 0
    max_steps: int = 60
    done: Callable[[MiniKitchenEnv], bool] | None = None
    freeze: bool = False  # evaluate `target` once at stage start (e.g. a lift from where we are)
    joint: bool = False
    steps: int = field(default=0, init=False)
    frozen: sapien.Pose | None = field(default=None, init=False)
    joint_goal: np.ndarray | None = field(default=None, init=False)


def _pose(p, rot: np.ndarray) -> sapien.Pose:
    return sapien.Pose(p=np.asarray(p, dtype=np.float64), q=mat2quat(rot))


def _frame(x_axis, y_axis) -> np.ndarray:
    """Rotation whose columns are x, y (orthogonalised) and x cross y."""
    x = np.asarray(x_axis, float) / np.linalg.norm(x_axis)
    y = np.asarray(y_axis, float) - x * np.dot(x, y_axis)
    y /= np.linalg.norm(y)
    return np.stack([x, y, np.cross(x, y)], axis=1)


def _closest_rotation(candidates: list[np.ndarray], current: np.ndarray) -> np.ndarray:
    """Among equivalent grasp orientations pick the one needing the least wrist rotation."""
    return min(candidates, key=lambda r: np.linalg.norm(rot_error(r, current)))


class ScriptedExpert:
    """Closed-loop scripted policy for the four mini_kitchen subtasks."""

    def __init__(self, gain: float = 1.5):
        self.gain = gain
        self.stages: list[Phase] = []
        self.k = 0
        self._ik: ArmIK | None = None
        self._robot = None

    # ---------------------------------------------------------------- public API
    def reset(self, env) -> None:
        u: MiniKitchenEnv = env.unwrapped
        if self._robot is not u.agent.robot:
            self._ik, self._robot = ArmIK(u.agent.robot), u.agent.robot
        self.k = 0
        self.stages = getattr(self, f"_{u.SUBTASK}_stages")(u)

    def act(self, env, obs=None) -> np.ndarray:
        u: MiniKitchenEnv = env.unwrapped
        qpos = u.agent.robot.get_qpos()[0].cpu().numpy().astype(np.float64)
        while self.k < len(self.stages) - 1 and self._stage_done(u, self.stages[self.k], qpos):
            self.k += 1
        stage = self.stages[self.k]
        stage.steps += 1
        action = np.zeros(ACTION_DIM, dtype=np.float32)
        arm_goal = self._arm_goal(u, stage, qpos)
        delta = (arm_goal - qpos[list(ARM_QPOS_IDX)]) / ARM_DELTA_SCALE
        action[:7] = np.clip(self.gain * delta, -1, 1)
        action[7] = stage.gripper
        # Hold head and torso at rest: with delta control a loaded joint otherwise sags for good.
        body = (REST_QPOS[list(BODY_QPOS_IDX)] - qpos[list(BODY_QPOS_IDX)]) / ARM_DELTA_SCALE
        action[8:11] = np.clip(self.gain * body, -1, 1)
        return action

    @property
    def stage(self) -> str:
        return self.stages[self.k].name if self.stages else ""

    # ---------------------------------------------------------------- stepping
    def _target(self, u, stage: Phase) -> sapien.Pose | None:
        if stage.target is None:
            return None
        if stage.freeze:
            if stage.frozen is None:
                stage.frozen = stage.target(u)
            return stage.frozen
        return stage.target(u)

    def _stage_done(self, u, stage: Phase, qpos: np.ndarray) -> bool:
        if stage.steps >= stage.max_steps:
            return True
        if stage.steps < stage.min_steps:
            return False
        target = self._target(u, stage)
        if target is None or stage.joint:
            goal = self._joint_goal(u, stage, qpos)
            reached = np.max(np.abs(qpos[list(ARM_QPOS_IDX)] - goal)) < 0.03
        else:
            now = self._gripper_world(u, qpos)
            reached = (np.linalg.norm(now.p - target.p) < stage.tol
                       and np.linalg.norm(rot_error(quat2mat(target.q), quat2mat(now.q))) < 0.1)
        return reached and (stage.done is None or stage.done(u))

    def _joint_goal(self, u, stage: Phase, qpos: np.ndarray) -> np.ndarray:
        """Arm joints a joint-space stage moves to (REST, or an IK solution fixed at stage start)."""
        if stage.target is None:
            return REST_QPOS[list(ARM_QPOS_IDX)]
        if stage.joint_goal is None:
            stage.joint_goal = self._global_ik(u, self._target(u, stage), qpos)
        return stage.joint_goal

    def _global_ik(self, u, target: sapien.Pose, qpos: np.ndarray, restarts: int = 16) -> np.ndarray:
        """IK from the current arm and from fixed random seeds (deterministic, so replays agree);
        of the converged solutions, the one closest to the current arm."""
        goal = u.agent.robot.pose.sp.inv() * target
        arm_now = qpos[list(ARM_QPOS_IDX)]
        rng = np.random.default_rng(0)
        best, best_d = None, np.inf
        for r in range(restarts):
            q0 = qpos.copy()
            if r:
                q0[list(ARM_QPOS_IDX)] = rng.uniform(np.maximum(self._ik.lo, -np.pi), np.minimum(self._ik.hi, np.pi))
            arm, err = self._ik.solve(goal, q0, iters=200)
            if err > 2e-3:
                continue
            free = ~np.isfinite(self._ik.hi)  # unlimited roll joints: take the nearest turn
            arm[free] = arm_now[free] + (arm[free] - arm_now[free] + np.pi) % (2 * np.pi) - np.pi
            d = np.linalg.norm(arm - arm_now)
            if d < best_d:
                best, best_d = arm, d
        return best if best is not None else arm_now

    def _gripper_world(self, u, qpos) -> sapien.Pose:
        return u.agent.robot.pose.sp * self._ik.fk(qpos)

    def _arm_goal(self, u, stage: Phase, qpos: np.ndarray) -> np.ndarray:
        """Joint positions one bounded step along the stage's path."""
        arm = qpos[list(ARM_QPOS_IDX)]
        target = self._target(u, stage)
        if target is None or stage.joint:  # joint-space move, all joints arriving together
            diff = self._joint_goal(u, stage, qpos) - arm
            scale = max(1.0, np.max(np.abs(diff)) / ARM_DELTA_SCALE)
            return arm + diff / scale
        root = u.agent.robot.pose.sp
        now = root * self._ik.fk(qpos)
        step = target.p - now.p
        dist = np.linalg.norm(step)
        p = now.p + step * min(1.0, stage.speed / max(dist, 1e-9))
        # Rotate at most 0.15 rad per step, towards the target orientation.
        r_now, r_tgt = quat2mat(now.q), quat2mat(target.q)
        rv = rot_error(r_tgt, r_now)
        ang = np.linalg.norm(rv)
        if ang > 0.15:
            rv = rv * 0.15 / ang
        r_next = _axis_angle(rv) @ r_now
        goal_root = root.inv() * _pose(p, r_next)
        arm_goal, _ = self._ik.solve(goal_root, qpos, iters=30)
        return arm_goal

    # ---------------------------------------------------------------- subtask scripts
    def _top_down(self, u, yaw_axis: np.ndarray, symmetry: int) -> np.ndarray:
        """Top-down gripper rotation (approach -z) with the fingers along `yaw_axis` (or one of its
        `symmetry` equivalent turns about z), closest to the current gripper orientation."""
        current = quat2mat(self._gripper_now(u).q)
        cands = []
        for k in range(symmetry):
            a = 2 * np.pi * k / symmetry
            c, s = np.cos(a), np.sin(a)
            y = np.array([c * yaw_axis[0] - s * yaw_axis[1], s * yaw_axis[0] + c * yaw_axis[1], 0.0])
            cands.append(_frame([0, 0, -1], y))
        return _closest_rotation(cands, current)

    def _grasp_pose(self, u, lift: float = 0.0) -> sapien.Pose:
        """Top-down grasp of the target object, `lift` metres above the grasp point."""
        obj = u.label_target.pose.sp
        spec = u.target_spec
        rot_obj = quat2mat(obj.q)
        x_axis = rot_obj[:, 0].copy()
        x_axis[2] = 0
        symmetry = 4 if spec.name == "cube" else 2
        if spec.kind == "cylinder":  # any yaw works: keep the gripper's current one
            x_axis = quat2mat(self._gripper_now(u).q)[:, 1]
            x_axis[2] = 0
        if np.linalg.norm(x_axis) < 1e-3:
            x_axis = np.array([1.0, 0, 0])
        rot = self._top_down(u, x_axis / np.linalg.norm(x_axis), symmetry)
        bottom = obj.p[2] - spec.height / 2
        p = np.array([obj.p[0], obj.p[1], bottom + spec.grasp_height + lift])
        return _pose(p, rot)

    def _pick_stages(self, u) -> list[Phase]:
        grasped = lambda e: bool(e.target_grasped()[0])  # noqa: E731
        return [
            Phase("pregrasp", GRIPPER_OPEN, lambda e: self._grasp_pose(e, 0.12), tol=0.015),
            Phase("descend", GRIPPER_OPEN, lambda e: self._grasp_pose(e), tol=0.006, speed=0.02),
            Phase("grasp", GRIPPER_CLOSED, lambda e: self._grasp_pose(e), tol=1.0, freeze=True,
                  min_steps=5, max_steps=12, done=grasped),
            Phase("lift", GRIPPER_CLOSED, lambda e: _shifted(self._gripper_now(e), z=0.15), tol=0.03,
                  freeze=True),
            Phase("rest", GRIPPER_CLOSED, None, max_steps=80),
            Phase("hold", GRIPPER_CLOSED, None, max_steps=10**9),
        ]

    def _place_goal_pose(self, u, lift: float) -> sapien.Pose:
        """Gripper pose that puts the held object upright over the goal, `lift` m above rest."""
        obj = u.label_target.pose.sp
        grip = self._gripper_now(u)
        obj_in_grip = grip.inv() * obj
        yaw_x = quat2mat(obj.q)[:, 0].copy()
        yaw_x[2] = 0
        if np.linalg.norm(yaw_x) < 1e-3:
            yaw_x = np.array([1.0, 0, 0])
        upright = _frame(yaw_x, np.cross([0, 0, 1.0], yaw_x))
        goal = np.asarray(u.goal_xyz, dtype=np.float64) + [0, 0, lift]
        return _pose(goal, upright) * obj_in_grip.inv()

    def _place_stages(self, u) -> list[Phase]:
        released = lambda e: not bool(e.target_grasped()[0])  # noqa: E731
        return [
            Phase("above", GRIPPER_CLOSED, lambda e: self._place_goal_pose(e, 0.10), tol=0.015),
            Phase("lower", GRIPPER_CLOSED, lambda e: self._place_goal_pose(e, 0.01), tol=0.006, speed=0.02),
            Phase("release", GRIPPER_OPEN, lambda e: self._gripper_now(e), tol=1.0, freeze=True,
                  min_steps=6, max_steps=12, done=released),
            Phase("retreat", GRIPPER_OPEN, lambda e: _shifted(self._gripper_now(e), z=0.12), tol=0.03,
                  freeze=True),
            Phase("rest", GRIPPER_OPEN, None, max_steps=80),
            Phase("hold", GRIPPER_OPEN, None, max_steps=10**9),
        ]

    def _handle_pose(self, u, lift: float = 0.0, frac: float | None = None) -> sapien.Pose:
        """Top-down grasp of the handle bar (fingers straddling it along x), `lift` m above it,
        at the bar's current position or where it is with the drawer at `frac`."""
        p = u.label_target.pose.p[0].cpu().numpy() if frac is None else u.handle_pos_at(frac)
        rot = self._top_down(u, np.array([1.0, 0.0, 0.0]), 2)
        return _pose(np.asarray(p, dtype=np.float64) + [0, 0, lift], rot)

    def _drawer_stages(self, u, frac_goal: float, done) -> list[Phase]:
        """Grip the handle from above, slide the drawer to `frac_goal`, let go, rest."""
        overshoot = 0.02 * np.sign(frac_goal - float(u.drawer_fraction()[0]))
        return [
            Phase("above", GRIPPER_OPEN, lambda e: self._handle_pose(e, 0.10), tol=0.015, joint=True),
            Phase("descend", GRIPPER_OPEN, lambda e: self._handle_pose(e), tol=0.006, speed=0.02),
            Phase("grip", GRIPPER_CLOSED, lambda e: self._handle_pose(e), tol=1.0, freeze=True,
                  min_steps=5, max_steps=6),
            Phase("slide", GRIPPER_CLOSED, lambda e: self._handle_pose(e, frac=frac_goal + overshoot / S.DRAWER_RANGE),
                  tol=0.02, speed=0.02, max_steps=40, done=done),
            Phase("release", GRIPPER_OPEN, lambda e: self._gripper_now(e), tol=1.0, freeze=True,
                  min_steps=4, max_steps=5),
            Phase("up", GRIPPER_OPEN, lambda e: _shifted(self._gripper_now(e), z=0.12), tol=0.03, freeze=True),
            Phase("rest", GRIPPER_OPEN, None, max_steps=80),
            Phase("hold", GRIPPER_OPEN, None, max_steps=10**9),
        ]

    def _open_stages(self, u) -> list[Phase]:
        return self._drawer_stages(u, 1.0, lambda e: float(e.drawer_fraction()[0]) >= 0.97)

    def _close_stages(self, u) -> list[Phase]:
        return self._drawer_stages(u, 0.0, lambda e: float(e.drawer_fraction()[0]) <= 0.005)

    def _gripper_now(self, u) -> sapien.Pose:
        return self._gripper_world(u, u.agent.robot.get_qpos()[0].cpu().numpy())


def _shifted(pose: sapien.Pose, z: float) -> sapien.Pose:
    """The same pose `z` metres higher (lifts and retreats straight up)."""
    return sapien.Pose(p=np.asarray(pose.p) + [0, 0, z], q=pose.q)


def _axis_angle(rv: np.ndarray) -> np.ndarray:
    """Rotation matrix of an axis-angle vector (Rodrigues)."""
    angle = np.linalg.norm(rv)
    if angle < 1e-9:
        return np.eye(3)
    k = rv / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx
