"""backend="ray": the same paramserv over Ray actors (marked ``ray``; ``-m "not ray"`` skips).

Ray starts once for the session (fixture ``ray_session``) and is shut down after; only the
test of the embedded default starts and stops its own instance, in a subprocess."""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import gpups
from gpups.errors import WorkerError
from gpups.models import MLP
from helpers import assert_models_close, small_net

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray


@pytest.fixture(scope="session")
def ray_session():
    from gpups.ray_backend.cluster import loopback_only

    started = not ray.is_initialized()
    if started:
        with loopback_only(ray):  # (the tests' traffic stays on loopback)
            ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning",
                     _node_ip_address="127.0.0.1")
    yield ray
    if started:
        ray.shutdown()


def run(ray_session, params, X, y, backend, **kw):
    net = small_net()
    base = dict(upd=net.gradients, agg="sgd", hyperparams={"lr": 0.2}, progress=False, device="cpu")
    base.update(kw)
    return gpups.paramserv(params, X, y, backend=backend, **base)


MODES = [("BSP", {}), ("ASP", {}), ("SSP", {"staleness": 1}), ("SBP", {}), ("HOGWILD", {})]


@pytest.mark.parametrize("utype,extra", MODES, ids=[m for m, _ in MODES])
@pytest.mark.parametrize("freq", ["BATCH", "NBATCHES", "EPOCH"])
@pytest.mark.parametrize("push", ["gradients", "model"])
def test_one_worker_equals_local_backend(ray_session, blobs, utype, extra, freq, push):
    """k=1: every utype, freq and push means the same on Ray as locally (float64)."""
    X, y = blobs
    params = small_net().init(1, dtype=np.float64)
    kw = dict(utype=utype, freq=freq, push=push, k=1, batchsize=16, epochs=2, agg="momentum",
              hyperparams={"lr": 0.05}, nbatches=3 if freq == "NBATCHES" else 1, **extra)
    local = run(ray_session, params, X, y, "local", **kw)
    remote = run(ray_session, params, X, y, "ray", **kw)
    assert_models_close(remote.model, local.model, rtol=1e-12, atol=1e-14)
    assert [h["samples"] for h in remote.history] == [h["samples"] for h in local.history]
    assert remote.history[-1]["loss"] == pytest.approx(local.history[-1]["loss"], rel=1e-12)


@pytest.mark.parametrize("freq", ["BATCH", "NBATCHES", "EPOCH"])
@pytest.mark.parametrize("servers", [1, 3])
def test_bsp_equals_local_backend(ray_session, blobs, freq, servers):
    """k=3 workers, BSP: the same model as the local backend, shard by shard."""
    X, y = blobs
    params = small_net().init(2, dtype=np.float64)
    kw = dict(utype="BSP", freq=freq, k=3, batchsize=8, epochs=2, servers=servers, agg="adam",
              hyperparams={"lr": 0.01}, nbatches=2 if freq == "NBATCHES" else 1)
    local = run(ray_session, params, X, y, "local", **kw)
    remote = run(ray_session, params, X, y, "ray", **kw)
    assert_models_close(remote.model, local.model, rtol=1e-12, atol=1e-14)


def test_user_agg_and_model_averaging(ray_session, blobs):
    """A user-written agg over whole tensors on two shards, and push='model' with freq=EPOCH."""
    X, y = blobs
    params = small_net().init(4, dtype=np.float64)

    def agg(p, g, state, hp):
        return {n: p[n] - hp["lr"] * g[n] for n in p}, state

    for kw in (dict(agg=agg, servers=2), dict(push="model", freq="EPOCH")):
        local = run(ray_session, params, X, y, "local", utype="BSP", k=2, batchsize=10, epochs=2, **kw)
        remote = run(ray_session, params, X, y, "ray", utype="BSP", k=2, batchsize=10, epochs=2, **kw)
        assert_models_close(remote.model, local.model, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("utype,extra", MODES, ids=[m for m, _ in MODES])
def test_every_mode_trains(ray_session, blobs, utype, extra):
    X, y = blobs
    net = small_net()
    res = run(ray_session, net.init(0, dtype=np.float64), X[:200], y[:200], "ray", utype=utype, k=3,
              batchsize=10, epochs=6, val_features=X[200:], val_labels=y[200:], **extra)
    assert res.history[-1]["val_accuracy"] >= 0.85
    assert res.device.startswith("ray")
    assert [sum(h["pushes"]) for h in res.history] == [sum(res.history[0]["pushes"])] * 6
    if utype in ("ASP", "SSP"):  # the first k arrivals of an epoch saw 0, 1, ... updates
        assert max(res.history[0]["staleness_max"]) >= 1
    if utype == "SSP":
        assert len(res.clock_log) == sum(sum(h["pushes"]) for h in res.history)
        assert max(clock - slowest for _, clock, slowest in res.clock_log) <= 1


@pytest.mark.parametrize("utype", ["ASP", "BSP", "HOGWILD"])
def test_worker_error_is_named(ray_session, blobs, utype, capfd):
    """The worker whose upd raised is named (under BSP the other worker's next call fails on
    the same error, through the round's parameters), in a few lines: no retries of calls queued
    on the hosts being closed, no unhandled errors."""
    X, y = blobs
    net = small_net()

    def upd(p, xb, yb, hp):
        if xb[0, 0] == X[140, 0]:  # worker 1's second batch
            raise FloatingPointError("bad row")
        return net.gradients(p, xb, yb, hp)

    with pytest.raises(WorkerError, match=r"^worker 1 failed: FloatingPointError: bad row in epoch 1, batch 2$"):
        run(ray_session, net.init(0, dtype=np.float64), X, y, "ray", upd=upd, utype=utype, k=2,
            batchsize=20, epochs=1)
    time.sleep(1.0)  # (Ray's log lines reach the driver within its log monitor's interval)
    out = capfd.readouterr()
    noise = [ln for ln in (out.out + out.err).splitlines() if "will be retried" in ln or "Unhandled error" in ln]
    assert not noise, noise[:3]


def test_nan_push_is_named_not_applied(ray_session, blobs):
    X, y = blobs
    Xn = X.copy()
    net = small_net()

    def upd(p, xb, yb, hp):
        g, loss = net.gradients(p, xb, yb, hp)
        if xb[0, 0] == Xn[130, 0]:
            g = {n: v * np.nan for n, v in g.items()}
        return g, loss

    with pytest.raises(WorkerError, match=r"worker 1 .*NaN or Inf in epoch 1, batch 2"):
        run(ray_session, net.init(0, dtype=np.float64), Xn, y, "ray", upd=upd, utype="BSP", k=2,
            batchsize=10, epochs=1)


# -- faults --------------------------------------------------------------------------------
class KillOnce:
    """An upd that kills its own process (SIGKILL) at its ``at``-th call, once per run: the
    first process to take the marker file dies; the restarted one goes on."""

    def __init__(self, net, marker, at):
        self.net, self.marker, self.at, self.calls = net, marker, at, 0

    def __call__(self, p, xb, yb, hp, out=None):
        self.calls += 1
        if self.calls == self.at:
            try:
                os.rename(self.marker, self.marker + ".taken")
            except FileNotFoundError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return self.net.gradients(p, xb, yb, hp, out=out)


@pytest.mark.parametrize("utype", ["BSP", "ASP", "SSP", "HOGWILD"])
def test_killed_worker_is_restarted(ray_session, blobs, tmp_path, utype):
    X, y = blobs
    net = small_net()
    marker = tmp_path / "kill"
    marker.write_text("")
    params = net.init(0, dtype=np.float64)
    kw = dict(utype=utype, k=2, batchsize=10, epochs=3, staleness=1 if utype == "SSP" else 0)
    res = run(ray_session, params, X, y, "ray", upd=KillOnce(net, str(marker), 7), **kw)
    assert (tmp_path / "kill.taken").exists(), "no worker was killed"
    assert len(res.history) == 3 and all(np.isfinite(v).all() for v in res.model.values())
    if utype in ("ASP", "SSP"):  # resubmitted by the driver: counted (BSP/HOGWILD: retried by Ray, unseen)
        assert sum(h.get("resubmitted", 0) for h in res.history) >= 1
    before = net.evaluate(params, X, y)["accuracy"]
    assert net.evaluate(res.model, X, y)["accuracy"] > max(0.85, before)
    if utype == "BSP":  # retried on the restarted actor with the same round's parameters
        ref = run(ray_session, params, X, y, "ray", **kw)
        assert_models_close(res.model, ref.model, rtol=1e-12, atol=1e-14)


def _pids(title):
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f.read().startswith(title.encode()):
                        out.append(int(pid))
            except OSError:
                pass
    return out


@pytest.fixture
def live_runs(monkeypatch):
    """The runs paramserv builds in this test: their history, and their Ray actors' pids, tell
    a killer what the run has reached and which process is this run's."""
    from gpups.runtime import Run

    runs = []
    init = Run.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        runs.append(self)

    monkeypatch.setattr(Run, "__init__", spy)
    return runs


def kill_shard_after_epoch(runs, epoch, killed, folder=None):
    """A thread that SIGKILLs this run's shard 0 once the run has finished ``epoch`` epochs
    (and, with ``folder``, written that epoch's checkpoint)."""
    def killer():
        deadline = time.time() + 120
        while time.time() < deadline:
            if runs and len(runs[0].history) >= epoch and (
                    folder is None or (folder / f"epoch-{epoch:05d}.ckpt").exists()):
                pid = runs[0].backend.pids["server shard 0"]
                os.kill(pid, signal.SIGKILL)
                killed.append((pid, len(runs[0].history)))
                return
            time.sleep(0.005)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    return t


def test_killed_server_shard_restores_from_checkpoint(ray_session, tmp_path, live_runs):
    """This run's shard process is killed from outside after epoch 1; the run goes back to the
    newest checkpoint, redoes the epoch and ends with a trained model and every epoch's record."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((3, 20)) * 2
    y = rng.integers(0, 3, 6000)
    X = centres[y] + rng.standard_normal((6000, 20))
    net = MLP([20, 16, 3])
    params = net.init(0, dtype=np.float64)
    killed = []
    t = kill_shard_after_epoch(live_runs, 1, killed, tmp_path / "ck")
    res = gpups.paramserv(params, X, y, upd=net.gradients, agg="momentum", utype="BSP", k=2, batchsize=8,
                          epochs=4, backend="ray", device="cpu", progress=False, checkpoint=str(tmp_path / "ck"))
    t.join()
    assert killed and killed[0][1] < 4, "the shard was not killed mid-run"
    assert [h["epoch"] for h in res.history] == [1, 2, 3, 4]
    redone = [h for h in res.history if h.get("restarts")]
    assert len(redone) == 1 and redone[0]["restarts"] == 1 and redone[0]["recovery_seconds"] > 0
    assert net.evaluate(res.model, X, y)["accuracy"] > 0.9


def test_killed_server_shard_without_checkpoint_stops_with_a_clear_error(ray_session, live_runs):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((6000, 20))
    y = rng.integers(0, 3, 6000)
    net = MLP([20, 16, 3])
    killed = []
    kill_shard_after_epoch(live_runs, 1, killed)
    t0 = time.time()
    with pytest.raises(WorkerError, match=r"^server shard 0 failed: .*with checkpoint="):
        gpups.paramserv(net.init(0, dtype=np.float64), X, y, upd=net.gradients, utype="ASP", k=2, batchsize=8,
                        epochs=40, backend="ray", device="cpu", progress=False)
    assert killed and time.time() - t0 < 120


def test_user_functions_from_a_module_the_actors_cannot_import(ray_session, blobs, tmp_path, monkeypatch):
    """upd and agg defined in a module of a folder only this process has on its path: Ray's
    workers cannot import it by name, so gpups ships its code by value."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "my_training_code.py").write_text(textwrap.dedent("""
        from gpups.models import MLP

        NET = MLP([6, 5, 3], activation="tanh")

        def upd(p, x, y, hp):
            return NET.gradients(p, x, y, hp)

        def agg(p, g, state, hp):
            return {n: p[n] - hp["lr"] * g[n] for n in p}, state
    """))
    monkeypatch.syspath_prepend(str(folder))
    import my_training_code as mine

    X, y = blobs
    params = mine.NET.init(0, dtype=np.float64)
    kw = dict(upd=mine.upd, agg=mine.agg, utype="BSP", k=2, batchsize=10, epochs=2, hyperparams={"lr": 0.1})
    local = run(ray_session, params, X, y, "local", **kw)
    remote = run(ray_session, params, X, y, "ray", **kw)
    assert_models_close(remote.model, local.model, rtol=1e-12, atol=1e-14)
    from ray import cloudpickle

    assert not cloudpickle.cloudpickle._is_registered_pickle_by_value(mine)  # undone after the run


def test_an_address_where_nothing_listens_is_named_quickly():
    """(In a subprocess: this process is connected to the session's Ray, which a call would use.)"""
    code = textwrap.dedent("""
        import socket, time, numpy as np, gpups
        from gpups.models import SoftmaxRegression
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        net = SoftmaxRegression(4, 2)
        X = np.zeros((40, 4)); y = np.zeros(40, np.int64)
        t0 = time.time()
        try:
            gpups.paramserv(net.init(0), X, y, upd=net.gradients, backend="ray", progress=False, batchsize=8,
                            ray_address=f"127.0.0.1:{port}", device="cpu")
        except ValueError as exc:
            print("ERR", time.time() - t0, exc)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("ERR")]
    assert line, proc.stdout + proc.stderr[-2000:]
    _, seconds, message = line[0].split(" ", 2)
    assert float(seconds) < 30
    assert "ray_address='127.0.0.1:" in message and "no Ray cluster answers there" in message


# -- the embedded default, options ---------------------------------------------------------
def test_embedded_ray_is_kept_for_the_next_call_and_cleaned_up(tmp_path):
    """No address, no Ray running: paramserv starts a local Ray, keeps it and its actor hosts for
    the next call (the same session and processes, the same result), stops it on
    gpups.ray_shutdown() or at exit, removes its session folder and leaves no process behind (in
    subprocesses: the session's Ray is not touched)."""
    code = textwrap.dedent("""
        import os, sys, numpy as np, ray, gpups
        from gpups.models import SoftmaxRegression
        rng = np.random.default_rng(0)
        X = rng.standard_normal((200, 4)); y = (X[:, 0] > 0).astype(np.int64)
        net = SoftmaxRegression(4, 2)
        kw = dict(upd=net.gradients, k=2, batchsize=20, epochs=2, backend="ray", progress=False, device="cpu")
        from gpups.ray_backend.cluster import POOL
        def hosts():
            return sorted(ray.get([h.release.remote() for hs in POOL.values() for h in hs]))
        res = gpups.paramserv(net.init(0), X, y, **kw)
        session = ray._private.worker._global_node.get_session_dir_path()
        first = hosts()
        again = gpups.paramserv(net.init(0), X, y, **kw)
        assert len(first) == 3 and hosts() == first, (first, hosts())  # the same processes played again
        assert all(np.array_equal(res.model[n], again.model[n]) for n in res.model)
        same = ray.is_initialized() and ray._private.worker._global_node.get_session_dir_path() == session
        if sys.argv[1] == "explicit":
            gpups.ray_shutdown()
            assert not ray.is_initialized() and not os.path.exists(session)
        print("OK", res.device, same, session, os.getpid())
    """)
    for how in ("explicit", "at-exit"):
        proc = subprocess.run([sys.executable, "-c", code, how], capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("OK")][0]
        assert "ray (1 node(s)" in line and line.split()[-3] == "True", line
        session, pid = line.split()[-2], int(line.split()[-1])
        time.sleep(1.0)
        assert not os.path.exists(session), f"{how}: the session folder {session} was left behind"
        leftover = [p for p in _pids("ray::") + _pids("/") if _parent_is(p, pid)]
        assert not leftover, how


def test_the_embedded_instance_listens_on_loopback_only():
    """Every listening socket of the instance paramserv starts (GCS, raylet, its agents, the actors'
    workers) is on 127.0.0.0/8. (In a subprocess: this process holds the session's Ray.)"""
    code = textwrap.dedent("""
        import ipaddress, os, ray
        from gpups.ray_backend.cluster import Cluster, listening_addresses
        c = Cluster(None)
        @ray.remote
        class A:
            def pid(self):
                return os.getpid()
        ray.get(A.remote().pid.remote())
        found = listening_addresses(os.getpid())
        c.close()
        print("FOUND", len(found), sorted({a for a, _, _ in found}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("FOUND")]
    assert line, proc.stderr[-3000:]
    import ast
    import ipaddress

    count, addrs = int(line[0].split()[1]), ast.literal_eval(line[0].split(" ", 2)[2])
    assert count >= 3  # GCS, raylet, ... really were found
    for a in addrs:
        ip = ipaddress.ip_address(a)
        mapped = getattr(ip, "ipv4_mapped", None)
        assert ip.is_loopback or (mapped is not None and mapped.is_loopback), f"{a} is not loopback"


def _parent_is(pid, parent):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1]) == parent
    except OSError:
        return False


@pytest.mark.parametrize("kw,msg", [
    ({"ray_address": "localhost"}, r"ray_address='localhost' is not allowed"),
    ({"ray_address": 5}, r"ray_address=.* is not allowed"),
    ({"backend": "local", "ray_address": "auto"}, r"ray_address='auto' is not allowed: expected None unless"),
    ({"device": "cuda:1"}, r"device='cuda:1' is not allowed: .*backend='ray'"),
])
def test_bad_ray_options(blobs, kw, msg):
    X, y = blobs
    net = small_net()
    base = dict(upd=net.gradients, progress=False, backend="ray")
    base.update(kw)
    with pytest.raises(ValueError, match=msg):
        gpups.paramserv(net.init(0, dtype=np.float64), X, y, **base)


def test_share_fits_actors_on_whole_nodes():
    from gpups.ray_backend.cluster import share

    assert share([2.0], 2) == 1.0
    assert share([2.0], 3) == 0.6666
    assert share([2.0], 1) == 2.0
    assert share([8.0, 8.0], 1) == 8.0          # never more than one node has
    assert share([2.0, 2.0], 3) == 1.0          # 2 on one node, 1 on the other
    assert share([4.0, 1.0], 3) == 1.3333       # 3 on the big node beats 2 + 1
    assert share([0.0], 2) == 0.0               # no GPUs: nothing to ask for
    for caps, k in (([2.0, 2.0], 3), ([3.0, 1.0, 1.0], 4), ([1.5], 7)):
        x = share(caps, k)
        assert sum(int(c // x) for c in caps) >= k


def test_small_shm_warns(monkeypatch):
    import shutil

    from gpups.ray_backend import cluster

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(64 << 20, 0, 64 << 20))
    with pytest.warns(RuntimeWarning, match=r"/dev/shm holds 0.1 GiB.*--shm-size"):
        cluster.warn_small_shm()


def test_cli_trains_on_ray(ray_session, tmp_path):
    from gpups.cli import main

    rc = main(["train", "--model", "mlp", "--hidden", "16", "--data", "synthetic:1200:10", "--epochs", "2",
               "--k", "2", "--utype", "ASP", "--backend", "ray", "--device", "cpu", "--out", str(tmp_path),
               "--quiet"])
    assert rc == 0
    import json

    summary = json.loads((tmp_path / "history.json").read_text())
    assert summary["device"].startswith("ray") and len(summary["history"]) == 2


def test_checkpoint_resumes_across_backends(ray_session, blobs, tmp_path):
    """Checkpoints have one format: a run checkpointed locally continues on Ray (and back),
    ending where an unbroken local run ends."""
    X, y = blobs
    params = small_net().init(5, dtype=np.float64)
    kw = dict(utype="BSP", k=2, batchsize=12, agg="adam", hyperparams={"lr": 0.01}, servers=2)
    whole = run(ray_session, params, X, y, "local", epochs=3, **kw)
    ck = str(tmp_path / "ck")
    run(ray_session, params, X, y, "local", epochs=1, checkpoint=ck, **kw)
    run(ray_session, params, X, y, "ray", epochs=2, checkpoint=ck, resume=True, **kw)
    last = run(ray_session, params, X, y, "local", epochs=3, checkpoint=ck, resume=True, **kw)
    assert_models_close(last.model, whole.model, rtol=1e-12, atol=1e-14)
    assert [h["epoch"] for h in last.history] == [1, 2, 3]


def test_joins_a_running_cluster_and_leaves_it_running():
    """`ray start --head` (its own temp dir and port), then paramserv(ray_address=...) in another
    process: it trains there, disconnects, and the cluster is still up. Only that cluster's
    processes are stopped after (never `ray stop`, which would stop every Ray of the user)."""
    import socket
    import tempfile

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="gr", dir="/tmp")  # short: Ray's socket paths must fit 107 chars
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    env = dict(os.environ, RAY_AUTH_MODE="token")
    try:
        subprocess.run([ray_bin, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                        "--disable-usage-stats", f"--temp-dir={temp}"], check=True, capture_output=True, timeout=120,
                       env=env)
        code = textwrap.dedent(f"""
            import numpy as np, ray, gpups
            from gpups.models import SoftmaxRegression
            rng = np.random.default_rng(0)
            X = rng.standard_normal((200, 4)); y = (X[:, 0] > 0).astype(np.int64)
            net = SoftmaxRegression(4, 2)
            res = gpups.paramserv(net.init(0), X, y, upd=net.gradients, k=2, batchsize=20, epochs=3, backend="ray",
                                  hyperparams={{"lr": 0.5}}, ray_address="127.0.0.1:{port}", progress=False,
                                  device="cpu")
            assert not ray.is_initialized()  # disconnected again
            print("OK", res.device, net.evaluate(res.model, X, y)["accuracy"])
        """)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert float(proc.stdout.split()[-1]) > 0.9
        assert _pids_of_cluster(temp), "the joined cluster should still be running"
    finally:
        for pid in _pids_of_cluster(temp):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    time.sleep(0.5)
    assert not _pids_of_cluster(temp)
    import shutil

    shutil.rmtree(temp, ignore_errors=True)


def _pids_of_cluster(temp):
    """Processes whose command line names ``temp`` (Ray's daemons), and their descendants."""
    found = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if temp.encode() in f.read():
                        found.add(int(pid))
            except OSError:
                pass
    grew = True
    while grew:
        kids = {int(p) for p in os.listdir("/proc") if p.isdigit() and any(_parent_is(int(p), q) for q in found)}
        grew = bool(kids - found)
        found |= kids
    return sorted(found)


def test_a_local_checkpoint_resumes_on_ray_with_other_workers_and_shards(ray_session, blobs, tmp_path):
    """Elastic across backends: k=3 and 1 shard locally, then k=2 and 2 shards on Ray: the same
    model as the same resume run locally (BSP, element-wise rule)."""
    X, y = blobs
    params = small_net().init(5, dtype=np.float64)
    kw = dict(utype="BSP", batchsize=12, agg="adam", hyperparams={"lr": 0.01})
    for folder in ("a", "b"):
        run(ray_session, params, X, y, "local", epochs=1, k=3, servers=1, checkpoint=str(tmp_path / folder), **kw)
    on_ray = run(ray_session, params, X, y, "ray", epochs=2, k=2, servers=2, checkpoint=str(tmp_path / "a"),
                 resume=True, **kw)
    local = run(ray_session, params, X, y, "local", epochs=2, k=2, servers=2, checkpoint=str(tmp_path / "b"),
                resume=True, **kw)
    assert_models_close(on_ray.model, local.model, rtol=1e-12, atol=1e-14)
    assert on_ray.history[1]["resumed_with"] == {"k": [3, 2], "servers": [1, 2]}


# -- on_worker_error="drop" ----------------------------------------------------------------
@pytest.mark.parametrize("mode", [dict(utype="BSP"), dict(utype="ASP"), dict(utype="SSP", staleness=1),
                                  dict(utype="HOGWILD")], ids=lambda m: m["utype"])
def test_drop_on_ray_matches_the_local_backend(ray_session, mode, capfd):
    """A worker whose upd raises from epoch 2 on is dropped after its allowance, as locally:
    the same failures, workers alive, pushes and samples per epoch, one line per failure."""
    from test_drop import failing, problem, sizes

    X, y = problem()
    net = small_net()
    batches = [-(-s // 10) for s in sizes()]
    kw = dict(device="cpu", progress=False, k=3, batchsize=10, freq="BATCH", epochs=3, hyperparams={"lr": 0.1},
              on_worker_error="drop", max_worker_failures=2, **mode)
    local = gpups.paramserv(net.init(0, dtype=np.float64), X, y, upd=failing(net, 1, 2, batches), **kw)
    capfd.readouterr()
    res = gpups.paramserv(net.init(0, dtype=np.float64), X, y, upd=failing(net, 1, 2, batches), backend="ray", **kw)
    assert res.dropped == local.dropped == [1]
    for key in ("failures", "alive", "pushes", "samples"):
        assert [r[key] for r in res.history] == [r[key] for r in local.history], key
    err = capfd.readouterr().err
    assert err.count("gpups: worker 1 failed in epoch 2, batch ") == 3
    assert "gpups: worker 1 failed in epoch 2, batch 1 (RuntimeError: disk gone on worker 1)" in err
    assert err.count("the run goes on without it") == 1
    if mode["utype"] == "BSP":  # (a BSP run is the same on both backends)
        assert_models_close(res.model, local.model, rtol=1e-10, atol=1e-12)


def killing_worker(net, who, marker, once=None):
    """net.gradients, except that worker ``who``'s process kills itself while ``marker`` exists
    (so every restart of it dies too); with ``once=(j, path)``, worker j's process kills itself
    once when ``path`` exists (the first to rename it)."""
    def upd(params, x, y, hp, out=None):
        if hp.get("worker") == who and os.path.exists(marker):
            os.kill(os.getpid(), signal.SIGKILL)
        if once is not None and hp.get("worker") == once[0]:
            try:
                os.rename(once[1], once[1] + ".taken")
            except FileNotFoundError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return net.gradients(params, x, y, hp, out=out)
    return upd


def mark_after_epoch(runs, epoch, marker):
    """A thread that creates ``marker`` once this run has finished ``epoch`` epochs."""
    def watch():
        deadline = time.time() + 120
        while time.time() < deadline:
            if runs and len(runs[0].history) >= epoch:
                open(marker, "w").close()
                return
            time.sleep(0.005)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("utype,checkpoint", [("BSP", False), ("ASP", True)])
def test_a_worker_past_rays_restarts_is_dropped(ray_session, blobs, tmp_path, live_runs, utype, checkpoint, capfd):
    """Worker 1's process dies at every call from epoch 2 on: once Ray's restarts are used up it
    leaves the run, the epoch is done again by worker 0 (from the checkpoint, or from where the
    server is), its rows go to worker 0, and the run ends trained; worker 0's process dying once
    in epoch 3 restarts it with all those rows."""
    X, y = blobs
    net = small_net()
    marker, again = str(tmp_path / "die"), str(tmp_path / "again")
    t = mark_after_epoch(live_runs, 1, marker)
    t2 = mark_after_epoch(live_runs, 2, again)  # then worker 0, holding worker 1's rows, dies once
    params = net.init(0, dtype=np.float64)
    res = run(ray_session, params, X, y, "ray", upd=killing_worker(net, 1, marker, once=(0, again)), utype=utype, k=2,
              batchsize=10, epochs=3, on_worker_error="drop",
              checkpoint=str(tmp_path / "ck") if checkpoint else None)
    t.join()
    t2.join()
    assert os.path.exists(again + ".taken"), "worker 0 was not killed in epoch 3"
    h = res.history
    assert res.dropped == [1]
    assert [r["epoch"] for r in h] == [1, 2, 3]
    assert [r["alive"] for r in h] == [2, 1, 1]
    assert h[1]["failures"] == [0, 1] and h[1]["recovery_seconds"] > 0
    # epoch 2 done again by worker 0 alone, worker 1's 120 rows dealt to it (kept by its restart in epoch 3)
    assert h[1]["pushes"] == h[2]["pushes"] == [24, 0] and h[1]["samples"] == h[2]["samples"] == 240
    assert net.evaluate(res.model, X, y)["accuracy"] > max(0.85, net.evaluate(params, X, y)["accuracy"])
    err = capfd.readouterr().err
    assert err.count("worker 1 died in epoch 2 and Ray's 3 restarts are used up") == 1


@pytest.mark.parametrize("utype", ["BSP", "ASP", "HOGWILD"])
def test_the_trace_on_ray_has_the_actors_spans(ray_session, blobs, tmp_path, utype):
    """The actors' spans reach the driver's trace: an interval per push on each worker's track,
    an apply per update on each shard's, inside the epochs, a worker's spans never overlapping."""
    import collections

    from gpups.trace import load

    X, y = blobs
    path = tmp_path / "ray.trace.json"
    res = run(ray_session, small_net().init(0, dtype=np.float64), X, y, "ray", utype=utype, k=2, servers=2,
              batchsize=10, epochs=2, trace=str(path))
    events = load(str(path))
    count = collections.Counter((e["name"], e.get("tid")) for e in events if e.get("ph") == "X")
    for j in range(2):
        assert count["interval", j] == sum(h["pushes"][j] for h in res.history)
    pushes = sum(sum(h["pushes"]) for h in res.history)
    for s in range(2):
        assert count["apply", s] == (2 * 12 if utype == "BSP" else pushes)
    epochs = [e for e in events if e["name"] == "epoch"]
    spans = [e for e in events if e.get("ph") == "X" and e["name"] != "epoch"]
    lo, hi = epochs[0]["ts"], epochs[-1]["ts"] + epochs[-1]["dur"]
    assert all(lo - 1e3 <= e["ts"] and e["ts"] + e["dur"] <= hi + 1e3 for e in spans)  # (1 ms: clock reads)
    for j in range(2):
        mine = sorted((e["ts"], e["ts"] + e["dur"]) for e in spans if e["pid"] == 1 and e["tid"] == j)
        assert all(a[1] <= b[0] + 1e-3 for a, b in zip(mine, mine[1:]))
    assert any(e["name"] == "pull wait" for e in spans)


def test_the_ray_benchmark_runs_in_its_short_form(tmp_path):
    """benchmarks/ray_bench.py --ci (in a process of its own: it starts its own instance): every
    figure is there and measured, and every socket of the instance it started is on loopback."""
    import json

    out = tmp_path / "ray.json"
    proc = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "..", "benchmarks", "ray_bench.py"),
                           "--ci", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    c = r["calls"]
    assert all(c[key] > 0 for key in ("local_call_s", "first_ray_call_s", "second_ray_call_s", "third_ray_call_s"))
    row = r["100K"]
    assert row["params"] == 101_770 and row["ray_round_trip_ms"] > 0 and row["local_samples_per_s"] > 0
    assert set(r["freqs"]) == {f"{u} {f}" for u in ("BSP", "ASP") for f in ("BATCH", "NBATCHES 8", "EPOCH")}
    assert all(v["local"] > 0 and v["ray"] > 0 for v in r["freqs"].values())
    assert r["sockets"]["listening"] >= 3 and r["sockets"]["all_loopback"], r["sockets"]
    assert "push frequency" in proc.stdout
