"""Layers point one way: a training node needs no simulator, and data generation needs no model."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_PROBE = """
import importlib, pkgutil, sys
import sgvla.{pkg} as pkg
for m in pkgutil.walk_packages(pkg.__path__, prefix="sgvla.{pkg}."):
    importlib.import_module(m.name)
bad = sorted(n for n in sys.modules if n.split(".")[0] in {forbidden!r} or n in {forbidden!r})
assert not bad, bad
"""


def _assert_no_import(pkg: str, forbidden: set[str]) -> None:
    code = _PROBE.format(pkg=pkg, forbidden=forbidden)
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]


def test_model_and_train_never_import_the_simulator():
    for pkg in ("model", "train"):
        _assert_no_import(pkg, {"sapien", "mani_skill", "sgvla.envs", "sgvla.datagen"})


def test_datagen_never_imports_the_model():
    _assert_no_import("datagen", {"sgvla.model", "sgvla.train"})


def test_dataset_never_imports_the_model():
    """Loading data must not pull in transformers and the model (the pixel and action transforms
    both sides share live in the neutral `sgvla.transforms`)."""
    _assert_no_import("dataset", {"sgvla.model", "sgvla.train", "transformers"})


def test_the_vocabulary_imports_nothing_heavy():
    """Every layer reads sgvla.vocab (cameras, views, labels): it must cost nothing to import."""
    code = ("import sys, sgvla.vocab; bad = [m for m in ('torch', 'numpy', 'transformers', 'sapien', 'datasets') "
            "if m in sys.modules]; assert not bad, bad")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
