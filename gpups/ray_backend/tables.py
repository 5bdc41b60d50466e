"""Sparse tables over Ray: rows sharded by id over the shard actors, shipped as rows only.

Row ``r`` of a table lives on shard ``r % S`` at local row ``r // S`` (:func:`split`; hot low ids
spread evenly). Each :class:`~.actors.ShardActor` keeps its rows in a
:class:`gpups.tables.TableServer` with their row-wise optimizer state. A worker's
:class:`gpups.tables.TableClient` talks to a :class:`RemoteTables` instead of a local server:
reads fetch only the rows asked for, from the shards that hold them, at least as new as the
version the interval pulled (:meth:`ShardTables.rows` waits for it, so a BSP round reads the
rows of the round before); where the model declares the ids a batch reads (``reads(x)``), the
interval's rows come in one call per shard before it starts. A push sends each shard only its
rows. No process but the driver at the end ever holds a whole table.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Mapping, Sequence

import numpy as np

READ_TIMEOUT = 300.0  # seconds a shard waits for the update a read needs before it gives up


def split(a: np.ndarray, servers: int) -> list[np.ndarray]:
    """A table's rows per shard: shard s holds rows s, s + S, s + 2S, ... (contiguous copies)."""
    return [np.ascontiguousarray(a[s::servers]) for s in range(servers)]


def join(parts: Sequence[np.ndarray], rows: int) -> np.ndarray:
    """The whole table from its shards' rows (the inverse of :func:`split`)."""
    out = np.empty((rows,) + parts[0].shape[1:], parts[0].dtype)
    for s, p in enumerate(parts):
        out[s::len(parts)] = p
    return out


def route(ids: np.ndarray, servers: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each shard: (positions in ``ids`` of its rows, their local row numbers)."""
    if servers == 1:
        return [(np.arange(len(ids)), ids)]
    owner = ids % servers
    out = []
    for s in range(servers):
        pos = np.flatnonzero(owner == s)
        out.append((pos, ids[pos] // servers))
    return out


def split_state(state: Mapping[str, Any], servers: int) -> list[dict[str, Any]]:
    """A TableServer's state (the local backend's checkpoint format) cut into the shards'."""
    out: list[dict[str, Any]] = [{} for _ in range(servers)]
    for name, st in state.items():
        parts = {key: split(np.asarray(v), servers) for key, v in st.items() if key != "step"}
        for s in range(servers):
            out[s][name] = {"step": st["step"], **{key: p[s] for key, p in parts.items()}}
    return out


def join_state(states: Sequence[Mapping[str, Any]], rows: Mapping[str, int]) -> dict[str, Any]:
    """The shards' table states as one (the local backend's checkpoint format). Every shard
    counts the table's updates the same way (see :meth:`gpups.tables.TableServer.apply`)."""
    out: dict[str, Any] = {}
    for name in states[0]:
        keys = [key for key in states[0][name] if key != "step"]
        out[name] = {"step": states[0][name]["step"],
                     **{key: join([st[name][key] for st in states], rows[name]) for key in keys}}
    return out


class ShardTables:
    """What a shard actor adds for the tables: reads that wait for the version they need (they
    run on the host's "rows" threads, beside the updates on its main one)."""

    def __init__(self, server: Any):
        self.server = server  # the shard's ParamServer; its .tables is the TableServer
        self.cond = threading.Condition()

    def updated(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def rows(self, want: Mapping[str, np.ndarray], at_least: int) -> dict[str, np.ndarray]:
        """The local rows ``want[name]`` of each table, once ``at_least`` updates are applied."""
        with self.cond:
            if not self.cond.wait_for(lambda: self.server.version >= at_least, timeout=READ_TIMEOUT):
                raise TimeoutError(f"a table read waited {READ_TIMEOUT:.0f} s for update {at_least} of a server "
                                   f"shard that is at {self.server.version}")
        return {name: self.server.tables.gather(name, ids) for name, ids in want.items()}


class _Spec:
    """A table's shape and dtype for a worker's TableView, with no rows behind it."""

    def __init__(self, rows: int, dim: int, dtype: Any):
        self.w = np.broadcast_to(np.zeros((1, dim), dtype), (rows, dim))  # (zero-strided: no memory)


class RemoteTables:
    """A worker's view of the sharded tables, in the place of the TableServer its TableClient
    reads from and pushes into: ``gather`` fetches rows from the shards (or the interval's
    prefetched ones), ``payloads[j]`` is the push, cut per shard by :meth:`parts`."""

    def __init__(self, shards: Sequence[Any], spec: Mapping[str, tuple[int, int, str]], k: int):
        self.shards, self.servers = list(shards), len(shards)
        self.tables = {name: _Spec(r, d, np.dtype(dt)) for name, (r, d, dt) in spec.items()}
        self.payloads: list[dict[str, tuple[np.ndarray, np.ndarray]]] = [{} for _ in range(k)]
        self.at_least = 0  # the version the interval pulled: reads are at least this new
        self.ahead: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # name: (sorted ids, their rows)
        self.fetches = 0   # calls made to the shards (a test counts them)

    def names(self) -> tuple[str, ...]:
        return tuple(self.tables)

    def begin(self, at_least: int, reads: Callable[[Any], Mapping[str, Any]] | None, batches: Sequence[Any]) -> None:
        """A new interval that pulled version ``at_least``; with ``reads`` (the model's ids per
        table of a batch), every row its ``batches`` read is fetched now, in one call per shard."""
        self.at_least, self.ahead = at_least, {}
        if reads is None or not batches:
            return
        want: dict[str, list[np.ndarray]] = {}
        for x in batches:
            for name, ids in reads(x).items():
                want.setdefault(name, []).append(np.asarray(ids, np.int64).reshape(-1))
        uniq = {name: np.unique(np.concatenate(parts)) for name, parts in want.items() if name in self.tables}
        got = self.fetch(uniq)
        self.ahead = {name: (uniq[name], got[name]) for name in uniq}

    def gather(self, name: str, ids: np.ndarray, locked: bool = True) -> np.ndarray:
        have = self.ahead.get(name)
        if have is not None:
            pos = np.minimum(np.searchsorted(have[0], ids), max(len(have[0]) - 1, 0))
            if len(have[0]) and (have[0][pos] == ids).all():
                return have[1][pos]
        return self.fetch({name: ids})[name]

    def fetch(self, want: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Rows ``want[name]`` (global ids) of each table, from the shards that hold them."""
        import ray

        routes = {name: route(ids, self.servers) for name, ids in want.items()}
        self.fetches += 1
        got = ray.get([sh.rows.remote({name: r[s][1] for name, r in routes.items()}, self.at_least)
                       for s, sh in enumerate(self.shards)])
        out = {}
        for name, ids in want.items():
            dim = self.tables[name].w.shape[1]
            rows = np.empty((len(ids), dim), self.tables[name].w.dtype)
            for s, (pos, _) in enumerate(routes[name]):
                rows[pos] = got[s][name]
            out[name] = rows
        return out

    def parts(self, j: int) -> list[dict[str, tuple[np.ndarray, np.ndarray]]]:
        """Worker j's push cut per shard: each shard's rows (local numbers) and their values.
        A table the push touched goes to every shard, if need be with no rows (each shard then
        counts the update as the unsharded server does)."""
        out: list[dict[str, tuple[np.ndarray, np.ndarray]]] = [{} for _ in range(self.servers)]
        for name, (ids, values) in self.payloads[j].items():
            for s, (pos, local) in enumerate(route(ids, self.servers)):
                out[s][name] = (local, values[pos])
        return out


class DriverTables:
    """The driver's handle on the sharded tables: the whole tables (for ``evaluate`` and the
    result), joined from the shards' rows."""

    def __init__(self, fetch: Callable[[], list[dict[str, np.ndarray]]], rows: Mapping[str, int]):
        self.fetch, self.rows = fetch, dict(rows)
        self.final: dict[str, np.ndarray] | None = None

    def model(self) -> dict[str, np.ndarray]:
        if self.final is not None:
            return self.final
        parts = self.fetch()
        return {name: join([p[name] for p in parts], r) for name, r in self.rows.items()}
