"""gpups: a parameter-server trainer, fast on a GPU, with a numpy/numba CPU fallback.

>>> import gpups
>>> result = gpups.paramserv(params, X, y, upd=grad_fn, utype="BSP", k=4)  # doctest: +SKIP
"""
from .capture import graph_safe
from .errors import WorkerError
from .paramserv import Result, paramserv
from .sync import ASP, BSP, HOGWILD, SBP, SSP, Hogwild, Policy

__all__ = ["paramserv", "Result", "WorkerError", "graph_safe", "Policy", "BSP", "ASP", "SSP", "SBP", "Hogwild",
           "HOGWILD"]
__version__ = "0.1.0"
