"""Sparse embedding tables (issue 14, first slice): a parameter whose gradient is a RowGrad is a
table; trained with row pushes it equals the same model trained with dense table gradients."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpups
from gpups.kernels import cpu_tables as K

ROWS, DIM, SLOTS, C = 40, 3, 2, 3


def problem(n=300, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    ids = np.minimum(rng.zipf(1.3, (n, SLOTS)) - 1, ROWS - 1).astype(np.int64)
    dense = rng.standard_normal((n, 4)).astype(dtype)
    hidden = rng.standard_normal((ROWS, C))
    y = np.argmax(dense[:, :C] + hidden[ids[:, 0]] + hidden[ids[:, 1]] + 0.3 * rng.standard_normal((n, C)), 1)
    return {"dense": dense, "ids": ids}, y


def init(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return {"E": (0.1 * rng.standard_normal((ROWS, DIM))).astype(dtype),
            "W": (0.1 * rng.standard_normal((4 + SLOTS * DIM, C))).astype(dtype), "b": np.zeros(C, dtype)}


def make_upd(sparse=True):
    """Softmax regression over [dense, E[id0], E[id1]]; the table's gradient as a RowGrad (or dense)."""
    def upd(params, x, y, hp):
        ids = x["ids"]
        emb = params["E"][ids]                                   # (b, SLOTS, DIM)
        h = np.concatenate([x["dense"], emb.reshape(len(ids), -1)], 1)
        z = h @ params["W"] + params["b"]
        z = z - z.max(1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(1, keepdims=True)
        loss = -np.log(p[np.arange(len(y)), y]).mean()
        p[np.arange(len(y)), y] -= 1
        dz = p / len(y)
        dh = dz @ params["W"].T
        demb = dh[:, 4:].reshape(len(ids), SLOTS, DIM).reshape(-1, DIM)
        g_e = gpups.RowGrad(ids.reshape(-1), demb)
        return {"E": g_e if sparse else g_e.dense(params["E"].shape), "W": h.T @ dz, "b": dz.sum(0)}, loss
    return upd


def run(sparse, data=None, model=None, **kw):
    """paramserv on the problem; ``sparse=False``: the same model with E's gradient dense (E is
    then an ordinary dense parameter: the reference)."""
    X, y = data or problem()
    base = dict(upd=make_upd(sparse), device="cpu", progress=False, k=3, batchsize=16, epochs=2,
                hyperparams={"lr": 0.5})
    base.update(kw)
    return gpups.paramserv(model or init(), X, y, **base)


@pytest.mark.parametrize("agg", ["sgd", "adagrad"])
@pytest.mark.parametrize("utype", ["BSP", "SBP"])
def test_bsp_with_a_sparse_table_equals_dense_gradients_bitwise(agg, utype):
    a = run(True, agg=agg, utype=utype)
    b = run(False, agg=agg, utype=utype)
    for name in a.model:
        np.testing.assert_array_equal(a.model[name], b.model[name], err_msg=name)
    assert a.history[-1]["loss"] == b.history[-1]["loss"]


@pytest.mark.parametrize("freq", [dict(freq="NBATCHES", nbatches=3), dict(freq="EPOCH"), dict(push="model")])
def test_local_steps_on_cached_rows_equal_dense_local_steps(freq):
    a = run(True, **freq)
    b = run(False, **freq)
    for name in a.model:
        np.testing.assert_allclose(a.model[name], b.model[name], rtol=1e-12, atol=1e-14, err_msg=name)


def test_float32_sparse_equals_dense_within_tolerance():
    data = problem(dtype=np.float32)
    a = run(True, data=data, model=init(dtype=np.float32), agg="adagrad")
    b = run(False, data=data, model=init(dtype=np.float32), agg="adagrad")
    for name in a.model:
        assert a.model[name].dtype == np.float32
        np.testing.assert_allclose(a.model[name], b.model[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_k1_equals_plain_sgd_over_the_rows():
    X, y = problem(n=120)
    res = run(True, data=(X, y), k=1, epochs=1)
    p = init()
    upd = make_upd(False)
    for lo in range(0, 120, 16):
        g, _ = upd(p, {n: a[lo:lo + 16] for n, a in X.items()}, y[lo:lo + 16], {})
        for name in p:
            p[name] = p[name] - 0.5 * g[name]
    for name in p:
        np.testing.assert_allclose(res.model[name], p[name], rtol=1e-12, atol=1e-14, err_msg=name)


@pytest.mark.parametrize("mode", [dict(utype="ASP"), dict(utype="SSP", staleness=1), dict(utype="HOGWILD")])
def test_async_modes_train_the_table(mode):
    X, y = problem()
    res = run(True, epochs=4, **mode)
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert not np.array_equal(res.model["E"], init()["E"])
    assert sum(sum(r["pushes"]) for r in res.history) == 4 * sum(-(-n // 16) for n in (100, 100, 100))


def test_untouched_rows_never_move_and_lazy_adam_keeps_their_moments():
    X, y = problem()
    touched = np.unique(X["ids"])
    assert len(touched) < ROWS  # (Zipf ids: some rows are never read)
    res = run(True, agg="adam", hyperparams={"lr": 0.01})
    never = np.setdiff1d(np.arange(ROWS), touched)
    np.testing.assert_array_equal(res.model["E"][never], init()["E"][never])
    assert not np.array_equal(res.model["E"][touched], init()["E"][touched])


def test_rowwise_adagrad_keeps_one_accumulator_per_row(tmp_path):
    res = run(True, table_agg="rowwise_adagrad", checkpoint=str(tmp_path))
    from gpups import checkpoint as ckpt

    state = ckpt.load_latest(str(tmp_path))
    assert state["server"]["tables"]["E"]["h"].shape == (ROWS, 1)
    assert res.history[-1]["loss"] < res.history[0]["loss"]


def test_a_bsp_resume_with_tables_is_bitwise_the_unbroken_run(tmp_path):
    whole = run(True, agg="adagrad", epochs=3)
    run(True, agg="adagrad", epochs=1, checkpoint=str(tmp_path))
    resumed = run(True, agg="adagrad", epochs=3, checkpoint=str(tmp_path), resume=True)
    for name in whole.model:
        np.testing.assert_array_equal(whole.model[name], resumed.model[name], err_msg=name)


def test_a_table_push_with_nan_is_skipped_and_counted():
    X, y = problem()
    upd = make_upd(True)

    def poisoned(params, x, yb, hp):
        grads, loss = upd(params, x, yb, hp)
        if hp.get("worker") == 1 and hp["step"] == 2:
            grads["E"] = gpups.RowGrad(grads["E"].rows, grads["E"].values * np.nan)
        return grads, loss
    res = run(True, upd=poisoned, nonfinite="skip", epochs=1)
    assert res.history[0]["skipped"] == [0, 1, 0]
    assert np.isfinite(res.model["E"]).all()
    with pytest.raises(gpups.WorkerError, match="worker 1.*batch 3"):
        run(True, upd=poisoned, epochs=1)


def test_bad_table_gradients_and_options_are_named_before_work():
    X, y = problem()
    upd = make_upd(True)

    def wrong_width(params, x, yb, hp):
        grads, loss = upd(params, x, yb, hp)
        grads["E"] = gpups.RowGrad(grads["E"].rows, grads["E"].values[:, :2])
        return grads, loss

    def out_of_range(params, x, yb, hp):
        grads, loss = upd(params, x, yb, hp)
        grads["E"] = gpups.RowGrad(grads["E"].rows + ROWS, grads["E"].values)
        return grads, loss
    with pytest.raises(ValueError, match=r"RowGrad values for 'E' of shape \(32, 2\); expected \(32, 3\)"):
        run(True, upd=wrong_width)
    with pytest.raises(ValueError, match=r"row id \d+; the table has rows \[0, 40\)"):
        run(True, upd=out_of_range)
    with pytest.raises(ValueError, match="table_agg"):
        run(True, agg="momentum")
    with pytest.raises(ValueError, match="agg"):
        run(True, agg="adagrad", freq="EPOCH")
    with pytest.raises(ValueError, match="table_agg"):
        run(True, table_agg="ftrl")
    with pytest.raises(ValueError, match=r"features\['ids'\] holds the id -1"):
        run(True, data=({"dense": X["dense"], "ids": X["ids"] - 1}, y))
    with pytest.raises(ValueError, match="different row counts"):
        run(True, data=({"dense": X["dense"], "ids": X["ids"][:-1]}, y))


def test_params_of_a_table_are_read_only_rows():
    X, y = problem()
    seen = {}

    def spy(params, x, yb, hp):
        seen["E"] = params["E"]
        return make_upd(True)(params, x, yb, hp)
    run(True, upd=spy, epochs=1)
    view = seen["E"]
    assert view.shape == (ROWS, DIM) and view[np.array([[1, 2]])].shape == (1, 2, DIM)
    with pytest.raises(IndexError, match="row id 40"):
        view[np.array([40])]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.integers(0, 9), min_size=1, max_size=40), st.integers(1, 4))
def test_dedup_sums_repeats_in_the_order_they_came(rows, dim):
    rows = np.array(rows, np.int64)
    values = np.random.default_rng(len(rows)).standard_normal((len(rows), dim))
    u, v = K.dedup(rows, values)
    assert list(u) == sorted(set(rows.tolist()))
    ref = np.zeros((10, dim))
    np.add.at(ref, rows, values)  # (adds in index order, as dedup does)
    np.testing.assert_array_equal(v, ref[u])


def test_a_resume_on_other_workers_and_shards_keeps_the_tables(tmp_path):
    """A resume that re-cuts the dense state (k 3 -> 2, servers 1 -> 2) carries the tables and
    their row state as they were: zero epochs after it return the checkpoint's table."""
    run(True, agg="adagrad", epochs=1, checkpoint=str(tmp_path))
    saved = gpups.checkpoint.load_latest(str(tmp_path))["server"]["tables"]
    res = run(True, agg="adagrad", epochs=1, k=2, servers=2, checkpoint=str(tmp_path), resume=True)
    np.testing.assert_array_equal(res.model["E"], saved["E"]["w"])


def test_evaluate_gets_read_only_parameters_and_tables_every_epoch():
    X, y = problem()
    calls = []

    def evaluate(params, x, yb):
        calls.append({name: bool(a.flags.writeable) for name, a in params.items()})
        return {"rows": float(len(yb))}
    res = run(True, evaluate=evaluate, val_features=X, val_labels=y, epochs=2)
    assert len(calls) == 3  # the check before work, then once per epoch
    assert all(set(c) == {"E", "W", "b"} and not any(c.values()) for c in calls)
    assert [r["val_rows"] for r in res.history] == [len(y), len(y)]


def test_validation_data_without_an_evaluate_is_carried_and_not_scored():
    X, y = problem()
    res = run(True, val_features=X, val_labels=y, epochs=1)  # a user upd: no evaluate to find
    assert not [key for key in res.history[0] if key.startswith("val_")]


def test_donated_tables_are_the_servers_copy_and_train_as_copied_ones():
    """donate=True: the caller's table is trained in place and is the result's (one table-sized
    copy less), bitwise what the copying run gives; without it the caller's table is untouched."""
    copied_init, donated_init = init(), init()
    E0 = copied_init["E"].copy()
    copied = run(True, model=copied_init, agg="adagrad")
    donated = run(True, model=donated_init, agg="adagrad", donate=True)
    np.testing.assert_array_equal(copied_init["E"], E0)
    assert donated.model["E"] is donated_init["E"] and copied.model["E"] is not copied_init["E"]
    for name in copied.model:
        np.testing.assert_array_equal(donated.model[name], copied.model[name], err_msg=name)
    assert not np.array_equal(donated_init["E"], E0)
    frozen = init()
    frozen["E"].flags.writeable = False  # (a table it may not write is copied)
    res = run(True, model=frozen, donate=True)
    assert res.model["E"] is not frozen["E"] and np.array_equal(frozen["E"], E0)
    with pytest.raises(ValueError, match="donate"):
        run(True, donate="yes")


@given(st.integers(1, 60), st.integers(1, 5), st.integers(0, 40))
@settings(max_examples=40, deadline=None)
def test_row_placement_over_shards_round_trips(rows, servers, m):
    """Row r on shard r % S at local row r // S (the Ray backend's placement): split and join
    invert each other, route sends each id to its shard's local row, and a table state cut per
    shard joins back to the same state."""
    from gpups.ray_backend import tables as RT

    W = np.arange(rows * 2, dtype=np.float64).reshape(rows, 2)
    parts = RT.split(W, servers)
    assert [len(p) for p in parts] == [len(range(s, rows, servers)) for s in range(servers)]
    np.testing.assert_array_equal(RT.join(parts, rows), W)
    ids = np.random.default_rng(m).integers(0, rows, m)
    got = np.empty((m, 2))
    for s, (pos, local) in enumerate(RT.route(ids, servers)):
        assert (ids[pos] % servers == s).all()
        got[pos] = parts[s][local]
    np.testing.assert_array_equal(got, W[ids])
    state = {"E": {"w": W, "h": W[:, :1] + 1, "step": 7}}
    cut = RT.split_state(state, servers)
    back = RT.join_state(cut, {"E": rows})
    assert back["E"]["step"] == 7 and all(c["E"]["step"] == 7 for c in cut)
    for key in ("w", "h"):
        np.testing.assert_array_equal(back["E"][key], state["E"][key])


def test_a_push_cut_per_shard_names_every_touched_table_on_every_shard():
    """A worker's push to S shards: each shard gets its own rows (local numbers) of each table the
    push touched, an empty cut where it holds none, so every shard counts the table's update."""
    from gpups.ray_backend.tables import RemoteTables

    rt = RemoteTables([object(), object()], {"E": (10, 2, "float64"), "F": (4, 2, "float64")}, k=1)
    rt.payloads[0] = {"E": (np.array([2, 4, 6]), np.ones((3, 2)))}
    cut = rt.parts(0)
    np.testing.assert_array_equal(cut[0]["E"][0], [1, 2, 3])
    assert cut[1]["E"][0].shape == (0,) and cut[1]["E"][1].shape == (0, 2) and "F" not in cut[0]
    assert rt.tables["E"].w.shape == (10, 2) and rt.tables["E"].w.strides[0] == 0  # (no rows behind it)


def test_lazy_adam_counts_a_round_on_a_shard_without_its_rows():
    """A TableServer that is pushed a table with no rows of it (a shard holding none of them)
    counts the update, as the unsharded server does; one never pushed the table does not."""
    from gpups.tables import TableServer

    bad = np.zeros((3, 1), np.int64)
    ts = TableServer({"E": np.zeros((4, 2))}, "adam", {"lr": 0.1}, 1, 1, "gradients", bad)
    ts.payloads[0] = {"E": (np.empty(0, np.int64), np.empty((0, 2)))}
    ts.apply([0], 1.0)
    assert ts.tables["E"].step == 1 and not ts.tables["E"].w.any()
    ts.payloads[0] = {}
    ts.apply([0], 1.0)
    assert ts.tables["E"].step == 1
