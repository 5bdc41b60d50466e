"""Dense models: linear regression, softmax regression and the multi-layer perceptron."""
from __future__ import annotations

from typing import Any, Sequence

from .base import Model
from .ops import ACT_CODES

ACTIVATIONS = ("relu", "tanh", "sigmoid")


class MLP(Model):
    """Fully connected ``sizes[0] -> ... -> sizes[-1]``; softmax cross-entropy on the logits.

    Parameters ``W{i}`` of shape (in, out) and ``b{i}`` of shape (out,), i = 1..layers."""

    def __init__(self, sizes: Sequence[int], activation: str = "relu", classifier: bool = True):
        if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
            raise ValueError(f"sizes={list(sizes)!r} is not allowed: expected at least two positive layer sizes")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r} is not allowed: expected one of {ACTIVATIONS}")
        self.sizes, self.activation, self.classifier = [int(s) for s in sizes], activation, classifier
        self.act = ACT_CODES[activation]
        self.layers = len(self.sizes) - 1
        self.last_bias = f"b{self.layers}"

    def __repr__(self) -> str:
        if type(self) is SoftmaxRegression:
            return f"SoftmaxRegression({self.sizes[0]}, {self.sizes[1]})"
        if type(self) is LinearRegression:
            return f"LinearRegression({self.sizes[0]}, {self.sizes[1]})"
        return f"MLP({self.sizes})"

    @property
    def outputs(self) -> int:
        return self.sizes[-1]

    def row_shape(self) -> tuple[int, ...]:
        return (self.sizes[0],)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        out: dict[str, tuple[int, ...]] = {}
        for i, (a, b) in enumerate(zip(self.sizes[:-1], self.sizes[1:]), 1):
            out[f"W{i}"], out[f"b{i}"] = (a, b), (b,)
        return out

    def buffers(self, n: int) -> dict[str, tuple[int, ...]]:
        bufs: dict[str, tuple[int, ...]] = {f"h{i}": (n, m) for i, m in enumerate(self.sizes[1:], 1)}
        bufs.update({f"d{i}": (n, m) for i, m in enumerate(self.sizes[1:-1], 1)})
        bufs["dz"] = (n, self.sizes[-1])
        bufs["loss"] = ()
        return bufs

    def logits(self, params: dict[str, Any], x: Any, ws: dict[str, Any], ops: Any) -> Any:
        """Forward pass; returns the last layer's pre-bias output (its bias is added by the loss)."""
        h = x.reshape(x.shape[0], -1)
        ws["h0"] = h
        for i in range(1, self.layers + 1):
            z = ws[f"h{i}"]
            ops.gemm(h, params[f"W{i}"], z)
            if i < self.layers:
                ops.bias_act(z, params[f"b{i}"], self.act)
            h = z
        return h

    def backward(self, params: dict[str, Any], ws: dict[str, Any], dz: Any, out: dict[str, Any],
                 ops: Any) -> None:
        d = dz
        for i in range(self.layers, 0, -1):
            ops.gemm(ws[f"h{i - 1}"].T, d, out[f"W{i}"])
            if i > 1:
                nd = ws[f"d{i - 1}"]
                ops.gemm(d, params[f"W{i}"].T, nd)
                ops.act_back_colsum(nd, ws[f"h{i - 1}"], out[f"b{i - 1}"], self.act)
                d = nd


class SoftmaxRegression(MLP):
    """Multinomial logistic regression: ``softmax(x @ W1 + b1)``."""

    def __init__(self, d: int, classes: int):
        super().__init__([d, classes])


class LinearRegression(MLP):
    """Least squares: ``x @ W1 + b1`` against real targets, loss 0.5 * mean squared error."""

    def __init__(self, d: int, outputs: int = 1):
        super().__init__([d, outputs], classifier=False)
