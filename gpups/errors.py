"""The errors gpups raises, and one helper that words option errors the same way everywhere."""
from __future__ import annotations

from typing import Any, Iterable


class WorkerError(RuntimeError):
    """A worker (or a server shard) failed; the original exception is chained as ``__cause__``."""

    def __init__(self, who: str, message: str):
        super().__init__(f"{who} failed: {message}")
        self.who = who


def option_error(option: str, given: Any, allowed: str | Iterable[Any]) -> ValueError:
    """``ValueError`` naming the option, the value given and the values allowed."""
    if not isinstance(allowed, str):
        allowed = "one of " + ", ".join(repr(a) for a in allowed)
    scalar = (int, float, str, bool, type(None))
    short = isinstance(given, (list, tuple)) and len(given) <= 16 and all(isinstance(g, scalar) for g in given)
    shown = given if isinstance(given, scalar) or short else type(given).__name__
    return ValueError(f"{option}={shown!r} is not allowed: expected {allowed}")
