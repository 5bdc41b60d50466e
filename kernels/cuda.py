"""CUDA twins of :mod:`gpups.kernels.cpu`: the fused optimizer kernels of ``optim.cu``, loaded
with CuPy's ``RawModule`` and launched on the current stream, with the same signatures."""
from __future__ import annotations

import functools
import os
from typing import Any

import cupy as cp
import numpy as np

from ..optim import RULES

HERE = os.path.dirname(os.path.abspath(__file__))
THREADS = 256
NULL = np.uint64(0)  # a null device pointer argument


@functools.lru_cache(maxsize=None)
def module(name: str, device: int) -> cp.RawModule:
    with open(os.path.join(HERE, name + ".cu")) as f:
        return cp.RawModule(code=f.read(), options=("-std=c++14",))


_functions: dict[tuple, Any] = {}


def function(mod: str, name: str, dtype: Any) -> Any:
    key = (mod, name, dtype, cp.cuda.runtime.getDevice())
    f = _functions.get(key)
    if f is None:
        suffix = "f32" if np.dtype(dtype) == np.float32 else "f64"
        f = _functions[key] = module(mod, key[3]).get_function(f"{name}_{suffix}")
    return f


@functools.lru_cache(maxsize=None)
def _sms() -> int:
    return cp.cuda.Device().attributes["MultiProcessorCount"]


PER_THREAD = 4  # elements per thread at least: a small update (ASP's, 0.7 M parameters) then
# takes fewer SMs from the workers' kernels running beside it (A/B in benchmarks/gpu_check.py)


def blocks(n: int) -> int:
    """Blocks for a grid-stride loop over n elements: PER_THREAD elements per thread or more,
    at most 16 blocks per SM (enough to fill the device's memory bandwidth)."""
    return max(1, min(-(-int(n) // (THREADS * PER_THREAD)), _sms() * 16))


def _update(name: str) -> Any:
    nslots = len(RULES[name].slots)

    def launch(G: Any, rows: Any, bad: Any, scale: float, w: Any, *rest: Any, pull: Any = None) -> None:
        T = w.dtype.type
        state, hyper = rest[:nslots], rest[nslots:]
        n = w.shape[0]
        f = function("optim", name, w.dtype)
        f((blocks(n),), (THREADS,), (G, np.int64(G.strides[0] // G.itemsize), rows, np.int32(rows.shape[0]),
                                     bad, T(scale), NULL if pull is None else pull, w, *state, np.int64(n),
                                     *(T(h) for h in hyper)))

    launch.__name__ = name
    return launch


UPDATES = {name: (_update(name),) * 2 for name in RULES}  # (parallel, serial): one kernel serves both
FUSED_PULL = True  # the update kernels can write the new parameters to a puller's replica too


def aggregate(G: Any, rows: Any, bad: Any, scale: float, out: Any) -> None:
    n = out.shape[0]
    function("optim", "aggregate", out.dtype)(
        (blocks(n),), (THREADS,), (G, np.int64(G.strides[0] // G.itemsize), rows, np.int32(rows.shape[0]),
                                   bad, out.dtype.type(scale), NULL, out, np.int64(n)))


aggregate_serial = aggregate


def flag_nonfinite(x: Any, bad: Any, j: int, stamp: Any) -> None:
    n = x.shape[0]
    function("optim", "flag_nonfinite", x.dtype)(
        (blocks(n),), (THREADS,), (x, np.int64(n), bad, np.int32(bad.shape[1]), np.int32(j), stamp))


def stamp_nonfinite(x: Any, bad: Any, j: int, stamp: Any) -> None:
    n = x.shape[0]
    function("optim", "stamp_nonfinite", x.dtype)(
        (blocks(n),), (THREADS,), (x, np.int64(n), bad, np.int32(bad.shape[1]), np.int32(j), stamp))


def restore_if_flagged(dst: Any, src: Any, bad: Any, j: int) -> None:
    """dst[...] = src on the device if worker j's push is flagged (``bad[0, j]``): no host read."""
    n = dst.shape[0]
    function("optim", "restore_if_flagged", dst.dtype)(
        (blocks(n),), (THREADS,), (dst, src, np.int64(n), bad[0], np.int32(j)))


def copy(dst: Any, src: Any) -> None:
    """dst[...] = src for contiguous device arrays, on one GPU or across two (unified
    addressing): one async memcpy on the current stream."""
    cp.cuda.runtime.memcpyAsync(dst.data.ptr, src.data.ptr, src.nbytes,
                                cp.cuda.runtime.memcpyDefault, cp.cuda.get_current_stream().ptr)

