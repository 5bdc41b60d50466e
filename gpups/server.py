"""The parameter server: flat parameters cut into shards, each with its own stream and state.

Workers push by writing their payload (a gradient, or a model delta) into their row of the
push buffer ``G`` on their own stream, then recording an event. :meth:`ParamServer.apply` makes
every shard's stream wait on those events and runs one fused aggregate+update kernel over the
shard's range of ``G`` and of the parameters. A shard's stream serialises its updates and pulls,
so it is the shard's lock: no other lock exists.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from .flat import Layout
from .optim import UserRule


@dataclass
class Shard:
    index: int
    lo: int
    hi: int
    stream: Any
    state: dict[str, Any]
    G: Any = None  # this shard's columns of the push buffers
    w: Any = None  # this shard's range of the parameters
    step: int = 0  # updates applied to this shard (adam's bias correction)


@dataclass
class ParamServer:
    device: Any
    layout: Layout
    w: Any                  # flat parameters, on the device
    rule: Any               # optimizer (optim.Builtin or optim.UserRule)
    k: int
    servers: int = 1
    push: str = "gradients"
    shards: list[Shard] = field(init=False)
    G: Any = field(init=False)  # (k, n) push buffers, row j = worker j's
    bad: Any = field(init=False)  # (3, k) int64: [0] push flagged non-finite (skipped), [1] count, [2] first batch
    version: int = 0            # updates applied so far (staleness is measured in these)
    updated: list = field(default_factory=list)  # per shard: event after its latest update
    update_seconds: float = 0.0  # CPU: wall time spent in update kernels (the bench's server share)

    def __post_init__(self) -> None:
        xp, n = self.device.xp, self.layout.size
        self.G = xp.zeros((self.k, n), self.w.dtype)
        self.bad = xp.zeros((3, self.k), xp.int64)
        if isinstance(self.rule, UserRule):
            self.rule.layout = self.layout
        # fixed-argument server work (updates of given rows, pulls into given replicas) replays
        # as CUDA graphs where the rule's kernel arguments do not change from step to step
        self.graphs = self.device.graph_cache()
        self.replayable = not isinstance(self.rule, UserRule) and self.rule.name != "adam"
        cuts = self.layout.shards(self.servers, whole_tensors=isinstance(self.rule, UserRule))
        self.shards = [Shard(s, lo, hi, self.device.server_stream(s),
                             self.rule.init_state(xp, hi - lo, self.w.dtype), self.G[:, lo:hi], self.w[lo:hi])
                       for s, (lo, hi) in enumerate(cuts)]

    # -- scheduler side ------------------------------------------------------------------------
    def apply(self, rows: Sequence[int], scale: float, after: Sequence[Any] = (),
              pull_into: Any = None) -> list[Any]:
        """Aggregate ``G[rows] * scale`` into every shard once the ``after`` events are reached;
        with ``pull_into``, copy the new parameters there too (one graph per shard on a GPU)
        and return the events a worker waits on before using them."""
        rows = tuple(int(j) for j in rows) if type(rows) is not tuple else rows
        rows_dev = self.device.rows(rows)
        events = []
        for sh in self.shards:
            for ev in after:
                sh.stream.wait_event(ev)
            sh.step += 1
            if pull_into is None:
                work = (self._kernels, sh, rows_dev, scale, False, sh.step)
            else:
                work = (self._update_pull, sh, rows_dev, scale, sh.step, self._part(pull_into, sh))
            if self.replayable:
                key = ("update", sh.index, rows, scale, None if pull_into is None else id(pull_into))
                self.graphs.launch(sh.stream, key, *work)
            else:
                sh.stream.launch(*work)
            if pull_into is not None:
                events.append(sh.stream.record())
        self.updated = []  # recorded lazily, once, by the next aliased pull
        self.version += 1
        return events

    def _update_pull(self, sh: Shard, rows: Any, scale: float, step: int, dst: Any) -> None:
        if getattr(self.device.kernels, "FUSED_PULL", False) and not isinstance(self.rule, UserRule):
            self._kernels(sh, rows, scale, False, step, pull=dst)  # one pass: update and copy
        else:
            self._kernels(sh, rows, scale, False, step)
            self.device.kernels.copy(dst, sh.w)

    def pull(self, dst: Any) -> list[Any]:
        """Copy the parameters into ``dst`` on the shards' streams; returns their events.
        A worker whose replica *is* the parameters (BSP) only waits for the shards' updates."""
        if dst is self.w:
            if not self.updated:
                self.updated = [sh.stream.record() for sh in self.shards]
            return self.updated
        events = []
        copy = self.device.kernels.copy
        for sh in self.shards:
            self.graphs.launch(sh.stream, ("pull", sh.index, id(dst)), copy, self._part(dst, sh), sh.w)
            events.append(sh.stream.record())
        return events

    def _part(self, flat: Any, sh: Shard) -> Any:
        """Shard sh's range of a flat buffer (the buffer itself when there is one shard)."""
        return flat if len(self.shards) == 1 else flat[sh.lo:sh.hi]

    # -- worker side (HOGWILD): the worker's stream, no ordering, no lock ----------------------
    def push_unlocked(self, rows: Any, scale: float) -> None:
        """The device work of a HOGWILD push (bookkeeping in :meth:`count_unlocked`)."""
        for sh in self.shards:
            self._kernels(sh, rows, scale, True, sh.step + 1)

    def count_unlocked(self) -> None:
        for sh in self.shards:
            sh.step += 1
        self.version += 1

    def _kernels(self, sh: Shard, rows: Any, scale: float, serial: bool, step: int, **pull: Any) -> None:
        if self.device.kind == "cpu":
            t0 = time.perf_counter()
            self._run_kernels(sh, rows, scale, serial, step, **pull)
            self.update_seconds += time.perf_counter() - t0
        else:  # asynchronous: a host clock would measure the launch only
            self._run_kernels(sh, rows, scale, serial, step, **pull)

    def _run_kernels(self, sh: Shard, rows: Any, scale: float, serial: bool, step: int, **pull: Any) -> None:
        """The shard's update; ``pull=dst`` (kernels with FUSED_PULL) writes the result to dst too."""
        G, w = sh.G, sh.w
        kernels = self.device.kernels
        bad = self.bad[0]
        if self.push == "model":  # payloads are model deltas: w += scale * sum(deltas)
            kernels.UPDATES["sgd"][1 if serial else 0](G, rows, bad, w.dtype.type(scale), w, w.dtype.type(-1.0),
                                                       **pull)
        elif isinstance(self.rule, UserRule):
            self.rule.apply(kernels, serial, G, rows, bad, scale, w, sh.state, step, lo=sh.lo)
        else:
            self.rule.apply(kernels, serial, G, rows, bad, scale, w, sh.state, step, **pull)

    def synchronize(self) -> None:
        for sh in self.shards:
            sh.stream.synchronize()

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        to_host = self.device.to_host
        out: dict[str, Any] = {"w": to_host(self.w), "version": self.version, "bad": to_host(self.bad)}
        for sh in self.shards:
            out[f"shard{sh.index}.step"] = sh.step
            for slot, arr in sh.state.items():
                out[f"shard{sh.index}.{slot}"] = arr if slot == "user" else to_host(arr)
        return out

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.w[...] = self.device.place(d["w"])
        self.version = int(d["version"])
        self.bad[...] = self.device.place(d["bad"])
        for sh in self.shards:
            sh.step = int(d[f"shard{sh.index}.step"])
            for slot in list(sh.state):
                val = d[f"shard{sh.index}.{slot}"]
                if slot == "user":
                    sh.state[slot] = val
                else:
                    sh.state[slot][...] = self.device.place(val)
