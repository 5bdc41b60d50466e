"""What the history and the checkpoints report, checked against independent counts (written for
survivors of the mutation run: docs/mutation.md)."""
import os
import time

import numpy as np
import pytest

import gpups
from gpups import checkpoint as ckpt
from gpups.models import MLP
from helpers import assert_models_close, small_net

RNG = np.random.default_rng(5)


def problem(n=120):
    centres = RNG.standard_normal((3, 6)) * 2
    y = RNG.integers(0, 3, n)
    return centres[y] + RNG.standard_normal((n, 6)), y


def run(X, y, **kw):
    net = small_net()
    base = dict(upd=net.gradients, device="cpu", progress=False, agg="sgd", hyperparams={"lr": 0.1}, batchsize=10)
    base.update(kw)
    return gpups.paramserv(net.init(0, dtype=np.float64), X, y, **base)


def test_history_loss_is_the_mean_of_the_batch_losses_and_times_are_sane():
    X, y = problem()
    net = small_net()
    p = net.init(0, dtype=np.float64)
    losses = []
    for lo in range(0, 120, 10):
        g, loss = net.gradients(p, X[lo:lo + 10], y[lo:lo + 10], {})
        losses.append(loss)
        p = {n: p[n] - 0.1 * g[n] for n in p}
    t0 = time.perf_counter()
    res = run(X, y, k=1)
    wall = time.perf_counter() - t0
    rec = res.history[0]
    assert rec["loss"] == pytest.approx(np.mean(losses), rel=1e-12)
    assert 0 < rec["seconds"] <= wall and rec["samples_per_s"] == pytest.approx(120 / rec["seconds"])
    assert 0 <= rec["server_seconds"] <= rec["seconds"]


@pytest.mark.parametrize("utype", ["ASP", "SSP", "HOGWILD"])
def test_one_worker_is_never_stale(utype):
    X, y = problem()
    res = run(X, y, k=1, utype=utype, epochs=2)
    assert all(r["staleness_max"] == [0] and r["staleness_mean"] == [0.0] for r in res.history)


def test_sbp_without_backups_drops_nothing():
    X, y = problem()
    res = run(X, y, k=3, utype="SBP", epochs=2)
    assert all(r["dropped"] == [0, 0, 0] for r in res.history)


def test_reg_reaches_upd_through_paramserv():
    """hyperparams['reg'] is given to upd: one worker equals a plain loop with L2."""
    X, y = problem()
    net = small_net()
    p = net.init(0, dtype=np.float64)
    for lo in range(0, 120, 10):
        g, _ = net.gradients(p, X[lo:lo + 10], y[lo:lo + 10], {"reg": 0.3})
        p = {n: p[n] - 0.1 * g[n] for n in p}
    res = run(X, y, k=1, hyperparams={"lr": 0.1, "reg": 0.3})
    assert_models_close(res.model, p, rtol=1e-12, atol=1e-14)


def test_an_upd_returning_only_its_gradients_dict_of_two_tensors():
    X, y = problem()
    net = MLP([6, 3])  # two tensors: a dict of length 2 is not a (grads, loss) pair

    def upd(p, x, yy, hp):
        return net.gradients(p, x, yy, hp)[0]

    ref = gpups.paramserv(net.init(0, dtype=np.float64), X, y, upd=net.gradients, device="cpu", progress=False,
                          batchsize=10)
    res = gpups.paramserv(net.init(0, dtype=np.float64), X, y, upd=upd, device="cpu", progress=False, batchsize=10)
    assert_models_close(res.model, ref.model, rtol=0, atol=0)
    assert res.history[0]["loss"] is None


def test_evaluate_gets_read_only_parameters():
    X, y = problem()

    def evaluate(p, x, yy):
        p["W1"][0, 0] = 0.0
        return {"x": 1.0}

    with pytest.raises(ValueError, match="read-only"):
        run(X, y, evaluate=evaluate, val_features=X[:10], val_labels=y[:10])


def test_a_checkpoint_of_an_earlier_version_resumes(tmp_path):
    """Checkpoints written before nbatches, staleness and the SBP backup were recorded ran with
    their defaults: they resume; one written with other values is refused."""
    X, y = problem()
    whole = run(X, y, k=2, epochs=3, utype="SBP")
    run(X, y, k=2, epochs=1, utype="SBP", checkpoint=str(tmp_path))
    path = ckpt.checkpoints(str(tmp_path))[-1]
    state = ckpt.read(path)
    fp = state["fingerprint"]
    for key in ("nbatches", "staleness", "backup"):
        fp.pop(key, None)
    fp["backup_workers"] = 0  # (the name an earlier version used)

    def only(state):
        for f in ckpt.checkpoints(str(tmp_path)):
            os.unlink(f)
        ckpt.save(str(tmp_path), 1, state)

    only(state)
    res = run(X, y, k=2, epochs=3, utype="SBP", checkpoint=str(tmp_path), resume=True)
    assert_models_close(res.model, whole.model, rtol=0, atol=0)
    assert "resumed_with" not in res.history[1]  # (nothing changed)
    fp["backup_workers"] = 1  # an earlier run with one backup worker: a change, recorded
    only(state)
    res = run(X, y, k=2, epochs=3, utype="SBP", checkpoint=str(tmp_path), resume=True)
    assert res.history[1]["resumed_with"] == {"backup": [1, 0]}
    fp["seed"] = 3  # what the state depends on must match
    only(state)
    with pytest.raises(ValueError, match="seed: checkpoint 3, now 0"):
        run(X, y, k=2, epochs=3, utype="SBP", checkpoint=str(tmp_path), resume=True)


def test_hyperparameter_bounds():
    X, y = problem()
    run(X, y, agg="momentum", hyperparams={"lr": 0.1, "momentum": 0.0})  # 0 is a momentum
    run(X, y, agg="adagrad", hyperparams={"lr": 0.1, "eps": 0.0})
    for hp, match in [({"lr": 0.0}, r"hyperparams\['lr'\]=0.0 is not allowed"),
                      ({"lr": 0.1, "momentum": 1.0}, r"hyperparams\['momentum'\]=1.0 is not allowed: expected a number "
                                                     r"in \[0, 1\)")]:
        with pytest.raises(ValueError, match=match):
            run(X, y, agg="momentum", hyperparams=hp)


def test_a_stateful_user_agg_equals_the_builtin_rule():
    """Momentum written as a user agg (its state kept between calls) equals agg='momentum'."""
    X, y = problem()

    def momentum(p, g, state, hp):
        v = {n: 0.9 * state[n] + g[n] for n in p} if state else {n: g[n].copy() for n in g}  # (g is reused)
        return {n: p[n] - 0.1 * v[n] for n in p}, v

    a = run(X, y, k=1, agg=momentum, epochs=2)
    b = run(X, y, k=1, agg="momentum", hyperparams={"lr": 0.1, "momentum": 0.9}, epochs=2)
    assert_models_close(a.model, b.model, rtol=1e-12, atol=1e-14)


def test_a_user_agg_is_not_called_for_a_push_that_was_skipped():
    """ASP, k=2: every push of worker 1 is non-finite. The agg sees worker 0's pushes only (the
    other worker's flag being clear does not make a flagged push good)."""
    X, y = problem()
    net = small_net()
    calls = []

    def upd(p, x, yy, hp):
        g, loss = net.gradients(p, x, yy, hp)
        return ({n: v * np.nan for n, v in g.items()} if any((x[0] == X[60:]).all(1)) else g), loss

    def agg(p, g, state, hp):
        calls.append(1)
        return {n: p[n] - 0.1 * g[n] for n in p}, state

    res = run(X, y, upd=upd, agg=agg, utype="ASP", k=2, nonfinite="skip")
    assert res.history[0]["skipped"] == [0, 6]
    assert len(calls) == 1 + 6  # the dry run, then worker 0's six pushes


def test_agg_returning_only_params_of_a_two_tensor_model_is_named():
    X, y = problem()
    net = MLP([6, 3])
    with pytest.raises(ValueError, match=r"agg must return \(params, state\), a tuple of two; it returned dict"):
        gpups.paramserv(net.init(0), X, y, upd=net.gradients, agg=lambda p, g, s, hp: {n: p[n] - g[n] for n in p},
                        device="cpu", progress=False, batchsize=10)
