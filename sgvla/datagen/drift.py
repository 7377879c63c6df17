"""How far a replay strays from the recording, and when that is too far to keep the episode.

An open-loop replay (MS-HAB's published demos were recorded in 252-env GPU PhysX and carry no env
states) diverges from the recording as soon as the physics differs, especially through contacts.
Images and labels always come from the replay, so they agree with each other whatever happens;
what drift breaks is the pairing with the recorded *actions*: past some point the actions no
longer do what the recording says they did. So every step's replayed joint positions and
`obs/extra` entries are compared with the recorded ones and an episode is dropped - with the
reason in the manifest - the first time either exceeds its tolerance.

Works on plain arrays so the rule is testable without a simulator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class DriftTolerance:
    """Largest accepted per-step deviation from the recording."""

    #: any of the 10 body and arm joints, rad (torso: m)
    qpos: float = 0.1
    #: either finger joint, m (they travel 0 to 0.05 m: the joint tolerance would not see them)
    fingers: float = 0.01
    #: distance between replayed and recorded positions in `obs/extra` (poses: xyz only), m
    position: float = 0.05
    #: consecutive steps `is_grasped` may disagree with the recording (contact onset jitters by a
    #: step or two between physics builds); longer means the grasp itself differs
    grasp_steps: int = 3


def extra_error(replayed: np.ndarray, recorded: np.ndarray) -> float | None:
    """Distance between two `obs/extra` entries; None when they are not comparable vectors."""
    a = np.asarray(replayed, dtype=np.float64).reshape(-1)
    b = np.asarray(recorded).reshape(-1)
    if b.dtype == bool or a.shape != b.shape or a.size == 0:
        return None
    b = b.astype(np.float64)
    if a.size == 7:  # pose: position part; quaternions q and -q are the same rotation
        return float(np.linalg.norm(a[:3] - b[:3]))
    return float(np.linalg.norm(a - b))


@dataclass
class DriftCheck:
    """Running comparison of one episode's replay with its recording."""

    recorded_qpos: np.ndarray | None  # (T+1, D>=12); the last 12 dims are the non-base joints
    recorded_extra: dict[str, np.ndarray]  # key -> (T+1, ...)
    tol: DriftTolerance = field(default_factory=DriftTolerance)
    max_error: dict[str, float] = field(default_factory=dict)
    violation: str | None = None
    _disagree: dict[str, int] = field(default_factory=dict)

    def _note(self, key: str, err: float, limit: float, step: int) -> None:
        self.max_error[key] = max(self.max_error.get(key, 0.0), err)
        if err > limit and self.violation is None:
            self.violation = f"drift: {key} off by {err:.3g} > {limit:g} at step {step}"

    def update(self, step: int, qpos: np.ndarray, extra: dict | None = None) -> str | None:
        """Compare observation `step` (0 = after reset); returns the first violation, if any."""
        if self.recorded_qpos is not None and step < len(self.recorded_qpos):
            rec = np.asarray(self.recorded_qpos[step], dtype=np.float64)[-len(qpos):]
            err = np.abs(np.asarray(qpos, np.float64) - rec)
            self._note("qpos", float(np.max(err[:-2])), self.tol.qpos, step)
            self._note("fingers", float(np.max(err[-2:])), self.tol.fingers, step)
        for key, value in (extra or {}).items():
            rec_all = self.recorded_extra.get(key)
            if rec_all is None or not hasattr(rec_all, "__len__") or step >= len(rec_all):
                continue
            if np.asarray(rec_all[step]).dtype == bool:
                self._flag(f"extra/{key}", bool(np.asarray(value).reshape(-1)[0]) != bool(rec_all[step]), step)
                continue
            err = extra_error(value, rec_all[step])
            if err is not None:
                self._note(f"extra/{key}", err, self.tol.position, step)
        return self.violation

    def _flag(self, key: str, differs: bool, step: int) -> None:
        """A boolean label (is_grasped): tolerate `grasp_steps` consecutive disagreements."""
        run = self._disagree.get(key, 0) + 1 if differs else 0
        self._disagree[key] = run
        self.max_error[key] = max(self.max_error.get(key, 0.0), float(run))
        if run > self.tol.grasp_steps and self.violation is None:
            self.violation = f"drift: {key} differs from the recording for {run} steps at step {step}"
