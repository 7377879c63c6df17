"""`sgvla demos`: bad input is one clear line with nothing written; expert demos are ManiSkill
trajectory files in MS-HAB's layout that ManiSkill's own `replay_trajectory` replays."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from typer.testing import CliRunner

from sgvla.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _demos(*args: str):
    return CliRunner().invoke(app, ["demos", *args])


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--task", "kitchen9"], "--task"),
        (["--task", "tidy_house", "--subtask", "pick"], "--task"),
        (["--subtask", "juggle"], "--subtask"),
        (["--episodes", "0"], "--episodes"),
        (["--seed", "-1"], "--seed"),
        (["--seed", "999999", "--episodes", "2"], "--seed"),
        (["--split", "test"], "--split"),
        (["--token-grid", "1"], "--token-grid"),
        (["--token-grid", "-255"], "--token-grid"),
    ],
)
def test_bad_arguments_fail_in_one_line_and_write_nothing(tmp_path, args, flag):
    out = tmp_path / "demos"
    result = _demos(*args, "--out", str(out))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and flag in lines[0]
    assert not out.exists()


def test_out_that_is_a_file_is_refused(tmp_path):
    out = tmp_path / "demos"
    out.write_text("keep me")
    result = _demos("--subtask", "pick", "--episodes", "1", "--out", str(out))
    assert result.exit_code == 2 and "--out" in result.output and "is a file" in result.output
    assert out.read_text() == "keep me"


@pytest.mark.slow
def test_missing_rendering_driver_names_the_fix(tmp_path):
    """With the Vulkan loader pointed at no driver (as on a machine without one), the command
    stops with one line naming the setup script and README section, and writes nothing."""
    out = tmp_path / "demos"
    env = dict(os.environ, VK_ICD_FILENAMES=str(tmp_path / "none.json"), VK_DRIVER_FILES=str(tmp_path / "none.json"))
    proc = subprocess.run([sys.executable, "-m", "sgvla.cli", "demos", "--subtask", "pick", "--episodes", "1",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "scripts/setup.sh" in last and "Troubleshooting" in last
    assert "Traceback" not in proc.stderr
    assert not out.exists() or not any(out.iterdir())


def _check_layout(h5_path: Path, n_episodes: int, images: bool) -> None:
    """MS-HAB's published layout (camera frames only with --images), plus env_states; only
    successful episodes."""
    meta = json.loads(h5_path.with_suffix(".json").read_text())
    assert meta["env_info"]["env_id"].startswith("MiniKitchen")
    assert meta["env_info"]["env_kwargs"]["control_mode"] == "pd_joint_delta_pos"
    assert len(meta["episodes"]) == n_episodes
    with h5py.File(h5_path, "r") as f:
        assert sorted(f.keys()) == [f"traj_{i}" for i in range(n_episodes)]
        for i, ep in enumerate(meta["episodes"]):
            assert ep["episode_id"] == i and ep["reset_kwargs"]["seed"] == ep["episode_seed"]
            assert ep["control_mode"] == "pd_joint_delta_pos" and ep["success"] is True
            tr = f[f"traj_{i}"]
            t = ep["elapsed_steps"]
            assert tr["actions"].shape == (t, 13)
            assert tr["obs/agent/qpos"].shape == (t + 1, 12) and tr["obs/agent/qvel"].shape == (t + 1, 12)
            assert tr["obs/extra/tcp_pose_wrt_base"].shape == (t + 1, 7)
            assert tr["obs/extra/obj_pose_wrt_base"].shape == (t + 1, 7)
            assert tr["obs/extra/goal_pos_wrt_base"].shape == (t + 1, 3)
            assert tr["obs/extra/is_grasped"].shape == (t + 1,)
            assert ("sensor_data" in tr["obs"]) == images
            for cam in ("fetch_head", "fetch_hand") if images else ():
                assert tr[f"obs/sensor_data/{cam}/rgb"].shape == (t + 1, 128, 128, 3)
                assert tr[f"obs/sensor_data/{cam}/depth"].shape == (t + 1, 128, 128, 1)
                assert tr[f"obs/sensor_param/{cam}/intrinsic_cv"].shape == (t + 1, 3, 3)
            for key in ("success", "fail", "terminated", "truncated", "rewards"):
                assert tr[key].shape == (t,)
            assert tr["success"][-1] and not tr["fail"][:].any()
            assert tr["env_states/articulations/fetch"].shape == (t + 1, 43)
            assert tr["env_states/articulations/counter"].shape == (t + 1, 15)


def _replay(h5_path: Path) -> str:
    """ManiSkill's own replay tool, unchanged, in a process that registered our envs first."""
    code = ("import sgvla.envs; from mani_skill.trajectory.replay_trajectory import main, parse_args; "
            "main(parse_args())")
    proc = subprocess.run([sys.executable, "-c", code, "--traj-path", str(h5_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize(("subtask", "n", "images"), [("pick", 2, False), ("open", 1, True)])
def test_expert_demos_load_and_replay(tmp_path, subtask, n, images):
    """An object subtask (two episodes back to back) and an articulation subtask."""
    out = tmp_path / "demos"
    result = _demos("--subtask", subtask, "--episodes", str(n), "--out", str(out), "--seed", "7",
                    "--images" if images else "--no-images")
    assert result.exit_code == 0, result.output
    assert f"{subtask}: expert success {n}/{n} = 100%" in result.output
    assert sorted(p.name for p in out.iterdir()) == [f"{subtask}.h5", f"{subtask}.json"]
    _check_layout(out / f"{subtask}.h5", n, images)
    assert f"Replayed {n} episodes, {n}/{n}=100.00% demos saved" in _replay(out / f"{subtask}.h5")
