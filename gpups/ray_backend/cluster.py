"""Joining Ray for a run: the caller's instance, a cluster at an address, or an embedded one.

The embedded default is a local instance sized to this machine, with no dashboard and the node
address set to loopback, shut down when the run ends. Ray 2.60 still binds its gRPC servers
(GCS, raylet, workers) on every interface; README.md ("Ray backend: security") says what it opens
and how to close it off. A Ray that is already initialised (a test session's, a notebook's) or a
cluster joined by address is left running.
"""
from __future__ import annotations

import math
import os
import shutil
import warnings
from typing import Any


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError("backend='ray' needs Ray: pip install 'gpups[ray]'") from exc
    return ray


class Cluster:
    """A Ray connection for one run. :meth:`close` undoes only what :meth:`__init__` did: it
    stops the instance it started, or disconnects from the cluster it joined (which goes on
    running); a Ray the caller had initialised is left alone."""

    def __init__(self, address: str | None):
        self.ray = ray = import_ray()
        self.connected = False
        if ray.is_initialized():
            if address is not None:
                warnings.warn(f"gpups: ray_address={address!r} ignored: this process is already connected "
                              "to Ray, and that connection is used", RuntimeWarning, stacklevel=3)
            return
        if address is None:
            warn_small_shm()
            ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False,
                     _node_ip_address="127.0.0.1",
                     logging_level="warning", log_to_driver=True)
        else:
            ray.init(address=address, logging_level="warning")
        self.connected = True

    def close(self) -> None:
        if self.connected and self.ray.is_initialized():
            self.ray.shutdown()  # a joined cluster: this process disconnects, the cluster stays
        self.connected = False

    def node_resources(self, name: str) -> list[float]:
        """``name`` (CPU, GPU) on each live node."""
        return [float(n["Resources"].get(name, 0.0)) for n in self.ray.nodes() if n.get("Alive")]


def warn_small_shm() -> None:
    """Ray keeps its object store in /dev/shm (30 % of memory by default); where /dev/shm is
    smaller, it falls back to disk and every push and pull gets slow."""
    try:
        shm = shutil.disk_usage("/dev/shm").total
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError, AttributeError):
        return
    if shm < 0.3 * ram:
        warnings.warn(f"gpups: /dev/shm holds {shm / 2**30:.1f} GiB, less than Ray's default object store "
                      f"({0.3 * ram / 2**30:.1f} GiB): Ray will spill to disk and pushes and pulls slow down; "
                      "enlarge /dev/shm (docker: --shm-size) or start Ray with a smaller "
                      "--object-store-memory", RuntimeWarning, stacklevel=3)


def share(capacities: list[float], k: int) -> float:
    """The largest per-actor amount of a resource such that ``k`` actors fit on nodes with
    these ``capacities`` (whole nodes only: an actor never spans two), rounded down to Ray's
    precision of 1e-4. 0 when they cannot all fit."""
    best = 0.0
    for c in capacities:
        for m in range(1, k + 1):
            x = math.floor(c / m * 1e4) / 1e4
            if x > best and sum(math.floor(ci / x + 1e-9) for ci in capacities) >= k:
                best = x
                break  # larger m only gives smaller x for this node
    return best
