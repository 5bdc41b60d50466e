"""Checkpoints: atomic writes, resume after a crash gives the unbroken run's model."""
import os

import numpy as np
import pytest

import gpups
from gpups import checkpoint as ckpt
from helpers import assert_models_close, small_net


def run(params, X, y, folder=None, upd=None, **kw):
    net = small_net()
    base = dict(upd=upd or net.gradients, agg="adam", hyperparams={"lr": 0.01}, k=3, batchsize=8,
                epochs=4, checkpoint=folder, progress=False, device="cpu")
    base.update(kw)
    return gpups.paramserv(params, X, y, **base)


def crashing(after_calls):
    net = small_net()
    calls = {"n": 0}

    def upd(p, x, y, hp):
        calls["n"] += 1
        if calls["n"] > after_calls:
            raise RuntimeError("simulated crash")
        return net.gradients(p, x, y, hp)
    return upd


@pytest.mark.parametrize("utype,freq", [("BSP", "BATCH"), ("BSP", "NBATCHES"), ("HOGWILD", "EPOCH")])
def test_resume_after_crash_equals_unbroken_run(blobs, tmp_path, utype, freq):
    X, y = blobs
    params = small_net().init(0, dtype=np.float64)
    kw = dict(utype=utype, freq=freq, nbatches=2 if freq == "NBATCHES" else 1,
              k=3 if utype == "BSP" else 1)
    unbroken = run(params, X, y, **kw)
    folder = str(tmp_path / "ck")
    steps_per_epoch = 30  # 240 rows / batch 8
    with pytest.raises(gpups.WorkerError):
        run(params, X, y, folder, upd=crashing(int(2.5 * steps_per_epoch)), **kw)
    assert [os.path.basename(p) for p in ckpt.checkpoints(folder)] == ["epoch-00001.ckpt", "epoch-00002.ckpt"]
    resumed = run(params, X, y, folder, resume=True, **kw)
    assert_models_close(resumed.model, unbroken.model, rtol=0, atol=0)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]


def test_checkpoint_holds_model_state_and_clocks(blobs, tmp_path):
    X, y = blobs
    params = small_net().init(0, dtype=np.float64)
    res = run(params, X, y, str(tmp_path), epochs=3)
    files = ckpt.checkpoints(str(tmp_path))
    assert len(files) == 2  # the newest two are kept
    state = ckpt.load_latest(str(tmp_path))
    assert state["epoch"] == 3
    flat = np.concatenate([res.model[n].ravel() for n in params])
    np.testing.assert_array_equal(state["server"]["w"], flat)
    assert state["server"]["version"] == 3 * 10  # 10 BSP rounds per epoch (80 rows per worker / 8)
    assert {"shard0.m", "shard0.v", "shard0.step"} <= set(state["server"])
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]


def test_resume_refuses_a_checkpoint_of_another_run(blobs, tmp_path):
    X, y = blobs
    params = small_net().init(0, dtype=np.float64)
    run(params, X, y, str(tmp_path), epochs=1)
    with pytest.raises(ValueError, match="different run.*agg: checkpoint 'adam', now 'momentum'.*a resume may "
                                         "change.*k"):
        run(params, X, y, str(tmp_path), epochs=2, agg="momentum", resume=True)


def test_resume_with_an_empty_folder_starts_fresh(blobs, tmp_path):
    X, y = blobs
    params = small_net().init(0, dtype=np.float64)
    a = run(params, X, y, str(tmp_path / "new"), epochs=2, resume=True)
    b = run(params, X, y, None, epochs=2)
    assert_models_close(a.model, b.model, rtol=0, atol=0)
