"""Data loaders, the `gpups train` command and the examples, run as a user would."""
import gzip
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from gpups import cli, datasets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_idx(path, arr):
    header = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_folder(tmp_path, gz):
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    imgs, labels = rng.integers(0, 256, (20, 28, 28)), rng.integers(0, 10, 20)
    write_idx(str(tmp_path / f"train-images-idx3-ubyte{ext}"), imgs)
    write_idx(str(tmp_path / f"train-labels-idx1-ubyte{ext}"), labels)
    write_idx(str(tmp_path / f"t10k-images-idx3-ubyte{ext}"), imgs[:5])
    write_idx(str(tmp_path / f"t10k-labels-idx1-ubyte{ext}"), labels[:5])
    d = datasets.mnist(str(tmp_path))
    assert d.X.shape == (20, 784) and d.X.dtype == np.float32 and d.Xv.shape == (5, 784)
    np.testing.assert_allclose(d.X[3], imgs[3].reshape(-1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(d.y, labels)
    assert datasets.mnist(str(tmp_path), image=True).X.shape == (20, 1, 28, 28)


def test_missing_mnist_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte\[.gz\] not found in"):
        datasets.mnist(str(tmp_path))
    bad = tmp_path / "x"
    bad.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="is not an IDX file"):
        datasets.read_idx(str(bad))


def test_bundled_and_synthetic_sets():
    for d in (datasets.mnist5k(), datasets.digits(), datasets.synthetic(n=500, d=20, classes=4)):
        assert d.X.dtype == np.float32 and d.y.dtype == np.int64
        assert len(d.X) + len(d.Xv) in (5000, 1797, 500)
        assert np.isfinite(d.X).all()
    m = datasets.mnist5k()
    assert m.X.min() >= 0 and m.X.max() <= 1 and len(m.Xv) == 1000
    a, b = datasets.synthetic(n=100, seed=3), datasets.synthetic(n=100, seed=3)
    np.testing.assert_array_equal(a.X, b.X)
    r = datasets.synthetic_regression(n=50, d=4)
    assert r.y.shape == (40, 1) and r.classes == 0
    with pytest.raises(ValueError, match=r"data='cifar'.*mnist5k"):
        datasets.load("cifar")
    with pytest.raises(ValueError, match="val_fraction=1.5"):
        datasets.digits(val_fraction=1.5)


def test_gpups_train_writes_history_model_and_summary(tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli.main(["train", "--model", "mlp", "--hidden", "32", "--data", "digits", "--utype", "ASP",
                   "--k", "2", "--epochs", "2", "--lr", "0.05", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    hist = json.loads((out / "history.json").read_text())
    assert len(hist["history"]) == 2 and hist["utype"] == "ASP"
    assert hist["final"]["val_accuracy"] > 0.5
    model = np.load(out / "model.npz")
    assert model["W1"].shape == (64, 32)
    captured = capsys.readouterr()
    assert "trained mlp on digits" in captured.out and "epoch 2/2" in captured.err


def test_gpups_train_reports_bad_options_without_a_traceback(tmp_path, capsys):
    rc = cli.main(["train", "--data", "digits", "--utype", "bogus", "--out", str(tmp_path)])
    assert rc == 2
    assert "utype='bogus' is not allowed" in capsys.readouterr().err
    rc = cli.main(["train", "--data", "digits", "--device", "cuda:0,cpu", "--out", str(tmp_path)])
    assert rc == 2  # a comma list is a device list
    assert "device=['cuda:0', 'cpu'] is not allowed" in capsys.readouterr().err


def test_gpups_train_dlrm_on_synthetic_ctr_and_on_a_criteo_file(tmp_path, capsys):
    from test_dlrm import write_criteo

    out = tmp_path / "run"
    common = ["--model", "dlrm", "--hidden", "16", "--dim", "8", "--agg", "adagrad", "--lr", "0.05", "--k", "2",
              "--batchsize", "64", "--epochs", "2", "--device", "cpu", "--quiet"]
    rc = cli.main(["train", "--data", "synthetic_ctr", "--samples", "6000", "--table-rows", "300", "--tables", "3",
                   "--out", str(out), *common])
    assert rc == 0, capsys.readouterr().err
    hist = json.loads((out / "history.json").read_text())
    assert hist["final"]["val_auc"] > 0.6 and "val_logloss" in hist["final"]
    model = np.load(out / "model.npz")
    assert model["emb0"].shape == (300, 8)
    assert "trained dlrm on synthetic_ctr (3 tables of 300 rows) (5400 rows)" in capsys.readouterr().out
    rng = np.random.default_rng(0)
    rows = [(int(rng.random() < 0.3), [str(int(v)) for v in rng.integers(0, 50, 13)],
             [format(int(v), "08x") for v in rng.integers(0, 40, 26)]) for _ in range(400)]
    write_criteo(tmp_path / "day.txt", rows)
    rc = cli.main(["train", "--data", f"criteo:{tmp_path / 'day.txt'}", "--samples", "1000", "--table-rows", "64",
                   "--out", str(out), *common])
    assert rc == 0, capsys.readouterr().err
    hist = json.loads((out / "history.json").read_text())
    assert len(hist["history"]) == 2 and np.load(out / "model.npz")["emb25"].shape == (64, 8)
    rc = cli.main(["train", "--model", "dlrm", "--data", "digits", "--out", str(out)])
    assert rc == 2 and "--data 'digits' is not allowed with --model dlrm" in capsys.readouterr().err


@pytest.mark.parametrize("script,args", [("quickstart.py", []), ("custom_upd_agg.py", []),
                                         ("compare_sync_modes.py", []), ("lenet.py", ["1024"]), ("array_upd.py", []),
                                         pytest.param("ray_backend.py", [], marks=pytest.mark.ray)])
def test_example_runs(script, args):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", script), *args],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "accuracy" in proc.stdout or "val acc" in proc.stdout


def test_own_model_example_reaches_its_accuracy():
    """examples/own_model.py: a CNN with a residual block, from gpups.nn layers, >= 0.95 on mnist5k."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "own_model.py")], capture_output=True,
                          text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.split("validation accuracy")[1].split()[0]) >= 0.95


def test_ctr_example_comes_close_to_the_ceiling():
    """examples/ctr.py: DLRM with sparse tables within 0.05 AUC of the hidden model's own."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "ctr.py"), "30000", "300"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got, ceiling = (float(v) for v in proc.stdout.split("val AUC ")[1].split(" (the hidden model's: ")[:1]
                    + [proc.stdout.split("the hidden model's: ")[1].split(")")[0]])
    assert got > ceiling - 0.05, proc.stdout


def test_torch_module_example_trains_and_exports():
    """examples/torch_module.py: a torch.nn.Module under SSP k=2; the exported module agrees."""
    pytest.importorskip("torch")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "torch_module.py")], capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = proc.stdout.split("validation accuracy ")[1]
    acc, exported = float(got.split()[0]), float(got.split("exported module: ")[1].split(")")[0])
    assert acc >= 0.88 and exported == acc, proc.stdout
