"""Update rules: the built-in fused optimizers and the wrapper for a user's ``agg`` function.

An update rule owns nothing but its description: which state slots it keeps, its hyperparameter
defaults, and how to call its kernel. The state arrays themselves live with whoever applies the
rule (a server shard, or a worker's local replica).
"""
from __future__ import annotations

import math
import numbers
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from .errors import option_error
from .kernels import twin


@dataclass(frozen=True)
class Rule:
    """Everything about one built-in update rule, in one place: the kernel modules
    (``kernels/cpu.py``, ``cpu_numpy.py``, ``cuda.py`` + ``optim.cu``) key their kernels by its
    name and take its slots and scalars in this order."""

    name: str
    defaults: Mapping[str, float]         # the hyperparameters it reads, with defaults (lr first)
    slots: tuple[str, ...]                # its state: parameter-sized arrays
    scalars: Callable[[Mapping[str, Any], int], tuple[float, ...]]  # kernel scalars at step t (from 1)
    # the update in numpy, in place: step(g, w, *slots, *scalars); the numpy twins
    # (kernels/cpu_numpy.py) run it, the numba and CUDA kernels compute the same
    step: Callable[..., None]
    step_dependent: bool = False          # scalars change every step (no cached scalars, no graph replay)
    unit_interval: tuple[str, ...] = ()   # hyperparameters that must lie in [0, 1)

    def check(self, hp: dict[str, Any]) -> None:
        """Fill the defaults into ``hp`` and check the values (numpy scalars become floats)."""
        for key, default in self.defaults.items():
            value = hp.setdefault(key, default)
            if not real(value) or not math.isfinite(value) or value < 0 or (key == "lr" and value == 0):
                raise option_error(f"hyperparams[{key!r}]", value, f"a finite number > 0 for agg={self.name!r}")
            if key in self.unit_interval and value >= 1:
                raise option_error(f"hyperparams[{key!r}]", value, "a number in [0, 1)")
            hp[key] = float(value)


def _adam(hp: Mapping[str, Any], t: int) -> tuple[float, ...]:
    b1, b2 = hp["beta1"], hp["beta2"]
    return hp["lr"], b1, b2, hp["eps"], 1.0 / (1.0 - b1 ** t), 1.0 / (1.0 - b2 ** t)


def _sgd_step(g: Any, w: Any, lr: Any) -> None:
    w -= lr * g


def _momentum_step(g: Any, w: Any, v: Any, lr: Any, mu: Any) -> None:
    v *= mu
    v += g
    w -= lr * v


def _nesterov_step(g: Any, w: Any, v: Any, lr: Any, mu: Any) -> None:
    v *= mu
    v += g
    w -= lr * (g + mu * v)


def _adagrad_step(g: Any, w: Any, h: Any, lr: Any, eps: Any) -> None:
    h += g * g
    w -= lr * g / (np.sqrt(h) + eps)


def _adam_step(g: Any, w: Any, m: Any, v: Any, lr: Any, b1: Any, b2: Any, eps: Any, bc1: Any, bc2: Any) -> None:
    m *= b1
    m += (1 - b1) * g
    v *= b2
    v += (1 - b2) * g * g
    w -= lr * (m * bc1) / (np.sqrt(v * bc2) + eps)


RULES: dict[str, Rule] = {r.name: r for r in (
    Rule("sgd", {"lr": 0.01}, (), lambda hp, t: (hp["lr"],), _sgd_step),
    Rule("momentum", {"lr": 0.01, "momentum": 0.9}, ("v",), lambda hp, t: (hp["lr"], hp["momentum"]),
         _momentum_step, unit_interval=("momentum",)),
    Rule("nesterov", {"lr": 0.01, "momentum": 0.9}, ("v",), lambda hp, t: (hp["lr"], hp["momentum"]),
         _nesterov_step, unit_interval=("momentum",)),
    Rule("adagrad", {"lr": 0.01, "eps": 1e-8}, ("h",), lambda hp, t: (hp["lr"], hp["eps"]), _adagrad_step),
    Rule("adam", {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}, ("m", "v"), _adam, _adam_step,
         step_dependent=True, unit_interval=("beta1", "beta2")),
)}
BUILTIN = tuple(RULES)


def real(value: Any) -> bool:
    """A real number: Python's or numpy's (np.float32(0.05) is one), never a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def resolve_hyperparams(agg: str | Callable, hyperparams: Mapping[str, Any] | None) -> dict[str, Any]:
    """Fill the optimizer's defaults and check the values it uses (numpy scalars become floats)."""
    hp = dict(hyperparams or {})
    for key in hp:
        if not isinstance(key, str):
            raise option_error("hyperparams", key, "a dict with str keys")
    if isinstance(agg, str):
        RULES[agg].check(hp)
    return hp


def reads(agg: str | Callable) -> tuple[str, ...] | None:
    """The hyperparameter names a built-in rule reads; None for a user's function (any)."""
    return tuple(RULES[agg].defaults) if isinstance(agg, str) else None


@dataclass
class Builtin:
    """A fused built-in optimizer: one kernel call over a flat range."""

    name: str
    hp: dict[str, Any]
    layout: Any = None  # (element-wise: the layout is not needed)
    on_host = False       # its kernels run on the device (a user's agg runs Python on the host)
    whole_tensors = False  # element-wise: a shard may cut through a tensor

    @property
    def spec(self) -> Rule:
        return RULES[self.name]

    @property
    def step_dependent(self) -> bool:
        return self.spec.step_dependent

    def init_state(self, xp: Any, n: int, dtype: Any) -> dict[str, Any]:
        return {s: xp.zeros(n, dtype) for s in self.spec.slots}

    def scalars(self, step: int) -> tuple[float, ...]:
        return self.spec.scalars(self.hp, step)

    def apply(self, kernels: Any, serial: bool, G: Any, rows: Any, bad: Any, scale: float, w: Any,
              state: dict[str, Any], step: int, lo: int = 0, **pull: Any) -> None:
        """``w -= update(scale * sum of G[rows])`` over the rows not flagged in ``bad``; ``step``
        counts updates of this state, from 1; ``lo`` is where ``w`` starts in the model (an
        element-wise rule needs no more). ``pull=dst``: kernels with ``FUSED_PULL`` (CUDA)
        write the new parameters to dst in the same pass."""
        fn = twin(*kernels.UPDATES[self.name], w.shape[0], concurrent=serial)
        dt = w.dtype.type
        fn(G, rows, bad, dt(scale), w, *state.values(), *self._typed(dt, step), **pull)

    def _typed(self, dt: Any, step: int) -> tuple:
        """The kernel's scalars in the parameters' dtype (cached unless they depend on step)."""
        if self.step_dependent:
            return tuple(dt(s) for s in self.scalars(step))
        cache = self.__dict__.setdefault("_cache", {})
        if dt not in cache:
            cache[dt] = tuple(dt(s) for s in self.scalars(step))
        return cache[dt]


@dataclass
class UserRule:
    """A user's ``agg(params, grads, state, hyperparams) -> (params, state)``, over whole tensors.

    Each caller (a CPU thread, a CUDA stream: HOGWILD's workers apply their own pushes at once)
    aggregates into a gradient buffer of its own and keeps the newest state it made alive, so
    concurrent calls never read each other's buffers or free memory another stream still reads.
    An update whose every push was flagged non-finite does not call ``agg`` at all: a stateful
    rule must not move the parameters on a zero gradient."""

    fn: Callable
    hp: dict[str, Any]
    name: str = "custom"
    layout: Any = None  # set by the caller: the model's Layout
    on_host = True           # Python on the host: never inside a CUDA graph
    step_dependent = False
    whole_tensors = True     # it sees named tensors: shards are cut at tensor boundaries
    _grad: dict = field(default_factory=dict)
    _kept: dict = field(default_factory=dict)

    def init_state(self, xp: Any, n: int, dtype: Any) -> dict[str, Any]:
        return {}

    def apply(self, kernels: Any, serial: bool, G: Any, rows: Any, bad: Any, scale: float, w: Any,
              state: dict[str, Any], step: int, lo: int = 0) -> None:
        if not _any_good(rows, bad):
            return
        agg_fn = kernels.aggregate_serial if serial else kernels.aggregate
        caller = _caller(w)
        key = (id(w), w.shape[0], caller)
        g = self._grad.get(key)
        if g is None:
            g = self._grad[key] = w.copy()
        agg_fn(G, rows, bad, w.dtype.type(scale), g)
        names = self.layout.names_in(lo, lo + w.shape[0])
        params, grads = self._views(w, lo, names), self._views(g, lo, names)
        res = self.fn(params, grads, state.get("user", {}), self.hp)
        if not (isinstance(res, tuple) and len(res) == 2):
            got = f"a tuple of {len(res)}" if isinstance(res, tuple) else type(res).__name__
            raise ValueError(f"agg must return (params, state), a tuple of two; it returned {got} "
                             "(return the state too, {} if the rule keeps none)")
        new_params, new_state = res
        check_like(new_params, params, "agg", "params")
        xp = _xp(w)
        for n in names:
            if new_params[n] is not params[n]:
                params[n][...] = new_params[n]
        bad_params = [n for n in names if not bool(xp.isfinite(params[n]).all())]
        # (a worker's local step may feed agg a NaN gradient: its push is flagged and skipped, and
        # the worker's state restored; only NaN made by agg from finite gradients is agg's)
        if bad_params and bool(xp.isfinite(g).all()):
            raise ValueError(f"agg returned non-finite params[{bad_params[0]!r}] (NaN or Inf) at update {step}: the "
                             "update rule diverged or divided by zero (every push it was given was finite)")
        state["user"] = new_state
        self._kept[caller] = new_state  # alive while this caller's stream may still read it

    def _views(self, flat: Any, lo: int, names: tuple[str, ...]) -> dict[str, Any]:
        out = {}
        for n in names:
            a, b = self.layout.bounds(n)
            out[n] = flat[a - lo:b - lo].reshape(self.layout.shapes[self.layout.names.index(n)])
        return out


def _xp(a: Any) -> Any:
    if isinstance(a, np.ndarray):
        return np
    import cupy

    return cupy


def _caller(a: Any) -> int:
    """Who applies the rule: the thread (numpy), the current CUDA stream (CuPy)."""
    if isinstance(a, np.ndarray):
        return threading.get_ident()
    import cupy

    return cupy.cuda.get_current_stream().ptr


def _any_good(rows: Any, bad: Any) -> bool:
    """Whether any of the pushes ``rows`` is unflagged (on a GPU this reads the flags back: a
    user's rule runs on the host anyway)."""
    flags = bad[rows]
    return bool((flags == 0).any())


def make_rule(agg: str | Callable, hp: dict[str, Any], layout: Any = None) -> Builtin | UserRule:
    """The rule ``agg`` names (a built-in's name, or a user's function) over the model ``layout``."""
    return Builtin(agg, hp, layout) if isinstance(agg, str) else UserRule(agg, hp, layout=layout)


def check_like(got: Any, want: Mapping[str, Any], fn_name: str, what: str) -> None:
    """Check that a user function returned a dict with ``want``'s keys, shapes and dtypes."""
    if not isinstance(got, Mapping):
        raise ValueError(f"{fn_name} must return a dict of {what} (name -> array), got {type(got).__name__}")
    missing, extra = set(want) - set(got), set(got) - set(want)
    if missing or extra:
        raise ValueError(f"{fn_name} returned {what} with keys {sorted(got)}; expected {sorted(want)}"
                         f" (missing {sorted(missing)}, unexpected {sorted(extra)})")
    for name, ref in want.items():
        arr = got[name]
        shape = tuple(getattr(arr, "shape", ()))
        if shape != tuple(ref.shape):
            raise ValueError(f"{fn_name} returned {what}[{name!r}] of shape {shape}; "
                             f"the parameter {name!r} has shape {tuple(ref.shape)}")
        kind = getattr(getattr(arr, "dtype", None), "kind", None)
        if kind != "f":
            raise ValueError(f"{fn_name} returned {what}[{name!r}] of dtype "
                             f"{getattr(arr, 'dtype', type(arr).__name__)}; expected floating point")
