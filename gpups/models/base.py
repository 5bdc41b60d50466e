"""What every built-in model shares: init on a device, loss/predict/evaluate, workspaces."""
from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Any

import numpy as np

from ..capture import Tryable, graph_safe, hold, on_stream_release
from .ops import ops_for


def _blocker(hp: Any, model: Any) -> str | None:
    """Why a model's gradients cannot be captured in a CUDA graph with these hyperparameters."""
    if (hp or {}).get("reg"):
        return Tryable("hyperparams['reg'] allocates per step")
    return model.capture_blocker() if model is not None else None


def xp_of(a: Any) -> Any:
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def stream_key(xp: Any) -> Any:
    """Workspaces are per thread (CPU workers) and per (GPU, CUDA stream) (GPU workers)."""
    if xp is np:
        return threading.get_ident()
    return (xp.cuda.Device().id, xp.cuda.get_current_stream().ptr)


_with_device_workspaces: "weakref.WeakSet[Model]" = weakref.WeakSet()


@on_stream_release
def release_workspaces(key: Any) -> None:
    """Forget the workspaces kept for a (GPU, stream) that goes (a graph that used them holds
    its own references)."""
    for model in list(_with_device_workspaces):
        cache = model.__dict__.get("_ws", {})
        for k in [k for k in cache if k[0] == key]:
            del cache[k]


class Model:
    """Base of the built-in models.

    Subclasses define ``shapes()``, ``logits(params, x, ws)`` (forward into workspace buffers)
    and ``backward(params, ws, dz, out)``; this class turns them into ``gradients`` (the ``upd``
    function), ``loss``, ``predict`` and ``evaluate``. Activation and gradient buffers are kept
    per (thread or stream, batch size, dtype) and reused: no allocation per step.
    """

    classifier = True
    last_bias: str  # the last layer's bias: the loss adds it (fused into the loss kernels)
    max_workspaces = 64
    hyperparams = ("reg",)  # what ``gradients`` reads: reg, the L2 coefficient (>= 0)

    @property
    def outputs(self) -> int:
        """Classes of a classifier; values per row of a regression."""
        raise NotImplementedError

    def row_shape(self) -> tuple[int, ...]:
        """The shape of one example (features of any row shape with this many values work)."""
        raise NotImplementedError

    # -- checks before any work ----------------------------------------------------------------
    def capture_blocker(self) -> str | None:
        """Why this model's steps cannot be captured in a CUDA graph (None: they can)."""
        return None

    def check_params(self, params: Any) -> None:
        """``params`` must have this model's names and shapes."""
        want = self.shapes()
        got = {n: tuple(getattr(a, "shape", ())) for n, a in params.items()}
        if got != want:
            diff = [f"{n}: given {got.get(n, 'none')}, expected {want.get(n, 'none')}"
                    for n in sorted(set(want) | set(got)) if got.get(n) != want.get(n)]
            raise ValueError(f"model does not fit upd={self!r}.gradients ({'; '.join(diff[:4])}): "
                             f"build the parameters with {type(self).__name__}(...).init()")

    def check_hyperparams(self, hp: Any) -> None:
        reg = hp.get("reg", 0.0)
        from ..optim import real

        if not real(reg) or not np.isfinite(reg) or reg < 0:
            from ..errors import option_error

            raise option_error("hyperparams['reg']", reg, "a finite number >= 0 (the L2 coefficient)")

    def check_data(self, features: Any, labels: Any, prefix: str = "") -> None:
        """Features whose rows this model reads, labels it can score: a ``ValueError`` naming
        the array, what was given and what the model expects."""
        f, l = prefix + "features", prefix + "labels"
        want = self.row_shape()
        size = int(np.prod(want))
        row = tuple(int(d) for d in features.shape[1:])
        if int(np.prod(row)) != size:
            shape = want if len(want) == 1 else f"{want} (or {size} values in any row shape)"
            raise ValueError(f"{f} has shape {tuple(features.shape)}: rows of shape {row}; {self!r} expects "
                             f"rows of shape {shape}")
        if self.classifier:
            check_class_labels(l, labels, self.outputs)
        else:
            width = int(np.prod(labels.shape[1:]))
            if width != self.outputs or labels.ndim > 2:
                shapes = "(n,) or (n, 1)" if self.outputs == 1 else f"(n, {self.outputs})"
                raise ValueError(f"{l} has shape {tuple(labels.shape)}; {self!r} predicts {self.outputs} "
                                 f"value(s) per row: expected labels of shape {shapes}")

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
            if xp is not np:
                _with_device_workspaces.add(self)
            while len(cache) > self.max_workspaces:  # threads and streams of finished runs
                cache.popitem(last=False)
        else:
            cache.move_to_end(key)
        hold(ws)  # (a CUDA graph being captured keeps them)
        return ws

    def buffers(self, n: int) -> dict[str, tuple[int, ...]]:
        """Activation and gradient buffer shapes for a batch of n rows."""
        raise NotImplementedError

    def logits(self, params: dict[str, Any], x: Any, ws: dict[str, Any], ops: Any) -> Any:
        """Forward pass into the workspace; the last layer's output before its bias."""
        raise NotImplementedError

    def backward(self, params: dict[str, Any], ws: dict[str, Any], dz: Any, out: dict[str, Any], ops: Any) -> None:
        """Gradients of every parameter but the last bias into ``out``, from ``dz``."""
        raise NotImplementedError

    # -- the public functions ------------------------------------------------------------------
    @graph_safe(unless=_blocker)
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
            loss = _mse(z, params[last_b], y, ws["dz"], out[last_b], ws.get("loss"))
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


def check_class_labels(name: str, y: Any, classes: int) -> None:
    """Class indices: shape (n,) or (n, 1), integer values in [0, classes)."""
    xp = xp_of(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    if y.ndim != 1:
        hint = ""
        if y.ndim == 2 and y.shape[1] == classes:
            hint = " (one-hot rows? pass each row's class index, e.g. labels.argmax(axis=1))"
        raise ValueError(f"{name} has shape {tuple(y.shape)}; expected class indices of shape (n,){hint}")
    allowed = f"integers in [0, {classes - 1}] (the model has {classes} classes)"
    if y.dtype.kind == "f":
        frac = xp.flatnonzero(y != xp.floor(y))
        if frac.size:
            i = int(frac[0])
            raise ValueError(f"{name}[{i}] = {float(y[i])!r} is not a class index: expected {allowed}")
    if y.dtype.kind == "b" or y.size == 0:
        return
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= classes:
        i = int(xp.flatnonzero((y < 0) | (y >= classes))[0])
        hint = " (1-based labels? subtract 1)" if lo >= 1 and hi == classes else ""
        raise ValueError(f"{name}[{i}] = {y[i].item()!r} is outside the model's classes: expected "
                         f"{allowed}{hint}")


def model_of(fn: Any) -> "Model | None":
    """The built-in model whose method ``fn`` is (its ``gradients``, say), or None."""
    owner = getattr(fn, "__self__", None)
    return owner if isinstance(owner, Model) else None


def labels_of(y: Any, xp: Any) -> Any:
    y = y.reshape(-1)
    return y if y.dtype == xp.int64 else y.astype(xp.int64)


def _mse(z: Any, b: Any, y: Any, dz: Any, db: Any, loss: Any = None) -> Any:
    """0.5 * mean squared error of z + b against y; dz and db its gradients. With ``loss`` (a
    0-d workspace buffer) nothing is allocated, so the step can be captured in a CUDA graph."""
    xp = xp_of(z)
    n = z.shape[0]
    xp.add(z, b, out=dz)
    dz -= y.reshape(z.shape)
    if loss is None or xp is np:
        value = 0.5 * xp.vdot(dz, dz) / n
    else:
        flat = dz.reshape(-1)
        xp.dot(flat, flat, out=loss)
        loss *= 0.5 / n
        value = loss
    dz *= 1.0 / n
    dz.sum(axis=0, out=db)
    return value
