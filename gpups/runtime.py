"""One training run: builds the server, the workers and the policy, then drives the epochs.

:class:`Run` is the scheduler's side of the picture: the one host thread that launches work on
streams. It owns the epoch loop (policy epoch, barrier, evaluation, history, checkpoint) and the
two primitives every policy uses, :meth:`start` and :meth:`apply_async`.
"""
from __future__ import annotations

import functools
import sys
import time
from typing import Any, Callable

import numpy as np

from . import checkpoint as ckpt
from .errors import WorkerError
from .flat import Layout
from .history import Progress, epoch_record
from .optim import make_rule
from .server import ParamServer
from .streams import StreamError
from .sync import make_policy
from .worker import Worker


class Run:
    def __init__(self, opts: Any, device: Any, layout: Layout, init_flat: np.ndarray,
                 features: Any, labels: Any, parts: list[np.ndarray], upd: Callable, hp: dict,
                 evaluate: Callable | None, val: tuple[Any, Any] | None):
        self.opts, self.device, self.layout, self.hp = opts, device, layout, hp
        self.evaluate, self.val = evaluate, val
        self.server = ParamServer(device, layout, device.place(init_flat), make_rule(opts.agg, hp, layout),
                                  opts.k, opts.servers, opts.push)
        # Workers compute on the server's parameters themselves, without a replica copy, where
        # nothing can change them meanwhile (BSP: the server waits for every push) or where
        # changing them is the point (HOGWILD); only with one step per push and no local update.
        # On several GPUs a HOGWILD worker cannot write other devices' shards from its stream:
        # it keeps a replica and its pushes are applied on the shards' streams (hogwild_interval).
        self.unlocked = opts.utype == "hogwild" and device.slots == 1
        alias = (opts.utype == "bsp" or self.unlocked) and opts.freq == "batch" and opts.push == "gradients"
        self.workers: list[Worker] = []
        try:
            for j, rows in enumerate(parts):
                self.workers.append(Worker(j, device, features, labels, rows, layout, self.server, upd, hp,
                                           make_rule(opts.agg, hp, layout), opts.batchsize, opts.push, alias, opts.k > 1,
                                           keep_state=opts.nonfinite == "skip"))
        except BaseException:  # (out of memory on the device, say): stop the threads started
            self.close()
            raise
        for w in self.workers:
            if opts.utype == "hogwild":  # the worker's own stream pulls (and pushes), unlocked
                w.head = None if alias else w.pull_unlocked
                if self.unlocked:
                    w.tail = functools.partial(self.server.push_unlocked, device.rows([w.j]), 1.0 / opts.k)
            w.graphs = device.step_graphs(w)
        self.policy = make_policy(opts.utype, opts.staleness, opts.backup_workers)
        self.clock_log: list[tuple[int, int, int]] = []  # SSP: (worker, its clock, slowest clock)
        self.history: list[dict[str, Any]] = []
        self.first_epoch = 0
        self.progress: Progress | None = None
        device.synchronize()  # set-up copies ran on the default stream: finish them first

    # -- primitives for policies ---------------------------------------------------------------
    def plans(self) -> list[list[int]]:
        return [w.plan(self.opts.freq, self.opts.nbatches) for w in self.workers]

    def start(self, j: int, nsteps: int, epoch: int, pulled: list | None = None) -> Any:
        """Pull the newest model into worker j (unless ``pulled`` gives the events of a pull
        already made), run its interval, return its push event."""
        w = self.workers[j]
        w.pulled = self.server.version
        for ev in self.server.pull(w.replica, w.slot) if pulled is None else pulled:
            w.stream.wait_event(ev)
        if w.base is not None:
            w.stream.launch(w.snapshot_base)
        w.stream.launch(w.run, nsteps, epoch)
        if self.progress is not None and self.progress.due():
            self.progress.heartbeat(epoch, sum(x.cursor for x in self.workers),
                                    sum(x.batches for x in self.workers), sum(x.samples for x in self.workers))
        return w.stream.record()

    def apply_async(self, j: int, pull: bool = False) -> list[Any]:
        """Apply worker j's push alone, as 1/k of a round; record its staleness. With ``pull``,
        the new model is copied into j's replica in the same go (events returned)."""
        w = self.workers[j]
        w.staleness.append(self.server.version - w.pulled)
        return self.server.apply((j,), 1.0 / self.opts.k, pull_into=w.replica if pull else None, slot=w.slot)

    def hogwild_interval(self, w: Worker, nsteps: int, epoch: int) -> None:
        """On worker w's stream: unlocked pull, interval, unlocked push of its own update (the
        worker's head and tail), then the bookkeeping. On several GPUs the push is applied by
        streams of w's own on the shards' devices (:meth:`ParamServer.push_from`)."""
        w.pulled = self.server.version
        w.run(nsteps, epoch)
        w.staleness.append(self.server.version - w.pulled)
        if not self.unlocked:
            # (a CPU worker runs this on its own thread, after its interval: nothing to wait for)
            after = w.stream.record() if self.device.async_launch else None
            for ev in self.server.push_from(w.j, 1.0 / self.opts.k, after):
                w.stream.wait_event(ev)
        self.server.count_unlocked()

    # -- the epoch loop ------------------------------------------------------------------------
    def train(self, epochs: int) -> list[dict[str, Any]]:
        progress = self.progress = Progress(epochs, enabled=self.opts.progress)
        try:
            with self.device.compute_threads(self.opts.k):
                for epoch in range(self.first_epoch, epochs):
                    self.epoch(epoch, progress)
        except StreamError as err:
            self.cancel()
            who = err.stream_name
            where = ""
            if who.startswith("worker "):  # (a remote worker tells where it was itself)
                where = f" in {getattr(err.exc, 'gpups_where', None) or self.workers[int(who.split()[1])].where}"
            raise WorkerError(who, f"{type(err.exc).__name__}: {err.exc}{where}") from err.exc
        except BaseException as exc:
            self.cancel()
            if isinstance(exc, KeyboardInterrupt):  # (the CLI says how far the run got)
                exc.gpups_epochs_done = len(self.history)  # type: ignore[attr-defined]
            raise
        finally:
            self.close()
        return self.history

    def epoch(self, epoch: int, progress: Progress) -> None:
        for w in self.workers:
            w.cursor = 0
            w.reset_stats()
            w.stream.launch(w.start_epoch)
        skipped_before = self.skipped()
        server_before = self.server.update_seconds
        progress.start_epoch()
        t0 = time.perf_counter()
        self.policy.run_epoch(self, epoch)
        self.barrier()
        seconds = time.perf_counter() - t0
        self.check_finite(epoch)
        metrics = self.validate()
        skipped = [a - b for a, b in zip(self.skipped(), skipped_before)]
        rec = epoch_record(epoch, seconds, self.workers, metrics, self.opts.utype, skipped)
        if self.device.timed_kernels:
            rec["server_seconds"] = self.server.update_seconds - server_before
        self.history.append(rec)
        if self.opts.checkpoint:  # (saved before the epoch's line: a line printed is a checkpoint made)
            ckpt.save(self.opts.checkpoint, epoch + 1, self.state_dict(epoch + 1))
        progress.epoch(rec)

    def skipped(self) -> list[int]:
        return [int(v) for v in self.server.flags()[1]]

    def check_finite(self, epoch: int) -> None:
        """With nonfinite='raise', stop at the first push that held NaN or Inf (the server
        skipped it, so the model is still finite), naming the worker and the batch."""
        if self.opts.nonfinite != "raise":
            return
        first = self.server.flags()[2]
        for j, b in enumerate(first):
            if b:
                self.cancel()
                raise WorkerError(f"worker {j}", f"its gradient held NaN or Inf in epoch {epoch + 1}, "
                                  f"batch {int(b)} (push skipped; pass nonfinite='skip' to skip such "
                                  "pushes and go on)")

    def barrier(self) -> None:
        for ev in [w.stream.record() for w in self.workers]:
            ev.synchronize()
        self.server.synchronize()

    def validate(self) -> dict[str, float]:
        if self.evaluate is None or self.val is None:
            return {}
        params = self.layout.views(self.server.model(), readonly=True)
        out = self.evaluate(params, *self.val)
        return {f"val_{k}": float(v) for k, v in check_metrics(out).items()}

    def cancel(self) -> None:
        """Stop the streams after a failure; on a GPU, let the work already queued finish before
        the run's buffers go back to the memory pool (a later allocation could get them while
        a kernel still writes there)."""
        for w in self.workers:
            cancel = getattr(w.stream, "cancel", None)
            if cancel:
                cancel()
        try:
            self.device.synchronize()
        except Exception:  # a device fault: the error being raised says more
            pass

    def close(self) -> None:
        for w in self.workers:
            w.stream.close()
        self.server.close()

    # -- checkpoints ---------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        o = self.opts
        return {"names": self.layout.names, "shapes": self.layout.shapes, "dtype": str(self.layout.dtype),
                "k": o.k, "servers": o.servers, "utype": o.utype, "freq": o.freq, "push": o.push,
                "nbatches": o.nbatches, "staleness": o.staleness, "backup_workers": o.backup_workers,
                "scheme": o.scheme, "batchsize": o.batchsize, "seed": o.seed,
                "agg": o.agg if isinstance(o.agg, str) else "custom"}

    def state_dict(self, epoch: int) -> dict[str, Any]:
        return {"format": 1, "epoch": epoch, "fingerprint": self.fingerprint(),
                "server": self.server.state_dict(), "history": self.history,
                "workers": self.worker_states()}

    def worker_states(self) -> list[dict[str, Any]]:
        return [w.state_dict() for w in self.workers]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # (checkpoints from before these three were recorded ran with their defaults)
        want = self.fingerprint()
        got = {"nbatches": 1, "staleness": 0, "backup_workers": 0, **state["fingerprint"]}
        diff = {key: (got.get(key), want[key]) for key in want if got.get(key) != want[key]}
        if diff:
            detail = ", ".join(f"{key}: checkpoint {a!r}, now {b!r}" for key, (a, b) in diff.items())
            raise ValueError(f"resume=True: the checkpoint in {self.opts.checkpoint!r} was written by a "
                             f"different run ({detail}); use a fresh checkpoint folder or the same options")
        self.server.load_state_dict(state["server"])
        self.load_worker_states(state["workers"])
        self.history = list(state["history"])
        self.first_epoch = int(state["epoch"])
        self.device.synchronize()

    def load_worker_states(self, states: list[dict[str, Any]]) -> None:
        for w, ws in zip(self.workers, states):
            w.load_state_dict(ws)


def check_metrics(out: Any) -> dict[str, Any]:
    if not isinstance(out, dict) or not all(isinstance(k, str) for k in out):
        raise ValueError(f"evaluate must return a dict of metric name -> number, got {type(out).__name__}")
    for key, v in out.items():
        try:
            float(v)
        except (TypeError, ValueError):
            raise ValueError(f"evaluate returned {key}={v!r}; expected a number") from None
    return out


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
