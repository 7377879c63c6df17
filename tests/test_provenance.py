"""Every artefact names the software and machine it came from (sgvla/provenance.py)."""

import subprocess
from importlib import metadata
from pathlib import Path

import sgvla
from sgvla import provenance


def test_software_names_the_versions_commit_and_cpu():
    sw = provenance.software()
    assert sw["sgvla"] == sgvla.__version__ and sw["python"] and sw["platform"] and sw["cpu"]
    assert sw["packages"]["torch"] == metadata.version("torch")
    assert sw["packages"]["mani_skill"] == metadata.version("mani_skill")
    assert set(sw["packages"]) == set(provenance.PACKAGES)
    root = Path(sgvla.__file__).resolve().parent.parent
    if (root / ".git").exists():  # a checkout (the suite's case); an installed wheel records None
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        assert sw["git_commit"].split("+")[0] == head


def test_changes_name_what_differs_from_a_recording():
    now = provenance.software()
    assert provenance.changes(now) == [] and provenance.changes(None) == []
    old = {**now, "cpu": "another CPU", "packages": {**now["packages"], "numpy": "1.0.0"}}
    assert provenance.changes(old) == [f"cpu another CPU -> {now['cpu']}", f"numpy 1.0.0 -> {now['packages']['numpy']}"]
