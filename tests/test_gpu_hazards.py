"""The GPU engine's hazards (issue 16): each test sets up the interleaving or input that once
gave silently wrong results. The user-agg buffer test runs on the CPU too; the others are marked
gpu and skip without CuPy and a CUDA device (benchmarks/gpu_check.py runs them, also under
compute-sanitizer)."""
import threading

import numpy as np
import pytest

import gpups
from gpups.models import MLP, LinearRegression

RNG = np.random.default_rng(0)


# -- 2. a user agg's gradient buffer is per caller (CPU and GPU) ----------------------------------
def constant_upd(X):
    """Worker 0's gradient is all 1, worker 1's all 2 (told apart by their first feature)."""
    def upd(p, x, y, hp):
        mark = 1.0 if x[0, 0] < 0.5 else 2.0
        xp = np if isinstance(x, np.ndarray) else __import__("cupy")
        return {n: xp.full(v.shape, mark, v.dtype) for n, v in p.items()}
    return upd


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_concurrent_user_aggs_each_see_their_own_push(device):
    """HOGWILD, k=2: both workers apply their pushes with the user's agg at the same time (a
    barrier holds each call until the other has aggregated too). Each call must see its own
    worker's gradient, 1/k of a constant, never the other's."""
    X = np.zeros((80, 3))
    X[40:, 0] = 1.0  # worker 1's rows
    y = np.zeros(80, np.int64)
    net = MLP([3, 4, 2])
    seen, lock = [], threading.Lock()
    meet = threading.Barrier(2, timeout=10)

    def agg(p, g, state, hp):
        if not any(float(abs(a).max()) for a in g.values()):
            return p, state  # the dry run's zero push
        try:
            meet.wait()  # the other worker's aggregate has been written by now
        except threading.BrokenBarrierError:
            meet.reset()
        vals = {float(a.min()) for a in g.values()} | {float(a.max()) for a in g.values()}
        with lock:
            seen.append(vals)
        return p, state

    gpups.paramserv(net.init(0, dtype=np.float64), X, y, upd=constant_upd(X), agg=agg, utype="HOGWILD", k=2,
                    batchsize=10, device=device, progress=False, epochs=2)
    assert len(seen) == 16
    assert all(v in ({0.5}, {1.0}) for v in seen), seen  # 1/k of 1 or of 2, never a mix or another's
    assert sum(v == {0.5} for v in seen) == 8


def test_an_agg_is_not_called_when_every_push_was_skipped():
    X = RNG.standard_normal((40, 3))
    y = RNG.integers(0, 2, 40)
    net = MLP([3, 4, 2])
    calls = []

    def nan_upd(p, x, yy, hp):  # the second batch's gradient is NaN
        g, loss = net.gradients(p, x, yy, hp)
        return ({n: v * np.nan for n, v in g.items()} if x[0, 0] == X[10, 0] else g), loss

    def agg(p, g, state, hp):
        calls.append(1)
        v = state.get("v", 0) + 1  # a stateful rule: it would move p on a zero gradient
        return {n: p[n] - 0.01 * v for n in p}, {"v": v}

    res = gpups.paramserv(net.init(0, dtype=np.float64), X, y, upd=nan_upd, agg=agg, k=1, batchsize=10,
                          device="cpu", progress=False, nonfinite="skip")
    assert res.history[0]["skipped"] == [1]
    assert len(calls) == 1 + 3  # the dry run, then the 3 good rounds of 4


# -- 1. a new row set is whole before any kernel reads it --------------------------------------------
SPIN = r'''
extern "C" __global__ void spin(long long cycles) {
  long long t0 = clock64();
  while (clock64() - t0 < cycles) {}
}
'''


@pytest.mark.gpu
def test_a_fresh_row_set_is_ordered_before_the_update_that_reads_it():
    import cupy as cp

    from gpups.flat import Layout
    from gpups.gpu import CUDADevice
    from gpups.optim import make_rule
    from gpups.server import ParamServer

    dev = CUDADevice([0])
    layout = Layout.of({"w": np.zeros(1 << 16, np.float32)})
    server = ParamServer(dev, layout, cp.zeros(1 << 16, cp.float32), make_rule("sgd", {"lr": 1.0}), 3)
    server.G[...] = cp.arange(3, dtype=cp.float32)[:, None] + 1
    junk = cp.full(64, 2**40, cp.int64)  # a block of huge "row indices" back in the pool
    del junk
    cp.RawKernel(SPIN, "spin")((1,), (1,), (np.int64(2_000_000_000),))  # ~1 s on the null stream
    server.apply((2,), 1.0)
    server.synchronize()
    np.testing.assert_array_equal(server.w.get(), np.full(1 << 16, -3.0, np.float32))


# -- 3. graphs own the memory they write ---------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("net", [MLP([20, 16, 3]), LinearRegression(20, 2)], ids=["mlp", "regression"])
def test_graph_replays_survive_freed_pools_and_evicted_workspaces(monkeypatch, net):
    import cupy as cp

    X = RNG.standard_normal((512, 20)).astype(np.float32)
    y = RNG.integers(0, 3, 512) if net.classifier else RNG.standard_normal((512, 2)).astype(np.float32)
    hogs = []

    def evaluate(p, xv, yv):  # at each epoch's end: pools emptied, then refilled with NaN
        cp.get_default_memory_pool().free_all_blocks()
        hogs.append(cp.full(64 << 20, cp.nan, cp.float32))
        return {"x": 0.0}

    def train(graphs):
        monkeypatch.setenv("GPUPS_GRAPHS", "1" if graphs else "0")
        monkeypatch.setattr(type(net), "max_workspaces", 1)
        return gpups.paramserv(net.init(0), X, y, upd=net.gradients, agg="momentum", utype="BSP", k=2,
                               batchsize=32, epochs=3, device="cuda", progress=False, val_features=X[:8],
                               val_labels=y[:8], evaluate=evaluate)

    with_graphs, eager = train(True), train(False)
    assert with_graphs.graphs > 0
    for name in eager.model:
        np.testing.assert_array_equal(cp.asnumpy(with_graphs.model[name]), cp.asnumpy(eager.model[name]))


@pytest.mark.gpu
def test_a_lenet_step_with_channels_allocates_nothing_when_warm():
    import cupy as cp

    from gpups.models import LeNet

    net = LeNet((3, 8, 8), 3, filters=(4, 4), hidden=8)
    p = net.init(0, device="cuda")
    x = cp.asarray(RNG.standard_normal((16, 3, 8, 8)).astype(np.float32))
    y = cp.asarray(RNG.integers(0, 3, 16))
    out = {k: cp.empty_like(v) for k, v in p.items()}
    net.gradients(p, x, y, {}, out=out)
    cp.cuda.Device().synchronize()
    pool = cp.get_default_memory_pool()
    used = pool.used_bytes()
    net.gradients(p, x, y, {}, out=out)
    assert pool.used_bytes() == used


# -- 4. labels out of range never index memory on the GPU --------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("n", [100, 3000])  # the one-block kernel and the row kernel
def test_cuda_loss_kernels_flag_bad_labels_instead_of_writing_out_of_bounds(n):
    import cupy as cp

    from gpups.kernels import cuda_nn

    ops = cuda_nn.ops()
    c = 3
    guard = cp.full((n + 8) * c, 7.0, cp.float32)  # dz, then a guard zone right after it
    dz = guard[: n * c].reshape(n, c)
    z = cp.asarray(RNG.standard_normal((n, c)).astype(np.float32))
    y = cp.asarray(RNG.integers(0, c, n))
    y[-1] = c  # 1-based: one past the end
    y[0] = -5
    db = cp.empty(c, cp.float32)
    loss = ops.softmax_xent(z, cp.zeros(c, cp.float32), y, dz, db)
    assert bool(cp.isnan(loss)) and bool(cp.isnan(dz[-1]).all()) and bool(cp.isnan(dz[0]).all())
    assert bool(cp.isfinite(dz[1:-1]).all())
    assert bool((guard[n * c:] == 7.0).all())  # nothing written past dz
    ls, hits = ops.softmax_eval(z, cp.zeros(c, cp.float32), y)
    assert bool(cp.isnan(ls)) and float(hits) <= n - 2


# -- 5. streams of finished runs give their memory back -----------------------------------------------
@pytest.mark.gpu
def test_fifty_runs_in_one_process_keep_device_memory_flat():
    import cupy as cp

    X = RNG.standard_normal((256, 20)).astype(np.float32)
    y = RNG.integers(0, 3, 256)
    net = MLP([20, 16, 3])

    def one():
        gpups.paramserv(net.init(0), X, y, upd=net.gradients, utype="ASP", k=4, batchsize=32, epochs=1,
                        device="cuda", progress=False)
        cp.cuda.Device().synchronize()
        cp.get_default_memory_pool().free_all_blocks()
        return cp.cuda.runtime.memGetInfo()[0]

    for _ in range(3):
        one()  # warm: modules, handles of the first streams
    free0 = one()
    for _ in range(50):
        free = one()
    assert free0 - free < 32 << 20, f"{(free0 - free) / 2**20:.0f} MiB of device memory kept by 50 runs"


# -- 6. smaller ones -------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_gather_copies_two_byte_labels_of_an_odd_batch():
    import cupy as cp

    from gpups.kernels.cuda_nn import gather_xy

    x = cp.arange(7 * 5 * 3, dtype=cp.float32).reshape(35, 3)
    y = cp.arange(35, dtype=cp.float16)
    xb, yb = cp.empty((5, 3), cp.float32), cp.empty(5, cp.float16)
    gather_xy(x, xb, y, yb, cp.asarray([2], cp.int64))
    np.testing.assert_array_equal(yb.get(), np.arange(10, 15, dtype=np.float16))
    np.testing.assert_array_equal(xb.get(), x[10:15].get())


@pytest.mark.gpu
def test_gemm_checks_its_shapes():
    import cupy as cp

    from gpups.kernels import cublas

    a, b = cp.ones((4, 3), cp.float32), cp.ones((5, 2), cp.float32)
    with pytest.raises(ValueError, match="gemm shapes do not match"):
        cublas.gemm(a, b, cp.empty((4, 2), cp.float32))
    with pytest.raises(ValueError, match="gemm shapes do not match"):
        cublas.gemm(a, cp.ones((3, 2), cp.float32), cp.empty((4, 3), cp.float32))
