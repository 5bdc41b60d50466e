"""numba CPU kernels: fused aggregate + optimizer update over flat parameter buffers.

Each kernel exists twice: ``parallel=True`` for the server (called from the one scheduler
thread) and a serial twin (``<name>_serial``) for worker threads, which may run concurrently;
numba's default workqueue threading layer must not be entered from two threads at once.
Both are ``nogil`` so that worker threads run truly in parallel.
"""
from __future__ import annotations

import os
import types

# Idle OpenMP threads must sleep, not spin: on a small CPU the worker threads need those cores
# (spinning made BSP 6x slower on 2 cores). Read by libgomp when numba first starts it.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import numpy as np
from numba import njit, prange

CHUNK = 4096  # elements per parallel task: the summed gradient of a chunk stays in L1


@njit(nogil=True, cache=True, inline="always")
def _good_scale(rows, bad, scale):
    """Rows whose worker flagged a non-finite push are skipped; the others' mean is kept
    (scale * rows / good rows). 0 when no row is good: the kernel then changes nothing."""
    good = 0
    for t in range(rows.shape[0]):
        if bad[rows[t]] == 0:
            good += 1
    return scale * rows.shape[0] / good if good else 0.0


@njit(nogil=True, cache=True, inline="always")
def _gather(G, rows, bad, scale, lo, hi, acc):
    """acc[:hi-lo] = scale * sum(G[good rows, lo:hi]); element-wise loops, so they vectorise.
    (With one row and scale 1, the common k=1 case, it is a plain copy into L1.) Every loop in
    these kernels runs over slices indexed from 0: an index with an offset (``w[i]``, i from lo)
    keeps numba's negative-index wrap check in the loop, which stops LLVM vectorising it."""
    first = True
    L = hi - lo
    for t in range(rows.shape[0]):
        r = rows[t]
        if bad[r] != 0:
            continue
        src = G[r, lo:hi]
        if first:
            for i in range(L):
                acc[i] = src[i]
            first = False
        else:
            for i in range(L):
                acc[i] += src[i]
    if scale != 1:
        for i in range(L):
            acc[i] *= scale


def _sgd(G, rows, bad, scale, w, lr):
    n = w.shape[0]
    scale = _good_scale(rows, bad, scale)
    if scale == 0:
        return
    for c in prange((n + CHUNK - 1) // CHUNK):
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        g = np.empty(CHUNK, w.dtype)
        _gather(G, rows, bad, scale, lo, hi, g)
        w_ = w[lo:hi]
        for i in range(hi - lo):
            w_[i] -= lr * g[i]


def _momentum(G, rows, bad, scale, w, v, lr, mu):
    n = w.shape[0]
    scale = _good_scale(rows, bad, scale)
    if scale == 0:
        return
    for c in prange((n + CHUNK - 1) // CHUNK):
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        g = np.empty(CHUNK, w.dtype)
        _gather(G, rows, bad, scale, lo, hi, g)
        w_, v_ = w[lo:hi], v[lo:hi]
        for i in range(hi - lo):
            vi = mu * v_[i] + g[i]
            v_[i] = vi
            w_[i] -= lr * vi


def _nesterov(G, rows, bad, scale, w, v, lr, mu):
    n = w.shape[0]
    scale = _good_scale(rows, bad, scale)
    if scale == 0:
        return
    for c in prange((n + CHUNK - 1) // CHUNK):
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        g = np.empty(CHUNK, w.dtype)
        _gather(G, rows, bad, scale, lo, hi, g)
        w_, v_ = w[lo:hi], v[lo:hi]
        for i in range(hi - lo):
            gi = g[i]
            vi = mu * v_[i] + gi
            v_[i] = vi
            w_[i] -= lr * (gi + mu * vi)


def _adagrad(G, rows, bad, scale, w, h, lr, eps):
    n = w.shape[0]
    scale = _good_scale(rows, bad, scale)
    if scale == 0:
        return
    for c in prange((n + CHUNK - 1) // CHUNK):
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        g = np.empty(CHUNK, w.dtype)
        _gather(G, rows, bad, scale, lo, hi, g)
        w_, h_ = w[lo:hi], h[lo:hi]
        for i in range(hi - lo):
            gi = g[i]
            hi_ = h_[i] + gi * gi
            h_[i] = hi_
            w_[i] -= lr * gi / (np.sqrt(hi_) + eps)


def _adam(G, rows, bad, scale, w, m, v, lr, b1, b2, eps, bc1, bc2):
    # bc1 = 1/(1-b1^t), bc2 = 1/(1-b2^t): bias corrections computed on the host per step
    n = w.shape[0]
    one = w.dtype.type(1.0)
    scale = _good_scale(rows, bad, scale)
    if scale == 0:
        return
    for c in prange((n + CHUNK - 1) // CHUNK):
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        g = np.empty(CHUNK, w.dtype)
        _gather(G, rows, bad, scale, lo, hi, g)
        w_, m_, v_ = w[lo:hi], m[lo:hi], v[lo:hi]
        for i in range(hi - lo):
            gi = g[i]
            mi = b1 * m_[i] + (one - b1) * gi
            vi = b2 * v_[i] + (one - b2) * gi * gi
            m_[i] = mi
            v_[i] = vi
            w_[i] -= lr * (mi * bc1) / (np.sqrt(vi * bc2) + eps)


def _aggregate(G, rows, bad, scale, out):
    n = out.shape[0]
    scale = _good_scale(rows, bad, scale)
    if scale == 0:
        out[:] = 0
        return
    for c in prange((n + CHUNK - 1) // CHUNK):
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        _gather(G, rows, bad, scale, lo, hi, out[lo:hi])


def _flag_nonfinite(x, bad, j, stamp):
    """If x holds NaN or Inf: bad[0, j] = stamp (the server skips worker j's push), bad[1, j]
    counts such pushes, bad[2, j] keeps the first stamp (the batch reported)."""
    found = 0
    for i in prange(x.shape[0]):
        if not np.isfinite(x[i]):
            found += 1
    if found:
        bad[0, j] = stamp[0]
        bad[1, j] += 1
        if bad[2, j] == 0:
            bad[2, j] = stamp[0]


def _stamp_nonfinite(x, bad, j, stamp):
    """If x holds NaN or Inf and bad[2, j] is unset: bad[2, j] = stamp (the first bad batch of
    a multi-step interval; the push itself is flagged by flag_nonfinite at the interval's end)."""
    if bad[2, j] != 0:
        return
    for i in range(x.shape[0]):
        if not np.isfinite(x[i]):
            bad[2, j] = stamp[0]
            return


def _restore_if_flagged(dst, src, bad, j):
    """dst = src if worker j's push was flagged: a skipped push leaves the local state as it was."""
    if bad[0, j] != 0:
        for i in range(dst.shape[0]):
            dst[i] = src[i]


def _twin(f, suffix: str):
    g = types.FunctionType(f.__code__, f.__globals__, f.__name__ + suffix)
    g.__qualname__ = f.__qualname__ + suffix  # own numba cache entry
    return g


def _build(f):
    par = njit(parallel=True, nogil=True, cache=True)(f)
    ser = njit(nogil=True, cache=True)(_twin(f, "_serial"))
    return par, ser


sgd, sgd_serial = _build(_sgd)
momentum, momentum_serial = _build(_momentum)
nesterov, nesterov_serial = _build(_nesterov)
adagrad, adagrad_serial = _build(_adagrad)
adam, adam_serial = _build(_adam)
aggregate, aggregate_serial = _build(_aggregate)
_, flag_nonfinite_serial = _build(_flag_nonfinite)
# The check is one read of the payload: serial it runs at memory speed (0.10 ms for 670 K floats),
# the parallel twin lost more to waking threads than it gained (0.13 ms); and worker threads
# must not enter numba's parallel layer at once anyway.
flag_nonfinite = flag_nonfinite_serial
stamp_nonfinite = njit(nogil=True, cache=True)(_stamp_nonfinite)
restore_if_flagged = njit(nogil=True, cache=True)(_restore_if_flagged)

def copy(dst, src):
    dst[...] = src


FUSED_PULL = False  # a pull is a copy after the update

#: (parallel, serial) kernel per update rule (gpups.optim.RULES: its slots, then its scalars)
UPDATES = {
    "sgd": (sgd, sgd_serial),
    "momentum": (momentum, momentum_serial),
    "nesterov": (nesterov, nesterov_serial),
    "adagrad": (adagrad, adagrad_serial),
    "adam": (adam, adam_serial),
}
