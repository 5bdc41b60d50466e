"""numpy twins of :mod:`gpups.kernels.cpu`, used when numba cannot be imported (for example a
numpy release newer than the installed numba supports). Same signatures and results; slower."""
from __future__ import annotations

import numpy as np

from ..optim import RULES


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


def _update(name):
    """The rule's update in numpy: the mean of the good rows, then its ``step`` (gpups.optim)."""
    step = RULES[name].step

    def update(G, rows, bad, scale, w, *slots_then_scalars, pull=None):
        g = _mean(G, rows, bad, scale)
        if g is not None:
            step(g, w, *slots_then_scalars)
        if pull is not None:
            pull[...] = w

    update.__name__ = name
    return update


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
UPDATES = {name: (_update(name),) * 2 for name in RULES}
