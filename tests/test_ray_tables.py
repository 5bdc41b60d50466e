"""Sparse tables on backend="ray": rows sharded over the shard actors (row r on shard r % S),
reads and pushes of rows only; the same run as the local backend's, bitwise in float64."""
import numpy as np
import pytest
from test_ray import ray_session  # noqa: F401  (the session's Ray instance)
from test_tables import init, run

import gpups
from gpups.datasets import synthetic_ctr
from gpups.models import DLRM

pytest.importorskip("ray")
pytestmark = pytest.mark.ray


def same(a, b):
    return all(np.array_equal(a.model[n], b.model[n]) for n in a.model)


@pytest.mark.parametrize("servers,agg", [(1, "sgd"), (2, "adam"), (3, "adagrad")])
def test_bsp_with_row_sharded_tables_equals_the_local_backend_bitwise(ray_session, servers, agg):  # noqa: F811
    """Lazy adam's step count too: a shard that holds none of a round's rows counts the round."""
    kw = dict(k=2, servers=servers, agg=agg)
    assert same(run(True, backend="ray", **kw), run(True, **kw))


@pytest.mark.parametrize("freq,push,declared", [("NBATCHES", "gradients", False), ("BATCH", "model", False),
                                                ("NBATCHES", "gradients", True)])
def test_local_steps_on_cached_rows_equal_the_local_backend(ray_session, freq, push, declared):  # noqa: F811
    """``declared``: the upd function says which ids a batch reads (``upd.reads``), so an
    interval's rows are fetched before it runs; the result is the same."""
    from test_tables import make_upd

    upd = make_upd(True)
    if declared:
        upd.reads = lambda x: {"E": x["ids"]}
    kw = dict(k=2, servers=2, agg="sgd", freq=freq, push=push, nbatches=3 if freq == "NBATCHES" else 1, upd=upd)
    assert same(run(True, backend="ray", **kw), run(True, **kw))


def test_dlrm_prefetches_its_rows_and_equals_the_local_backend(ray_session):  # noqa: F811
    """DLRM declares the ids a batch reads: a Ray worker fetches an interval's rows in one call
    per shard before it runs; the result is the local backend's, bitwise."""
    d = synthetic_ctr(1200, [300, 200, 100], seed=0)
    net = DLRM(dense=13, tables=d.tables, dim=4, bottom=(8, 4), top=(8,), sparse=True)
    assert set(net.reads({name: a[:5] for name, a in d.features.items()})) == set(net.tables)
    kw = dict(upd=net.gradients, agg="adagrad", k=2, servers=2, batchsize=64, epochs=2, hyperparams={"lr": 0.05},
              device="cpu", progress=False)
    ray_res = gpups.paramserv(net.init(0, dtype=np.float64), d.features, d.labels, backend="ray", **kw)
    assert same(ray_res, gpups.paramserv(net.init(0, dtype=np.float64), d.features, d.labels, **kw))


@pytest.mark.parametrize("utype", ["ASP", "HOGWILD"])
def test_async_modes_train_row_sharded_tables(ray_session, utype):  # noqa: F811
    res = run(True, backend="ray", utype=utype, k=2, servers=2, epochs=3)
    losses = [h["loss"] for h in res.history]
    assert losses[-1] < losses[0] and not np.array_equal(res.model["E"], init()["E"])


def test_a_ray_checkpoint_holds_the_tables_and_resumes_bitwise(ray_session, tmp_path):  # noqa: F811
    """Checkpoints are the local backend's format: a Ray run resumed from its own checkpoint,
    or from a local one, ends where the unbroken run does."""
    kw = dict(k=2, servers=2, agg="adam")
    full = run(True, epochs=3, **kw)
    run(True, backend="ray", epochs=1, checkpoint=str(tmp_path / "r"), **kw)
    assert same(run(True, backend="ray", epochs=3, checkpoint=str(tmp_path / "r"), resume=True, **kw), full)
    run(True, epochs=1, checkpoint=str(tmp_path / "l"), **kw)
    assert same(run(True, backend="ray", epochs=3, checkpoint=str(tmp_path / "l"), resume=True, **kw), full)


def test_a_declared_interval_reads_its_rows_in_one_call_per_shard(ray_session):  # noqa: F811
    """RemoteTables with two shards (stand-ins answering from their split of one table): an
    interval whose reads are declared fetches all its rows at its start, once; its reads are
    then served from them; an undeclared read goes to the shards."""
    from gpups.ray_backend.tables import RemoteTables, split

    W = np.arange(40.0).reshape(20, 2)
    parts = split(W, 2)
    asked = []

    class Shard:
        def __init__(self, s):
            self.s = s
            self.rows = self

        def remote(self, want, at_least):
            asked.append((self.s, at_least))
            return ray_session.put({name: parts[self.s][ids] for name, ids in want.items()})

    rt = RemoteTables([Shard(0), Shard(1)], {"E": (20, 2, "float64")}, k=1)
    batches = [{"ids": np.array([[3, 4], [4, 9]])}, {"ids": np.array([[10, 3]])}]
    rt.begin(5, lambda x: {"E": x["ids"]}, batches)
    assert rt.fetches == 1 and sorted(asked) == [(0, 5), (1, 5)]
    np.testing.assert_array_equal(rt.gather("E", np.array([9, 3, 10])), W[[9, 3, 10]])
    assert rt.fetches == 1
    np.testing.assert_array_equal(rt.gather("E", np.array([3, 17])), W[[3, 17]])  # (17 was not read ahead)
    assert rt.fetches == 2
