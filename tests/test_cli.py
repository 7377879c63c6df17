"""The CLI surface: every command is listed with its help, and user errors are one line, not a traceback."""

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from sgvla.cli import app

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("demos", "gen", "validate", "info", "viz", "push-dataset", "train", "plot", "eval")


def test_help_lists_every_command():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output


def test_console_script_runs_without_importing_the_simulator():
    # `sgvla --help` must be instant and must not pull SAPIEN/torch (training nodes have no SAPIEN).
    code = "import sys; from sgvla.cli import app; assert 'sapien' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_setup_is_idempotent_and_skips_when_installed():
    out = subprocess.run(["bash", "scripts/setup.sh"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert ".venv up to date" in out.stdout
    assert "rendering driver: ok" in out.stdout
