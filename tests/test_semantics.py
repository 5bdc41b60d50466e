"""What each sync mode, scale and scheme means, checked against plain numpy loops written here
(issue 18): each test fails on one of the small semantic edits that the older suite let pass."""
import numpy as np
import pytest

import gpups
from gpups.partition import partition
from helpers import small_net


def problem(n, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((3, 6)) * 2
    y = rng.integers(0, 3, n)
    X = centres[y] + rng.standard_normal((n, 6))
    return X, y.astype(np.int64)


def train(X, y, **kw):
    net = small_net()
    args = dict(upd=net.gradients, device="cpu", progress=False, agg="sgd", hyperparams={"lr": 0.1})
    args.update(kw)
    return gpups.paramserv(net.init(0, dtype=np.float64), X, y, **args).model


def close(a, b, tol=1e-12):
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=tol, atol=tol, err_msg=name)


def grad(p, X, y):
    return small_net().gradients(p, X, y, {})[0]


# -- BSP: the mean of the pushes of the workers that have a batch in the round -------------------
def test_bsp_rounds_with_fewer_workers_average_over_those_that_pushed():
    """241 rows, k=4, batch 30: partitions 61/60/60/60, so round 3 has worker 0 alone (1 row)."""
    X, y = problem(241)
    lr, bs = 0.1, 30
    blocks = [np.arange(0, 61), np.arange(61, 121), np.arange(121, 181), np.arange(181, 241)]
    p = small_net().init(0, dtype=np.float64)
    for _ in range(2):
        for r in range(3):
            gs = [grad(p, X[b[r * bs:(r + 1) * bs]], y[b[r * bs:(r + 1) * bs]]) for b in blocks if r * bs < len(b)]
            p = {n: p[n] - lr * sum(g[n] for g in gs) / len(gs) for n in p}
    close(train(X, y, utype="BSP", k=4, batchsize=bs, epochs=2), p)


# -- Adam: the textbook algorithm, bias corrections from t = 1 -----------------------------------
def textbook_adam(X, y, bs, epochs, lr=0.01, b1=0.9, b2=0.999, eps=1e-8):
    p = small_net().init(0, dtype=np.float64)
    m = {n: np.zeros_like(v) for n, v in p.items()}
    v = {n: np.zeros_like(a) for n, a in p.items()}
    t = 0
    for _ in range(epochs):
        for lo in range(0, len(y), bs):
            t += 1
            g = grad(p, X[lo:lo + bs], y[lo:lo + bs])
            for n in p:
                m[n] = b1 * m[n] + (1 - b1) * g[n]
                v[n] = b2 * v[n] + (1 - b2) * g[n] ** 2
                p[n] = p[n] - lr * (m[n] / (1 - b1 ** t)) / (np.sqrt(v[n] / (1 - b2 ** t)) + eps)
    return p


@pytest.mark.parametrize("servers,utype", [(1, "BSP"), (2, "BSP"), (2, "ASP"), (2, "HOGWILD")])
def test_adam_with_one_worker_is_textbook_adam(servers, utype):
    X, y = problem(96)
    lr, bs = 0.01, 16
    p = textbook_adam(X, y, bs, 2, lr)
    got = train(X, y, agg="adam", hyperparams={"lr": lr}, k=1, batchsize=bs, epochs=2, servers=servers, utype=utype)
    close(got, p, 1e-10)


@pytest.mark.parametrize("freq,nbatches", [("BATCH", 1), ("NBATCHES", 4), ("EPOCH", 1)])
def test_a_lone_worker_pushing_its_model_runs_textbook_adam_locally(freq, nbatches):
    """push="model": the worker's own Adam takes every step (its step count goes on across
    intervals and epochs: 6 batches an epoch, intervals of 4 and 2 under NBATCHES(4)); the server
    adds the changes, so the model is Adam's."""
    X, y = problem(96)
    got = train(X, y, agg="adam", hyperparams={"lr": 0.01}, k=1, batchsize=16, epochs=2, push="model",
                freq=freq, nbatches=nbatches)
    close(got, textbook_adam(X, y, 16, 2), 1e-10)


def test_local_steps_of_a_gradient_push_count_their_own_adam_steps():
    """push="gradients", NBATCHES(4), k=1: inside an interval the worker takes Adam steps on its
    replica for all but the last batch (its own step count: 3, then 1 for the epoch's interval
    of 2, and on across epochs); the server takes one Adam step on the interval's summed
    gradient, and the replica starts each interval from the server's model."""
    X, y = problem(96)
    lr, b1, b2, eps, bs, nb = 0.01, 0.9, 0.999, 1e-8, 16, 4

    def adam(p, g, m, v, t):
        for n in p:
            m[n] = b1 * m[n] + (1 - b1) * g[n]
            v[n] = b2 * v[n] + (1 - b2) * g[n] ** 2
            p[n] = p[n] - lr * (m[n] / (1 - b1 ** t)) / (np.sqrt(v[n] / (1 - b2 ** t)) + eps)

    w = small_net().init(0, dtype=np.float64)
    zeros = lambda: {n: np.zeros_like(a) for n, a in w.items()}  # noqa: E731
    ms, vs, ml, vl = zeros(), zeros(), zeros(), zeros()
    ts = tl = 0
    for _ in range(2):
        for b0, n in ((0, 4), (4, 2)):  # 6 batches an epoch
            replica = {k: a.copy() for k, a in w.items()}
            G = zeros()
            for s in range(n):
                lo = (b0 + s) * bs
                g = grad(replica, X[lo:lo + bs], y[lo:lo + bs])
                for k in G:
                    G[k] += g[k]
                if s < n - 1:
                    adam(replica, g, ml, vl, tl + s + 1)
            tl += n - 1
            ts += 1
            adam(w, G, ms, vs, ts)
    got = train(X, y, agg="adam", hyperparams={"lr": lr}, k=1, batchsize=bs, epochs=2, freq="NBATCHES", nbatches=nb)
    close(got, w, 1e-10)


# -- non-finite pushes: every worker's is checked -------------------------------------------------
def nan_for_rows(rows, X):
    """An upd whose gradient is NaN for batches that start with one of ``rows``."""
    net = small_net()
    firsts = {tuple(X[r]) for r in rows}

    def upd(p, xb, yb, hp):
        g, loss = net.gradients(p, xb, yb, hp)
        if tuple(xb[0]) in firsts:
            g = {n: v * np.nan for n, v in g.items()}
        return g, loss
    return upd


@pytest.mark.parametrize("j", [0, 1, 2, 3])
def test_a_nan_push_of_any_worker_is_caught(j):
    X, y = problem(240)
    first = 60 * j + 20  # worker j's 3rd batch (contiguous blocks of 60, batch 10)
    with pytest.raises(gpups.WorkerError, match=rf"worker {j} failed: its gradient held NaN or Inf in epoch 1, batch 3"):
        train(X, y, upd=nan_for_rows([first], X), k=4, batchsize=10)
    skipped = gpups.paramserv(small_net().init(0, dtype=np.float64), X, y, upd=nan_for_rows([first], X), k=4,
                              batchsize=10, device="cpu", progress=False, nonfinite="skip").history[0]["skipped"]
    assert skipped == [1 if i == j else 0 for i in range(4)]


# -- async scales: each push moves the model by 1/k of its payload --------------------------------
@pytest.mark.parametrize("utype,extra", [("HOGWILD", {}), ("ASP", {}), ("SSP", {"staleness": 100})])
def test_async_push_scale_is_one_over_k(utype, extra):
    """k=2, worker 1's pushes are all non-finite and skipped: the model is plain SGD over worker
    0's rows with lr/k, whatever worker 1 does meanwhile."""
    X, y = problem(120)
    lr, bs, k = 0.2, 10, 2
    got = train(X, y, upd=nan_for_rows(range(60, 120), X), utype=utype, k=k, batchsize=bs, epochs=2,
                nonfinite="skip", hyperparams={"lr": lr}, **extra)
    p = small_net().init(0, dtype=np.float64)
    for _ in range(2):
        for lo in range(0, 60, bs):
            g = grad(p, X[lo:lo + bs], y[lo:lo + bs])
            p = {n: p[n] - lr / k * g[n] for n in p}
    close(got, p)


# -- partitions: the actual rows each worker gets ---------------------------------------------------
def test_partition_blocks_are_pinned():
    as_lists = lambda parts: [p.tolist() for p in parts]  # noqa: E731
    assert as_lists(partition(10, 3, "disjoint_contiguous", 0)) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert as_lists(partition(10, 3, "disjoint_round_robin", 0)) == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert as_lists(partition(10, 3, "disjoint_random", 0)) == [[4, 6, 2, 7], [3, 5, 9], [0, 8, 1]]
    assert as_lists(partition(5, 2, "overlap_reshuffle", 0)) == [[2, 4, 3, 0, 1], [4, 1, 2, 0, 3]]
    for scheme in ("disjoint_random", "overlap_reshuffle"):
        a, b, c = (as_lists(partition(10, 3, scheme, s)) for s in (1, 1, 2))
        assert a == b and a != c  # seeded: the same seed deals the same rows, another seed others
    for scheme in ("disjoint_contiguous", "disjoint_round_robin", "disjoint_random"):
        parts = partition(11, 4, scheme, 3)
        assert sorted(np.concatenate(parts).tolist()) == list(range(11))
        assert all(p.dtype == np.int64 for p in parts)


def test_bsp_trains_each_worker_on_its_contiguous_block():
    """k=3 over 10 rows, batch 3: round 1 is the mean of the gradients of rows 0-2, 4-6 and 7-9,
    round 2 worker 0's last row (3) alone."""
    X, y = problem(10)
    p = small_net().init(0, dtype=np.float64)
    gs = [grad(p, X[a:b], y[a:b]) for a, b in ((0, 3), (4, 7), (7, 10))]
    p = {n: p[n] - 0.1 * sum(g[n] for g in gs) / 3 for n in p}
    g = grad(p, X[3:4], y[3:4])
    want = {n: p[n] - 0.1 * g[n] for n in p}
    close(train(X, y, k=3, batchsize=3), want)


@pytest.mark.parametrize("utype,extra", [("BSP", {}), ("ASP", {}), ("SSP", {"staleness": 1}),
                                         ("SBP", {"backup_workers": 1}), ("HOGWILD", {})])
def test_unequal_batch_counts_finish_every_batch_in_every_mode(utype, extra):
    """241 rows, k=4, batch 30: 3, 2, 2 and 2 batches; each epoch trains every row once."""
    X, y = problem(241)
    res = gpups.paramserv(small_net().init(0, dtype=np.float64), X, y, upd=small_net().gradients, utype=utype,
                          k=4, batchsize=30, epochs=2, device="cpu", progress=False, **extra)
    for rec in res.history:
        assert rec["pushes"] == [3, 2, 2, 2] and rec["samples"] == 241
        if utype in ("BSP", "SBP"):  # a round's pushes are all computed on the round's model
            assert rec["staleness_max"] == [0, 0, 0, 0] and rec["staleness_mean"] == [0.0] * 4
        if utype == "SBP":
            assert sum(rec["dropped"]) <= sum(rec["pushes"]) - 3  # (at least one push per round is applied)


def test_ssp_clocks_start_at_zero_each_epoch():
    X, y = problem(120)
    res = gpups.paramserv(small_net().init(0, dtype=np.float64), X, y, upd=small_net().gradients, utype="SSP",
                          staleness=1, k=3, batchsize=10, epochs=2, device="cpu", progress=False)
    log = res.clock_log
    assert len(log) == 2 * 12
    for epoch in (log[:12], log[12:]):
        starts = [entry for entry in epoch if entry[1] == 0]
        assert sorted(j for j, _, _ in starts) == [0, 1, 2] and all(s == 0 for _, _, s in starts)
        for j in range(3):  # each worker's clocks count 0, 1, 2, 3 within the epoch
            assert [c for w, c, _ in epoch if w == j] == [0, 1, 2, 3]


def test_ssp_waits_for_a_slow_worker_still_running_its_last_interval():
    """SSP(0), 241 rows over k=4 with batch 30: worker 0 has 3 batches, the others 2 (and are
    slow). A worker running its last interval still counts for the bound: worker 0 may start its
    third batch only once every other worker's second batch has come back."""
    import threading
    import time

    X, y = problem(241)
    net = small_net()
    owner = {tuple(X[i]): (0 if i < 61 else 1 + (i - 61) // 60) for i in range(241)}
    log, lock = [], threading.Lock()

    def upd(p, xb, yb, hp):
        j = owner[tuple(xb[0])]
        with lock:
            log.append(("start", j))
        if j:
            time.sleep(0.03)
        out = net.gradients(p, xb, yb, hp)
        with lock:
            log.append(("end", j))
        return out

    gpups.paramserv(net.init(0, dtype=np.float64), X, y, upd=upd, utype="SSP", staleness=0, k=4, batchsize=30,
                    device="cpu", progress=False)
    log = log[1:]  # (the dry run)
    third_start_of_0 = [i for i, e in enumerate(log) if e == ("start", 0)][2]
    last_ends = [[i for i, e in enumerate(log) if e == ("end", j)][1] for j in (1, 2, 3)]
    assert third_start_of_0 > max(last_ends), log


def test_sbp_without_backups_equals_bsp_with_unequal_batch_counts():
    """The last rounds have fewer workers with work (3, 2, 2, 2 batches): SBP(0) still closes each
    round on the pushes that can come, as BSP does."""
    X, y = problem(241)
    bsp = train(X, y, utype="BSP", k=4, batchsize=30, epochs=2, agg="momentum", hyperparams={"lr": 0.05})
    sbp = train(X, y, utype=gpups.SBP(backup=0), k=4, batchsize=30, epochs=2, agg="momentum",
                hyperparams={"lr": 0.05})
    close(sbp, bsp, 0)
