"""Adversarial cases from the hardening issue: each one failed before its fix."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import pytest
import torch

from sgvla.errors import SgvlaError
from sgvla.train.checkpoint import OPTIM_FILE, TrainerState, read_checkpoint, rng_state, set_rng_state, write_checkpoint

ROOT = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this creates `marker`: proof that a load ran code from the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _checkpoint(tmp_path: Path) -> Path:
    state = {"w": torch.arange(4.0)}
    opt = {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    return write_checkpoint(tmp_path, TrainerState(global_step=3), state, opt, [rng_state()])


def test_resume_never_unpickles_planted_files(tmp_path):
    path = _checkpoint(tmp_path / "ckpt")
    marker = tmp_path / "pwned"
    (path / "rng.pt").write_bytes(pickle.dumps(_Payload(marker)))  # the old RNG file name
    read_checkpoint(path)
    assert not marker.exists()
    (path / OPTIM_FILE).write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(SgvlaError, match="unreadable"):
        read_checkpoint(path)
    assert not marker.exists()


def test_rng_states_round_trip_as_json(tmp_path):
    import random

    import numpy as np

    saved = rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(saved)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_no_unsafe_load_in_the_tree():
    unsafe = re.compile(r"weights_only\s*=\s*False|pickle\.loads?\(|torch\.load\((?![^)]*weights_only=True)")
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in (ROOT / "sgvla").rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if unsafe.search(line)]
    assert not hits, hits
