"""CUDA-graph capture, declared and made safe: the ``graph_safe`` mark a function carries, and
the registry that keeps the buffers a captured graph writes alive as long as the graph."""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator, Mapping, Optional, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
Blocker = Callable[[Mapping[str, Any], Any], Optional[str]]


def graph_safe(fn: F | None = None, *, unless: Blocker | None = None) -> Any:
    """Mark ``upd`` as safe to capture in a CUDA graph on a GPU: it only launches work on the
    current stream, allocates nothing once warm (write into ``out=`` and buffers of its own),
    never reads a device value on the host, and its Python control flow does not depend on the
    data. ``unless(hyperparams, owner)`` may return a reason it is not (for some
    hyperparameters; ``owner`` is the object whose method ``upd`` is, or None).

    >>> @graph_safe
    ... def upd(params, x, y, hp, out=None): ...
    """
    def mark(f: F) -> F:
        f.graph_safe = unless or True  # type: ignore[attr-defined]
        return f
    return mark if fn is None else mark(fn)


def capture_blocker(fn: Callable, hp: Mapping[str, Any]) -> str | None:
    """Why ``fn`` may not be captured with these hyperparameters, or None."""
    flag = getattr(fn, "graph_safe", None)
    if not flag:
        return "upd is not declared graph-safe (gpups.graph_safe); it runs eagerly"
    return flag(hp, getattr(fn, "__self__", None)) if callable(flag) else None


# -- memory a captured graph points at ----------------------------------------------------------
_capture = threading.local()  # .held: buffers the graph being captured uses
_releasers: list[Callable[[Any], None]] = []


@contextlib.contextmanager
def holding() -> Iterator[list]:
    """While a CUDA graph is captured: buffers passed to :func:`hold` are appended to the
    yielded list, which the graph keeps for its lifetime (a replay writes there)."""
    held: list = []
    _capture.held = held
    try:
        yield held
    finally:
        _capture.held = None


def hold(buffers: Any) -> None:
    """Called by whoever hands out reusable buffers (a model's workspaces): during a capture,
    the graph keeps them alive."""
    held = getattr(_capture, "held", None)
    if held is not None:
        held.append(buffers)


def on_stream_release(fn: Callable[[Any], None]) -> Callable[[Any], None]:
    """Register ``fn(key)``, called with ``(device id, stream pointer)`` when a run closes a
    CUDA stream: caches keyed by stream drop what they kept for it (pointers recur)."""
    _releasers.append(fn)
    return fn


def release_stream(key: Any) -> None:
    for fn in _releasers:
        fn(key)
