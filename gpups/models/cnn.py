"""The LeNet-style CNN, as a :class:`gpups.nn.Sequential` definition: conv 5x5 -> relu ->
maxpool 2 -> conv 5x5 -> relu -> maxpool 2 -> affine -> relu -> affine (im2col + GEMM,
channels-last inside)."""
from __future__ import annotations

from typing import Sequence

from ..nn import Conv2D, Dense, Flatten, MaxPool2D, Sequential


class LeNet(Sequential):
    """Parameters: ``W1`` (k, k, C, F1), ``W2`` (k, k, F1, F2) (height, width, in, out),
    ``W3`` (H/4 * W/4 * F2, hidden), ``W4`` (hidden, classes), biases ``b1..b4``.
    Input: (n, C, H, W) or (n, C*H*W) rows; H and W divisible by 4."""

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), classes: int = 10,
                 filters: Sequence[int] = (32, 64), hidden: int = 512, kernel: int = 5):
        if len(input_shape) != 3 or input_shape[1] % 4 or input_shape[2] % 4:
            raise ValueError(f"input_shape={tuple(input_shape)!r} is not allowed: expected (C, H, W) "
                             "with H and W divisible by 4")
        if kernel % 2 != 1:
            raise ValueError(f"kernel={kernel!r} is not allowed: expected an odd size ('same' padding)")
        self.C, self.H, self.W = (int(v) for v in input_shape)
        self.classes, self.k = int(classes), int(kernel)
        f1, f2 = (int(f) for f in filters)
        super().__init__([
            Conv2D(f1, kernel, activation="relu", names=("W1", "b1")), MaxPool2D(2),
            Conv2D(f2, kernel, activation="relu", names=("W2", "b2")), MaxPool2D(2),
            Flatten(), Dense(int(hidden), "relu", names=("W3", "b3")), Dense(self.classes, names=("W4", "b4")),
        ], loss="softmax_ce", input_shape=(self.C, self.H, self.W))

    def __repr__(self) -> str:
        return f"LeNet(input_shape={(self.C, self.H, self.W)}, classes={self.classes})"
