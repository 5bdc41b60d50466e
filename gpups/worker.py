"""A worker: its data partition, its model replica, and one push interval of local steps.

:meth:`Worker.run` is what the scheduler launches on the worker's stream: ``nsteps`` mini-batch
steps of the user's ``upd`` from where the worker left off in its partition, ending with the
payload in the worker's row of the server's push buffer:

- ``push="gradients"``: the sum of the interval's gradients. Between the steps of an interval
  the replica is updated locally with the same optimizer (after the last step it need not be:
  the next pull overwrites it).
- ``push="model"``: every step updates the replica locally; the payload is the replica's change
  since its pull (the server adds the mean change: model averaging).

Each payload is checked for NaN/Inf (the flags of its device's ``server.Home``): a flagged push
is skipped by the server's kernels and reported by the scheduler. On a GPU, full-batch steps of built-in models replay a
CUDA graph (:mod:`gpups.gpu`) that gathers the batch by a device-side counter.
"""
from __future__ import annotations

import inspect
import math
import time
from typing import Any, Callable, Mapping

import numpy as np

from .columns import concat_rows
from .flat import Layout


def call_upd(upd: Callable, wants_out: bool, params: dict, x: Any, y: Any, hp: dict,
             out: dict | None) -> tuple[Mapping[str, Any], Any]:
    """Call ``upd``; returns ``(grads, loss or None)``."""
    res = upd(params, x, y, hp, out=out) if wants_out else upd(params, x, y, hp)
    if isinstance(res, tuple) and len(res) == 2 and isinstance(res[0], Mapping):
        return res[0], res[1]
    return res, None


def readonly_error(exc: ValueError) -> ValueError | None:
    """A clearer error for ``upd`` writing into its (read-only) ``params``, else None."""
    if "read-only" not in str(exc):
        return None
    return ValueError(f"upd changed its params argument in place ({exc}): upd must only read params and "
                      "return the gradients (the server owns the parameters; change them in agg)")


def accepts_out(fn: Callable) -> bool:
    """Whether ``fn`` takes an ``out=`` dict to write gradients into (built-in models do)."""
    try:
        return "out" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class Accounts:
    """A worker's host-side bookkeeping: its plan, cursor, sample and push counts, loss sums,
    staleness. Shared by :class:`Worker` and the Ray backend's driver-side proxy of a remote one."""

    j: int
    n: int
    batchsize: int
    batches: int
    cursor: int
    slot: int = 0  # the device slot it runs on (a GPU list has several)
    loss_dev: Any = None
    out = False    # on_worker_error="drop": the run goes on without this worker
    failed = 0     # failures this epoch (its pushes discarded)
    booked = 0     # samples of the interval being run
    at = 0         # the batch being run (for error messages)

    def plan(self, freq: str, nbatches: int) -> list[int]:
        """Steps per push interval for one epoch (none for a worker the run dropped)."""
        if self.out or not self.batches:
            return []
        per = {"batch": 1, "nbatches": nbatches, "epoch": self.batches}[freq]
        full, rest = divmod(self.batches, per)
        return [per] * full + ([rest] if rest else [])

    def new_epoch(self) -> None:
        """Host-side accounts back to the epoch's start."""
        self.cursor = 0
        self.reset_stats()

    def reset_stats(self) -> None:
        self.loss_host, self.loss_count = 0.0, 0
        self.samples = 0
        self.pushes = 0
        self.failed = 0
        self.dropped = 0     # SBP: pushes that came too late for their round
        self.staleness: list[int] = []

    def mean_loss(self) -> float | None:
        if not self.loss_count:
            return None
        total = self.loss_host + (float(self.loss_dev) if self.loss_dev is not None else 0.0)
        return total / self.loss_count

    def account(self, nsteps: int, epoch: int) -> int:
        """Book an interval of ``nsteps`` batches from the cursor; returns its first batch."""
        b0 = self.cursor
        self.cursor += nsteps
        self.epoch = epoch
        self.where = f"epoch {epoch + 1}, batch {b0 + nsteps}"
        self.booked = min((b0 + nsteps) * self.batchsize, self.n) - b0 * self.batchsize
        self.samples += self.booked
        self.pushes += 1
        return b0


class Worker(Accounts):
    log: Callable[[str], None] | None = None  # where a failure is told (None: stderr; a Ray actor keeps it)

    def __init__(self, j: int, device: Any, features: Any, labels: Any, rows: np.ndarray,
                 layout: Layout, server: Any, upd: Callable, hp: dict, rule: Any,
                 batchsize: int, push: str, alias: bool = False, concurrent: bool = True,
                 check_finite: bool = True, keep_state: bool = False, pull_unlocked: bool = False,
                 tail: Callable[[], None] | None = None, tolerate: int | None = None, tables: Any = None):
        """``alias``: compute on the server's parameters (no replica); ``concurrent``: a thread
        of its own on the CPU; ``keep_state``: a skipped push undoes its local updates;
        ``pull_unlocked`` / ``tail``: device work before / after each interval (HOGWILD's
        unlocked pull, and its push applied by the worker itself), captured with it;
        ``tolerate``: on_worker_error="drop": failures it may have (None: a failure stops the run);
        ``tables``: its :class:`gpups.tables.TableClient` when the model has sparse tables."""
        self.j, self.device, self.layout, self.server = j, device, layout, server
        self.upd, self.rule, self.push = upd, rule, push
        # what upd is given: the hyperparameters, plus who calls and how far it is (a Dropout
        # layer's mask depends on them, so that runs are reproducible)
        self.hp = {**hp, "worker": j, "step": 0}
        self.wants_out = accepts_out(upd)
        self.check_finite = check_finite
        self.keep_state = keep_state  # nonfinite="skip": a skipped push undoes its local updates
        self.tolerate, self.failures = tolerate, 0
        self.tables = tables
        self.slot = device.worker_slot(j)
        xs, ys = features[rows], labels[rows]  # (where the data lies; placed on the slot below)
        with device.on(self.slot):
            self._build(xs, ys, layout, server, rule, batchsize, push, alias, concurrent)
        self.has_loss = False
        self.head: Callable | None = self.pull_unlocked if pull_unlocked else None
        self.tail = tail
        self.epoch = 0
        self.cursor = 0      # next batch within the epoch (host side)
        self.pulled = 0      # server version of the last pull (staleness is counted from it)
        self.where = ""      # for error messages: epoch and batch being run
        self.reset_stats()
        self.trace: Any = None  # a gpups.trace.Trace, when the run records a timeline
        self.traced_end = 0.0   # when its last traced interval ended
        self.marked: Any = None  # (a GPU) the epoch and event of its last traced interval's end
        self.graphs = device.step_graphs(self)  # GPU: CUDA graphs of its intervals (None: eager)

    def _build(self, xs: Any, ys: Any, layout: Layout, server: Any, rule: Any,
               batchsize: int, push: str, alias: bool, concurrent: bool) -> None:
        """The worker's device state, on its slot's device (see __init__)."""
        device, j, xp = self.device, self.j, self.device.xp
        home = server.home(self.slot)
        self.X = device.place(xs, self.slot)  # the partition moves to the worker's device once
        self.y = device.place(ys, self.slot)
        if self.y.dtype.kind in "iub":
            self.y = self.y.astype(xp.int64, copy=False)
        self.n, self.batchsize = len(xs), batchsize
        self.batches = math.ceil(self.n / batchsize)
        self.stream = device.worker_stream(j, concurrent)
        # alias: compute on the home's parameters directly (BSP, HOGWILD; one step per push)
        self.replica = home.w if alias else xp.empty_like(home.w)
        self.params = self.with_tables(layout.views(self.replica, readonly=True))  # upd must not write them
        self.payload = home.G[j]
        self.bad = home.bad   # non-finite flags (row 0: skip this push; see server.Home)
        self.send = server.sender(j)  # device work sending the push to shards on other devices
        self.grad = xp.empty_like(home.w)
        self.grad_views = layout.views(self.grad)
        self.payload_views = layout.views(self.payload)
        self.base: Any = xp.empty_like(home.w) if push == "model" else None
        self.local_state = rule.init_state(xp, layout.size, home.w.dtype)
        # the local state as it was when the interval began (restored if its push is skipped)
        self.saved_state = {s: xp.empty_like(a) for s, a in self.local_state.items()} if self.keep_state else {}
        self.local_step = 0
        self.one = device.rows([0], self.slot)
        self.nobad = xp.zeros(1, xp.int64)
        self.counter = xp.zeros(1, xp.int64)   # batches done this epoch (device side for graphs)
        self.loss_dev = None if device.host_memory else xp.zeros((), xp.float64)  # summed on the device

    def seek(self, cursor: int) -> None:
        """Go on from batch ``cursor`` of the epoch (a Ray actor is told where the run is)."""
        self.cursor = cursor
        self.device.set_counter(self.counter, cursor)

    def compute_on(self, flat: Any = None) -> None:
        """Compute the next intervals on ``flat`` (parameters pulled elsewhere, read-only)
        instead of the replica; None: on the replica again."""
        self.params = self.with_tables(self.layout.views(self.replica if flat is None else flat, readonly=True))

    def with_tables(self, params: dict[str, Any]) -> dict[str, Any]:
        """The dense views, plus a :class:`~gpups.tables.TableView` per sparse table."""
        tables = getattr(self, "tables", None)
        return params if tables is None else {**params, **tables.views}

    def start_epoch(self) -> None:
        """On the worker's stream: the batch counter and the device loss sum back to 0."""
        self.counter.fill(0)
        if self.loss_dev is not None:
            self.loss_dev.fill(0)

    # -- stream work ---------------------------------------------------------------------------
    def snapshot_base(self) -> None:
        self.base[...] = self.replica

    def run(self, nsteps: int, epoch: int, launched: float | None = None) -> None:
        """``nsteps`` local steps, leaving the payload in its home's ``G[j]`` (host bookkeeping here,
        device work in :meth:`interval`, eagerly or as a CUDA graph replay). ``launched``: when the
        scheduler queued it (traced on a host stream: the wait before it is the pull wait)."""
        t0 = time.perf_counter() if self.trace is not None else 0.0
        if launched is not None:  # (waiting began when it was queued or the stream's last interval ended)
            began = max(launched, self.traced_end)
            if t0 > began:
                self.trace.span(1, self.j, "pull wait", began, t0)
        full = (self.cursor + nsteps) * self.batchsize <= self.n
        b0 = self.account(nsteps, epoch)
        if self.out:  # dropped this epoch: its remaining intervals push nothing
            self.discard()
            return
        clock = self.trace.clock if self.trace is not None else None  # (a GPU: CUDA events on its stream)
        start = clock.mark(self.stream) if clock is not None else None
        if not (self.graphs is not None and full and self.graphs.replay(nsteps)):
            try:
                self.interval(nsteps, b0)
            except Exception as exc:
                if self.tolerate is None:
                    raise
                self.fail(exc, b0)
                return
        if self.has_loss:
            self.loss_count += nsteps
        self.local_step += nsteps if self.push == "model" else nsteps - 1
        if clock is not None:  # the work on the device; the gap since its last interval is the pull wait
            end = clock.mark(self.stream)
            if self.marked is not None and self.marked[0] == epoch:
                clock.span(1, self.j, "pull wait", self.marked[1], start)
            clock.span(1, self.j, "interval", start, end, batches=nsteps, first=b0 + 1)
            self.marked = (epoch, end)
        elif self.trace is not None:
            self.traced_end = time.perf_counter()
            self.trace.span(1, self.j, "interval", t0, self.traced_end, batches=nsteps, first=b0 + 1)

    def discard(self) -> None:
        """This interval's push is not applied: its skip flag is set (neither counted as a
        non-finite push nor reported as one) and sent where a far shard reads it; it is not
        counted as a push, nor its rows as samples."""
        self.bad[0, self.j] = 1
        if self.send is not None:
            self.send()
        self.pushes -= 1
        self.samples -= self.booked

    def fail(self, exc: Exception, b0: int) -> None:
        """on_worker_error="drop": log the failure, discard the push, put the local optimizer
        state back (when it was kept), and past ``tolerate`` failures leave the run. The losses
        of the interval's batches before the failing one stay in the epoch's mean."""
        from .runtime import log

        self.failures += 1
        self.failed += 1
        if self.has_loss:
            self.loss_count += self.at - b0
        for slot, saved in self.saved_state.items():
            self.local_state[slot][...] = saved
        self.device.set_counter(self.counter, self.cursor)  # (the graphs gather from it)
        self.discard()
        left = (self.tolerate or 0) - self.failures
        self.out = left < 0
        (self.log or log)(f"gpups: worker {self.j} failed in epoch {self.epoch + 1}, batch {self.at + 1} "
            f"({type(exc).__name__}: {exc}); its push is discarded "
            + ("and the run goes on without it" if self.out else f"({left} more failure(s) allowed)"))

    def take_rows(self, X: Any, y: Any) -> None:
        """More rows to train on from the next epoch (a dropped worker's): appended to its
        partition on its device; graphs of the old shapes go."""
        xp = self.device.xp
        with self.device.on(self.slot):
            more = self.device.place(X, self.slot)
            self.X = concat_rows([self.X, more], xp)
            self.y = xp.concatenate([self.y, self.device.place(y, self.slot).astype(self.y.dtype, copy=False)])
        self.n = int(self.X.shape[0])
        self.batches = math.ceil(self.n / self.batchsize)
        self.graphs = self.device.step_graphs(self)

    def give_rows(self) -> tuple[Any, Any]:
        """All its rows (it is dropped: they go to the others)."""
        X, y = self.X, self.y
        self.X, self.y, self.n, self.batches = X[:0], y[:0], 0, 0
        return X, y

    def interval(self, nsteps: int, b0: int, graph: Any = None) -> None:
        """The device work of one push interval from batch ``b0``. With ``graph`` (capture), the
        batches are gathered at the device-side counter instead of sliced by the host."""
        push_grads = self.push == "gradients"
        kernels = self.device.kernels
        local = nsteps > 1 or not push_grads  # the interval updates the replica and local state
        if self.head is not None:
            self.head()
        if self.check_finite and graph is None:  # (a graph's batch gather clears it)
            self.bad[0, self.j] = 0
        if self.tables is not None:
            self.tables.begin(local)
        if local:
            for slot, saved in self.saved_state.items():
                kernels.copy(saved, self.local_state[slot])
            user_state = self.local_state.get("user")  # a user agg's state: kept by reference
        for s in range(nsteps):
            b = self.at = b0 + s
            self.where = f"epoch {self.epoch + 1}, batch {b + 1}"
            if graph is not None:
                x, y = graph.gather()
            else:
                lo, hi = b * self.batchsize, min((b + 1) * self.batchsize, self.n)
                x, y = self.X[lo:hi], self.y[lo:hi]
            direct = push_grads and s == 0  # first gradient goes straight into the payload
            self.hp["step"] = self.epoch * self.batches + b  # (this worker's batches so far)
            self.step(x, y, direct, s < nsteps - 1 or not push_grads, s)
            if graph is not None:
                graph.advance()
            else:
                self.device.set_counter(self.counter, b + 1)
            if self.check_finite and nsteps > 1:  # name the batch, not the interval's end
                kernels.stamp_nonfinite(self.payload if direct else self.grad, self.bad, self.j, self.counter)
        if not push_grads:
            self.device.xp.subtract(self.replica, self.base, out=self.payload)
        if self.check_finite:
            kernels.flag_nonfinite(self.payload, self.bad, self.j, self.counter)
        if self.tables is not None and not self.tables.finish(self.push) and self.check_finite:
            self.flag_tables()
        if self.check_finite:
            if local and self.keep_state:
                for slot, saved in self.saved_state.items():
                    kernels.restore_if_flagged(self.local_state[slot], saved, self.bad, self.j)
                if "user" in self.local_state and bool(self.bad[0, self.j]):  # (host read: eager path)
                    self.local_state["user"] = user_state
        if self.send is not None:
            self.send()
        if self.tail is not None:
            self.tail()

    def step(self, x: Any, y: Any, direct: bool, local: bool, s: int = 0) -> None:
        """One batch: gradient into the payload (``direct``) or added to it; local update."""
        target = self.payload if direct else self.grad
        grads = self._gradient(x, y, target)
        if self.push == "gradients" and not direct:
            self.payload += self.grad
        if local:
            self._local_update(target, self.local_step + s + 1)
        if self.tables is not None:
            self._table_step(grads, local)

    def _table_step(self, grads: Any, local: bool) -> None:
        from .tables import RowGrad

        for name in self.tables.views:
            g = grads[name]
            if not isinstance(g, RowGrad):
                raise ValueError(f"upd returned a {type(g).__name__} for the sparse table {name!r}; "
                                 "a table's gradient is a gpups.RowGrad on every batch")
            u, v = self.tables.take(name, g)
            if local:
                self.tables.local_step(name, u, v, self.rule.hp["lr"])

    def flag_tables(self) -> None:
        """A table push holding NaN/Inf: flagged as the dense kernels flag a payload."""
        j, stamp = self.j, int(self.counter[0])
        if self.bad[0, j] == 0:
            self.bad[0, j] = stamp
            self.bad[1, j] += 1
        if self.bad[2, j] == 0:
            self.bad[2, j] = stamp

    def _gradient(self, x: Any, y: Any, target: Any) -> Any:
        views = self.grad_views if target is self.grad else self.payload_views
        try:
            grads, loss = call_upd(self.upd, self.wants_out, self.params, x, y, self.hp, views)
        except ValueError as exc:
            clearer = readonly_error(exc)
            if clearer is None:
                raise
            raise clearer from exc
        for name, view in views.items():
            g = grads[name]
            if g is view:
                continue
            if tuple(g.shape) != view.shape:
                raise ValueError(f"upd returned a gradient for {name!r} of shape {tuple(g.shape)}; "
                                 f"the parameter has shape {view.shape}")
            view[...] = g
        self.has_loss = loss is not None
        if loss is not None:
            if self.loss_dev is not None and not isinstance(loss, (float, int, np.generic)):
                self.device.xp.add(self.loss_dev, loss, out=self.loss_dev)
            else:
                self.loss_host += float(loss)
        return grads

    def _local_update(self, g: Any, step: int) -> None:
        self.rule.apply(self.device.kernels, True, g[None, :], self.one, self.nobad, 1.0, self.replica,
                        self.local_state, step)

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The local optimizer's step count and state, on the host."""
        return {"local_step": self.local_step,
                "local_state": {s: (a if s == "user" else self.device.to_host(a)) for s, a in self.local_state.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.local_step = state["local_step"]
        for slot, val in state["local_state"].items():
            if slot == "user":
                self.local_state[slot] = val
            else:
                with self.device.on(self.slot):
                    self.local_state[slot][...] = self.device.place(val, self.slot)

    def pull_unlocked(self) -> None:
        """HOGWILD's pull, on the worker's own stream (with push='model', also the base the
        model's change is measured from)."""
        self.server.copy_model(self.replica)
        if self.base is not None:
            self.device.kernels.copy(self.base, self.replica)
