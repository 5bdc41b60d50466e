"""PyTorch modules as gpups workers.

>>> params, upd, evaluate = gpups.torch.functional(module, torch.nn.functional.cross_entropy)  # doctest: +SKIP
>>> res = gpups.paramserv(params, X, y, upd=upd, evaluate=evaluate, utype="SSP", staleness=2, k=2)  # doctest: +SKIP

``upd`` runs the module with :func:`torch.func.functional_call` on tensors that *are* gpups'
parameter views (``torch.from_numpy`` on the CPU, DLPack on a GPU: no copy in), takes the
gradients with ``torch.autograd.grad`` and writes them into the worker's gradient buffer (one
``copy_`` per parameter: autograd makes fresh tensors). Each worker runs its own copy of the
module (``functional_call`` swaps a module's parameters while it runs, so one module cannot serve
two threads), which also keeps its buffers: batch-norm statistics are per worker while training;
``evaluate`` and :meth:`TorchUpd.export` use their mean over the workers (integer buffers: the
largest). ``hyperparams['reg']`` adds L2 on the parameters with two or more dimensions (weights,
not biases or norm scales), as the built-in models do.

On a GPU the module's kernels run on the worker's CUDA stream (``torch.cuda.ExternalStream``),
eagerly: a PyTorch module is never captured in gpups' CUDA graphs.
"""
from __future__ import annotations

import contextlib
import copy
import threading
from typing import Any, Callable

import numpy as np
import torch
from torch.func import functional_call

__all__ = ["functional", "TorchUpd", "TorchEvaluate"]


def _is_cupy(a: Any) -> bool:
    return type(a).__module__.startswith("cupy")


def _tensor(a: Any) -> torch.Tensor:
    """The array as a tensor on the same memory (numpy: ``from_numpy``; CuPy: DLPack)."""
    if isinstance(a, torch.Tensor):
        return a
    if _is_cupy(a):
        return torch.from_dlpack(a)
    a = np.asarray(a)
    if not a.flags.writeable:  # gpups' read-only views of its buffers: torch has no read-only tensors
        try:                   # (and warns), so alias them writable; upd only reads them
            w = a.view()
            w.flags.writeable = True
            a = w
        except ValueError:     # (memory that is read-only itself: torch warns once)
            pass
    return torch.from_numpy(a)


def _stream_of(a: Any) -> Any:
    """A torch stream context on CuPy's current stream for a CuPy array, else a no-op context."""
    if not _is_cupy(a):
        return contextlib.nullcontext()
    import cupy

    return torch.cuda.stream(torch.cuda.ExternalStream(cupy.cuda.get_current_stream().ptr))


class _WorkerState:
    """One worker's copy of the module and its tensors over gpups' buffers (cached by address)."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.key: tuple | None = None
        self.tparams: dict[str, torch.Tensor] = {}
        self.okey: tuple | None = None
        self.tout: dict[str, torch.Tensor] = {}

    def params(self, params: dict[str, Any]) -> dict[str, torch.Tensor]:
        key = tuple((_address(a), a.shape) for a in params.values())
        if key != self.key:
            self.tparams = {k: _tensor(a).detach().requires_grad_(True) for k, a in params.items()}
            self.key = key
        return self.tparams

    def out(self, out: dict[str, Any]) -> dict[str, torch.Tensor]:
        key = tuple(_address(a) for a in out.values())
        if key != self.okey:
            self.tout = {k: _tensor(a) for k, a in out.items()}
            self.okey = key
        return self.tout


def _address(a: Any) -> int:
    if _is_cupy(a):
        return int(a.data.ptr)
    return int(a.__array_interface__["data"][0])


class TorchUpd:
    """The ``upd`` of a module: ``upd(params, x, y, hyperparams, out=None) -> (grads, loss)``."""

    def __init__(self, module: torch.nn.Module, loss_fn: Callable, names: tuple[str, ...]):
        self.template = module
        self.loss_fn = loss_fn
        self.names = names
        self.weights = frozenset(n for n, p in module.named_parameters() if n in names and p.dim() >= 2)
        self._states: dict[Any, _WorkerState] = {}
        self._lock = threading.Lock()

    # Ray ships upd to its workers: the per-worker copies and the lock stay behind.
    def __getstate__(self) -> dict:
        d = dict(self.__dict__)
        d["_states"], d["_lock"] = {}, None
        return d

    def __setstate__(self, d: dict) -> None:
        self.__dict__.update(d)
        self._lock = threading.Lock()

    def state(self, worker: Any) -> _WorkerState:
        st = self._states.get(worker)
        if st is None:
            with self._lock:
                st = self._states.get(worker)
                if st is None:
                    st = self._states[worker] = _WorkerState(copy.deepcopy(self.template).train())
        return st

    def __call__(self, params: dict[str, Any], x: Any, y: Any, hyperparams: dict | None = None,
                 out: dict[str, Any] | None = None) -> tuple[dict[str, Any], float]:
        hp = hyperparams or {}
        st = self.state(hp.get("worker"))
        with _stream_of(x):
            tp = st.params(params)
            tx, ty = _tensor(x), _labels(_tensor(y))
            try:
                z = functional_call(st.module, tp, (tx,))
            except RuntimeError as exc:
                raise ValueError(f"the module failed on features of shape {tuple(x.shape)} (dtype {x.dtype}): "
                                 f"{exc}") from exc
            loss = self.loss_fn(z, ty)
            if loss.dim() != 0:
                raise ValueError(f"loss_fn returned a tensor of shape {tuple(loss.shape)}; expected a scalar "
                                 "(the batch's mean loss, e.g. reduction='mean')")
            grads = torch.autograd.grad(loss, [tp[n] for n in self.names], allow_unused=True)
            reg = float(hp.get("reg", 0.0) or 0.0)
            if out is None:
                out = {n: (np.empty(a.shape, a.dtype) if not _is_cupy(a) else a.copy()) for n, a in params.items()}
            tout = st.out(out)
            with torch.no_grad():
                for n, g in zip(self.names, grads):
                    o = tout[n]
                    if g is None:  # (a parameter the loss does not reach)
                        o.zero_()
                    else:
                        o.copy_(g)
                    if reg and n in self.weights:
                        o.add_(tp[n], alpha=reg)
            value = float(loss.detach())
        return out, value

    def buffers(self) -> dict[str, torch.Tensor]:
        """The module's buffers: the workers' mean (integer buffers: the largest), else the template's."""
        runs = [st.module for key, st in self._states.items() if key is not None]
        calls = [st.module for key, st in self._states.items() if key is None]  # (upd called outside a run)
        states = runs or calls or [self.template]
        merged = {}
        per_state = [dict(m.named_buffers()) for m in states]
        for name, b in per_state[0].items():
            all_b = [bufs[name].detach() for bufs in per_state]
            if b.is_floating_point():
                merged[name] = torch.stack(all_b).mean(0)
            else:
                merged[name] = torch.stack(all_b).max(0).values
        return merged

    def export(self, params: dict[str, Any]) -> torch.nn.Module:
        """A copy of the module holding ``params`` and the workers' merged buffers (see :meth:`buffers`)."""
        m = copy.deepcopy(self.template)
        with torch.no_grad():
            for name, p in m.named_parameters():
                if name in params:
                    p.copy_(_tensor(params[name]).to(p.device))
            merged = self.buffers()
            for name, b in m.named_buffers():
                b.copy_(merged[name].to(b.device))
        return m.eval()


def _labels(t: torch.Tensor) -> torch.Tensor:
    """Integer labels as int64 (what torch's classification losses index with)."""
    if not t.is_floating_point() and t.dtype != torch.int64:
        return t.long()
    return t


class TorchEvaluate:
    """``evaluate(params, x, y) -> {"loss", "accuracy"}``: the module in eval mode, no gradients;
    accuracy when the labels are integers and the outputs one row of scores per example."""

    def __init__(self, upd: TorchUpd):
        self.upd = upd

    def __call__(self, params: dict[str, Any], x: Any, y: Any, batch: int = 1024) -> dict[str, float]:
        m = self.upd.export(params)
        tot, hits, n = 0.0, 0, int(x.shape[0])
        classes = False
        with torch.no_grad(), _stream_of(x):
            for lo in range(0, n, batch):
                tx, ty = _tensor(x[lo:lo + batch]), _labels(_tensor(y[lo:lo + batch]))
                z = m(tx)
                tot += float(self.upd.loss_fn(z, ty)) * tx.shape[0]
                if not ty.is_floating_point() and z.dim() == 2 and z.shape[1] > 1:
                    classes = True
                    hits += int((z.argmax(1) == ty.reshape(-1)).sum())
        res = {"loss": tot / n}
        if classes:
            res["accuracy"] = hits / n
        return res


def functional(module: torch.nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
               ) -> tuple[dict[str, Any], TorchUpd, TorchEvaluate]:
    """``params, upd, evaluate`` for ``module`` trained on ``loss_fn(module(x), y)`` (a scalar,
    the batch's mean). ``params`` are copies of the module's trainable parameters (numpy arrays;
    CuPy for a module on a GPU), named as ``module.named_parameters()`` names them."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module; got {type(module).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, e.g. torch.nn.functional.cross_entropy; got {loss_fn!r}")
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("module has no trainable parameters (none with requires_grad=True)")
    dtypes = {p.dtype for _, p in trainable}
    if len(dtypes) > 1:
        raise ValueError(f"module's parameters have several dtypes ({sorted(map(str, dtypes))}); gpups keeps "
                         "one flat buffer of one dtype: cast the module first, e.g. module.float()")
    if not next(iter(dtypes)).is_floating_point:
        raise ValueError(f"module's parameters are {next(iter(dtypes))}; expected a floating dtype")
    params: dict[str, Any] = {}
    for name, p in trainable:
        t = p.detach()
        if t.is_cuda:
            import cupy

            params[name] = cupy.from_dlpack(t.clone())
        else:
            params[name] = t.cpu().numpy().copy()
    upd = TorchUpd(module, loss_fn, tuple(params))
    return params, upd, TorchEvaluate(upd)
