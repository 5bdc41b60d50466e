"""DLRM over sparse tables, the click-through data sets, and the Criteo-format reader."""
import gzip

import numpy as np
import pytest

import gpups
from gpups.columns import Columns
from gpups.datasets import criteo, synthetic_ctr
from gpups.models import DLRM
from gpups.models.dlrm import auc
from helpers import finite_differences


def small(sparse=True, tables=(7, 5, 9)):
    return DLRM(dense=4, tables=list(tables), dim=3, bottom=(5, 3), top=(4,), sparse=sparse)


def test_gradients_equal_finite_differences():
    net = small(sparse=False)
    data = synthetic_ctr(12, [7, 5, 9], dense=4, seed=3)
    p = net.init(1, dtype=np.float64)
    x = Columns({"dense": data.features["dense"].astype(np.float64), "cat": data.features["cat"]})
    g, _ = net.gradients(p, x, data.labels)

    def loss():
        return net.gradients(p, x, data.labels)[1]
    num = finite_differences(loss, p)
    for name in p:
        np.testing.assert_allclose(g[name], num[name], rtol=1e-5, atol=1e-8, err_msg=name)
    sparse, _ = small(sparse=True).gradients(p, x, data.labels)
    for name in net.tables:  # the RowGrad is the same gradient, row by row
        assert isinstance(sparse[name], gpups.RowGrad)
        np.testing.assert_allclose(sparse[name].dense(p[name].shape), g[name], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("agg", ["sgd", "adagrad"])
def test_bsp_sparse_dlrm_equals_dense_dlrm_bitwise_in_float64(agg):
    data = synthetic_ctr(400, [30, 20, 50], dense=4, seed=1)
    X = {"dense": data.features["dense"].astype(np.float64), "cat": data.features["cat"]}
    out = []
    for sparse in (True, False):
        net = small(sparse, tables=data.tables)
        res = gpups.paramserv(net.init(0, dtype=np.float64), X, data.labels, upd=net.gradients, agg=agg, k=3,
                              batchsize=20, epochs=2, hyperparams={"lr": 0.1}, device="cpu", progress=False)
        out.append(res.model)
    for name in out[0]:
        np.testing.assert_array_equal(out[0][name], out[1][name], err_msg=name)


def test_float32_sparse_dlrm_equals_dense_within_1e6():
    data = synthetic_ctr(400, [30, 20, 50], dense=4, seed=1)
    out = []
    for sparse in (True, False):
        net = small(sparse, tables=data.tables)
        res = gpups.paramserv(net.init(0), data.features, data.labels, upd=net.gradients, agg="adagrad", k=2,
                              batchsize=20, epochs=2, hyperparams={"lr": 0.05}, device="cpu", progress=False)
        out.append(res.model)
    for name in out[0]:
        np.testing.assert_allclose(out[0][name], out[1][name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_dlrm_trains_close_to_the_synthetic_ceiling():
    data = synthetic_ctr(30_000, [300] * 4, dense=13, seed=0)
    tr, va = data.split(0.2)
    net = DLRM(dense=13, tables=data.tables, dim=8, bottom=(32, 8), top=(32,))
    res = gpups.paramserv(net.init(0), tr.features, tr.labels, upd=net.gradients, agg="adagrad", k=2,
                          batchsize=128, epochs=2, hyperparams={"lr": 0.05}, val_features=va.features,
                          val_labels=va.labels, device="cpu", progress=False)
    last = res.history[-1]
    assert last["val_auc"] > data.ceiling["auc"] - 0.05, (last["val_auc"], data.ceiling)
    assert last["val_logloss"] < data.ceiling["logloss"] + 0.05


def test_synthetic_ctr_ids_are_zipf_like_and_seeded():
    a, b = synthetic_ctr(5000, [1000, 50], seed=4), synthetic_ctr(5000, [1000, 50], seed=4)
    np.testing.assert_array_equal(a.features["cat"], b.features["cat"])
    counts = np.sort(np.bincount(a.features["cat"][:, 0], minlength=1000))[::-1]
    assert counts[:10].sum() > 0.2 * 5000  # the head is hot...
    assert (counts == 0).sum() > 100       # ...and the tail is long
    assert 0.6 < a.ceiling["auc"] < 1 and 0.15 < a.labels.mean() < 0.45


def test_auc_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    s = np.round(rng.standard_normal(60), 1)  # (ties)
    pos, neg = s[y == 1], s[y == 0]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert auc(y, s) == pytest.approx(pairs)


def write_criteo(path, rows, opener=open):
    with opener(path, "wt") as fh:
        for label, ints, cats in rows:
            fh.write("\t".join([str(label)] + ints + cats) + "\n")


def test_the_criteo_reader_parses_missing_values_hashes_and_streams(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(250):
        ints = [str(int(v)) if (i + j) % 5 else "" for j, v in enumerate(rng.integers(-2, 1000, 13))]
        cats = [f"{int(v):08x}" if (i * j) % 7 else "" for j, v in enumerate(rng.integers(0, 2**32, 26))]
        rows.append((i % 2, ints, cats))
    write_criteo(tmp_path / "day.txt", rows)
    write_criteo(tmp_path / "day.txt.gz", rows, gzip.open)
    data = criteo(str(tmp_path / "day.txt"), rows_per_table=97, chunk=64)
    gz = criteo(str(tmp_path / "day.txt.gz"), rows_per_table=97)
    np.testing.assert_array_equal(data.features["cat"], gz.features["cat"])
    assert data.features["dense"].shape == (250, 13) and data.features["cat"].shape == (250, 26)
    assert data.features["cat"].max() < 97 and data.labels.tolist() == [i % 2 for i in range(250)]
    first = rows[0][1]
    want = [np.log1p(max(int(v), 0)) if v else 0.0 for v in first]
    np.testing.assert_allclose(data.features["dense"][0], want, rtol=1e-6)
    same = [i for i in range(250) if rows[i][2][3] == ""]  # missing categories share one id
    assert len(set(data.features["cat"][same, 3].tolist())) == 1
    assert len(criteo(str(tmp_path / "day.txt"), limit=40)) == 40
    net = DLRM(dense=13, tables=data.tables, dim=4, bottom=(8, 4), top=(8,))
    res = gpups.paramserv(net.init(0), data.features, data.labels, upd=net.gradients, agg="adagrad", k=2,
                          batchsize=25, device="cpu", progress=False)
    assert np.isfinite(res.history[0]["loss"])


def test_a_malformed_criteo_line_is_named(tmp_path):
    (tmp_path / "bad.txt").write_text("1\t2\t3\n")
    with pytest.raises(ValueError, match=r"bad.txt, line 1: 3 tab-separated fields; the Criteo format has 40"):
        criteo(str(tmp_path / "bad.txt"))
    write_criteo(tmp_path / "lab.txt", [(2, ["1"] * 13, ["a"] * 26)])
    with pytest.raises(ValueError, match="label 2; expected 0 or 1"):
        criteo(str(tmp_path / "lab.txt"))


def test_dlrm_checks_its_features_and_labels_before_work():
    data = synthetic_ctr(100, [7, 5, 9], dense=4, seed=0)
    net = small(tables=data.tables)

    def run(X, y=data.labels):
        return gpups.paramserv(net.init(0), X, y, upd=net.gradients, device="cpu", progress=False, batchsize=10)
    with pytest.raises(ValueError, match=r"features\['cat'\] column 1 holds the id 5 .*table 1 has rows \[0, 5\)"):
        cat = data.features["cat"].copy()
        cat[3, 1] = 5
        run({"dense": data.features["dense"], "cat": cat})
    with pytest.raises(ValueError, match="expects named columns"):
        run(data.features["dense"])
    with pytest.raises(ValueError, match="0/1 clicks"):
        run(data.features, data.labels + 1)
    with pytest.raises(ValueError, match="last width must be dim"):
        DLRM(dense=4, tables=[5], dim=3, bottom=(5, 4))
