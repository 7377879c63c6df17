"""LeRobot export speed: `sgvla export --format lerobot` frames/s against the dataset's own decode rate.

Baseline (measured in the same run, same frames): read every shard of the split and decode every
image cell (RGB, depth and mask of both cameras, `schema.decode_png`), which is what reading the
dataset for training costs at the least. The export passes the PNG cells through unchanged and
decodes only the frames LeRobot's statistics sample (all of an episode up to 100 frames, then
~length**0.75), so long episodes export faster than they decode; the rest is Parquet writing,
statistics and metadata. Printed per version as frames/s and the ratio export / decode (> 1: the
export costs less than one decoding pass over the data). Best of `--repeats`, alternating.

    .venv/bin/python bench/export_speed.py [--episodes 6] [--length 160] [--repeats 3] [--dataset DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from sgvla.dataset.export_lerobot import export_lerobot, select_shards  # noqa: E402
from sgvla.dataset.schema import IMAGE_FIELDS, decode_png  # noqa: E402
from sgvla.dataset.synthetic import write_synthetic_dataset  # noqa: E402


def decode_per_s(root: Path, split: str) -> float:
    """Frames/s reading the split's shards and decoding every image cell."""
    t0 = time.perf_counter()
    frames = 0
    for shard in select_shards(root, None, split):
        table = pq.read_table(shard.path, columns=list(IMAGE_FIELDS))
        for name in IMAGE_FIELDS:
            for cell in pc.struct_field(table.column(name), "bytes").to_pylist():
                decode_png(cell)
        frames += table.num_rows
    return frames / (time.perf_counter() - t0)


def export_per_s(root: Path, out: Path, version: str, split: str) -> float:
    t0 = time.perf_counter()
    summary = export_lerobot(root, out, version=version, split=split, overwrite=True, progress=False)
    return summary.frames / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=6, help="synthetic episodes (128 px, like `sgvla gen`)")
    ap.add_argument("--length", type=int, default=160, help="frames per synthetic episode")
    ap.add_argument("--repeats", type=int, default=3, help="measurements per row (best is kept)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--dataset", type=Path, default=None, help="a folder written by `sgvla gen` instead")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        root = args.dataset or write_synthetic_dataset(tmp / "ds", "mini_kitchen",
                                                       {args.split: [args.length] * args.episodes})
        frames = sum(pq.read_metadata(s.path).num_rows for s in select_shards(root, None, args.split))
        print(f"dataset: {args.dataset or f'synthetic, {args.episodes} x {args.length} frames'}; "
              f"{frames} frames, {len(IMAGE_FIELDS)} images each")
        print("| LeRobot version | export frames/s | decode-only frames/s | ratio export / decode |")
        print("|---|---:|---:|---:|")
        for version in ("3.0", "2.1"):
            exp = dec = 0.0
            for _ in range(args.repeats):  # alternate, best of each: the machine may be shared
                dec = max(dec, decode_per_s(root, args.split))
                exp = max(exp, export_per_s(root, tmp / "out", version, args.split))
            shutil.rmtree(tmp / "out", ignore_errors=True)
            print(f"| v{version} | {exp:,.0f} | {dec:,.0f} | {exp / dec:.2f} |")


if __name__ == "__main__":
    main()
