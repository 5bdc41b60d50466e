"""The checks behind :mod:`gpups.options`: arrays, models, functions, folders, numbers. Each
raises a ``ValueError`` that names what it checks, the value given and what is allowed."""
from __future__ import annotations

import inspect
import os
import tempfile
from typing import Any, Callable, Mapping

import numpy as np

from .errors import option_error


def choice(option: str, value: Any, allowed: tuple[str, ...]) -> str:
    """``value`` among ``allowed``, case-insensitive; returned in lower case."""
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


def as_features(option: str, value: Any) -> Any:
    """Features as given: an array (see :func:`as_array`), or a mapping of row-aligned arrays
    (:class:`gpups.columns.Columns`)."""
    from collections.abc import Mapping

    from .columns import as_columns

    return as_columns(option, value) if isinstance(value, Mapping) else as_array(option, value)


def check_data(features: Any, labels: Any, prefix: str = "") -> None:
    from .columns import Columns

    f, l = prefix + "features", prefix + "labels"
    if isinstance(features, Columns):
        pass  # (each array was checked when the mapping was read: as_features)
    elif not is_array(features) or features.ndim < 2:
        shape = getattr(features, "shape", None)
        raise ValueError(f"{f} has shape {shape}; expected an array of shape (n, ...) with one row per example")
    elif features.dtype.kind != "f":
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
    if not isinstance(features, Columns):
        check_finite(f, features)
    check_finite(l, labels)


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
