"""Click-through data for the sparse tables: a synthetic set with a known ceiling, and a
streaming reader of the Criteo display-advertising TSV format (``gpups.datasets`` has both).

Both give :class:`CTRData`: ``features`` = ``{"dense": float32 (n, dense), "cat": int64 (n,
tables)}`` (what :class:`gpups.models.DLRM` reads), ``labels`` 0/1, ``tables`` (rows per table).
"""
from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np


@dataclass
class CTRData:
    features: dict[str, np.ndarray]
    labels: np.ndarray
    tables: list[int]
    ceiling: dict[str, float] = field(default_factory=dict)  # synthetic: the hidden model's auc, logloss

    def __len__(self) -> int:
        return len(self.labels)

    def split(self, val_fraction: float = 0.1) -> tuple["CTRData", "CTRData"]:
        """(train, validation): the last ``val_fraction`` of the rows held out (rows are i.i.d.)."""
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction={val_fraction!r} is not allowed: expected a number in (0, 1)")
        cut = len(self) - max(1, int(round(len(self) * val_fraction)))
        part = [CTRData({k: a[s] for k, a in self.features.items()}, self.labels[s], self.tables, self.ceiling)
                for s in (slice(0, cut), slice(cut, None))]
        return part[0], part[1]


def synthetic_ctr(n: int, tables: Sequence[int], dense: int = 13, zipf: float = 1.1, seed: int = 0) -> CTRData:
    """``n`` rows: ids per table drawn Zipf-like (rank r with probability ~ (r+1)^-zipf, ranks
    mapped to ids by a seeded permutation), dense features standard normal, and clicks drawn
    from a hidden logistic model: logit = dense @ a + sum_t u_t[id_t] + c, with u_t[i] ~ N(0,
    0.5^2) and c set for a ~25 % click rate. ``ceiling`` holds that model's own AUC and logloss
    on the rows: no model can do better in expectation, so a good one comes close."""
    from .models.dlrm import auc

    if n < 1 or not tables or min(tables) < 1:
        raise ValueError(f"n={n!r}, tables={list(tables)!r} are not allowed: expected n >= 1 and row counts >= 1")
    rng = np.random.default_rng(seed)
    cat = np.empty((n, len(tables)), np.int64)
    logit = np.zeros(n)
    for t, rows in enumerate(tables):
        ranks = zipf_ranks(rng, n, rows, zipf)
        ids = rng.permutation(rows)[ranks]  # (hot ids spread over the table)
        cat[:, t] = ids
        logit += rng.normal(0, 0.5, rows)[ids]
    x = rng.standard_normal((n, dense)).astype(np.float32)
    logit += x @ rng.normal(0, 1 / np.sqrt(max(dense, 1)), dense)
    logit += np.log(0.25 / 0.75) - np.median(logit)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    ceiling = {"auc": auc(y, logit), "logloss": float((np.logaddexp(0, logit) - y * logit).mean())}
    return CTRData({"dense": x, "cat": cat}, y, list(tables), ceiling)


def zipf_ranks(rng: Any, n: int, rows: int, a: float) -> np.ndarray:
    """``n`` ranks in [0, rows) with P(r) ~ (r + 1)^-a (inverse CDF over the finite support)."""
    p = np.arange(1, rows + 1, dtype=np.float64) ** -a
    cdf = np.cumsum(p)
    return np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1]), rows - 1).astype(np.int64)


DENSE, CATS = 13, 26


def criteo(path: str, rows_per_table: int | Sequence[int] = 100_000, limit: int | None = None,
           chunk: int = 65_536) -> CTRData:
    """The Criteo display-advertising TSV format (Kaggle's train.txt, the 1 TB logs; ``.gz``
    too): per line a 0/1 label, 13 integer features, 26 categorical features as hex hashes, tab
    separated, any field possibly empty. Read line by line in chunks (never the file whole):
    integers become log(1 + max(x, 0)) (missing: 0), categories are hashed to ``rows_per_table``
    rows (the hashing trick; missing: its own hash). ``limit``: the first rows only."""
    sizes = [int(rows_per_table)] * CATS if np.isscalar(rows_per_table) else [int(r) for r in rows_per_table]  # type: ignore[arg-type,union-attr]
    if len(sizes) != CATS or min(sizes) < 1:
        raise ValueError(f"rows_per_table={rows_per_table!r} is not allowed: expected a count >= 1 or {CATS} of them")
    mods = np.asarray(sizes, np.int64)
    dense_parts, cat_parts, label_parts = [], [], []
    for lines in _chunks(path, chunk, limit):
        d = np.zeros((len(lines), DENSE), np.float32)
        c = np.empty((len(lines), CATS), np.int64)
        y = np.empty(len(lines), np.int64)
        for i, (lineno, line) in enumerate(lines):
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) != 1 + DENSE + CATS:
                raise ValueError(f"{path}, line {lineno}: {len(fields)} tab-separated fields; the Criteo format has "
                                 f"{1 + DENSE + CATS} (label, {DENSE} integers, {CATS} categories)")
            try:
                y[i] = int(fields[0])
                for j in range(DENSE):
                    v = fields[1 + j]
                    d[i, j] = np.log1p(max(int(v), 0)) if v else 0.0
            except ValueError:
                raise ValueError(f"{path}, line {lineno}: the label and the {DENSE} integer fields must be "
                                 f"integers (got {fields[:1 + DENSE]})") from None
            if y[i] not in (0, 1):
                raise ValueError(f"{path}, line {lineno}: label {y[i]}; expected 0 or 1")
            for j in range(CATS):
                c[i, j] = zlib.crc32(fields[1 + DENSE + j].encode())
        cat_parts.append(c % mods)
        dense_parts.append(d)
        label_parts.append(y)
    if not label_parts:
        raise ValueError(f"{path} holds no rows")
    return CTRData({"dense": np.concatenate(dense_parts), "cat": np.concatenate(cat_parts)},
                   np.concatenate(label_parts), sizes)


def _chunks(path: str, size: int, limit: int | None) -> Iterator[list[tuple[int, str]]]:
    opener: Any = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        buf: list[tuple[int, str]] = []
        for lineno, line in enumerate(fh, 1):
            if limit is not None and lineno > limit:
                break
            if not line.strip():
                continue
            buf.append((lineno, line))
            if len(buf) == size:
                yield buf
                buf = []
        if buf:
            yield buf
