"""Sync modes: small policies over the one server and the one worker type.

Each policy runs one epoch: it decides when a worker may start its next push interval and when
and how pushes are applied. The work itself always goes through :meth:`Run.start` (pull, then
the worker's interval on its stream, then an event) and :meth:`ParamServer.apply`.

- :class:`BSP` is a static schedule: round r launches every worker with work, and the server
  streams wait on all their events before one mean update. No host wait per round, so on a GPU
  the whole epoch is enqueued ahead.
- :class:`ASP`, :class:`SSP` and :class:`SBP` are driven by arrivals: the scheduler waits for
  whichever worker finishes first (CPU: condition variable; GPU: polling ``Event.done``) and the
  policy decides what that arrival means.
- :class:`Hogwild` is static too: each worker's stream applies its own pushes to the shared
  parameters, with no ordering and no lock.

Async pushes (ASP, SSP, HOGWILD) each contribute ``1/k`` of their payload, so the learning rate
means the same as in BSP's mean: k pushes move the model as far as one BSP round.
"""
from __future__ import annotations

from typing import Any


class BSP:
    name = "bsp"

    def run_epoch(self, run: Any, epoch: int) -> None:
        plans = run.plans()
        for r in range(max(len(p) for p in plans)):
            active = [j for j, p in enumerate(plans) if r < len(p)]
            events = [run.start(j, plans[j][r], epoch) for j in active]
            run.server.apply(active, 1.0 / len(active), after=events)
            for j in active:
                run.workers[j].staleness.append(0)


class Arrival:
    """Base of the arrival-driven policies: launch, wait for any, let the policy react."""

    name = "arrival"

    def run_epoch(self, run: Any, epoch: int) -> None:
        self.run, self.epoch = run, epoch
        self.plans = run.plans()
        self.next = [0] * len(self.plans)  # next interval per worker
        self.running: dict[int, Any] = {}
        self.begin()
        for j in range(len(self.plans)):
            self.try_start(j)
        while self.running:
            order = list(self.running)
            for i in run.device.wait_any([self.running[j] for j in order]):
                j = order[i]
                self.running.pop(j).synchronize()  # re-raises the worker's error
                self.arrived(j)

    def has_work(self, j: int) -> bool:
        return self.next[j] < len(self.plans[j])

    def start(self, j: int, pulled: list | None = None) -> None:
        self.running[j] = self.run.start(j, self.plans[j][self.next[j]], self.epoch, pulled)
        self.next[j] += 1

    # policy hooks
    def begin(self) -> None:
        pass

    def try_start(self, j: int) -> None:
        if self.has_work(j):
            self.start(j)

    def arrived(self, j: int) -> None:
        raise NotImplementedError


class ASP(Arrival):
    """Each push is applied as it arrives; the worker then pulls the newest model."""

    name = "asp"

    def arrived(self, j: int) -> None:
        if self.has_work(j):  # apply and pull in one go, then straight back to work
            self.start(j, self.run.apply_async(j, pull=True))
        else:
            self.run.apply_async(j)


class SSP(ASP):
    """ASP, but a worker may start clock c only while c - (slowest clock) <= staleness."""

    name = "ssp"

    def __init__(self, staleness: int):
        self.s = staleness

    def begin(self) -> None:
        self.clock = [0] * len(self.plans)
        self.blocked: set[int] = set()

    def slowest(self) -> int:
        live = [c for j, c in enumerate(self.clock) if self.has_work(j) or j in self.running]
        return min(live) if live else 0

    def try_start(self, j: int) -> None:
        if not self.has_work(j):
            return
        gap = self.clock[j] - self.slowest()
        if gap > self.s:
            self.blocked.add(j)
            return
        self.blocked.discard(j)
        self.run.clock_log.append((j, self.clock[j], self.clock[j] - gap))
        self.start(j)

    def arrived(self, j: int) -> None:
        self.run.apply_async(j)
        self.clock[j] += 1
        for i in sorted(self.blocked | {j}):
            self.try_start(i)


class SBP(Arrival):
    """Synchronous with b backup workers: each round aggregates the first k-b pushes; pushes
    computed for a closed round arrive too late and are dropped (the worker pulls and goes on)."""

    name = "sbp"

    def __init__(self, backup: int):
        self.b = backup

    def begin(self) -> None:
        self.round, self.tag = 0, [0] * len(self.plans)
        self.pushed: list[int] = []

    def start(self, j: int, pulled: list | None = None) -> None:
        self.tag[j] = self.round
        super().start(j, pulled)

    def arrived(self, j: int) -> None:
        if self.tag[j] == self.round:
            self.pushed.append(j)
        else:
            self.run.workers[j].dropped += 1
            self.try_start(j)
        self.maybe_close()

    def will_push(self, j: int) -> bool:
        """Whether worker j can still push in the open round."""
        if j in self.pushed:
            return False
        if j in self.running and self.tag[j] == self.round:
            return True
        return self.has_work(j)  # idle, or a straggler that restarts after its drop

    def maybe_close(self) -> None:
        possible = len(self.pushed) + sum(self.will_push(j) for j in range(len(self.plans)))
        need = min(len(self.plans) - self.b, possible)
        if not self.pushed or len(self.pushed) < need:
            return
        rows, self.pushed = sorted(self.pushed), []
        self.run.server.apply(rows, 1.0 / len(rows))
        self.round += 1
        for j in rows:
            self.run.workers[j].staleness.append(0)
            self.try_start(j)


class Hogwild:
    name = "hogwild"

    def run_epoch(self, run: Any, epoch: int) -> None:
        plans = run.plans()
        for r in range(max(len(p) for p in plans)):  # interleaved: no worker's queue goes first
            for w, plan in zip(run.workers, plans):
                if r < len(plan):
                    w.stream.launch(run.hogwild_interval, w, plan[r], epoch)


def make_policy(utype: str, staleness: int, backup_workers: int) -> Any:
    if utype == "ssp":
        return SSP(staleness)
    if utype == "sbp":
        return SBP(backup_workers)
    return {"bsp": BSP, "asp": ASP, "hogwild": Hogwild}[utype]()
