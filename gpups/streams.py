"""CPU streams and events with the semantics of CUDA's, so that one scheduler drives both.

A :class:`ThreadStream` runs the callables launched on it in order, on a thread of its own, like
a CUDA stream runs kernels in order. :meth:`record` returns an :class:`Event` that is set when
all work launched before it has run; :meth:`wait_event` makes later work wait for an event of
another stream. An :class:`InlineStream` runs work at once in the caller's thread (the CPU
server: its update is one parallel numba kernel, no thread needed).

A callable that raises poisons its stream: the rest of its queue is skipped and every event
recorded after the failure carries the exception, which :meth:`Event.synchronize` re-raises.
Waits poll a cancel flag, so a failed run never leaves a thread blocked forever.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Sequence

_any_event = threading.Condition()  # notified whenever any event is set: wait_any sleeps on it


class StreamError(RuntimeError):
    """Work launched on a stream raised; ``__cause__`` holds the original exception."""

    def __init__(self, stream_name: str, exc: BaseException):
        super().__init__(f"{stream_name}: {type(exc).__name__}: {exc}")
        self.stream_name = stream_name
        self.exc = exc


class Event:
    """Set once all work launched on its stream before it has run (or failed)."""

    __slots__ = ("_flag", "error")

    def __init__(self, done: bool = False, error: StreamError | None = None):
        self._flag = threading.Event()
        self.error = error
        if done:
            self._flag.set()

    def _set(self, error: StreamError | None = None) -> None:
        self.error = error
        with _any_event:
            self._flag.set()
            _any_event.notify_all()

    @property
    def done(self) -> bool:
        return self._flag.is_set()

    def synchronize(self, timeout: float | None = None) -> None:
        if not self._flag.wait(timeout):
            raise TimeoutError("event not reached")
        if self.error is not None:
            raise self.error from self.error.exc


def wait_any(events: Sequence[Event], timeout: float = 0.05) -> list[int]:
    """Block until at least one event is done; return the indices of those done."""
    with _any_event:
        while True:
            ready = [i for i, e in enumerate(events) if e.done]
            if ready:
                return ready
            _any_event.wait(timeout)


class InlineStream:
    """Runs work immediately in the calling thread."""

    def __init__(self, name: str = "inline"):
        self.name = name

    def launch(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # same contract as a thread stream
            raise StreamError(self.name, exc) from exc

    def record(self) -> Event:
        return Event(done=True)

    def wait_event(self, event: Event) -> None:
        event.synchronize()

    def synchronize(self) -> None:
        pass

    def cancel(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Stop:
    pass


class ThreadStream:
    """An in-order work queue served by one daemon thread."""

    def __init__(self, name: str):
        self.name = name
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._error: StreamError | None = None
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"gpups-{name}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            item = self._q.get()
            if isinstance(item, _Stop):
                return
            if isinstance(item, Event):
                item._set(self._error)
                continue
            if self._error is not None or self._cancelled.is_set():
                continue
            fn, args = item
            try:
                fn(*args)
            except BaseException as exc:  # poison the stream; events carry it to the scheduler
                self._error = StreamError(self.name, exc)
                self._error.__cause__ = exc

    def launch(self, fn: Callable[..., Any], *args: Any) -> None:
        self._q.put((fn, args))

    def record(self) -> Event:
        ev = Event()
        self._q.put(ev)
        return ev

    def wait_event(self, event: Event) -> None:
        def _wait() -> None:
            while not event._flag.wait(0.05):
                if self._cancelled.is_set():
                    return
            if event.error is not None:
                raise event.error

        self._q.put((_wait, ()))

    def synchronize(self) -> None:
        self.record().synchronize()

    def cancel(self) -> None:
        """Skip all queued work; waits give up. Used when another stream failed."""
        self._cancelled.set()

    def close(self) -> None:
        self._q.put(_Stop())
