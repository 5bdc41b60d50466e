"""Property-based fuzzing of ``paramserv``'s options and arrays (hypothesis).

Every draw either trains or raises ``ValueError`` / ``WorkerError`` whose message names an
option, an array or the failing worker; never another exception type, a crash, a hang (the
per-test alarm in conftest) or a leaked thread. The CI profile is derandomized with a fixed
number of examples (conftest.py); ``HYPOTHESIS_PROFILE=dev`` draws many more, at random. A
crash found here becomes an explicit test in test_hardening.py."""
import re
import threading

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import gpups  # noqa: E402
from gpups.models import MLP, SoftmaxRegression  # noqa: E402

NAMES = ("model", "features", "labels", "upd", "agg", "utype", "freq", "epochs", "batchsize", "k=", "servers",
         "scheme", "hyperparams", "nbatches", "push", "staleness", "backup_workers", "device", "backend",
         "checkpoint", "resume", "seed", "progress", "nonfinite", "evaluate", "worker ", "server shard")
UTYPES = ["BSP", "ASP", "SSP", "SBP", "HOGWILD", "bsp", "Hogwild"]
FREQS = ["BATCH", "NBATCHES", "EPOCH", "epoch"]
AGGS = ["sgd", "momentum", "nesterov", "adagrad", "adam", "ADAM"]
SCHEMES = ["disjoint_contiguous", "disjoint_round_robin", "disjoint_random", "overlap_reshuffle"]
LR = st.one_of(st.floats(1e-4, 0.5), st.builds(np.float32, st.floats(1e-3, 0.5)))
BAD_LR = st.sampled_from([0.0, -0.1, float("nan"), float("inf"), "0.1", None])


def mostly(draw, good, bad):
    """A valid value 24 times in 25, else a bad one (so that a good share of draws trains)."""
    return draw(bad if draw(st.integers(0, 24)) == 17 else good)  # (hypothesis favours 0 and the ends)


@st.composite
def problem(draw):
    n = draw(st.one_of(st.integers(12, 48), st.integers(1, 11)))
    d = draw(st.integers(1, 5))
    classes = draw(st.integers(2, 4))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    X = rng.standard_normal((n, d)).astype(dtype)
    y = rng.integers(0, classes, n)
    damage = draw(st.just("none") if draw(st.integers(0, 3)) != 2 else st.sampled_from(
        ["nan", "inf", "label+1", "label-1", "float label", "int x", "wide x", "one-hot", "short y", "1-d x"]))
    if damage == "nan":
        X[draw(st.integers(0, n - 1)), 0] = np.nan
    elif damage == "inf":
        X[-1, -1] = np.inf
    elif damage == "label+1":
        y = y + 1
    elif damage == "label-1":
        y = y - 1
    elif damage == "float label":
        y = y + 0.5
    elif damage == "int x":
        X = X.astype(np.int64)
    elif damage == "wide x":
        X = np.concatenate([X, X[:, :1]], axis=1)
    elif damage == "one-hot":
        y = np.eye(classes)[y]
    elif damage == "short y":
        y = y[:-1]
    elif damage == "1-d x":
        X = X[:, 0]
    net = draw(st.sampled_from([MLP([d, 3, classes]), SoftmaxRegression(d, classes)]))
    return net, X, y, dtype


@st.composite
def options(draw):
    def pick(good, bad):
        return mostly(draw, good, bad)

    kw = dict(
        utype=pick(st.sampled_from(UTYPES), st.sampled_from(["SYNC", "", 3])),
        freq=pick(st.sampled_from(FREQS), st.sampled_from(["STEP", None])),
        agg=pick(st.sampled_from(AGGS), st.sampled_from(["rmsprop", 0])),
        epochs=pick(st.integers(1, 2), st.sampled_from([0, -1, 1.5])),
        batchsize=pick(st.integers(1, 4), st.sampled_from([0, 1000, 2.0])),
        k=pick(st.integers(1, 3), st.sampled_from([0, 10**6, True])),
        servers=pick(st.integers(1, 3), st.sampled_from([0, 10**6])),
        scheme=pick(st.sampled_from(SCHEMES), st.just("random")),
        push=pick(st.sampled_from(["gradients", "model"]), st.just("delta")),
        nonfinite=pick(st.sampled_from(["raise", "skip"]), st.just("ignore")),
        seed=pick(st.integers(0, 3), st.just(-1)),
        hyperparams={"lr": pick(LR, BAD_LR)},
    )
    if str(kw["freq"]).upper() == "NBATCHES" or draw(st.integers(0, 24)) == 17:
        kw["nbatches"] = pick(st.integers(1, 4), st.just(0))
    if str(kw["utype"]).upper() == "SSP" or draw(st.integers(0, 24)) == 17:
        kw["staleness"] = pick(st.integers(0, 3), st.just(-1))
    if str(kw["utype"]).upper() == "SBP" or draw(st.integers(0, 24)) == 17:
        kw["backup_workers"] = pick(st.integers(0, 1), st.just(5))
    if draw(st.integers(0, 4)) == 0:
        kw["val"] = True
    return kw


def gpups_threads():
    return [t for t in threading.enumerate() if t.name.startswith("gpups-")]


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(problem(), options())
def test_paramserv_trains_or_names_the_problem(prob, kw):
    net, X, y, dtype = prob
    val = kw.pop("val", False)
    if val:
        kw.update(val_features=X[:5], val_labels=y[:5])
    before = len(gpups_threads())
    try:
        res = gpups.paramserv(net.init(0, dtype=dtype), X, y, upd=net.gradients, device="cpu", progress=False,
                              **kw)
    except gpups.WorkerError as exc:
        hypothesis.event("WorkerError")
        assert re.match(r"^(worker \d+|server shard \d+) failed: ", str(exc)), str(exc)
    except ValueError as exc:
        hypothesis.event("ValueError " + next((n for n in NAMES if n in str(exc)), "?").strip("= "))
        assert any(name in str(exc) for name in NAMES), f"the error names no option: {exc}"
    else:
        hypothesis.event("trained")
        assert len(res.history) == kw["epochs"] >= 1
        assert res.model.keys() == net.shapes().keys()
        for name, a in res.model.items():
            assert a.dtype == dtype and a.shape == net.shapes()[name]
    for t in gpups_threads():
        t.join(timeout=10)
    assert len(gpups_threads()) <= before, "worker threads leaked"
