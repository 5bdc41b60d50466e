"""gpups: a parameter-server trainer, fast on a GPU, with a numpy/numba CPU fallback.

>>> import gpups
>>> result = gpups.paramserv(params, X, y, upd=grad_fn, utype="BSP", k=4)  # doctest: +SKIP
"""
from .capture import graph_safe
from .errors import WorkerError
from .paramserv import Result, paramserv
from .sync import ASP, BSP, HOGWILD, SBP, SSP, Hogwild, Policy
from .tables import RowGrad

__all__ = ["paramserv", "Result", "WorkerError", "graph_safe", "Policy", "BSP", "ASP", "SSP", "SBP", "Hogwild",
           "HOGWILD", "RowGrad", "ray_shutdown"]
__version__ = "0.1.0"


def ray_shutdown() -> None:
    """Stop the local Ray instance that ``backend="ray"`` started and kept for later calls (it is
    stopped at interpreter exit anyway); a Ray you started or joined is not touched."""
    from .ray_backend.cluster import shutdown

    shutdown()

_SUBMODULES = ("datasets", "models", "nn", "bench", "checkpoint", "options", "ray_backend", "torch")


def __getattr__(name: str):
    """``gpups.datasets``, ``gpups.nn``, ... without importing them first (imported on first use:
    ``ray_backend`` needs Ray, ``torch`` PyTorch, ``bench`` matplotlib for its plots)."""
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'gpups' has no attribute {name!r}")
