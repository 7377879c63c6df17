"""The CLI surface: every command is listed with its help, and user errors are one line, not a traceback."""

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from sgvla.cli import app

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("demos", "gen", "validate", "info", "viz", "push-dataset", "export", "push-model", "import-minivla",
            "train", "plot", "eval", "study", "doctor")


def test_help_lists_every_command():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output


def test_console_script_runs_without_importing_the_simulator():
    # `sgvla --help` must be instant and must not pull SAPIEN/torch (training nodes have no SAPIEN):
    # the help is actually rendered (top level and the heavy commands) before sys.modules is read.
    code = """
import sys
from sgvla.cli import app
for args in (["--help"], ["train", "--help"], ["eval", "--help"], ["gen", "--help"]):
    try:
        app(args)
    except SystemExit as e:
        assert e.code == 0, (args, e.code)
    else:
        raise AssertionError(f"{args}: help did not exit")
bad = [m for m in ("torch", "sapien", "mani_skill", "ray") if m in sys.modules]
assert not bad, bad
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Usage" in res.stdout


def test_a_bad_ray_address_is_one_line_naming_the_flag(tmp_path, monkeypatch):
    import ray

    def refuse(*args, **kwargs):
        raise ConnectionError(f"could not find any running Ray instance at {kwargs.get('address')}")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    res = CliRunner().invoke(app, ["eval", "--model", "expert", "--subtask", "pick", "--episodes", "1",
                                   "--out", str(tmp_path / "o"), "--ray-address", "10.0.0.9:6379"])
    assert res.exit_code == 2, res.output
    assert "--ray-address 10.0.0.9:6379" in res.output and "Traceback" not in res.output, res.output


def test_ray_session_shuts_down_only_the_ray_it_started(monkeypatch):
    import ray

    from sgvla.raysession import RaySession

    state = {"up": False, "inits": [], "shutdowns": 0}
    monkeypatch.setattr(ray, "is_initialized", lambda: state["up"])
    monkeypatch.setattr(ray, "init", lambda **kw: (state["inits"].append(kw), state.update(up=True)))
    monkeypatch.setattr(ray, "shutdown", lambda: (state.update(up=False), state.update(
        shutdowns=state["shutdowns"] + 1)))
    with RaySession(None, num_cpus=3) as s:
        assert s.started and s.start() is s and len(state["inits"]) == 1
    assert state["inits"][0]["address"] == "local" and state["inits"][0]["num_cpus"] == 3
    assert state["shutdowns"] == 1 and not state["up"]
    state["up"] = True  # someone else's Ray: joined, used, left running
    with RaySession("10.0.0.9:6379") as s:
        assert not s.started
    assert state["shutdowns"] == 1 and state["up"] and len(state["inits"]) == 1


def test_setup_is_idempotent_and_skips_when_installed():
    out = subprocess.run(["bash", "scripts/setup.sh"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert ".venv up to date" in out.stdout
    assert "rendering driver: ok" in out.stdout


def test_gen_and_eval_read_a_job_file_with_sets_and_flags_over_it(tmp_path):
    """A cluster job is one YAML file of the command's options; --set overrides the file and a flag
    on the command line overrides both (each value reaches the command: its own check names it)."""
    job = tmp_path / "eval.yaml"
    job.write_text(f"model: expert\nepisodes: 0\nout: {tmp_path / 'ev'}\n")
    run = CliRunner().invoke
    for extra, got in (([], "got 0"), (["--set", "episodes=-2"], "got -2"),
                       (["--set", "episodes=-2", "--episodes", "-5"], "got -5")):
        res = run(app, ["eval", "--config", str(job), *extra])
        assert res.exit_code == 2 and got in res.output, (extra, res.output)
    gen_job = tmp_path / "gen.yaml"
    gen_job.write_text(f"task: nowhere\nout: {tmp_path / 'ds'}\n")  # gen's required options from the file
    res = run(app, ["gen", "--config", str(gen_job)])
    assert res.exit_code == 2 and "nowhere" in res.output, res.output
    job.write_text("modle: expert\n")
    res = run(app, ["eval", "--config", str(job)])
    assert res.exit_code == 2 and "unknown field(s) ['modle']" in res.output and "ray_address" in res.output
    res = run(app, ["eval", "--config", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "cannot read" in res.output


def test_example_job_files_name_only_real_options():
    import typer
    import yaml

    cli = typer.main.get_command(app)
    files = sorted((ROOT / "configs" / "jobs").glob("*.yaml"))
    assert files
    for f in files:
        command = cli.commands[f.name.split("_")[0]]
        options = {p.name for p in command.params}
        assert set(yaml.safe_load(f.read_text())) <= options, f
