"""The local backend: a :class:`~gpups.server.ParamServer` and k :class:`~gpups.worker.Worker` s
on this machine's device (CPU threads, or CUDA streams of one or several GPUs)."""
from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np

from .flat import Layout
from .optim import make_rule
from .server import ParamServer
from .worker import Worker


class LocalBackend:
    """Implements :class:`gpups.seams.Backend` on one process's device."""

    restarts = False  # nothing is lost mid-run but with the process

    def __init__(self, opts: Any, device: Any, layout: Layout, init_flat: np.ndarray, features: Any, labels: Any,
                 parts: list[np.ndarray], upd: Callable, hp: dict, tables: dict[str, Any] | None = None):
        """``tables``: the model's sparse tables (name: array), kept by a TableServer."""
        self.device = device
        policy = opts.policy
        self.server = ParamServer(device, layout, device.place(init_flat), make_rule(opts.agg, hp, layout),
                                  opts.k, opts.servers, opts.push)
        if tables:
            from .tables import TableServer, table_rule

            self.server.tables = TableServer(tables, table_rule(opts.agg, opts.table_agg), hp, opts.k,
                                             opts.servers, opts.push, self.server.bad, donate=opts.donate)
        # Workers of a policy that applies its own pushes write the shared parameters from their
        # own streams; on several GPUs a stream cannot run a kernel on another device, so their
        # pushes are applied by streams of theirs on the shards' devices (ParamServer.push_from).
        self.unlocked = policy.unlocked and device.slots == 1
        # Workers compute on the server's parameters, without a replica copy, where nothing can
        # change them meanwhile (BSP's rounds) or where changing them is the point (HOGWILD);
        # only with one step per push and no local update.
        alias = (policy.still_during_rounds and (self.unlocked or not policy.unlocked)
                 and opts.freq == "batch" and opts.push == "gradients")
        self.trace: Any = None
        self.workers: list[Worker] = []
        try:
            for j, rows in enumerate(parts):
                tail = (functools.partial(self.server.push_unlocked, device.rows([j]), 1.0 / opts.k)
                        if self.unlocked else None)
                self.workers.append(Worker(
                    j, device, features, labels, rows, layout, self.server, upd, hp, make_rule(opts.agg, hp, layout),
                    opts.batchsize, opts.push, alias=alias, concurrent=opts.k > 1,
                    keep_state=opts.nonfinite == "skip" or opts.on_worker_error == "drop",
                    pull_unlocked=policy.unlocked and not alias, tail=tail,
                    tolerate=opts.max_worker_failures if opts.on_worker_error == "drop" else None,
                    tables=self.table_client(j, policy.unlocked)))
        except BaseException:  # (out of memory on the device, say): stop the threads started
            self.close()
            raise
        device.synchronize()  # set-up copies ran on the default stream: finish them first

    def table_client(self, j: int, unlocked: bool) -> Any:
        if self.server.tables is None:
            return None
        from .tables import TableClient

        return TableClient(self.server.tables, j, unlocked)

    # -- what the run asks --------------------------------------------------------------------
    def redeal(self) -> None:
        """The rows of workers the run dropped go to the others, near-equally (at an epoch's start)."""
        gone = [w for w in self.workers if w.out and w.n]
        alive = [w for w in self.workers if not w.out]
        if not gone or not alive:
            return
        self.device.synchronize()
        for w in gone:
            X, y = (self.device.to_host(a) for a in w.give_rows())
            for part, taker in zip(np.array_split(np.arange(len(X)), len(alive)), alive):
                if len(part):
                    taker.take_rows(X[part], y[part])

    def start(self, j: int, nsteps: int, epoch: int, pulled: list | None) -> Any:
        w = self.workers[j]
        w.pulled = self.server.version
        launched = self.trace.now() if self.trace is not None and not self.device.async_launch else None
        for ev in self.server.pull(w.replica, w.slot) if pulled is None else pulled:
            w.stream.wait_event(ev)
        if w.base is not None:
            w.stream.launch(w.snapshot_base)
        w.stream.launch(w.run, nsteps, epoch, launched)
        return w.stream.record()

    def start_unlocked(self, j: int, nsteps: int, epoch: int, scale: float) -> None:
        w = self.workers[j]
        w.stream.launch(self._unlocked_interval, w, nsteps, epoch, scale)

    def _unlocked_interval(self, w: Worker, nsteps: int, epoch: int, scale: float) -> None:
        """On worker w's stream: its interval, with its unlocked pull and push (the worker's
        head and tail), then the bookkeeping. On several GPUs the push is applied by streams of
        w's own on the shards' devices (:meth:`ParamServer.push_from`)."""
        w.pulled = self.server.version
        w.run(nsteps, epoch)
        w.staleness.append(self.server.version - w.pulled)
        if not self.unlocked:
            # (a CPU worker runs this on its own thread, after its interval: nothing to wait for)
            after = w.stream.record() if self.device.async_launch else None
            for ev in self.server.push_from(w.j, scale, after):
                w.stream.wait_event(ev)
        self.server.count_unlocked()

    def barrier(self, progress: Any) -> None:
        for ev in [w.stream.record() for w in self.workers]:
            ev.synchronize()
        self.server.synchronize()

    @staticmethod
    def run_epoch(epoch: Callable[[], None], restore: Callable[[], Any]) -> None:
        epoch()

    def attach(self, trace: Any) -> None:
        """Spans from host clocks where launches run the work (the CPU device), from CUDA events
        on the streams where they only queue it (a GPU)."""
        self.trace = trace
        if self.device.async_launch:  # (a GPU: spans from CUDA events on the streams, read at the barrier)
            trace.clock = self.device.span_clock()
        self.server.trace = trace
        for w in self.workers:
            w.trace = trace

    @staticmethod
    def faults() -> dict[str, Any]:
        return {}  # (a local failure stops the run)

    def skipped(self) -> list[int]:
        return [int(v) for v in self.server.flags()[1]]

    def worker_states(self) -> list[dict[str, Any]]:
        return [w.state_dict() for w in self.workers]

    def load_worker_states(self, states: list[dict[str, Any]]) -> None:
        for w, st in zip(self.workers, states):
            w.load_state_dict(st)
        self.device.synchronize()

    def cancel(self) -> None:
        """Stop the streams after a failure; on a GPU, let the work already queued finish before
        the run's buffers go back to the memory pool (a later allocation could get them while
        a kernel still writes there)."""
        for w in self.workers:
            w.stream.cancel()
        try:
            self.device.synchronize()
        except Exception:  # a device fault: the error being raised says more
            pass

    def finish(self) -> None:
        pass

    def close(self) -> None:
        for w in self.workers:
            w.stream.close()
        self.server.close()
