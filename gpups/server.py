"""The parameter server: flat parameters cut into shards, each with its own stream and state.

Workers push by writing their payload (a gradient, or a model delta) into their row of the
push buffer ``G`` on their own stream, then recording an event. :meth:`ParamServer.apply` makes
every shard's stream wait on those events and runs one fused aggregate+update kernel over the
shard's range of ``G`` and of the parameters. A shard's stream serialises its updates and pulls,
so it is the shard's lock: no other lock exists.

On several GPUs each device slot has a :class:`Home`: its own parameter-sized ``w``, ``G`` and
flags. A shard owns its range of its home's ``w``; a worker writes its push into its home's
``G`` and sends the ranges of shards homed elsewhere there itself (:meth:`sender`, async copies
on its stream); a pull copies each shard's range into the puller's buffer on the shard's stream.
With one slot nothing is copied between homes: there is one.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .flat import Layout


@dataclass
class Home:
    """One device slot's parameter-sized buffers."""

    slot: int
    w: Any    # parameters: current in the ranges of the shards homed here
    G: Any    # (k, n) push buffers: rows of the workers homed here, shard ranges of the others
    bad: Any  # (3, k) int64: [0] push flagged non-finite (skipped), [1] count, [2] first batch


@dataclass
class Shard:
    index: int
    lo: int
    hi: int
    stream: Any
    state: dict[str, Any]
    home: Home
    G: Any = None  # this shard's columns of its home's push buffers
    w: Any = None  # this shard's range of its home's parameters
    step: int = 0  # updates applied to this shard (adam's bias correction)

    @property
    def slot(self) -> int:
        return self.home.slot


@dataclass
class ParamServer:
    device: Any
    layout: Layout
    w: Any                  # flat parameters, on the device (slot 0's home)
    rule: Any               # optimizer (optim.Builtin or optim.UserRule)
    k: int
    servers: int = 1
    push: str = "gradients"
    shards: list[Shard] = field(init=False)
    G: Any = field(init=False)  # (k, n) push buffers of slot 0, row j = worker j's
    bad: Any = field(init=False)  # (3, k) flags of slot 0 (see Home)
    version: int = 0            # updates applied so far (staleness is measured in these)
    updated: dict = field(default_factory=dict)  # per slot: events after the latest update
    update_seconds: float = 0.0  # CPU: wall time spent in update kernels (the bench's server share)
    trace: Any = None            # a gpups.trace.Trace, when the run records a timeline
    tables: Any = None           # a gpups.tables.TableServer: the sparse tables beside the flat parameters

    def __post_init__(self) -> None:
        dev, xp, n = self.device, self.device.xp, self.layout.size
        # fixed-argument server work (updates of given rows, pulls into given replicas) replays
        # as CUDA graphs where the rule's kernel arguments do not change from step to step
        self.graphs = dev.graph_cache()
        self._streams: dict[tuple[int, int], Any] = {}  # (worker, shard): HOGWILD across GPUs
        self.replayable = not (self.rule.on_host or self.rule.step_dependent)
        cuts = self.layout.shards(self.servers, whole_tensors=self.rule.whole_tensors)
        used = {dev.worker_slot(j) for j in range(self.k)} | {dev.shard_slot(s) for s in range(len(cuts))}
        w0 = dev.to_host(self.w) if len(used) > 1 else None
        self.homes: dict[int, Home] = {}
        for slot in sorted(used):
            with dev.on(slot):
                w = self.w if slot == 0 else dev.place(w0, slot)
                self.homes[slot] = Home(slot, w, xp.zeros((self.k, n), w.dtype), xp.zeros((3, self.k), xp.int64))
        self.G, self.bad = self.homes[0].G, self.homes[0].bad
        self.shards = []
        for s, (lo, hi) in enumerate(cuts):
            home = self.homes[dev.shard_slot(s)]
            with dev.on(home.slot):
                state = self.rule.init_state(xp, hi - lo, self.w.dtype)
            self.shards.append(Shard(s, lo, hi, dev.server_stream(s), state, home, home.G[:, lo:hi], home.w[lo:hi]))

    def home(self, slot: int) -> Home:
        return self.homes[slot]

    # -- scheduler side ------------------------------------------------------------------------
    def apply(self, rows: Sequence[int], scale: float, after: Sequence[Any] = (),
              pull_into: Any = None, slot: int = 0) -> list[Any]:
        """Aggregate ``G[rows] * scale`` into every shard once the ``after`` events are reached;
        with ``pull_into`` (a buffer on ``slot``), copy the new parameters there too (one graph
        per shard on a GPU) and return the events a worker waits on before using them."""
        rows = tuple(int(j) for j in rows) if type(rows) is not tuple else rows
        events = []
        clock = self.trace.clock if self.trace is not None else None  # (a GPU: CUDA events on the shard's stream)
        for sh in self.shards:
            rows_dev = self.device.rows(rows, sh.slot)
            for ev in after:
                sh.stream.wait_event(ev)
            sh.step += 1
            work: tuple[Any, ...]
            if pull_into is None:
                work = (self._kernels, sh, rows_dev, scale, False, sh.step)
            else:
                work = (self._update_pull, sh, rows_dev, scale, sh.step, self._part(pull_into, sh), slot == sh.slot)
            start = clock.mark(sh.stream) if clock is not None else None
            if self.replayable:
                key = ("update", sh.index, rows, scale, None if pull_into is None else id(pull_into))
                self.graphs.launch(sh.stream, key, *work)
            else:
                sh.stream.launch(*work)
            if clock is not None:
                clock.span(2, sh.index, "apply", start, clock.mark(sh.stream), pushes=len(rows))
            if pull_into is not None:
                events.append(sh.stream.record())
        if self.tables is not None:
            self.tables.apply(rows, scale, after)
        self.updated = {}  # recorded lazily, once per slot, by the next pull into a home
        self.version += 1
        return events

    def _update_pull(self, sh: Shard, rows: Any, scale: float, step: int, dst: Any, near: bool) -> None:
        if near and self.device.kernels.FUSED_PULL and not self.rule.on_host:
            self._kernels(sh, rows, scale, False, step, pull=dst)  # one pass: update and copy
        else:
            self._kernels(sh, rows, scale, False, step)
            self.device.kernels.copy(dst, sh.w)

    def pull(self, dst: Any, slot: int = 0) -> list[Any]:
        """Copy the parameters into ``dst`` (on ``slot``) on the shards' streams; returns their
        events. Into a home's own ``w`` (BSP workers compute on it), the shards homed there
        copy nothing and the others copy once per update."""
        home = dst is self.homes[slot].w
        if home and slot in self.updated:
            return self.updated[slot]
        events = []
        copy = self.device.kernels.copy
        timed = self.trace is not None and self.device.timed_kernels
        clock = self.trace.clock if self.trace is not None else None
        for sh in self.shards:
            if not (home and sh.slot == slot):
                t0 = time.perf_counter() if timed else 0.0
                start = clock.mark(sh.stream) if clock is not None else None
                self.graphs.launch(sh.stream, ("pull", sh.index, id(dst)), copy, self._part(dst, sh), sh.w)
                if timed:  # (a CPU shard's stream runs the copy inline)
                    self.trace.span(2, sh.index, "pull", t0, time.perf_counter())
                elif clock is not None:
                    clock.span(2, sh.index, "pull", start, clock.mark(sh.stream))
            events.append(sh.stream.record())
        if home:
            self.updated[slot] = events
        return events

    def _part(self, flat: Any, sh: Shard) -> Any:
        """Shard sh's range of a flat buffer (the buffer itself when there is one shard)."""
        return flat if len(self.shards) == 1 else flat[sh.lo:sh.hi]

    def sender(self, j: int) -> Callable[[], None] | None:
        """Device work, for worker j's stream after its interval, that sends its push to the
        shards homed on other slots (the ranges of ``G[j]`` and its skip flag); None when all
        shards share its home."""
        mine = self.homes[self.device.worker_slot(j)]
        far = [sh for sh in self.shards if sh.home is not mine]
        if not far:
            return None
        copy = self.device.kernels.copy

        def send() -> None:
            for sh in far:
                copy(sh.G[j], mine.G[j, sh.lo:sh.hi])
            for slot in {sh.slot for sh in far}:
                copy(self.homes[slot].bad[0, j:j + 1], mine.bad[0, j:j + 1])
        return send

    def copy_model(self, dst: Any) -> None:
        """dst[...] = the current parameters, on the caller's stream, unordered (HOGWILD)."""
        copy = self.device.kernels.copy
        if len(self.homes) == 1:
            copy(dst, self.w)
            return
        for sh in self.shards:
            copy(dst[sh.lo:sh.hi], sh.w)

    def model(self) -> Any:
        """The parameters as one flat array on slot 0 (the other homes' ranges gathered in);
        call with the streams idle (after a barrier)."""
        far = [sh for sh in self.shards if sh.slot != 0]
        if far:
            with self.device.on(0):
                for sh in far:
                    self.device.kernels.copy(self.w[sh.lo:sh.hi], sh.w)
            self.device.synchronize()
        return self.w

    def flags(self) -> np.ndarray:
        """The (3, k) non-finite flags on the host; column j from worker j's home."""
        if len(self.homes) == 1:
            return self.device.to_host(self.bad)
        host = {slot: self.device.to_host(h.bad) for slot, h in self.homes.items()}
        return np.stack([host[self.device.worker_slot(j)][:, j] for j in range(self.k)], axis=1)

    # -- worker side (HOGWILD): the worker's stream, no ordering, no lock ----------------------
    def push_unlocked(self, rows: Any, scale: float) -> None:
        """The device work of a HOGWILD push (bookkeeping in :meth:`count_unlocked`)."""
        for sh in self.shards:
            self._kernels(sh, rows, scale, True, sh.step + 1)
        if self.tables is not None:
            self.tables.apply(rows, scale, locked=False)

    def push_from(self, j: int, scale: float, after: Any) -> list[Any]:
        """HOGWILD on several GPUs: worker j's push (sent to the shards' homes), applied to every
        shard once ``after`` is reached, each from a stream of j's own on the shard's device:
        unordered with the other workers' pushes, as on one GPU. Returns their events (j waits
        on them before it writes its next push)."""
        events = []
        for sh in self.shards:
            stream = self._streams.get((j, sh.index))
            if stream is None:
                stream = self._streams[(j, sh.index)] = self.device.server_stream(sh.index)
            if after is not None:
                stream.wait_event(after)
            stream.launch(self._kernels, sh, self.device.rows((j,), sh.slot), scale, True, sh.step + 1)
            events.append(stream.record())
        return events

    def count_unlocked(self) -> None:
        for sh in self.shards:
            sh.step += 1
        self.version += 1

    def _kernels(self, sh: Shard, rows: Any, scale: float, serial: bool, step: int, **pull: Any) -> None:
        if self.device.timed_kernels:
            t0 = time.perf_counter()
            self._run_kernels(sh, rows, scale, serial, step, **pull)
            t1 = time.perf_counter()
            self.update_seconds += t1 - t0
            if self.trace is not None:
                self.trace.span(2, sh.index, "apply", t0, t1, pushes=len(rows))
        else:  # asynchronous: a host clock would measure the launch only
            self._run_kernels(sh, rows, scale, serial, step, **pull)

    def _run_kernels(self, sh: Shard, rows: Any, scale: float, serial: bool, step: int, **pull: Any) -> None:
        """The shard's update; ``pull=dst`` (kernels with FUSED_PULL) writes the result to dst too."""
        G, w = sh.G, sh.w
        kernels = self.device.kernels
        bad = sh.home.bad[0]
        if self.push == "model":  # payloads are model deltas: w += scale * sum(deltas)
            kernels.UPDATES["sgd"][1 if serial else 0](G, rows, bad, w.dtype.type(scale), w, w.dtype.type(-1.0),
                                                       **pull)
        else:
            self.rule.apply(kernels, serial, G, rows, bad, scale, w, sh.state, step, lo=sh.lo, **pull)

    def synchronize(self) -> None:
        for sh in self.shards:
            sh.stream.synchronize()

    def close(self) -> None:
        """The run is over: the shards' streams (and HOGWILD's per-worker ones) go."""
        for stream in [sh.stream for sh in self.shards] + list(self._streams.values()):
            stream.close()

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        to_host = self.device.to_host
        out: dict[str, Any] = {"w": to_host(self.model()), "version": self.version, "bad": self.flags()}
        if self.tables is not None:
            out["tables"] = self.tables.state_dict()
        for sh in self.shards:
            out[f"shard{sh.index}.step"] = sh.step
            for slot, arr in sh.state.items():
                out[f"shard{sh.index}.{slot}"] = arr if slot == "user" else to_host(arr)
        return out

    def load_state_dict(self, d: dict[str, Any]) -> None:
        for home in self.homes.values():
            with self.device.on(home.slot):
                home.w[...] = self.device.place(d["w"], home.slot)
                home.bad[...] = self.device.place(d["bad"], home.slot)
        self.version = int(d["version"])
        if self.tables is not None:
            self.tables.load_state_dict(d["tables"])
        for sh in self.shards:
            prefix = f"shard{sh.index}."
            sh.step = int(d[prefix + "step"])
            for key, val in d.items():  # every slot saved, also those a user's rule made itself
                if not key.startswith(prefix) or key == prefix + "step":
                    continue
                slot = key[len(prefix):]
                if slot == "user":
                    sh.state[slot] = val
                else:
                    with self.device.on(sh.slot):
                        sh.state[slot][...] = self.device.place(val, sh.slot)
