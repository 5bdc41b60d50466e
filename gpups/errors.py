"""The errors gpups raises, and one helper that words option errors the same way everywhere."""
from __future__ import annotations

from typing import Any, Iterable


class WorkerError(RuntimeError):
    """A worker (or a server shard) failed; the original exception is chained as ``__cause__``."""

    def __init__(self, who: str, message: str):
        super().__init__(f"{who} failed: {message}")
        self.who = who


def shown(value: Any) -> str:
    """A short, readable form of a value for an error message: the value itself for scalars
    (numpy scalars too) and short lists, a type-and-shape summary for arrays and big objects."""
    scalar = (int, float, str, bool, type(None))
    if hasattr(value, "dtype") and getattr(value, "shape", None) == () and hasattr(value, "item"):
        value = value.item()  # a numpy (or CuPy) scalar: its value, not its type
    if isinstance(value, scalar):
        return repr(value)
    if isinstance(value, (list, tuple)) and len(value) <= 16 and all(isinstance(v, scalar) for v in value):
        return repr(value)
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"<{type(value).__name__} of shape {tuple(shape)}>"
    text = repr(value)
    return text if len(text) <= 60 else f"<{type(value).__name__}>"


def option_error(option: str, given: Any, allowed: str | Iterable[Any]) -> ValueError:
    """``ValueError`` naming the option, the value given and the values allowed."""
    if not isinstance(allowed, str):
        allowed = "one of " + ", ".join(repr(a) for a in allowed)
    return ValueError(f"{option}={shown(given)} is not allowed: expected {allowed}")
