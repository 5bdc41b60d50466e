"""Every bad input gets a clear error before work starts; a failing worker stops the run."""
import time

import numpy as np
import pytest

import gpups
from helpers import small_net

UTYPES = ["BSP", "ASP", "SSP", "SBP", "HOGWILD"]


@pytest.fixture
def setup(blobs):
    X, y = blobs
    net = small_net()
    return net, net.init(0, dtype=np.float64), X, y


def call(setup, **kw):
    net, params, X, y = setup
    args = dict(model=params, features=X, labels=y, upd=net.gradients, progress=False, device="cpu")
    args.update(kw)
    return gpups.paramserv(args.pop("model"), args.pop("features"), args.pop("labels"), **args)


def never_called(*a, **k):
    raise AssertionError("work started before the bad input was rejected")


BAD_OPTIONS = [
    ({"utype": "BSPX"}, r"utype='BSPX'.*'BSP', 'ASP', 'SSP', 'SBP', 'HOGWILD'"),
    ({"freq": "daily"}, r"freq='daily'.*'BATCH', 'NBATCHES', 'EPOCH'"),
    ({"scheme": "random"}, r"scheme='random'.*disjoint_contiguous"),
    ({"push": "weights"}, r"push='weights'.*'gradients', 'model'"),
    ({"agg": "rmsprop"}, r"agg='rmsprop'.*'sgd', 'momentum', 'nesterov', 'adagrad', 'adam'"),
    ({"agg": 3}, r"agg=3"),
    ({"k": 0}, r"k=0.*integer in \[1, 240\]"),
    ({"k": 241}, r"k=241.*integer in \[1, 240\]"),
    ({"k": 2.0}, r"k=2.0.*integer"),
    ({"k": True}, r"k=True"),
    ({"epochs": 0}, r"epochs=0.*integer >= 1"),
    ({"batchsize": -1}, r"batchsize=-1"),
    ({"batchsize": 61, "k": 4}, r"batchsize=61.*at most 60: worker 0's partition has 60 rows"),
    ({"servers": 0}, r"servers=0"),
    ({"servers": 10**6}, r"servers=1000000.*\[1, 53\]"),
    ({"nbatches": 3}, r"nbatches=3.*unless freq='NBATCHES'"),
    ({"nbatches": 0, "freq": "NBATCHES"}, r"nbatches=0"),
    ({"staleness": 2}, r"staleness=2.*unless utype='SSP'"),
    ({"staleness": -1, "utype": "SSP"}, r"staleness=-1"),
    ({"backup_workers": 1, "k": 2}, r"backup_workers=1.*unless utype='SBP'"),
    ({"backup_workers": 2, "k": 2, "utype": "SBP"}, r"backup_workers=2.*\[0, 1\]"),
    ({"backend": "spark"}, r"backend='spark'.*'local'"),
    ({"device": "tpu"}, r"device='tpu'"),
    ({"checkpoint": 5}, r"checkpoint=5.*folder path"),
    ({"resume": True}, r"resume=True.*checkpoint="),
    ({"resume": "yes", "checkpoint": "x"}, r"resume='yes'.*True or False"),
    ({"seed": -3}, r"seed=-3"),
    ({"progress": 1}, r"progress=1.*True or False"),
    ({"hyperparams": [1]}, r"hyperparams=.*dict"),
    ({"hyperparams": {"lr": -0.1}}, r"hyperparams\['lr'\]=-0.1.*> 0"),
    ({"hyperparams": {"lr": float("nan")}}, r"hyperparams\['lr'\]=nan"),
    ({"agg": "momentum", "hyperparams": {"momentum": 1.5}}, r"hyperparams\['momentum'\]=1.5.*\[0, 1\)"),
    ({"upd": "grad"}, r"upd='grad'.*function"),
    ({"evaluate": 1}, r"evaluate=1.*function"),
]


@pytest.mark.parametrize("kw,match", BAD_OPTIONS, ids=[str(k) for k, _ in BAD_OPTIONS])
def test_bad_option_is_named(setup, kw, match):
    with pytest.raises(ValueError, match=match):
        call(setup, **kw)


def test_bad_arrays_are_named(setup):
    net, params, X, y = setup
    Xn = X.copy()
    Xn[17, 2] = np.nan
    cases = [
        (dict(features=Xn), r"features holds NaN or Inf \(first at index \(17, 2\)\)"),
        (dict(features=X[:, 0]), r"features has shape \(240,\); expected .*\(n, \.\.\.\)"),
        (dict(features=X.astype(np.int64)), r"features has dtype int64; expected float"),
        (dict(labels=y[:100]), r"labels has 100 rows but features has 240"),
        (dict(labels=y.astype(str)), r"labels has dtype <U"),
        (dict(features="abc"), r"features is a str; expected a numpy or CuPy array"),
        (dict(model={}), r"model=.*non-empty dict"),
        (dict(model={"W1": np.zeros((6, 5), np.int32)}), r"model\['W1'\] has dtype int32; expected"),
        (dict(model={"a": np.zeros(3, np.float32), "b": np.zeros(3)}), r"model mixes dtypes"),
        (dict(model={"a": np.full(3, np.inf)}), r"model\['a'\] holds NaN or Inf"),
        (dict(val_features=X), r"val_features and val_labels go together"),
        (dict(val_features=X[:, :3], val_labels=y), r"val_features rows have shape \(3,\); expected \(6,\)"),
    ]
    for kw, match in cases:
        with pytest.raises(ValueError, match=match):
            call(setup, **kw)


def test_upd_returning_wrong_shapes_is_named_before_work(setup):
    net, params, X, y = setup

    def bad_shape(p, x, yy, hp):
        g, _ = net.gradients(p, x, yy, hp)
        g["W2"] = g["W2"].T
        return g

    with pytest.raises(ValueError, match=r"upd returned gradients\['W2'\] of shape \(3, 5\); "
                                         r"the parameter 'W2' has shape \(5, 3\)"):
        call(setup, upd=bad_shape, evaluate=never_called, val_features=X, val_labels=y)

    def missing(p, x, yy, hp):
        g, _ = net.gradients(p, x, yy, hp)
        del g["b1"]
        return g

    with pytest.raises(ValueError, match=r"missing \['b1'\]"):
        call(setup, upd=missing)
    with pytest.raises(ValueError, match=r"upd must return a dict"):
        call(setup, upd=lambda p, x, yy, hp: [1, 2])
    with pytest.raises(ValueError, match=r"non-finite gradient for 'W1'"):
        call(setup, upd=lambda p, x, yy, hp: {n: np.full_like(v, np.nan) for n, v in p.items()})


def test_custom_agg_returning_wrong_shapes_is_named(setup):
    def bad_agg(p, g, state, hp):
        return {n: v[:1] for n, v in p.items()}, state

    with pytest.raises(ValueError, match=r"agg returned params\['W1'\] of shape \(1, 5\)"):
        call(setup, agg=bad_agg)


def test_evaluate_returning_a_non_dict_is_named(setup):
    _, _, X, y = setup
    with pytest.raises(ValueError, match="evaluate must return a dict"):
        call(setup, evaluate=lambda p, x, yy: 0.5, val_features=X, val_labels=y)


def failing_upd(net, worker_label, after):
    """Fails in the worker whose rows carry label `worker_label` at batch index `after`."""
    seen = {"n": 0}

    def upd(p, x, y, hp):
        if int(y[0]) == worker_label:
            seen["n"] += 1
            if seen["n"] > after:
                raise KeyError("boom in user code")
        return net.gradients(p, x, np.abs(y), hp)
    return upd


@pytest.mark.parametrize("utype", UTYPES)
def test_failing_worker_stops_the_run_with_its_error(setup, utype):
    net, params, X, y = setup
    y = y.copy()
    y[120:180] = -1  # worker 2 of 4 (contiguous rows 120..179)
    kw = {"staleness": 1} if utype == "SSP" else {"backup_workers": 1} if utype == "SBP" else {}
    t0 = time.perf_counter()
    with pytest.raises(gpups.WorkerError, match=r"worker 2 failed: KeyError: 'boom in user code' in "
                                                r"epoch 1, batch 4") as info:
        call(setup, labels=y, upd=failing_upd(net, -1, 3), utype=utype, k=4, batchsize=5, epochs=3,
             **kw)
    assert isinstance(info.value.__cause__, KeyError)
    assert info.value.who == "worker 2"
    assert time.perf_counter() - t0 < 30


def test_failure_in_a_later_step_with_wrong_shape_is_named(setup):
    net, params, X, y = setup
    calls = {"n": 0}

    def flaky(p, x, yy, hp):
        calls["n"] += 1
        g, loss = net.gradients(p, x, yy, hp)
        if calls["n"] > 3:
            g["b2"] = np.zeros(7)
        return g, loss

    with pytest.raises(gpups.WorkerError, match=r"gradient for 'b2' of shape \(7,\); the parameter has shape \(3,\)"):
        call(setup, upd=flaky, k=1, batchsize=10)


def nan_after(net, calls_before_nan, worker_label=None):
    seen = {"n": 0}

    def upd(p, x, y, hp):
        g, loss = net.gradients(p, x, np.abs(y), hp)
        if worker_label is None or int(y[0]) == worker_label:
            seen["n"] += 1
            if seen["n"] > calls_before_nan:
                g["W1"][0, 0] = np.nan
        return g, loss
    return upd


@pytest.mark.parametrize("utype", UTYPES)
def test_nonfinite_gradient_stops_the_run_naming_worker_and_batch(setup, utype):
    net, params, X, y = setup
    y = y.copy()
    y[60:120] = -1  # worker 1 of 4
    kw = {"staleness": 1} if utype == "SSP" else {"backup_workers": 1} if utype == "SBP" else {}
    with pytest.raises(gpups.WorkerError, match=r"worker 1 failed: its gradient held NaN or Inf in "
                                                r"epoch 1, batch 3"):
        call(setup, labels=y, upd=nan_after(net, 2, -1), utype=utype, k=4, batchsize=5, **kw)


def test_nonfinite_skip_goes_on_with_a_finite_model(setup):
    net, params, X, y = setup
    res = call(setup, upd=nan_after(net, 5), k=2, batchsize=10, nonfinite="skip", epochs=2)
    assert all(np.isfinite(v).all() for v in res.model.values())
    # 24 pushes per epoch; upd ran finite 5 times: once in the dry run, then 4 pushes
    assert sum(res.history[0]["skipped"]) == 24 - 4 and sum(res.history[1]["skipped"]) == 24
    with pytest.raises(ValueError, match=r"nonfinite='warn'.*'raise', 'skip'"):
        call(setup, nonfinite="warn")
