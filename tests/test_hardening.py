"""Bad input and faults that once crashed, hung, lost state or trained on wrong data (issue 11):
each behaves as documented in README.md ("Errors, faults and what is checked")."""
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import warnings

import numpy as np
import pytest

import gpups
from gpups import checkpoint as ckpt
from gpups.models import MLP, LeNet, LinearRegression
from helpers import assert_models_close

UTYPES = [("BSP", {}), ("ASP", {}), ("SSP", {"staleness": 1}), ("SBP", {"backup_workers": 1}), ("HOGWILD", {})]
rng = np.random.default_rng(0)
X = rng.standard_normal((200, 8)).astype(np.float32)
Y = rng.integers(0, 3, 200)
NET = MLP([8, 6, 3])


def run(**kw):
    net = kw.pop("net", NET)
    args = dict(upd=net.gradients, device="cpu", k=2, batchsize=16, progress=False)
    args.update(kw)
    return gpups.paramserv(args.pop("model", net.init(seed=0)), args.pop("X", X), args.pop("y", Y), **args)


class Counting:
    """An upd that counts its calls: 0 calls proves a check came before any work."""

    def __init__(self, net=NET):
        self.net, self.calls = net, 0

    def __call__(self, p, x, y, hp):
        self.calls += 1
        return self.net.gradients(p, x, y, hp)


# -- 1. labels -------------------------------------------------------------------------------
def bad(y, at, value):
    y = y.copy()
    y[at] = value
    return y


LABELS = [
    (bad(Y, slice(None, None, 7), 5), r"labels\[0\] = 5 is outside the model's classes: expected integers in \[0, 2\]"),
    (bad(Y, 3, 10**9), r"labels\[3\] = 1000000000 is outside"),
    (Y + 1, r"labels\[7\] = 3 is outside the model's classes.*\(1-based labels\? subtract 1\)"),
    (bad(Y, 11, -1), r"labels\[11\] = -1 is outside"),
    (Y + 0.7, r"labels\[0\] = 0.7 is not a class index: expected integers in \[0, 2\]"),
    (np.eye(3)[Y], r"labels has shape \(200, 3\); expected class indices of shape \(n,\) \(one-hot rows\?"),
    (np.zeros((200, 2), np.int64), r"labels has shape \(200, 2\); expected class indices"),
]


@pytest.mark.parametrize("labels,match", LABELS, ids=["5", "1e9", "1-based", "-1", "fraction", "one-hot", "2 cols"])
def test_labels_outside_the_models_classes_are_named_before_work(labels, match):
    with pytest.raises(ValueError, match=match):
        run(y=labels)
    with pytest.raises(ValueError, match="val_" + match):
        run(val_features=X, val_labels=labels)


def test_a_user_upd_over_a_models_kernels_gets_an_error_not_a_crash():
    with pytest.raises(ValueError, match=r"softmax cross-entropy: a label is outside \[0, classes\)"):
        run(y=Y + 1, upd=Counting())


def test_integer_valued_float_labels_and_column_labels_train():
    a = run(y=Y.astype(np.float64), epochs=2)
    b = run(y=Y.reshape(-1, 1), epochs=2)
    c = run(epochs=2)
    assert_models_close(a.model, c.model, rtol=0, atol=0)
    assert_models_close(b.model, c.model, rtol=0, atol=0)


def test_regression_label_width_must_match_the_output():
    net = LinearRegression(8, 1)
    with pytest.raises(ValueError, match=r"labels has shape \(200, 2\); LinearRegression\(8, 1\) predicts 1 "
                                         r"value\(s\) per row: expected labels of shape \(n,\) or \(n, 1\)"):
        run(net=net, y=np.zeros((200, 2), np.float32))
    res = run(net=net, y=X[:, :1] * 2, agg="sgd", hyperparams={"lr": 0.1}, epochs=3)
    assert np.isfinite(res.history[-1]["loss"])


@pytest.mark.parametrize("value", [3, -1, 10**9])
def test_the_loss_kernels_never_index_out_of_bounds(value):
    """A direct call of a model's gradients or evaluate with a bad label raises, never reads or
    writes outside its buffers (the numba kernels check before their loops)."""
    p = NET.init(0)
    y = bad(Y[:16], 5, value)
    with pytest.raises(ValueError, match=r"label is outside \[0, classes\)"):
        NET.gradients(p, X[:16], y)
    with pytest.raises(ValueError, match=r"label is outside \[0, classes\)"):
        NET.evaluate(p, X[:16], y)


# -- 2. features ------------------------------------------------------------------------------
def test_features_of_the_wrong_width_are_named():
    with pytest.raises(ValueError, match=r"features has shape \(200, 9\): rows of shape \(9,\); MLP\(\[8, 6, 3\]\) "
                                         r"expects rows of shape \(8,\)"):
        run(X=np.zeros((200, 9), np.float32))
    with pytest.raises(ValueError, match=r"val_features rows have shape \(9,\); expected \(8,\)"):
        run(val_features=np.zeros((10, 9), np.float32), val_labels=Y[:10])
    lenet = LeNet((1, 8, 8), 3)
    for shape in [(200, 1, 6, 6), (200, 5, 5, 3)]:
        with pytest.raises(ValueError, match=r"features has shape .*LeNet\(input_shape=\(1, 8, 8\), classes=3\) "
                                             r"expects rows of shape \(1, 8, 8\) \(or 64 values"):
            run(net=lenet, X=np.zeros(shape, np.float32))


def test_a_model_that_does_not_fit_its_upd_is_named():
    params = MLP([8, 5, 3]).init(0)
    with pytest.raises(ValueError, match=r"model does not fit upd=MLP\(\[8, 6, 3\]\).gradients \(W1: given \(8, 5\), "
                                         r"expected \(8, 6\)"):
        run(model=params)


# -- 3. hyperparameters -----------------------------------------------------------------------
def test_numpy_scalars_are_real_numbers():
    a = run(hyperparams={"lr": np.float32(0.05), "momentum": np.float64(0.5)}, agg="momentum", epochs=2)
    b = run(hyperparams={"lr": float(np.float32(0.05)), "momentum": 0.5}, agg="momentum", epochs=2)
    assert_models_close(a.model, b.model, rtol=0, atol=0)
    run(hyperparams={"lr": np.int64(1)}, agg="sgd")


@pytest.mark.parametrize("hp,match", [
    ({"lr": np.float32(-0.5)}, r"hyperparams\['lr'\]=-0.5 is not allowed"),
    ({"lr": "0.1"}, r"hyperparams\['lr'\]='0.1' is not allowed"),
    ({"lr": np.array([0.1, 0.2])}, r"hyperparams\['lr'\]=<ndarray of shape \(2,\)> is not allowed"),
    ({"lr": 0.1, "reg": -1.0}, r"hyperparams\['reg'\]=-1.0 is not allowed: expected a finite number >= 0"),
    ({"lr": 0.1, "reg": float("inf")}, r"hyperparams\['reg'\]=inf"),
])
def test_bad_hyperparameters_show_their_value(hp, match):
    with pytest.raises(ValueError, match=match):
        run(hyperparams=hp)


def test_a_hyperparameter_nobody_reads_warns_once():
    with pytest.warns(UserWarning, match=r"hyperparams \['learning_rate'\] are read by neither upd "
                                         r"\(MLP\(\[8, 6, 3\]\).gradients reads \['reg'\]\) nor agg='sgd' \(reads \['lr'\]\)"):
        run(hyperparams={"learning_rate": 0.1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(hyperparams={"lr": 0.1, "reg": 1e-4})  # both read: no warning
        run(hyperparams={"whatever": 1}, upd=Counting())  # a user's upd may read anything


# -- 4. an upd that writes into params --------------------------------------------------------
@pytest.mark.parametrize("utype,extra", UTYPES, ids=[u for u, _ in UTYPES])
def test_upd_writing_its_params_is_refused_in_every_mode(utype, extra):
    def inplace(p, x, y, hp):
        p["b1"] += 1
        return NET.gradients(p, x, y, hp)

    with pytest.raises(ValueError, match=r"upd changed its params argument in place"):
        run(upd=inplace, utype=utype, **extra)

    calls = {"n": 0}

    def later(p, x, y, hp):  # passes the dry run, writes in the run
        calls["n"] += 1
        if calls["n"] == 4:
            p["W1"][0, 0] = 0.0
        return NET.gradients(p, x, y, hp)

    with pytest.raises(gpups.WorkerError, match=r"upd changed its params argument in place"):
        run(upd=later, utype=utype, **extra)


# -- 5. one bad push skips one push ------------------------------------------------------------
def nan_once(batch_x):
    done = []

    def upd(p, x, y, hp):
        g, loss = NET.gradients(p, x, y, hp)
        if not done and np.array_equal(x[0], batch_x):
            done.append(1)
            g = {n: v * np.nan for n, v in g.items()}
        return g, loss
    return upd


def user_momentum(p, g, state, hp):
    v = {n: 0.9 * state[n] + g[n] for n in p} if state else {n: g[n].copy() for n in g}
    return {n: p[n] - 0.01 * v[n] for n in p}, v


@pytest.mark.parametrize("utype", ["BSP", "ASP"])
@pytest.mark.parametrize("push,freq,agg,nb", [("model", "BATCH", "momentum", 1), ("gradients", "NBATCHES", "adam", 3),
                                              ("gradients", "NBATCHES", "momentum", 2),
                                              ("model", "EPOCH", "adagrad", 1), ("model", "BATCH", user_momentum, 1)])
def test_a_skipped_push_does_not_poison_the_worker(utype, push, freq, agg, nb):
    """Worker 1's 4th batch is NaN once: exactly one push of it is skipped in the whole run
    (its local optimizer state is restored, a user agg's too; its replica re-pulled)."""
    res = run(upd=nan_once(X[100 + 16 * 3]), push=push, freq=freq, agg=agg, utype=utype, nonfinite="skip",
              epochs=3, nbatches=nb, hyperparams={"lr": 0.01})
    assert [h.get("skipped") for h in res.history] == [[0, 1], None, None]
    assert all(np.isfinite(v).all() for v in res.model.values())


@pytest.mark.parametrize("nb,batch", [(3, 4), (2, 3)])  # the first batch of an interval
def test_a_nan_inside_an_interval_names_its_batch(nb, batch):
    with pytest.raises(gpups.WorkerError, match=rf"worker 1 failed: its gradient held NaN or Inf in epoch 1, "
                                                rf"batch {batch} "):
        run(upd=nan_once(X[100 + 16 * (batch - 1)]), freq="NBATCHES", nbatches=nb)


def test_an_upd_may_write_some_gradients_into_out_and_return_others():
    def mixed(p, x, yy, hp, out=None):
        g, loss = NET.gradients(p, x, yy, hp)
        out["W1"][...] = g["W1"]
        return {**g, "W1": out["W1"]}, loss  # W1 written in place, the others new arrays

    a = run(upd=mixed, epochs=2)
    b = run(epochs=2)
    assert_models_close(a.model, b.model, rtol=0, atol=0)


# -- 6. a user's agg keeps its state across a resume -------------------------------------------
def momentum_agg(p, g, state, hp):
    v = state.get("v") or {n: np.zeros_like(a) for n, a in p.items()}
    v = {n: 0.9 * v[n] + g[n] for n in p}
    return {n: p[n] - 0.05 * v[n] for n in p}, {"v": v}


@pytest.mark.parametrize("servers", [1, 2])
def test_custom_agg_state_survives_a_resume(tmp_path, servers):
    whole = run(agg=momentum_agg, epochs=3, servers=servers, push="model", freq="NBATCHES", nbatches=2)
    run(agg=momentum_agg, epochs=1, servers=servers, checkpoint=str(tmp_path), push="model", freq="NBATCHES",
        nbatches=2)
    res = run(agg=momentum_agg, epochs=3, servers=servers, checkpoint=str(tmp_path), resume=True, push="model",
              freq="NBATCHES", nbatches=2)
    assert_models_close(res.model, whole.model, rtol=0, atol=0)


# -- 7. checkpoint folders ----------------------------------------------------------------------
def test_checkpoint_paths_that_cannot_be_written_are_named_before_work(tmp_path, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    upd = Counting()
    with pytest.raises(ValueError, match=r"checkpoint='.*afile' is a file; expected a folder"):
        run(upd=upd, checkpoint=str(afile))
    with pytest.raises(ValueError, match=r"checkpoint='.*afile/sub' cannot be created: '.*afile' is a file"):
        run(upd=upd, checkpoint=str(afile / "sub"), resume=True)
    if os.path.isdir("/sys"):  # a read-only file system even for root
        with pytest.raises(ValueError, match=r"checkpoint='/sys/gpups-ck' is not a folder this process can write"):
            run(upd=upd, checkpoint="/sys/gpups-ck")

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", denied)
    with pytest.raises(ValueError, match=r"checkpoint='.*ro' is not a folder this process can write to "
                                         r"\(Permission denied\)"):
        run(upd=upd, checkpoint=str(tmp_path / "ro"))
    assert upd.calls == 0


@pytest.mark.parametrize("argv,match", [
    (["--out", "FILE"], r"--out='.*FILE' is a file"),
    (["--checkpoint", "FILE", "--resume"], r"checkpoint='.*FILE' is a file"),
])
def test_cli_names_unwritable_paths_before_training(tmp_path, capsys, argv, match):
    from gpups.cli import main

    (tmp_path / "FILE").write_text("x")
    argv = [str(tmp_path / a) if a == "FILE" else a for a in argv]
    rc = main(["train", "--model", "softmax", "--data", "synthetic:300:5", "--epochs", "50", "--quiet", *argv]
              + ([] if "--out" in argv else ["--out", str(tmp_path / "out")]))
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert __import__("re").search(match, err), err


# -- 8, 9. resume that fails, checkpoints that are damaged ---------------------------------------
def gpups_threads():
    return [t for t in threading.enumerate() if t.name.startswith("gpups-")]


def test_a_failed_resume_stops_its_worker_threads(tmp_path):
    run(epochs=1, checkpoint=str(tmp_path), k=3)
    before = len(gpups_threads())
    for _ in range(3):
        with pytest.raises(ValueError, match="different run"):
            run(epochs=2, checkpoint=str(tmp_path), k=3, resume=True, seed=5)
    (tmp_path / "epoch-00001.ckpt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="holds no readable checkpoint"), pytest.warns(RuntimeWarning):
        run(epochs=2, checkpoint=str(tmp_path), k=3, resume=True)
    for t in gpups_threads():
        t.join(timeout=10)
    assert len(gpups_threads()) <= before


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "foreign"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path, damage):
    whole = run(epochs=3)
    run(epochs=2, checkpoint=str(tmp_path))
    newest = tmp_path / "epoch-00002.ckpt"
    data = newest.read_bytes()
    newest.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": os.urandom(64),
                        "foreign": pickle.dumps({"hello": 1})}[damage])
    with pytest.warns(RuntimeWarning, match=r"checkpoint .*epoch-00002.ckpt is unreadable .*trying the one before"):
        res = run(epochs=3, checkpoint=str(tmp_path), resume=True)
    assert_models_close(res.model, whole.model, rtol=0, atol=0)  # epoch 1's checkpoint, then 2 and 3 again
    assert [h["epoch"] for h in res.history] == [1, 2, 3]


def test_no_readable_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "epoch-00001.ckpt").write_bytes(b"")
    (tmp_path / "epoch-00002.ckpt").write_bytes(b"\x80\x05")
    with pytest.raises(ValueError, match=r"checkpoint='.*' holds no readable checkpoint: epoch-00002.ckpt .*; "
                                         r"epoch-00001.ckpt"), pytest.warns(RuntimeWarning):
        run(epochs=2, checkpoint=str(tmp_path), resume=True)


def test_a_stale_temporary_file_is_removed_at_the_next_save(tmp_path):
    stale = tmp_path / ".tmp-abc123.ckpt"
    stale.write_bytes(b"half")
    run(epochs=1, checkpoint=str(tmp_path))
    assert not stale.exists()
    assert [os.path.basename(p) for p in ckpt.checkpoints(str(tmp_path))] == ["epoch-00001.ckpt"]


# -- 12. what a resume must match, what it may change, and resuming past the end -------------------
@pytest.mark.parametrize("first,then,key", [
    (dict(push="model"), dict(push="gradients"), "push: checkpoint 'model', now 'gradients'"),
    (dict(seed=1), dict(seed=2), "seed: checkpoint 1, now 2"),
    (dict(agg="adam"), dict(agg="momentum"), "agg: checkpoint 'adam', now 'momentum'"),
])
def test_resume_must_match_what_the_state_depends_on(tmp_path, first, then, key):
    run(epochs=1, checkpoint=str(tmp_path), **first)
    with pytest.raises(ValueError, match=f"different run.*{key}"):
        run(epochs=2, checkpoint=str(tmp_path), resume=True, **then)


@pytest.mark.parametrize("first,then,changed", [
    (dict(freq="NBATCHES", nbatches=2), dict(freq="NBATCHES", nbatches=3), {"nbatches": [2, 3]}),
    (dict(utype="SSP", staleness=1), dict(utype="SSP", staleness=2), {"staleness": [1, 2]}),
    (dict(utype="SBP", backup_workers=1), dict(utype="BSP"), {"utype": ["sbp", "bsp"]}),
])
def test_a_resume_may_change_the_mode_and_records_it(tmp_path, first, then, changed):
    run(epochs=1, checkpoint=str(tmp_path), **first)
    res = run(epochs=2, checkpoint=str(tmp_path), resume=True, **then)
    assert res.history[1]["resumed_with"] == changed and "resumed_with" not in res.history[0]


def test_resuming_with_fewer_epochs_than_done_warns(tmp_path):
    done = run(epochs=3, checkpoint=str(tmp_path))
    with pytest.warns(UserWarning, match=r"resume=True with epochs=2, but the checkpoint .* has 3 epochs done"):
        res = run(epochs=2, checkpoint=str(tmp_path), resume=True)
    assert_models_close(res.model, done.model, rtol=0, atol=0)


# -- messages -------------------------------------------------------------------------------------
def test_lists_and_pandas_objects_are_accepted_like_arrays():
    pd = pytest.importorskip("pandas")
    ref = run(epochs=2)
    a = run(X=X.tolist(), y=Y.tolist(), epochs=2)
    b = run(X=pd.DataFrame(X), y=pd.Series(Y), val_features=pd.DataFrame(X[:20]), val_labels=pd.Series(Y[:20]),
            epochs=2)
    assert_models_close(a.model, ref.model, rtol=0, atol=0)
    assert_models_close(b.model, ref.model, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"features \(list\) does not convert to an array"):
        run(X=[[1.0, 2.0], [3.0]] * 100)
    with pytest.raises(ValueError, match=r"features \(list\) converts to an array of Python objects"):
        run(X=[[1.0, "a"], [None, 2.0]] * 100)
    with pytest.raises(ValueError, match=r"features is a set; expected a numpy or CuPy array"):
        run(X={1, 2})


def test_functions_with_the_wrong_signature_are_named():
    with pytest.raises(ValueError, match=r"upd=.*<lambda> takes \(p, x\); expected a function "
                                         r"upd\(params, features, labels, hyperparams\)"):
        run(upd=lambda p, x: None)
    with pytest.raises(ValueError, match=r"agg=.*<lambda> takes \(p, g\); expected a function "
                                         r"agg\(params, grads, state, hyperparams\) -> \(params, state\)"):
        run(agg=lambda p, g: None)
    with pytest.raises(ValueError, match=r"evaluate=.*<lambda> takes \(p\); expected a function evaluate"):
        run(evaluate=lambda p: {}, val_features=X, val_labels=Y)


def test_agg_returning_only_params_is_named():
    with pytest.raises(ValueError, match=r"agg must return \(params, state\), a tuple of two; it returned dict"):
        run(agg=lambda p, g, s, hp: {n: p[n] - g[n] for n in p})


def test_agg_that_makes_nan_is_blamed_not_the_worker():
    calls = {"n": 0}

    def diverging(p, g, state, hp):
        calls["n"] += 1
        scale = np.nan if calls["n"] == 5 else 0.1
        return {n: p[n] - scale * g[n] for n in p}, state

    with pytest.raises(gpups.WorkerError, match=r"^server shard 0 failed: ValueError: agg returned non-finite "
                                                r"params\['W1'\]"):
        run(agg=diverging, epochs=2)


# -- the CLI on Ctrl-C ------------------------------------------------------------------------------
def test_ctrl_c_prints_one_line_and_exits_130(tmp_path):
    """SIGINT once the second epoch has started (its first line is printed): one line naming the
    epoch and the checkpoint, exit status 130."""
    import signal

    ck = tmp_path / "ck"
    proc = subprocess.Popen([sys.executable, "-m", "gpups.cli", "train", "--model", "mlp", "--hidden", "64",
                             "--data", "synthetic:40000:64", "--epochs", "200", "--k", "2", "--checkpoint",
                             str(ck), "--out", str(tmp_path / "out")],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("epoch") and "/200" in line:
            break
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, "".join(lines) + rest
    tail = rest.strip().splitlines()
    assert len(tail) <= 2, rest  # (an epoch line may land before the signal does)
    assert tail[-1].startswith("gpups train: interrupted after epoch ")
    assert f"checkpoint in {ck} (continue with --resume)" in tail[-1]


@pytest.mark.parametrize("argv,match", [
    (["train", "--data", "synthetic:abc"], r"data='synthetic:abc' is not allowed: expected synthetic\[:N\[:D\]\]"),
    (["train", "--hidden", "a,b"], r"--hidden 'a,b' is not allowed: expected integers >= 1"),
    (["train", "--data", "synthetic", "--samples", "0"], r"--samples 0 is not allowed: expected at least 2 rows"),
    (["train", "--data", "synthetic:300:0"], r"data='synthetic:300:0': d=0 features is not allowed"),
    (["train", "--data", "synthetic_regression:300:8", "--model", "softmax"],
     r"model='softmax' is not allowed for data 'synthetic_regression'.*expected model 'linear'"),
    (["bench", "--models", "mlp:abc"], r"model='mlp:abc' is not allowed: expected mlp:SIZES"),
    (["bench", "--k", "1,x"], r"--k '1,x' is not allowed: expected integers >= 1"),
])
def test_cli_errors_are_one_line_naming_the_flag(tmp_path, capsys, argv, match):
    from gpups.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (no numpy warnings first)
        rc = main([*argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert __import__("re").search(match, err), err
