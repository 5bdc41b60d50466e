"""Placement over several device slots (a GPU list), checked on the CPU: a device with ``slots``
homes, each with buffers of its own, so every copy between homes (pushes sent to far shards,
pulls of far ranges, the gathered model, the flags, checkpoints) runs as it does across GPUs.
Placed runs must equal the one-slot run wherever the mode is deterministic."""
import importlib

import numpy as np
import pytest

import gpups
from gpups.device import CPUDevice
from helpers import assert_models_close, small_net


class SlotsCPU(CPUDevice):
    """The CPU with ``slots`` homes: worker j on j % slots, shard s on s % slots."""

    def __init__(self, slots: int):
        super().__init__()
        self.slots = slots
        self.placed: list[int] = []

    def worker_slot(self, j):
        return j % self.slots

    def shard_slot(self, s):
        return s % self.slots

    def place(self, array, slot=0):
        self.placed.append(slot)
        return np.array(super().place(array), copy=True)  # a buffer of the slot's own


@pytest.fixture
def slots(monkeypatch):
    made = []

    def use(n):
        def resolve(device):
            made.append(SlotsCPU(n) if n > 1 else CPUDevice())
            return made[-1]
        monkeypatch.setattr(importlib.import_module("gpups.paramserv"), "resolve", resolve)
        return made
    return use


def ps(X, y, **kw):
    net = small_net()
    base = dict(upd=net.gradients, agg="momentum", hyperparams={"lr": 0.05}, progress=False,
                device="cpu", k=3, batchsize=10, epochs=2)
    base.update(kw)
    return gpups.paramserv(net.init(0, dtype=np.float64), X, y, **base)


@pytest.mark.parametrize("servers", [1, 2, 3])
@pytest.mark.parametrize("freq,push", [("batch", "gradients"), ("nbatches", "gradients"), ("epoch", "model")])
def test_bsp_placed_over_slots_equals_one_slot(blobs, slots, servers, freq, push):
    X, y = blobs
    kw = dict(servers=servers, freq=freq, push=push, nbatches=3 if freq == "nbatches" else 1)
    slots(1)
    one = ps(X, y, **kw)
    made = slots(2)
    two = ps(X, y, **kw)
    assert made[-1].placed, "the placed run never put anything on a slot"
    assert set(made[-1].placed) == {0, 1}
    assert_models_close(two.model, one.model, rtol=0, atol=0)


@pytest.mark.parametrize("utype", ["asp", "ssp", "sbp", "hogwild"])
@pytest.mark.parametrize("freq", ["batch", "epoch"])
def test_one_worker_far_from_its_shards_equals_one_slot(blobs, slots, utype, freq):
    """k=1 on slot 0, shards on slots 0 and 1: deterministic in every mode."""
    X, y = blobs
    kw = dict(k=1, servers=2, utype=utype, freq=freq, agg="adam", hyperparams={"lr": 0.01})
    slots(1)
    one = ps(X, y, **kw)
    slots(2)
    two = ps(X, y, **kw)
    assert_models_close(two.model, one.model, rtol=0, atol=0)


@pytest.mark.parametrize("utype", ["asp", "ssp", "sbp", "hogwild"])
def test_async_modes_train_over_three_slots(slots, utype):
    from gpups import datasets
    from gpups.models import SoftmaxRegression

    data = datasets.digits()
    net = SoftmaxRegression(64, 10)
    slots(3)
    kw = {"staleness": 2} if utype == "ssp" else {"backup_workers": 1} if utype == "sbp" else {}
    res = gpups.paramserv(net.init(0), data.X, data.y, upd=net.gradients, agg="momentum",
                          hyperparams={"lr": 0.1}, utype=utype, k=4, servers=2, batchsize=32, epochs=8,
                          progress=False, **kw,
                          val_features=data.Xv, val_labels=data.yv, device="cpu")
    assert res.history[-1]["val_accuracy"] > 0.85


@pytest.mark.parametrize("nonfinite", ["raise", "skip"])
def test_nonfinite_push_is_named_across_slots(blobs, slots, nonfinite):
    """Worker 1 (slot 1) pushes NaN from its 3rd batch on: shard 0 (slot 0) gets the flag by copy."""
    X, y = blobs
    y = y.copy()
    y[80:160] = -1  # worker 1 of 3 (contiguous)
    net = small_net()

    def upd(p, x, yy, hp):
        g, loss = net.gradients(p, x, np.abs(yy), hp)
        if int(yy[0]) == -1 and upd.calls.setdefault(1, 0) >= 2:
            g["W1"][0, 0] = np.nan
        upd.calls[1] = upd.calls.get(1, 0) + (int(yy[0]) == -1)
        return g, loss
    upd.calls = {}
    slots(2)
    kw = dict(servers=2, scheme="disjoint_contiguous", agg="sgd", hyperparams={"lr": 0.1}, upd=upd,
              nonfinite=nonfinite)
    if nonfinite == "raise":
        with pytest.raises(gpups.WorkerError, match=r"worker 1 failed: its gradient held NaN or Inf in epoch 1, batch 3"):
            ps(X, y, **kw)
        return
    res = ps(X, y, **kw)
    assert all(np.isfinite(v).all() for v in res.model.values())
    assert res.history[0]["skipped"] == [0, 6, 0] and res.history[1]["skipped"] == [0, 8, 0]
    upd.calls = {}
    slots(1)
    assert_models_close(ps(X, y, **kw).model, res.model, rtol=0, atol=0)


def test_checkpoint_resume_across_slots_equals_unbroken(blobs, slots, tmp_path):
    X, y = blobs
    slots(2)
    full = ps(X, y, servers=3, epochs=4)
    ps(X, y, servers=3, epochs=2, checkpoint=str(tmp_path))
    resumed = ps(X, y, servers=3, epochs=4, checkpoint=str(tmp_path), resume=True)
    assert_models_close(resumed.model, full.model, rtol=0, atol=0)
    slots(1)  # and the checkpoint format is the one-slot one
    with pytest.warns(UserWarning, match="4 epochs done already"):  # (loaded, nothing left to train)
        again = ps(X, y, servers=3, epochs=4, checkpoint=str(tmp_path), resume=True)
    assert_models_close(again.model, full.model, rtol=0, atol=0)


def test_hogwild_over_slots_scales_each_push_by_one_over_k(slots):
    """k=2 over two slots (each worker's push applied by its own streams on the shard's slot),
    worker 1's pushes all non-finite and skipped: plain SGD over worker 0's rows with lr/2."""
    rng = np.random.default_rng(9)
    X = rng.standard_normal((80, 6))
    y = rng.integers(0, 3, 80)
    net = small_net()

    def upd(p, x, yy, hp):
        g, loss = net.gradients(p, x, yy, hp)
        return ({n: v * np.nan for n, v in g.items()} if any((x[0] == X[40:]).all(1)) else g), loss

    slots(2)
    got = ps(X, y, upd=upd, utype="HOGWILD", k=2, servers=2, agg="sgd", hyperparams={"lr": 0.2}, epochs=1,
             nonfinite="skip").model
    p = net.init(0, dtype=np.float64)
    for lo in range(0, 40, 10):
        g, _ = net.gradients(p, X[lo:lo + 10], y[lo:lo + 10], {})
        p = {n: p[n] - 0.1 * g[n] for n in p}
    assert_models_close(got, p, rtol=1e-12, atol=1e-14)
