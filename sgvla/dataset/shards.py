"""Atomic Parquet shard writing and reading that keeps the schema's HF features.

Tables are built against `FEATURES.arrow_schema` (which carries the `huggingface` metadata), so
`datasets.load_dataset(folder)` returns typed `Image`/`ClassLabel`/fixed-length columns with no
loading script. A shard is written to a temporary name and renamed when complete, so a killed
writer never leaves a half shard under a final name.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sgvla.dataset.atomic import write_atomic
from sgvla.dataset.schema import FEATURES, IMAGE_FIELDS


def _leaf_paths(name: str, typ: pa.DataType) -> list[str]:
    """Parquet's names for the leaf columns of an Arrow field (`qpos.list.element`, `head_rgb.bytes`):
    per-column compression matches these only; a top-level name alone leaves nested columns raw."""
    if pa.types.is_struct(typ):
        return [leaf for i in range(typ.num_fields) for leaf in _leaf_paths(f"{name}.{typ.field(i).name}",
                                                                            typ.field(i).type)]
    if pa.types.is_list(typ) or pa.types.is_fixed_size_list(typ) or pa.types.is_large_list(typ):
        return _leaf_paths(f"{name}.list.element", typ.value_type)
    return [name]


#: zstd for everything but the images, which are already PNG-compressed (a second codec only costs time).
_COMPRESSION = {leaf: ("none" if f.name in IMAGE_FIELDS else "zstd")
                for f in FEATURES.arrow_schema for leaf in _leaf_paths(f.name, f.type)}


def rows_to_table(columns: dict[str, list]) -> pa.Table:
    """Columns (lists of python values, ClassLabels as names or ids) -> typed Arrow table."""
    cols = dict(columns)
    for name, feat in FEATURES.items():
        if hasattr(feat, "str2int") and cols.get(name) and isinstance(cols[name][0], str):
            cols[name] = [feat.str2int(v) for v in cols[name]]
    missing = set(FEATURES) - set(cols)
    if missing:
        raise ValueError(f"shard rows lack fields {sorted(missing)}")
    return pa.Table.from_pydict({k: cols[k] for k in FEATURES}, schema=FEATURES.arrow_schema)


def write_shard(path: Path, table: pa.Table, row_group_size: int = 256) -> None:
    """Write `table` to `path` atomically (tmp file in the same folder, fsync, rename)."""

    def write(tmp: Path) -> None:
        if table.num_rows:
            pq.write_table(table, tmp, row_group_size=row_group_size, compression=_COMPRESSION)
        else:  # all episodes dropped: no row group at all (an empty one breaks `datasets` loading)
            pq.ParquetWriter(tmp, table.schema, compression=_COMPRESSION).close()

    write_atomic(path, write, fsync=True)
