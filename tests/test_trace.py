"""The timeline (paramserv(trace=...)): the file parses as Chrome trace-event JSON, every worker
and shard has its track, and the events count what the history counts."""
import collections
import json

import numpy as np
import pytest

import gpups
from gpups.trace import load
from helpers import small_net


def problem(n=240):
    rng = np.random.default_rng(4)
    return rng.standard_normal((n, 6)), rng.integers(0, 3, n)


@pytest.mark.parametrize("utype", ["BSP", "ASP", "SSP", "SBP", "HOGWILD"])
def test_the_trace_has_a_track_per_worker_and_shard_and_counts_the_pushes(tmp_path, utype):
    X, y = problem()
    path = tmp_path / "run.trace.json"
    net = small_net()
    res = gpups.paramserv(net.init(0, dtype=np.float64), X, y, upd=net.gradients, utype=utype, k=3, servers=2,
                          batchsize=10, epochs=2, device="cpu", progress=False, trace=str(path))
    doc = json.loads(path.read_text())
    assert doc["displayTimeUnit"] == "ms"
    events = load(str(path))
    tracks = {e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert tracks == {"worker 0", "worker 1", "worker 2", "server shard 0", "server shard 1"}
    count = collections.Counter(e["name"] for e in events)
    pushes = sum(sum(h["pushes"]) for h in res.history)
    assert count["interval"] == pushes and count["epoch"] == 2 and count["samples/s"] == 2
    per_worker = collections.Counter(e["tid"] for e in events if e["name"] == "interval")
    assert [per_worker[j] for j in range(3)] == [sum(h["pushes"][j] for h in res.history) for j in range(3)]
    applies = count["apply"]
    if utype in ("ASP", "SSP", "HOGWILD"):  # each push is one update of every shard
        assert applies == 2 * pushes
    if utype == "BSP":
        assert applies == 2 * 8 * 2  # 8 rounds an epoch, 2 shards, 2 epochs
    if utype in ("ASP", "SSP"):
        assert count["staleness"] == pushes
    spans = [e for e in events if e.get("ph") == "X"]
    assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in spans)
    for j in range(3):  # each interval names its batches: consecutive runs from batch 1 in each epoch
        ivs = [e for e in spans if e["name"] == "interval" and e["tid"] == j]
        assert all(e["pid"] == 1 and e["args"]["batches"] == 1 for e in ivs)
        firsts = [e["args"]["first"] for e in sorted(ivs, key=lambda e: e["ts"])]
        per_epoch = len(firsts) // 2
        assert firsts == list(range(1, per_epoch + 1)) * 2
    pulls = collections.Counter(e["tid"] for e in spans if e["name"] == "pull")
    assert all(e["pid"] == 2 for e in spans if e["name"] in ("pull", "apply"))  # the server's tracks
    if utype in ("SSP", "SBP"):  # every pull copies from both shards
        assert pulls == {0: count["pull wait"], 1: count["pull wait"]}
    if utype == "ASP":  # a worker's first pull of an epoch copies; the others are fused with the update
        assert set(pulls) == {0, 1} and pulls[0] == pulls[1] >= 3
    if utype in ("BSP", "HOGWILD"):  # BSP computes on the server's parameters; HOGWILD reads them live
        assert not pulls
    if utype != "HOGWILD":  # (a pull before each interval; HOGWILD reads the live parameters)
        waits = [e for e in spans if e["name"] == "pull wait"]
        assert {e["tid"] for e in waits} == {0, 1, 2} and len(waits) <= pushes
        for j in range(3):  # a worker's pull waits and intervals do not overlap
            mine = sorted((e["ts"], e["ts"] + e["dur"]) for e in spans if e["pid"] == 1 and e["tid"] == j)
            assert all(a[1] <= b[0] + 1e-3 for a, b in zip(mine, mine[1:]))


def test_the_cli_writes_the_trace_and_its_pictures(tmp_path):
    pytest.importorskip("matplotlib")
    from gpups.cli import main

    trace = tmp_path / "t.json"
    rc = main(["train", "--model", "mlp", "--hidden", "8", "--data", "synthetic:600:10", "--epochs", "2",
               "--utype", "ASP", "--device", "cpu", "--out", str(tmp_path / "out"), "--quiet", "--trace", str(trace)])
    assert rc == 0 and trace.exists()
    assert (tmp_path / "out" / "timeline.png").stat().st_size > 1000
    assert (tmp_path / "out" / "timeline_staleness.png").stat().st_size > 1000


def test_a_bad_trace_path_is_named_before_work(tmp_path):
    X, y = problem()
    net = small_net()
    with pytest.raises(ValueError, match=r"trace='.*' is not allowed: expected a file path"):
        gpups.paramserv(net.init(0), X, y, upd=net.gradients, batchsize=10, device="cpu", progress=False,
                        trace=str(tmp_path))


def test_the_run_track_has_each_epoch_span_and_its_samples_per_s(tmp_path):
    """One "epoch" span per epoch on the run's track (its number, lasting the epoch's seconds,
    ending where the samples/s counter of that epoch stands, with the history's figure)."""
    from gpups.trace import RUN

    X, y = problem()
    path = tmp_path / "run.trace.json"
    net = small_net()
    res = gpups.paramserv(net.init(0, dtype=np.float64), X, y, upd=net.gradients, k=2, batchsize=10, epochs=3,
                          device="cpu", progress=False, trace=str(path))
    events = load(str(path))
    epochs = sorted((e for e in events if e["name"] == "epoch"), key=lambda e: e["ts"])
    counters = sorted((e for e in events if e["name"] == "samples/s"), key=lambda e: e["ts"])
    assert [e["args"]["epoch"] for e in epochs] == [1, 2, 3]
    assert all(e["pid"] == RUN and e["tid"] == 0 and e["ph"] == "X" for e in epochs)
    for span, ctr, rec in zip(epochs, counters, res.history):
        assert ctr["pid"] == RUN and ctr["args"]["samples_per_s"] == pytest.approx(rec["samples_per_s"])
        assert span["dur"] == pytest.approx(rec["seconds"] * 1e6, abs=2.0)
        assert span["ts"] + span["dur"] == pytest.approx(ctr["ts"], abs=2.0)
    assert [e["args"]["epoch"] for e in epochs] == [1, 2, 3] and len(counters) == 3
