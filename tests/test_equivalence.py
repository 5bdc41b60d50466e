"""paramserv's sync modes proven by equivalences with simpler runs (float64, tight tolerance)."""
import numpy as np
import pytest

import gpups
from gpups.partition import partition
from helpers import assert_models_close, plain_sgd, small_net

LR = 0.2


def ps(params, X, y, **kw):
    net = small_net()
    base = dict(upd=net.gradients, agg="sgd", hyperparams={"lr": LR}, progress=False, device="cpu")
    base.update(kw)
    return gpups.paramserv(params, X, y, **base)


@pytest.mark.parametrize("scheme", ["disjoint_round_robin", "disjoint_contiguous"])
def test_bsp_k_workers_equals_one_worker_with_k_times_batch(blobs, scheme):
    X, y = blobs
    net = small_net()
    params = net.init(3, dtype=np.float64)
    k, b = 4, 10
    res = ps(params, X, y, utype="BSP", k=k, batchsize=b, epochs=2, scheme=scheme)
    # the rows of round r are batch r of every worker: lay them out for one worker of batch k*b
    parts = partition(len(X), k, scheme, 0)
    order = np.concatenate([np.concatenate([p[r * b:(r + 1) * b] for p in parts])
                            for r in range(len(parts[0]) // b)])
    ref = plain_sgd(net, params, X[order], y[order], k * b, LR, epochs=2)
    assert_models_close(res.model, ref)


def test_ssp_with_staleness_0_equals_bsp(blobs):
    X, y = blobs
    params = small_net().init(0, dtype=np.float64)
    bsp = ps(params, X, y, utype="BSP", k=3, batchsize=8, epochs=2)
    ssp = ps(params, X, y, utype="SSP", staleness=0, k=3, batchsize=8, epochs=2)
    assert_models_close(ssp.model, bsp.model)


def test_sbp_with_no_backup_workers_equals_bsp(blobs):
    X, y = blobs
    params = small_net().init(0, dtype=np.float64)
    bsp = ps(params, X, y, utype="BSP", k=4, batchsize=7, epochs=2, agg="momentum",
             hyperparams={"lr": 0.05})
    sbp = ps(params, X, y, utype="SBP", backup_workers=0, k=4, batchsize=7, epochs=2, agg="momentum",
             hyperparams={"lr": 0.05})
    assert_models_close(sbp.model, bsp.model, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("utype", ["ASP", "SSP", "HOGWILD", "SBP", "BSP"])
@pytest.mark.parametrize("freq", ["BATCH", "NBATCHES", "EPOCH"])
def test_one_worker_equals_plain_sgd(blobs, utype, freq):
    """k=1: every sync mode and push frequency is plain SGD (local steps between pushes sum up
    to the same trajectory as server steps)."""
    X, y = blobs
    net = small_net()
    params = net.init(1, dtype=np.float64)
    kw = {"nbatches": 3} if freq == "NBATCHES" else {}
    res = ps(params, X, y, utype=utype, freq=freq, k=1, batchsize=16, epochs=2, **kw)
    assert_models_close(res.model, plain_sgd(net, params, X, y, 16, LR, epochs=2))


def test_push_model_epoch_is_mean_of_k_models(blobs):
    X, y = blobs
    net = small_net()
    params = net.init(2, dtype=np.float64)
    k = 3
    res = ps(params, X, y, utype="BSP", freq="EPOCH", push="model", k=k, batchsize=10)
    parts = partition(len(X), k, "disjoint_contiguous", 0)
    models = [plain_sgd(net, params, X[p], y[p], 10, LR) for p in parts]
    mean = {n: sum(m[n] for m in models) / k for n in params}
    assert_models_close(res.model, mean)


def test_shards_give_the_same_bsp_model(blobs):
    X, y = blobs
    params = small_net().init(0, dtype=np.float64)
    for agg, hp in [("momentum", {"lr": 0.05}), ("adam", {"lr": 0.01}), ("adagrad", {"lr": 0.1}),
                    ("nesterov", {"lr": 0.05})]:
        one = ps(params, X, y, k=3, batchsize=10, agg=agg, hyperparams=hp, epochs=2)
        four = ps(params, X, y, k=3, batchsize=10, agg=agg, hyperparams=hp, epochs=2, servers=4)
        assert_models_close(four.model, one.model, rtol=0, atol=0)


def test_bsp_is_deterministic(blobs):
    X, y = blobs
    params = small_net().init(0, dtype=np.float64)
    a = ps(params, X, y, k=4, batchsize=5, agg="adam", hyperparams={"lr": 0.01}, epochs=2)
    b = ps(params, X, y, k=4, batchsize=5, agg="adam", hyperparams={"lr": 0.01}, epochs=2)
    assert_models_close(a.model, b.model, rtol=0, atol=0)


def test_custom_agg_equals_builtin_sgd(blobs):
    X, y = blobs
    params = small_net().init(0, dtype=np.float64)

    def my_sgd(p, g, state, hp):
        state["calls"] = state.get("calls", 0) + 1
        return {n: p[n] - hp["lr"] * g[n] for n in p}, state

    custom = ps(params, X, y, k=2, batchsize=10, agg=my_sgd, servers=2)
    builtin = ps(params, X, y, k=2, batchsize=10)
    assert_models_close(custom.model, builtin.model)


def test_inputs_are_not_mutated(blobs):
    X, y = blobs
    params = small_net().init(0, dtype=np.float64)
    copies = [X.copy(), y.copy(), {n: v.copy() for n, v in params.items()}]
    for utype in ["BSP", "HOGWILD"]:
        res = ps(params, X, y, k=2, batchsize=10, utype=utype)
        np.testing.assert_array_equal(X, copies[0])
        np.testing.assert_array_equal(y, copies[1])
        assert_models_close(params, copies[2], rtol=0, atol=0)
        assert all(res.model[n].dtype == params[n].dtype and res.model[n].shape == params[n].shape
                   for n in params)


@pytest.mark.parametrize("utype", ["ASP", "SSP", "HOGWILD", "SBP", "BSP"])
@pytest.mark.parametrize("freq", ["BATCH", "NBATCHES", "EPOCH"])
def test_one_worker_pushing_its_model_equals_plain_sgd(blobs, utype, freq):
    """push='model' with k=1: the server adds the replica's change since the pull, which is the
    worker's own local SGD trajectory."""
    X, y = blobs
    net = small_net()
    params = net.init(4, dtype=np.float64)
    kw = {"nbatches": 2} if freq == "NBATCHES" else {}
    res = ps(params, X, y, utype=utype, freq=freq, push="model", k=1, batchsize=16, epochs=2, **kw)
    assert_models_close(res.model, plain_sgd(net, params, X, y, 16, LR, epochs=2), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("utype", ["BSP", "SBP"])
def test_uneven_partitions_finish_every_batch(blobs, utype):
    """241 rows over 4 workers with batch 7: partitions of 61/60/60/60 rows, 9 batches each but
    a short last one; every row is trained on once per epoch."""
    X, y = blobs
    X, y = np.vstack([X, X[:1]]), np.concatenate([y, y[:1]])
    res = ps(small_net().init(0, dtype=np.float64), X, y, utype=utype, k=4, batchsize=7)
    rec = res.history[0]
    assert rec["samples"] == 241 and rec["pushes"] == [9, 9, 9, 9]


def test_features_are_cast_to_the_model_dtype(blobs):
    """float32 features with a float64 model train as their float64 values would (and the other
    way round, in float32)."""
    X, y = blobs
    X32 = X.astype(np.float32)
    params = small_net().init(0, dtype=np.float64)
    a = ps(params, X32, y, k=2, batchsize=10)
    b = ps(params, X32.astype(np.float64), y, k=2, batchsize=10)
    assert_models_close(a.model, b.model, rtol=0, atol=0)
    p32 = small_net().init(0, dtype=np.float32)
    c = ps(p32, X, y, k=2, batchsize=10)
    d = ps(p32, X32, y, k=2, batchsize=10)
    assert all(v.dtype == np.float32 for v in c.model.values())
    assert_models_close(c.model, d.model, rtol=0, atol=0)
