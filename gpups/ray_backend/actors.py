"""The two Ray actors. Each wraps the local backend's own class: a :class:`ShardActor` holds a
:class:`~gpups.server.ParamServer` over its range of the parameters, a :class:`WorkerActor` a
:class:`~gpups.worker.Worker` with its data partition. Only the transport is new: payloads and
parameters travel as numpy arrays through Ray's object store (zero-copy reads on one node).

The roles are plain classes here. Each runs inside a :class:`Host`, the Ray actor class that
:mod:`gpups.ray_backend.run` creates with the run's resources and restart policy: a host takes
its role from the first call of a run (and again after Ray restarted it), so the embedded
instance keeps its hosts warm for the next call in the process (:class:`Role` is the driver's
handle on a host playing a role).
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Sequence

import numpy as np

from ..device import CPUDevice, host
from ..flat import Layout
from ..optim import make_rule
from ..server import ParamServer
from ..worker import Worker
from .tables import RemoteTables, ShardTables


class SpanLog:
    """An actor's side of the run's timeline: spans on this process's ``perf_counter``, drained by
    the driver at each epoch's barrier with the offset that puts them on the wall clock."""

    clock: Any = None  # (host clocks: a GPU actor's spans are its launches)

    def __init__(self) -> None:
        self.raw: list[tuple] = []

    @staticmethod
    def now() -> float:
        return time.perf_counter()

    def span(self, pid: int, tid: int, name: str, t0: float, t1: float, **args: Any) -> None:
        self.raw.append((pid, tid, name, t0, t1, args))

    def drain(self) -> tuple[float, list[tuple]]:
        raw, self.raw = self.raw, []
        return time.time() - time.perf_counter(), raw


class Traced:
    """What both actors do for ``trace=``: keep a :class:`SpanLog` where their server or worker
    records its spans."""

    spans: SpanLog | None = None

    def trace(self) -> None:
        self.spans = SpanLog()
        self._attach(self.spans)

    def drain_spans(self) -> tuple[float, list[tuple]]:
        return self.spans.drain() if self.spans is not None else (0.0, [])

    def _attach(self, spans: SpanLog) -> None:
        raise NotImplementedError


class ShardActor(Traced):
    """Server shard ``index``: the parameters [lo, hi) and their optimizer state."""

    def __init__(self, index: int, layout: Layout, w0: list, agg: Any, hp: dict, k: int, push: str,
                 tables: list | None = None, table_rule: str = "sgd"):
        """``tables``: [the shard's rows of each sparse table] (see :mod:`.tables`)."""
        self.index = index
        w = fetch(w0)[0]
        self.server = ParamServer(CPUDevice(), layout, np.array(w, copy=True), make_rule(agg, hp, layout), k, 1, push)
        self.rows_of: ShardTables | None = None
        if tables is not None:
            from ..tables import TableServer

            # (the object store's arrays are read-only: the TableServer copies them, once)
            self.server.tables = TableServer(fetch(tables)[0], table_rule, hp, k, 1, push, self.server.bad, donate=True)
            self.rows_of = ShardTables(self.server)

    def ready(self) -> int:
        return os.getpid()

    def _attach(self, spans: SpanLog) -> None:
        self.server.trace = spans

    def apply(self, rows: list[int], scale: float, *statuses_then_payloads: Any) -> np.ndarray:
        """One update from the pushes of ``rows`` (their statuses, then their payload slices);
        returns the new parameters (the next pull)."""
        self._receive(rows, statuses_then_payloads)
        try:
            self.server.apply(rows, scale)
        except Exception as exc:  # (a user agg's error: this shard's)
            setattr(exc, "gpups_who", f"server shard {self.index}")  # noqa: B010
            raise
        if self.rows_of is not None:
            self.rows_of.updated()
        return self.server.w

    def _receive(self, rows: Sequence[int], args: Sequence[Any]) -> None:
        n = len(rows)
        for j, status, payload in zip(rows, args[:n], args[n:]):
            if isinstance(payload, tuple):  # (dense slice, this shard's table rows)
                payload, self.server.tables.payloads[j] = payload
            self.server.G[j] = payload
            self.server.bad[0, j] = status["flagged"]

    def rows(self, want: dict[str, np.ndarray], at_least: int) -> dict[str, np.ndarray]:
        """Table rows (local numbers) once ``at_least`` updates are applied (a "rows" thread)."""
        assert self.rows_of is not None
        return self.rows_of.rows(want, at_least)

    def tables(self) -> dict[str, np.ndarray]:
        return self.server.tables.model()

    def pull(self) -> tuple[np.ndarray, int]:
        return self.server.w, self.server.version

    def params(self) -> np.ndarray:
        return self.server.w

    def push_unlocked(self, j: int, scale: float, status: dict, payload: np.ndarray) -> int:
        """HOGWILD: apply worker j's push at once, unordered with the others' (the actor serves
        several calls at a time); returns the version after it."""
        self._receive([j], [status, payload])
        self.server.push_unlocked(self.server.device.rows([j]), scale)
        self.server.count_unlocked()
        if self.rows_of is not None:
            self.rows_of.updated()
        return self.server.version

    def state(self) -> dict[str, Any]:
        return self.server.state_dict()

    def load_state(self, state: dict[str, Any]) -> np.ndarray:
        self.server.load_state_dict(state)
        if self.rows_of is not None:
            self.rows_of.updated()
        return self.server.w


class _Mirror:
    """What a remote :class:`Worker` sees of the server: a parameter-sized template, its own
    payload row and its own non-finite flags (the shards get them with the payload)."""

    def __init__(self, j: int, size: int, dtype: Any, k: int, xp: Any):
        self.w = xp.empty(size, dtype)
        self.G = {j: xp.zeros(size, dtype)}
        self.bad = xp.zeros((3, k), xp.int64)

    def home(self, slot: int) -> "_Mirror":
        return self  # (w, G, bad: a server.Home's fields)

    @staticmethod
    def sender(j: int) -> None:
        return None  # the run sends the payload, through Ray


class WorkerActor(Traced):
    """Worker j with its partition, shipped once. Each call runs one push interval from the
    batch the driver names, so a restarted actor goes on where the run is."""

    def __init__(self, j: int, data: list, layout: Layout, upd: Callable, agg: Any,
                 hp: dict, batchsize: int, push: str, k: int, cuts: list[tuple[int, int]], threads: int,
                 gpu: bool, shards: Sequence[Any] = (), keep_state: bool = False, tolerate: int | None = None,
                 tables: tuple[Sequence[Any], dict, bool] | None = None):
        """``tables``: (the shard roles, {name: (rows, dim, dtype)}, HOGWILD's unlocked reads)
        when the model has sparse tables."""
        limit_threads(threads)
        X, y = fetch(data)
        if gpu:
            from ..gpu import CUDADevice

            self.device: Any = CUDADevice([0])  # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPU
        else:
            self.device = CPUDevice()
        xp = self.device.xp
        self.mirror = _Mirror(j, layout.size, layout.dtype, k, xp)
        self.remote_tables: RemoteTables | None = None
        self.reads: Callable[[Any], dict] | None = None
        client = None
        if tables is not None:
            from ..models.base import model_of
            from ..tables import TableClient

            self.remote_tables = RemoteTables(tables[0], tables[1], k)
            client = TableClient(self.remote_tables, j, tables[2])  # type: ignore[arg-type]
            # the ids a batch reads, where declared: by a built-in model, or as an attribute of upd
            self.reads = getattr(model_of(upd), "reads", None) or getattr(upd, "reads", None)
        self.worker = Worker(j, self.device, X, y, np.arange(len(X)), layout, self.mirror, upd, hp,
                             make_rule(agg, hp, layout), batchsize, push, alias=False, concurrent=False,
                             keep_state=keep_state, tolerate=tolerate, tables=client)
        self.failures: list[str] = []
        self.worker.log = self.failures.append  # (on_worker_error="drop": the driver logs them)
        self.cuts, self.shards, self.j = cuts, list(shards), j
        self.last_end = (-1, 0.0)  # (epoch, when) its last interval ended: the gap to the next is its pull wait

    def ready(self) -> int:
        return os.getpid()

    def _attach(self, spans: SpanLog) -> None:
        self.worker.trace = spans

    def run(self, cursor: int, nsteps: int, epoch: int, version: int, *parts: np.ndarray) -> tuple:
        """Pull ``parts`` (the shards' parameters, ``version`` updates in), run ``nsteps`` batches
        from batch ``cursor``; returns the status, then the payload cut at the shards' ranges."""
        self._waited(epoch)
        self._pull(parts, nsteps)
        self._pull_tables(version, cursor, nsteps)
        status = self._interval(cursor, nsteps, epoch)
        return (status, *self._push())

    def _pull_tables(self, version: int, cursor: int, nsteps: int) -> None:
        """Table reads of the interval are at least ``version``; where the model declares its
        reads, the interval's rows come now."""
        if self.remote_tables is None:
            return
        if self.reads is None:
            self.remote_tables.begin(version, None, [])
            return
        w, bs = self.worker, self.worker.batchsize
        batches = [w.X[b * bs:min((b + 1) * bs, w.n)] for b in range(cursor, min(cursor + nsteps, w.batches))]
        t0 = time.perf_counter()
        self.remote_tables.begin(version, self.reads, batches)
        if self.spans is not None:
            self.spans.span(1, self.j, "pull rows", t0, time.perf_counter())

    def _push(self) -> list[Any]:
        """The payload cut at the shards' ranges (with each shard's table rows)."""
        payload = host(self.worker.payload)
        dense = [payload[lo:hi] for lo, hi in self.cuts]
        if self.remote_tables is None:
            return dense
        return list(zip(dense, self.remote_tables.parts(self.j)))

    def hogwild(self, cursor: int, nsteps: int, epoch: int, scale: float) -> dict:
        """HOGWILD: pull from the shards, run, push to them, with no ordering among workers."""
        import ray

        self._waited(epoch)
        t0 = time.perf_counter()
        pulled = ray.get([sh.pull.remote() for sh in self.shards])
        if self.spans is not None:  # (HOGWILD asks the shards itself)
            self.spans.span(1, self.j, "pull wait", t0, time.perf_counter())
        self._pull([p for p, _ in pulled], nsteps)
        self._pull_tables(0, cursor, nsteps)
        status = self._interval(cursor, nsteps, epoch)
        t0 = time.perf_counter()
        versions = ray.get([sh.push_unlocked.remote(self.j, scale, status, part)
                            for sh, part in zip(self.shards, self._push())])
        if self.spans is not None:
            self.last_end = (epoch, time.perf_counter())
            self.spans.span(1, self.j, "push", t0, self.last_end[1])
        status["staleness"] = max(0, versions[0] - 1 - pulled[0][1])
        return status

    def _waited(self, epoch: int) -> None:
        """Traced: the time since its last interval of this epoch ended is its pull wait (a call
        starts once the parameters it pulls exist)."""
        if self.spans is not None and self.last_end[0] == epoch:
            self.spans.span(1, self.j, "pull wait", self.last_end[1], time.perf_counter())

    def _pull(self, parts: Sequence[np.ndarray], nsteps: int = 0) -> None:
        """The pulled parameters into the replica; or, where the interval only reads them (one
        step, gradients pushed, one shard, on the CPU), used where they lie: no copy."""
        w = self.worker
        if nsteps == 1 and w.push == "gradients" and len(parts) == 1 and self.device.host_memory:
            w.compute_on(parts[0])
            return
        t0 = time.perf_counter()
        w.compute_on(None)
        for (lo, hi), part in zip(self.cuts, parts):
            w.replica[lo:hi] = part if self.device.host_memory else self.device.place(part)
        if w.base is not None:
            w.snapshot_base()
        if self.spans is not None:
            self.spans.span(1, self.j, "pull", t0, time.perf_counter())

    def _interval(self, cursor: int, nsteps: int, epoch: int) -> dict:
        w, bad = self.worker, self.mirror.bad
        w.reset_stats()
        if w.loss_dev is not None:
            w.loss_dev.fill(0)
        w.seek(cursor)
        bad[1:, self.j] = 0
        self.failures.clear()
        try:
            w.run(nsteps, epoch)
        except Exception as exc:  # the driver names the batch, as the local backend does
            setattr(exc, "gpups_where", w.where)  # noqa: B010
            setattr(exc, "gpups_who", f"worker {self.j}")  # noqa: B010
            raise
        self.last_end = (epoch, time.perf_counter())
        flags = [int(v) for v in self.device.to_host(bad[:, self.j])]
        loss = w.mean_loss()
        return {"flagged": flags[0], "skipped": flags[1], "first_bad": flags[2],
                "loss_sum": 0.0 if loss is None else loss * w.loss_count, "loss_count": w.loss_count,
                # on_worker_error="drop": was the push discarded, and why
                "discarded": int(w.pushes == 0), "failed": w.failed, "out": w.out, "log": list(self.failures)}

    def take_rows(self, data: list) -> int:
        """More rows from the next epoch (a dropped worker's, dealt by the driver)."""
        self.worker.take_rows(*fetch(data))
        return self.worker.n

    def local_state(self) -> dict[str, Any]:
        return self.worker.state_dict()

    def load_local_state(self, state: dict[str, Any]) -> None:
        self.worker.load_state_dict(state)


def fetch(items: list) -> list:
    """Arrays passed to an actor's constructor inside a list: ObjectRefs there (the driver keeps
    them alive, so a restarted actor finds them again) or the arrays themselves."""
    if any(type(x).__name__ == "ObjectRef" for x in items):
        import ray

        return [ray.get(x) if type(x).__name__ == "ObjectRef" else x for x in items]
    return list(items)


_LIMITED: list[int] = []  # the share this process was limited to (a pooled host keeps it)


def limit_threads(n: int) -> None:
    """This actor's share of the node: numba's and the BLAS's thread counts (set once per share:
    threadpoolctl inspects every loaded library, a tenth of a second)."""
    if _LIMITED == [n]:
        return
    _LIMITED[:] = [n]
    try:
        import numba

        numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))  # type: ignore[attr-defined]
    except Exception:  # numba missing (numpy kernels) or its layer fixed already
        pass
    from threadpoolctl import threadpool_limits

    threadpool_limits(max(1, n))


class Host:
    """A Ray actor that plays one role (a :class:`ShardActor` or :class:`WorkerActor`) per run.
    Every call names the run's set-up (its id and a ref to the role's class and arguments); a
    host that does not hold that role yet (new, pooled from an earlier call, or restarted by Ray)
    builds it first. So Ray's restarts and retries work as with plain actors, and a host outlives
    its run."""

    def __init__(self) -> None:
        self.role: Any = None
        self.run_id: str | None = None
        self.lock = threading.Lock()  # (HOGWILD's shards serve several calls at a time)

    def call(self, setup: list, method: str, *args: Any) -> Any:
        run_id, ref = setup
        if self.run_id != run_id:
            with self.lock:
                if self.run_id != run_id:
                    import ray

                    cls, cargs, ckw = ray.get(ref)
                    self.role, self.run_id = None, None
                    self.role = cls(*cargs, **ckw)
                    self.run_id = run_id
        return getattr(self.role, method)(*args)

    def call_rows(self, setup: list, method: str, *args: Any) -> Any:
        """A call on the host's "rows" threads (a table read that waits for an update, which
        runs on the main thread meanwhile); made one by :func:`host_class`."""
        return self.call(setup, method, *args)

    def release(self) -> int:
        """The run is over: drop the role (its data and buffers); returns the process id."""
        self.role, self.run_id = None, None
        return os.getpid()


ROWS = ("rows",)  # role methods that run on a host's "rows" threads


def host_class(ray: Any, groups: dict[str, int] | None = None) -> Any:
    """The Ray actor class of :class:`Host`, its ``call_rows`` in the "rows" concurrency group
    of ``groups["rows"]`` threads."""
    if not hasattr(Host.call_rows, "__ray_concurrency_group__"):  # (what ray.method sets: once)
        Host.call_rows = ray.method(concurrency_group="rows")(Host.call_rows)  # type: ignore[method-assign]
    return ray.remote(concurrency_groups=groups or {"rows": 1})(Host)


class Role:
    """The driver's handle on a :class:`Host` playing a role in this run: ``role.run.remote(...)``
    and ``role.run.options(num_returns=n).remote(...)`` call the role's method through the host."""

    def __init__(self, host: Any, setup: list):
        self.host, self.setup = host, setup

    @property
    def _actor_id(self) -> Any:
        return self.host._actor_id

    def __getattr__(self, method: str) -> "_Method":
        if method.startswith("__") or method in ("host", "setup"):  # (unpickling: no state yet)
            raise AttributeError(method)
        if method in ROWS:
            return _Method(self.host.call_rows, self.setup, method)
        return _Method(self.host.call, self.setup, method)


class _Method:
    def __init__(self, call: Any, setup: list, name: str):
        self.call, self.setup, self.name = call, setup, name

    def options(self, **kw: Any) -> "_Method":
        return _Method(self.call.options(**kw), self.setup, self.name)

    def remote(self, *args: Any) -> Any:
        return self.call.remote(self.setup, self.name, *args)
