"""Resume anywhere (issue 15, part 1): a checkpoint resumes with another k, servers, batch size,
sync mode, frequency or scheme; the server's state is re-cut exactly and the history records
what changed."""
import numpy as np
import pytest

import gpups
from gpups import checkpoint as ckpt
from gpups.runtime import reshard
from helpers import assert_models_close, small_net


def problem(n=240, seed=11):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((3, 6)) * 2
    y = rng.integers(0, 3, n)
    return centres[y] + rng.standard_normal((n, 6)), y


def run(X, y, **kw):
    net = small_net()
    base = dict(upd=net.gradients, device="cpu", progress=False, agg="adam", hyperparams={"lr": 0.01},
                batchsize=10)
    base.update(kw)
    return gpups.paramserv(net.init(0, dtype=np.float64), X, y, **base)


def test_resharding_is_exact_and_reversible(tmp_path):
    X, y = problem()
    run(X, y, k=4, servers=1, epochs=2, checkpoint=str(tmp_path))
    state = ckpt.load_latest(str(tmp_path))
    one = [tuple(c) for c in state["cuts"]]
    size = one[0][1]
    three = [(0, size // 3), (size // 3, 2 * size // 3), (2 * size // 3, size)]
    cut = reshard(state["server"], one, three, k=2)
    back = reshard(cut, three, one, k=4)
    for slot in ("m", "v"):
        np.testing.assert_array_equal(np.concatenate([cut[f"shard{s}.{slot}"] for s in range(3)]),
                                      state["server"][f"shard0.{slot}"])
        np.testing.assert_array_equal(back[f"shard0.{slot}"], state["server"][f"shard0.{slot}"])
    assert all(cut[f"shard{s}.step"] == state["server"]["shard0.step"] for s in range(3))
    assert cut["bad"].shape == (3, 2) and not cut["bad"].any()
    np.testing.assert_array_equal(cut["w"], state["server"]["w"])


def test_resume_with_fewer_workers_and_more_shards_keeps_the_server_state(tmp_path):
    """k=4, 1 shard -> k=2, 3 shards: the resumed server starts exactly where the checkpoint
    left it (the same run resumed on 1 shard gives the same model bitwise: BSP's update is
    element-wise), and the history says what changed."""
    X, y = problem()
    run(X, y, k=4, servers=1, epochs=2, checkpoint=str(tmp_path / "a"))
    run(X, y, k=4, servers=1, epochs=2, checkpoint=str(tmp_path / "b"))
    three = run(X, y, k=2, servers=3, epochs=3, checkpoint=str(tmp_path / "a"), resume=True)
    one = run(X, y, k=2, servers=1, epochs=3, checkpoint=str(tmp_path / "b"), resume=True)
    assert_models_close(three.model, one.model, rtol=0, atol=0)
    assert three.history[2]["resumed_with"] == {"k": [4, 2], "servers": [1, 3]}
    assert one.history[2]["resumed_with"] == {"k": [4, 2]}
    assert three.history[2]["pushes"] == [12, 12]  # 240 rows over 2 workers, batch 10
    assert [h["epoch"] for h in three.history] == [1, 2, 3]


def test_zero_epochs_after_the_resume_return_the_checkpoint_model(tmp_path):
    X, y = problem()
    done = run(X, y, k=4, servers=2, epochs=2, checkpoint=str(tmp_path))
    with pytest.warns(UserWarning, match="2 epochs done already"):
        back = run(X, y, k=1, servers=3, epochs=2, checkpoint=str(tmp_path), resume=True)
    assert_models_close(back.model, done.model, rtol=0, atol=0)


@pytest.mark.parametrize("change", [dict(k=2), dict(k=6, servers=2), dict(utype="ASP", k=3),
                                    dict(batchsize=20, freq="NBATCHES", nbatches=2), dict(scheme="disjoint_random")])
def test_a_run_resumed_with_other_options_reaches_the_unbroken_runs_accuracy(tmp_path, change):
    X, y = problem(300)
    kw = dict(k=4, agg="momentum", hyperparams={"lr": 0.05}, val_features=X[240:], val_labels=y[240:])
    unbroken = run(X[:240], y[:240], epochs=6, **kw)
    run(X[:240], y[:240], epochs=3, checkpoint=str(tmp_path), **kw)
    resumed = run(X[:240], y[:240], epochs=6, checkpoint=str(tmp_path), resume=True, **{**kw, **change})
    got, want = resumed.history[-1]["val_accuracy"], unbroken.history[-1]["val_accuracy"]
    assert got >= want - 0.03, (got, want)
    assert set(resumed.history[3]["resumed_with"]) <= set(change) | {"backup", "staleness"}


def test_a_user_aggs_state_cannot_be_recut(tmp_path):
    X, y = problem()

    def agg(p, g, state, hp):
        return {n: p[n] - 0.1 * g[n] for n in p}, {"calls": state.get("calls", 0) + 1}

    run(X, y, agg=agg, servers=2, epochs=1, checkpoint=str(tmp_path))
    with pytest.raises(ValueError, match=r"user agg state was kept by 2 shard\(s\) and cannot be re-cut"):
        run(X, y, agg=agg, servers=1, epochs=2, checkpoint=str(tmp_path), resume=True)
    res = run(X, y, agg=agg, servers=2, k=3, epochs=2, checkpoint=str(tmp_path), resume=True)  # k may change
    assert res.history[1]["resumed_with"] == {"k": [1, 3]}
