"""numba CPU kernels for sparse embedding tables: deduplicate row gradients, and row-wise updates.

Every reduction runs in a fixed order (rows sorted stably, occurrences summed in the order they
came), never with atomics, so BSP with sparse tables is reproducible bitwise. The update kernels
do per element what the dense kernels of ``cpu.py`` do, in the same floating-point order: a
table trained with sparse gradients equals the same table trained densely (untouched rows get a
zero dense gradient, which changes nothing under sgd and adagrad).
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def segment_sum(rows, values, order):
    """(unique rows ascending, their summed values) of ``rows[order]`` (a stable sort's order):
    the occurrences of a row are summed in the order they appear."""
    m, dim = order.shape[0], values.shape[1]
    nu = 0
    for t in range(m):
        if t == 0 or rows[order[t]] != rows[order[t - 1]]:
            nu += 1
    u = np.empty(nu, np.int64)
    out = np.empty((nu, dim), values.dtype)
    i = -1
    for t in range(m):
        s = order[t]
        r = rows[s]
        if i < 0 or r != u[i]:
            i += 1
            u[i] = r
            for d in range(dim):
                out[i, d] = values[s, d]
        else:
            for d in range(dim):
                out[i, d] += values[s, d]
    return u, out


@njit(nogil=True, cache=True)
def gather(w, rows, out):
    for i in range(rows.shape[0]):
        r = rows[i]
        for d in range(w.shape[1]):
            out[i, d] = w[r, d]


@njit(nogil=True, cache=True)
def sgd(w, u, g, scale, lr):
    for i in range(u.shape[0]):
        r = u[i]
        for d in range(w.shape[1]):
            gi = g[i, d] * scale if scale != 1 else g[i, d]
            w[r, d] -= lr * gi


@njit(nogil=True, cache=True)
def adagrad(w, h, u, g, scale, lr, eps):
    for i in range(u.shape[0]):
        r = u[i]
        for d in range(w.shape[1]):
            gi = g[i, d] * scale if scale != 1 else g[i, d]
            hi = h[r, d] + gi * gi
            h[r, d] = hi
            w[r, d] -= lr * gi / (np.sqrt(hi) + eps)


@njit(nogil=True, cache=True)
def rowwise_adagrad(w, h, u, g, scale, lr, eps):
    """One accumulator per row: h[r] += mean over the row of g^2 (DLRM's and FBGEMM's choice:
    a table's state is rows x 1, not rows x dim)."""
    dim = w.shape[1]
    for i in range(u.shape[0]):
        r = u[i]
        s = 0.0
        for d in range(dim):
            gi = g[i, d] * scale if scale != 1 else g[i, d]
            s += gi * gi
        hr = h[r, 0] + s / dim
        h[r, 0] = hr
        step = lr / (np.sqrt(hr) + eps)
        for d in range(dim):
            gi = g[i, d] * scale if scale != 1 else g[i, d]
            w[r, d] -= step * gi


@njit(nogil=True, cache=True)
def lazy_adam(w, m, v, u, g, scale, lr, b1, b2, eps, bc1, bc2):
    """Adam on the touched rows only: untouched rows keep their moments (PyTorch's SparseAdam,
    TensorFlow's LazyAdam); bc1, bc2 are the bias corrections of the table's update count."""
    one = w.dtype.type(1.0)
    for i in range(u.shape[0]):
        r = u[i]
        for d in range(w.shape[1]):
            gi = g[i, d] * scale if scale != 1 else g[i, d]
            mi = b1 * m[r, d] + (one - b1) * gi
            vi = b2 * v[r, d] + (one - b2) * gi * gi
            m[r, d] = mi
            v[r, d] = vi
            w[r, d] -= lr * (mi * bc1) / (np.sqrt(vi * bc2) + eps)


def dedup(rows: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Repeated rows summed (in the order they came): (unique rows ascending, values)."""
    return segment_sum(rows, values, np.argsort(rows, kind="stable"))


@njit(nogil=True, cache=True)
def dot_interaction(b, Z, li, lj, h):
    """DLRM's interaction: h[:, :d] = b, h[:, d + p] = Z[:, li[p]] . Z[:, lj[p]] (Z: (n, f, d))."""
    n, _, d = Z.shape
    for i in range(n):
        for c in range(d):
            h[i, c] = b[i, c]
        for p in range(li.shape[0]):
            s = Z[i, li[p], 0] * Z[i, lj[p], 0]
            for c in range(1, d):
                s += Z[i, li[p], c] * Z[i, lj[p], c]
            h[i, d + p] = s


@njit(nogil=True, cache=True)
def dot_interaction_back(Z, dh, li, lj, dZ):
    """The interaction's backward: dZ[:, a] = sum over the pairs (a, c) of dh_p * Z[:, c]
    (both ends of each pair), dZ[:, 0] += dh[:, :d] (the bottom output's own column)."""
    n, f, d = Z.shape
    for i in range(n):
        for a in range(f):
            for c in range(d):
                dZ[i, a, c] = 0.0
        for c in range(d):
            dZ[i, 0, c] = dh[i, c]
        for p in range(li.shape[0]):
            g = dh[i, d + p]
            x, y = li[p], lj[p]
            for c in range(d):
                dZ[i, x, c] += g * Z[i, y, c]
                dZ[i, y, c] += g * Z[i, x, c]
