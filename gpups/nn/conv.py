"""Convolution and pooling over channels-last images (H, W, C).

``Conv2D`` is im2col + one GEMM (+ the fused bias and activation); stride 1 with zero padding
runs the numba / CUDA im2col kernels, other strides the array-expression twin. ``MaxPool2D(2)``
runs the fused 2x2 kernels; other pool sizes and ``AvgPool2D`` use array expressions.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .layers import Layer, Shape, Spec, Weighted, _act


class ChannelsLast(Layer):
    """(C, H, W) rows (or their flat form) to the network's (H, W, C) layout, once, at the input."""

    def __init__(self, chw: Shape):
        super().__init__()
        self.chw = tuple(int(d) for d in chw)

    def output(self, in_shape: Shape) -> Shape:
        C, H, W = self.chw
        return (H, W, C)

    def buffers(self, n: int) -> dict[str, Shape]:
        C, H, W = self.chw
        out: dict[str, Shape] = {self.n("x4"): (n, H, W, C)} if C > 1 else {}
        if self.need_dx:
            out[self.n("dx")] = (n, C, H, W)
        return out

    def forward(self, p, x, ws, ops, ctx):
        n = x.shape[0]
        C, H, W = self.chw
        x = x.reshape(n, C, H, W)
        if C == 1:
            return x.reshape(n, H, W, 1)
        x4 = ws[self.n("x4")]
        x4[...] = x.transpose(0, 2, 3, 1)
        return x4

    def backward(self, p, x, y, dy, ws, g, ops, ctx):
        if not self.need_dx:
            return None
        dx = ws[self.n("dx")]
        dx[...] = dy.transpose(0, 3, 1, 2)
        return dx.reshape(x.shape)


class Conv2D(Weighted):
    """``filters`` kernels of ``kernel`` x ``kernel`` over (H, W, C) inputs, ``stride``,
    ``padding`` ("same" for odd kernels at stride 1, or a number of zero rows/columns), then the
    activation. Parameters: ``W`` (k, k, C, filters), ``b`` (filters,)."""

    def __init__(self, filters: int, kernel: int, stride: int = 1, padding: int | str = "same",
                 activation: str | None = None, names: tuple[str, str] | None = None):
        super().__init__()
        self.filters, self.k, self.stride = int(filters), int(kernel), int(stride)
        if self.filters < 1 or self.k < 1 or self.stride < 1:
            raise ValueError(f"Conv2D(filters={filters!r}, kernel={kernel!r}, stride={stride!r}) is not allowed: "
                             "expected positive integers")
        if padding == "same":
            if self.k % 2 != 1:
                raise ValueError(f"padding='same' needs an odd kernel; got kernel={kernel!r}")
            padding = self.k // 2
        if not isinstance(padding, (int, np.integer)) or padding < 0:
            raise ValueError(f"padding={padding!r} is not allowed: expected 'same' or an integer >= 0")
        self.pad = int(padding)
        self.activation, self.act, self.names = activation, _act(activation), names
        if self.stride != 1:
            self.graph_safe = False

    def output(self, in_shape: Shape) -> Shape:
        if len(in_shape) != 3:
            raise ValueError(f"Conv2D needs image rows (H, W, C); got rows of shape {in_shape}")
        H, W, _ = in_shape
        Ho = (H + 2 * self.pad - self.k) // self.stride + 1
        Wo = (W + 2 * self.pad - self.k) // self.stride + 1
        if Ho < 1 or Wo < 1:
            raise ValueError(f"Conv2D kernel {self.k} does not fit rows of shape {in_shape} (padding {self.pad})")
        return (Ho, Wo, self.filters)

    def specs(self) -> dict[str, Spec]:
        C = self.in_shape[2]
        return {self.w: Spec((self.k, self.k, C, self.filters)), self.b: Spec((self.filters,), "zeros", decay=False)}

    def buffers(self, n: int) -> dict[str, Shape]:
        Ho, Wo, F = self.out_shape
        kk = self.k * self.k * self.in_shape[2]
        out: dict[str, Shape] = {self.n("cols"): (n * Ho * Wo, kk), self.n("a"): (n * Ho * Wo, F)}
        if self.need_dx:
            out[self.n("dcols")] = (n * Ho * Wo, kk)
            out[self.n("dx")] = (n, *self.in_shape)
        return out

    def forward(self, p, x, ws, ops, ctx):
        n = x.shape[0]
        cols, a = ws[self.n("cols")], ws[self.n("a")]
        if self.stride == 1:
            ops.im2col(x, self.k, self.k, self.pad, cols)
        else:
            im2col(ctx.xp, x, self.k, self.stride, self.pad, cols)
        ops.gemm(cols, p[self.w].reshape(-1, self.filters), a)
        ops.bias_act(a, p[self.b], self.act)
        return a.reshape(n, *self.out_shape)

    def backward(self, p, x, y, dy, ws, g, ops, ctx):
        da = dy.reshape(-1, self.filters)
        ops.act_back_colsum(da, y.reshape(-1, self.filters), g[self.b], self.act)
        ops.gemm(ws[self.n("cols")].T, da, g[self.w].reshape(-1, self.filters))
        if not self.need_dx:
            return None
        dcols, dx = ws[self.n("dcols")], ws[self.n("dx")]
        ops.gemm(da, p[self.w].reshape(-1, self.filters).T, dcols)
        if self.stride == 1:
            ops.col2im(dcols, self.k, self.k, self.pad, dx)
        else:
            col2im(ctx.xp, dcols, self.k, self.stride, self.pad, dx)
        return dx

    def __repr__(self) -> str:
        return f"Conv2D({self.filters}, {self.k}, stride={self.stride}, padding={self.pad}, activation={self.activation!r})"


def im2col(xp: Any, x: Any, k: int, stride: int, pad: int, cols: Any) -> None:
    """x (n, H, W, C) -> cols (n*Ho*Wo, k*k*C) for any stride (array expressions)."""
    n, H, W, C = x.shape
    Ho, Wo = (H + 2 * pad - k) // stride + 1, (W + 2 * pad - k) // stride + 1
    xpad = xp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    c6 = cols.reshape(n, Ho, Wo, k, k, C)
    for ky in range(k):
        for kx in range(k):
            c6[:, :, :, ky, kx, :] = xpad[:, ky:ky + stride * Ho:stride, kx:kx + stride * Wo:stride, :]


def col2im(xp: Any, cols: Any, k: int, stride: int, pad: int, dx: Any) -> None:
    """The adjoint of :func:`im2col`."""
    n, H, W, C = dx.shape
    Ho, Wo = (H + 2 * pad - k) // stride + 1, (W + 2 * pad - k) // stride + 1
    big = xp.zeros((n, H + 2 * pad, W + 2 * pad, C), dx.dtype)
    c6 = cols.reshape(n, Ho, Wo, k, k, C)
    for ky in range(k):
        for kx in range(k):
            big[:, ky:ky + stride * Ho:stride, kx:kx + stride * Wo:stride, :] += c6[:, :, :, ky, kx, :]
    dx[...] = big[:, pad:pad + H, pad:pad + W, :]


class MaxPool2D(Layer):
    """The maximum of each ``pool`` x ``pool`` window, stride ``pool`` (H and W divisible by it)."""

    def __init__(self, pool: int = 2):
        super().__init__()
        self.pool = int(pool)
        if self.pool != 2:
            self.graph_safe = False

    def output(self, in_shape: Shape) -> Shape:
        H, W, C = _image(in_shape, self.pool, "MaxPool2D")
        return (H // self.pool, W // self.pool, C)

    def buffers(self, n: int) -> dict[str, Shape]:
        out: dict[str, Shape] = {self.n("y"): (n, *self.out_shape), self.n("arg"): (n, *self.out_shape)}
        if self.need_dx:
            out[self.n("dx")] = (n, *self.in_shape)
        return out

    def workspace_dtypes(self) -> dict[str, Any]:
        return {self.n("arg"): np.int64}

    def forward(self, p, x, ws, ops, ctx):
        y, arg = ws[self.n("y")], ws[self.n("arg")]
        if self.pool == 2:
            ops.maxpool2(x, y, arg)
        else:
            xp, n, q = ctx.xp, x.shape[0], self.pool
            H, W, C = self.in_shape
            win = x.reshape(n, H // q, q, W // q, q, C).transpose(0, 1, 3, 2, 4, 5).reshape(n, H // q, W // q, q * q, C)
            k = win.argmax(axis=3)
            y[...] = win.max(axis=3)
            oy = xp.arange(H // q)[None, :, None, None]
            ox = xp.arange(W // q)[None, None, :, None]
            c = xp.arange(C)[None, None, None, :]
            arg[...] = ((q * oy + k // q) * W + q * ox + k % q) * C + c
        return y

    def backward(self, p, x, y, dy, ws, g, ops, ctx):
        if not self.need_dx:
            return None
        dx = ws[self.n("dx")]
        ops.maxpool2_back(dy.reshape(y.shape), ws[self.n("arg")], dx)  # (any pool: one max per pixel)
        return dx

    def __repr__(self) -> str:
        return f"MaxPool2D({self.pool})"


class AvgPool2D(Layer):
    """The mean of each ``pool`` x ``pool`` window, stride ``pool``."""

    graph_safe = False  # (array expressions)

    def __init__(self, pool: int = 2):
        super().__init__()
        self.pool = int(pool)

    def output(self, in_shape: Shape) -> Shape:
        H, W, C = _image(in_shape, self.pool, "AvgPool2D")
        return (H // self.pool, W // self.pool, C)

    def buffers(self, n: int) -> dict[str, Shape]:
        out: dict[str, Shape] = {self.n("y"): (n, *self.out_shape)}
        if self.need_dx:
            out[self.n("dx")] = (n, *self.in_shape)
        return out

    def forward(self, p, x, ws, ops, ctx):
        n, q = x.shape[0], self.pool
        H, W, C = self.in_shape
        y = ws[self.n("y")]
        x.reshape(n, H // q, q, W // q, q, C).mean(axis=(2, 4), out=y)
        return y

    def backward(self, p, x, y, dy, ws, g, ops, ctx):
        if not self.need_dx:
            return None
        n, q = x.shape[0], self.pool
        H, W, C = self.in_shape
        dx = ws[self.n("dx")]
        dx.reshape(n, H // q, q, W // q, q, C)[...] = dy.reshape(n, H // q, 1, W // q, 1, C) / (q * q)
        return dx

    def __repr__(self) -> str:
        return f"AvgPool2D({self.pool})"


def _image(shape: Shape, pool: int, what: str) -> Shape:
    if len(shape) != 3 or shape[0] % pool or shape[1] % pool:
        raise ValueError(f"{what}({pool}) needs image rows (H, W, C) with H and W divisible by {pool}; "
                         f"got {shape}")
    return shape

