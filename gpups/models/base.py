"""What every built-in model shares: init on a device, loss/predict/evaluate, xp dispatch."""
from __future__ import annotations

from typing import Any

import numpy as np


def xp_of(a: Any) -> Any:
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def softmax_xent(z: Any, y: Any, want_grad: bool = True) -> tuple[Any, Any]:
    """Mean softmax cross-entropy of logits ``z`` (n, c) against int labels ``y``; returns
    ``(loss, dL/dz)`` with the gradient written over ``z``'s copy."""
    xp = xp_of(z)
    n = z.shape[0]
    z = z - z.max(axis=1, keepdims=True)
    e = xp.exp(z)
    s = e.sum(axis=1, keepdims=True)
    yi = y.astype(xp.int64, copy=False).reshape(-1)
    rows = xp.arange(n)
    loss = (xp.log(s[:, 0]) - z[rows, yi]).mean()
    if not want_grad:
        return loss, None
    e /= s
    e[rows, yi] -= 1.0
    e *= 1.0 / n
    return loss, e


class Model:
    """Base of the built-in models: subclasses define ``shapes``, ``forward`` and ``backward``."""

    classifier = True

    def shapes(self) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    def init(self, seed: int = 0, dtype: Any = np.float32, device: str = "cpu") -> dict[str, Any]:
        """Parameters: weights ~ He-scaled normal, biases zero (numpy, or cupy for 'cuda')."""
        rng = np.random.default_rng(seed)
        params = {}
        for name, shape in self.shapes().items():
            if name.startswith("b"):
                params[name] = np.zeros(shape, dtype)
            else:
                fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else shape[0]
                params[name] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(dtype)
        if device != "cpu":
            import cupy

            params = {k: cupy.asarray(v) for k, v in params.items()}
        return params

    def predict(self, params: dict[str, Any], x: Any) -> Any:
        z = self.forward(params, x)[0]
        return z.argmax(axis=1) if self.classifier else z

    def loss(self, params: dict[str, Any], x: Any, y: Any, hyperparams: dict | None = None) -> float:
        z = self.forward(params, x)[0]
        return float(self._data_loss(z, y, False)[0]) + self._reg_loss(params, hyperparams or {})

    def evaluate(self, params: dict[str, Any], x: Any, y: Any, batch: int = 4096) -> dict[str, float]:
        xp = xp_of(x)
        tot, correct = 0.0, 0
        for lo in range(0, x.shape[0], batch):
            xb, yb = x[lo:lo + batch], y[lo:lo + batch]
            z = self.forward(params, xb)[0]
            tot += float(self._data_loss(z, yb, False)[0]) * xb.shape[0]
            if self.classifier:
                correct += int((z.argmax(axis=1) == yb.reshape(-1)).sum())
        out = {"loss": tot / x.shape[0]}
        if self.classifier:
            out["accuracy"] = correct / x.shape[0]
        del xp
        return out

    def gradients(self, params: dict[str, Any], x: Any, y: Any, hyperparams: dict | None = None,
                  out: dict[str, Any] | None = None) -> tuple[dict[str, Any], Any]:
        """The ``upd`` function: ``(grads, loss)`` of the batch, gradients written into ``out``
        when given (gpups passes views of the worker's flat gradient buffer)."""
        hp = hyperparams or {}
        z, cache = self.forward(params, x)
        loss, dz = self._data_loss(z, y, True)
        grads = self.backward(params, cache, dz, out)
        reg = hp.get("reg", 0.0)
        if reg:
            for name, g in grads.items():
                if not name.startswith("b"):
                    g += reg * params[name]
            loss = loss + self._reg_loss(params, hp)
        return grads, loss

    def _data_loss(self, z: Any, y: Any, want_grad: bool) -> tuple[Any, Any]:
        if self.classifier:
            return softmax_xent(z, y, want_grad)
        r = z - y.reshape(z.shape)
        return 0.5 * (r * r).sum(axis=1).mean(), (r / z.shape[0] if want_grad else None)

    def _reg_loss(self, params: dict[str, Any], hp: dict) -> float:
        reg = hp.get("reg", 0.0)
        if not reg:
            return 0.0
        return 0.5 * reg * sum(float((p * p).sum()) for n, p in params.items() if not n.startswith("b"))


def into(out: dict[str, Any] | None, name: str, value: Any) -> Any:
    """Store a gradient into ``out[name]`` if given (no new buffer), else return it."""
    if out is None:
        return value
    out[name][...] = value
    return out[name]
