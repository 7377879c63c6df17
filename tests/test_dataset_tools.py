"""`sgvla info`, `viz` and `push-dataset` on a real (synthetic-content) dataset folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from huggingface_hub import HfApi
from PIL import Image as PILImage
from typer.testing import CliRunner

from sgvla.cli import app
from sgvla.dataset.info import info_rows
from sgvla.dataset.push import push_dataset, upload_plan
from sgvla.dataset.synthetic import write_synthetic_dataset
from sgvla.errors import SgvlaError

SECRET = "hf_sgvlaTestTokenNeverPrinted"


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    episodes = {"train": [4, 6, 3], "val": [3]}
    return write_synthetic_dataset(root, "mini_kitchen", episodes, episodes_per_shard=2)


@pytest.fixture
def ds(good, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(good, root)
    return root


def test_info_counts_configs_splits_subtasks_and_size(good):
    rows = {(r["split"], r["subtask"]): r for r in info_rows(good)}
    assert rows[("train", "all")]["episodes"] == 3 and rows[("train", "all")]["transitions"] == 13
    assert rows[("train", "pick")]["transitions"] == 4 and rows[("train", "open")]["episodes"] == 1
    assert rows[("train", "all")]["shards"] == 2
    val_bytes = sum(p.stat().st_size for p in good.glob("mini_kitchen/data/val-*"))
    assert rows[("val", "all")]["bytes"] == val_bytes
    res = CliRunner().invoke(app, ["info", str(good)])
    assert res.exit_code == 0 and "mini_kitchen" in res.output and "total size on disk" in res.output


def test_viz_writes_a_contact_sheet_and_an_animation(good, tmp_path):
    res = CliRunner().invoke(app, ["viz", str(good), "--episode", "1", "--out", str(tmp_path / "ep.png")])
    assert res.exit_code == 0, res.output
    sheet = PILImage.open(tmp_path / "ep.png")
    assert sheet.format == "PNG" and sheet.size[0] > 600 and sheet.size[1] > 600
    assert np.asarray(sheet.convert("L")).std() > 10  # a picture, not a blank canvas
    gif = PILImage.open(tmp_path / "ep.gif")
    assert gif.format == "GIF" and gif.n_frames == 6 and gif.size == (4 * 128, 128)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ep.gif", "ep.png"]  # no temp files left


def test_viz_names_the_valid_choices(good, tmp_path):
    with pytest.raises(SgvlaError, match=r"episode_index runs 0\.\.2"):
        from sgvla.dataset.viz import visualize_episode

        visualize_episode(good, episode=9, out=tmp_path / "x.png")
    res = CliRunner().invoke(app, ["viz", str(good), "--config", "set_table"])
    assert res.exit_code == 2 and "choose one of mini_kitchen" in res.output


def test_dry_run_lists_exactly_the_dataset_files(ds):
    (ds / "mini_kitchen/data/.train-00000-of-00002.parquet.tmp-123").write_bytes(b"partial")
    (ds / ".cache").mkdir()
    (ds / ".cache/lock").write_text("x")
    args = ["push-dataset", str(ds), "--repo-id", "someone/sgvla-test", "--dry-run"]
    res = CliRunner().invoke(app, args, env={"HF_TOKEN": SECRET})
    assert res.exit_code == 0, res.output
    listed = [line.split()[-1] for line in res.output.splitlines() if not line.startswith("dry run")]
    want = sorted(p.relative_to(ds).as_posix() for p in ds.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(ds).parts))
    assert sorted(listed) == want
    assert {"README.md", "meta/stats.json", "mini_kitchen/data/val-00000-of-00001.parquet"} <= set(listed)
    total = sum((ds / f).stat().st_size for f in want)
    assert [f for f, _ in upload_plan(ds)] == want and sum(n for _, n in upload_plan(ds)) == total
    assert f"would upload {len(want)} files" in res.output and SECRET not in res.output


def test_push_refuses_an_invalid_folder_before_any_upload(ds):
    (ds / "meta/stats.json").unlink()
    res = CliRunner().invoke(app, ["push-dataset", str(ds), "--repo-id", "someone/x"])
    assert res.exit_code == 2 and "sgvla validate" in res.output and "stats.json" in res.output
    with pytest.raises(SgvlaError, match="USER/NAME"):
        push_dataset(ds, repo_id="no-slash")


def _cli(args, **env):
    """Run the real console entry point in a fresh process (so huggingface_hub reads its env)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return subprocess.run([sys.executable, "-m", "sgvla.cli", *args], capture_output=True, text=True,
                          env={**base, **env}, timeout=120)


def test_no_network_is_one_clear_line_and_the_token_is_never_printed(good, tmp_path):
    home = str(tmp_path / "hf_home")
    args = ["push-dataset", str(good), "--repo-id", "someone/sgvla-test"]
    unreachable = _cli(args, HF_ENDPOINT="http://127.0.0.1:9", HF_TOKEN=SECRET, HF_HOME=home)
    offline = _cli(args, HF_HUB_OFFLINE="1", HF_TOKEN=SECRET, HF_HOME=home)
    no_token = _cli(args, HF_HOME=home)
    cases = ((unreachable, "cannot reach the Hugging Face Hub"), (offline, "HF_HUB_OFFLINE is set"),
             (no_token, "no Hugging Face token"))
    for res, needle in cases:
        assert res.returncode == 2, res.stderr
        assert needle in res.stderr and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
        assert SECRET not in res.stdout + res.stderr


def test_upload_sends_the_folder_as_is_to_a_dataset_repo(ds, monkeypatch):
    """Arguments only: the Hub itself cannot be reached from the tests."""
    monkeypatch.setenv("HF_TOKEN", SECRET)
    with mock.patch.object(HfApi, "create_repo") as create, \
            mock.patch.object(HfApi, "create_branch") as branch, \
            mock.patch.object(HfApi, "upload_folder") as upload:
        push_dataset(ds, repo_id="someone/sgvla-test", private=True, revision="v1")
    create.assert_called_once()
    assert create.call_args.args[0] == "someone/sgvla-test"
    want = {"repo_type": "dataset", "private": True, "exist_ok": True}
    assert create.call_args.kwargs.items() >= want.items()
    assert branch.call_args.kwargs["branch"] == "v1"
    kw = upload.call_args.kwargs
    assert Path(kw["folder_path"]) == ds and kw["repo_type"] == "dataset" and kw["revision"] == "v1"
    assert ".*" in kw["ignore_patterns"]


def test_published_card_names_the_repo_cites_the_paper_and_leaves_local_paths_home(ds, monkeypatch):
    (ds / "meta" / "plan.json").write_text('{"plans": {"x": "/home/someone/demos/pick.h5"}}')
    (ds / "meta" / "outcomes" / "mini_kitchen").mkdir(parents=True)
    (ds / "meta" / "outcomes" / "mini_kitchen" / "train-00000.json").write_text("{}")
    sent = [f for f, _ in upload_plan(ds)]
    assert "meta/plan.json" not in sent and not any(f.startswith("meta/outcomes/") for f in sent)
    card = (ds / "README.md").read_text()
    assert "USER/NAME" in card and "arxiv.org/abs/2603.22760" in card and "@article{tu2026sgvla" in card
    assert "size_categories:" in card and "n<1K" in card
    monkeypatch.setenv("HF_TOKEN", SECRET)
    with mock.patch.object(HfApi, "create_repo"), mock.patch.object(HfApi, "upload_folder"):
        push_dataset(ds, repo_id="someone/sgvla-test")
    card = (ds / "README.md").read_text()
    assert "USER/NAME" not in card and 'load_dataset("someone/sgvla-test", ' in card


def test_shards_compress_every_column_but_the_images(good):
    """Nested columns (vectors, image structs) are compressed by their leaf names, or not at all."""
    import pyarrow.parquet as pq

    from sgvla.dataset.schema import IMAGE_FIELDS

    shard = sorted(good.glob("*/data/*.parquet"))[0]
    meta = pq.ParquetFile(shard).metadata.row_group(0)
    codecs = {meta.column(i).path_in_schema: meta.column(i).compression for i in range(meta.num_columns)}
    assert codecs["qpos.list.element"] == codecs["action.list.element"] == codecs["episode_index"] == "ZSTD"
    assert all(c == "UNCOMPRESSED" for p, c in codecs.items() if p.split(".")[0] in IMAGE_FIELDS)
    assert all(c == "ZSTD" for p, c in codecs.items() if p.split(".")[0] not in IMAGE_FIELDS), codecs
