"""``backend="ray"``: the same run, policies and epoch loop, over Ray actors.

:class:`RayBackend` is the :class:`gpups.seams.Backend` that the run's epoch loop drives: its
server is a :class:`RemoteServer` (one :class:`~.actors.ShardActor` per shard) and its workers
are :class:`RemoteWorker` proxies (the host bookkeeping here, a :class:`~.actors.WorkerActor`
doing the work). The sync policies do not
change: an event is the ObjectRef of a worker's push, ``wait_any`` is ``ray.wait``, and a pull
is the ObjectRefs of the shards' newest parameters, passed to the worker's next call. Ray runs
a task once its arguments exist, so BSP's whole epoch is submitted ahead, as on a GPU.

Faults: a worker actor that dies is restarted by Ray. BSP and HOGWILD calls are retried by Ray
on the new process with the same arguments (BSP: the parameters of the round it was in; HOGWILD
pulls anew); ASP, SSP and SBP calls are resubmitted by the driver with the server's current
parameters. A server shard that dies is restarted too, and the run goes back to the newest
checkpoint (or the start) and redoes the epoch. Restarts are bounded: past them, the run stops
with the actor's error.
"""
from __future__ import annotations

import collections
import contextlib
import time
import uuid
from typing import Any, Callable, Sequence

import numpy as np

from ..columns import concat_rows
from ..device import CPUDevice
from ..errors import WorkerError
from ..flat import Layout
from ..optim import make_rule
from ..runtime import log
from ..streams import InlineStream, StreamError
from ..worker import Accounts
from .actors import Role, ShardActor, WorkerActor, host_class
from .cluster import POOL, Cluster, pooled, share, ship_by_value, unship
from .tables import DriverTables, join_state, split, split_state

RESTARTS = 3          # per actor
READY_TIMEOUT = 300.0  # seconds for every actor to be placed and started
AHEAD = 32            # rounds of calls submitted ahead of the oldest unfinished one


class RayEvent:
    """A call in flight: its ObjectRef, who makes it, and (arrival policies) how to resubmit it
    when the worker died. ``names`` maps actor ids to "worker j" / "server shard s", so that an
    error is blamed on the actor that died, not on whoever waited for it."""

    __slots__ = ("ref", "who", "retry", "ray", "names", "booked")

    def __init__(self, ray: Any, ref: Any, who: str, names: dict[str, str],
                 retry: Callable[[int], None] | None = None):
        self.ray, self.ref, self.who, self.names, self.retry = ray, ref, who, names, retry
        self.booked = 0  # a worker call: the samples its interval books

    def synchronize(self, timeout: float | None = None) -> Any:
        """The call's result. A failure raises :class:`StreamError` naming the actor that
        failed; if that is this call's worker and it may be resubmitted, it is, until the
        restarts run out."""
        attempt = unavailable = 0
        while True:
            try:
                return self.ray.get(self.ref, timeout=timeout)
            except self.ray.exceptions.RayError as exc:
                actor = getattr(exc, "actor_id", None)
                # (a role's own error names it: a call that failed because an argument did, e.g. a
                # BSP worker's pull of a round whose other push failed, carries that error)
                who = getattr(getattr(exc, "cause", None), "gpups_who", None) or self.names.get(
                    actor if isinstance(actor, str) else getattr(actor, "hex", lambda: "")(), self.who)
                died = isinstance(exc, self.ray.exceptions.RayActorError)
                # (a call that reached the actor while Ray was restarting it: not a restart of its own)
                busy = isinstance(exc, self.ray.exceptions.ActorUnavailableError) and unavailable < 10 * RESTARTS
                if not (died and who == self.who and self.retry is not None and (busy or attempt < RESTARTS)):
                    cause = getattr(exc, "cause", None)  # a task's own exception, unwrapped
                    raise StreamError(who, cause if isinstance(cause, Exception) else exc) from exc
                if busy:
                    unavailable += 1
                    time.sleep(0.05)
                else:
                    attempt += 1
                self.retry(attempt)


class RayDevice(CPUDevice):
    """The driver's side: host arrays, and ``ray.wait`` for the arrival policies."""

    kind = "ray"

    def __init__(self, ray: Any):
        super().__init__()
        self.ray = ray
        res = ray.cluster_resources()
        self.description = (f"ray ({len(ray.nodes())} node(s), {res.get('CPU', 0):g} CPU, "
                            f"{res.get('GPU', 0):g} GPU)")

    def wait_any(self, events: Sequence[Any]) -> list[int]:
        refs = [e.ref for e in events]
        self.ray.wait(refs, num_returns=1)
        ready = set(self.ray.wait(refs, num_returns=len(refs), timeout=0)[0])
        return [i for i, r in enumerate(refs) if r in ready]

    def describe(self) -> str:
        return self.description

    def compute_threads(self, k: int) -> Any:
        """The workers are other processes, each limited to its share (``limit_threads``)."""
        return contextlib.nullcontext()


class RemoteServer:
    """The driver's handle on the shard actors: the refs of their newest parameters, the
    pending pushes, and the version count the policies measure staleness in."""

    def __init__(self, ray: Any, actors: list[Any], cuts: list[tuple[int, int]], k: int):
        self.ray, self.actors, self.cuts = ray, actors, cuts
        self.current: list[Any] = []   # refs: each shard's newest parameters
        self.pending: dict[int, tuple[Any, list[Any]]] = {}  # worker -> (status, payload slices)
        self.version = 0
        self.bad = np.zeros((3, k), np.int64)
        self.update_seconds = 0.0
        self.final: np.ndarray | None = None
        self.names: dict[str, str] = {a._actor_id.hex(): f"server shard {s}" for s, a in enumerate(actors)}
        self.tables: DriverTables | None = None  # the sparse tables, sharded by row over the same actors

    def shard_tables(self) -> list[dict[str, np.ndarray]]:
        return [self._get(a.tables.remote(), s) for s, a in enumerate(self.actors)]

    def event(self, ref: Any, who: str, retry: Callable[[int], None] | None = None) -> RayEvent:
        return RayEvent(self.ray, ref, who, self.names, retry)

    def apply(self, rows: Sequence[int], scale: float, after: Sequence[Any] = (),
              pull_into: Any = None, slot: int = 0) -> list[RayEvent]:
        rows = [int(j) for j in rows]
        statuses = [self.pending[j][0] for j in rows]
        self.current = [a.apply.remote(rows, scale, *statuses, *[self.pending[j][1][s] for j in rows])
                        for s, a in enumerate(self.actors)]
        self.version += 1
        return [] if pull_into is None else self.pull()

    def pull(self, dst: Any = None, slot: int = 0) -> list[RayEvent]:
        """The shards' newest parameters: refs a worker's next call takes as arguments."""
        return [self.event(r, f"server shard {s}") for s, r in enumerate(self.current)]

    @property
    def w(self) -> np.ndarray:
        if self.final is not None:  # the run is over (and Ray may be too)
            return self.final
        return np.concatenate([self._get(r, s) for s, r in enumerate(self.current)])

    def model(self) -> np.ndarray:
        return self.w

    def flags(self) -> np.ndarray:
        return self.bad

    def _get(self, ref: Any, s: int) -> Any:
        return self.event(ref, f"server shard {s}").synchronize()

    def synchronize(self) -> None:
        for s, r in enumerate(self.current):
            self._get(r, s)

    def state_dict(self) -> dict[str, Any]:
        """The local backend's format: a checkpoint resumes on either backend."""
        out: dict[str, Any] = {"version": self.version, "bad": self.bad.copy()}
        ws, tables = [], []
        for s, a in enumerate(self.actors):
            st = self._get(a.state.remote(), s)
            ws.append(st.pop("w"))
            if "tables" in st:
                tables.append(st.pop("tables"))
            out.update({key.replace("shard0.", f"shard{s}.", 1): v for key, v in st.items() if key.startswith("shard0.")})
        out["w"] = np.concatenate(ws)
        if tables and self.tables is not None:
            out["tables"] = join_state(tables, self.tables.rows)
        return out

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.version = int(d["version"])
        self.bad[...] = d["bad"]
        refs = []
        tables = split_state(d["tables"], len(self.actors)) if self.tables is not None else None
        for s, (a, (lo, hi)) in enumerate(zip(self.actors, self.cuts)):
            st = {"w": d["w"][lo:hi], "version": self.version, "bad": d["bad"]}
            if tables is not None:
                st["tables"] = tables[s]
            st.update({key.replace(f"shard{s}.", "shard0.", 1): v for key, v in d.items() if key.startswith(f"shard{s}.")})
            refs.append(a.load_state.remote(st))
        self.current = refs
        self.pending.clear()
        self.synchronize()


class RemoteWorker(Accounts):
    """Driver-side proxy of a worker actor: the bookkeeping the policies read, and the calls
    in flight this epoch (their statuses are folded in at the barrier)."""

    def __init__(self, j: int, actor: Any, n: int, batchsize: int):
        self.j, self.actor, self.n, self.batchsize = j, actor, n, batchsize
        self.batches = -(-n // batchsize)
        self.stream = InlineStream(f"worker {j}")  # HOGWILD's launches run here, on the driver
        self.replica = object()  # a token: "pull into this worker" (the pull is an argument)
        self.base = None
        self.cursor = self.pulled = self.epoch = 0
        self.where = ""
        self.calls: list[RayEvent] = []
        self.failures = 0  # on_worker_error="drop": all its failures so far (a restarted actor forgets its own)
        self.reset_stats()

    def start_epoch(self) -> None:
        self.calls = []


class RayBackend:
    """Implements :class:`gpups.seams.Backend` over Ray actors: one :class:`ShardActor` per
    shard, one :class:`WorkerActor` per worker; the driver holds :class:`RemoteWorker` proxies
    and a :class:`RemoteServer`."""

    restarts = True  # a dead actor loses its state: the run keeps its start to go back to

    def __init__(self, opts: Any, layout: Layout, init_flat: np.ndarray, features: Any, labels: Any,
                 parts: list[np.ndarray], upd: Callable, hp: dict, device: str, tables: dict[str, Any] | None = None):
        """``tables``: the model's sparse tables (name: array), sharded by row over the shards."""
        self.tables = tables or {}
        self.cluster = Cluster(opts.ray_address)
        self.actors: list[Any] = []  # Roles
        self.hosts: list[tuple[tuple, Any]] = []  # (options, host) of every host this run took
        self.run_id = uuid.uuid4().hex
        self.failed = False
        self.shipped: list[Any] = []
        self.final: np.ndarray | None = None
        try:
            self._build(opts, layout, init_flat, features, labels, parts, upd, hp, device)
        except BaseException:
            self.failed = True
            self.close()
            raise

    def _build(self, opts: Any, layout: Layout, init_flat: np.ndarray, features: Any, labels: Any,
               parts: list[np.ndarray], upd: Callable, hp: dict, device: str) -> None:
        ray = self.ray = self.cluster.ray
        self.shipped = ship_by_value(ray)  # user functions in modules the actors cannot import
        self.opts = opts
        self.device = RayDevice(ray)
        policy = opts.policy
        k = opts.k
        cuts = layout.shards(opts.servers, whole_tensors=make_rule(opts.agg, hp).whole_tensors)
        # arrays go to the roles as refs (inside a list, fetched by the host): the driver keeps
        # them alive for the run, so a restarted host finds them again
        self.data_refs: list[Any] = [ray.put(np.ascontiguousarray(init_flat[lo:hi])) for lo, hi in cuts]
        hosts = self.take(len(cuts), num_cpus=0, max_restarts=RESTARTS, max_task_retries=0,
                          max_concurrency=k if policy.unlocked else 1, concurrency_groups={"rows": k})
        table_args: list[tuple] = [()] * len(cuts)
        if self.tables:  # each shard's rows of every table (row r on shard r % servers)
            from ..tables import table_rule

            per = {name: split(np.asarray(a), len(cuts)) for name, a in self.tables.items()}
            refs = [ray.put({name: p[s] for name, p in per.items()}) for s in range(len(cuts))]
            del per
            self.data_refs += refs
            table_args = [([refs[s]], table_rule(opts.agg, opts.table_agg)) for s in range(len(cuts))]
        shards = [self.role(h, ShardActor, s, layout.sub(lo, hi), [self.data_refs[s]], opts.agg, hp, k, opts.push,
                            *table_args[s]) for s, (h, (lo, hi)) in enumerate(zip(hosts, cuts))]
        self.actors += shards
        cpus = share(self.cluster.node_resources("CPU"), k)
        gpus = share(self.cluster.node_resources("GPU"), k) if device != "cpu" else 0.0
        if device == "cuda" and not gpus:
            raise ValueError("device='cuda' is not allowed with backend='ray' here: the Ray cluster has no GPU "
                             "for the workers; use device='auto' or 'cpu'")
        if not cpus:
            raise ValueError(f"k={k} workers do not fit on this Ray cluster's CPUs "
                             f"({self.cluster.node_resources('CPU')})")
        # a call that means "this round's model" (BSP, HOGWILD) is retried by Ray itself with its
        # own arguments; the arrival policies resubmit with the current model (RayEvent.retry)
        retries = RESTARTS if policy.retry_same_args else 0
        hosts = self.take(k, num_cpus=cpus, num_gpus=min(gpus, 1.0), max_restarts=RESTARTS, max_task_retries=retries,
                          max_concurrency=1, concurrency_groups={"rows": 1})
        ys = np.asarray(labels)
        data = [[ray.put(contiguous(features[rows])), ray.put(ys[rows])] for rows in parts]
        spec = {name: (a.shape[0], a.shape[1], str(a.dtype)) for name, a in self.tables.items()}
        self.data_refs += [r for pair in data for r in pair]
        self.drop = opts.on_worker_error == "drop"
        self.tolerate = opts.max_worker_failures if self.drop else None
        self.worker_args = [((j, data[j], layout, upd, opts.agg, hp, opts.batchsize, opts.push, k, cuts,
                              max(1, int(cpus)), gpus > 0, shards if policy.unlocked else ()),
                             {"keep_state": opts.nonfinite == "skip" or self.drop, "tolerate": self.tolerate,
                              "tables": (shards, spec, policy.unlocked) if spec else None})
                            for j in range(k)]
        actors = [self.role(hosts[j], WorkerActor, *a, **kw) for j, (a, kw) in enumerate(self.worker_args)]
        self.held = [[pair] for pair in data]  # each worker's rows, as (features, labels) refs
        self.actors += actors
        try:
            pids = ray.get([a.ready.remote() for a in self.actors], timeout=READY_TIMEOUT)
        except ray.exceptions.GetTimeoutError:
            raise TimeoutError(f"backend='ray': the {len(self.actors)} actors were not all placed within "
                               f"{READY_TIMEOUT:.0f} s (cluster resources: {ray.available_resources()})") from None
        # the actors' processes at the start (what a test that kills one of them needs, no more)
        self.pids = dict(zip([f"server shard {s}" for s in range(len(shards))] + [f"worker {j}" for j in range(k)],
                             pids))
        self.server = RemoteServer(ray, shards, cuts, k)
        self.server.names.update({a._actor_id.hex(): f"worker {j}" for j, a in enumerate(actors)})
        self.server.current = self.data_refs[:len(cuts)]
        if self.tables:
            self.server.tables = DriverTables(self.server.shard_tables, {n: a.shape[0] for n, a in self.tables.items()})
        self.workers = [RemoteWorker(j, a, len(rows), opts.batchsize) for j, (a, rows) in enumerate(zip(actors, parts))]
        self.in_flight: collections.deque = collections.deque()
        self.recovered = {"restarts": 0, "resubmitted": 0, "recovery_seconds": 0.0}  # since the last record
        self.died: list[int] = []  # workers found dead this epoch (counted as failures at the barrier)
        self.trace: Any = None
        self.last_states: dict[int, dict[str, Any]] = {}  # a dead worker's local state, as last read

    def take(self, n: int, **options: Any) -> list[Any]:
        """``n`` actor hosts with these Ray options: idle ones of the embedded instance first
        (each checked alive), new ones for the rest."""
        key = tuple(sorted((name, repr(v)) for name, v in options.items()))
        idle = POOL.get(key, []) if pooled() else []
        reused = [idle.pop() for _ in range(min(n, len(idle)))]
        alive = []
        for h in reused:
            try:
                self.ray.get(h.release.remote(), timeout=30)
                alive.append(h)
            except (self.ray.exceptions.RayError, self.ray.exceptions.GetTimeoutError):
                with contextlib.suppress(Exception):
                    self.ray.kill(h)
        groups = options.pop("concurrency_groups", None)  # (Ray takes them at the class, not in .options)
        cls = host_class(self.ray, groups).options(**options)
        hosts = alive + [cls.remote() for _ in range(n - len(alive))]
        self.hosts += [(key, h) for h in hosts]
        return hosts

    def role(self, host: Any, cls: type, *args: Any, **kw: Any) -> Role:
        """``host`` playing ``cls(*args, **kw)`` in this run (built by its first call)."""
        ref = self.ray.put((cls, args, kw))
        self.data_refs.append(ref)
        return Role(host, [self.run_id, ref])

    # -- what the run asks ---------------------------------------------------------------------
    def start(self, j: int, nsteps: int, epoch: int, pulled: list | None) -> RayEvent:
        w = self.workers[j]
        w.pulled = self.server.version
        parts = [e.ref for e in pulled] if pulled is not None else list(self.server.current)
        b0 = w.account(nsteps, epoch)
        ev = self.server.event(None, f"worker {j}")
        ev.booked = w.booked

        def submit(parts: list[Any]) -> None:
            refs = w.actor.run.options(num_returns=1 + len(parts)).remote(b0, nsteps, epoch, w.pulled, *parts)
            ev.ref = refs[0]
            self.server.pending[j] = (refs[0], refs[1:])

        def resubmit(restart: int) -> None:  # the actor died mid-call: its restart starts from the current model
            self.recovered["resubmitted"] += 1
            w.pulled = self.server.version
            log(f"gpups: worker {j} died in epoch {epoch + 1}; Ray restarts it ({restart} of {RESTARTS}) and "
                "it goes on from the server's current model")
            submit(list(self.server.current))

        submit(parts)
        if not self.opts.policy.retry_same_args:
            ev.retry = resubmit
        w.calls.append(ev)
        self.throttle(ev)
        return ev

    def start_unlocked(self, j: int, nsteps: int, epoch: int, scale: float) -> None:
        w = self.workers[j]
        b0 = w.account(nsteps, epoch)
        ref = w.actor.hogwild.remote(b0, nsteps, epoch, scale)
        w.calls.append(self.server.event(ref, f"worker {w.j}"))
        w.calls[-1].booked = w.booked
        self.throttle(w.calls[-1])
        self.server.version += 1

    def throttle(self, ev: RayEvent) -> None:
        """BSP and HOGWILD submit ahead; past ``AHEAD`` rounds, wait for the oldest call to end,
        so that a long epoch does not pile up tasks in Ray (errors surface at the barrier)."""
        self.in_flight.append(ev)
        while len(self.in_flight) > AHEAD * len(self.workers):
            self.ray.wait([self.in_flight.popleft().ref])

    def run_epoch(self, epoch: Callable[[], None], restore: Callable[[], int | None]) -> None:
        """An epoch; if a server shard died in it, back to the newest checkpoint and again. With
        on_worker_error="drop", a worker actor past Ray's restarts leaves the run, and the epoch
        is done again without it (from the newest checkpoint, or from where the server is)."""
        attempt = 0
        while True:
            t0 = time.perf_counter()
            try:
                return epoch()
            except StreamError as err:
                dead = self.dead_workers() if self.drop else []
                if dead:
                    self.go_on_without(dead, err, restore)
                    self.recovered["recovery_seconds"] += time.perf_counter() - t0
                    continue
                if not err.stream_name.startswith("server shard") or attempt == RESTARTS:
                    raise
                attempt += 1
                self.settle(READY_TIMEOUT)  # (the lost attempt's calls: not retried, not reported)
                done = restore()
                self.recovered["restarts"] += 1
                self.recovered["recovery_seconds"] += time.perf_counter() - t0  # the lost attempt and the restore
                if done is None:
                    raise WorkerError(err.stream_name, f"{type(err.exc).__name__}: {err.exc} (with checkpoint= "
                                      "a restarted shard restores the newest checkpoint and the run goes on)"
                                      ) from err.exc
                log(f"gpups: {err.stream_name} died ({type(err.exc).__name__}); Ray restarts it and the run "
                    f"goes back to the end of epoch {done}")

    def dead_workers(self) -> list[int]:
        """The workers whose actors Ray has given up on (their restarts used up)."""
        dead = []
        for w in self.workers:
            if w.out:
                continue
            try:
                self.ray.get(w.actor.ready.remote(), timeout=READY_TIMEOUT)
            except self.ray.exceptions.RayActorError:
                dead.append(w.j)
            except self.ray.exceptions.GetTimeoutError:
                pass
        return dead

    def go_on_without(self, dead: list[int], err: StreamError, restore: Callable[[], int | None]) -> None:
        """on_worker_error="drop": ``dead`` leave the run (their rows go to the others at the
        epoch's start); the calls in flight are let finish, and the server goes back to the
        newest checkpoint, or, without checkpoints, stays where its last update left it (the
        epoch is then done again from there)."""
        for j in dead:
            w = self.workers[j]
            w.out = True
            self.died.append(j)
            log(f"gpups: worker {j} died in epoch {w.epoch + 1} and Ray's {RESTARTS} restarts are used up "
                f"({type(err.exc).__name__}); the run goes on without it and does the epoch again")
        self.settle(READY_TIMEOUT)
        if restore() is None:  # the shards' parameters where they are, and their version count
            self.server.current = [a.params.remote() for a in self.server.actors]
            self.server.version = int(self.server.event(self.server.actors[0].pull.remote(),
                                                         "server shard 0").synchronize()[1])

    def barrier(self, progress: Any) -> None:
        """Every call of the epoch done: fold their statuses into the workers' accounts."""
        self.wait_calls(progress)
        self.in_flight.clear()
        for w in self.workers:
            for ev in w.calls:
                st = ev.synchronize()
                w.loss_host += st["loss_sum"]
                w.loss_count += st["loss_count"]
                self.server.bad[1, w.j] += st["skipped"]
                if st["first_bad"] and not self.server.bad[2, w.j]:
                    self.server.bad[2, w.j] = st["first_bad"]
                if "staleness" in st:
                    w.staleness.append(st["staleness"])
                if st["discarded"]:  # (on_worker_error="drop": as the local Worker.discard books it)
                    w.pushes -= 1
                    w.samples -= ev.booked
                for line in st["log"]:
                    log(line)
                w.failed += st["failed"]
                w.failures += st["failed"]
                w.out = w.out or st["out"] or (self.tolerate is not None and w.failures > self.tolerate)
            w.calls = []
        for j in self.died:
            self.workers[j].failed += 1
            self.workers[j].failures += 1
        self.died = []
        if self.trace is not None:
            self.collect_spans()
        if self.opts.policy.unlocked:  # the workers pushed to the shards themselves
            self.server.current = [a.params.remote() for a in self.server.actors]
        self.server.synchronize()

    def wait_calls(self, progress: Any) -> None:
        """Wait for the epoch's calls (BSP and HOGWILD submit a whole epoch at once), with a
        heartbeat line every 10 s giving the share of calls done."""
        if progress is None or not progress.enabled:
            return
        pending = [ev.ref for w in self.workers for ev in w.calls]
        n = len(pending)
        batches, samples = sum(w.cursor for w in self.workers), sum(w.samples for w in self.workers)
        while pending:
            _, pending = self.ray.wait(pending, num_returns=len(pending), timeout=1.0)
            if pending and progress.due():
                done = 1 - len(pending) / n
                progress.heartbeat(self.workers[0].epoch, round(done * batches), batches, round(done * samples))

    def skipped(self) -> list[int]:
        return [int(v) for v in self.server.bad[1]]

    def redeal(self) -> None:
        """The rows of the workers the run dropped go to the others, near-equally (at an epoch's
        start): the driver reads their refs and puts each taker's share."""
        gone = [w for w in self.workers if w.out and w.n]
        alive = [w for w in self.workers if not w.out]
        if not gone or not alive:
            return
        for w in gone:
            got = self.ray.get([r for pair in self.held[w.j] for r in pair])
            X, y = concat_rows(got[0::2]), np.concatenate(got[1::2])
            self.held[w.j], w.n, w.batches = [], 0, 0
            for part, taker in zip(np.array_split(np.arange(len(X)), len(alive)), alive):
                if not len(part):
                    continue
                pair = [self.ray.put(X[part]), self.ray.put(y[part])]
                self.data_refs += pair
                self.held[taker.j].append(pair)
                taker.n = self.server.event(taker.actor.take_rows.remote(pair), f"worker {taker.j}").synchronize()
                taker.batches = -(-taker.n // taker.batchsize)
                self.reissue(taker.j)

    def reissue(self, j: int) -> None:
        """Worker j's role set-up with all the rows it holds now: a host that Ray restarts later
        builds it with them (the running host keeps its role: the run id is unchanged)."""
        got = self.ray.get([r for pair in self.held[j] for r in pair])
        whole = [self.ray.put(concat_rows(got[0::2])), self.ray.put(np.concatenate(got[1::2]))]
        args, kw = self.worker_args[j]
        args = (args[0], whole, *args[2:])
        self.worker_args[j] = (args, kw)
        ref = self.ray.put((WorkerActor, args, kw))
        self.data_refs += [*whole, ref]
        self.workers[j].actor.setup[1] = ref

    def attach(self, trace: Any) -> None:
        """The actors record their spans (workers: pull wait, pull, interval, HOGWILD's push;
        shards: apply) on their own clocks; :meth:`collect_spans` moves them into ``trace``."""
        self.trace = trace
        self.ray.get([a.trace.remote() for a in self.actors])

    def collect_spans(self) -> None:
        """At the barrier: each actor's spans, shifted from its clock to the driver's by way of the
        wall clock (exact on one node; across nodes as good as their clocks agree)."""
        here = time.time() - time.perf_counter()
        owners = [(a, s) for s, a in enumerate(self.server.actors)] + [(w.actor, w.j) for w in self.workers if not w.out]
        for (_, tid), got in zip(owners, self.ray.get([a.drain_spans.remote() for a, _ in owners])):
            offset, raw = got
            shift = offset - here
            for pid, _, name, t0, t1, args in raw:
                self.trace.span(pid, tid, name, t0 + shift, t1 + shift, **args)

    def faults(self) -> dict[str, Any]:
        """Since the last epoch record: ``restarts`` (a shard died: the run went back to the newest
        checkpoint), ``recovery_seconds`` (the lost attempts and the restores) and
        ``resubmitted`` (calls of an arrival policy's worker sent again after it died; a BSP or
        HOGWILD worker's call is retried by Ray itself, unseen by the driver)."""
        out = {k: v for k, v in self.recovered.items() if v}
        self.recovered = {"restarts": 0, "resubmitted": 0, "recovery_seconds": 0.0}
        return out

    def worker_states(self) -> list[dict[str, Any]]:
        """The workers' local optimizer states (a dead one's as last read)."""
        for w in self.workers:
            if not (w.out and w.j in self.last_states):
                try:
                    self.last_states[w.j] = self.server.event(w.actor.local_state.remote(), f"worker {w.j}").synchronize()
                except StreamError:
                    if not w.out:
                        raise
                    self.last_states[w.j] = {"local_step": 0, "local_state": {}}
        return [self.last_states[w.j] for w in self.workers]

    def load_worker_states(self, states: list[dict[str, Any]]) -> None:
        for w, st in zip(self.workers, states):
            if not w.out:  # (a worker the run dropped may be dead)
                self.server.event(w.actor.load_local_state.remote(st), f"worker {w.j}").synchronize()

    def settle(self, timeout: float) -> None:
        """Let the calls in flight end (a failed one, or one failing on a failed argument, ends at
        once) and read their errors, so that Ray neither retries them on hosts being killed nor
        reports them as unhandled; then forget them."""
        refs = [ev.ref for w in getattr(self, "workers", []) for ev in w.calls if ev.ref is not None]
        if hasattr(self, "server"):
            refs += list(self.server.current)
            refs += [r for status, payload in self.server.pending.values() for r in (status, *payload)]
        refs = list(dict.fromkeys(refs))
        if refs:
            done, _ = self.ray.wait(refs, num_returns=len(refs), timeout=timeout)
            for ref in done:
                with contextlib.suppress(Exception):
                    self.ray.get(ref, timeout=0)
        for w in getattr(self, "workers", []):
            w.calls = []
        if hasattr(self, "server"):
            self.server.pending.clear()
        self.in_flight.clear()

    def cancel(self) -> None:
        """The run failed: its calls are settled (for at most 10 s), and its hosts, whose state
        is unknown, are not kept."""
        self.failed = True
        with contextlib.suppress(Exception):
            self.settle(10.0)

    def finish(self) -> None:
        """The final parameters (and tables), fetched before Ray goes away."""
        self.server.final = self.server.w
        if self.server.tables is not None:
            self.server.tables.final = self.server.tables.model()

    def close(self) -> None:
        """Hosts of a run that ended well go back to the embedded instance's pool, their roles
        dropped; any other host is killed."""
        ray = self.cluster.ray
        keep = []
        if not self.failed and pooled() and ray.is_initialized():
            try:
                ray.get([h.release.remote() for _, h in self.hosts], timeout=30)
                keep = self.hosts
            except Exception:
                keep = []
        for key, h in keep:
            POOL.setdefault(key, []).append(h)
        for _, h in self.hosts if not keep else []:
            with contextlib.suppress(Exception):
                ray.kill(h)
        self.hosts = []
        self.actors = []
        unship(self.cluster.ray, self.shipped)
        self.shipped = []
        self.cluster.close()


def contiguous(x: Any) -> Any:
    """Rows of the features as shipped: C-ordered arrays (every column of named columns)."""
    from ..columns import Columns

    return x.map(np.ascontiguousarray) if isinstance(x, Columns) else np.ascontiguousarray(x)
