"""Partition schemes: which rows each of the k workers trains on (seeded, reproducible)."""
from __future__ import annotations

import numpy as np

SCHEMES = ("disjoint_contiguous", "disjoint_round_robin", "disjoint_random", "overlap_reshuffle")


def partition(n: int, k: int, scheme: str, seed: int) -> list[np.ndarray]:
    """Row indices (int64) for each worker.

    - ``disjoint_contiguous``: worker j gets the j-th of k contiguous, near-equal blocks.
    - ``disjoint_round_robin``: worker j gets rows j, j+k, j+2k, ...
    - ``disjoint_random``: a seeded permutation cut into k near-equal blocks.
    - ``overlap_reshuffle``: every worker gets all n rows, each in its own seeded order.
    """
    rng = np.random.default_rng(seed)
    if scheme == "disjoint_contiguous":
        return [np.asarray(p, np.int64) for p in np.array_split(np.arange(n), k)]
    if scheme == "disjoint_round_robin":
        return [np.arange(j, n, k, dtype=np.int64) for j in range(k)]
    if scheme == "disjoint_random":
        return [np.asarray(p, np.int64) for p in np.array_split(rng.permutation(n), k)]
    if scheme == "overlap_reshuffle":
        return [rng.permutation(n).astype(np.int64) for _ in range(k)]
    raise ValueError(f"unknown scheme {scheme!r}")
