"""What every built-in model shares: init on a device, loss/predict/evaluate, workspaces."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from .ops import ops_for


def xp_of(a: Any) -> Any:
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def stream_key(xp: Any) -> int:
    """Workspaces are per thread (CPU workers) and per CUDA stream (GPU workers)."""
    if xp is np:
        return threading.get_ident()
    return xp.cuda.get_current_stream().ptr


class Model:
    """Base of the built-in models.

    Subclasses define ``shapes()``, ``logits(params, x, ws)`` (forward into workspace buffers)
    and ``backward(params, ws, dz, out)``; this class turns them into ``gradients`` (the ``upd``
    function), ``loss``, ``predict`` and ``evaluate``. Activation and gradient buffers are kept
    per (thread or stream, batch size, dtype) and reused: no allocation per step.
    """

    classifier = True
    max_workspaces = 64

    def shapes(self) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    @property
    def size(self) -> int:
        return sum(int(np.prod(s)) for s in self.shapes().values())

    def init(self, seed: int = 0, dtype: Any = np.float32, device: str = "cpu") -> dict[str, Any]:
        """Parameters: weights ~ He-scaled normal, biases zero (numpy; cupy for ``cuda``)."""
        rng = np.random.default_rng(seed)
        params = {}
        for name, shape in self.shapes().items():
            if name.startswith("b"):
                params[name] = np.zeros(shape, dtype)
            else:
                fan_in = int(np.prod(shape[:-1]))
                params[name] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(dtype)
        if device != "cpu":
            import cupy

            params = {k: cupy.asarray(v) for k, v in params.items()}
        return params

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without its workspaces (a model shipped to a Ray actor rebuilds them)."""
        return {k: v for k, v in self.__dict__.items() if k != "_ws"}

    # -- workspaces ----------------------------------------------------------------------------
    def workspace(self, xp: Any, n: int, dtype: Any) -> dict[str, Any]:
        cache = self.__dict__.setdefault("_ws", OrderedDict())
        key = (stream_key(xp), xp.__name__, n, np.dtype(dtype).str)
        ws = cache.get(key)
        if ws is None:
            ws = cache[key] = {name: xp.empty(shape, dtype) for name, shape in self.buffers(n).items()}
            while len(cache) > self.max_workspaces:  # threads and streams of finished runs
                cache.popitem(last=False)
        else:
            cache.move_to_end(key)
        return ws

    def buffers(self, n: int) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    # -- the public functions ------------------------------------------------------------------
    def gradients(self, params: dict[str, Any], x: Any, y: Any, hyperparams: dict | None = None,
                  out: dict[str, Any] | None = None) -> tuple[dict[str, Any], Any]:
        """The ``upd`` function: ``(grads, loss)`` of the batch. Gradients are written into
        ``out`` when given (gpups passes views of the worker's flat gradient buffer)."""
        xp = xp_of(x)
        W = next(iter(params.values()))
        if out is None:
            out = {k: xp.empty_like(v) for k, v in params.items()}
        ws = self.workspace(xp, x.shape[0], W.dtype)
        ops = ops_for(xp)
        z = self.logits(params, x, ws, ops)
        last_b = self.last_bias
        if self.classifier:
            loss = ops.softmax_xent(z, params[last_b], labels_of(y, xp), ws["dz"], out[last_b])
        else:
            loss = _mse(z, params[last_b], y, ws["dz"], out[last_b])
        self.backward(params, ws, ws["dz"], out, ops)
        reg = (hyperparams or {}).get("reg", 0.0)
        if reg:
            for name, g in out.items():
                if not name.startswith("b"):
                    g += reg * params[name]
            loss = loss + self._reg_loss(params, reg)
        return out, loss

    def evaluate(self, params: dict[str, Any], x: Any, y: Any, batch: int = 1024) -> dict[str, float]:
        xp = xp_of(x)
        ops = ops_for(xp)
        W = next(iter(params.values()))
        tot, correct = 0.0, 0
        for lo in range(0, x.shape[0], batch):
            xb, yb = x[lo:lo + batch], y[lo:lo + batch]
            ws = self.workspace(xp, xb.shape[0], W.dtype)
            z = self.logits(params, xb, ws, ops)
            if self.classifier:
                ls, hits = ops.softmax_eval(z, params[self.last_bias], labels_of(yb, xp))
                tot += float(ls)
                correct += int(hits)
            else:
                r = z + params[self.last_bias] - yb.reshape(z.shape)
                tot += 0.5 * float((r * r).sum())
        result = {"loss": tot / x.shape[0]}
        if self.classifier:
            result["accuracy"] = correct / x.shape[0]
        return result

    def loss(self, params: dict[str, Any], x: Any, y: Any, hyperparams: dict | None = None) -> float:
        reg = (hyperparams or {}).get("reg", 0.0)
        return self.evaluate(params, x, y)["loss"] + (self._reg_loss(params, reg) if reg else 0.0)

    def predict(self, params: dict[str, Any], x: Any) -> Any:
        xp = xp_of(x)
        ws = self.workspace(xp, x.shape[0], next(iter(params.values())).dtype)
        z = self.logits(params, x, ws, ops_for(xp)) + params[self.last_bias]
        return z.argmax(axis=1) if self.classifier else z

    @staticmethod
    def _reg_loss(params: dict[str, Any], reg: float) -> float:
        return 0.5 * reg * sum(float((p * p).sum()) for n, p in params.items() if not n.startswith("b"))


def labels_of(y: Any, xp: Any) -> Any:
    y = y.reshape(-1)
    return y if y.dtype == xp.int64 else y.astype(xp.int64)


def _mse(z: Any, b: Any, y: Any, dz: Any, db: Any) -> Any:
    """0.5 * mean squared error of z + b against y; dz and db its gradients (no temporaries)."""
    xp = xp_of(z)
    n = z.shape[0]
    xp.add(z, b, out=dz)
    dz -= y.reshape(z.shape)
    loss = 0.5 * xp.vdot(dz, dz) / n
    dz *= 1.0 / n
    dz.sum(axis=0, out=db)
    return loss
