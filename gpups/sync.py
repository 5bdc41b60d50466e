"""Sync modes: small policies over the one server and the one worker type.

Each policy runs one epoch: it decides when a worker may start its next push interval and when
and how pushes are applied. The work itself always goes through the run's primitives
(:class:`gpups.seams.RunHandle`): :meth:`start` (pull, then the worker's interval on its stream,
then an event), :meth:`apply_async`, ``server.apply`` and, for workers that pull and push by
themselves, :meth:`start_unlocked`.

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

A policy also declares what the runtime needs to know about it (the class attributes of
:class:`Policy`), and owns its parameters (``SSP(staleness=2)``, ``SBP(backup=1)``): no other
module compares mode names. Adding a mode is a class here (docs/architecture.md).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from .errors import option_error

if TYPE_CHECKING:
    from .seams import RunHandle


class Policy:
    """What every sync mode declares. The runtime reads these traits; only this module knows
    which mode has which."""

    name: ClassVar[str] = ""
    #: nothing changes the server's parameters while workers compute on them (BSP's rounds), so
    #: one-step workers may compute on them directly instead of on a pulled replica
    still_during_rounds: ClassVar[bool] = False
    #: workers pull and apply their own pushes, unordered and unlocked (HOGWILD)
    unlocked: ClassVar[bool] = False
    #: an update aggregates a round of pushes from several workers (else one push each)
    rounds: ClassVar[bool] = False
    #: on Ray, a dead worker's call is retried with its own arguments (it means "this round's
    #: model"); else the driver resubmits it from the server's current model
    retry_same_args: ClassVar[bool] = False

    def params(self) -> dict[str, Any]:
        """The mode's parameters (part of a checkpoint's fingerprint)."""
        return {}

    def check(self, k: int) -> None:
        """A ``ValueError`` if the parameters do not fit ``k`` workers."""

    def history(self, workers: list) -> dict[str, Any]:
        """Extra per-epoch history fields."""
        return {}

    @classmethod
    def typical(cls) -> "Policy":
        """The mode with parameters typical for a benchmark."""
        return cls()

    def run_epoch(self, run: RunHandle, epoch: int) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.params() == self.params()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), tuple(self.params().items())))


class BSP(Policy):
    """Each round waits for every worker with work, then applies the mean of their pushes."""

    name = "bsp"
    still_during_rounds = True
    rounds = True
    retry_same_args = True

    def run_epoch(self, run: RunHandle, epoch: int) -> None:
        plans = run.plans()
        for r in range(max(len(p) for p in plans)):
            active = [j for j, p in enumerate(plans) if r < len(p)]
            events = [run.start(j, plans[j][r], epoch) for j in active]
            run.server.apply(active, 1.0 / len(active), after=events)
            for j in active:
                run.workers[j].staleness.append(0)


class Arrival(Policy):
    """Base of the arrival-driven policies: launch, wait for any, let the policy react."""

    def run_epoch(self, run: RunHandle, epoch: int) -> None:
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
    """Each push is applied as it arrives; that worker then pulls the newest model."""

    name = "asp"

    def arrived(self, j: int) -> None:
        if self.has_work(j):  # apply and pull in one go, then straight back to work
            self.start(j, self.run.apply_async(j, pull=True))
        else:
            self.run.apply_async(j)


class SSP(ASP):
    """ASP, but no worker starts clock c while the slowest worker is below c - `staleness`."""

    name = "ssp"

    def __init__(self, staleness: int = 0):
        self.s = _count("staleness", staleness)

    def params(self) -> dict[str, Any]:
        return {"staleness": self.s}

    @classmethod
    def typical(cls) -> "SSP":
        return cls(staleness=2)

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
    """BSP with `backup_workers` = b: a round closes on the first k-b pushes; pushes computed for
    a closed round arrive too late and are dropped (the worker pulls and goes on)."""

    name = "sbp"
    rounds = True

    def __init__(self, backup: int = 0):
        self.b = _count("backup", backup)

    def params(self) -> dict[str, Any]:
        return {"backup": self.b}

    def check(self, k: int) -> None:
        if self.b > k - 1:
            raise option_error("backup_workers", self.b, f"an integer in [0, {k - 1}] (fewer than k={k} workers)")

    def history(self, workers: list) -> dict[str, Any]:
        return {"dropped": [w.dropped for w in workers]}

    @classmethod
    def typical(cls) -> "SBP":
        return cls(backup=1)

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


class Hogwild(Policy):
    """Each worker applies its own pushes to the shared parameters, no lock, no order."""

    name = "hogwild"
    still_during_rounds = True  # (one-step workers compute on the shared parameters: the point)
    unlocked = True
    retry_same_args = True

    def run_epoch(self, run: RunHandle, epoch: int) -> None:
        plans = run.plans()
        for r in range(max(len(p) for p in plans)):  # interleaved: no worker's queue goes first
            for j, plan in enumerate(plans):
                if r < len(plan):
                    run.start_unlocked(j, plan[r], epoch)


HOGWILD = Hogwild
POLICIES: dict[str, type[Policy]] = {p.name: p for p in (BSP, ASP, SSP, SBP, Hogwild)}
NAMES = ("BSP", "ASP", "SSP", "SBP", "HOGWILD")  # as users write them (case-insensitive)


def describe() -> str:
    """One sentence per mode, from the policies' docstrings (README's options table uses it)."""
    return " ".join(f"{name}: {' '.join(POLICIES[name.lower()].__doc__.split())}"  # type: ignore[union-attr]
                    for name in NAMES)


def _count(option: str, value: Any) -> int:
    import numpy as np

    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
        raise option_error(option, value, "an integer >= 0")
    return int(value)


def resolve(utype: Any, staleness: Any = 0, backup_workers: Any = 0) -> Policy:
    """The policy for ``utype``: a name (its parameters from ``staleness`` and
    ``backup_workers``), or a :class:`Policy` object, which owns its parameters."""
    if isinstance(utype, Policy):
        for option, value in (("staleness", staleness), ("backup_workers", backup_workers)):
            if value != 0:
                raise option_error(option, value, f"0 when utype is a policy object ({utype!r} owns its "
                                   "parameters)")
        return utype
    if isinstance(utype, str) and utype.lower() in POLICIES:
        cls = POLICIES[utype.lower()]
        if staleness != 0 and cls is not SSP:
            raise option_error("staleness", staleness, "0 unless utype='SSP'")
        if backup_workers != 0 and cls is not SBP:
            raise option_error("backup_workers", backup_workers, "0 unless utype='SBP'")
        if cls is SSP:
            return SSP(_count("staleness", staleness))
        if cls is SBP:
            return SBP(_count("backup_workers", backup_workers))
        return cls()
    raise option_error("utype", utype, f"one of {', '.join(repr(n) for n in NAMES)} or a policy object such as "
                       "gpups.SSP(staleness=2)")
