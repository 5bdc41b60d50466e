"""Features as a mapping of row-aligned arrays (``{"dense": (n, 13) float, "cat": (n, 26) int}``).

:class:`Columns` behaves like one array where the engine handles rows (``len``, ``shape[0]``,
indexing by rows or a slice, placing on a device) and like a dict where ``upd`` reads it
(``x["cat"]``): every array is partitioned and batched by the same rows.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

import numpy as np


class Columns:
    """Row-aligned named arrays; ``cols[rows]`` selects rows of every array, ``cols[name]`` one array."""

    def __init__(self, arrays: Mapping[str, Any]):
        self.arrays = dict(arrays)

    # -- as a mapping (what upd reads) ---------------------------------------------------------
    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return self.arrays[key]
        return Columns({name: a[key] for name, a in self.arrays.items()})

    def keys(self) -> Any:
        return self.arrays.keys()

    def items(self) -> Any:
        return self.arrays.items()

    def values(self) -> Any:
        return self.arrays.values()

    def __iter__(self) -> Iterator[str]:
        return iter(self.arrays)

    def __contains__(self, key: object) -> bool:
        return key in self.arrays

    # -- as rows (what the engine handles) -----------------------------------------------------
    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    @property
    def ndim(self) -> int:
        return 1

    @property
    def dtype(self) -> np.dtype:
        """The float columns' dtype (what a cast to the model's dtype changes)."""
        floats = [a.dtype for a in self.arrays.values() if a.dtype.kind == "f"]
        return np.dtype(floats[0]) if floats else np.dtype(np.int64)

    def astype(self, dtype: Any) -> "Columns":
        """Float columns in ``dtype``; id columns (integers) as they are."""
        return self.map(lambda a: a.astype(dtype) if a.dtype.kind == "f" else a)

    def map(self, fn: Callable[[Any], Any]) -> "Columns":
        return Columns({name: fn(a) for name, a in self.arrays.items()})

    @staticmethod
    def concatenate(parts: list["Columns"], xp: Any = np) -> "Columns":
        return Columns({name: xp.concatenate([p.arrays[name] for p in parts]) for name in parts[0].arrays})

    def __repr__(self) -> str:
        inner = ", ".join(f"{n!r}: {a.dtype}{tuple(a.shape)}" for n, a in self.arrays.items())
        return f"Columns({{{inner}}})"


def concat_rows(parts: list[Any], xp: Any = np) -> Any:
    """Rows of several parts one after another: arrays, or named columns column by column."""
    return Columns.concatenate(parts, xp) if isinstance(parts[0], Columns) else xp.concatenate(parts)


def as_columns(name: str, value: Mapping[str, Any]) -> Columns:
    """``value`` (a mapping of array-likes) checked: non-empty, numeric, finite, one row count.
    Float columns must be float32/float64; integer columns hold ids (>= 0)."""
    from .checks import as_array, check_finite

    if not value:
        raise ValueError(f"{name} is an empty mapping; expected named arrays with one row per sample")
    arrays = {}
    for key, a in value.items():
        label = f"{name}[{key!r}]"
        if not isinstance(key, str):
            raise ValueError(f"{name} has the key {key!r}; expected string keys")
        a = as_array(label, a)
        if not hasattr(a, "dtype") or a.ndim < 1:
            raise ValueError(f"{label} is not an array with one row per sample (got {type(a).__name__})")
        if a.dtype.kind == "f":
            check_finite(label, a)
        elif a.dtype.kind in "iu":
            low = int(a.min()) if a.size else 0
            if low < 0:
                raise ValueError(f"{label} holds the id {low} (row {int(np.argmin(a.reshape(len(a), -1).min(1)))}); "
                                 "integer columns are row ids: >= 0")
            a = a.astype(np.int64, copy=False)
        else:
            raise ValueError(f"{label} has dtype {a.dtype}; expected floats (float32/float64) or integer ids")
        arrays[key] = a
    rows = {k: len(a) for k, a in arrays.items()}
    if len(set(rows.values())) > 1:
        raise ValueError(f"{name}'s arrays have different row counts {rows}; every array needs one row per sample")
    return Columns(arrays)
