"""The dataset card (README.md): YAML header that `datasets` reads, then a human-readable guide.

Everything is derived from what is on disk (shards, meta/stats.json, meta/manifest.json) so the
card can be regenerated after any resume and always agrees with the data: `datasets` compares
the YAML split sizes with the Parquet rows on load (NonMatchingSplitsSizesError), which makes a
stale card fail loudly instead of silently describing other data.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from datasets import DatasetInfo, SplitDict, SplitInfo
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCardData

import sgvla
from sgvla.dataset.atomic import write_text_atomic
from sgvla.dataset.layout import (
    CARD_PATH,
    MANIFEST_PATH,
    fmt_bytes,
    group_shards,
    read_json,
    require_dataset,
    shard_rows,
)
from sgvla.dataset.schema import FEATURES, FIELD_DOCS, FPS, IMAGE_SIZE, STATS_FIELDS, STATS_PATH

DEFAULT_LICENSE = "apache-2.0"
#: Stands for the Hub repo in the loading examples until `sgvla push-dataset --repo-id` fills it in.
PLACEHOLDER_REPO = "USER/NAME"
ARXIV = "2603.22760"
CITATION = """@article{tu2026sgvla,
  title   = {{SG-VLA}: Learning Spatially-Grounded Vision-Language-Action Models for Mobile Manipulation},
  author  = {Tu, Ruisen and Shukla, Arth and Yoo, Sohyun and Li, Xuanlin and Li, Junxi and Xie, Jianwen and
             Su, Hao and Tu, Zhuowen},
  journal = {arXiv preprint arXiv:2603.22760},
  year    = {2026}
}"""


def size_category(rows: int) -> str:
    """The Hub's `size_categories` bucket for a number of rows."""
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
              (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (10**9, "100M<n<1B"),
              (10**10, "1B<n<10B"), (10**11, "10B<n<100B"), (10**12, "100B<n<1T")]
    return next((name for bound, name in bounds if rows < bound), "n>1T")
TAGS = ["robotics", "mobile-manipulation", "maniskill", "ms-hab", "vla", "fetch", "sgvla"]


def _split_infos(root: Path) -> tuple[dict, dict]:
    """({config: {split: shard glob}}, {config: SplitDict}) from the shards on disk."""
    files: dict[str, dict[str, list[str]]] = {}
    infos: dict[str, SplitDict] = {}
    for config, splits in group_shards(require_dataset(root)).items():
        sd = SplitDict()
        for split, shards in splits.items():
            rows = sum(shard_rows(s.path) for s in shards)
            size = sum(s.path.stat().st_size for s in shards)
            sd.add(SplitInfo(name=split, num_bytes=size, num_examples=rows))
            files.setdefault(config, {})[split] = f"{config}/data/{split}-?????-of-?????.parquet"
        infos[config] = sd
    return files, infos


def card_data(root: Path, license_id: str = DEFAULT_LICENSE) -> DatasetCardData:
    """The YAML header: configs (one per task), features, split sizes, license, categories, tags."""
    files, infos = _split_infos(root)
    rows = sum(s.num_examples for sd in infos.values() for s in sd.values())
    data = DatasetCardData(license=license_id, task_categories=["robotics"], tags=TAGS,
                           pretty_name="SG-VLA mobile manipulation dataset", size_categories=[size_category(rows)])
    MetadataConfigs({
        config: {"data_files": [{"split": s, "path": p} for s, p in sorted(splits.items())]}
        for config, splits in files.items()
    }).to_dataset_card_data(data)
    DatasetInfosDict({
        config: DatasetInfo(features=FEATURES, splits=sd, dataset_size=sum(s.num_bytes for s in sd.values()),
                            download_size=sum(s.num_bytes for s in sd.values()))
        for config, sd in infos.items()
    }).to_dataset_card_data(data)
    return data



def _counts_section(stats: dict | None) -> str:
    if not stats or "counts" not in stats:
        return "_Counts unavailable: meta/stats.json is missing (re-run `sgvla gen` on the folder)._\n"
    lines = ["| task (config) | split | subtask | episodes | transitions |", "|---|---|---|---:|---:|"]
    for config, splits in stats["counts"].items():
        for split, c in splits.items():
            for sub, sc in c["subtasks"].items():
                lines.append(f"| {config} | {split} | {sub} | {sc['episodes']} | {sc['transitions']} |")
            lines.append(f"| {config} | {split} | **all** | **{c['episodes']}** | **{c['transitions']}** |")
    return "\n".join(lines) + "\n"


def _fields_section() -> str:
    lines = ["| field | type | meaning |", "|---|---|---|"]
    lines += [f"| `{d.name}` | {d.dtype} | {d.text} |" for d in FIELD_DOCS]
    return "\n".join(lines) + "\n"


def _count_of(v) -> int:
    if isinstance(v, int):
        return v
    if isinstance(v, (list, dict)):
        return len(v)
    return 0


def _generation_section(command_line: str, sources: list[str], manifest: dict | None) -> str:
    src = "\n".join(f"- `{s}`" for s in sources) or "- (not recorded)"
    text = (f"Recorded by `sgvla` {sgvla.__version__} by replaying demonstrations in ManiSkill 3 / SAPIEN "
            f"at {FPS} Hz and rendering Fetch's head and hand cameras at {IMAGE_SIZE}x{IMAGE_SIZE}.\n\n"
            f"Command line:\n\n```bash\n{command_line}\n```\n\nSource demonstrations:\n\n{src}\n")
    if manifest:
        parts = [f"{k}: {_count_of(manifest[k])}" for k in ("kept", "dropped", "failed") if k in manifest]
        if parts:
            text += "\nEpisodes of the run (`meta/manifest.json` lists every one with its reason): " \
                    + ", ".join(parts) + ".\n"
        reasons = Counter(str(e.get("reason", "?")).split(" at step")[0]
                          for k in ("dropped", "failed") for e in manifest.get(k) or [] if isinstance(e, dict))
        if reasons:
            text += "\n| not kept because | episodes |\n|---|---:|\n" + "".join(
                f"| {r} | {n} |\n" for r, n in reasons.most_common())
    return text


def _loading_section(configs: list[str]) -> str:
    c = configs[0] if configs else "mini_kitchen"
    return f"""```python
from datasets import load_dataset

ds = load_dataset("{PLACEHOLDER_REPO}", "{c}", split="train")   # or a local folder path
row = ds[0]
row["head_rgb"]        # PIL image, 128x128 RGB
row["head_depth"]      # PIL image, mode I;16: np.asarray(...) is uint16 millimetres
row["action"]          # 13 floats

stream = load_dataset("{PLACEHOLDER_REPO}", "{c}", split="train", streaming=True)
```

For training, `sgvla.dataset.torch_dataset.SgvlaTorchDataset` yields model-ready tensors (resized,
normalised views, q01/q99-normalised actions and action chunks, auxiliary targets with validity masks).
"""


def _stats_section(stats: dict | None) -> str:
    if not stats:
        return ""
    used = ", ".join(stats.get("computed_from", []))
    return (f"`{STATS_PATH}` holds per-dimension mean, std, min, max, q01 and q99 of "
            f"{', '.join(f'`{f}`' for f in STATS_FIELDS)} over {used} "
            f"({stats.get('num_episodes', '?')} episodes, {stats.get('num_transitions', '?')} transitions; "
            f"quantiles {stats.get('quantiles', '?')}). Actions are normalised for training with "
            "q01/q99 to [-1, 1].\n")


def render_card(root: Path, command_line: str, sources: list[str]) -> str:
    """Full README.md text for the dataset folder `root`."""
    root = Path(root)
    manifest = read_json(root / MANIFEST_PATH)
    stats = read_json(root / STATS_PATH)
    data = card_data(root, (manifest or {}).get("license", DEFAULT_LICENSE))
    configs = [c["config_name"] for c in data.to_dict().get("configs", [])]
    # the shards' bytes as the YAML states them (what `datasets` loads; stray files do not count)
    size = sum(info.dataset_size or 0 for info in DatasetInfosDict.from_dataset_card_data(data).values())
    body = f"""
# SG-VLA mobile manipulation dataset

Demonstrations of the Fetch mobile manipulator for the subtasks pick, place, open and close, with
head and hand RGB, depth and target masks, robot state, target pose and grasp labels: the inputs and
auxiliary targets of SG-VLA ("Learning Spatially-Grounded Vision-Language-Action Models for Mobile
Manipulation", [arXiv {ARXIV}](https://arxiv.org/abs/{ARXIV})). One row is one control step at
{FPS} Hz; each configuration is one task, each Parquet shard holds whole episodes sorted by
(`episode_index`, `frame_index`).
Size on disk: {fmt_bytes(size)}.

## Loading

{_loading_section(configs)}
## Episodes and transitions

{_counts_section(stats)}
## Fields

Images are PNG in `Image()` columns: RGB 8-bit, depth lossless 16-bit millimetres, masks 1-bit.
Poses are x, y, z (m) then a unit quaternion qw, qx, qy, qz. Vectors are float32.

{_fields_section()}
## Statistics

{_stats_section(stats)}
## How it was generated

{_generation_section(command_line, sources, manifest)}
## Citation

```bibtex
{CITATION}
```
"""
    return f"---\n{data.to_yaml()}\n---\n{body}"


def write_card(root: Path, command_line: str, sources: list[str]) -> Path:
    """Write README.md atomically from what is on disk; returns its path."""
    root = Path(root)
    return write_text_atomic(root / CARD_PATH, render_card(root, command_line, sources))
