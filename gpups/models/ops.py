"""Layer operations of the built-in models, one interface per array module.

``ops_for(xp)`` returns the numba kernels (:mod:`gpups.kernels.cpu_nn`) for numpy, the CUDA
kernels for CuPy when they are available, else :class:`ArrayOps`: the same operations written
with array expressions, which also serve the tests as the reference.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..kernels import ACT_CODES, IDENTITY, RELU, SIGMOID, TANH, twin  # noqa: F401


class ArrayOps:
    """Reference implementations in array expressions (numpy or CuPy)."""

    def __init__(self, xp: Any):
        self.xp = xp

    def gemm(self, a, b, out):
        return self.xp.matmul(a, b, out=out)

    def bias_act(self, z, b, act):
        xp = self.xp
        z += b
        if act == RELU:
            xp.maximum(z, 0, out=z)
        elif act == TANH:
            xp.tanh(z, out=z)
        elif act == SIGMOID:
            z[...] = 1 / (1 + xp.exp(-z))

    def act_back_colsum(self, d, h, db, act):
        if act == RELU:
            d *= h > 0
        elif act == TANH:
            d *= 1 - h * h
        elif act == SIGMOID:
            d *= h * (1 - h)
        db[...] = d.sum(axis=0)

    def _check_labels(self, y, c):
        if y.size and (int(y.min()) < 0 or int(y.max()) >= c):
            raise ValueError("softmax cross-entropy: a label is outside [0, classes)")

    def softmax_xent(self, z, b, y, dz, db):
        xp = self.xp
        n = z.shape[0]
        self._check_labels(y, z.shape[1])
        v = z + b
        v -= v.max(axis=1, keepdims=True)
        e = xp.exp(v)
        s = e.sum(axis=1, keepdims=True)
        rows = xp.arange(n)
        loss = (xp.log(s[:, 0]) - v[rows, y]).mean()
        dz[...] = e / (s * n)
        dz[rows, y] -= 1.0 / n
        db[...] = dz.sum(axis=0)
        return loss

    def softmax_eval(self, z, b, y):
        xp = self.xp
        self._check_labels(y, z.shape[1])
        v = z + b
        v -= v.max(axis=1, keepdims=True)
        ls = xp.log(xp.exp(v).sum(axis=1)) - v[xp.arange(len(y)), y]
        return ls.sum(), (v.argmax(axis=1) == y).sum()

    def im2col(self, x, kh, kw, pad, cols):
        n, H, W, C = x.shape
        Ho, Wo = H + 2 * pad - kh + 1, W + 2 * pad - kw + 1
        xp_ = self.xp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        c4 = cols.reshape(n, Ho, Wo, kh, kw, C)
        for ky in range(kh):
            for kx in range(kw):
                c4[:, :, :, ky, kx, :] = xp_[:, ky:ky + Ho, kx:kx + Wo, :]

    def col2im(self, cols, kh, kw, pad, dx):
        n, H, W, C = dx.shape
        Ho, Wo = H + 2 * pad - kh + 1, W + 2 * pad - kw + 1
        big = self.xp.zeros((n, H + 2 * pad, W + 2 * pad, C), dx.dtype)
        c4 = cols.reshape(n, Ho, Wo, kh, kw, C)
        for ky in range(kh):
            for kx in range(kw):
                big[:, ky:ky + Ho, kx:kx + Wo, :] += c4[:, :, :, ky, kx, :]
        dx[...] = big[:, pad:pad + H, pad:pad + W, :]

    def maxpool2(self, x, y, arg):
        xp = self.xp
        n, H, W, C = x.shape
        win = x.reshape(n, H // 2, 2, W // 2, 2, C).transpose(0, 1, 3, 2, 4, 5).reshape(n, H // 2, W // 2, 4, C)
        k = win.argmax(axis=3)
        y[...] = win.max(axis=3)
        oy = xp.arange(H // 2)[None, :, None, None]
        ox = xp.arange(W // 2)[None, None, :, None]
        c = xp.arange(C)[None, None, None, :]
        arg[...] = ((2 * oy + k // 2) * W + 2 * ox + k % 2) * C + c

    def maxpool2_back(self, dy, arg, dx):
        xp = self.xp
        n = dx.shape[0]
        flat = dx.reshape(n, -1)
        flat[...] = 0
        rows = xp.arange(n)[:, None]
        # each input pixel is the max of at most one window: no collisions
        flat[rows, arg.reshape(n, -1)] += dy.reshape(n, -1)


class NumbaOps:
    """The numba kernels: parallel for large tensors on the main thread (a lone worker runs
    inline there and has the cores to itself), serial otherwise (small tensors, where waking
    OpenMP threads costs more than it saves, and worker threads, which run concurrently); the size
    is that of the largest array (im2col's output, not its input)."""

    @staticmethod
    def gemm(a: Any, b: Any, out: Any) -> Any:
        return np.matmul(a, b, out=out)

    def __getattr__(self, name: str) -> Any:
        from gpups.kernels import cpu_nn

        par, ser = getattr(cpu_nn.parallel_ops, name), getattr(cpu_nn.serial_ops, name)

        def call(*args: Any) -> Any:
            return twin(par, ser, max(a.size for a in args if hasattr(a, "size")))(*args)

        setattr(self, name, call)
        return call


_numba = NumbaOps()
_numpy_ops = ArrayOps(np)


def _numba_ok() -> bool:
    global _NUMBA
    if _NUMBA is None:
        try:
            import gpups.kernels.cpu_nn  # noqa: F401
            _NUMBA = True
        except ImportError:
            _NUMBA = False
    return _NUMBA


_NUMBA: bool | None = None


def ops_for(xp: Any) -> Any:
    if xp is np:
        return _numba if _numba_ok() else _numpy_ops
    try:
        from gpups.kernels import cuda_nn

        return cuda_nn.ops()
    except Exception:
        return ArrayOps(xp)
