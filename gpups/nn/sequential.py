"""``Sequential``: layers chained, a loss at the end, and backward derived from the chain.

A ``Sequential`` is a :class:`gpups.models.Model`: ``init``, ``gradients`` (the ``upd``, with
``(grads, loss)`` and ``out=``), ``loss``, ``predict``, ``evaluate`` and every pre-work check
(parameter shapes, feature rows, labels) come with it. When its last layer is a ``Dense`` without
an activation, that layer's bias is added inside the loss kernel (as the built-in models always
did); L2 (``hyperparams['reg']``) applies to the parameters whose :class:`Spec` says so.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np

from ..capture import Tryable, graph_safe
from ..models.base import Model, _blocker, xp_of
from ..models.ops import ops_for
from .blocks import Chain
from .conv import AvgPool2D, ChannelsLast, Conv2D, MaxPool2D
from .layers import Dense, Embedding, Layer, Spec
from .losses import Loss, resolve_loss


class Sequential(Model):
    """``Sequential(layers, loss="softmax_ce", input_shape=(d,))``: ``layers`` applied in
    order to rows of ``input_shape`` ((C, H, W) images are made channels-last at the input),
    then ``loss`` (``softmax_ce``, ``bce_with_logits``, ``mse`` or a :class:`Loss`)."""

    def __init__(self, layers: Sequence[Layer], loss: str | Loss = "softmax_ce",
                 input_shape: Sequence[int] | int | None = None):
        if input_shape is None:
            raise ValueError("input_shape=None is not allowed: expected the shape of one example, e.g. (784,) "
                             "or (1, 28, 28)")
        shape = (int(input_shape),) if isinstance(input_shape, (int, np.integer)) else tuple(int(d) for d in input_shape)
        layers = list(layers)
        if len(shape) == 3 and layers and isinstance(layers[0], (Conv2D, MaxPool2D, AvgPool2D)):
            layers.insert(0, ChannelsLast(shape))
        for i, layer in enumerate(layers):
            if isinstance(layer, Embedding) and i:
                raise ValueError("Embedding must be the first layer (it reads ids from the features)")
        self.lossfn = resolve_loss(loss)
        self.input_shape = shape
        self.chain = Chain(layers)
        self.chain.need_dx = False
        out = self.chain.build(shape, "")
        self.out_width = int(np.prod(out))
        last: Any = self.chain.layers[-1]
        self.fused = isinstance(last, Dense) and last.bias and last.activation is None
        if self.fused:
            last.fused_bias = True
        self.last_bias = last.b if self.fused else ""
        self._specs = self.chain.specs()
        self.classifier = self.lossfn.classes

    # -- what the Model base asks ------------------------------------------------------------
    @property
    def layers(self) -> list[Layer]:
        return self.chain.layers

    @property
    def outputs(self) -> int:
        return self.out_width

    def row_shape(self) -> tuple[int, ...]:
        return self.input_shape

    def specs(self) -> dict[str, Spec]:
        return dict(self._specs)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: spec.shape for name, spec in self._specs.items()}

    def buffers(self, n: int) -> dict[str, tuple[int, ...]]:
        out = dict(self.chain.buffers(n))
        out["dz"] = (n, self.out_width)
        out["loss"] = ()
        if not self.fused:
            out["zero_b"] = (self.out_width,)
            out["db"] = (self.out_width,)
        return out

    def workspace(self, xp: Any, n: int, dtype: Any) -> dict[str, Any]:
        ws = super().workspace(xp, n, dtype)
        for layer in self.chain.walk():
            for name, dt in getattr(layer, "workspace_dtypes", dict)().items():
                if ws[name].dtype != dt:  # (index buffers: made once per workspace)
                    ws[name] = xp.empty(ws[name].shape, dt)
        return ws

    def capture_blocker(self) -> str | None:
        for layer in self.chain.walk():
            if not layer.graph_safe:
                return Tryable(f"layer {layer!r} computes with array expressions (they allocate)")
        return None

    def init(self, seed: int = 0, dtype: Any = np.float32, device: str = "cpu") -> dict[str, Any]:
        """Parameters as their specs say: he (normal, sqrt(2 / fan_in)), zeros, ones, normal
        (std 1/sqrt(last dim)); numpy arrays, CuPy for ``device="cuda"``."""
        rng = np.random.default_rng(seed)
        params = {}
        for name, spec in self._specs.items():
            if spec.init == "zeros":
                params[name] = np.zeros(spec.shape, dtype)
            elif spec.init == "ones":
                params[name] = np.ones(spec.shape, dtype)
            elif spec.init == "normal":
                params[name] = (rng.standard_normal(spec.shape) / np.sqrt(spec.shape[-1])).astype(dtype)
            else:
                fan_in = int(np.prod(spec.shape[:-1]))
                params[name] = (rng.standard_normal(spec.shape) * np.sqrt(2.0 / fan_in)).astype(dtype)
        if device != "cpu":
            import cupy

            params = {k: cupy.asarray(v) for k, v in params.items()}
        return params

    # -- the public functions ------------------------------------------------------------------
    def _forward(self, params: dict[str, Any], x: Any, train: bool,
                 hp: dict | None = None) -> tuple[Any, Any, Any, SimpleNamespace, Any]:
        """The forward pass. ``ctx.step`` (what a Dropout mask depends on) is the worker's
        ``hyperparams['worker']`` and ``['step']`` (gpups passes them), else a count of this
        workspace's training steps."""
        xp = xp_of(x)
        W = next(iter(params.values()))
        ws = self.workspace(xp, x.shape[0], W.dtype)
        ops = ops_for(xp)
        step = ws.get("_step", 0)
        if train:
            ws["_step"] = step + 1
        if hp is not None and "step" in hp:
            step = int(hp.get("worker", 0)) * 1_000_003 + int(hp["step"])
        ctx = SimpleNamespace(xp=xp, train=train, step=step, acts={})
        z = self.chain.forward(params, x, ws, ops, ctx)
        return z, ws, ops, ctx, xp

    def _bias(self, params: dict[str, Any], ws: dict[str, Any], out: dict[str, Any] | None = None) -> tuple[Any, Any]:
        if self.fused:
            return params[self.last_bias], (out[self.last_bias] if out is not None else None)
        ws["zero_b"].fill(0)
        return ws["zero_b"], ws["db"]

    @graph_safe(unless=_blocker)
    def gradients(self, params: dict[str, Any], x: Any, y: Any, hyperparams: dict | None = None,
                  out: dict[str, Any] | None = None) -> tuple[dict[str, Any], Any]:
        """The ``upd`` function: ``(grads, loss)`` of the batch, backward derived from the
        layers; written into ``out`` when given (gpups passes views of the worker's buffer)."""
        xp = xp_of(x)
        if out is None:
            out = {k: xp.empty_like(v) for k, v in params.items()}
        z, ws, ops, ctx, xp = self._forward(params, x, train=True, hp=hyperparams)
        n = x.shape[0]
        b, db = self._bias(params, ws, out)
        dz = ws["dz"]
        loss = self.lossfn(z.reshape(n, -1), b, y, dz, db, ws, ops)
        self.chain.backward(params, x, z, dz.reshape(z.shape), ws, out, ops, ctx)
        reg = (hyperparams or {}).get("reg", 0.0)
        if reg:
            for name, spec in self._specs.items():
                if spec.decay:
                    out[name] += reg * params[name]
            loss = loss + self._reg_loss(params, reg)
        return out, loss

    def _reg_loss(self, params: dict[str, Any], reg: float) -> float:  # type: ignore[override]
        return 0.5 * reg * sum(float((params[n] * params[n]).sum()) for n, s in self._specs.items() if s.decay)

    def evaluate(self, params: dict[str, Any], x: Any, y: Any, batch: int = 1024) -> dict[str, float]:
        tot, correct = 0.0, 0
        for lo in range(0, x.shape[0], batch):
            xb, yb = x[lo:lo + batch], y[lo:lo + batch]
            z, ws, ops, _, _ = self._forward(params, xb, train=False)
            b, _ = self._bias(params, ws)
            ls, hits = self.lossfn.evaluate(z.reshape(xb.shape[0], -1), b, yb, ops)
            tot += ls
            correct += hits or 0
        result = {"loss": tot / x.shape[0]}
        if self.lossfn.classes or self.lossfn.binary:
            result["accuracy"] = correct / (x.shape[0] * (1 if self.lossfn.classes else self.out_width))
        return result

    def predict(self, params: dict[str, Any], x: Any) -> Any:
        z, ws, _, _, _ = self._forward(params, x, train=False)
        b, _ = self._bias(params, ws)
        return self.lossfn.predict(z.reshape(x.shape[0], -1) + b)

    def training_loss(self, params: dict[str, Any], x: Any, y: Any, hyperparams: dict | None = None,
                      step: int = 0) -> float:
        """The loss ``gradients`` minimises, at the worker's ``step`` (a Dropout mask depends on
        it): for checks by finite differences."""
        xp = xp_of(x)
        ws = self.workspace(xp, x.shape[0], next(iter(params.values())).dtype)
        ws["_step"] = step
        z, ws, ops, _, _ = self._forward(params, x, train=True)
        b, db = self._bias(params, ws, {k: xp.empty_like(v) for k, v in params.items()})
        loss = float(self.lossfn(z.reshape(x.shape[0], -1), b, y, ws["dz"], db, ws, ops))
        reg = (hyperparams or {}).get("reg", 0.0)
        return loss + (self._reg_loss(params, reg) if reg else 0.0)

    def __repr__(self) -> str:
        return f"Sequential({self.chain.layers!r}, loss={self.lossfn.name!r}, input_shape={self.input_shape})"
