"""CUDA twins of :mod:`gpups.kernels.cpu_tables` (``tables.cu``, loaded with CuPy's
``RawModule``, launched on the current stream), with the same signatures: deduplicate row
gradients (a stable sort, then a segmented sum in the order the occurrences came: no atomics),
gather rows, and the row-wise updates. Element-wise they do what the CPU kernels do; a GPU's
fused multiply-adds round differently, so the two agree within float tolerance, not bitwise."""
from __future__ import annotations

from typing import Any

import cupy as cp
import numpy as np

from .cuda import THREADS, blocks, function


def _launch(name: str, n: int, *args: Any) -> None:
    dtype = next(a.dtype for a in args if isinstance(a, cp.ndarray) and a.dtype.kind == "f")
    function("tables", name, dtype)((blocks(max(int(n), 1)),), (THREADS,), args)


def gather(w: Any, rows: Any, out: Any) -> None:
    """out[i] = w[rows[i]]."""
    m, dim = int(rows.shape[0]), int(w.shape[1])
    if m:
        _launch("gather", m * dim, w, rows, np.int64(m), np.int32(dim), out)


def segment_sum(rows: Any, values: Any, order: Any) -> tuple[Any, Any]:
    """(unique rows ascending, their summed values) of ``rows[order]`` (a stable sort's order)."""
    m, dim = int(order.shape[0]), int(values.shape[1])
    if m == 0:
        return cp.empty(0, cp.int64), cp.empty((0, dim), values.dtype)
    s = rows[order]
    first = cp.ones(m, cp.bool_)
    first[1:] = s[1:] != s[:-1]
    starts = cp.flatnonzero(first)
    u = s[starts]
    starts = cp.concatenate([starts, cp.asarray([m], starts.dtype)]).astype(cp.int64, copy=False)
    out = cp.empty((len(u), dim), values.dtype)
    _launch("segment_sum", len(u) * dim, cp.ascontiguousarray(values), order.astype(cp.int64, copy=False),
            starts, np.int64(len(u)), np.int32(dim), out)
    return u, out


def dedup(rows: Any, values: Any) -> tuple[Any, Any]:
    """Repeated rows summed (in the order they came): (unique rows ascending, values)."""
    return segment_sum(rows, values, cp.argsort(rows))  # (CuPy's argsort is stable)


def _rows(u: Any, g: Any, scale: float) -> tuple:
    T = g.dtype.type
    return u, cp.ascontiguousarray(g), np.int64(u.shape[0]), np.int32(g.shape[1]), T(scale)


def sgd(w: Any, u: Any, g: Any, scale: float, lr: Any) -> None:
    if len(u):
        _launch("sgd", len(u) * w.shape[1], w, *_rows(u, g, scale), w.dtype.type(lr))


def adagrad(w: Any, h: Any, u: Any, g: Any, scale: float, lr: Any, eps: Any) -> None:
    if len(u):
        T = w.dtype.type
        _launch("adagrad", len(u) * w.shape[1], w, h, *_rows(u, g, scale), T(lr), T(eps))


def rowwise_adagrad(w: Any, h: Any, u: Any, g: Any, scale: float, lr: Any, eps: Any) -> None:
    if len(u):
        T = w.dtype.type
        _launch("rowwise_adagrad", len(u), w, h, *_rows(u, g, scale), T(lr), T(eps))


def lazy_adam(w: Any, m: Any, v: Any, u: Any, g: Any, scale: float, lr: Any, b1: Any, b2: Any, eps: Any,
              bc1: Any, bc2: Any) -> None:
    if len(u):
        T = w.dtype.type
        _launch("lazy_adam", len(u) * w.shape[1], w, m, v, *_rows(u, g, scale), *(T(x) for x in (lr, b1, b2, eps, bc1, bc2)))
