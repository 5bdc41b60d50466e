"""Partition schemes, SSP's staleness bound, ASP's observed staleness, SBP's drops."""
import numpy as np
import pytest

import gpups
from gpups.partition import SCHEMES, partition
from helpers import small_net


@pytest.mark.parametrize("n,k", [(100, 4), (101, 3), (7, 7)])
def test_disjoint_schemes_cover_every_row_once(n, k):
    for scheme in ["disjoint_contiguous", "disjoint_round_robin", "disjoint_random"]:
        parts = partition(n, k, scheme, seed=5)
        assert len(parts) == k
        allrows = np.sort(np.concatenate(parts))
        np.testing.assert_array_equal(allrows, np.arange(n))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_overlap_reshuffle_gives_every_worker_all_rows_in_its_own_order():
    parts = partition(50, 3, "overlap_reshuffle", seed=1)
    for p in parts:
        np.testing.assert_array_equal(np.sort(p), np.arange(50))
    assert not np.array_equal(parts[0], parts[1]) and not np.array_equal(parts[1], parts[2])


@pytest.mark.parametrize("scheme", SCHEMES)
def test_same_seed_same_partitions(scheme):
    a, b = partition(60, 4, scheme, seed=9), partition(60, 4, scheme, seed=9)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    if scheme in ("disjoint_random", "overlap_reshuffle"):
        c = partition(60, 4, scheme, seed=10)
        assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def slow_worker_upd(net, slow=0, delay=0.002):
    """Worker `slow` (recognised by its first label row) takes longer per batch."""
    import time

    def upd(p, x, y, hp):
        if delay and int(y[0]) == -1:
            time.sleep(delay)
        return net.gradients(p, x, np.abs(y), hp)
    return upd


@pytest.mark.parametrize("s", [0, 1, 3])
def test_ssp_never_runs_more_than_s_clocks_ahead(blobs, s):
    X, y = blobs
    y = y.copy()
    y[:60] = -1  # worker 0's rows: sleep marker
    net = small_net()
    upd = slow_worker_upd(net)
    res = gpups.paramserv(net.init(0, dtype=np.float64), X, y, upd=upd, utype="SSP", staleness=s,
                          k=4, batchsize=5, epochs=2, hyperparams={"lr": 0.1}, progress=False,
                          device="cpu")
    log = res.clock_log
    assert len(log) == sum(sum(r["pushes"]) for r in res.history)
    gaps = [clock - slowest for _, clock, slowest in log]
    assert max(gaps) <= s
    if s > 0:
        assert max(gaps) >= 1  # the fast workers did run ahead of the slow one


def test_asp_records_the_staleness_it_observed(blobs):
    X, y = blobs
    net = small_net()
    k = 4
    res = gpups.paramserv(net.init(0, dtype=np.float64), X, y, upd=net.gradients, utype="ASP", k=k,
                          batchsize=5, hyperparams={"lr": 0.1}, progress=False, device="cpu")
    rec = res.history[0]
    assert rec["pushes"] == [12, 12, 12, 12]
    # all k workers pull version 0 first: the i-th of the first k arrivals saw i updates before it
    assert max(rec["staleness_max"]) >= k - 1
    assert all(0 <= m <= mx for m, mx in zip(rec["staleness_mean"], rec["staleness_max"]))


def test_sbp_drops_straggler_pushes(blobs):
    X, y = blobs
    y = y.copy()
    y[:60] = -1  # worker 0 is slow
    net = small_net()
    res = gpups.paramserv(net.init(0, dtype=np.float64), X, y, upd=slow_worker_upd(net, delay=0.01),
                          utype="SBP", backup_workers=1, k=4, batchsize=5, hyperparams={"lr": 0.1},
                          progress=False, device="cpu")
    rec = res.history[0]
    assert rec["dropped"][0] > 0          # the straggler's late pushes were dropped
    assert sum(rec["dropped"][1:]) <= sum(rec["dropped"])
    assert all(np.isfinite(v).all() for v in res.model.values())


@pytest.mark.parametrize("utype", ["BSP", "ASP", "SSP", "SBP", "HOGWILD"])
@pytest.mark.parametrize("freq", ["BATCH", "NBATCHES", "EPOCH"])
@pytest.mark.parametrize("push", ["gradients", "model"])
def test_every_mode_frequency_and_push_trains(blobs, utype, freq, push):
    """Every combination runs k=3 workers to the end, pushes as often as freq says, and lowers
    the validation loss (model pushes with 2 server shards, gradient pushes with 1)."""
    X, y = blobs
    net = small_net()
    params = net.init(0, dtype=np.float64)
    kw = {"staleness": 1} if utype == "SSP" else {"backup_workers": 1} if utype == "SBP" else {}
    nb = 3
    res = gpups.paramserv(params, X, y, upd=net.gradients, agg="momentum", utype=utype, freq=freq, push=push,
                          nbatches=nb if freq == "NBATCHES" else 1, k=3, batchsize=8, epochs=3,
                          servers=2 if push == "model" else 1,
                          hyperparams={"lr": 0.05}, val_features=X, val_labels=y, progress=False,
                          device="cpu", **kw)
    per = {"BATCH": 10, "NBATCHES": 4, "EPOCH": 1}[freq]  # 80 rows per worker, 10 batches
    assert res.history[0]["pushes"] == [per] * 3
    assert all(np.isfinite(v).all() for v in res.model.values())
    before = net.evaluate(params, X, y)["loss"]
    assert res.history[-1]["val_loss"] < before


def test_sbp_drops_each_late_push_of_a_straggler_that_waits_for_two_rounds(blobs):
    """SBP(k=3, b=1) with a straggler made so by state, not by a sleep: worker 2's gradient waits
    until workers 0 and 1 have each pushed twice more (so at least one round closed after its
    pull), or are done. Each such push is late and dropped (counted one by one); the others
    never are, and every batch of theirs is pushed."""
    import threading

    X, y = blobs
    net = small_net()
    done = [0, 0, 0]
    cond = threading.Condition()
    nbatch = -(-len(np.array_split(np.arange(len(X)), 3)[0]) // 5)

    def upd(params, x, yb, hp):
        j = hp.get("worker")  # (None: paramserv's check of upd before the run)
        if j == 2:
            with cond:
                base = done[:2]
                cond.wait_for(lambda: all(done[i] >= min(base[i] + 2, nbatch) for i in (0, 1)), timeout=60)
        out = net.gradients(params, x, yb, hp)
        if j is not None:
            with cond:
                done[j] += 1
                cond.notify_all()
        return out

    res = gpups.paramserv(net.init(0, dtype=np.float64), X, y, upd=upd, utype="SBP", backup_workers=1, k=3,
                          batchsize=5, epochs=1, hyperparams={"lr": 0.1}, progress=False, device="cpu")
    rec = res.history[0]
    assert rec["dropped"][:2] == [0, 0] and rec["pushes"][:2] == [nbatch, nbatch]
    assert rec["dropped"][2] >= 2  # (each late push counted: nbatch // 2 of them or so)
