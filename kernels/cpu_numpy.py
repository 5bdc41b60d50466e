"""numpy twins of :mod:`gpups.kernels.cpu`, used when numba cannot be imported (for example a
numpy release newer than the installed numba supports). Same signatures and results; slower."""
from __future__ import annotations

import numpy as np


def _mean(G, rows, bad, scale):
    good = [int(r) for r in rows if bad[int(r)] == 0]
    if not good:
        return None
    g = G[good[0]].copy()
    for r in good[1:]:
        g += G[r]
    g *= w_type(G)(scale * len(rows) / len(good))
    return g


def w_type(a):
    return a.dtype.type


def sgd(G, rows, bad, scale, w, lr):
    g = _mean(G, rows, bad, scale)
    if g is not None:
        w -= lr * g


def momentum(G, rows, bad, scale, w, v, lr, mu):
    g = _mean(G, rows, bad, scale)
    if g is not None:
        v *= mu
        v += g
        w -= lr * v


def nesterov(G, rows, bad, scale, w, v, lr, mu):
    g = _mean(G, rows, bad, scale)
    if g is not None:
        v *= mu
        v += g
        w -= lr * (g + mu * v)


def adagrad(G, rows, bad, scale, w, h, lr, eps):
    g = _mean(G, rows, bad, scale)
    if g is not None:
        h += g * g
        w -= lr * g / (np.sqrt(h) + eps)


def adam(G, rows, bad, scale, w, m, v, lr, b1, b2, eps, bc1, bc2):
    g = _mean(G, rows, bad, scale)
    if g is not None:
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        w -= lr * (m * bc1) / (np.sqrt(v * bc2) + eps)


def aggregate(G, rows, bad, scale, out):
    g = _mean(G, rows, bad, scale)
    out[...] = 0 if g is None else g


def flag_nonfinite(x, bad, j, stamp):
    if not np.isfinite(x).all():
        bad[0, j] = stamp[0]
        bad[1, j] += 1
        if bad[2, j] == 0:
            bad[2, j] = stamp[0]


def stamp_nonfinite(x, bad, j, stamp):
    if bad[2, j] == 0 and not np.isfinite(x).all():
        bad[2, j] = stamp[0]


def restore_if_flagged(dst, src, bad, j):
    if bad[0, j] != 0:
        dst[...] = src


def copy(dst, src):
    dst[...] = src


aggregate_serial, flag_nonfinite_serial = aggregate, flag_nonfinite
FUSED_PULL = False
PARALLEL_MIN = 0
UPDATES = {name: (f, f) for name, f in
           [("sgd", sgd), ("momentum", momentum), ("nesterov", nesterov), ("adagrad", adagrad), ("adam", adam)]}
