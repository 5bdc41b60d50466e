"""numba CPU kernels for the built-in models' hot path: fused bias + activation, activation
backward fused with the bias gradient, softmax cross-entropy (loss, gradient and bias gradient in
one pass), and im2col / col2im / max-pool for the CNN in channels-last (NHWC) layout.

Activation codes: 0 relu, 1 tanh, 2 sigmoid, 3 identity. Every kernel exists as a parallel
version and a serial twin (``_serial``), like :mod:`gpups.kernels.cpu`; :func:`ops` picks one.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from . import IDENTITY, RELU, SIGMOID, TANH  # noqa: F401
from .cpu import _twin


def _bias_act(z, b, act):
    n, m = z.shape
    if act == RELU:
        for i in prange(n):
            for j in range(m):
                v = z[i, j] + b[j]
                z[i, j] = v if v > 0 else 0.0
    elif act == TANH:
        for i in prange(n):
            for j in range(m):
                z[i, j] = math.tanh(z[i, j] + b[j])
    elif act == SIGMOID:
        for i in prange(n):
            for j in range(m):
                z[i, j] = 1.0 / (1.0 + math.exp(-(z[i, j] + b[j])))
    else:
        for i in prange(n):
            for j in range(m):
                z[i, j] += b[j]


def _act_back_colsum(d, h, db, act):
    """d *= act'(h) (h = activation output), and db = column sums of d, in one pass: row blocks
    in parallel, each summing into its own row of partial sums (row order vectorises over j)."""
    n, m = d.shape
    nb = max(1, min(16, n // 64))
    part = np.zeros((nb, m), db.dtype)
    for blk in prange(nb):
        acc = part[blk]
        for i in range(blk * n // nb, (blk + 1) * n // nb):
            row, out = h[i], d[i]
            if act == RELU:
                for j in range(m):
                    v = out[j] if row[j] > 0 else 0.0
                    out[j] = v
                    acc[j] += v
            elif act == TANH:
                for j in range(m):
                    v = out[j] * (1.0 - row[j] * row[j])
                    out[j] = v
                    acc[j] += v
            elif act == SIGMOID:
                for j in range(m):
                    v = out[j] * row[j] * (1.0 - row[j])
                    out[j] = v
                    acc[j] += v
            else:
                for j in range(m):
                    acc[j] += out[j]
    for j in range(m):
        t = 0.0
        for blk in range(nb):
            t += part[blk, j]
        db[j] = t


@njit(nogil=True, cache=True)
def _check_labels(y, c):
    """Labels index rows of the logits: one out of [0, c) raises instead of reading or writing
    out of bounds (paramserv names the bad label before any work; this guards direct calls)."""
    for i in range(y.shape[0]):
        if y[i] < 0 or y[i] >= c:
            raise ValueError("softmax cross-entropy: a label is outside [0, classes)")


def _softmax_xent(z, b, y, dz, db):
    """Softmax cross-entropy of logits z + b against labels y: writes dz = (p - onehot) / n and
    db = column sums of dz; returns the mean loss."""
    n, c = z.shape
    _check_labels(y, c)
    losses = np.empty(n, np.float64)
    for i in prange(n):
        mx = -np.inf
        for j in range(c):
            v = z[i, j] + b[j]
            dz[i, j] = v
            if v > mx:
                mx = v
        s = 0.0
        for j in range(c):
            e = math.exp(dz[i, j] - mx)
            dz[i, j] = e
            s += e
        yi = y[i]
        losses[i] = math.log(s) + mx - (z[i, yi] + b[yi])
        inv = 1.0 / (s * n)
        for j in range(c):
            dz[i, j] *= inv
        dz[i, yi] -= 1.0 / n
    for j in range(c):
        db[j] = 0.0
    for i in range(n):
        for j in range(c):
            db[j] += dz[i, j]
    return losses.sum() / n


def _softmax_eval(z, b, y):
    """(sum of cross-entropy losses, number of correct argmax predictions) of logits z + b."""
    n, c = z.shape
    _check_labels(y, c)
    losses = np.empty(n, np.float64)
    hits = np.zeros(n, np.int64)
    for i in prange(n):
        mx, arg = -np.inf, 0
        for j in range(c):
            v = z[i, j] + b[j]
            if v > mx:
                mx, arg = v, j
        s = 0.0
        for j in range(c):
            s += math.exp(z[i, j] + b[j] - mx)
        losses[i] = math.log(s) + mx - (z[i, y[i]] + b[y[i]])
        hits[i] = 1 if arg == y[i] else 0
    return losses.sum(), hits.sum()


@njit(nogil=True, cache=True, inline="always")
def _span(ox, pad, kw, W):
    """Output column ox of a stride-1 window: its first input column x0 and the kernel columns
    [lo, hi) that fall inside the image (the rest read zero padding)."""
    x0 = ox - pad
    return x0, max(0, -x0), min(kw, W - x0)


def _im2col(x, kh, kw, pad, cols):
    """x (n, H, W, C) -> cols (n*Ho*Wo, kh*kw*C), stride 1, zero padding ``pad``. Each kernel row
    is one run of kw*C values: with C >= 8 copied as slices of x (they vectorise; indexing with
    offsets does not, numba's negative-index wrap is in the way), with fewer channels from a
    zero-padded copy of the image row (short slices cost more than they copy)."""
    n, H, W, C = x.shape
    Ho, Wo = H + 2 * pad - kh + 1, W + 2 * pad - kw + 1
    x3 = x.reshape(n, H, W * C)
    KC = kw * C
    if C >= 8:
        for q in prange(n * Ho):
            i, oy = q // Ho, q % Ho
            for ox in range(Wo):
                r = (i * Ho + oy) * Wo + ox
                x0, lo, hi = _span(ox, pad, kw, W)
                for ky in range(kh):
                    yy = oy + ky - pad
                    base = ky * KC
                    if yy < 0 or yy >= H:
                        cols[r, base:base + KC] = 0.0
                    else:
                        cols[r, base:base + lo * C] = 0.0
                        cols[r, base + lo * C:base + hi * C] = x3[i, yy, (x0 + lo) * C:(x0 + hi) * C]
                        cols[r, base + max(hi, lo) * C:base + KC] = 0.0
    else:
        for q in prange(n * Ho):
            i, oy = q // Ho, q % Ho
            row = np.zeros((W + 2 * pad + kw) * C, x.dtype)
            for ky in range(kh):
                yy = oy + ky - pad
                if 0 <= yy < H:
                    src, mid = x3[i, yy], row[pad * C:(pad + W) * C]
                    for t in range(W * C):
                        mid[t] = src[t]
                else:
                    row[:] = 0.0
                for ox in range(Wo):
                    dst = cols[(i * Ho + oy) * Wo + ox, ky * KC:(ky + 1) * KC]
                    run = row[ox * C:ox * C + KC]
                    for t in range(KC):
                        dst[t] = run[t]


def _col2im(cols, kh, kw, pad, dx):
    """Adjoint of im2col: dx (n, H, W, C) = sum of the column entries that read each pixel."""
    n, H, W, C = dx.shape
    Ho, Wo = H + 2 * pad - kh + 1, W + 2 * pad - kw + 1
    d3 = dx.reshape(n, H, W * C)
    KC = kw * C
    for i in prange(n):
        d3[i] = 0.0
        for oy in range(Ho):
            for ox in range(Wo):
                r = (i * Ho + oy) * Wo + ox
                x0, lo, hi = _span(ox, pad, kw, W)
                for ky in range(kh):
                    yy = oy + ky - pad
                    if 0 <= yy < H and hi > lo:
                        dst = d3[i, yy, (x0 + lo) * C:(x0 + hi) * C]
                        src = cols[r, ky * KC + lo * C:ky * KC + hi * C]
                        for t in range(dst.shape[0]):  # (from 0: no wrap check, vectorises)
                            dst[t] += src[t]


def _maxpool2(x, y, arg):
    """2x2 max-pool, stride 2: x (n, H, W, C) -> y (n, H/2, W/2, C); arg = flat index of the max."""
    n, H, W, C = x.shape
    Ho, Wo = H // 2, W // 2
    for q in prange(n * Ho):
        i, oy = q // Ho, q % Ho
        for ox in range(Wo):
            for c in range(C):
                best, where = -np.inf, 0
                for dy in range(2):
                    for dxx in range(2):
                        yy, xx = 2 * oy + dy, 2 * ox + dxx
                        v = x[i, yy, xx, c]
                        if v > best:
                            best, where = v, (yy * W + xx) * C + c
                y[i, oy, ox, c] = best
                arg[i, oy, ox, c] = where


def _maxpool2_back(dy, arg, dx):
    n, Ho, Wo, C = dy.shape
    H, W = dx.shape[1], dx.shape[2]
    for i in prange(n):
        flat = dx[i].reshape(H * W * C)
        flat[:] = 0.0
        for oy in range(Ho):
            for ox in range(Wo):
                for c in range(C):
                    flat[arg[i, oy, ox, c]] += dy[i, oy, ox, c]


_NAMES = ("bias_act", "act_back_colsum", "softmax_xent", "softmax_eval", "im2col", "col2im",
          "maxpool2", "maxpool2_back")


class _Ops:
    pass


parallel_ops, serial_ops = _Ops(), _Ops()
for _name in _NAMES:
    _f = globals()["_" + _name]
    setattr(parallel_ops, _name, njit(parallel=True, nogil=True, cache=True)(_f))
    setattr(serial_ops, _name, njit(nogil=True, cache=True)(_twin(_f, "_serial")))
