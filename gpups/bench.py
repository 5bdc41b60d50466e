"""``gpups bench``: a grid of training scenarios, measured side by side with baselines.

Each scenario is one ``paramserv`` run (model x data x utype x freq x k x servers x batch size x
device). Reported per scenario: samples/s (median over the epochs after the first, which warms
up compilation and graph capture), time and epochs to a target validation accuracy (training
time from the start, warm-up included), final accuracy, the server's share of the training time
(CPU: update kernels timed in place, per worker thread for HOGWILD; GPU: the fused update timed
alone times the number of updates), observed staleness, and peak memory: the host's on the CPU
(tracemalloc, which sees numpy's buffers), the device's on a GPU (CuPy's pool). A GPU run is not
traced: tracing every host allocation slows the one thread that drives all the streams.
Baselines in the same run: a plain single-worker loop of the same model, PyTorch's eager
loop (and its CUDA graph on a GPU) when torch imports, and the fused aggregation kernel against
the device's copy bandwidth. Output: a table, JSON, and PNG plots when matplotlib is installed.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from . import sync

SCHEMA = 1


@dataclass(frozen=True)
class Scenario:
    model: str = "mlp:784-128-10"      # softmax | mlp:SIZES | lenet
    data: str = "synthetic:8000"       # synthetic:N[:D] | mnist5k | digits
    utype: str = "BSP"
    freq: str = "BATCH"
    k: int = 2
    servers: int = 1
    batchsize: int = 64
    device: str = "auto"
    epochs: int = 3
    agg: str = "momentum"
    lr: float = 0.05
    target: float = 0.8                # validation accuracy whose time-to is reported

    @property
    def id(self) -> str:
        return (f"{self.model}|{self.data}|{self.utype}|{self.freq}|k{self.k}|s{self.servers}|"
                f"b{self.batchsize}|{self.device}")


def presets(name: str, gpu: bool) -> list[Scenario]:
    """The scenario grids behind ``--quick``, ``--gpu`` and ``--scaling``."""
    dev = "cuda" if gpu else "cpu"
    if name == "quick":  # under a minute on 2 CPU cores
        grid = [Scenario(model=m, data="synthetic:6000:196", utype=u, k=2, batchsize=64, epochs=3,
                         device=dev, target=0.7)
                for m in ("softmax", "mlp:196-64-10") for u in ("BSP", "ASP", "SSP", "SBP", "HOGWILD")]
        grid += [Scenario(model="mlp:784-64-10", data="mnist5k", utype="BSP", k=k, epochs=3, device=dev,
                          target=0.85) for k in (1, 4)]
        grid.append(Scenario(model="mlp:196-64-10", data="synthetic:6000:196", freq="NBATCHES", k=2,
                             servers=2, epochs=3, device=dev, target=0.7))
        return grid
    if name == "gpu":  # DESIGN.md's headline: MLP 784-512-512-10, batch 256 per worker, momentum
        mlp = "mlp:784-512-512-10"
        return [Scenario(model=mlp, data="synthetic:409600", utype=u, k=k, batchsize=256, epochs=3,
                         device=dev, lr=0.01, target=0.5)
                for u, k in (("BSP", 1), ("BSP", 8), ("ASP", 8), ("HOGWILD", 8), ("SSP", 8))]
    if name == "scaling":
        ks = [Scenario(model="mlp:784-256-10", data=f"synthetic:{(32768 if gpu else 8192)}", utype="BSP",
                       k=k, batchsize=256 if gpu else 64, epochs=3, device=dev, target=0.5)
              for k in (1, 2, 4, 8, 16)]
        sizes = (10 ** 5, 10 ** 6, 10 ** 7, 10 ** 8) if gpu else (10 ** 5, 10 ** 6, 10 ** 7)
        grown = [Scenario(model=f"mlp:{mlp_sizes(p)}", data="synthetic:4096", utype="BSP", k=4,
                          batchsize=256 if gpu else 64, epochs=2, device=dev, target=0.5) for p in sizes]
        return ks + grown
    raise ValueError(f"preset={name!r} is not allowed: expected one of ('quick', 'gpu', 'scaling')")


def mlp_sizes(params: int, d: int = 784, classes: int = 10) -> str:
    """MLP d-h-h-classes with about ``params`` parameters."""
    # h^2 + h (d + classes + 2) + classes - params = 0
    b = d + classes + 2
    h = max(1, int((-b + (b * b + 4 * (params - classes)) ** 0.5) / 2))
    return f"{d}-{h}-{h}-{classes}"


# -- one scenario -----------------------------------------------------------------------------
def run_scenario(sc: Scenario, trace: str | None = None) -> dict[str, Any]:
    """One scenario's figures; ``trace``: also write its timeline there (``paramserv(trace=...)``)."""
    import gpups

    from . import datasets, models
    from .device import resolve

    dev = resolve(sc.device)
    data = datasets.from_spec(sc.data, image=sc.model == "lenet")
    net = models.for_data(sc.model, data)
    xp = dev.xp
    X, y, Xv, yv = (xp.asarray(a) for a in (data.X, data.y, data.Xv, data.yv))
    policy = sync.resolve(sc.utype).typical()  # (SSP: staleness 2, SBP: 1 backup worker)
    gc.collect()
    pool = _device_pool(dev)
    traced = dev.host_memory  # on a GPU tracing every host allocation slows the async scheduler
    if traced:
        tracemalloc.start()
    t0 = time.perf_counter()
    res = gpups.paramserv(net.init(0, device="cuda" if not dev.host_memory else "cpu"), X, y,
                          upd=net.gradients, agg=sc.agg, utype=policy, freq=sc.freq,
                          nbatches=2 if sc.freq == "NBATCHES" else 1, k=sc.k, servers=sc.servers,
                          batchsize=sc.batchsize, epochs=sc.epochs, hyperparams={"lr": sc.lr},
                          val_features=Xv, val_labels=yv, device=sc.device, progress=False, trace=trace)
    wall = time.perf_counter() - t0
    host_peak = None
    if traced:
        host_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    hist = res.history
    rates = [r["samples_per_s"] for r in hist[1:]] or [hist[0]["samples_per_s"]]
    elapsed, reached = 0.0, None
    for r in hist:
        elapsed += r["seconds"]
        if reached is None and r.get("val_accuracy", 0) >= sc.target:
            reached = (r["epoch"], elapsed)
    steady = hist[1:] or hist  # the first epoch compiles kernels and captures graphs
    train_s = sum(r["seconds"] for r in steady)
    if "server_seconds" in hist[0]:
        share = sum(r["server_seconds"] for r in steady) / train_s
        if policy.unlocked:  # the updates run on the k worker threads at once
            share /= sc.k
    else:  # GPU: updates timed alone, as many as the steady epochs made
        share = _gpu_update_seconds(dev, net, sc, steady) / train_s
    return {
        "id": sc.id, **dataclasses.asdict(sc), "device_name": res.device,
        "params": int(sum(int(np.prod(s)) for s in net.shapes().values())),
        "samples_per_s": float(statistics.median(rates)),
        "epochs_to_target": reached[0] if reached else None,
        "seconds_to_target": reached[1] if reached else None,
        "final_accuracy": hist[-1].get("val_accuracy"),
        "final_loss": hist[-1]["loss"],
        "server_share": float(share),
        "staleness_mean": float(np.mean([np.mean(r["staleness_mean"]) for r in hist])),
        "staleness_max": int(max(max(r["staleness_max"]) for r in hist)),
        "peak_host_bytes": host_peak,
        "peak_device_bytes": _device_peak(pool),
        "wall_seconds": wall,
        "graphs": res.graphs,
        "trace": trace,
        "history": hist,
    }


def _device_pool(dev: Any) -> Any:
    if dev.host_memory:
        return None
    pool = dev.xp.get_default_memory_pool()
    pool.free_all_blocks()
    return pool


def _device_peak(pool: Any) -> int | None:
    return None if pool is None else int(pool.total_bytes())


def _gpu_update_seconds(dev: Any, net: Any, sc: Scenario, hist: list) -> float:
    import cupy as cp

    n = sum(int(np.prod(s)) for s in net.shapes().values())
    G = cp.random.random((sc.k, n), dtype=cp.float32)
    w, v = cp.zeros(n, cp.float32), cp.zeros(n, cp.float32)
    rows, bad = cp.arange(sc.k, dtype=cp.int64), cp.zeros(sc.k, cp.int64)
    fn = dev.kernels.UPDATES["momentum"][0]
    rounds = sync.resolve(sc.utype).rounds  # an update aggregates k pushes, else one
    nrows = sc.k if rounds else 1
    t = _time(lambda: fn(G, rows[:nrows], bad, 1.0 / sc.k, w, v, 0.01, 0.9), cp.cuda.Device().synchronize)
    updates = sum(sum(r["pushes"]) for r in hist)
    if rounds:
        updates /= sc.k
    return t * updates


def _time(fn: Callable[[], Any], sync: Callable[[], Any], reps: int = 20, warm: int = 10) -> float:
    """Median over 3 repeats of the mean time of ``reps`` calls, after ``warm`` calls."""
    for _ in range(warm):
        fn()
    sync()
    ts = []
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        ts.append((time.perf_counter() - t) / reps)
    return float(np.median(ts))


# -- baselines --------------------------------------------------------------------------------
def baselines(device: str, model: str = "mlp:784-512-512-10", batch: int = 256) -> dict[str, Any]:
    """Plain single-worker loop, PyTorch eager (and CUDA graph), aggregation vs copy bandwidth."""
    from .device import resolve

    dev = resolve(device)
    out: dict[str, Any] = {"model": model, "batchsize": batch, "device": dev.describe()}
    for name, fn in (("plain_loop", _plain_loop), ("torch", torch_baselines), ("aggregation", aggregation_bandwidth)):
        try:
            out.update(fn(dev, model, batch))
        except ImportError as exc:
            out[f"{name}_skipped"] = str(exc)
    return out


def _plain_loop(dev: Any, model: str, batch: int) -> dict[str, float]:
    """The same model, one worker, no server: gradient then in-place momentum, in xp."""
    xp = dev.xp
    sizes = [int(s) for s in model[4:].split("-")]
    from .models import MLP

    net = MLP(sizes)
    p = net.init(0, device="cuda" if not dev.host_memory else "cpu")
    v = {k: xp.zeros_like(a) for k, a in p.items()}
    rng = np.random.default_rng(0)
    X = xp.asarray(rng.standard_normal((batch * 8, sizes[0]), dtype=np.float32))
    Y = xp.asarray(rng.integers(0, sizes[-1], batch * 8))
    it = [0]

    def step() -> None:
        i = it[0] % 8
        it[0] += 1
        g, _ = net.gradients(p, X[i * batch:(i + 1) * batch], Y[i * batch:(i + 1) * batch], {})
        for k in p:
            v[k] *= 0.9
            v[k] += g[k]
            p[k] -= 0.01 * v[k]
    sync = (lambda: xp.cuda.Device().synchronize()) if not dev.host_memory else (lambda: None)
    return {"plain_loop_samples_per_s": batch / _time(step, sync, reps=20 if dev.host_memory else 100)}


def torch_baselines(dev: Any, model: str, batch: int) -> dict[str, float]:
    import torch

    sizes = [int(s) for s in model[4:].split("-")]
    td = "cuda" if not dev.host_memory else "cpu"
    layers: list[Any] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    m = torch.nn.Sequential(*layers[:-1]).to(td)
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    X = torch.randn(batch * 8, sizes[0], device=td)
    Y = torch.randint(0, sizes[-1], (batch * 8,), device=td)
    lf = torch.nn.CrossEntropyLoss()
    it = [0]

    def step() -> None:
        i = it[0] % 8
        it[0] += 1
        opt.zero_grad(set_to_none=False)
        lf(m(X[i * batch:(i + 1) * batch]), Y[i * batch:(i + 1) * batch]).backward()
        opt.step()
    sync = torch.cuda.synchronize if td == "cuda" else (lambda: None)
    out = {"torch_eager_samples_per_s": batch / _time(step, sync, reps=20 if td == "cpu" else 100)}
    if td == "cuda":
        xs, ys = X[:batch].clone(), Y[:batch].clone()

        def gstep() -> None:
            opt.zero_grad(set_to_none=False)
            lf(m(xs), ys).backward()
            opt.step()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                gstep()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            gstep()
        out["torch_graph_samples_per_s"] = batch / _time(g.replay, sync, reps=300)
    return out


def aggregation_bandwidth(dev: Any, model: str, batch: int) -> dict[str, float]:
    """Fused aggregate+momentum over k=8 buffers vs a plain copy: effective bytes / time."""
    xp = dev.xp
    n = (32 << 20) if not dev.host_memory else (4 << 20)
    k = 8
    rng = np.random.default_rng(0)
    G = xp.asarray(rng.random((k, n), dtype=np.float32))
    w, v = xp.zeros(n, xp.float32), xp.zeros(n, xp.float32)
    a, b = xp.asarray(rng.random(n * 4, dtype=np.float32)), xp.empty(n * 4, xp.float32)
    rows, bad = xp.asarray(np.arange(k, dtype=np.int64)), xp.zeros(k, xp.int64)
    sync = (lambda: xp.cuda.Device().synchronize()) if not dev.host_memory else (lambda: None)
    t_copy = _time(lambda: xp.copyto(b, a), sync)
    fn = dev.kernels.UPDATES["momentum"][0]
    t_agg = _time(lambda: fn(G, rows, bad, np.float32(1 / k), w, v, np.float32(0.01), np.float32(0.9)), sync)
    copy_bw = 2 * a.nbytes / t_copy
    agg_bw = (k + 4) * n * 4 / t_agg
    return {"copy_GBps": copy_bw / 1e9, "aggregation_GBps": agg_bw / 1e9,
            "aggregation_fraction_of_copy": agg_bw / copy_bw, "aggregation_elements": n, "aggregation_k": k}


# -- machine, output --------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                            "numpy": np.__version__, "platform": platform.platform()}
    try:
        import numba

        info["numba"] = numba.__version__
    except ImportError:
        info["numba"] = None
    try:
        import cupy

        info["cupy"] = cupy.__version__
        info["gpu"] = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    except Exception:
        info["gpu"] = None
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def table(results: Sequence[dict[str, Any]]) -> str:
    head = (f"{'model':20} {'data':18} {'utype':8} {'freq':8} {'k':>3} {'s':>2} {'batch':>5} "
            f"{'samples/s':>11} {'acc':>6} {'to target':>10} {'server':>7} {'stale':>6} {'host MB':>8}")
    lines = [head, "-" * len(head)]
    for r in results:
        tt = f"{r['seconds_to_target']:.2f}s" if r["seconds_to_target"] is not None else "-"
        acc = f"{r['final_accuracy']:.3f}" if r["final_accuracy"] is not None else "-"
        host = f"{r['peak_host_bytes'] / 1e6:>8.1f}" if r["peak_host_bytes"] is not None else f"{'-':>8}"
        lines.append(f"{r['model'][:20]:20} {r['data'][:18]:18} {r['utype']:8} {r['freq']:8} {r['k']:>3} "
                     f"{r['servers']:>2} {r['batchsize']:>5} {r['samples_per_s']:>11,.0f} {acc:>6} {tt:>10} "
                     f"{100 * r['server_share']:>6.1f}% {r['staleness_max']:>6} {host}")
    return "\n".join(lines)


def plots(results: Sequence[dict[str, Any]], folder: str) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    by_k: dict[tuple, list] = {}
    for r in results:
        by_k.setdefault((r["model"], r["data"], r["utype"], r["freq"]), []).append(r)
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for key, rs in by_k.items():
        ks = sorted({r["k"] for r in rs})
        if len(ks) > 1:
            pts = sorted((r["k"], r["samples_per_s"]) for r in rs)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{key[0]} {key[2]}")
            drawn = True
    if drawn:
        ax.set_xlabel("workers k"), ax.set_ylabel("samples/s"), ax.set_title("throughput vs k")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(folder, "throughput_vs_k.png")
        fig.savefig(path, dpi=90)
        written.append(path)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        t = np.cumsum([h["seconds"] for h in r["history"]])
        acc = [h.get("val_accuracy") for h in r["history"]]
        if acc[0] is not None:
            ax.plot(t, acc, "o-", label=f"{r['model']} {r['utype']} k={r['k']}")
    ax.set_xlabel("training seconds"), ax.set_ylabel("validation accuracy"), ax.set_title("accuracy vs time")
    ax.legend(fontsize=6)
    fig.tight_layout()
    path = os.path.join(folder, "accuracy_vs_time.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return written + [path]


def progress(i: int, n: int, label: str, stream: Any = sys.stderr) -> None:
    width = 24
    done = int(width * i / n)
    stream.write(f"\r[{'#' * done}{'-' * (width - done)}] {i}/{n} {label[:60]:60}")
    if i == n:
        stream.write("\n")
    stream.flush()


def compare(a_path: str, b_path: str) -> str:
    """Ratio of samples/s of the scenarios two runs share (b / a)."""
    a, b = (json.load(open(p)) for p in (a_path, b_path))
    for name, doc in ((a_path, a), (b_path, b)):
        if doc.get("schema") != SCHEMA:
            raise ValueError(f"{name} is not a gpups bench JSON of schema {SCHEMA}")
    rb = {r["id"]: r for r in b["scenarios"]}
    lines = [f"{'scenario':70} {'a samples/s':>12} {'b samples/s':>12} {'b/a':>6}"]
    shared = 0
    for r in a["scenarios"]:
        other = rb.get(r["id"])
        if other is None:
            continue
        shared += 1
        lines.append(f"{r['id'][:70]:70} {r['samples_per_s']:>12,.0f} {other['samples_per_s']:>12,.0f} "
                     f"{other['samples_per_s'] / r['samples_per_s']:>6.2f}")
    if not shared:
        lines.append("(no scenario in common)")
    return "\n".join(lines)


# -- command line -----------------------------------------------------------------------------
def bench_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmark a grid of scenarios beside baselines",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="small grid, under a minute on 2 CPU cores")
    g.add_argument("--gpu", action="store_true", help="DESIGN.md's headline scenarios on the GPU")
    g.add_argument("--scaling", action="store_true", help="samples/s as k and the model grow")
    g.add_argument("--torch", action="store_true",
                   help="LeNet as a torch.nn.Module through gpups.torch beside PyTorch's own loop (needs torch)")
    g.add_argument("--ctr", action="store_true",
                   help="DLRM with sparse tables on synthetic_ctr beside the same model in PyTorch (needs torch "
                        "for its line); sizes from --ctr-n, --ctr-rows, --ctr-tables, and --k (the last), --batch, "
                        "--epochs, --utypes (the first)")
    g.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"), help="ratio of two runs")
    p.add_argument("--models", default="mlp:784-128-10", help="comma list: softmax, lenet, mlp:784-128-10")
    p.add_argument("--data", default="synthetic:8000", help="comma list: synthetic:N[:D], mnist5k, digits")
    p.add_argument("--utypes", default="BSP,ASP")
    p.add_argument("--freqs", default="BATCH")
    p.add_argument("--k", default="1,2", help="comma list of worker counts")
    p.add_argument("--servers", default="1")
    p.add_argument("--batch", default="64")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--target", type=float, default=0.8)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--trace", action="store_true",
                   help="write each scenario's timeline (traces/N.trace.json) and its Gantt chart and staleness PNGs")
    p.add_argument("--ctr-n", type=int, default=100_000, help="--ctr: rows of synthetic_ctr")
    p.add_argument("--ctr-rows", type=int, default=1_000_000, help="--ctr: rows per table")
    p.add_argument("--ctr-tables", type=int, default=8, help="--ctr: tables (categorical features)")
    p.add_argument("--ctr-seeds", type=int, default=1,
                   help="--ctr: run each line with this many seeds (data, model, order) and report the means, "
                        "with the AUC's standard deviation")
    p.add_argument("--out", default="runs/bench", help="folder for bench.json and plots")


def grid(args: Any) -> list[Scenario]:
    """The scenarios of a grid, every spec checked before the first one runs."""
    from .cli import ints
    from .datasets import parse_spec
    from .models import check_spec

    split = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    for m in split(args.models):
        check_spec(m)
    for d in split(args.data):
        parse_spec(d)
    return [Scenario(model=m, data=d, utype=u, freq=f, k=k, servers=s, batchsize=b,
                     device=args.device, epochs=args.epochs, target=args.target)
            for m in split(args.models) for d in split(args.data) for u in split(args.utypes)
            for f in split(args.freqs) for k in ints("--k", args.k) for s in ints("--servers", args.servers)
            for b in ints("--batch", args.batch)]


def main(args: Any) -> dict[str, Any] | None:
    if args.compare:
        print(compare(*args.compare))
        return None
    if args.torch:
        return torch_main(args)
    if args.ctr:
        from .bench_ctr import main as ctr_main

        return ctr_main(args)
    from .device import cuda_available

    gpu = cuda_available() if args.device == "auto" else args.device != "cpu"
    preset = "quick" if args.quick else "gpu" if args.gpu else "scaling" if args.scaling else "grid"
    if preset == "gpu" and not gpu:
        raise ValueError("--gpu needs CuPy and a CUDA device; use --quick or --scaling on the CPU")
    scenarios = grid(args) if preset == "grid" else presets(preset, gpu)
    results = []
    traces = os.path.join(args.out, "traces")
    if args.trace:
        os.makedirs(traces, exist_ok=True)
    for i, sc in enumerate(scenarios):
        progress(i, len(scenarios), sc.id)
        results.append(run_scenario(sc, os.path.join(traces, f"{i}.trace.json") if args.trace else None))
        if args.trace:
            from .trace import plot as plot_trace

            results[-1]["trace_pngs"] = plot_trace(results[-1]["trace"], os.path.join(traces, f"{i}.png"))
    progress(len(scenarios), len(scenarios), "done")
    base = None
    if not args.no_baselines:
        model, batch = ("mlp:784-512-512-10", 256) if gpu else ("mlp:784-256-10", 64)
        progress(len(scenarios), len(scenarios), "baselines")
        base = baselines("cuda" if gpu else "cpu", model, batch)
    doc = {"schema": SCHEMA, "preset": preset, "machine": machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "scenarios": results, "baselines": base}
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "bench.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, default=float)
    print(table(results))
    if base:
        print("baselines (" + base["model"] + f", batch {base['batchsize']}, {base['device']}): " + ", ".join(
            f"{k} {v:,.3g}" for k, v in base.items() if isinstance(v, float)))
    written = plots(results, args.out)
    print(f"wrote {path}" + "".join(f", {p}" for p in written))
    return doc


def torch_main(args: Any) -> dict[str, Any]:
    """``gpups bench --torch``: :mod:`gpups.bench_torch`'s lines, a table and ``torch.json``."""
    from .bench_torch import run as run_torch_lines
    from .bench_torch import table as torch_table
    from .cli import ints

    data = args.data.split(",")[0]
    batch = ints("--batch", args.batch)[0]
    lines = run_torch_lines(data=data, batch=batch, epochs=args.epochs,
                            report=lambda i, n, label: progress(i, n, label))
    doc = {"schema": SCHEMA, "preset": "torch", "machine": machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "data": data, "batchsize": batch, "epochs": args.epochs, "lines": lines}
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "torch.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, default=float)
    print(torch_table(lines))
    print(f"wrote {path}")
    return doc
