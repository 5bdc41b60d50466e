"""Real data that packages ship: softmax regression and an MLP learn in every sync mode."""
import numpy as np
import pytest

import gpups
from gpups import datasets
from gpups.models import MLP, SoftmaxRegression

UTYPES = ["BSP", "ASP", "SSP", "SBP", "HOGWILD"]
# validation accuracy after 8 (digits) or 5 (mnist5k) epochs, k=4, batch 32, momentum 0.9; measured
# on 2 CPU cores: digits 0.94-0.97 (SSP, a loaded machine), mnist5k 0.89-0.92 in every utype
TARGETS = {("digits", "softmax"): 0.85, ("digits", "mlp"): 0.85,
           ("mnist5k", "softmax"): 0.85, ("mnist5k", "mlp"): 0.85}
EPOCHS = {"digits": 8, "mnist5k": 5}


@pytest.fixture(scope="module", params=["digits", "mnist5k"])
def data(request):
    return datasets.load(request.param)


@pytest.mark.parametrize("utype", UTYPES)
@pytest.mark.parametrize("model", ["softmax", "mlp"])
def test_reaches_stated_accuracy(data, model, utype):
    d = data.X.shape[1]
    net, lr = (SoftmaxRegression(d, 10), 0.1) if model == "softmax" else (MLP([d, 64, 10]), 0.05)
    kw = {"staleness": 2} if utype == "SSP" else {"backup_workers": 1} if utype == "SBP" else {}
    res = gpups.paramserv(net.init(0), data.X, data.y, upd=net.gradients, agg="momentum", utype=utype,
                          k=4, epochs=EPOCHS[data.name], batchsize=32, hyperparams={"lr": lr}, val_features=data.Xv,
                          val_labels=data.yv, progress=False, device="cpu", **kw)
    accs = [r["val_accuracy"] for r in res.history]
    assert accs[-1] >= TARGETS[data.name, model], accs
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert res.model["W1"].dtype == np.float32


def test_history_records_every_epoch(data):
    net = SoftmaxRegression(data.X.shape[1], 10)
    res = gpups.paramserv(net.init(0), data.X, data.y, upd=net.gradients, k=2, epochs=2, batchsize=64,
                          val_features=data.Xv, val_labels=data.yv, progress=False, device="cpu")
    for i, rec in enumerate(res.history, 1):
        assert rec["epoch"] == i
        assert {"loss", "val_loss", "val_accuracy", "samples_per_s", "seconds", "pushes",
                "staleness_mean", "staleness_max"} <= set(rec)
        assert rec["samples"] == len(data.X)
        assert sum(rec["pushes"]) == sum(-(-len(p) // 64) for p in np.array_split(np.arange(len(data.X)), 2))


def test_progress_prints_one_line_per_epoch(capsys):
    data = datasets.digits()
    net = SoftmaxRegression(64, 10)
    gpups.paramserv(net.init(0), data.X, data.y, upd=net.gradients, epochs=3, batchsize=64,
                    val_features=data.Xv, val_labels=data.yv, device="cpu")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("epoch 1/3  loss ") and "val_accuracy" in lines[0] and "samples/s" in lines[0]


def test_progress_false_prints_nothing(capsys):
    data = datasets.digits()
    net = SoftmaxRegression(64, 10)
    gpups.paramserv(net.init(0), data.X, data.y, upd=net.gradients, epochs=2, batchsize=64, k=2,
                    val_features=data.Xv, val_labels=data.yv, device="cpu", progress=False)
    out = capsys.readouterr()
    assert out.err == "" and out.out == ""


def test_long_epochs_print_a_heartbeat(capsys, monkeypatch):
    import time

    from gpups.history import Progress
    monkeypatch.setattr(Progress, "every", 0.05)
    data = datasets.digits()
    net = SoftmaxRegression(64, 10)

    def slow(p, x, y, hp):
        time.sleep(0.004)
        return net.gradients(p, x, y, hp)

    gpups.paramserv(net.init(0), data.X, data.y, upd=slow, k=2, epochs=1, batchsize=32, device="cpu")
    err = [line for line in capsys.readouterr().err.splitlines() if line]
    beats = [line for line in err if "% of batches" in line]
    assert beats and beats[0].startswith("  epoch 1/1: ") and "samples/s" in beats[0]
    assert err[-1].startswith("epoch 1/1")
