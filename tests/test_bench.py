"""`gpups bench`: the quick preset runs on the CPU and its JSON holds every figure."""
import importlib.util
import json
import os

import numpy as np
import pytest

from gpups import bench, cli

SCENARIO_KEYS = {"id", "model", "data", "utype", "freq", "k", "servers", "batchsize", "device", "epochs",
                 "samples_per_s", "epochs_to_target", "seconds_to_target", "final_accuracy", "final_loss",
                 "server_share", "staleness_mean", "staleness_max", "peak_host_bytes", "peak_device_bytes",
                 "params", "history", "wall_seconds"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert cli.main(["bench", "--quick", "--device", "cpu", "--out", str(out)]) == 0
    return out, json.loads((out / "bench.json").read_text())


def test_quick_preset_runs_every_scenario(quick):
    out, doc = quick
    assert doc["schema"] == bench.SCHEMA and doc["preset"] == "quick"
    expected = [s.id for s in bench.presets("quick", gpu=False)]
    assert [r["id"] for r in doc["scenarios"]] == expected
    for r in doc["scenarios"]:
        assert SCENARIO_KEYS <= set(r), SCENARIO_KEYS - set(r)
        assert r["samples_per_s"] > 0 and 0 <= r["server_share"] <= 1.5
        assert r["final_accuracy"] > 0.5 and len(r["history"]) == r["epochs"]
        assert r["peak_host_bytes"] > 0 and r["peak_device_bytes"] is None
        if r["utype"] in ("BSP", "SBP"):
            assert r["staleness_max"] == 0
    for key in ("cpu", "cores", "python", "numpy", "numba", "platform"):
        assert doc["machine"][key]
    base = doc["baselines"]
    assert base["plain_loop_samples_per_s"] > 0
    assert 0.05 < base["aggregation_fraction_of_copy"] < 5
    assert "torch_eager_samples_per_s" in base or "torch_skipped" in base


def test_quick_preset_writes_plots_when_matplotlib_is_there(quick):
    pytest.importorskip("matplotlib")
    out, _ = quick
    assert (out / "throughput_vs_k.png").stat().st_size > 1000
    assert (out / "accuracy_vs_time.png").stat().st_size > 1000


def test_compare_prints_ratios(quick, tmp_path, capsys):
    out, doc = quick
    doc2 = json.loads(json.dumps(doc))
    for r in doc2["scenarios"]:
        r["samples_per_s"] *= 2
    (tmp_path / "b.json").write_text(json.dumps(doc2))
    assert cli.main(["bench", "--compare", str(out / "bench.json"), str(tmp_path / "b.json")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 + len(doc["scenarios"])
    assert all(line.split()[-1] == "2.00" for line in lines[1:])
    (tmp_path / "bad.json").write_text("{}")
    assert cli.main(["bench", "--compare", str(out / "bench.json"), str(tmp_path / "bad.json")]) == 2


def test_presets_and_grid():
    gpu = bench.presets("gpu", gpu=True)
    assert {(s.utype, s.k) for s in gpu} >= {("BSP", 8), ("ASP", 8), ("HOGWILD", 8)}
    assert all(s.model == "mlp:784-512-512-10" and s.batchsize == 256 for s in gpu)
    scaling = bench.presets("scaling", gpu=False)
    assert [s.k for s in scaling[:5]] == [1, 2, 4, 8, 16]
    for target, spec in zip((10 ** 5, 10 ** 6, 10 ** 7), [s.model for s in scaling[5:]]):
        sizes = [int(v) for v in spec[4:].split("-")]
        params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
        assert 0.9 * target < params < 1.1 * target
    with pytest.raises(ValueError, match="preset='huge'"):
        bench.presets("huge", gpu=False)
    args = cli_args(["bench", "--models", "softmax,mlp:784-32-10", "--utypes", "BSP,ASP", "--k", "1,2,4"])
    assert len(bench.grid(args)) == 2 * 2 * 3


def test_gpu_preset_without_a_gpu_is_named(capsys):
    assert cli.main(["bench", "--gpu", "--device", "cpu"]) == 2
    assert "--gpu needs CuPy and a CUDA device" in capsys.readouterr().err


def cli_args(argv):
    import argparse
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    bench.bench_parser(sub)
    return p.parse_args(argv)


def test_torch_lines_run_and_k1_is_pytorchs_own_arithmetic(tmp_path, capsys):
    """gpups bench --torch: every line runs; at k=1 the adapter is PyTorch's SGD-momentum loop, so
    the two reach the same validation accuracy on the same batches."""
    pytest.importorskip("torch")
    assert cli.main(["bench", "--torch", "--data", "synthetic:192", "--epochs", "1", "--batch", "32",
                     "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "torch.json").read_text())
    lines = {r["line"]: r for r in doc["lines"]}
    assert len(lines) == 6 and all(r["samples_per_s"] > 0 for r in lines.values())
    assert lines["gpups.torch k=1 BSP"]["val_accuracy"] == lines["PyTorch loop (SGD momentum)"]["val_accuracy"]
    assert doc["preset"] == "torch" and doc["batchsize"] == 32
    assert "vs PyTorch" in capsys.readouterr().out


def test_ctr_lines_run_side_by_side(tmp_path, capsys):
    """gpups bench --ctr: DLRM with sparse tables and the same model in PyTorch, each line with
    its AUC after every epoch (the AUC-against-time plot), samples/s, row updates/s, peak RSS."""
    pytest.importorskip("torch")
    assert cli.main(["bench", "--ctr", "--ctr-n", "3000", "--ctr-rows", "200", "--ctr-tables", "3", "--epochs", "2",
                     "--k", "2", "--batch", "64", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "ctr.json").read_text())
    lines = {r["line"]: r for r in doc["lines"]}
    assert set(lines) == {"gpups", "pytorch"}
    for r in lines.values():
        assert r["samples_per_s"] > 0 and 0.5 < r["auc"] <= 1 and r["peak_rss_mb"] > 0
        assert len(r["curve"]) == 2 and r["curve"][0][0] < r["curve"][1][0] and r["curve"][1][1] == r["auc"]
    assert lines["gpups"]["row_updates_per_s"] > 0 and doc["config"]["k"] == 2 and doc["config"]["batch"] == 64
    assert doc["ratio_samples_per_s"] == lines["gpups"]["samples_per_s"] / lines["pytorch"]["samples_per_s"]
    assert 0.5 < doc["ceiling"]["auc"] < 1 and (tmp_path / "ctr_auc.png").exists()
    assert "gpups / PyTorch" in capsys.readouterr().out


def test_ctr_seeds_report_the_means_and_the_aucs_spread(tmp_path, capsys):
    """--ctr-seeds 2: each line once per seed (other data, model and order), the figures the
    means of the runs kept in per_seed, the AUC with its standard deviation."""
    pytest.importorskip("torch")
    assert cli.main(["bench", "--ctr", "--ctr-n", "2000", "--ctr-rows", "100", "--ctr-tables", "2", "--epochs", "1",
                     "--k", "2", "--batch", "64", "--ctr-seeds", "2", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "ctr.json").read_text())
    assert len(doc["per_seed"]) == 2 and all(len(r) == 2 for r in doc["per_seed"])
    for i, ln in enumerate(doc["lines"]):
        aucs = [r[i]["auc"] for r in doc["per_seed"]]
        assert aucs[0] != aucs[1] and ln["seeds"] == 2
        assert ln["auc"] == pytest.approx(np.mean(aucs)) and ln["auc_sd"] == pytest.approx(np.std(aucs, ddof=1))
    assert "means over 2 seeds" in capsys.readouterr().out
    assert cli.main(["bench", "--ctr", "--ctr-seeds", "0", "--out", str(tmp_path)]) != 0
    assert "--ctr-seeds 0 is not allowed" in capsys.readouterr().err


def test_trace_writes_each_scenarios_timeline_and_pictures(tmp_path):
    """gpups bench --trace: a trace file per scenario, counting that scenario's pushes."""
    from gpups.trace import load

    assert cli.main(["bench", "--models", "softmax", "--data", "synthetic:600:16", "--utypes", "BSP,ASP",
                     "--k", "2", "--epochs", "2", "--device", "cpu", "--no-baselines", "--trace",
                     "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert len(doc["scenarios"]) == 2
    for i, r in enumerate(doc["scenarios"]):
        assert r["trace"] == str(tmp_path / "traces" / f"{i}.trace.json")
        intervals = [e for e in load(r["trace"]) if e.get("name") == "interval"]
        assert len(intervals) == sum(sum(h["pushes"]) for h in r["history"])
        if importlib.util.find_spec("matplotlib"):  # (the plot extra: a Gantt chart, and staleness where it varies)
            assert r["trace_pngs"] and all(os.path.getsize(p) > 1000 for p in r["trace_pngs"])
