"""Joining Ray for a run: the caller's instance, a cluster at an address, or an embedded one.

The embedded default is a local instance sized to this machine, with no dashboard and the node
address set to loopback, shut down when the run ends. Ray 2.60 still binds its gRPC servers
(GCS, raylet, workers) on every interface; README.md ("Ray backend: security") says what it opens
and how to close it off. A Ray that is already initialised (a test session's, a notebook's) or a
cluster joined by address is left running.
"""
from __future__ import annotations

import atexit
import contextlib
import math
import os
import shutil
import site
import socket
import subprocess
import sys
import sysconfig
import tempfile
import warnings
from typing import Any, Iterator


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError("backend='ray' needs Ray: pip install 'gpups[ray]'") from exc
    return ray


class Cluster:
    """A Ray connection for one run. :meth:`close` undoes only what :meth:`__init__` did: it
    disconnects from a cluster it joined (which goes on running); a Ray the caller had
    initialised is left alone. The local instance gpups starts itself stays up for the next
    call in this process (starting one costs seconds) and goes at interpreter exit or with
    :func:`shutdown`, its session folder removed."""

    def __init__(self, address: str | None):
        self.ray = ray = import_ray()
        self.connected = False
        if ray.is_initialized():
            if address is not None:
                warnings.warn(f"gpups: ray_address={address!r} ignored: this process is already connected "
                              "to Ray, and that connection is used", RuntimeWarning, stacklevel=3)
            return  # the caller's Ray, or the embedded instance of an earlier call
        if address is None:
            warn_small_shm()
            with loopback_only(ray):
                ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False,
                         _node_ip_address="127.0.0.1", logging_level="warning", log_to_driver=True)
            _EMBEDDED["session"] = ray._private.worker._global_node.get_session_dir_path()
            if not _EMBEDDED.get("atexit"):
                atexit.register(shutdown)
                _EMBEDDED["atexit"] = True
            return
        if address != "auto":
            probe(address)  # Ray itself retries an address where nothing listens for minutes
        ray.init(address=address, logging_level="warning")
        self.connected = True

    def close(self) -> None:
        if self.connected and self.ray.is_initialized():
            self.ray.shutdown()  # a joined cluster: this process disconnects, the cluster stays
        self.connected = False

    def node_resources(self, name: str) -> list[float]:
        """``name`` (CPU, GPU) on each live node."""
        return [float(n["Resources"].get(name, 0.0)) for n in self.ray.nodes() if n.get("Alive")]


_EMBEDDED: dict[str, Any] = {}  # the local instance gpups started: its session folder
POOL: dict[tuple, list[Any]] = {}  # the embedded instance's idle actor hosts, by their options


def pooled() -> bool:
    """Hosts outlive a run only on the local instance gpups started (a Ray the caller started,
    or a cluster joined, gets its resources back when the run ends)."""
    return "session" in _EMBEDDED


def shutdown() -> None:
    """Stop the local Ray instance gpups started (if it is up) and remove its session folder;
    a Ray the caller started, or a joined cluster, is not touched. Also run at interpreter exit."""
    session = _EMBEDDED.pop("session", None)
    POOL.clear()
    if session is None:
        return
    import ray

    if ray.is_initialized():
        ray.shutdown()
    shutil.rmtree(session, ignore_errors=True)
    latest = os.path.join(os.path.dirname(session), "session_latest")
    if os.path.islink(latest) and os.path.realpath(latest) == os.path.realpath(session):
        os.unlink(latest)


LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def loopback_only(ray: Any) -> Iterator[None]:
    """While a local Ray instance starts: keep it on 127.0.0.1. Ray 2.60 rewrites a loopback node
    address to the host's own (``services.get_node_ip_address``), so GCS, raylet and actors would
    listen on every interface; with its cluster switch off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``,
    the setting Ray uses on laptops) they bind loopback only. The variable is set for the
    processes the start spawns (they inherit it) and the driver's copy of the switch is turned
    off; the caller's environment is put back after the start."""
    from ray._private import ray_constants

    old_env, old_flag = os.environ.get(LOOPBACK_SWITCH), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if old_env is None:
            os.environ.pop(LOOPBACK_SWITCH, None)
        else:
            os.environ[LOOPBACK_SWITCH] = old_env
        if not ray.is_initialized():
            ray_constants.ENABLE_RAY_CLUSTER = old_flag


def listening_addresses(root_pid: int) -> list[tuple[str, int, int]]:
    """(address, port, pid) of every TCP socket in LISTEN state held by ``root_pid`` or a process
    below it (Linux: /proc)."""
    import ipaddress

    pids = descendants(root_pid) | {root_pid}
    inodes: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:
            continue
    found = []
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A: LISTEN
                continue
            hexaddr, hexport = cols[1].split(":")
            raw = bytes.fromhex(hexaddr)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # little-endian words
            addr = str(ipaddress.ip_address(raw[:width]))
            found.append((addr, int(hexport, 16), inodes[cols[9]]))
    return found


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def ship_by_value(ray: Any) -> list[Any]:
    """Have Ray pickle by value the code of every loaded module that its worker processes could
    not import by name: a test module, a helper module next to the user's script, a notebook's
    files. Ray pickles functions by reference (module + name), so an ``upd`` defined in such a
    module made every actor die with ``ModuleNotFoundError``. Modules of the standard library,
    of site-packages and ``__main__`` (pickled by value anyway) are left as they are; for the
    rest a fresh interpreter of this Python, with this environment, tells which it can import.
    Returns the modules registered (undo with :func:`unship`). What was found out about a module
    is kept for the next call in the process (a warm call would spend 0.15 s on it again)."""
    if "roots" not in _SEEN:
        roots = {os.path.realpath(p) for key in ("stdlib", "platstdlib", "purelib", "platlib")
                 if (p := sysconfig.get_paths().get(key))}
        _SEEN["roots"] = roots | {os.path.realpath(p) for p in site.getsitepackages() + [site.getusersitepackages()]}
    roots, outside = _SEEN["roots"], _SEEN.setdefault("outside", {})
    candidates = {}
    for name, mod in list(sys.modules.items()):
        path = getattr(mod, "__file__", None)
        if not path or name == "__main__" or name.split(".")[0] in ("gpups", "ray"):
            continue
        if (name, path) not in outside:
            real = os.path.realpath(path)
            outside[name, path] = not any(real.startswith(r + os.sep) for r in roots)
        if outside[name, path]:
            candidates[name] = mod
    if not candidates:
        return []
    known = _SEEN.setdefault("importable", {})
    tops = sorted({n.split(".")[0] for n in candidates} - set(known))
    if tops:
        missing_now = _unimportable(tops)
        known.update({t: t not in missing_now for t in tops})
    missing = {t for t in {n.split(".")[0] for n in candidates} if not known[t]}
    shipped = []
    for name, mod in candidates.items():
        if name.split(".")[0] in missing and not ray.cloudpickle.cloudpickle._is_registered_pickle_by_value(mod):
            ray.cloudpickle.register_pickle_by_value(mod)
            shipped.append(mod)
    return shipped


_SEEN: dict[str, Any] = {}  # ship_by_value's findings: site roots, modules outside them, importable names


def unship(ray: Any, modules: list[Any]) -> None:
    for mod in modules:
        try:
            ray.cloudpickle.unregister_pickle_by_value(mod)
        except ValueError:
            pass


def _unimportable(names: list[str]) -> set[str]:
    """The top-level module names a fresh interpreter (same Python, same environment, without
    the caller's script folder or working directory on its path) cannot find."""
    code = ("import importlib.util, sys; sys.path.pop(0); "
            "print('\\n'.join(n for n in sys.argv[1:] if importlib.util.find_spec(n) is None))")
    try:
        out = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=60,
                             cwd=tempfile.gettempdir(), check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return set(names)  # cannot tell: by value is safe for modules of the user's own
    return set(out.split())


PROBE_TIMEOUT = 10.0  # seconds for a TCP connection to a cluster's head


def probe(address: str, timeout: float = PROBE_TIMEOUT) -> None:
    """A ``ValueError`` naming ``address`` unless something accepts a TCP connection there."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        raise ValueError(f"ray_address={address!r}: no Ray cluster answers there ({type(exc).__name__}: {exc}); "
                         "expected the host:port of a running cluster's head (`ray start --head` prints it), "
                         "'auto' for the cluster on this machine, or None to start a local instance") from None


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
