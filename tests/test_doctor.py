"""`sgvla doctor`: every missing piece at once, with the fixes."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from sgvla.cli import app
from sgvla.doctor import nvidia_icd_missing


def test_builtin_scene_is_ready_here():
    res = CliRunner().invoke(app, ["doctor"])
    assert res.exit_code == 0 and "rendering (SAPIEN + Vulkan)" in res.output, res.output


def test_mshab_task_lists_everything_missing_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("MS_ASSET_DIR", str(tmp_path / "ms"))
    res = CliRunner().invoke(app, ["doctor", "--task", "set_table"])
    assert res.exit_code == 1, res.output
    missing = [ln for ln in res.output.splitlines() if ln.startswith("MISSING")]
    for sub in ("open", "pick", "place", "close"):  # every subtask's plans (train and val) and demos
        assert sum(f"task_plans/set_table/{sub}/" in ln for ln in missing) == 2, res.output
        assert any(f"demos of {sub}" in ln for ln in missing)
    assert any("mani_skill2_ycb" in ln for ln in missing) and any("package mshab" in ln for ln in missing)
    assert res.output.count("download_asset ycb") == 1  # each fix said once


def test_nvidia_gpu_without_its_vulkan_icd_is_found(tmp_path, monkeypatch):
    import shutil

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert shutil.which("nvidia-smi")
    icd = tmp_path / "icd.d"
    icd.mkdir()
    (icd / "lvp_icd.x86_64.json").write_text("{}")  # Mesa's lavapipe only
    assert nvidia_icd_missing([str(icd)])
    (icd / "nvidia_icd.json").write_text("{}")
    assert not nvidia_icd_missing([str(icd), str(Path("/nonexistent"))])
