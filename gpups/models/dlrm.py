"""DLRM (Naumov et al., 2019): the click-through model parameter servers are built for.

A bottom MLP over the dense features, one embedding table per categorical feature, the pairwise
dot products of the bottom output and the embeddings, a top MLP over [bottom output, dots], and
binary cross-entropy on the logit. The MLPs are :mod:`gpups.nn` chains (their backward is the
layers'); the interaction and its backward are a pair of fused numba kernels
(``kernels/cpu_tables.py``: fewer numpy calls, so two worker threads contend less for the GIL).
With ``sparse=True`` each table's gradient is a :class:`gpups.RowGrad` (the rows the batch
read), so the tables are sparse tables of the server; ``sparse=False`` gives the same model
with dense table gradients (the reference).

Features are named columns: ``{"dense": float (n, dense), "cat": int (n, len(tables))}``.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np

from ..columns import Columns
from ..kernels import cpu_tables as K
from ..nn.blocks import Chain
from ..nn.layers import Dense
from ..tables import RowGrad
from .base import Model
from .ops import ops_for


class DLRM(Model):
    classifier = False
    hyperparams: tuple[str, ...] = ()  # type: ignore[assignment]  # (it reads none)

    def __init__(self, dense: int = 13, tables: Sequence[int] = (1000,) * 26, dim: int = 16,
                 bottom: Sequence[int] = (64, 16), top: Sequence[int] = (64,), sparse: bool = True):
        self.n_dense, self.rows, self.dim, self.sparse = int(dense), [int(r) for r in tables], int(dim), bool(sparse)
        if not self.rows or min(self.rows) < 1:
            raise ValueError(f"tables={list(tables)!r} is not allowed: expected a non-empty list of row counts >= 1")
        if not bottom or int(bottom[-1]) != self.dim:
            raise ValueError(f"bottom={tuple(bottom)!r} is not allowed: its last width must be dim={self.dim} (the "
                             "bottom output is dotted with the embeddings)")
        self.bottom_sizes, self.top_sizes = tuple(int(u) for u in bottom), tuple(int(u) for u in top)
        self.bot = Chain([Dense(u, "relu") for u in self.bottom_sizes])
        self.bot.need_dx = False
        self.bot.build((self.n_dense,), "bot.")
        f = len(self.rows) + 1
        self.li, self.lj = np.triu_indices(f, 1)
        self.top = Chain([Dense(u, "relu") for u in self.top_sizes] + [Dense(1)])
        self.top.need_dx = True  # (the interaction's gradient comes through it)
        self.top.build((self.dim + len(self.li),), "top.")
        self.tables = [f"emb{t}" for t in range(len(self.rows))]

    # -- what the Model base asks --------------------------------------------------------------
    @property
    def outputs(self) -> int:
        return 1

    def shapes(self) -> dict[str, tuple[int, ...]]:
        out = {name: s.shape for name, s in {**self.bot.specs(), **self.top.specs()}.items()}
        out.update({name: (r, self.dim) for name, r in zip(self.tables, self.rows)})
        return out

    def buffers(self, n: int) -> dict[str, tuple[int, ...]]:
        return {**self.bot.buffers(n), **self.top.buffers(n)}

    def init(self, seed: int = 0, dtype: Any = np.float32, device: str = "cpu") -> dict[str, Any]:
        """MLP weights He-normal, biases zero; table rows uniform in +-sqrt(1/rows) (DLRM's)."""
        if device != "cpu":
            raise ValueError(f"device={device!r} is not allowed: DLRM runs on the CPU in this release")
        rng = np.random.default_rng(seed)
        params: dict[str, Any] = {}
        for name, spec in {**self.bot.specs(), **self.top.specs()}.items():
            if spec.init == "zeros":
                params[name] = np.zeros(spec.shape, dtype)
            else:
                params[name] = (rng.standard_normal(spec.shape) * np.sqrt(2.0 / spec.shape[0])).astype(dtype)
        for name, r in zip(self.tables, self.rows):
            bound = np.sqrt(1.0 / r)
            params[name] = rng.uniform(-bound, bound, (r, self.dim)).astype(dtype)
        return params

    def check_params(self, params: Any) -> None:
        super().check_params(params)

    def check_hyperparams(self, hp: Any) -> None:
        pass

    def check_data(self, features: Any, labels: Any, prefix: str = "") -> None:
        f, lab = prefix + "features", prefix + "labels"
        arrays = getattr(features, "arrays", None)
        if arrays is None or set(arrays) != {"dense", "cat"}:
            got = sorted(arrays) if arrays is not None else f"an array of shape {tuple(features.shape)}"
            raise ValueError(f"{f} is {got}; {self!r} expects named columns {{'dense': float (n, {self.n_dense}), "
                             f"'cat': int (n, {len(self.rows)})}}")
        d, c = arrays["dense"], arrays["cat"]
        if d.dtype.kind != "f" or d.shape[1:] != (self.n_dense,):
            raise ValueError(f"{f}['dense'] has dtype {d.dtype} and shape {d.shape}; expected floats of shape "
                             f"(n, {self.n_dense})")
        if c.dtype.kind not in "iu" or c.shape[1:] != (len(self.rows),):
            raise ValueError(f"{f}['cat'] has dtype {c.dtype} and shape {c.shape}; expected integer ids of shape "
                             f"(n, {len(self.rows)})")
        top = c.max(axis=0) if len(c) else np.zeros(len(self.rows), np.int64)
        for t, (m, r) in enumerate(zip(top, self.rows)):
            if m >= r:
                row = int(np.argmax(c[:, t]))
                raise ValueError(f"{f}['cat'] column {t} holds the id {int(m)} (row {row}); table {t} has rows [0, {r})")
        y = np.asarray(labels).reshape(len(labels), -1)
        if y.shape[1] != 1 or not np.isin(y, (0, 1)).all():
            raise ValueError(f"{lab} must be 0/1 clicks of shape (n,) or (n, 1); got shape {tuple(np.shape(labels))}"
                             + ("" if y.shape[1] != 1 else f" holding {float(y[~np.isin(y, (0, 1))][0])!r}"))

    # -- forward and backward ------------------------------------------------------------------
    def _forward(self, params: dict[str, Any], x: Any, train: bool) -> tuple[Any, ...]:
        dense, cat = x["dense"], x["cat"]
        W = params[next(iter(self.bot.specs()))]
        ws = self.workspace(np, len(cat), W.dtype)
        ops = ops_for(np)
        ctx = SimpleNamespace(xp=np, train=train, step=0, acts={})
        b = self.bot.forward(params, dense, ws, ops, ctx)                                # (n, dim)
        Z = np.stack([b] + [params[name][cat[:, t]] for t, name in enumerate(self.tables)], axis=1)
        h = np.empty((len(cat), self.dim + len(self.li)), Z.dtype)                        # [b, pairwise dots]
        K.dot_interaction(b, Z, self.li, self.lj, h)
        z = self.top.forward(params, h, ws, ops, ctx)                                    # (n, 1)
        return z, Z, h, b, ws, ops, ctx

    def gradients(self, params: dict[str, Any], x: Any, y: Any, hyperparams: dict | None = None,
                  out: dict[str, Any] | None = None) -> tuple[dict[str, Any], float]:
        """``(grads, loss)`` of a batch: the MLPs' gradients dense (into ``out`` when given),
        each table's a RowGrad of the rows read (``sparse``) or a dense array."""
        z, Z, h, b, ws, ops, ctx = self._forward(params, x, train=True)
        n = z.shape[0]
        out = dict(out or {})
        for name in list(self.bot.specs()) + list(self.top.specs()):
            if name not in out:
                out[name] = np.empty_like(params[name])
        t = np.asarray(y).reshape(n, 1).astype(z.dtype)
        loss = float((np.logaddexp(0, z) - t * z).sum()) / n
        dz = ((1.0 / (1.0 + np.exp(-z)) - t) / n).astype(z.dtype)
        dh = self.top.backward(params, h, z, dz, ws, out, ops, ctx)
        dZ = np.empty_like(Z)
        K.dot_interaction_back(Z, dh, self.li, self.lj, dZ)  # (dZ[:, 0] holds b's whole gradient)
        db = dZ[:, 0]
        self.bot.backward(params, x["dense"], b, np.ascontiguousarray(db), ws, out, ops, ctx)
        cat = x["cat"]
        for k, name in enumerate(self.tables):
            g = RowGrad(np.ascontiguousarray(cat[:, k]), np.ascontiguousarray(dZ[:, k + 1]))
            out[name] = g if self.sparse else g.dense(params[name].shape)
        return out, loss

    def reads(self, x: Any) -> dict[str, Any]:
        """The row ids each table's read of batch ``x`` needs (``sparse``: what a Ray worker
        fetches from the shards before an interval, in one call per shard)."""
        cat = x["cat"]
        return {name: cat[:, t] for t, name in enumerate(self.tables)} if self.sparse else {}

    def logit(self, params: dict[str, Any], x: Any, batch: int = 4096) -> np.ndarray:
        x = x if isinstance(x, Columns) else Columns(x)
        parts = []
        for lo in range(0, len(x), batch):
            parts.append(self._forward(params, x[lo:lo + batch], train=False)[0].reshape(-1).copy())
        return np.concatenate(parts)

    def predict(self, params: dict[str, Any], x: Any) -> Any:
        """Click probabilities."""
        return 1.0 / (1.0 + np.exp(-self.logit(params, x)))

    def evaluate(self, params: dict[str, Any], x: Any, y: Any, batch: int = 4096) -> dict[str, float]:
        """``auc`` (the ranking of clicks over non-clicks) and ``logloss``."""
        v = self.logit(params, x, batch).astype(np.float64)
        t = np.asarray(y).reshape(-1).astype(np.float64)
        return {"auc": auc(t, v), "logloss": float((np.logaddexp(0, v) - t * v).mean())}

    def __repr__(self) -> str:
        return (f"DLRM(dense={self.n_dense}, tables={len(self.rows)}x<={max(self.rows)}, dim={self.dim}, "
                f"bottom={self.bottom_sizes}, top={self.top_sizes}, sparse={self.sparse})")


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half)."""
    labels = np.asarray(labels).reshape(-1)
    order = np.argsort(scores, kind="mergesort")
    _, start, counts = np.unique(np.asarray(scores)[order], return_index=True, return_counts=True)
    ranks = np.repeat(start + (counts + 1) / 2, counts)  # (ties share their mean rank)
    pos = labels[order] > 0.5
    npos, nneg = int(pos.sum()), int((~pos).sum())
    if npos == 0 or nneg == 0:
        return float("nan")
    return float((ranks[pos].sum() - npos * (npos + 1) / 2) / (npos * nneg))
