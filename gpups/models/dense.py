"""Dense models: linear regression, softmax regression and the multi-layer perceptron."""
from __future__ import annotations

from typing import Any, Sequence

from .base import Model, into, xp_of

ACTIVATIONS = ("relu", "tanh", "sigmoid")


def _act(name: str, z: Any) -> Any:
    xp = xp_of(z)
    if name == "relu":
        return xp.maximum(z, 0, out=z)
    if name == "tanh":
        return xp.tanh(z, out=z)
    z *= -1
    xp.exp(z, out=z)
    z += 1
    return xp.reciprocal(z, out=z)


def _act_grad(name: str, h: Any, d: Any) -> Any:
    """d * act'(z), from the activation's output h (in place in d)."""
    if name == "relu":
        d *= h > 0
    elif name == "tanh":
        d *= 1 - h * h
    else:
        d *= h * (1 - h)
    return d


class MLP(Model):
    """Fully connected network ``sizes[0] -> ... -> sizes[-1]`` with softmax cross-entropy."""

    def __init__(self, sizes: Sequence[int], activation: str = "relu", classifier: bool = True):
        if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
            raise ValueError(f"sizes={list(sizes)!r} is not allowed: expected at least two positive layer sizes")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r} is not allowed: expected one of {ACTIVATIONS}")
        self.sizes, self.activation, self.classifier = [int(s) for s in sizes], activation, classifier

    def shapes(self) -> dict[str, tuple[int, ...]]:
        out = {}
        for i, (a, b) in enumerate(zip(self.sizes[:-1], self.sizes[1:]), 1):
            out[f"W{i}"], out[f"b{i}"] = (a, b), (b,)
        return out

    @property
    def layers(self) -> int:
        return len(self.sizes) - 1

    def forward(self, params: dict[str, Any], x: Any) -> tuple[Any, list[Any]]:
        h = x.reshape(x.shape[0], -1)
        hs = [h]
        for i in range(1, self.layers + 1):
            z = h @ params[f"W{i}"]
            z += params[f"b{i}"]
            h = z if i == self.layers else _act(self.activation, z)
            hs.append(h)
        return h, hs

    def backward(self, params: dict[str, Any], hs: list[Any], dz: Any, out: dict | None) -> dict[str, Any]:
        grads: dict[str, Any] = {}
        d = dz
        for i in range(self.layers, 0, -1):
            grads[f"W{i}"] = into(out, f"W{i}", hs[i - 1].T @ d)
            grads[f"b{i}"] = into(out, f"b{i}", d.sum(axis=0))
            if i > 1:
                d = _act_grad(self.activation, hs[i - 1], d @ params[f"W{i}"].T)
        return grads


class SoftmaxRegression(MLP):
    """Multinomial logistic regression: ``softmax(x @ W1 + b1)``."""

    def __init__(self, d: int, classes: int):
        super().__init__([d, classes])


class LinearRegression(MLP):
    """Least squares: ``x @ W1 + b1`` against real targets, loss 0.5 * mean squared error."""

    def __init__(self, d: int, outputs: int = 1):
        super().__init__([d, outputs], classifier=False)
