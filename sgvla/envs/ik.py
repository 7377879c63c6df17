"""Inverse kinematics for Fetch's 7-DoF arm (damped least squares on SAPIEN's Pinocchio model).

Why not mplib or Pinocchio's own CLIK: mplib 0.1.1 segfaults with numpy 2, and CLIK ignores joint
limits (it happily returns a shoulder_lift beyond its range). This solver clamps to the limits
at every iteration and starts from the current configuration, so consecutive solutions stay
continuous (no 2*pi jumps of the unlimited roll joints), which is what a closed-loop expert needs.
"""

from __future__ import annotations

import numpy as np
import sapien
from transforms3d.quaternions import quat2mat

#: Indices of the arm joints in Fetch's 15 active joints (shoulder_pan ... wrist_roll).
ARM_QPOS_IDX = (5, 7, 8, 9, 10, 11, 12)


def rot_error(r_target: np.ndarray, r_now: np.ndarray) -> np.ndarray:
    """Axis-angle vector (world frame) rotating r_now onto r_target."""
    r = r_target @ r_now.T
    cos = np.clip((np.trace(r) - 1) / 2, -1.0, 1.0)
    angle = np.arccos(cos)
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    if angle < 1e-6:
        return axis / 2
    if np.pi - angle < 1e-4:  # axis from the symmetric part when sin(angle) ~ 0
        w, v = np.linalg.eigh((r + r.T) / 2)
        return v[:, np.argmax(w)] * angle
    return axis * angle / (2 * np.sin(angle))


class ArmIK:
    """IK and FK of one link of a ManiSkill Fetch articulation, in the robot's root frame."""

    def __init__(self, robot, link: str = "gripper_link"):
        self.model = robot._objs[0].create_pinocchio_model()
        names = [lk.name for lk in robot.links]
        self.link = names.index(link)
        self.idx = np.array(ARM_QPOS_IDX)
        limits = robot.get_qlimits()[0].cpu().numpy().astype(np.float64)
        self.lo = limits[self.idx, 0]
        self.hi = limits[self.idx, 1]

    def fk(self, qpos: np.ndarray) -> sapien.Pose:
        self.model.compute_forward_kinematics(np.asarray(qpos, dtype=np.float64))
        return self.model.get_link_pose(self.link)

    def solve(self, target: sapien.Pose, qpos: np.ndarray, iters: int = 100, rot_weight: float = 0.5,
              damping: float = 0.05, tol: float = 1e-4) -> tuple[np.ndarray, float]:
        """Arm joints (7,) that bring the link to `target` (root frame), starting from the 15-D
        `qpos`; returns them with the remaining position error (m)."""
        q = np.asarray(qpos, dtype=np.float64).copy()
        r_target = quat2mat(target.q)
        p_target = np.asarray(target.p, dtype=np.float64)
        err_p = np.inf
        for _ in range(iters):
            pose = self.fk(q)
            r_now = quat2mat(pose.q)
            err_p_vec = p_target - pose.p
            err_r = rot_error(r_target, r_now)
            err_p = float(np.linalg.norm(err_p_vec))
            if err_p < tol and np.linalg.norm(err_r) < 10 * tol:
                break
            jac_local = self.model.compute_single_link_local_jacobian(q, self.link)[:, self.idx]
            jac = np.vstack([r_now @ jac_local[:3], rot_weight * (r_now @ jac_local[3:])])
            err = np.concatenate([err_p_vec, rot_weight * err_r])
            jj = jac @ jac.T + damping**2 * np.eye(6)
            dq = jac.T @ np.linalg.solve(jj, err)
            q[self.idx] = np.clip(q[self.idx] + dq, self.lo, self.hi)
        return q[self.idx].copy(), err_p
