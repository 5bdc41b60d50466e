"""LeNet-style CNN: conv 5x5 -> relu -> maxpool 2 -> conv 5x5 -> relu -> maxpool 2 -> affine ->
relu -> affine, with convolution as im2col + one GEMM, activations in channels-last layout."""
from __future__ import annotations

from typing import Any, Sequence

from .base import Model
from .ops import RELU


class LeNet(Model):
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
        self.F1, self.F2 = (int(f) for f in filters)
        self.hidden, self.classes, self.k = int(hidden), int(classes), int(kernel)
        self.pad = self.k // 2
        self.last_bias = "b4"

    def __repr__(self) -> str:
        return f"LeNet(input_shape={(self.C, self.H, self.W)}, classes={self.classes})"

    @property
    def outputs(self) -> int:
        return self.classes

    def row_shape(self) -> tuple[int, ...]:
        return (self.C, self.H, self.W)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        k, flat = self.k, (self.H // 4) * (self.W // 4) * self.F2
        return {"W1": (k, k, self.C, self.F1), "b1": (self.F1,),
                "W2": (k, k, self.F1, self.F2), "b2": (self.F2,),
                "W3": (flat, self.hidden), "b3": (self.hidden,),
                "W4": (self.hidden, self.classes), "b4": (self.classes,)}

    def buffers(self, n: int) -> dict[str, tuple[int, ...]]:
        H, W, H2, W2, H4, W4, kk = self.H, self.W, self.H // 2, self.W // 2, self.H // 4, self.W // 4, self.k ** 2
        return {
            "cols1": (n * H * W, kk * self.C), "a1": (n * H * W, self.F1),
            "p1": (n, H2, W2, self.F1), "arg1": (n, H2, W2, self.F1),
            "cols2": (n * H2 * W2, kk * self.F1), "a2": (n * H2 * W2, self.F2),
            "p2": (n, H4, W4, self.F2), "arg2": (n, H4, W4, self.F2),
            "h3": (n, self.hidden), "h4": (n, self.classes),
            "dz": (n, self.classes), "d3": (n, self.hidden), "dp2": (n, H4 * W4 * self.F2),
            "da2": (n * H2 * W2, self.F2), "dcols2": (n * H2 * W2, kk * self.F1),
            "dp1": (n, H2, W2, self.F1), "da1": (n * H * W, self.F1),
            **({"x4": (n, H, W, self.C)} if self.C > 1 else {}),
        }

    def workspace(self, xp: Any, n: int, dtype: Any) -> dict[str, Any]:
        ws = super().workspace(xp, n, dtype)
        if ws["arg1"].dtype != xp.int64:  # argmax buffers hold indices
            ws["arg1"] = xp.empty(ws["arg1"].shape, xp.int64)
            ws["arg2"] = xp.empty(ws["arg2"].shape, xp.int64)
        return ws

    def _nhwc(self, x: Any, ws: dict[str, Any]) -> Any:
        """The batch in channels-last layout (into a workspace buffer: nothing is allocated)."""
        n = x.shape[0]
        x = x.reshape(n, self.C, self.H, self.W)
        if self.C == 1:
            return x.reshape(n, self.H, self.W, 1)
        ws["x4"][...] = x.transpose(0, 2, 3, 1)
        return ws["x4"]

    def logits(self, params: dict[str, Any], x: Any, ws: dict[str, Any], ops: Any) -> Any:
        n, k, pad = x.shape[0], self.k, self.pad
        x4 = self._nhwc(x, ws)
        ops.im2col(x4, k, k, pad, ws["cols1"])
        ops.gemm(ws["cols1"], params["W1"].reshape(-1, self.F1), ws["a1"])
        ops.bias_act(ws["a1"], params["b1"], RELU)
        ops.maxpool2(ws["a1"].reshape(n, self.H, self.W, self.F1), ws["p1"], ws["arg1"])
        ops.im2col(ws["p1"], k, k, pad, ws["cols2"])
        ops.gemm(ws["cols2"], params["W2"].reshape(-1, self.F2), ws["a2"])
        ops.bias_act(ws["a2"], params["b2"], RELU)
        ops.maxpool2(ws["a2"].reshape(n, self.H // 2, self.W // 2, self.F2), ws["p2"], ws["arg2"])
        ops.gemm(ws["p2"].reshape(n, -1), params["W3"], ws["h3"])
        ops.bias_act(ws["h3"], params["b3"], RELU)
        ops.gemm(ws["h3"], params["W4"], ws["h4"])
        return ws["h4"]

    def backward(self, params: dict[str, Any], ws: dict[str, Any], dz: Any, out: dict[str, Any],
                 ops: Any) -> None:
        n, k, pad = dz.shape[0], self.k, self.pad
        H2, W2 = self.H // 2, self.W // 2
        ops.gemm(ws["h3"].T, dz, out["W4"])
        ops.gemm(dz, params["W4"].T, ws["d3"])
        ops.act_back_colsum(ws["d3"], ws["h3"], out["b3"], RELU)
        p2 = ws["p2"].reshape(n, -1)
        ops.gemm(p2.T, ws["d3"], out["W3"])
        ops.gemm(ws["d3"], params["W3"].T, ws["dp2"])
        ops.maxpool2_back(ws["dp2"].reshape(ws["p2"].shape), ws["arg2"], ws["da2"].reshape(n, H2, W2, self.F2))
        ops.act_back_colsum(ws["da2"], ws["a2"], out["b2"], RELU)
        ops.gemm(ws["cols2"].T, ws["da2"], out["W2"].reshape(-1, self.F2))
        ops.gemm(ws["da2"], params["W2"].reshape(-1, self.F2).T, ws["dcols2"])
        ops.col2im(ws["dcols2"], k, k, pad, ws["dp1"])
        ops.maxpool2_back(ws["dp1"], ws["arg1"], ws["da1"].reshape(n, self.H, self.W, self.F1))
        ops.act_back_colsum(ws["da1"], ws["a1"], out["b1"], RELU)
        ops.gemm(ws["cols1"].T, ws["da1"], out["W1"].reshape(-1, self.F1))
