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


def _sgd(G, rows, scale, w, lr):
    for i in prange(w.shape[0]):
        s = 0.0
        for r in rows:
            s += G[r, i]
        w[i] -= lr * (s * scale)


def _momentum(G, rows, scale, w, v, lr, mu):
    for i in prange(w.shape[0]):
        s = 0.0
        for r in rows:
            s += G[r, i]
        vi = mu * v[i] + s * scale
        v[i] = vi
        w[i] -= lr * vi


def _nesterov(G, rows, scale, w, v, lr, mu):
    for i in prange(w.shape[0]):
        s = 0.0
        for r in rows:
            s += G[r, i]
        g = s * scale
        vi = mu * v[i] + g
        v[i] = vi
        w[i] -= lr * (g + mu * vi)


def _adagrad(G, rows, scale, w, h, lr, eps):
    for i in prange(w.shape[0]):
        s = 0.0
        for r in rows:
            s += G[r, i]
        g = s * scale
        hi = h[i] + g * g
        h[i] = hi
        w[i] -= lr * g / (np.sqrt(hi) + eps)


def _adam(G, rows, scale, w, m, v, lr, b1, b2, eps, bc1, bc2):
    # bc1 = 1/(1-b1^t), bc2 = 1/(1-b2^t): bias corrections computed on the host per step
    for i in prange(w.shape[0]):
        s = 0.0
        for r in rows:
            s += G[r, i]
        g = s * scale
        mi = b1 * m[i] + (1.0 - b1) * g
        vi = b2 * v[i] + (1.0 - b2) * g * g
        m[i] = mi
        v[i] = vi
        w[i] -= lr * (mi * bc1) / (np.sqrt(vi * bc2) + eps)


def _aggregate(G, rows, scale, out):
    for i in prange(out.shape[0]):
        s = 0.0
        for r in rows:
            s += G[r, i]
        out[i] = s * scale


def _all_finite(x):
    bad = 0
    for i in prange(x.shape[0]):
        if not np.isfinite(x[i]):
            bad += 1
    return bad == 0


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
all_finite, all_finite_serial = _build(_all_finite)

UPDATES = {
    "sgd": (sgd, sgd_serial),
    "momentum": (momentum, momentum_serial),
    "nesterov": (nesterov, nesterov_serial),
    "adagrad": (adagrad, adagrad_serial),
    "adam": (adam, adam_serial),
}
