"""A worker that fails does not end the run (issue 15, part 2): with on_worker_error="drop" a
failing interval's push is discarded, the worker is retried up to max_worker_failures times and
then dropped; its rows go to the others from the next epoch."""
import math

import numpy as np
import pytest

import gpups
from gpups.partition import partition
from helpers import small_net

N, K, B = 250, 3, 10


def problem(n=N, seed=5):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((3, 6)) * 3
    y = rng.integers(0, 3, n)
    return centres[y] + rng.standard_normal((n, 6)), y


def failing(net, who, from_epoch, batches, until_epoch=None):
    """net.gradients, except that worker ``who`` raises from epoch ``from_epoch`` (1-based) on
    (until ``until_epoch``, inclusive, if given)."""
    calls = []

    def upd(params, x, y, hp):
        if "worker" not in hp:  # (the dry run before the work starts)
            return net.gradients(params, x, y, hp)
        epoch = hp["step"] // batches[hp["worker"]] + 1  # (the worker's own batch count)
        if hp["worker"] == who and epoch >= from_epoch and (until_epoch is None or epoch <= until_epoch):
            calls.append(epoch)
            raise RuntimeError(f"disk gone on worker {who}")
        return net.gradients(params, x, y, hp)
    upd.calls = calls
    return upd


def run(upd, net, X, y, **kw):
    base = dict(upd=upd, device="cpu", progress=False, k=K, batchsize=B, freq="BATCH", epochs=3,
                hyperparams={"lr": 0.1})
    base.update(kw)
    return gpups.paramserv(net.init(0, dtype=np.float64), X, y, **base)


def sizes(k=K):
    return [len(p) for p in partition(N, k, "disjoint_contiguous", 0)]


UTYPES = [dict(utype="BSP"), dict(utype="ASP"), dict(utype="SSP", staleness=1), dict(utype="SBP"),
          dict(utype="SBP", backup_workers=1), dict(utype="HOGWILD")]


@pytest.mark.parametrize("mode", UTYPES, ids=lambda m: "-".join(str(v) for v in m.values()))
def test_a_worker_failing_in_epoch_2_is_dropped_and_the_run_finishes(mode, capfd):
    X, y = problem()
    net = small_net()
    n = sizes()
    batches = [math.ceil(s / B) for s in n]
    upd = failing(net, 1, 2, batches)
    res = run(upd, net, X, y, on_worker_error="drop", max_worker_failures=2, **mode)
    h = res.history
    assert res.dropped == [1]
    assert upd.calls == [2, 2, 2]  # tried three times (2 failures allowed), then never called again
    assert [r["failures"] for r in h] == [[0, 0, 0], [0, 3, 0], [0, 0, 0]]
    assert [r["alive"] for r in h] == [3, 2, 2]
    # pushes: everyone in epoch 1; worker 1 none in epoch 2; its 83 rows dealt to 0 and 2 in epoch 3
    gone = np.array_split(np.arange(n[1]), 2)
    assert h[0]["pushes"] == batches
    assert h[1]["pushes"] == [batches[0], 0, batches[2]]
    assert h[2]["pushes"] == [math.ceil((n[0] + len(gone[0])) / B), 0, math.ceil((n[2] + len(gone[1])) / B)]
    assert h[1]["samples"] == n[0] + n[2] and h[2]["samples"] == N
    assert "skipped" not in h[1]  # a discarded push is not a non-finite one
    err = capfd.readouterr().err
    told = [ln for ln in err.splitlines() if ln.startswith("gpups: worker 1 failed in epoch 2")]
    assert [ln.split("batch ")[1].split()[0] for ln in told] == ["1", "2", "3"], told  # its 3 intervals
    assert "worker 1 failed in epoch 2, batch 1 (RuntimeError: disk gone on worker 1)" in err
    assert "the run goes on without it" in err
    if mode["utype"] in ("BSP", "SBP", "SSP", "ASP"):  # (HOGWILD's race makes the model vary)
        acc = (net.predict(res.model, X) == y).mean()
        assert acc > 0.9, acc


def test_a_failure_within_the_allowance_is_retried_and_the_worker_stays(capfd):
    X, y = problem()
    net = small_net()
    batches = [math.ceil(s / B) for s in sizes()]
    upd = failing(net, 2, 2, batches, until_epoch=2)  # every push interval in epoch 2 fails...
    res = run(upd, net, X, y, freq="EPOCH", on_worker_error="drop", max_worker_failures=1)
    assert res.dropped == []  # ...which with freq=EPOCH is one failure
    assert [r["failures"] for r in res.history] == [[0, 0, 0], [0, 0, 1], [0, 0, 0]]
    assert [r["pushes"] for r in res.history] == [[1, 1, 1], [1, 1, 0], [1, 1, 1]]
    assert "(0 more failure(s) allowed)" in capfd.readouterr().err


def test_a_discarded_bsp_push_leaves_the_model_of_the_others_mean():
    """With freq=EPOCH and plain SGD a BSP round is one mean update: a discarded push must
    leave the mean of the other workers' pushes, exactly."""
    X, y = problem()
    net = small_net()
    batches = [math.ceil(s / B) for s in sizes()]
    upd = failing(net, 0, 1, batches)
    res = run(upd, net, X, y, freq="EPOCH", epochs=1, on_worker_error="drop", max_worker_failures=5)
    p0 = net.init(0, dtype=np.float64)
    parts = partition(N, K, "disjoint_contiguous", 0)
    # freq=EPOCH: a worker's push is the sum of its gradients along local SGD steps
    expect = {}
    for name in p0:
        pushes = []
        for p in parts[1:]:
            w = {m: v.copy() for m, v in p0.items()}
            for lo in range(0, len(p), B):
                g, _ = net.gradients(w, X[p][lo:lo + B], y[p][lo:lo + B], {})
                for m in w:
                    w[m] -= 0.1 * g[m]
            pushes.append((p0[name] - w[name]) / 0.1)
        expect[name] = p0[name] - 0.1 * np.mean(pushes, axis=0)
    for name in expect:
        np.testing.assert_allclose(res.model[name], expect[name], rtol=1e-10, atol=1e-12)


def test_every_worker_failing_stops_the_run_with_a_named_error():
    X, y = problem()
    net = small_net()
    batches = [math.ceil(s / B) for s in sizes(2)]

    def upd(params, x, y, hp):
        if "worker" in hp and hp["step"] >= batches[hp["worker"]]:
            raise RuntimeError("out of luck")
        return net.gradients(params, x, y, hp)
    with pytest.raises(gpups.WorkerError, match="every worker.*max_worker_failures"):
        run(upd, net, X, y, k=2, on_worker_error="drop", max_worker_failures=0)


@pytest.mark.parametrize("mode", UTYPES[:4], ids=lambda m: "-".join(str(v) for v in m.values()))
def test_stop_is_the_default_and_names_the_worker(mode):
    X, y = problem()
    net = small_net()
    batches = [math.ceil(s / B) for s in sizes()]
    with pytest.raises(gpups.WorkerError, match=r"worker 1.*disk gone on worker 1.*epoch 2, batch 1"):
        run(failing(net, 1, 2, batches), net, X, y, **mode)


def test_bad_drop_options_are_named():
    X, y = problem()
    net = small_net()
    with pytest.raises(ValueError, match="on_worker_error"):
        run(net.gradients, net, X, y, on_worker_error="skip")
    with pytest.raises(ValueError, match="max_worker_failures"):
        run(net.gradients, net, X, y, on_worker_error="drop", max_worker_failures=-1)


@pytest.mark.parametrize("agg", ["momentum", "adam"])
def test_a_failed_interval_puts_the_local_optimizer_state_back(agg):
    """freq=EPOCH: worker 2's one interval of epoch 2 fails at its first batch (no local step
    taken yet) or at its last (local steps taken): with the local state and step count put back,
    both runs are the same, bitwise."""
    X, y = problem()
    net = small_net()
    batches = [math.ceil(s / B) for s in sizes()]

    def failing_at(batch):
        def upd(params, x, yb, hp):
            if hp.get("worker") == 2 and hp["step"] == batches[2] + batch:
                raise RuntimeError("flaky")
            return net.gradients(params, x, yb, hp)
        return upd
    first, last = (run(failing_at(b), net, X, y, freq="EPOCH", agg=agg, hyperparams={"lr": 0.05},
                       on_worker_error="drop") for b in (0, batches[2] - 1))
    assert [r["failures"] for r in first.history] == [[0, 0, 0], [0, 0, 1], [0, 0, 0]]
    for name in first.model:
        np.testing.assert_array_equal(first.model[name], last.model[name], err_msg=name)


def test_a_failed_intervals_earlier_batches_keep_their_losses_in_the_epochs_mean():
    """freq=NBATCHES 4: worker 1 fails at the third batch of its second interval of epoch 2; the
    epoch's loss is the mean of every loss upd returned in it (those two batches included)."""
    X, y = problem()
    net = small_net()
    batches = [math.ceil(s / B) for s in sizes()]
    losses, calls = [], [0]

    def upd(params, x, yb, hp):
        if hp.get("worker") == 1:
            calls[0] += 1
            if calls[0] == batches[1] + 4 + 3:  # (the third batch of its second interval)
                raise RuntimeError("flaky")
        g, loss = net.gradients(params, x, yb, hp)
        if "worker" in hp:
            losses.append(float(loss))
        return g, loss
    res = run(upd, net, X, y, freq="NBATCHES", nbatches=4, utype="BSP", on_worker_error="drop", epochs=2)
    assert [r["failures"] for r in res.history] == [[0, 0, 0], [0, 1, 0]]
    first = sum(batches)  # epoch 1: every batch once
    assert res.history[0]["loss"] == pytest.approx(np.mean(losses[:first]), rel=1e-12)
    assert len(losses) == 2 * first - 2  # (epoch 2: the failing batch and the interval's last one returned none)
    assert res.history[1]["loss"] == pytest.approx(np.mean(losses[first:]), rel=1e-12)


def test_with_no_failures_allowed_one_failure_drops_the_worker():
    X, y = problem()
    net = small_net()
    batches = [math.ceil(s / B) for s in sizes()]
    upd = failing(net, 2, 2, batches, until_epoch=2)
    res = run(upd, net, X, y, freq="EPOCH", on_worker_error="drop", max_worker_failures=0)
    assert res.dropped == [2] and [r["alive"] for r in res.history] == [3, 2, 2]


def test_a_dropped_workers_named_columns_go_to_the_others():
    """Features as named columns: a dropped worker's rows of every column are dealt to the
    others (epoch 3 trains every row again)."""
    X, y = problem()
    net = small_net()
    batches = [math.ceil(s / B) for s in sizes()]
    inner = failing(net, 1, 2, batches)

    def upd(params, x, yb, hp):
        return inner(params, np.concatenate([x["a"], x["b"]], 1), yb, hp)
    res = run(upd, net, {"a": X[:, :2], "b": X[:, 2:]}, y, on_worker_error="drop", max_worker_failures=0)
    assert res.dropped == [1] and res.history[2]["samples"] == N
