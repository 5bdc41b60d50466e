"""A timeline of a run: Chrome / Perfetto trace-event JSON (``paramserv(trace="run.trace.json")``;
open it in ui.perfetto.dev or chrome://tracing).

One track per worker ("pull wait", "interval"), one per server shard ("apply", "pull"), and
counter tracks for each worker's staleness and the epoch's samples/s. Spans come from host
clocks where the work runs on the host (the CPU device: worker threads, inline shard updates);
on a GPU from CUDA events recorded on the streams around the work (:attr:`Trace.clock`, read
by :meth:`Trace.resolve` at the epoch barrier: no host sync per step); on Ray from the actors'
own clocks, gathered at the barrier. Recording is one list append of a tuple (the events are
made when the file is written); without ``trace=`` nothing is recorded.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

WORKERS, SERVER, RUN = 1, 2, 3  # trace "processes": the tracks are grouped under these


class Trace:
    """Collects trace events; :meth:`write` saves them as one JSON file."""

    def __init__(self, path: str, k: int, shards: int):
        self.path, self.t0 = path, time.perf_counter()
        self.events: list[dict[str, Any]] = []  # metadata: the tracks' names
        self.raw: list[tuple] = []  # spans and counters as recorded, made events by write()
        self.clock: Any = None  # a device's event clock (a GPU: gpups.gpu.CudaSpanClock), set by the backend
        meta = [(WORKERS, "workers"), (SERVER, "server shards"), (RUN, "run")]
        for pid, name in meta:
            self.events.append({"name": "process_name", "ph": "M", "pid": pid, "args": {"name": name}})
        for j in range(k):
            self.events.append({"name": "thread_name", "ph": "M", "pid": WORKERS, "tid": j,
                                "args": {"name": f"worker {j}"}})
        for s in range(shards):
            self.events.append({"name": "thread_name", "ph": "M", "pid": SERVER, "tid": s,
                                "args": {"name": f"server shard {s}"}})

    def now(self) -> float:
        return time.perf_counter()

    def _us(self, t: float) -> float:
        return round((t - self.t0) * 1e6, 3)

    def span(self, pid: int, tid: int, name: str, t0: float, t1: float, **args: Any) -> None:
        self.raw.append((pid, tid, name, t0, t1, args))  # (list.append is atomic: no lock on the hot path)

    def resolve(self) -> None:
        """At the epoch barrier: the device spans recorded since the last call, on the host clock."""
        if self.clock is not None:
            self.raw.extend(self.clock.resolve())

    def counter(self, name: str, t: float, **values: float) -> None:
        self.raw.append((RUN, None, name, t, None, values))

    def _event(self, rec: tuple) -> dict[str, Any]:
        pid, tid, name, t0, t1, args = rec
        if t1 is None:
            return {"name": name, "ph": "C", "pid": pid, "ts": self._us(t0), "args": args}
        ev = {"name": name, "ph": "X", "pid": pid, "tid": tid, "ts": self._us(t0), "dur": round((t1 - t0) * 1e6, 3)}
        if args:
            ev["args"] = args
        return ev

    def write(self) -> str:
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"traceEvents": self.events + [self._event(r) for r in list(self.raw)],
                       "displayTimeUnit": "ms"}, f)
        os.replace(tmp, self.path)
        return self.path


def load(path: str) -> list[dict[str, Any]]:
    """The events of a trace file."""
    with open(path) as f:
        return json.load(f)["traceEvents"]


def plot(path: str, out_png: str, epoch: int | None = None) -> list[str]:
    """A Gantt chart of one epoch (the last by default) and a histogram of each worker's staleness,
    as PNGs beside ``out_png`` (needs matplotlib: the ``plot`` extra). Returns the files written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    events = load(path)
    names = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    epochs = [e for e in events if e.get("name") == "epoch" and e.get("ph") == "X"]
    window = epochs[-1 if epoch is None else epoch] if epochs else None
    spans = [e for e in events if e.get("ph") == "X" and e.get("name") != "epoch"
             and (window is None or window["ts"] <= e["ts"] <= window["ts"] + window["dur"])]
    tracks = sorted({(e["pid"], e["tid"]) for e in spans})
    colours = {"interval": "tab:blue", "pull wait": "tab:grey", "apply": "tab:orange", "pull": "tab:green"}
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(tracks) + 1.2))
    for row, track in enumerate(tracks):
        for e in (e for e in spans if (e["pid"], e["tid"]) == track):
            ax.broken_barh([(e["ts"] / 1e3, max(e["dur"] / 1e3, 1e-3))], (row - 0.4, 0.8),
                           color=colours.get(e["name"], "tab:purple"))
    ax.set_yticks(range(len(tracks)), [names.get(t, str(t)) for t in tracks])
    ax.set_xlabel("ms since the run started")
    ax.set_title("one epoch: " + ", ".join(f"{n} ({c.split(':')[1]})" for n, c in colours.items()))
    fig.tight_layout()
    written = [out_png]
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    stale = [e for e in events if e.get("name") == "staleness"]
    if stale:
        per: dict[str, list[float]] = {}
        for e in stale:
            for w, v in e["args"].items():
                per.setdefault(w, []).append(v)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(list(per.values()), bins=range(int(max(max(v) for v in per.values())) + 2), label=list(per))
        ax.set_xlabel("staleness (updates between a worker's pull and its push)")
        ax.set_ylabel("pushes")
        ax.legend()
        fig.tight_layout()
        hist = os.path.splitext(out_png)[0] + "_staleness.png"
        fig.savefig(hist, dpi=90)
        plt.close(fig)
        written.append(hist)
    return written
