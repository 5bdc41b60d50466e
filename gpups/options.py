"""Option checking for :func:`gpups.paramserv`: every bad input is named before any work starts."""
from __future__ import annotations

import inspect
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from .errors import option_error
from .models.base import model_of
from .optim import BUILTIN
from .partition import SCHEMES

UTYPES = ("BSP", "ASP", "SSP", "SBP", "HOGWILD")
FREQS = ("BATCH", "NBATCHES", "EPOCH")
PUSHES = ("gradients", "model")
BACKENDS = ("local", "ray")
NONFINITE = ("raise", "skip")
UPD = "upd(params, features, labels, hyperparams) -> grads or (grads, loss)"
AGG = "agg(params, grads, state, hyperparams) -> (params, state)"
EVALUATE = "evaluate(params, features, labels) -> dict of metrics"


@dataclass(frozen=True)
class Options:
    agg: str | Callable
    utype: str        # lower case
    freq: str         # lower case
    epochs: int
    batchsize: int
    k: int
    servers: int
    scheme: str
    nbatches: int
    push: str
    staleness: int
    backup_workers: int
    backend: str
    checkpoint: str | None
    resume: bool
    seed: int
    progress: bool
    nonfinite: str = "raise"
    ray_address: str | None = None  # backend="ray": None (start a local instance), "auto", "host:port"


def choice(option: str, value: Any, allowed: tuple[str, ...]) -> str:
    if isinstance(value, str):
        for a in allowed:
            if value.lower() == a.lower():
                return a.lower()
    raise option_error(option, value, allowed)


def integer(option: str, value: Any, lo: int, hi: int | None = None) -> int:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < lo or (hi is not None and value > hi):
        rng = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
        raise option_error(option, value, rng)
    return int(value)


def flag(option: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise option_error(option, value, "True or False")
    return bool(value)


def is_array(a: Any) -> bool:
    return isinstance(a, np.ndarray) or type(a).__module__.split(".")[0] == "cupy"


def array_module(a: Any) -> Any:
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def check_finite(option: str, a: Any) -> None:
    if a.dtype.kind not in "fc":
        return
    xp = array_module(a)
    ok = xp.isfinite(a)
    if not bool(ok.all()):
        bad = np.argwhere(~np.asarray(ok.get() if xp is not np else ok))[0]
        raise ValueError(f"{option} holds NaN or Inf (first at index {tuple(int(i) for i in bad)}); "
                         f"expected finite values: clean or impute the data first")


def check_model(model: Any) -> None:
    if not isinstance(model, Mapping) or not model:
        raise option_error("model", model, "a non-empty dict of name -> float32/float64 array")
    dtypes = set()
    for name, a in model.items():
        if not isinstance(name, str):
            raise option_error("model", name, "a dict with str keys")
        if not is_array(a) or a.dtype not in (np.float32, np.float64):
            got = getattr(a, "dtype", type(a).__name__)
            raise ValueError(f"model[{name!r}] has dtype {got}; expected a float32 or float64 array")
        if a.size == 0:
            raise ValueError(f"model[{name!r}] is empty (shape {tuple(a.shape)}); expected at least one element")
        dtypes.add(np.dtype(a.dtype))
        check_finite(f"model[{name!r}]", a)
    if len(dtypes) > 1:
        raise ValueError(f"model mixes dtypes {sorted(str(d) for d in dtypes)}; "
                         "expected one dtype for all parameters (float32 or float64)")


def as_array(option: str, a: Any) -> Any:
    """numpy and CuPy arrays as they are; anything numpy can read as an array (lists, pandas
    DataFrames and Series) as a numpy array, as scikit-learn does; None stays None."""
    if a is None or is_array(a):
        return a
    if not (isinstance(a, (list, tuple)) or hasattr(a, "__array__")):
        raise ValueError(f"{option} is a {type(a).__name__}; expected a numpy or CuPy array (or a list or "
                         "pandas object numpy can convert)")
    try:
        out = np.asarray(a)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{option} ({type(a).__name__}) does not convert to an array: {exc}") from None
    if out.dtype == object:
        raise ValueError(f"{option} ({type(a).__name__}) converts to an array of Python objects (ragged rows or "
                         "mixed types); expected numbers in rows of equal length")
    return out


def check_data(features: Any, labels: Any, prefix: str = "") -> None:
    f, l = prefix + "features", prefix + "labels"
    if not is_array(features) or features.ndim < 2:
        shape = getattr(features, "shape", None)
        raise ValueError(f"{f} has shape {shape}; expected an array of shape (n, ...) with one row per example")
    if features.dtype.kind != "f":
        raise ValueError(f"{f} has dtype {features.dtype}; expected float32 or float64")
    if not is_array(labels) or labels.ndim < 1:
        raise ValueError(f"{l} has shape {getattr(labels, 'shape', None)}; expected an array of shape (n, ...)")
    if labels.dtype.kind not in "fiub":
        raise ValueError(f"{l} has dtype {labels.dtype}; expected integers or floats")
    if labels.shape[0] != features.shape[0]:
        raise ValueError(f"{l} has {labels.shape[0]} rows but {f} has {features.shape[0]}; "
                         "expected one label row per feature row")
    if features.shape[0] == 0:
        raise ValueError(f"{f} has no rows")
    check_finite(f, features)
    check_finite(l, labels)


def validate(model: Any, features: Any, labels: Any, *, upd: Any, agg: Any, utype: Any, freq: Any,
             epochs: Any, batchsize: Any, k: Any, servers: Any, scheme: Any, hyperparams: Any,
             val_features: Any, val_labels: Any, evaluate: Any, nbatches: Any, push: Any,
             staleness: Any, backup_workers: Any, backend: Any, checkpoint: Any, resume: Any,
             seed: Any, progress: Any, nonfinite: Any = "raise", ray_address: Any = None) -> Options:
    check_model(model)
    check_data(features, labels)
    if (val_features is None) != (val_labels is None):
        raise ValueError("val_features and val_labels go together: give both or neither")
    if val_features is not None:
        check_data(val_features, val_labels, "val_")
        if tuple(val_features.shape[1:]) != tuple(features.shape[1:]):
            raise ValueError(f"val_features rows have shape {tuple(val_features.shape[1:])}; expected "
                             f"{tuple(features.shape[1:])} like features")
    if not callable(upd):
        raise option_error("upd", upd, "a function " + UPD)
    check_signature("upd", upd, 4, UPD)
    if not (callable(agg) or isinstance(agg, str)):
        raise option_error("agg", agg, f"one of {BUILTIN} or a function {AGG}")
    if callable(agg):
        check_signature("agg", agg, 4, AGG)
    else:
        agg = choice("agg", agg, BUILTIN)
    if evaluate is not None and not callable(evaluate):
        raise option_error("evaluate", evaluate, "a function " + EVALUATE)
    if evaluate is not None:
        check_signature("evaluate", evaluate, 3, EVALUATE)
    if hyperparams is not None and not isinstance(hyperparams, Mapping):
        raise option_error("hyperparams", hyperparams, "a dict of name -> value, or None")
    net = model_of(upd)
    if net is not None:  # a built-in model's gradients: it knows its shapes, classes and hyperparameters
        net.check_params(model)
        net.check_data(features, labels)
        if val_features is not None:
            net.check_data(val_features, val_labels, "val_")
        net.check_hyperparams(hyperparams or {})
    ut = choice("utype", utype, UTYPES)
    fr = choice("freq", freq, FREQS)
    n = features.shape[0]
    kk = integer("k", k, 1, n)
    ep = integer("epochs", epochs, 1)
    bs = integer("batchsize", batchsize, 1)
    size = sum(int(a.size) for a in model.values())
    limit = size if isinstance(agg, str) else len(model)
    sv = integer("servers", servers, 1, limit)
    sc = choice("scheme", scheme, SCHEMES)
    nb = integer("nbatches", nbatches, 1)
    if nb != 1 and fr != "nbatches":
        raise option_error("nbatches", nbatches, "1 unless freq='NBATCHES'")
    ps = choice("push", push, PUSHES)
    st = integer("staleness", staleness, 0)
    if st != 0 and ut != "ssp":
        raise option_error("staleness", staleness, "0 unless utype='SSP'")
    bw = integer("backup_workers", backup_workers, 0, kk - 1)
    if bw != 0 and ut != "sbp":
        raise option_error("backup_workers", backup_workers, "0 unless utype='SBP'")
    be = choice("backend", backend, BACKENDS)
    ra = check_ray_address(ray_address, be)
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise option_error("checkpoint", checkpoint, "a folder path or None")
    rs = flag("resume", resume)
    if rs and checkpoint is None:
        raise option_error("resume", resume, "False unless checkpoint= names a folder")
    sd = integer("seed", seed, 0)
    pg = flag("progress", progress)
    nf = choice("nonfinite", nonfinite, NONFINITE)
    if checkpoint is not None:  # last: it creates the folder
        writable_folder("checkpoint", checkpoint)
    return Options(agg, ut, fr, ep, bs, kk, sv, sc, nb, ps, st, bw, be,
                   None if checkpoint is None else os.fspath(checkpoint), rs, sd, pg, nf, ra)


def check_signature(option: str, fn: Callable, nargs: int, expected: str) -> None:
    """``fn`` must accept ``nargs`` positional arguments (functions whose signature Python
    cannot read, such as some C functions, are given the benefit of the doubt)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(*range(nargs))
    except TypeError:
        name = getattr(fn, "__qualname__", type(fn).__name__)
        raise ValueError(f"{option}={name} takes {sig}; expected a function {expected}") from None


def writable_folder(option: str, path: Any) -> str:
    """Create the folder ``path`` if needed and check that this process may write there, so that
    a bad path is named before any work, not after the first epoch."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{option}={path!r} is a file; expected a folder (created if missing)")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"{option}={path!r} cannot be created: {parent!r} is a file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path) as probe:
            probe.write(b"0")
    except OSError as exc:
        raise ValueError(f"{option}={path!r} is not a folder this process can write to ({exc.strerror or exc}); "
                         "expected a writable folder") from None
    return path


def check_partitions(parts: list, batchsize: int, n: int, k: int) -> None:
    smallest = min(len(p) for p in parts)
    if batchsize > smallest:
        j = min(range(k), key=lambda i: len(parts[i]))
        raise option_error("batchsize", batchsize,
                           f"at most {smallest}: worker {j}'s partition has {smallest} rows "
                           f"({n} rows over k={k} workers)")


def check_ray_address(address: Any, backend: str) -> str | None:
    if address is None:
        return None
    if backend != "ray":
        raise option_error("ray_address", address, "None unless backend='ray'")
    ok = isinstance(address, str) and (address == "auto" or address.startswith("ray://") or (
        ":" in address and address.rsplit(":", 1)[1].isdigit() and address.rsplit(":", 1)[0] != ""))
    if not ok:
        raise option_error("ray_address", address, "None (start a local Ray instance), 'auto' (the cluster "
                           "of `ray start` on this machine) or 'host:port' of a cluster's head")
    return address
