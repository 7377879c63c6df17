"""Batches that cross DataLoader worker processes cheaply: every tensor of a batch in one buffer.

torch's default collate gives each tensor of a batch its own shared-memory segment, and the main
process receives each through its own file descriptor. Our samples carry ~16 tensors (pixels,
action, chunk, pad mask, six aux targets, six validity flags), so on a 2-core machine that
per-segment cost was about a quarter of the data pipeline's time (bench/dataset_io.py). Here all
tensors of a batch are stacked into views of ONE byte buffer (shared memory inside a worker): one
segment and one descriptor per batch. The views are ordinary tensors to the consumer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Number
from typing import Any

import numpy as np
import torch

from sgvla.errors import SgvlaError

_ALIGN = 64  # bytes: every view starts aligned for any dtype (and for vector loads)

KeyPath = tuple[str, ...]  # keys from the sample's top level down to a leaf


def stack_columns(columns: Mapping[KeyPath, Sequence[torch.Tensor]], into: dict | None = None) -> dict[str, Any]:
    """{key path: per-sample tensors} -> nested dict of [B, ...] tensors, all views of one buffer.

    Tensors of a column must agree in shape and dtype (a clear error names the column otherwise).
    The tensors are written into `into` (a new dict by default), keeping its existing keys' order.
    """
    plan, size = [], 0
    for path, items in columns.items():
        first = items[0]
        if any(t.shape != first.shape or t.dtype != first.dtype for t in items):
            shapes = sorted({(tuple(t.shape), str(t.dtype)) for t in items})
            raise SgvlaError(f"cannot batch {'.'.join(path)}: samples differ in shape/dtype {shapes}")
        nbytes = len(items) * first.numel() * first.element_size()
        plan.append((path, items, size, nbytes))
        size += -(-nbytes // _ALIGN) * _ALIGN
    out: dict[str, Any] = {} if into is None else into
    if not plan:
        return out
    buf = torch.empty(0, dtype=torch.uint8)
    if torch.utils.data.get_worker_info() is not None:
        buf.set_(torch.UntypedStorage._new_shared(size))  # as default_collate does: no copy when sent
    else:
        buf.resize_(size)
    for path, items, offset, nbytes in plan:
        view = buf[offset:offset + nbytes].view(items[0].dtype).view(len(items), *items[0].shape)
        torch.stack(list(items), out=view)
        _put(out, path, view)
    return out


def collate(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Drop-in for torch's default_collate on (nested) dict samples, with one buffer per batch.

    Tensors, numpy arrays and numbers are stacked; strings and anything else become lists.
    """
    if not samples or not all(isinstance(s, Mapping) for s in samples):
        raise SgvlaError("collate() needs a non-empty list of dict samples")
    columns: dict[KeyPath, list[torch.Tensor]] = {}
    out: dict[str, Any] = {}
    for path, first in _leaves(samples[0]):
        try:
            values = [_get(s, path) for s in samples]
        except KeyError:
            raise SgvlaError(f"samples differ in their keys: one lacks {'.'.join(path)}") from None
        if isinstance(first, torch.Tensor | np.ndarray | np.generic | Number):
            columns[path] = [torch.as_tensor(v) for v in values]
            values = None  # placeholder: keeps the sample's key order
        _put(out, path, values)
    return stack_columns(columns, into=out)


def _leaves(x: Mapping[str, Any], path: KeyPath = ()):
    for k, v in x.items():
        if isinstance(v, Mapping):
            yield from _leaves(v, path + (k,))
        else:
            yield path + (k,), v


def _get(x: Mapping[str, Any], path: KeyPath) -> Any:
    for k in path:
        x = x[k]
    return x


def _put(d: dict[str, Any], path: KeyPath, value: Any) -> None:
    for k in path[:-1]:
        d = d.setdefault(k, {})
    d[path[-1]] = value

