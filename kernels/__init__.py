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
