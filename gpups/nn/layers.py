"""Layers: each owns its parameters' shapes and initialisation, its workspace buffers, a forward
and a backward pass written with the device's ops (numba kernels on the CPU, CUDA kernels on a
GPU, array expressions where no kernel exists). Nothing is allocated per step by a layer whose
``graph_safe`` is True; those are what a CUDA graph may capture.

Shapes are per example (no batch dimension). Images are channels-last inside the network:
(H, W, C); a :class:`~gpups.nn.Sequential` over (C, H, W) rows converts once at its input.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Iterator

import numpy as np

from ..kernels import ACT_CODES, IDENTITY

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Spec:
    """A parameter: its shape, how it starts, and whether L2 (``hyperparams['reg']``) applies."""

    shape: Shape
    init: str = "he"      # he (normal, sqrt(2 / fan_in)), zeros, ones, normal (std 1 / sqrt(last dim))
    decay: bool = True


class Layer:
    """Base of every layer. ``build`` is called once by the enclosing model, with the input
    shape and the prefix of its names; then ``specs`` and ``buffers`` name what it needs."""

    graph_safe = True  # allocates nothing once warm; only launches work on the current stream

    def __init__(self) -> None:
        self.prefix = ""
        self.in_shape: Shape = ()
        self.out_shape: Shape = ()
        self.need_dx = True  # False for the first layer: nobody reads the input's gradient

    def build(self, in_shape: Shape, prefix: str) -> Shape:
        self.in_shape, self.prefix = tuple(int(d) for d in in_shape), prefix
        self.out_shape = self.output(self.in_shape)
        return self.out_shape

    def output(self, in_shape: Shape) -> Shape:
        return in_shape

    def specs(self) -> dict[str, Spec]:
        return {}

    def buffers(self, n: int) -> dict[str, Shape]:
        return {}

    def forward(self, p: dict[str, Any], x: Any, ws: dict[str, Any], ops: Any, ctx: SimpleNamespace) -> Any:
        raise NotImplementedError

    def backward(self, p: dict[str, Any], x: Any, y: Any, dy: Any, ws: dict[str, Any], g: dict[str, Any],
                 ops: Any, ctx: SimpleNamespace) -> Any:
        """The gradients of the layer's parameters into ``g``; returns the input's gradient
        (None when ``need_dx`` is False). ``dy`` may be overwritten."""
        raise NotImplementedError

    def walk(self) -> Iterator["Layer"]:
        yield self

    def n(self, name: str) -> str:
        """A name of this layer's, prefixed."""
        return self.prefix + name

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Weighted(Layer):
    """A layer with a weight ``W`` and a bias ``b``, renamed by ``names`` (the built-ins' ``W1``)."""

    names: tuple[str, str] | None = None

    @property
    def w(self) -> str:
        return self.names[0] if self.names else self.n("W")

    @property
    def b(self) -> str:
        return self.names[1] if self.names else self.n("b")


def _act(activation: str | None) -> int:
    if activation is None:
        return IDENTITY
    if activation not in ACT_CODES or activation == "identity":
        allowed = [a for a in ACT_CODES if a != "identity"]
        raise ValueError(f"activation={activation!r} is not allowed: expected one of {allowed} or None")
    return ACT_CODES[activation]


def _rows(a: Any) -> Any:
    return a.reshape(a.shape[0], -1)


class Dense(Weighted):
    """``x @ W + b`` then the activation (``relu``, ``tanh``, ``sigmoid`` or None), fused: one
    GEMM and one bias+activation pass forward, one activation-backward+bias-gradient pass and
    two GEMMs back. ``names`` renames the parameters (the built-in MLP's ``W1``, ``b1``)."""

    def __init__(self, units: int, activation: str | None = None, bias: bool = True,
                 names: tuple[str, str] | None = None):
        super().__init__()
        if int(units) < 1:
            raise ValueError(f"units={units!r} is not allowed: expected a positive integer")
        self.units, self.activation, self.bias = int(units), activation, bias
        self.act = _act(activation)
        self.names = names
        self.fused_bias = False  # the loss adds this bias (set by Sequential for the last layer)

    def output(self, in_shape: Shape) -> Shape:
        return (self.units,)

    def specs(self) -> dict[str, Spec]:
        d = int(np.prod(self.in_shape))
        out = {self.w: Spec((d, self.units))}
        if self.bias:
            out[self.b] = Spec((self.units,), "zeros", decay=False)
        return out

    def buffers(self, n: int) -> dict[str, Shape]:
        out: dict[str, Shape] = {self.n("z"): (n, self.units)}
        if self.need_dx:
            out[self.n("dx")] = (n, int(np.prod(self.in_shape)))
        if not self.bias and self.act != IDENTITY:
            out[self.n("zero")] = (self.units,)
        return out

    def forward(self, p, x, ws, ops, ctx):
        z = ws[self.n("z")]
        ops.gemm(_rows(x), p[self.w], z)
        if self.bias and not self.fused_bias:
            ops.bias_act(z, p[self.b], self.act)
        elif not self.bias and self.act != IDENTITY:
            zero = ws[self.n("zero")]
            zero.fill(0)
            ops.bias_act(z, zero, self.act)
        return z

    def backward(self, p, x, y, dy, ws, g, ops, ctx):
        if self.bias and not self.fused_bias:
            ops.act_back_colsum(dy, y, g[self.b], self.act)
        elif not self.bias and self.act != IDENTITY:
            ops.act_back_colsum(dy, y, ws[self.n("zero")], self.act)
        ops.gemm(_rows(x).T, dy, g[self.w])
        if not self.need_dx:
            return None
        dx = ws[self.n("dx")]
        ops.gemm(dy, p[self.w].T, dx)
        return dx.reshape(x.shape)

    def __repr__(self) -> str:
        return f"Dense({self.units}, activation={self.activation!r})"


class Activation(Layer):
    """An activation on its own (after a sum or a concatenation, say): ``relu``, ``tanh``,
    ``sigmoid`` (the fused kernels), ``gelu`` (tanh form; array expressions)."""

    def __init__(self, activation: str):
        super().__init__()
        if activation == "gelu":
            self.act = -1
            self.graph_safe = False  # (its array expressions allocate)
        else:
            self.act = _act(activation)
        self.activation = activation

    def buffers(self, n: int) -> dict[str, Shape]:
        m = int(np.prod(self.in_shape))
        out: dict[str, Shape] = {self.n("y"): (n, m), self.n("zero"): (m,)}
        if self.act == -1:
            out[self.n("x")] = (n, m)  # gelu's backward needs its input
        return out

    def forward(self, p, x, ws, ops, ctx):
        y = ws[self.n("y")]
        xr = _rows(x)
        if self.act == -1:
            ws[self.n("x")][...] = xr
            _gelu(ctx.xp, xr, y)
        else:
            y[...] = xr
            zero = ws[self.n("zero")]
            zero.fill(0)
            ops.bias_act(y, zero, self.act)
        return y.reshape(x.shape)

    def backward(self, p, x, y, dy, ws, g, ops, ctx):
        d = _rows(dy)
        if self.act == -1:
            d *= _gelu_grad(ctx.xp, ws[self.n("x")])
        else:
            ops.act_back_colsum(d, _rows(y), ws[self.n("zero")], self.act)
        return d.reshape(x.shape)

    def __repr__(self) -> str:
        return f"Activation({self.activation!r})"


def ReLU() -> Activation:
    return Activation("relu")


def Tanh() -> Activation:
    return Activation("tanh")


def Sigmoid() -> Activation:
    return Activation("sigmoid")


def GELU() -> Activation:
    return Activation("gelu")


_GELU_C = math.sqrt(2.0 / math.pi)


def _gelu(xp: Any, x: Any, out: Any) -> None:
    out[...] = 0.5 * x * (1.0 + xp.tanh(_GELU_C * (x + 0.044715 * x ** 3)))


def _gelu_grad(xp: Any, x: Any) -> Any:
    t = xp.tanh(_GELU_C * (x + 0.044715 * x ** 3))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _GELU_C * (1.0 + 3 * 0.044715 * x ** 2)


class Flatten(Layer):
    """Rows of any shape as flat vectors (a view: nothing is copied)."""

    def output(self, in_shape: Shape) -> Shape:
        return (int(np.prod(in_shape)),)

    def forward(self, p, x, ws, ops, ctx):
        return _rows(x)

    def backward(self, p, x, y, dy, ws, g, ops, ctx):
        return dy.reshape(x.shape) if self.need_dx else None


class Dropout(Layer):
    """Zeroes each element with probability ``rate`` in training (scaling the rest by
    1/(1-rate)); the identity in evaluation. The mask is a hash of the layer's ``seed``, the
    worker's step count and the element's index: reproducible from run to run (workers at the
    same step draw the same pattern over their different rows)."""

    graph_safe = False  # (the mask is drawn with array expressions)

    def __init__(self, rate: float, seed: int = 0):
        super().__init__()
        if not 0 <= float(rate) < 1:
            raise ValueError(f"rate={rate!r} is not allowed: expected a number in [0, 1)")
        self.rate, self.seed = float(rate), int(seed)

    def buffers(self, n: int) -> dict[str, Shape]:
        return {self.n("mask"): (n, int(np.prod(self.in_shape))), self.n("y"): (n, int(np.prod(self.in_shape)))}

    def mask(self, xp: Any, shape: tuple[int, ...], step: int) -> Any:
        """Keep-mask scaled by 1/(1-rate), for one step (splitmix64 of seed, step, index)."""
        idx = xp.arange(int(np.prod(shape)), dtype=xp.uint64)
        z = idx + xp.uint64((self.seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9) % 2**64)
        z = (z ^ (z >> xp.uint64(30))) * xp.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> xp.uint64(27))) * xp.uint64(0x94D049BB133111EB)
        z = z ^ (z >> xp.uint64(31))
        u = (z >> xp.uint64(11)).astype(xp.float64) / float(2**53)
        return ((u >= self.rate) / (1.0 - self.rate)).reshape(shape)

    def forward(self, p, x, ws, ops, ctx):
        if not ctx.train or self.rate == 0:
            return x
        m, y = ws[self.n("mask")], ws[self.n("y")]
        m[...] = self.mask(ctx.xp, m.shape, ctx.step)
        ctx.xp.multiply(_rows(x), m, out=y)
        return y.reshape(x.shape)

    def backward(self, p, x, y, dy, ws, g, ops, ctx):
        if not ctx.train or self.rate == 0:
            return dy
        d = _rows(dy)
        d *= ws[self.n("mask")]
        return d.reshape(x.shape)

    def __repr__(self) -> str:
        return f"Dropout({self.rate})"


class LayerNorm(Layer):
    """Normalises each row over its last axis to zero mean and unit variance, then scales and
    shifts (``gamma``, ``beta``: no L2)."""

    graph_safe = False  # (reductions with array expressions)

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = float(eps)

    def specs(self) -> dict[str, Spec]:
        d = self.in_shape[-1]
        return {self.n("gamma"): Spec((d,), "ones", decay=False), self.n("beta"): Spec((d,), "zeros", decay=False)}

    def buffers(self, n: int) -> dict[str, Shape]:
        rows = n * int(np.prod(self.in_shape[:-1]))
        d = self.in_shape[-1]
        return {self.n("xhat"): (rows, d), self.n("rstd"): (rows, 1), self.n("y"): (rows, d),
                self.n("dx"): (rows, d)}

    def forward(self, p, x, ws, ops, ctx):
        d = self.in_shape[-1]
        x2 = x.reshape(-1, d)
        xhat, rstd, y = ws[self.n("xhat")], ws[self.n("rstd")], ws[self.n("y")]
        mean = x2.mean(axis=1, keepdims=True)
        xp = ctx.xp
        xp.subtract(x2, mean, out=xhat)
        var = (xhat * xhat).mean(axis=1, keepdims=True)
        rstd[...] = 1.0 / xp.sqrt(var + self.eps)
        xhat *= rstd
        xp.multiply(xhat, p[self.n("gamma")], out=y)
        y += p[self.n("beta")]
        return y.reshape(x.shape)

    def backward(self, p, x, y, dy, ws, g, ops, ctx):
        d = self.in_shape[-1]
        dy2 = dy.reshape(-1, d)
        xhat, rstd = ws[self.n("xhat")], ws[self.n("rstd")]
        g[self.n("gamma")][...] = (dy2 * xhat).sum(axis=0)
        g[self.n("beta")][...] = dy2.sum(axis=0)
        dxhat = dy2 * p[self.n("gamma")]
        dx = ws[self.n("dx")]
        dx[...] = rstd * (dxhat - dxhat.mean(axis=1, keepdims=True)
                          - xhat * (dxhat * xhat).mean(axis=1, keepdims=True))
        return dx.reshape(x.shape)

    def __repr__(self) -> str:
        return f"LayerNorm(eps={self.eps})"


class Embedding(Layer):
    """Rows of a table, looked up by integer ids: input (m,) ids per example (given as the
    features, in any numeric dtype), output (m * dim,). The gradient is a dense scatter-add into
    the whole table (the row-sparse form comes with sparse tables)."""

    graph_safe = False  # (scatter-add with array expressions)

    def __init__(self, rows: int, dim: int, names: str | None = None):
        super().__init__()
        self.rows, self.dim, self.names = int(rows), int(dim), names
        self.need_dx = False

    @property
    def e(self) -> str:
        return self.names or self.n("E")

    def output(self, in_shape: Shape) -> Shape:
        return (int(np.prod(in_shape)) * self.dim,)

    def specs(self) -> dict[str, Spec]:
        return {self.e: Spec((self.rows, self.dim), "normal")}

    def buffers(self, n: int) -> dict[str, Shape]:
        return {self.n("y"): (n, self.out_shape[0])}

    def ids(self, x: Any, xp: Any) -> Any:
        return x.reshape(-1).astype(xp.int64)

    def forward(self, p, x, ws, ops, ctx):
        y = ws[self.n("y")]
        ctx.xp.take(p[self.e], self.ids(x, ctx.xp), axis=0, out=y.reshape(-1, self.dim))
        return y

    def backward(self, p, x, y, dy, ws, g, ops, ctx):
        ge = g[self.e]
        ge[...] = 0
        xp = ctx.xp
        ids, vals = self.ids(x, xp), dy.reshape(-1, self.dim)
        if xp is np:
            np.add.at(ge, ids, vals)
        else:
            import cupyx

            cupyx.scatter_add(ge, ids, vals)
        return None

    def __repr__(self) -> str:
        return f"Embedding({self.rows}, {self.dim})"
