"""Dense models, as :class:`gpups.nn.Sequential` definitions: the multi-layer perceptron, softmax
regression and linear regression (today's parameter names ``W1, b1, ...``, shapes and init)."""
from __future__ import annotations

from typing import Sequence

from ..nn import Dense, Sequential

ACTIVATIONS = ("relu", "tanh", "sigmoid")


class MLP(Sequential):
    """Fully connected ``sizes[0] -> ... -> sizes[-1]``; softmax cross-entropy on the logits
    (``classifier=False``: half the mean squared error).

    Parameters ``W{i}`` of shape (in, out) and ``b{i}`` of shape (out,), i = 1..layers."""

    def __init__(self, sizes: Sequence[int], activation: str = "relu", classifier: bool = True):
        if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
            raise ValueError(f"sizes={list(sizes)!r} is not allowed: expected at least two positive layer sizes")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r} is not allowed: expected one of {ACTIVATIONS}")
        self.sizes, self.activation = [int(s) for s in sizes], activation
        n = len(self.sizes) - 1
        layers = [Dense(m, activation if i < n else None, names=(f"W{i}", f"b{i}"))
                  for i, m in enumerate(self.sizes[1:], 1)]
        super().__init__(layers, loss="softmax_ce" if classifier else "mse", input_shape=(self.sizes[0],))

    def __repr__(self) -> str:
        return f"MLP({self.sizes})"


class SoftmaxRegression(MLP):
    """Multinomial logistic regression: ``softmax(x @ W1 + b1)``."""

    def __init__(self, d: int, classes: int):
        super().__init__([d, classes])

    def __repr__(self) -> str:
        return f"SoftmaxRegression({self.sizes[0]}, {self.sizes[1]})"


class LinearRegression(MLP):
    """Least squares: ``x @ W1 + b1`` against real targets, loss 0.5 * mean squared error."""

    def __init__(self, d: int, outputs: int = 1):
        super().__init__([d, outputs], classifier=False)

    def __repr__(self) -> str:
        return f"LinearRegression({self.sizes[0]}, {self.sizes[1]})"
