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


class Tryable(str):
    """A reason a function is not declared graph-safe that a trial may still overcome (it
    allocates: the trial's private memory pool holds what a capture allocates). Blockers return
    one to say "try it"; a plain string means eager."""


def capture_plan(fn: Callable, hp: Mapping[str, Any]) -> tuple[str, str | None]:
    """How ``fn`` (a worker's ``upd``) runs on a GPU with these hyperparameters:
    ``("capture", None)`` when declared graph-safe; ``("try", why)`` when it is tried under
    capture and checked against an eager run (:mod:`gpups.trial`): not declared at all, or
    blocked for a :class:`Tryable` reason; ``("eager", why)`` when declared unsafe
    (``fn.graph_safe = False``) or blocked for any other reason."""
    flag = getattr(fn, "graph_safe", None)
    if flag is None:
        return "try", "upd is not declared graph-safe (gpups.graph_safe)"
    if flag is False:
        return "eager", "upd is declared not graph-safe (graph_safe = False)"
    reason = flag(hp, getattr(fn, "__self__", None)) if callable(flag) else None
    if reason is None:
        return "capture", None
    return ("try" if isinstance(reason, Tryable) else "eager"), str(reason)


def capture_blocker(fn: Callable, hp: Mapping[str, Any]) -> str | None:
    """Why ``fn`` may not be captured as declared with these hyperparameters, or None."""
    flag = getattr(fn, "graph_safe", None)
    if not flag:
        return "upd is not declared graph-safe (gpups.graph_safe)"
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
