"""One training run: the epoch loop over a backend's server and workers, under a sync policy.

:class:`Run` is the scheduler's side of the picture: the one host thread that launches work.
It owns the epoch loop (policy epoch, barrier, evaluation, history, checkpoint) and the
primitives every policy uses (:class:`gpups.seams.RunHandle`): :meth:`start`,
:meth:`apply_async`, :meth:`start_unlocked`. Where the server and workers live is the
backend's business (:class:`gpups.seams.Backend`: :class:`gpups.local.LocalBackend` or the Ray
backend); the loop is the same for both.
"""
from __future__ import annotations

import functools
import sys
import time
from typing import Any, Callable

from . import checkpoint as ckpt
from .errors import WorkerError
from .flat import Layout
from .history import Progress, epoch_record
from .options import elastic_keys, fingerprint
from .seams import Backend
from .streams import StreamError
from .trace import RUN, Trace


class Run:
    def __init__(self, opts: Any, backend: Backend, layout: Layout, hp: dict, evaluate: Callable | None,
                 val: tuple[Any, Any] | None):
        self.opts, self.backend, self.layout, self.hp = opts, backend, layout, hp
        self.evaluate, self.val = evaluate, val
        self.policy = opts.policy
        self.clock_log: list[tuple[int, int, int]] = []  # SSP: (worker, its clock, slowest clock)
        self.history: list[dict[str, Any]] = []
        self.first_epoch = 0
        self.progress: Progress | None = None
        self.trace: Trace | None = None
        if opts.trace:
            self.trace = Trace(opts.trace, opts.k, len(self.cuts()))
            backend.attach(self.trace)
        # where a backend that can lose state mid-run goes back to when there is no checkpoint yet
        self.start_state = self.state_dict(0) if backend.restarts and opts.checkpoint else None
        self.resumed: dict[str, Any] = {}  # what a resume changed (recorded in the next epoch's record)

    @property
    def server(self) -> Any:
        return self.backend.server

    @property
    def workers(self) -> Any:
        return self.backend.workers

    @property
    def device(self) -> Any:
        return self.backend.device

    # -- primitives for policies ---------------------------------------------------------------
    def plans(self) -> list[list[int]]:
        return [w.plan(self.opts.freq, self.opts.nbatches) for w in self.workers]

    def start(self, j: int, nsteps: int, epoch: int, pulled: list | None = None) -> Any:
        """Pull the newest model into worker j (unless ``pulled`` gives the events of a pull
        already made), run its interval, return its push event."""
        event = self.backend.start(j, nsteps, epoch, pulled)
        self.heartbeat(epoch)
        return event

    def apply_async(self, j: int, pull: bool = False) -> list[Any]:
        """Apply worker j's push alone, as 1/k of a round; record its staleness. With ``pull``,
        the new model is copied into j's replica in the same go (events returned)."""
        w = self.workers[j]
        w.staleness.append(self.server.version - w.pulled)
        if self.trace is not None:
            self.trace.counter("staleness", self.trace.now(), **{f"worker {j}": w.staleness[-1]})
        return self.server.apply((j,), 1.0 / self.opts.k, pull_into=w.replica if pull else None, slot=w.slot)

    def start_unlocked(self, j: int, nsteps: int, epoch: int) -> None:
        """Worker j pulls, runs its interval and applies its own push as 1/k of a round, with
        no lock and no order among workers (HOGWILD)."""
        self.backend.start_unlocked(j, nsteps, epoch, 1.0 / self.opts.k)
        self.heartbeat(epoch)

    def heartbeat(self, epoch: int) -> None:
        if self.progress is not None and self.progress.due():
            self.progress.heartbeat(epoch, sum(x.cursor for x in self.workers),
                                    sum(x.batches for x in self.workers), sum(x.samples for x in self.workers))

    # -- the epoch loop ------------------------------------------------------------------------
    def train(self, epochs: int) -> list[dict[str, Any]]:
        progress = self.progress = Progress(epochs, enabled=self.opts.progress)
        try:
            with self.device.compute_threads(self.opts.k):
                for epoch in range(self.first_epoch, epochs):
                    self.backend.run_epoch(functools.partial(self.epoch, epoch, progress), self.restore_newest)
            self.backend.finish()
        except StreamError as err:
            self.backend.cancel()
            who = err.stream_name
            where = ""
            if who.startswith("worker "):  # (a remote worker tells where it was itself)
                where = f" in {getattr(err.exc, 'gpups_where', None) or self.workers[int(who.split()[1])].where}"
            raise WorkerError(who, f"{type(err.exc).__name__}: {err.exc}{where}") from err.exc
        except BaseException as exc:
            self.backend.cancel()
            if isinstance(exc, KeyboardInterrupt):  # (the CLI says how far the run got)
                exc.gpups_epochs_done = len(self.history)  # type: ignore[attr-defined]
            raise
        finally:
            self.backend.close()
            if self.trace is not None:
                self.trace.write()
        return self.history

    def epoch(self, epoch: int, progress: Progress) -> None:
        if any(w.out for w in self.workers):
            if all(w.out for w in self.workers):
                raise WorkerError("every worker", "failed more than max_worker_failures times: nothing is left to "
                                  "train with")
            self.backend.redeal()
        for w in self.workers:
            w.new_epoch()
            w.stream.launch(w.start_epoch)
        skipped_before = self.backend.skipped()
        server_before = self.server.update_seconds
        progress.start_epoch()
        t0 = time.perf_counter()
        self.policy.run_epoch(self, epoch)
        self.backend.barrier(progress)
        seconds = time.perf_counter() - t0
        if self.trace is not None:
            self.trace.resolve()  # (a GPU's spans: the events are done now)
        self.check_finite(epoch)
        metrics = self.validate()
        skipped = [a - b for a, b in zip(self.backend.skipped(), skipped_before)]
        rec = epoch_record(epoch, seconds, self.workers, metrics, self.policy.history(self.workers), skipped)
        rec.update(self.backend.faults())  # (Ray: actors restarted, time lost to recovery)
        if self.opts.on_worker_error == "drop":
            rec["failures"] = [w.failed for w in self.workers]
            rec["alive"] = sum(not w.out for w in self.workers)
        if self.resumed:
            rec["resumed_with"], self.resumed = self.resumed, {}
        if self.device.timed_kernels:
            rec["server_seconds"] = self.server.update_seconds - server_before
        self.history.append(rec)
        if self.trace is not None:
            now = self.trace.now()
            self.trace.span(RUN, 0, "epoch", now - seconds, now, epoch=epoch + 1)
            self.trace.counter("samples/s", now, samples_per_s=rec["samples_per_s"])
        if self.opts.checkpoint:  # (saved before the epoch's line: a line printed is a checkpoint made)
            ckpt.save(self.opts.checkpoint, epoch + 1, self.state_dict(epoch + 1))
        progress.epoch(rec)

    def restore_newest(self) -> int | None:
        """Back to the newest checkpoint (or the run's start): the epoch it ends, or None when
        the run keeps no checkpoints (a backend that lost state then cannot go on)."""
        if self.start_state is None:
            return None
        state = ckpt.load_latest(self.opts.checkpoint) or self.start_state
        self.load_state_dict(state)
        self.history = self.history[:state["epoch"]]
        return int(state["epoch"])

    def check_finite(self, epoch: int) -> None:
        """With nonfinite='raise', stop at the first push that held NaN or Inf (the server
        skipped it, so the model is still finite), naming the worker and the batch."""
        if self.opts.nonfinite != "raise":
            return
        first = self.server.flags()[2]
        for j, b in enumerate(first):
            if b:
                self.backend.cancel()
                raise WorkerError(f"worker {j}", f"its gradient held NaN or Inf in epoch {epoch + 1}, "
                                  f"batch {int(b)} (push skipped; pass nonfinite='skip' to skip such "
                                  "pushes and go on)")

    def validate(self) -> dict[str, float]:
        if self.evaluate is None or self.val is None:
            return {}
        params = self.layout.views(self.server.model(), readonly=True)
        tables = getattr(self.server, "tables", None)
        if tables is not None:  # (read-only views of the server's tables: no copy)
            for name, w in tables.model().items():
                params[name] = w.view()
                params[name].flags.writeable = False
        out = self.evaluate(params, *self.val)
        return {f"val_{k}": float(v) for k, v in check_metrics(out).items()}

    # -- checkpoints ---------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        return {"names": self.layout.names, "shapes": self.layout.shapes, "dtype": str(self.layout.dtype),
                **fingerprint(self.opts)}

    def state_dict(self, epoch: int) -> dict[str, Any]:
        return {"format": 1, "epoch": epoch, "fingerprint": self.fingerprint(), "cuts": self.cuts(),
                "server": self.server.state_dict(), "history": self.history,
                "workers": self.backend.worker_states()}

    def cuts(self, servers: int | None = None) -> list[tuple[int, int]]:
        """The shards' ranges of the flat parameters (for ``servers`` shards; default: this run's)."""
        from .optim import make_rule

        whole = make_rule(self.opts.agg, self.hp).whole_tensors
        return self.layout.shards(self.opts.servers if servers is None else servers, whole_tensors=whole)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        want, got = self.fingerprint(), state["fingerprint"]
        # (fields a checkpoint of an earlier version did not record: it ran with their defaults)
        old = {"nbatches": 1, "staleness": 0, "backup": got.get("backup_workers", 0)}
        diff = {key: (got.get(key, old.get(key)), want[key]) for key in want
                if got.get(key, old.get(key)) != want[key]}
        fixed = {key: d for key, d in diff.items() if key not in elastic_keys()}
        if fixed:
            detail = ", ".join(f"{key}: checkpoint {a!r}, now {b!r}" for key, (a, b) in fixed.items())
            raise ValueError(f"resume=True: the checkpoint in {self.opts.checkpoint!r} was written by a "
                             f"different run ({detail}); use a fresh checkpoint folder or the same options "
                             f"(a resume may change {', '.join(sorted(elastic_keys()))})")
        server = state["server"]
        old_cuts = [tuple(c) for c in state.get("cuts") or self.cuts(int(got["servers"]))]
        if old_cuts != [tuple(c) for c in self.cuts()] or len(server["bad"][0]) != self.opts.k:
            server = reshard(server, old_cuts, self.cuts(), self.opts.k)
        self.server.load_state_dict(server)
        # worker j goes on with old worker j's local optimizer state; new workers start fresh
        self.backend.load_worker_states(state["workers"][:self.opts.k])
        self.resumed = {key: list(d) for key, d in diff.items()}
        self.history = list(state["history"])
        self.first_epoch = int(state["epoch"])


def reshard(d: dict[str, Any], old_cuts: list, new_cuts: list, k: int) -> dict[str, Any]:
    """A server state cut at ``old_cuts`` re-cut at ``new_cuts`` for ``k`` workers: parameters
    and every element-wise optimizer slot are concatenated and sliced again (exactly: nothing is
    recomputed); each shard's step count is the old shards' (they update together); the
    per-worker non-finite flags start clear. A user agg's state is Python of its own making:
    it cannot be re-cut."""
    import numpy as np

    out: dict[str, Any] = {"w": d["w"], "version": d["version"]}
    if "tables" in d:  # (rows are placed by id, not cut by range: nothing to re-cut)
        out["tables"] = d["tables"]
    bad = np.asarray(d["bad"])
    out["bad"] = bad if bad.shape[1] == k else np.zeros((3, k), np.int64)
    slots = sorted({key.split(".", 1)[1] for key in d if key.startswith("shard")} - {"step"})
    if "user" in slots and [tuple(c) for c in old_cuts] != [tuple(c) for c in new_cuts]:
        raise ValueError(f"resume=True with servers={len(new_cuts)}: the checkpoint's user agg state was kept by "
                         f"{len(old_cuts)} shard(s) and cannot be re-cut; resume with servers={len(old_cuts)}")
    steps = [int(d[f"shard{i}.step"]) for i in range(len(old_cuts))]
    for slot in slots:
        if slot == "user":
            for i in range(len(old_cuts)):
                out[f"shard{i}.user"] = d[f"shard{i}.user"]
            continue
        full = np.concatenate([np.asarray(d[f"shard{i}.{slot}"]) for i in range(len(old_cuts))])
        for s, (lo, hi) in enumerate(new_cuts):
            out[f"shard{s}.{slot}"] = full[lo:hi]
    for s in range(len(new_cuts)):
        out[f"shard{s}.step"] = max(steps)
    return out


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
