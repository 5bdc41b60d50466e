"""Trying an ``upd`` that is not declared graph-safe under CUDA-graph capture.

A user's CuPy function (or a model with array-expression layers) may well be capturable: it
launches kernels on the current stream, and what it allocates can be kept alive with the graph.
It may also not be: it reads a device value on the host, draws random numbers, or its work
depends on a hyperparameter (``hp['step']``) that a graph would freeze at capture. The trial
finds out once per worker, on copies, before any interval is captured:

1. an eager call in the trial's private memory pool (warm: modules compile, the pool caches
   the blocks the capture will reuse);
2. the same call captured as a graph (any exception: the reason);
3. an eager call at the *next* step (``hp['step'] + 1``), into other buffers;
4. the graph replayed, and its gradients and loss compared with step 3's.

Everything runs on the trial's own copy of the parameters and of the partition's first batch,
into buffers of its own: the worker's state is never touched, so a failed trial leaves nothing
to undo (the worker just stays eager). A pass means the upd's intervals may be captured; they
are, in the same private pool, with ``cupy.matmul`` on the graph-safe cuBLAS binding. One
comparison is evidence, not proof: a function whose work depends on data in Python control flow
should say so with ``upd.graph_safe = False``.

The device part (capture, replay, the pool) is a :class:`Capturer`; the GPU's is in
:mod:`gpups.gpu`, and the tests drive the logic with one that replays a Python closure.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

from .worker import call_upd


class Capturer(Protocol):
    def eager(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` now (in the trial's memory pool)."""

    def capture(self, fn: Callable[[], Any]) -> Any:
        """Capture ``fn``'s device work as a graph (it does not run); raise if it cannot be."""

    def replay(self, graph: Any) -> None:
        """Launch ``graph`` and wait for it."""


class Trial:
    """One worker's trial of its ``upd`` (see the module docstring). ``run`` returns None when
    it passed, else why the upd stays eager."""

    def __init__(self, upd: Callable, wants_out: bool, layout: Any, xp: Any, params_flat: Any,
                 x: Any, y: Any, hp: dict):
        self.upd, self.wants_out, self.layout, self.xp = upd, wants_out, layout, xp
        self.flat = params_flat.copy()            # a copy: nothing else changes it meanwhile
        self.params = layout.views(self.flat, readonly=True)
        self.x, self.y, self.hp = x.copy(), y.copy(), dict(hp)
        self.passed: bool | None = None
        self.reason: str | None = None

    def _call(self, hp: dict, flat: Any, loss: Any) -> Callable[[], None]:
        """The device work under test: upd, its gradients written into ``flat``, its loss into
        ``loss``; a host-side loss is refused (a graph would not update it)."""
        views = self.layout.views(flat)

        def work() -> None:
            grads, value = call_upd(self.upd, self.wants_out, self.params, self.x, self.y, hp, views)
            for name, view in views.items():
                g = grads[name]
                if g is not view:
                    if tuple(g.shape) != view.shape:
                        raise ValueError(f"upd returned a gradient for {name!r} of shape {tuple(g.shape)}; "
                                         f"the parameter has shape {view.shape}")
                    view[...] = g
            if value is not None:
                if not hasattr(value, "shape"):
                    raise ValueError("upd returned its loss as a host number; a graph would not update it "
                                     "(return the device scalar)")
                loss[...] = value
        return work

    def run(self, cap: Capturer) -> str | None:
        xp = self.xp
        got, want = xp.empty_like(self.flat), xp.empty_like(self.flat)
        got_loss, want_loss = xp.zeros((), xp.float64), xp.zeros((), xp.float64)
        captured = self._call(dict(self.hp), got, got_loss)
        later = dict(self.hp, step=int(self.hp.get("step", 0)) + 1)
        try:
            cap.eager(captured)
        except Exception as exc:
            return self._fail(f"its eager run failed ({type(exc).__name__}: {exc})")
        try:
            graph = cap.capture(captured)
        except Exception as exc:
            return self._fail(f"capturing it failed ({type(exc).__name__}: {exc}){_hint(exc)}")
        try:
            cap.eager(self._call(later, want, want_loss))
            cap.replay(graph)
        except Exception as exc:
            return self._fail(f"its replay failed ({type(exc).__name__}: {exc})")
        diff = differs(self.layout, got, want, xp) or differs(None, got_loss, want_loss, xp)
        if diff:
            return self._fail(f"its replay differs from an eager run at the next step ({diff}): its work "
                              "depends on something a graph fixes at capture (random numbers, "
                              "hyperparams['step'], values read on the host)")
        self.passed = True
        return None

    def _fail(self, reason: str) -> str:
        self.passed, self.reason = False, reason
        return reason


def _hint(exc: Exception) -> str:
    if "cuBLAS" in str(exc):
        return ("; `a @ b` and `ndarray.dot` call cuBLAS through CuPy, which refuses a capture: "
                "write cupy.matmul(a, b) (redirected to a graph-safe GEMM while capturing)")
    return ""


def differs(layout: Any, got: Any, want: Any, xp: Any) -> str | None:
    """Where ``got`` (a replay) and ``want`` (eager) differ beyond float rounding (GEMMs of a
    capture and of CuPy may pick other algorithms), tensor by tensor; None if nowhere."""
    rtol = 1e-3 if got.dtype.itemsize <= 4 else 1e-9
    parts = layout.views(got).items() if layout is not None else [("loss", got)]
    other = layout.views(want) if layout is not None else {"loss": want}
    for name, a in parts:
        b = other[name]
        scale = float(xp.nanmax(xp.abs(b))) if b.size else 0.0
        atol = rtol * scale if scale == scale and scale != float("inf") else 0.0
        if not bool(xp.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True)):
            return f"{name}: largest difference {float(xp.abs(a - b).max()):.3g}"
    return None
