"""Sparse embedding tables: row-sparse pushes and pulls beside the dense flat parameters.

A parameter whose gradient from ``upd`` is a :class:`RowGrad` is a *table*. Tables never enter
the flat layout: the server keeps each one as a (rows, dim) array with row-wise optimizer state
(:class:`TableServer`); a worker reads rows through a :class:`TableView` (what ``upd`` gets as
``params[name]``: ``view[ids]`` gathers rows) and pushes only the rows it touched, deduplicated
and summed (:class:`TableClient`). No worker holds a replica of a table.

Aggregation is deterministic: pushes are concatenated in worker order, sorted stably by row and
summed segment by segment, so BSP over tables is reproducible bitwise, and each element of a
touched row is updated with the arithmetic of the dense kernels (``kernels/cpu_tables.py``).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import option_error
from .kernels import cpu_tables as K

TABLE_AGGS = ("sgd", "adagrad", "rowwise_adagrad", "adam")
SLOTS = {"sgd": (), "adagrad": ("h",), "rowwise_adagrad": ("h",), "adam": ("m", "v")}
DEFAULTS = {"sgd": {"lr": 0.01}, "adagrad": {"lr": 0.01, "eps": 1e-8}, "rowwise_adagrad": {"lr": 0.01, "eps": 1e-8},
            "adam": {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}}


@dataclass
class RowGrad:
    """A row-sparse gradient: ``values[i]`` is the gradient of row ``rows[i]`` (int64 (m,);
    repeated rows allowed, they are summed)."""

    rows: Any
    values: Any

    def dense(self, shape: tuple[int, ...]) -> np.ndarray:
        """The same gradient as a dense array (for tests and references)."""
        out = np.zeros(shape, np.asarray(self.values).dtype)
        np.add.at(out, np.asarray(self.rows), np.asarray(self.values))
        return out


def table_rule(agg: Any, table_agg: str | None) -> str:
    """The row-wise rule the tables use: ``table_agg``, or the one that means ``agg`` on rows."""
    if table_agg is not None:
        return table_agg
    if isinstance(agg, str) and agg in ("sgd", "adagrad", "adam"):
        return agg
    raise option_error("table_agg", table_agg, f"one of {', '.join(map(repr, TABLE_AGGS))}: agg={agg!r} has no "
                       "row-wise form for the sparse tables (adam is lazy: moments of the touched rows only)")


def check_row_grad(name: str, g: Any, table: Any) -> None:
    """A RowGrad ``upd`` returned for table ``name`` (shape (rows, dim)) is well formed."""
    rows, values = np.asarray(g.rows), np.asarray(g.values)
    dim = table.shape[1]
    if rows.ndim != 1 or rows.dtype.kind not in "iu":
        raise ValueError(f"upd returned RowGrad rows for {name!r} of dtype {rows.dtype} and shape {rows.shape}; "
                         "expected integer row ids of shape (m,)")
    if values.shape != (len(rows), dim):
        raise ValueError(f"upd returned RowGrad values for {name!r} of shape {values.shape}; expected "
                         f"({len(rows)}, {dim}): one row of the table's width per row id")
    if values.dtype != table.dtype:
        raise ValueError(f"upd returned RowGrad values for {name!r} of dtype {values.dtype}; the table is {table.dtype}")
    if len(rows) and (rows.min() < 0 or rows.max() >= table.shape[0]):
        bad = int(rows[(rows < 0) | (rows >= table.shape[0])][0])
        raise ValueError(f"upd returned a RowGrad for {name!r} with row id {bad}; the table has rows "
                         f"[0, {table.shape[0]})")
    if not np.isfinite(values).all():
        raise ValueError(f"upd returned a non-finite RowGrad for {name!r} on the first batch (NaN or Inf)")


@dataclass
class ServerTable:
    """One table on the server: its rows, its row-wise optimizer state, its lock."""

    name: str
    w: np.ndarray
    state: dict[str, np.ndarray]
    step: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def donatable(a: Any) -> bool:
    """Whether the server may keep ``a`` itself as a table (``donate=True``)."""
    return isinstance(a, np.ndarray) and a.flags.c_contiguous and a.flags.writeable and a.ndim == 2


class TableServer:
    """The server's tables. ``apply(rows, scale)`` aggregates the pushes of workers ``rows`` (the
    unflagged ones, as the dense kernels do) and updates every touched row once."""

    def __init__(self, tables: Mapping[str, Any], rule: str, hp: Mapping[str, Any], k: int, servers: int,
                 push: str, bad: np.ndarray, donate: bool = False):
        """``donate``: keep the caller's arrays as the server's copy (where they can be)."""
        self.rule, self.push, self.k, self.servers, self.bad = rule, push, k, servers, bad
        self.hp = {**DEFAULTS[rule], **{key: v for key, v in hp.items() if key in DEFAULTS[rule]}}
        self.tables: dict[str, ServerTable] = {}
        for name, a in tables.items():
            w = a if donate and donatable(a) else np.array(a, copy=True, order="C")  # the server's copy: allocated once
            shape = (w.shape[0], 1) if rule == "rowwise_adagrad" else w.shape
            # (np.full writes every page now: np.zeros maps them lazily, and the first touch of each
            # page by a row update would then fault inside the training loop)
            self.tables[name] = ServerTable(name, w, {s: np.full(shape, 0, w.dtype) for s in SLOTS[rule]})
        self.payloads: list[dict[str, tuple[np.ndarray, np.ndarray]]] = [{} for _ in range(k)]
        self.row_updates = 0  # rows updated so far (the bench's server row updates/s)

    def names(self) -> tuple[str, ...]:
        return tuple(self.tables)

    def gather(self, name: str, ids: np.ndarray, locked: bool = True) -> np.ndarray:
        t = self.tables[name]
        out = np.empty((len(ids), t.w.shape[1]), t.w.dtype)
        if locked:
            with t.lock:
                K.gather(t.w, ids, out)
        else:
            K.gather(t.w, ids, out)
        return out

    def apply(self, rows: Sequence[int], scale: float, after: Sequence[Any] = (), locked: bool = True) -> None:
        for ev in after:  # (on the CPU the dense shards waited already: these are done)
            ev.synchronize()
        good = [int(j) for j in rows if self.bad[0, int(j)] == 0]
        if not good:
            return
        for t in self.tables.values():
            dt = t.w.dtype.type
            s = float(dt(scale)) * len(rows) / len(good)  # (the dense kernels' mean over good rows)
            # (a table's update count, lazy adam's step: the rounds that pushed rows of it. A
            # push holds a table only with rows; one cut per row shard holds it on every shard)
            present = [self.payloads[j][t.name] for j in good if t.name in self.payloads[j]]
            if not present:
                continue
            pieces = [p for p in present if len(p[0])]
            if len(pieces) <= 1:
                u, g = pieces[0] if pieces else (None, None)
            else:
                u, g = K.dedup(np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces]))
            if locked:
                with t.lock:
                    self._update(t, u, g, s)
            else:
                self._update(t, u, g, s)
            self.row_updates += 0 if u is None else len(u)

    def _update(self, t: ServerTable, u: np.ndarray | None, g: np.ndarray | None, scale: float) -> None:
        dt, hp = t.w.dtype.type, self.hp
        t.step += 1
        if u is None:  # (this shard holds none of the rows pushed)
            return
        if self.push == "model":  # deltas of the rows: w += scale * sum(deltas)
            K.sgd(t.w, u, g, scale, dt(-1.0))
        elif self.rule == "sgd":
            K.sgd(t.w, u, g, scale, dt(hp["lr"]))
        elif self.rule == "adagrad":
            K.adagrad(t.w, t.state["h"], u, g, scale, dt(hp["lr"]), dt(hp["eps"]))
        elif self.rule == "rowwise_adagrad":
            K.rowwise_adagrad(t.w, t.state["h"], u, g, scale, dt(hp["lr"]), dt(hp["eps"]))
        else:
            b1, b2 = hp["beta1"], hp["beta2"]
            K.lazy_adam(t.w, t.state["m"], t.state["v"], u, g, scale, dt(hp["lr"]), dt(b1), dt(b2), dt(hp["eps"]),
                        dt(1.0 / (1.0 - b1 ** t.step)), dt(1.0 / (1.0 - b2 ** t.step)))

    def model(self) -> dict[str, np.ndarray]:
        return {name: t.w for name, t in self.tables.items()}

    def state_dict(self) -> dict[str, Any]:
        return {name: {"w": t.w.copy(), "step": t.step, **{s: a.copy() for s, a in t.state.items()}}
                for name, t in self.tables.items()}

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        for name, t in self.tables.items():
            saved = d[name]
            t.w[...] = saved["w"]
            t.step = int(saved["step"])
            for s, a in t.state.items():
                a[...] = saved[s]


class TableView:
    """What ``upd`` gets for a table: ``view[ids]`` is the rows ``ids`` (a new array, shape
    ``ids.shape + (dim,)``), as pulled for this interval; ``shape`` and ``dtype`` as the table's."""

    def __init__(self, client: "TableClient", name: str):
        self.client, self.name = client, name
        w = client.server.tables[name].w
        self.shape, self.dtype, self.ndim = w.shape, w.dtype, 2

    def __getitem__(self, ids: Any) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"params[{self.name!r}] is a sparse table: index it with integer row ids, not {ids.dtype}")
        flat = ids.reshape(-1).astype(np.int64, copy=False)
        if len(flat) and (flat.min() < 0 or flat.max() >= self.shape[0]):
            bad = int(flat[(flat < 0) | (flat >= self.shape[0])][0])
            raise IndexError(f"row id {bad} of params[{self.name!r}], a table of {self.shape[0]} rows")
        return self.client.rows(self.name, flat).reshape(ids.shape + (self.shape[1],))

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"TableView({self.name!r}, rows={self.shape[0]}, dim={self.shape[1]}, {self.dtype})"


class TableClient:
    """Worker j's side of the tables: the rows its interval reads (pulled on first read; with
    local steps or push='model' kept in a row cache that the local SGD steps update), and its
    push (the rows it touched, deduplicated and summed, or their model deltas)."""

    def __init__(self, server: TableServer, j: int, unlocked: bool):
        self.server, self.j, self.unlocked = server, j, unlocked
        self.views = {name: TableView(self, name) for name in server.names()}
        self.local = False
        self.begin(False)

    def begin(self, local: bool) -> None:
        """A new interval: nothing pulled yet; ``local``: its steps update the cached rows."""
        self.local = local
        self.cache: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # name: (ids, rows, as pulled)
        self.acc: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def rows(self, name: str, ids: np.ndarray) -> np.ndarray:
        if not self.local:  # one step: read the server's rows as they are (BSP: nothing changes them)
            return self.server.gather(name, ids, locked=not self.unlocked)
        have = self.cache.get(name)
        want = np.unique(ids)
        if have is not None:
            want = want[~np.isin(want, have[0], assume_unique=True)]
        if len(want):
            got = self.server.gather(name, want, locked=not self.unlocked)
            if have is None:
                have = (want, got, got.copy())
            else:
                order = np.argsort(np.concatenate([have[0], want]), kind="stable")
                have = tuple(np.concatenate([h, x])[order] for h, x in zip(have, (want, got, got)))  # type: ignore[assignment]
            self.cache[name] = have  # type: ignore[assignment]
        cached = self.cache[name]
        return cached[1][np.searchsorted(cached[0], ids)]

    def take(self, name: str, g: RowGrad) -> tuple[np.ndarray, np.ndarray]:
        """One step's gradient for table ``name``: deduplicated, added to the interval's push."""
        u, v = K.dedup(np.asarray(g.rows, np.int64), np.asarray(g.values))
        acc = self.acc.get(name)
        if acc is None:
            self.acc[name] = (u, v)
        else:  # (the interval's sum so far first: the dense payload's order of additions)
            self.acc[name] = K.dedup(np.concatenate([acc[0], u]), np.concatenate([acc[1], v]))
        return u, v

    def local_step(self, name: str, u: np.ndarray, v: np.ndarray, lr: float) -> None:
        """A local SGD step on the cached rows ``u`` (they were read this interval)."""
        ids, rows, _ = self.cache.get(name, (np.empty(0, np.int64), np.empty((0, 0)), None))
        pos = np.minimum(np.searchsorted(ids, u), len(ids) - 1)
        if len(u) and (len(ids) == 0 or (ids[pos] != u).any()):
            raise ValueError(f"upd returned a RowGrad for {name!r} with rows it did not read this step "
                             f"(row {int(u[ids[pos] != u][0]) if len(ids) else int(u[0])}): a table's gradient "
                             "covers the rows read from params[name]")
        K.sgd(rows, pos, v, 1.0, rows.dtype.type(lr))

    def finish(self, push: str) -> bool:
        """The interval's push into the server's slot for worker j; False if it holds NaN/Inf."""
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if push == "model":
            for name, (ids, rows, pulled) in self.cache.items():
                out[name] = (ids, rows - pulled)
        else:
            out = self.acc
        out = {name: p for name, p in out.items() if len(p[0])}  # (a table holds rows, or is not pushed)
        self.server.payloads[self.j] = out
        return all(bool(np.isfinite(v).all()) for _, v in out.values())
