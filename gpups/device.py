"""Where the work runs: the array module, kernels, streams and events of a device.

The scheduler only talks to a :class:`Device`: it asks for worker and server streams, launches
callables on them, records and waits on events. On the CPU a worker stream is a thread and the
server stream runs inline in the scheduler's thread; on a GPU both are CUDA streams
(:mod:`gpups.gpu`).
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Sequence

import numpy as np

from . import streams
from .columns import Columns
from .errors import option_error


class CPUDevice:
    """The host: numpy arrays, numba kernels, a thread per worker."""

    kind = "cpu"
    name = "cpu"
    xp = np
    slots = 1  # device slots workers and shards are placed on (a GPU list has several)
    # capabilities the runtime asks for (a CUDADevice declares its own)
    host_memory = True     # arrays are numpy arrays in host memory
    async_launch = False   # a launch has run when the worker's thread moves on (no events needed)
    timed_kernels = True   # a host clock around a kernel measures the kernel (the bench's server share)
    max_workers: int | None = None  # no kernel limit on k

    def __init__(self) -> None:
        self.kernels = cpu_kernels()
        self._rows: dict[tuple, np.ndarray] = {}

    def worker_stream(self, j: int, concurrent: bool = True) -> Any:
        """A thread per worker; a lone worker runs inline in the scheduler's thread."""
        name = f"worker {j}"
        return streams.ThreadStream(name) if concurrent else streams.InlineStream(name)

    def server_stream(self, s: int) -> streams.InlineStream:
        return streams.InlineStream(f"server shard {s}")

    def wait_any(self, events: Sequence[streams.Event]) -> list[int]:
        return streams.wait_any(events)

    @staticmethod
    def worker_slot(j: int) -> int:
        return 0

    @staticmethod
    def shard_slot(s: int) -> int:
        return 0

    @staticmethod
    def on(slot: int = 0) -> Any:
        """Context in which allocations land on ``slot`` (nothing to do on the CPU)."""
        return contextlib.nullcontext()

    def place(self, array: Any, slot: int = 0) -> Any:
        """The array on this device (workers' partitions, the server's buffers)."""
        if isinstance(array, Columns):
            return array.map(lambda a: np.ascontiguousarray(host(a)))
        return np.ascontiguousarray(host(array))

    def rows(self, idx: Sequence[int], slot: int = 0) -> np.ndarray:
        """Worker indices as an int64 array (cached: the same few sets recur every round)."""
        key = tuple(idx)
        arr = self._rows.get(key)
        if arr is None:
            arr = self._rows[key] = np.asarray(key, np.int64)
        return arr

    @staticmethod
    def set_counter(counter: np.ndarray, value: int) -> None:
        counter[0] = value

    def graph_cache(self) -> Any:
        return _NoGraphs()

    @staticmethod
    def step_graphs(worker: Any) -> None:
        """No CUDA graphs of worker intervals on the CPU."""
        return None

    def to_host(self, array: Any) -> np.ndarray:
        return host(array)

    def synchronize(self) -> None:
        pass

    def describe(self) -> str:
        return "cpu (numpy + numba)"

    def compute_threads(self, k: int) -> Any:
        """While k worker threads run, each one's BLAS calls use cores/k threads: OpenBLAS calls
        from several threads at once otherwise contend (LeNet, k=2, 2 cores: 906 samples/s
        with 2 BLAS threads each, 1,573 with 1)."""
        if k <= 1:
            return contextlib.nullcontext()
        from threadpoolctl import threadpool_limits

        return threadpool_limits(max(1, (os.cpu_count() or 1) // k), user_api="blas")


class _NoGraphs:
    """The CPU has no graphs: work is launched as it is."""

    @staticmethod
    def launch(stream: Any, key: Any, fn: Any, *args: Any) -> None:
        stream.launch(fn, *args)


def cpu_kernels() -> Any:
    """The numba kernels (compiled lazily, on first call), or their numpy twins where numba
    cannot be imported."""
    try:
        from .kernels import cpu

        return cpu
    except ImportError as exc:
        import warnings

        from .kernels import cpu_numpy

        warnings.warn(f"gpups: numba unavailable ({exc}); CPU kernels fall back to numpy", RuntimeWarning,
                      stacklevel=2)
        return cpu_numpy


def host(array: Any) -> np.ndarray:
    """A numpy array from a numpy or CuPy array (named columns: each of them)."""
    if isinstance(array, Columns):
        return array.map(host)  # type: ignore[return-value]
    return array.get() if hasattr(array, "get") and not isinstance(array, np.ndarray) else np.asarray(array)


def cuda_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def resolve(device: Any) -> Any:
    """``"auto"`` | ``"cpu"`` | ``"cuda"`` | ``"cuda:N"`` | list of those -> a device object."""
    spec = device.lower() if isinstance(device, str) else device
    if spec == "cpu":
        return CPUDevice()
    if spec == "auto":
        if cuda_available():
            from .gpu import CUDADevice

            return CUDADevice([0])
        return CPUDevice()
    ids = _cuda_ids(device)
    if not cuda_available():
        raise option_error("device", device, "'cpu' or 'auto' here: CuPy with a CUDA device was not "
                           "found (install gpups[gpu] on a machine with an NVIDIA GPU)")
    from .gpu import CUDADevice

    return CUDADevice(ids)


def check_spec(device: Any) -> None:
    """A ``ValueError`` naming ``device`` unless it is a device spec (whether such a GPU exists
    is checked when the device is resolved)."""
    spec = device.lower() if isinstance(device, str) else device
    if spec not in ("auto", "cpu"):
        _cuda_ids(device)


def _cuda_ids(device: Any) -> list[int]:
    allowed = "'auto', 'cpu', 'cuda', 'cuda:N' or a list of 'cuda:N'"
    items = device if isinstance(device, (list, tuple)) else [device]
    if not items:
        raise option_error("device", device, allowed)
    ids = []
    for d in items:
        if not isinstance(d, str):
            raise option_error("device", device, allowed)
        d = d.lower()
        if d == "cuda":
            ids.append(0)
        elif d.startswith("cuda:") and d[5:].isdigit():
            ids.append(int(d[5:]))
        else:
            raise option_error("device", device, allowed)
    return ids
