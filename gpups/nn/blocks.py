"""Layers made of layers: a chain, a residual block, parallel branches concatenated."""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from .layers import Layer, Shape, Spec


class Chain(Layer):
    """Layers one after the other (what :class:`~gpups.nn.Sequential` and the blocks hold)."""

    def __init__(self, layers: Sequence[Layer]):
        super().__init__()
        if not layers or not all(isinstance(layer, Layer) for layer in layers):
            raise ValueError(f"layers={list(layers)!r} is not allowed: expected a non-empty list of gpups.nn layers")
        self.layers = list(layers)

    @property
    def graph_safe(self) -> bool:  # type: ignore[override]
        return all(layer.graph_safe for layer in self.layers)

    def build(self, in_shape: Shape, prefix: str) -> Shape:
        self.in_shape, self.prefix = tuple(in_shape), prefix
        shape = self.in_shape
        trained_before = False  # does any layer before this one have parameters?
        for i, layer in enumerate(self.layers):
            # the input's gradient is needed only where something before it learns (the first
            # convolution of a network needs none: no col2im, no GEMM for it)
            layer.need_dx = self.need_dx or trained_before
            shape = layer.build(shape, f"{prefix}{i}.")
            trained_before = trained_before or bool(layer.specs())
        self.out_shape = shape
        return shape

    def specs(self) -> dict[str, Spec]:
        out: dict[str, Spec] = {}
        for layer in self.layers:
            out.update(layer.specs())
        return out

    def buffers(self, n: int) -> dict[str, Shape]:
        out: dict[str, Shape] = {}
        for layer in self.layers:
            out.update(layer.buffers(n))
        return out

    def forward(self, p, x, ws, ops, ctx):
        acts = [x]
        for layer in self.layers:
            acts.append(layer.forward(p, acts[-1], ws, ops, ctx))
        ctx.acts[id(self)] = acts
        return acts[-1]

    def backward(self, p, x, y, dy, ws, g, ops, ctx):
        acts = ctx.acts[id(self)]
        for i in range(len(self.layers) - 1, -1, -1):
            dy = self.layers[i].backward(p, acts[i], acts[i + 1], dy, ws, g, ops, ctx)
        return dy

    def walk(self) -> Iterator[Layer]:
        yield self
        for layer in self.layers:
            yield from layer.walk()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.layers!r})"


class Residual(Layer):
    """``x + block(x)``: the block's output shape must be its input's."""

    def __init__(self, *block: Layer):
        super().__init__()
        self.block = Chain(list(block[0]) if len(block) == 1 and isinstance(block[0], (list, tuple)) else list(block))

    @property
    def graph_safe(self) -> bool:  # type: ignore[override]
        return self.block.graph_safe

    def build(self, in_shape: Shape, prefix: str) -> Shape:
        self.in_shape, self.prefix = tuple(in_shape), prefix
        self.block.need_dx = True
        out = self.block.build(in_shape, prefix + "block.")
        if out != self.in_shape:
            raise ValueError(f"Residual: the block maps rows of shape {self.in_shape} to {out}; expected the same shape")
        self.out_shape = out
        return out

    def specs(self) -> dict[str, Spec]:
        return self.block.specs()

    def buffers(self, n: int) -> dict[str, Shape]:
        m = int(np.prod(self.in_shape))
        return {**self.block.buffers(n), self.n("y"): (n, m), self.n("dx"): (n, m)}

    def forward(self, p, x, ws, ops, ctx):
        y = ws[self.n("y")].reshape(x.shape)
        ctx.xp.add(x, self.block.forward(p, x, ws, ops, ctx), out=y)
        return y

    def backward(self, p, x, y, dy, ws, g, ops, ctx):
        dx = ws[self.n("dx")].reshape(x.shape)
        dx[...] = dy  # (the block may overwrite dy)
        dx += self.block.backward(p, x, None, dy, ws, g, ops, ctx)
        return dx if self.need_dx else None

    def walk(self) -> Iterator[Layer]:
        yield self
        yield from self.block.walk()

    def __repr__(self) -> str:
        return f"Residual({self.block.layers!r})"


class Concat(Layer):
    """Branches over the same input, their flat outputs side by side."""

    def __init__(self, *branches: Sequence[Layer] | Layer):
        super().__init__()
        if not branches:
            raise ValueError("Concat needs at least one branch")
        self.branches = [Chain(list(b) if isinstance(b, (list, tuple)) else [b])  # type: ignore[list-item]
                         for b in branches]

    @property
    def graph_safe(self) -> bool:  # type: ignore[override]
        return all(b.graph_safe for b in self.branches)

    def build(self, in_shape: Shape, prefix: str) -> Shape:
        self.in_shape, self.prefix = tuple(in_shape), prefix
        self.widths = []
        for i, b in enumerate(self.branches):
            b.need_dx = True
            self.widths.append(int(np.prod(b.build(in_shape, f"{prefix}{i}."))))
        self.out_shape = (sum(self.widths),)
        return self.out_shape

    def specs(self) -> dict[str, Spec]:
        out: dict[str, Spec] = {}
        for b in self.branches:
            out.update(b.specs())
        return out

    def buffers(self, n: int) -> dict[str, Shape]:
        out: dict[str, Shape] = {self.n("y"): (n, self.out_shape[0]), self.n("dx"): (n, int(np.prod(self.in_shape)))}
        for b in self.branches:
            out.update(b.buffers(n))
        return out

    def forward(self, p, x, ws, ops, ctx):
        y, lo = ws[self.n("y")], 0
        for b, w in zip(self.branches, self.widths):
            y[:, lo:lo + w] = b.forward(p, x, ws, ops, ctx).reshape(x.shape[0], w)
            lo += w
        return y

    def backward(self, p, x, y, dy, ws, g, ops, ctx):
        dx, lo = ws[self.n("dx")].reshape(x.shape), 0
        dx[...] = 0
        for b, w in zip(self.branches, self.widths):
            part = dy[:, lo:lo + w]
            shaped = ctx.xp.ascontiguousarray(part).reshape(x.shape[0], *b.out_shape)
            dx += b.backward(p, x, None, shaped, ws, g, ops, ctx)
            lo += w
        return dx if self.need_dx else None

    def walk(self) -> Iterator[Layer]:
        yield self
        for b in self.branches:
            yield from b.walk()

    def __repr__(self) -> str:
        return f"Concat({[b.layers for b in self.branches]!r})"
