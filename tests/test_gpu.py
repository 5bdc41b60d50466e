"""GPU path (marked gpu, skipped without CuPy and a CUDA device): CUDA kernels equal the
reference, CPU and GPU give the same BSP model, graph replay equals eager execution, every sync
mode trains."""

import numpy as np
import pytest

import gpups
from gpups import datasets
from gpups.models import MLP, LeNet, SoftmaxRegression
from gpups.models.ops import ArrayOps

pytestmark = pytest.mark.gpu
RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def cp():
    import cupy
    return cupy


@pytest.fixture(scope="module")
def ops():
    from gpups.kernels import cuda_nn
    return cuda_nn.ops()


@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-5), (np.float64, 1e-12)])
def test_layer_kernels_equal_reference(cp, ops, dtype, tol):
    ref = ArrayOps(np)
    for act in range(4):
        z = RNG.standard_normal((300, 37)).astype(dtype)
        b = RNG.standard_normal(37).astype(dtype)
        a_ref = z.copy()
        ref.bias_act(a_ref, b, act)
        a = cp.asarray(z)
        ops.bias_act(a, cp.asarray(b), act)
        np.testing.assert_allclose(a.get(), a_ref, rtol=tol, atol=tol)
        d_ref, db_ref = z.copy(), np.empty(37, dtype)
        ref.act_back_colsum(d_ref, a_ref, db_ref, act)
        d, db = cp.asarray(z), cp.full(37, np.nan, dtype)
        ops.act_back_colsum(d, cp.asarray(a_ref), db, act)
        np.testing.assert_allclose(d.get(), d_ref, rtol=tol, atol=tol)
        np.testing.assert_allclose(db.get(), db_ref, rtol=tol * 10, atol=tol * 10)
    z = RNG.standard_normal((70000, 10)).astype(dtype) * 3  # many rows: multi-chunk reductions
    b = RNG.standard_normal(10).astype(dtype)
    y = RNG.integers(0, 10, 70000)
    dz_ref, db_ref = np.empty_like(z), np.empty(10, dtype)
    loss_ref = ref.softmax_xent(z, b, y, dz_ref, db_ref)
    dz, db = cp.full(z.shape, np.nan, dtype), cp.full(10, np.nan, dtype)
    loss = ops.softmax_xent(cp.asarray(z), cp.asarray(b), cp.asarray(y), dz, db)
    np.testing.assert_allclose(float(loss), loss_ref, rtol=tol * 10)
    np.testing.assert_allclose(dz.get(), dz_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(db.get(), db_ref, rtol=tol * 100, atol=tol * 10)
    ls, hits = ops.softmax_eval(cp.asarray(z), cp.asarray(b), cp.asarray(y))
    ls_ref, hits_ref = ref.softmax_eval(z, b, y)
    assert float(hits) == float(hits_ref)
    np.testing.assert_allclose(float(ls), ls_ref, rtol=tol * 10)
    x = RNG.standard_normal((5, 12, 8, 3)).astype(dtype)
    cols_ref = np.empty((5 * 12 * 8, 5 * 5 * 3), dtype)
    ref.im2col(x, 5, 5, 2, cols_ref)
    cols = cp.full(cols_ref.shape, np.nan, dtype)
    ops.im2col(cp.asarray(x), 5, 5, 2, cols)
    np.testing.assert_array_equal(cols.get(), cols_ref)
    dx_ref = np.empty_like(x)
    ref.col2im(cols_ref, 5, 5, 2, dx_ref)
    dx = cp.full(x.shape, np.nan, dtype)
    ops.col2im(cols, 5, 5, 2, dx)
    np.testing.assert_allclose(dx.get(), dx_ref, rtol=tol, atol=tol)
    yp_ref, arg_ref = np.empty((5, 6, 4, 3), dtype), np.empty((5, 6, 4, 3), np.int64)
    ref.maxpool2(x, yp_ref, arg_ref)
    yp, arg = cp.full(yp_ref.shape, np.nan, dtype), cp.full(arg_ref.shape, -1, cp.int64)
    ops.maxpool2(cp.asarray(x), yp, arg)
    np.testing.assert_array_equal(yp.get(), yp_ref)
    np.testing.assert_array_equal(arg.get(), arg_ref)
    dy = RNG.standard_normal(yp_ref.shape).astype(dtype)
    g_ref = np.empty_like(x)
    ref.maxpool2_back(dy, arg_ref, g_ref)
    g = cp.full(x.shape, np.nan, dtype)
    ops.maxpool2_back(cp.asarray(dy), arg, g)
    np.testing.assert_array_equal(g.get(), g_ref)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_with_transposed_operands(cp, ops, dtype):
    a = RNG.standard_normal((33, 17)).astype(dtype)
    b = RNG.standard_normal((17, 9)).astype(dtype)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    for A, B in [(a, b), (a.T.copy().T, b), (a, b.T.copy().T), (a.T.copy().T, b.T.copy().T)]:
        out = cp.full((33, 9), np.nan, dtype)
        ga = cp.asarray(A.T.copy()).T if not A.flags.c_contiguous else cp.asarray(A)
        gb = cp.asarray(B.T.copy()).T if not B.flags.c_contiguous else cp.asarray(B)
        ops.gemm(ga, gb, out)
        np.testing.assert_allclose(out.get(), a @ b, rtol=tol, atol=tol)


def data(n=480, image=False):
    d = datasets.digits()
    X, y = d.X[:n], d.y[:n]
    return (X.reshape(-1, 1, 8, 8) if image else X), y


MODELS = {"softmax": lambda: SoftmaxRegression(64, 10), "mlp": lambda: MLP([64, 48, 32, 10]),
          "lenet": lambda: LeNet(input_shape=(1, 8, 8), classes=10, filters=(4, 8), hidden=32)}


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("agg", ["sgd", "momentum", "nesterov", "adagrad", "adam"])
def test_cpu_and_gpu_give_the_same_bsp_model(model, agg):
    net = MODELS[model]()
    X, y = data(image=model == "lenet")
    hp = {"lr": 0.01 if agg in ("adam", "adagrad") else 0.05}
    for dtype, rtol in [(np.float64, 1e-9), (np.float32, 1e-4)]:
        params = net.init(0, dtype=dtype)
        Xd = X.astype(dtype)
        kw = dict(upd=net.gradients, agg=agg, hyperparams=hp, k=4, batchsize=20, epochs=2, progress=False)
        cpu = gpups.paramserv(params, Xd, y, device="cpu", **kw)
        gpu = gpups.paramserv(params, Xd, y, device="cuda", **kw)
        assert gpu.device.startswith("cuda")
        for name in params:
            a, b = cpu.model[name], gpu.model[name]
            err = np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30)
            assert err < rtol, (name, dtype, err)


@pytest.mark.parametrize("utype,freq,push", [("BSP", "BATCH", "gradients"), ("BSP", "NBATCHES", "gradients"),
                                             ("ASP", "BATCH", "gradients"), ("HOGWILD", "BATCH", "gradients"),
                                             ("BSP", "EPOCH", "model")])
def test_graph_replay_equals_eager(monkeypatch, utype, freq, push):
    net = MLP([64, 32, 10])
    X, y = data(480)
    kw = dict(upd=net.gradients, agg="momentum", utype=utype, freq=freq, push=push,
              nbatches=3 if freq == "NBATCHES" else 1, k=1 if utype != "BSP" else 3, batchsize=16,
              epochs=2, hyperparams={"lr": 0.05}, progress=False, device="cuda")
    graphed = gpups.paramserv(net.init(0), X, y, **kw)
    assert graphed.graphs > 0
    monkeypatch.setenv("GPUPS_GRAPHS", "0")
    eager = gpups.paramserv(net.init(0), X, y, **kw)
    assert eager.graphs == 0
    for name in graphed.model:
        np.testing.assert_array_equal(graphed.model[name], eager.model[name])
    assert graphed.history[-1]["loss"] == pytest.approx(eager.history[-1]["loss"], rel=1e-6)


SLOTS2, SLOTS3 = ["cuda:0", "cuda:0"], ["cuda:0"] * 3  # device slots on the one GPU: the copies
# between slots' buffers run as across GPUs (peer memcpy on the same device)


@pytest.mark.parametrize("device,servers", [("cuda", 1), (SLOTS3, 2)], ids=["one-gpu", "3-slots"])
@pytest.mark.parametrize("utype", ["BSP", "ASP", "SSP", "SBP", "HOGWILD"])
def test_every_utype_trains_on_gpu(utype, device, servers):
    d = datasets.digits()
    net = MLP([64, 64, 10])
    kw = {"staleness": 2} if utype == "SSP" else {"backup_workers": 1} if utype == "SBP" else {}
    res = gpups.paramserv(net.init(0), d.X, d.y, upd=net.gradients, agg="momentum", utype=utype, k=4,
                          servers=servers, epochs=5, batchsize=32, hyperparams={"lr": 0.05}, val_features=d.Xv,
                          val_labels=d.yv, progress=False, device=device, **kw)
    assert res.history[-1]["val_accuracy"] >= 0.85, res.history[-1]
    assert res.graphs > 0 or utype == "SBP"


def test_cupy_inputs_give_cupy_outputs(cp):
    d = datasets.digits()
    net = SoftmaxRegression(64, 10)
    params = net.init(0, device="cuda")
    res = gpups.paramserv(params, cp.asarray(d.X), cp.asarray(d.y), upd=net.gradients, k=2, epochs=1,
                          progress=False, device="cuda")
    assert all(isinstance(v, cp.ndarray) and v.dtype == cp.float32 for v in res.model.values())


def test_nonfinite_gradient_on_gpu_names_worker_and_batch(cp):
    d = datasets.digits()
    net = SoftmaxRegression(64, 10)
    calls = {"n": 0}

    def upd(p, x, y, hp):
        g, loss = net.gradients(p, x, y, hp)
        calls["n"] += 1
        if calls["n"] == 4:
            g["W1"][0, 0] = cp.nan
        return g, loss

    with pytest.raises(gpups.WorkerError, match=r"worker 0 failed: its gradient held NaN or Inf in epoch 1, batch 3"):
        gpups.paramserv(net.init(0), d.X, d.y, upd=upd, k=1, batchsize=32, progress=False, device="cuda")


def test_worker_error_on_gpu_is_named():
    d = datasets.digits()
    net = SoftmaxRegression(64, 10)
    calls = {"n": 0}

    def upd(p, x, y, hp):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyError("boom")
        return net.gradients(p, x, y, hp)

    with pytest.raises(gpups.WorkerError, match=r"worker \d failed: KeyError"):
        gpups.paramserv(net.init(0), d.X, d.y, upd=upd, utype="ASP", k=2, batchsize=32, progress=False,
                        device="cuda")


def test_features_are_cast_to_the_model_dtype():
    """float32 features, float64 model: trained in float64 on the GPU as on the CPU."""
    net = MLP([64, 32, 10])
    X, y = data(480)
    assert X.dtype == np.float32
    kw = dict(upd=net.gradients, agg="momentum", k=2, batchsize=16, epochs=2, hyperparams={"lr": 0.05},
              progress=False)
    cpu = gpups.paramserv(net.init(0, dtype=np.float64), X.astype(np.float64), y, device="cpu", **kw)
    gpu = gpups.paramserv(net.init(0, dtype=np.float64), X, y, device="cuda", **kw)
    for name in cpu.model:
        assert gpu.model[name].dtype == np.float64
        np.testing.assert_allclose(gpu.model[name], cpu.model[name], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("servers", [1, 2, 3])
@pytest.mark.parametrize("freq,push,agg", [("BATCH", "gradients", "momentum"), ("NBATCHES", "gradients", "adam"),
                                           ("EPOCH", "model", "sgd")])
def test_bsp_over_device_slots_equals_one_gpu(servers, freq, push, agg):
    net = MLP([64, 32, 10])
    X, y = data(480)
    X = X.astype(np.float64)
    kw = dict(upd=net.gradients, agg=agg, freq=freq, push=push, nbatches=3 if freq == "NBATCHES" else 1, k=3,
              servers=servers, batchsize=16, epochs=2, hyperparams={"lr": 0.01}, progress=False)
    one = gpups.paramserv(net.init(0, dtype=np.float64), X, y, device="cuda", **kw)
    for dev in (SLOTS2, SLOTS3):
        placed = gpups.paramserv(net.init(0, dtype=np.float64), X, y, device=dev, **kw)
        assert placed.device.startswith("cuda:0, cuda:0")
        assert placed.graphs > 0 or agg == "adam"
        for name in one.model:
            np.testing.assert_array_equal(placed.model[name], one.model[name], err_msg=f"{dev} {name}")


@pytest.mark.parametrize("utype", ["ASP", "SSP", "SBP", "HOGWILD"])
def test_one_worker_far_from_its_shards_equals_one_gpu(utype):
    """k=1 on slot 0, shard 1 on slot 1: pushes sent, pulls copied, deterministic in every mode."""
    net = MLP([64, 32, 10])
    X, y = data(480)
    X = X.astype(np.float64)
    kw = dict(upd=net.gradients, agg="momentum", utype=utype, k=1, servers=2, batchsize=16, epochs=2,
              hyperparams={"lr": 0.05}, progress=False)
    one = gpups.paramserv(net.init(0, dtype=np.float64), X, y, device="cuda", **kw)
    placed = gpups.paramserv(net.init(0, dtype=np.float64), X, y, device=SLOTS2, **kw)
    for name in one.model:
        np.testing.assert_array_equal(placed.model[name], one.model[name], err_msg=name)


def test_two_gpus_equal_one():
    """Only where the machine has two GPUs (the lent ones have one)."""
    import cupy

    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs")
    net = MLP([64, 32, 10])
    X, y = data(480)
    X = X.astype(np.float64)
    kw = dict(upd=net.gradients, agg="momentum", k=4, servers=2, batchsize=16, epochs=2,
              hyperparams={"lr": 0.05}, progress=False)
    one = gpups.paramserv(net.init(0, dtype=np.float64), X, y, device="cuda", **kw)
    two = gpups.paramserv(net.init(0, dtype=np.float64), X, y, device=["cuda:0", "cuda:1"], **kw)
    for name in one.model:
        np.testing.assert_array_equal(two.model[name], one.model[name], err_msg=name)
    for utype in ["ASP", "HOGWILD"]:
        res = gpups.paramserv(net.init(0), X, y, device=["cuda:0", "cuda:1"], **{**kw, "utype": utype})
        assert np.isfinite(res.history[-1]["loss"])


def test_bad_device_is_named():
    with pytest.raises(ValueError, match=r"device='cuda:99'.*GPU"):
        d = datasets.digits()
        net = SoftmaxRegression(64, 10)
        gpups.paramserv(net.init(0), d.X, d.y, upd=net.gradients, progress=False, device="cuda:99")


def test_too_many_workers_for_the_gpu_kernels_is_named():
    d = datasets.synthetic(n=3000, d=8)
    net = SoftmaxRegression(8, 10)
    with pytest.raises(ValueError, match=r"k=1025.*at most 1024 workers on a GPU"):
        gpups.paramserv(net.init(0), d.X, d.y, upd=net.gradients, k=1025, batchsize=1, progress=False,
                        device="cuda")


@pytest.mark.parametrize("servers", [1, 2])
def test_ray_actors_on_a_gpu_equal_cpu_actors(servers):
    """The Ray backend's actor classes, driven by hand through BSP rounds (no Ray needed): a
    WorkerActor on the GPU (CuPy replica, graphs, payload back to host memory) gives the same
    model as one on the CPU, and as the local backend."""
    from gpups.flat import Layout
    from gpups.ray_backend.actors import ShardActor, WorkerActor

    rng = np.random.default_rng(5)
    X = rng.standard_normal((256, 12))
    y = rng.integers(0, 3, 256)
    net = MLP([12, 16, 3])
    params = net.init(0, dtype=np.float64)
    layout = Layout.of(params)
    init = layout.flatten(params, np.empty(layout.size))
    cuts = layout.shards(servers)
    hp = {"lr": 0.05, "momentum": 0.9}
    k, bs = 2, 16
    models = []
    for gpu in (False, True):
        shards = [ShardActor(s, layout.sub(lo, hi), [init[lo:hi]], "momentum", hp, k, "gradients")
                  for s, (lo, hi) in enumerate(cuts)]
        workers = [WorkerActor(j, [X[j * 128:(j + 1) * 128], y[j * 128:(j + 1) * 128]], layout, net.gradients,
                               "momentum", hp, bs, "gradients", k, cuts, 1, gpu) for j in range(k)]
        parts = [init[lo:hi] for lo, hi in cuts]
        for epoch in range(2):
            for r in range(128 // bs):
                outs = [wk.run(r, 1, epoch, *parts) for wk in workers]
                parts = [sh.apply(list(range(k)), 1.0 / k, *[o[0] for o in outs], *[o[1 + s] for o in outs]).copy()
                         for s, sh in enumerate(shards)]
        models.append(np.concatenate(parts))
    np.testing.assert_allclose(models[1], models[0], rtol=1e-9, atol=1e-12)
    local = gpups.paramserv(params, X, y, upd=net.gradients, agg="momentum", hyperparams=hp, k=k, batchsize=bs,
                            epochs=2, servers=servers, progress=False, device="cpu")
    np.testing.assert_allclose(models[0], layout.flatten(local.model, np.empty(layout.size)), rtol=1e-12,
                               atol=1e-14)


@pytest.mark.parametrize("utype", ["BSP", "ASP", "HOGWILD"])
def test_the_trace_on_a_gpu_times_the_work_with_cuda_events(tmp_path, utype):
    """On a GPU the spans come from CUDA events (read at the barrier): an interval per push on
    each worker's track, an apply per update on each shard's (BSP, ASP), inside the epochs, a
    worker's spans in stream order, and the same counts and order with graph replay."""
    import collections

    from gpups.trace import load

    X = RNG.standard_normal((400, 6)).astype(np.float32)
    y = RNG.integers(0, 3, 400)
    net = MLP([6, 16, 3])
    path = tmp_path / "gpu.trace.json"
    res = gpups.paramserv(net.init(0, dtype=np.float32), X, y, upd=net.gradients, utype=utype, k=2, servers=2,
                          batchsize=20, epochs=3, device="cuda", progress=False, trace=str(path))
    events = load(str(path))
    spans = [e for e in events if e.get("ph") == "X" and e["name"] != "epoch"]
    count = collections.Counter((e["name"], e.get("tid")) for e in spans if e["pid"] in (1, 2))
    for j in range(2):
        assert count["interval", j] == sum(h["pushes"][j] for h in res.history)
    if utype == "BSP":
        assert count["apply", 0] == count["apply", 1] == 3 * 10
    if utype == "ASP":
        assert count["apply", 0] == sum(sum(h["pushes"]) for h in res.history)
    epochs = [e for e in events if e["name"] == "epoch"]
    lo, hi = epochs[0]["ts"], epochs[-1]["ts"] + epochs[-1]["dur"]
    assert all(lo - 1e3 <= e["ts"] and e["ts"] + e["dur"] <= hi + 1e3 for e in spans)
    assert all(e["dur"] >= 0 for e in spans) and any(e["dur"] > 0 for e in spans)
    for j in range(2):  # one stream per worker: its spans in order, not overlapping (20 us: float32 ms)
        mine = sorted((e["ts"], e["ts"] + e["dur"]) for e in spans if e["pid"] == 1 and e["tid"] == j)
        assert all(a[1] <= b[0] + 20 for a, b in zip(mine, mine[1:]))


# -- functions that are not declared graph-safe: tried under capture, checked against eager ---------
def example(name):
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "examples", name)
    spec = importlib.util.spec_from_file_location(name[:-3], path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def graphed_and_eager(monkeypatch, params, upd, X, y, **kw):
    kw = dict(upd=upd, agg="momentum", utype="BSP", k=2, batchsize=16, epochs=2,
              hyperparams={"lr": 0.05, "momentum": 0.9}, progress=False, device="cuda", **kw)
    graphed = gpups.paramserv(params, X, y, **kw)
    monkeypatch.setenv("GPUPS_GRAPHS", "0")
    eager = gpups.paramserv(params, X, y, **kw)
    monkeypatch.delenv("GPUPS_GRAPHS")
    return graphed, eager


def test_a_user_cupy_upd_passes_its_trial_and_replays_like_eager(cp, monkeypatch):
    """examples/array_upd.py's MLP (cupy.matmul, array expressions, a device loss): captured,
    and the run equals the eager run (float64: GEMMs of CuPy and of the binding may differ in
    rounding only)."""
    mod = example("array_upd.py")
    X, y = data(480)
    params = {k: v.astype(cp.float64) for k, v in mod.init([64, 32, 10], cp).items()}
    graphed, eager = graphed_and_eager(monkeypatch, params, mod.mlp_upd(cp), X, y)
    assert graphed.graphs > 0 and eager.graphs == 0
    for name in graphed.model:
        np.testing.assert_allclose(graphed.model[name].get(), eager.model[name].get(), rtol=1e-9, atol=1e-12)
    assert graphed.history[-1]["loss"] == pytest.approx(eager.history[-1]["loss"], rel=1e-9)


def test_an_upd_with_the_matmul_operator_stays_eager_and_says_why(cp, monkeypatch):
    def upd(p, x, y, hp):  # `@` goes to CuPy's cuBLAS, which refuses a capture
        z = x @ p["W1"] + p["b1"]
        d = (z - (cp.arange(z.shape[1])[None, :] == y[:, None])) / x.shape[0]
        return {"W1": x.T @ d, "b1": d.sum(axis=0)}, (d * d).sum()

    X, y = data(480)
    params = {"W1": cp.zeros((64, 10)), "b1": cp.zeros(10)}
    with pytest.warns(RuntimeWarning, match="cupy.matmul"):
        graphed, eager = graphed_and_eager(monkeypatch, params, upd, X, y)
    assert graphed.graphs == 0
    for name in graphed.model:
        np.testing.assert_array_equal(graphed.model[name].get(), eager.model[name].get())


def test_array_expression_layers_are_captured_after_their_trial(cp, monkeypatch):
    from gpups import nn

    net = nn.Sequential([nn.Dense(32, "relu"), nn.LayerNorm(), nn.Activation("gelu"), nn.Dense(10)],
                        loss="softmax_ce", input_shape=(64,))
    X, y = data(480)
    graphed, eager = graphed_and_eager(monkeypatch, net.init(0, np.float64, device="cuda"), net.gradients, X, y)
    assert graphed.graphs > 0
    for name in graphed.model:
        np.testing.assert_allclose(graphed.model[name].get(), eager.model[name].get(), rtol=1e-9, atol=1e-12)


def test_dropout_fails_its_trial_and_runs_eagerly(cp, monkeypatch):
    """Dropout's mask follows hyperparams['step']: a graph would freeze it; the trial sees the
    replay differ from the next step's eager run."""
    from gpups import nn

    net = nn.Sequential([nn.Dense(32, "relu"), nn.Dropout(0.5), nn.Dense(10)], loss="softmax_ce",
                        input_shape=(64,))
    X, y = data(480)
    with pytest.warns(RuntimeWarning, match="differs from an eager run"):
        graphed, eager = graphed_and_eager(monkeypatch, net.init(0, np.float64, device="cuda"), net.gradients, X, y)
    assert graphed.graphs == 0
    for name in graphed.model:
        np.testing.assert_array_equal(graphed.model[name].get(), eager.model[name].get())


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("rule", ["sgd", "adagrad", "rowwise_adagrad", "lazy_adam"])
def test_table_kernels_equal_their_cpu_twins(cp, dtype, tol, rule):
    """kernels/tables.cu against kernels/cpu_tables.py: dedup (repeats summed in the order they
    came; the unique rows exactly), gather, and each row-wise update over many steps."""
    from gpups.kernels import cpu_tables as C
    from gpups.kernels import cuda_tables as G

    rng = np.random.default_rng(3)
    rows, dim, m = 5000, 16, 3000
    ids = np.minimum(rng.zipf(1.2, m) - 1, rows - 1).astype(np.int64)
    vals = rng.standard_normal((m, dim)).astype(dtype)
    u_c, g_c = C.dedup(ids, vals)
    u_g, g_g = G.dedup(cp.asarray(ids), cp.asarray(vals))
    np.testing.assert_array_equal(cp.asnumpy(u_g), u_c)
    np.testing.assert_array_equal(cp.asnumpy(g_g), g_c)  # (the same additions in the same order)
    out = cp.empty((m, dim), dtype)
    W = rng.standard_normal((rows, dim)).astype(dtype)
    G.gather(cp.asarray(W), cp.asarray(ids), out)
    np.testing.assert_array_equal(cp.asnumpy(out), W[ids])
    hshape = (rows, 1) if rule == "rowwise_adagrad" else (rows, dim)
    w_c, w_g = W.copy(), cp.asarray(W)
    s_c = [np.zeros(hshape, dtype) for _ in range({"sgd": 0, "lazy_adam": 2}.get(rule, 1))]
    s_g = [cp.asarray(s) for s in s_c]
    T = np.dtype(dtype).type
    hyper = {"sgd": (T(0.1),), "adagrad": (T(0.1), T(1e-8)), "rowwise_adagrad": (T(0.1), T(1e-8))}
    for step in range(1, 6):
        hp = hyper.get(rule) or (T(0.01), T(0.9), T(0.999), T(1e-8), T(1 / (1 - 0.9 ** step)), T(1 / (1 - 0.999 ** step)))
        getattr(C, rule)(w_c, *s_c, u_c, g_c, 0.5, *hp)
        getattr(G, rule)(w_g, *s_g, u_g, g_g, 0.5, *hp)
    np.testing.assert_allclose(cp.asnumpy(w_g), w_c, rtol=tol, atol=tol)
    for a, b in zip(s_g, s_c):
        np.testing.assert_allclose(cp.asnumpy(a), b, rtol=tol, atol=tol)
