"""Compute kernels: numba CPU twins (:mod:`gpups.kernels.cpu`) and CUDA C sources (``*.cu``).

Every fused server kernel has the same signature on both devices::

    <opt>(G, rows, bad, scale, w, *state, *hyper)

``G`` is a 2-D array holding one flat gradient (or model-delta) buffer per worker, ``rows`` the
int64 indices of the buffers to aggregate, ``bad`` one int64 flag per worker (non-zero: that
worker's push held NaN or Inf and is skipped; the mean is over the others), ``scale`` the factor
applied to their sum (1/number of pushes for a mean), ``w`` the flat parameters (or one shard's slice of them) and ``state`` the
optimizer's per-element slots. Each kernel reads every input once and writes ``w`` and the state
once: aggregation and update are fused.
"""

import threading as _threading
from typing import Any as _Any

#: activation codes shared by the model layer and every kernel module
RELU, TANH, SIGMOID, IDENTITY = 0, 1, 2, 3
ACT_CODES = {"relu": RELU, "tanh": TANH, "sigmoid": SIGMOID, "identity": IDENTITY}

#: below this many elements a numba kernel's serial twin is faster (waking OpenMP costs ~100 us)
PARALLEL_MIN = 1 << 18


def twin(parallel: _Any, serial: _Any, size: int, concurrent: bool | None = None) -> _Any:
    """Which of a kernel's twins to call: the serial one for small arrays, and for callers that
    may run at once with others (numba's parallel layer must not be entered from two threads at
    once); ``concurrent=None`` means "any thread but the main one" (a lone worker runs there)."""
    if concurrent is None:
        concurrent = _threading.current_thread() is not _threading.main_thread()
    return serial if concurrent or size < PARALLEL_MIN else parallel
