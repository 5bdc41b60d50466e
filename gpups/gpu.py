"""The GPU engine: CUDA streams and events behind the same interface as :mod:`gpups.streams`,
and CUDA graphs of the workers' push intervals.

One host thread drives everything. Each worker owns a non-blocking stream; each server shard
owns one too. BSP orders work with events only (shard streams wait on the workers' push events,
worker streams wait on the shards' update events); ASP/SSP/SBP poll ``Event.done``.

A push interval of a built-in model (gather the batch at the worker's device-side counter,
forward, backward, local updates, non-finite check) is captured once per worker and interval
length as a CUDA graph and replayed with one launch. GEMMs go through :mod:`gpups.kernels.cublas`,
which works inside a capture. Whatever cannot be captured runs eagerly, with the reason given
once as a warning.
"""
from __future__ import annotations

import contextlib
import os
import time
import warnings
from typing import Any, Callable, Iterator, Sequence

import cupy as cp
import numpy as np

from .capture import holding, release_stream
from .streams import StreamError

_warned: set[str] = set()


class CudaEvent:
    __slots__ = ("raw",)
    error = None

    def __init__(self, raw: Any):
        self.raw = raw

    @property
    def done(self) -> bool:
        return self.raw.done

    def synchronize(self, timeout: float | None = None) -> None:
        self.raw.synchronize()


class CudaStream:
    """A non-blocking CUDA stream; ``launch`` runs a callable with it as the current stream."""

    RING = 8  # events are recycled: a stream's recent events stay valid for the policies

    def __init__(self, name: str, device_id: int, switch: bool = False):
        self.name, self.device_id, self.switch = name, device_id, switch
        with cp.cuda.Device(device_id):
            self.raw = cp.cuda.Stream(non_blocking=True)
            self._events = [cp.cuda.Event(block=False, disable_timing=True) for _ in range(self.RING)]
        self._next = 0

    def launch(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            if self.switch:  # several GPUs: make the stream's device current first
                with cp.cuda.Device(self.device_id), self.raw:
                    fn(*args)
            else:  # one GPU per run: it is current already
                with self.raw:
                    fn(*args)
        except Exception as exc:
            raise StreamError(self.name, exc) from exc

    def record(self) -> CudaEvent:
        ev = self._events[self._next]
        self._next = (self._next + 1) % self.RING
        ev.record(self.raw)
        return CudaEvent(ev)

    def wait_event(self, event: CudaEvent) -> None:
        self.raw.wait_event(event.raw)

    def synchronize(self) -> None:
        self.raw.synchronize()

    def cancel(self) -> None:
        pass

    def close(self) -> None:
        """The stream's run is over: its cuBLAS handle (and 32 MiB workspace), its kernel
        scratch and the models' workspaces kept for it go (stream pointers recur)."""
        try:
            self.raw.synchronize()
        finally:
            release_stream((self.device_id, self.raw.ptr))


class CudaSpanClock:
    """Trace spans of asynchronous GPU work: a pair of timing events recorded on the stream that
    runs it, turned into host-clock times at the epoch barrier from one reference event per GPU
    (recorded and waited for once, when the trace starts). Events are pooled per GPU and reused
    after each :meth:`resolve`; recording stays outside graph captures."""

    def __init__(self, ids: Sequence[int]):
        import time

        self.pending: list[tuple] = []
        self.pool: dict[int, list[Any]] = {}
        self.refs: dict[int, tuple[Any, float]] = {}
        for i in sorted(set(ids)):
            with cp.cuda.Device(i):
                ref = cp.cuda.Event()
                ref.record()
                ref.synchronize()
                self.refs[i] = (ref, time.perf_counter())
                self.pool[i] = []

    def mark(self, stream: CudaStream) -> tuple[int, Any]:
        """A timing event recorded on ``stream`` now (in stream order)."""
        pool = self.pool[stream.device_id]
        with cp.cuda.Device(stream.device_id):
            ev = pool.pop() if pool else cp.cuda.Event()
            ev.record(stream.raw)
        return stream.device_id, ev

    def span(self, pid: int, tid: int, name: str, start: tuple[int, Any], end: tuple[int, Any], **args: Any) -> None:
        self.pending.append((pid, tid, name, start, end, args))  # (list.append: atomic, no lock)

    def resolve(self) -> list[tuple]:
        """The spans recorded so far, as (pid, tid, name, t0, t1, args) on the host's perf_counter;
        their events go back to the pool."""
        pending, self.pending = self.pending, []
        out, used = [], {}
        for pid, tid, name, (d0, e0), (d1, e1), args in pending:
            ref, host = self.refs[d0]
            e1.synchronize()
            t0 = host + cp.cuda.get_elapsed_time(ref, e0) / 1e3
            t1 = host + cp.cuda.get_elapsed_time(ref, e1) / 1e3
            out.append((pid, tid, name, t0, max(t0, t1), args))
            used[id(e0)], used[id(e1)] = (d0, e0), (d1, e1)
        for d, ev in used.values():
            self.pool[d].append(ev)
        return out


class CUDADevice:
    """One GPU, or several: ``ids`` lists a CUDA device per slot (repeats allowed). Worker j
    runs on slot ``j % slots`` and server shard s on slot ``s % slots``; each slot holds its
    own copy of the parameter-sized buffers (:class:`gpups.server.Home`) and data crosses
    slots only as explicit async copies."""

    kind = "cuda"
    xp = cp
    max_workers = 1024  # MAXK in kernels/optim.cu
    host_memory = False   # CuPy arrays in device memory
    async_launch = True   # launches return before the work is done: order with events
    timed_kernels = False  # a host clock would time the launch only

    def __init__(self, ids: Sequence[int]):
        self.ids = list(ids)
        self.id = self.ids[0]
        self.slots = len(self.ids)
        n = cp.cuda.runtime.getDeviceCount()
        for i in self.ids:
            if i >= n:
                raise ValueError(f"device='cuda:{i}' is not allowed: this machine has {n} GPU(s)")
        from .kernels import cuda as kernels

        self.kernels = kernels
        self.name = cp.cuda.runtime.getDeviceProperties(self.id)["name"].decode()
        self._rows: dict[tuple, Any] = {}

    def worker_slot(self, j: int) -> int:
        return j % self.slots

    def shard_slot(self, s: int) -> int:
        return s % self.slots

    def on(self, slot: int = 0) -> Any:
        """Context in which CuPy allocates and launches on ``slot``'s GPU."""
        return cp.cuda.Device(self.ids[slot])

    def worker_stream(self, j: int, concurrent: bool = True) -> CudaStream:
        return CudaStream(f"worker {j}", self.ids[self.worker_slot(j)], self.slots > 1)

    def server_stream(self, s: int) -> CudaStream:
        return CudaStream(f"server shard {s}", self.ids[self.shard_slot(s)], self.slots > 1)

    SPIN = 200  # polls before the scheduler starts sleeping between them

    def wait_any(self, events: Sequence[CudaEvent]) -> list[int]:
        """Indices of the events done, once one is: a few hundred quick polls (an interval is
        often microseconds from its end), then polls 50 us apart, so a long wait does not keep
        a core busy."""
        polls = 0
        while True:
            ready = [i for i, e in enumerate(events) if e.done]
            if ready:
                return ready
            polls += 1
            time.sleep(0 if polls < self.SPIN else 5e-5)

    def place(self, array: Any, slot: int = 0) -> Any:
        if isinstance(array, cp.ndarray) and array.device.id != self.ids[slot]:
            array = cp.asnumpy(array)  # set-up only: through the host, no peer access needed
        with self.on(slot):
            return cp.ascontiguousarray(cp.asarray(array))

    def rows(self, idx: Sequence[int], slot: int = 0) -> Any:
        """Worker indices on ``slot``'s GPU, cached per set (called per push: kept cheap)."""
        key = (slot, idx if type(idx) is tuple else tuple(idx))
        arr = self._rows.get(key)
        if arr is None:
            # A new set is copied synchronously on the null stream, so that every kernel launched
            # later, on any stream, reads it whole: an asynchronous copy on whatever stream is
            # current is unordered with the non-blocking shard streams that read it.
            with self.on(slot), cp.cuda.Stream.null:
                arr = cp.asarray(np.asarray(key[1], np.int64))
                cp.cuda.Stream.null.synchronize()
            self._rows[key] = arr
        return arr

    @staticmethod
    def set_counter(counter: Any, value: int) -> None:
        counter.fill(value)

    @staticmethod
    def to_host(array: Any) -> np.ndarray:
        return cp.asnumpy(array)

    def describe(self) -> str:
        return f"{', '.join(f'cuda:{i}' for i in self.ids)} ({self.name})"

    def synchronize(self) -> None:
        for i in sorted(set(self.ids)):
            cp.cuda.Device(i).synchronize()

    def compute_threads(self, k: int) -> Any:
        import contextlib

        return contextlib.nullcontext()

    def graph_cache(self) -> GraphCache:
        return GraphCache()

    def span_clock(self) -> CudaSpanClock:
        """Trace spans from CUDA events (see :class:`CudaSpanClock`)."""
        return CudaSpanClock(self.ids)

    def step_graphs(self, worker: Any) -> "IntervalGraphs | None":
        mode, reason = graph_plan(worker)
        if mode == "eager":
            warn_once(f"worker steps run eagerly (no CUDA graph): {reason}")
            return None
        return IntervalGraphs(worker, tried=reason if mode == "try" else None)


def warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        warnings.warn("gpups: " + msg, RuntimeWarning, stacklevel=3)


def graph_plan(worker: Any) -> tuple[str, str | None]:
    """Whether this worker's intervals are captured ("capture"), tried first ("try", see
    :mod:`gpups.trial`) or run eagerly ("eager"), and why."""
    from .capture import capture_plan

    if os.environ.get("GPUPS_GRAPHS", "1") == "0":
        return "eager", "GPUPS_GRAPHS=0"
    mode, reason = capture_plan(worker.upd, worker.hp)
    if mode == "eager":
        return mode, reason
    if worker.rule.on_host:
        return "eager", "a user-written agg runs on the host"
    if worker.rule.step_dependent and (worker.push == "model" or worker.tail is not None):
        return "eager", f"{worker.rule.name} steps inside an interval change their scalars every step"
    if mode == "try" and (worker.tables is not None or not isinstance(worker.X, cp.ndarray)):
        return "eager", f"{reason}, and a trial needs a dense model and array rows"
    return mode, reason


class CudaCapturer:
    """The GPU side of a :class:`gpups.trial.Trial`: on the worker's stream, in a private memory
    pool (the blocks a capture allocates stay the graph's: nothing else is handed them), with
    ``cupy.matmul`` on the graph-safe GEMM while capturing."""

    def __init__(self, stream: CudaStream, pool: Any):
        self.stream, self.pool = stream, pool

    def eager(self, fn: Callable[[], Any]) -> Any:
        with cp.cuda.Device(self.stream.device_id), self.stream.raw, cp.cuda.using_allocator(self.pool.malloc):
            return fn()

    @contextlib.contextmanager
    def capturing(self) -> Iterator[None]:
        """On the stream, in the pool, matmul redirected, the cuBLAS handle made beforehand."""
        from .kernels.cublas import graph_safe_matmul, stream_handle

        with cp.cuda.Device(self.stream.device_id), self.stream.raw, cp.cuda.using_allocator(self.pool.malloc):
            stream_handle()
            with graph_safe_matmul():
                yield

    def capture(self, fn: Callable[[], Any]) -> Any:
        s = self.stream.raw
        with self.capturing():
            s.begin_capture()
            try:
                fn()
            finally:
                graph = s.end_capture()
        return graph

    def replay(self, graph: Any) -> None:
        with cp.cuda.Device(self.stream.device_id):
            graph.launch(self.stream.raw)
            self.stream.raw.synchronize()


class GraphCache:
    """Stream work replayed as CUDA graphs: the first call with a key runs eagerly (warm-up:
    modules, handles), the second is captured, later ones replay it with one launch. Only for
    work whose arguments are fixed per key (the server's update of given rows, a pull into a
    given replica)."""

    MAX = 256  # SBP's rounds aggregate varying subsets of workers: keep the number bounded

    def __init__(self) -> None:
        self.graphs: dict[Any, Any] = {}
        self.seen: set[Any] = set()
        self.failed = False

    def launch(self, stream: CudaStream, key: Any, fn: Callable[..., Any], *args: Any) -> None:
        graph = self.graphs.get(key)
        if graph is None and not self.failed and key in self.seen and len(self.graphs) < self.MAX:
            graph = self.capture(stream, key, fn, *args)
        if graph is None:
            self.seen.add(key)
            stream.launch(fn, *args)
        elif stream.switch:
            with cp.cuda.Device(stream.device_id):
                graph.launch(stream.raw)
        else:
            graph.launch(stream.raw)

    def capture(self, stream: CudaStream, key: Any, fn: Callable[..., Any], *args: Any) -> Any:
        s = stream.raw
        try:
            with cp.cuda.Device(stream.device_id), s:
                s.begin_capture()
                try:
                    fn(*args)
                finally:
                    graph = s.end_capture()
        except Exception as exc:
            self.failed = True
            warn_once(f"server updates run eagerly: capturing a CUDA graph failed ({type(exc).__name__}: {exc})")
            return None
        self.graphs[key] = graph
        return graph


class IntervalGraphs:
    """CUDA graphs of one worker's push intervals, one per interval length."""

    def __init__(self, worker: Any, tried: str | None = None):
        """``tried``: why the upd is not declared graph-safe; its intervals are captured only
        once a :class:`gpups.trial.Trial` passed, in the trial's private memory pool."""
        self.w = worker
        self.graphs: dict[int, Any] = {}
        self.held: dict[int, list] = {}  # per graph: the workspaces it writes (kept alive with it)
        self.warm: set[int] = set()
        self.disabled = False
        self.tried, self.checked = tried, tried is None
        self.capturer: CudaCapturer | None = None
        X, y, bs = worker.X, worker.y, worker.batchsize
        with cp.cuda.Device(worker.stream.device_id):
            self.xb = cp.empty((bs, *X.shape[1:]), X.dtype)
            self.yb = cp.empty((bs, *y.shape[1:]), y.dtype)
            if tried is not None:
                self.capturer = CudaCapturer(worker.stream, cp.cuda.MemoryPool())

    def trial(self) -> bool:
        """Run the trial of a not-declared upd (once); False: it stays eager (told once why)."""
        from .trial import Trial

        w = self.w
        bs = min(w.batchsize, w.n)
        assert self.capturer is not None
        with cp.cuda.Device(w.stream.device_id), w.stream.raw:
            t = Trial(w.upd, w.wants_out, w.layout, cp, w.replica, w.X[:bs], w.y[:bs], w.hp)
            reason = t.run(self.capturer)
        if reason is None:
            self.checked = True
            return True
        self.disabled = True
        self.capturer = None  # (its pool goes with it)
        warn_once(f"worker steps run eagerly (no CUDA graph): {self.tried}; tried under capture, {reason}")
        return False

    def gather(self) -> tuple[Any, Any]:
        from .kernels.cuda_nn import gather_xy

        w = self.w
        gather_xy(w.X, self.xb, w.y, self.yb, w.counter, w.bad[0, w.j:w.j + 1] if w.check_finite else None)
        return self.xb, self.yb

    def advance(self) -> None:
        from .kernels.cuda_nn import counter_inc

        counter_inc(self.w.counter)

    def replay(self, nsteps: int) -> bool:
        """Launch the graph of an ``nsteps`` interval (capturing it first); False: run eagerly."""
        if self.disabled:
            return False
        if self.w.rule.step_dependent and nsteps > 1:
            return False  # local steps of a rule whose scalars change per step (adam)
        graph = self.graphs.get(nsteps)
        if graph is None:
            if nsteps not in self.warm:  # first an eager run: modules, handles, workspaces
                self.warm.add(nsteps)
                return False
            if not self.checked and not self.trial():
                return False
            graph = self.capture(nsteps)
            if graph is None:
                return False
        graph.launch(self.w.stream.raw)
        return True

    def capture(self, nsteps: int) -> Any:
        """Capture an interval. Whatever memory it touches must outlive the graph: the worker's
        buffers (its own), the model's workspaces (held here), the kernels' scratch (per stream,
        kept until the stream closes); the captured work allocates nothing (tested)."""
        s = self.w.stream.raw
        graph = None
        where = self.capturer.capturing() if self.capturer is not None else contextlib.nullcontext()
        try:
            with cp.cuda.Device(self.w.stream.device_id), s, where, holding() as held:
                s.begin_capture()
                try:
                    self.w.interval(nsteps, self.w.cursor - nsteps, graph=self)
                finally:
                    graph = s.end_capture()
            self.held[nsteps] = held
        except Exception as exc:  # eager from now on, correctly
            self.disabled = True
            warn_once(f"worker steps run eagerly: capturing a CUDA graph failed ({type(exc).__name__}: {exc})")
            return None
        self.graphs[nsteps] = graph
        return graph
