"""Flat parameter layout: every tensor of a model lives in one contiguous buffer.

The user's dict of arrays is mapped to offsets in a flat 1-D buffer; :meth:`Layout.views` gives
a dict of views into such a buffer, so optimizer kernels run once over the whole model and the
user's functions still see named, shaped tensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np


@dataclass(frozen=True)
class Layout:
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]  # start of each tensor; offsets[-1] + last size == size
    size: int
    dtype: np.dtype

    @classmethod
    def of(cls, model: Mapping[str, Any]) -> "Layout":
        names = tuple(model)
        shapes = tuple(tuple(int(d) for d in model[n].shape) for n in names)
        sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
        offsets = tuple(int(o) for o in np.concatenate([[0], np.cumsum(sizes)[:-1]]))
        dtype = np.dtype(model[names[0]].dtype)
        return cls(names, shapes, offsets, int(sum(sizes)), dtype)

    def bounds(self, name: str) -> tuple[int, int]:
        i = self.names.index(name)
        return self.offsets[i], self.offsets[i] + int(np.prod(self.shapes[i], dtype=np.int64))

    def views(self, flat: Any, readonly: bool = False) -> dict[str, Any]:
        """Named, shaped views into ``flat`` (numpy or cupy). ``readonly``: numpy views that
        refuse writes (what ``upd`` and ``evaluate`` get; CuPy has no such flag)."""
        out = {n: flat[o:o + int(np.prod(s, dtype=np.int64))].reshape(s)
               for n, s, o in zip(self.names, self.shapes, self.offsets)}
        if readonly and isinstance(flat, np.ndarray):
            for v in out.values():
                v.flags.writeable = False
        return out

    def flatten(self, model: Mapping[str, Any], out: Any) -> Any:
        for name, view in self.views(out).items():
            view[...] = model[name]
        return out

    def shards(self, servers: int, whole_tensors: bool = False) -> list[tuple[int, int]]:
        """Cut [0, size) into ``servers`` contiguous ranges of near-equal size.

        With ``whole_tensors`` the cuts fall on tensor boundaries (for user-written ``agg``
        functions, which see whole named tensors)."""
        if not whole_tensors:
            cuts = [self.size * s // servers for s in range(servers + 1)]
            return list(zip(cuts[:-1], cuts[1:]))
        ends = [o + int(np.prod(s, dtype=np.int64)) for o, s in zip(self.offsets, self.shapes)]
        cuts, t = [0], 0
        for s in range(1, servers):
            target = self.size * s / servers
            # first tensor end at or after the target that leaves enough tensors for the rest
            while t < len(ends) - (servers - s) and ends[t] < target:
                t += 1
            t = max(t, len(cuts) - 1)
            cuts.append(ends[t])
            t += 1
        cuts.append(self.size)
        return list(zip(cuts[:-1], cuts[1:]))

    def names_in(self, lo: int, hi: int) -> tuple[str, ...]:
        return tuple(n for n, o in zip(self.names, self.offsets) if lo <= o < hi)

    def sub(self, lo: int, hi: int) -> "Layout":
        """The layout of the range [lo, hi) as a buffer of its own: the whole tensors in it,
        offsets from lo (a server shard's view of the model); one flat tensor where the range
        cuts through tensors."""
        inside = [(n, s, o - lo) for n, s, o in zip(self.names, self.shapes, self.offsets) if lo <= o < hi]
        ends = sum(int(np.prod(s, dtype=np.int64)) for _, s, _ in inside)
        if inside and inside[0][2] == 0 and ends == hi - lo:
            names, shapes, offsets = zip(*inside)
            return Layout(names, shapes, offsets, hi - lo, self.dtype)
        return Layout(("range",), ((hi - lo,),), (0,), hi - lo, self.dtype)
