"""The seams between the pieces, as ``typing.Protocol`` s (checked by mypy in CI).

A sync policy (:mod:`gpups.sync`) sees a :class:`RunHandle`; the run drives a :class:`Backend`,
of which there are two: :class:`gpups.local.LocalBackend` (a server and workers on this
machine's device) and :class:`gpups.ray_backend.run.RayBackend` (the same classes inside Ray
actors). Both hand out a :class:`ServerHandle` and :class:`WorkerHandle` s, and a
:class:`DeviceHandle` declares what its device can do instead of being told apart by name.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence


class Event(Protocol):
    """Set once the work launched before it ran: a CUDA event, a CPU stream's flag, a Ray ref."""

    def synchronize(self) -> Any: ...


class Stream(Protocol):
    name: str

    def launch(self, fn: Callable[..., Any], *args: Any) -> None: ...
    def record(self) -> Any: ...
    def wait_event(self, event: Any) -> None: ...
    def synchronize(self) -> None: ...
    def close(self) -> None: ...


class DeviceHandle(Protocol):
    """Where the work runs (:class:`gpups.device.CPUDevice`, :class:`gpups.gpu.CUDADevice`,
    the Ray driver's :class:`gpups.ray_backend.run.RayDevice`)."""

    @property
    def xp(self) -> Any:
        """The array module."""
    @property
    def kernels(self) -> Any:
        """The kernel module (UPDATES keyed by rule, FUSED_PULL, copy, flag_nonfinite, ...)."""
    @property
    def slots(self) -> int:
        """Device slots that workers and shards are placed on."""
    @property
    def host_memory(self) -> bool:
        """Arrays are numpy arrays in host memory."""
    @property
    def async_launch(self) -> bool:
        """Launches return before the work is done (order them with events)."""
    @property
    def timed_kernels(self) -> bool:
        """A host clock around a kernel times the kernel."""
    @property
    def max_workers(self) -> int | None:
        """The kernels' limit on k."""

    def wait_any(self, events: Sequence[Any]) -> list[int]: ...
    def synchronize(self) -> None: ...
    def describe(self) -> str: ...
    def compute_threads(self, k: int) -> Any: ...


class ServerHandle(Protocol):
    """The parameter server as the run and the policies see it (:class:`gpups.server.ParamServer`,
    :class:`gpups.ray_backend.run.RemoteServer`)."""

    version: int          # updates applied so far: staleness is counted in these
    update_seconds: float

    def apply(self, rows: Sequence[int], scale: float, after: Sequence[Any] = (), pull_into: Any = None,
              slot: int = 0) -> list[Any]: ...
    def pull(self, dst: Any, slot: int = 0) -> list[Any]: ...
    def model(self) -> Any: ...
    def flags(self) -> Any: ...
    def synchronize(self) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, d: dict[str, Any]) -> None: ...


class WorkerHandle(Protocol):
    """A worker's host-side accounts (:class:`gpups.worker.Accounts`: a local
    :class:`~gpups.worker.Worker`, or the Ray driver's proxy of a remote one)."""

    j: int
    slot: int
    cursor: int
    batches: int
    samples: int
    pushes: int
    dropped: int
    pulled: int
    out: bool
    failed: int
    loss_count: int
    staleness: list[int]
    replica: Any          # where a pull lands (Ray: a token; the pull travels as call arguments)
    stream: Any
    where: str

    def plan(self, freq: str, nbatches: int) -> list[int]: ...
    def new_epoch(self) -> None: ...
    def reset_stats(self) -> None: ...
    def mean_loss(self) -> float | None: ...
    def start_epoch(self) -> None: ...


class RunHandle(Protocol):
    """What a sync policy may call (:class:`gpups.runtime.Run`)."""

    clock_log: list[tuple[int, int, int]]

    @property
    def server(self) -> ServerHandle: ...
    @property
    def workers(self) -> Sequence[WorkerHandle]: ...
    @property
    def device(self) -> DeviceHandle: ...

    def plans(self) -> list[list[int]]: ...
    def start(self, j: int, nsteps: int, epoch: int, pulled: list | None = None) -> Any: ...
    def apply_async(self, j: int, pull: bool = False) -> list[Any]: ...
    def start_unlocked(self, j: int, nsteps: int, epoch: int) -> None: ...


class Backend(Protocol):
    """Where the server and the workers live; the run's loop is the same for every backend."""

    @property
    def server(self) -> ServerHandle: ...
    @property
    def workers(self) -> Sequence[WorkerHandle]: ...
    @property
    def device(self) -> DeviceHandle: ...
    @property
    def restarts(self) -> bool:
        """State can be lost mid-run (a dead actor): the run keeps its start to go back to."""

    def start(self, j: int, nsteps: int, epoch: int, pulled: list | None) -> Any:
        """Pull into worker j (unless ``pulled`` holds a pull made already), run ``nsteps``
        batches, return the event of its push."""
    def start_unlocked(self, j: int, nsteps: int, epoch: int, scale: float) -> None:
        """Worker j pulls, runs and applies its own push (``scale`` of it), unordered, unlocked."""
    def barrier(self, progress: Any) -> None:
        """Every launch of the epoch done (errors surface here)."""
    def run_epoch(self, epoch: Callable[[], None], restore: Callable[[], int | None]) -> None:
        """Run one epoch; a backend that lost state may ``restore()`` the newest checkpoint (it
        returns that checkpoint's epoch, or None when the run keeps none) and run it again."""
    def skipped(self) -> list[int]: ...
    def redeal(self) -> None:
        """The rows of dropped workers go to the others (at an epoch's start)."""
    def attach(self, trace: Any) -> None:
        """Record spans into ``trace`` (a :class:`gpups.trace.Trace`) where the backend can."""
    def faults(self) -> dict[str, Any]:
        """What went wrong and was recovered since the last call (history fields; {} if nothing)."""
    def worker_states(self) -> list[dict[str, Any]]: ...
    def load_worker_states(self, states: list[dict[str, Any]]) -> None: ...
    def cancel(self) -> None: ...
    def finish(self) -> None:
        """The run ended well: keep what the result needs before :meth:`close`."""
    def close(self) -> None: ...
