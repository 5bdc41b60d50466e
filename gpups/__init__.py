"""gpups: a parameter-server trainer, fast on a GPU, with a numpy/numba CPU fallback.

>>> import gpups
>>> result = gpups.paramserv(params, X, y, upd=grad_fn, utype="BSP", k=4)  # doctest: +SKIP
"""
from .capture import graph_safe
from .errors import WorkerError
from .paramserv import Result, paramserv

__all__ = ["paramserv", "Result", "WorkerError", "graph_safe"]
__version__ = "0.1.0"
