"""Compute kernels: numba CPU twins (:mod:`gpups.kernels.cpu`) and CUDA C sources (``*.cu``).

Every fused server kernel has the same signature on both devices::

    <opt>(G, rows, scale, w, *state, *hyper)

``G`` is a 2-D array holding one flat gradient (or model-delta) buffer per worker, ``rows`` the
int64 indices of the buffers to aggregate, ``scale`` the factor applied to their sum (1/number of
pushes for a mean), ``w`` the flat parameters (or one shard's slice of them) and ``state`` the
optimizer's per-element slots. Each kernel reads every input once and writes ``w`` and the state
once: aggregation and update are fused.
"""
