"""Checkpoints: atomic writes, resume after a crash gives the unbroken run's model."""
import os
import shutil

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


def _rewrite(path, edit):
    import pickle

    state = ckpt.read(path)
    edit(state)
    with open(path, "wb") as f:
        pickle.dump(state, f)


def test_a_checkpoint_missing_a_field_or_not_a_dict_is_refused(blobs, tmp_path):
    import pickle

    X, y = blobs
    run(small_net().init(0), X, y, str(tmp_path), epochs=1)
    path = ckpt.checkpoints(str(tmp_path))[-1]
    for key in ckpt.KEYS:
        if key == "format":
            continue
        bad = str(tmp_path / f"no-{key}.pkl")
        state = ckpt.read(path)
        del state[key]
        with open(bad, "wb") as f:
            pickle.dump(state, f)
        with pytest.raises(ValueError, match="not a gpups checkpoint"):
            ckpt.read(bad)
    with open(tmp_path / "list.pkl", "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(ValueError, match="not a gpups checkpoint"):
        ckpt.read(str(tmp_path / "list.pkl"))


def test_a_checkpoint_is_written_to_a_hidden_temp_file_beside_it_then_renamed(tmp_path, monkeypatch):
    import pickle

    moves = []
    real = os.replace
    monkeypatch.setattr(ckpt.os, "replace", lambda src, dst: (moves.append((src, dst)), real(src, dst)))
    path = ckpt.save(str(tmp_path), 3, {"a": np.arange(3)})
    (src, dst), = moves
    assert dst == path and os.path.dirname(src) == str(tmp_path)  # same folder: the rename is atomic
    assert ckpt._TMP.match(os.path.basename(src))  # a killed run's leftover is recognised and removed
    assert os.path.basename(src).startswith(".tmp-") and src.endswith(".ckpt")
    with open(path, "rb") as f:  # protocol 5: arrays written from their buffers
        assert f.read(2) == b"\x80" + bytes([pickle.HIGHEST_PROTOCOL])


def test_a_checkpoint_of_an_earlier_version_resumes_with_the_defaults_it_ran_with(blobs, tmp_path):
    """Checkpoints written before ``cuts``, ``nbatches``, ``staleness`` and ``backup`` were
    recorded resume as if those held their defaults: the same model as from the full checkpoint,
    and no change reported."""
    X, y = blobs
    params = small_net().init(0, dtype=np.float64)
    full, old = str(tmp_path / "full"), str(tmp_path / "old")
    for folder in (full, old):
        run(params, X, y, folder, epochs=1, servers=2)

    def strip(state):
        del state["cuts"]
        for key in ("nbatches", "staleness", "backup"):
            state["fingerprint"].pop(key, None)
    _rewrite(ckpt.checkpoints(old)[-1], strip)
    a = run(params, X, y, full, epochs=2, servers=1, resume=True)
    b = run(params, X, y, old, epochs=2, servers=1, resume=True)
    assert_models_close(b.model, a.model, rtol=0, atol=0)
    assert a.history[1]["resumed_with"] == {"servers": [2, 1]}
    assert b.history[1]["resumed_with"] == {"servers": [2, 1]}


@pytest.mark.parametrize("mode,key,value", [("SSP", "staleness", 2), ("SBP", "backup", 1)])
def test_an_earlier_checkpoint_without_the_modes_parameter_ran_with_its_default(blobs, tmp_path, mode, key, value):
    """A checkpoint without ``staleness`` / ``backup`` (an earlier version) ran with 0: resuming
    under SSP(2) / SBP(1) reports that change; one naming ``backup_workers`` is read as ``backup``."""
    X, y = blobs
    params = small_net().init(0, dtype=np.float64)
    kw = dict(utype=mode, staleness=value) if mode == "SSP" else dict(utype=mode, backup_workers=value)
    run(params, X, y, str(tmp_path), epochs=1, **kw)
    path = ckpt.checkpoints(str(tmp_path))[-1]
    _rewrite(path, lambda state: state["fingerprint"].pop(key))
    res = run(params, X, y, str(tmp_path), epochs=2, resume=True, **kw)
    assert res.history[1]["resumed_with"] == {key: [0, value]}
    if mode == "SBP":
        shutil.rmtree(tmp_path)
        run(params, X, y, str(tmp_path), epochs=1, **kw)
        path = ckpt.checkpoints(str(tmp_path))[-1]
        _rewrite(path, lambda state: state["fingerprint"].update(backup_workers=state["fingerprint"].pop("backup")))
        res = run(params, X, y, str(tmp_path), epochs=2, resume=True, **kw)
        assert "resumed_with" not in res.history[1]


def test_a_checkpoint_records_the_shards_cuts_on_tensor_boundaries_for_a_user_agg(blobs, tmp_path):
    """A user agg sees whole named tensors, so its shards are cut between tensors; the
    checkpoint's ``cuts`` are the cuts the shards used (a resume compares them)."""
    X, y = blobs
    params = small_net().init(0, dtype=np.float64)

    def agg(p, g, state, hp):
        return {n: p[n] - 0.1 * g[n] for n in p}, state
    run(params, X, y, str(tmp_path), epochs=1, agg=agg, servers=2)
    cuts = ckpt.load_latest(str(tmp_path))["cuts"]
    ends = set(np.cumsum([a.size for a in params.values()]).tolist()) | {0}
    assert len(cuts) == 2 and cuts[0][0] == 0 and cuts[-1][1] == max(ends)
    assert all(lo in ends and hi in ends for lo, hi in cuts)
    run(params, X, y, str(tmp_path / "sgd"), epochs=1, agg="sgd", servers=2)
    lo, hi = ckpt.load_latest(str(tmp_path / "sgd"))["cuts"][0]
    assert hi not in ends  # an element-wise rule cuts through a tensor
