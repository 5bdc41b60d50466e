"""One script for a lent GPU machine: GPU tests, then the GPU benchmark, then a short table.

Installs nothing. Run from the repository root after
``pip install --no-deps --no-build-isolation -e .``:

    python benchmarks/gpu_check.py [--skip-tests] [--quick]

Writes ``gpu_check.json`` (and the pytest log) to $OUT (or benchmarks/results/).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback

import numpy as np

OUT = os.environ.get("OUT") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
R: dict = {}


def log(*a):
    print(*a, flush=True)


def run_tests(timeout: int) -> None:
    t = time.time()
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "--maxfail=12", "--tb=short", "-p", "no:cacheprovider",
           "tests/test_gpu.py", "tests/test_kernels.py", "tests/test_gpu_hazards.py"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        out = proc.stdout + proc.stderr
        R["tests_rc"] = proc.returncode
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        R["tests_rc"] = "timeout"
    with open(os.path.join(OUT, "pytest.log"), "w") as f:
        f.write(out)
    lines = out.strip().splitlines()
    R["tests_summary"] = lines[-1] if lines else "no output"
    R["tests_seconds"] = round(time.time() - t, 1)
    if R["tests_rc"] != 0:
        log("\n".join(lines[-60:]))


def sanitizer(timeout: int = 240) -> None:
    """The hazard tests once under compute-sanitizer memcheck, and the update-kernel tests under
    racecheck (skipped, and said so, where the tool is not installed)."""
    import shutil

    tool = shutil.which("compute-sanitizer") or next(
        (p for p in ("/usr/local/cuda/bin/compute-sanitizer", "/opt/cuda/bin/compute-sanitizer") if os.path.exists(p)),
        None)
    if tool is None:
        R["sanitizer"] = "compute-sanitizer not found"
        return
    runs = {"memcheck": ["tests/test_gpu_hazards.py"], "racecheck": ["tests/test_kernels.py", "-k", "update"]}
    for check, target in runs.items():
        cmd = [tool, "--tool", check, "--error-exitcode", "99", sys.executable, "-m", "pytest", "-q", "-m", "gpu",
               "-p", "no:cacheprovider", *target]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout // 2)
            out, rc = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired:
            out, rc = "", "timeout"
        with open(os.path.join(OUT, f"sanitizer_{check}.log"), "w") as f:
            f.write(out)
        errors = [ln for ln in out.splitlines() if "ERROR SUMMARY" in ln or "RACECHECK SUMMARY" in ln]
        R[f"sanitizer_{check}"] = f"rc {rc}; " + ("; ".join(errors[-2:]) or (out.strip().splitlines() or ["-"])[-1])


def bandwidth():
    """The fused aggregate+momentum over 8 buffers of 32 M floats against a plain copy."""
    from gpups.bench import aggregation_bandwidth
    from gpups.device import resolve

    agg = aggregation_bandwidth(resolve("cuda"), "mlp:784-512-512-10", 256)
    R["copy_TBps"] = agg["copy_GBps"] / 1e3
    R["agg_momentum_TBps"] = agg["aggregation_GBps"] / 1e3
    R["agg_fraction_of_copy"] = agg["aggregation_fraction_of_copy"]


def table_rows(rows=10_000_000, dim=16, m=262_144, reps=20):
    """Issue 14: the adagrad row update of m unique rows of a (rows, dim) float32 table against
    a plain gather + scatter of the same rows (what any row update must move at least)."""
    import cupy as cp

    from gpups.kernels import cuda_tables as G

    rng = cp.random.default_rng(0)
    W = rng.standard_normal((rows, dim), dtype=cp.float32)
    H = cp.zeros_like(W)
    u = cp.sort(rng.choice(rows, m, replace=False)).astype(cp.int64)
    g = rng.standard_normal((m, dim), dtype=cp.float32)
    buf = cp.empty_like(g)

    def timed(fn):
        fn()
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        return cp.cuda.get_elapsed_time(start, end) / 1e3 / reps

    def plain():
        G.gather(W, u, buf)
        W[u] = buf

    t_rows = timed(lambda: G.adagrad(W, H, u, g, 1.0, 0.01, 1e-8))
    t_plain = timed(plain)
    nbytes = m * dim * 4
    R["table_adagrad_GBps"] = 5 * nbytes / t_rows / 1e9  # g read; w, h read and written
    R["table_gather_scatter_GBps"] = 4 * nbytes / t_plain / 1e9  # w read, buf written and read, w written
    R["table_adagrad_vs_gather_scatter_time"] = t_rows / t_plain


def user_upd(kind):
    """The MLP's upd as a user writes it: ``"array"``, examples/array_upd.py (CuPy array
    expressions, cupy.matmul; tried under capture); ``"sequential"``, the same layers from gpups.nn."""
    import importlib.util

    import cupy as cp

    from gpups import nn

    if kind == "sequential":
        net = nn.Sequential([nn.Dense(512, "relu"), nn.Dense(512, "relu"), nn.Dense(10)], loss="softmax_ce",
                            input_shape=(784,))
        return net.init(0, device="cuda"), net.gradients
    spec = importlib.util.spec_from_file_location("array_upd", os.path.join(ROOT, "examples", "array_upd.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.init([784, 512, 512, 10], cp), mod.mlp_upd(cp)


def gpups_mlp(utype, k, epochs=3, rounds=400, device="cuda", tag="", upd=None):
    import cupy as cp

    import gpups
    from gpups.models import MLP

    bs = 256
    n = k * bs * rounds
    rs = cp.random.RandomState(0)
    X = rs.standard_normal((n, 784), dtype=cp.float32)
    y = rs.randint(0, 10, n).astype(cp.int64)
    net = MLP([784, 512, 512, 10])
    params, fn = user_upd(upd) if upd else (net.init(0, device="cuda"), net.gradients)
    res = gpups.paramserv(params, X, y, upd=fn, agg="momentum", utype=utype,
                          k=k, batchsize=bs, epochs=epochs, hyperparams={"lr": 0.01, "momentum": 0.9},
                          progress=False, device=device)
    rates = [r["samples_per_s"] for r in res.history[1:]]
    R[f"gpups_{utype}_k{k}{tag}_samples_per_s"] = max(rates)
    R[f"gpups_{utype}_k{k}{tag}_graphs"] = res.graphs
    R[f"gpups_{utype}_k{k}{tag}_final_loss"] = res.history[-1]["loss"]
    del X, y


def torch_loops():
    """PyTorch's eager loop and its step as a CUDA graph, same model and batch."""
    from gpups.bench import torch_baselines
    from gpups.device import resolve

    R.update(torch_baselines(resolve("cuda"), "mlp:784-512-512-10", 256))


def bench_preset(timeout=180):
    """``gpups bench --gpu`` (the bench's GPU preset and its GPU baselines) as a user runs it."""
    out = os.path.join(OUT, "bench_gpu")
    cmd = [sys.executable, "-m", "gpups.cli", "bench", "--gpu", "--out", out]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    R["bench_gpu_rc"] = proc.returncode
    R["bench_gpu_tail"] = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-14:])


def profile(utype):
    """Where the host time goes (cProfile of a short run): top functions by own time."""
    import cProfile
    import io
    import pstats

    pr = cProfile.Profile()
    pr.enable()
    gpups_mlp(utype, 8, epochs=2, rounds=120)
    pr.disable()
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(14)
    text = buf.getvalue()
    with open(os.path.join(OUT, f"profile_{utype}.txt"), "w") as f:
        f.write(text)
    R[f"profile_{utype}"] = "\n".join(line[:150] for line in text.splitlines()[6:26])


def ab(reps=3):
    """Same-run A/B of the speed knobs (public constants of the kernel modules), interleaved,
    BSP and ASP k=8."""
    from gpups.kernels import cuda, cuda_nn

    main = {k: R[k] for k in ("copy_TBps", "agg_momentum_TBps", "agg_fraction_of_copy",
                              "gpups_BSP_k8_samples_per_s", "gpups_ASP_k8_samples_per_s") if k in R}
    variants = {
        "base": {},
        "per_thread_1": {(cuda, "PER_THREAD"): 1},
        "colsum_64": {(cuda_nn, "COLSUM_ROWS"): 64},
        "old": {(cuda_nn, "COLSUM_ROWS"): 4096, (cuda, "PER_THREAD"): 1},
    }
    for r in range(reps):
        for name, knobs in variants.items():
            old = {key: getattr(*key) for key in knobs}
            for (obj, attr), val in knobs.items():
                setattr(obj, attr, val)
            try:
                if r == 0:
                    bandwidth()
                    R[f"ab_agg_fraction_{name}"] = R["agg_fraction_of_copy"]
                for utype in ("BSP", "ASP"):
                    gpups_mlp(utype, 8)
                    R.setdefault(f"ab_{utype}_{name}", []).append(R.pop(f"gpups_{utype}_k8_samples_per_s"))
            finally:
                for (obj, attr), val in old.items():
                    setattr(obj, attr, val)
    R.update(main)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--test-timeout", type=int, default=240)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--profile", action="store_true", help="cProfile the host side of ASP and BSP")
    ap.add_argument("--ab", action="store_true", help="also the A/B of the speed knobs (see ab())")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    import cupy as cp

    R["gpu"] = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    R["cupy"], R["numpy"] = cp.__version__, np.__version__
    log("device", R["gpu"], "cupy", R["cupy"], "numpy", R["numpy"])
    if not args.skip_tests:
        run_tests(args.test_timeout)
        log("tests:", R["tests_summary"], f"({R['tests_seconds']} s)")
    steps = [("bandwidth", bandwidth), ("table rows", table_rows)]
    if not args.skip_tests:
        steps.insert(0, ("compute-sanitizer", sanitizer))
    for utype, k in [("BSP", 1), ("BSP", 8), ("ASP", 8), ("HOGWILD", 8), ("BSP", 16)]:
        steps.append((f"gpups {utype} k={k}", lambda u=utype, kk=k: gpups_mlp(u, kk)))
    # device slots on the one GPU: the cost of the copies a GPU list makes (not a two-GPU figure)
    for utype in ("BSP", "ASP"):
        steps.append((f"gpups {utype} k=8, 2 slots", lambda u=utype: gpups_mlp(u, 8, device=["cuda:0"] * 2,
                                                                            tag="_2slots")))
    for kind in ("array", "sequential"):  # issue 13: a user's upd beside the built-in MLP
        steps.append((f"gpups BSP k=8, {kind} upd", lambda kd=kind: gpups_mlp("BSP", 8, tag=f"_{kd}_upd", upd=kd)))
    steps.append(("torch", torch_loops))
    if not args.quick:
        steps.append(("gpups bench --gpu", bench_preset))
    if args.ab:
        steps.append(("A/B", ab))
    if args.profile:
        steps += [("profile ASP", lambda: profile("ASP")), ("profile BSP", lambda: profile("BSP"))]
    for name, fn in steps:
        t = time.time()
        try:
            fn()
        except Exception:
            R[f"error {name}"] = traceback.format_exc()[-2500:]
            log(f"error in {name}:\n{R[f'error {name}']}")
        log(f"{name}: {time.time() - t:.1f} s")
    with open(os.path.join(OUT, "gpu_check.json"), "w") as f:
        json.dump(R, f, indent=1, default=str)
    log("\n==== gpu_check", R["gpu"], "====")
    log("tests:", R.get("tests_summary", "skipped"))
    for key in sorted(k for k in R if k.startswith("sanitizer")):
        log(f"{key:34} {R[key]}")
    for key in ("copy_TBps", "agg_momentum_TBps", "agg_fraction_of_copy", "table_adagrad_GBps",
                "table_gather_scatter_GBps", "table_adagrad_vs_gather_scatter_time"):
        if key in R:
            log(f"{key:34} {R[key]:10.3f}")
    te = R.get("torch_eager_samples_per_s")
    for key in sorted(k for k in R if k.endswith("samples_per_s")):
        ratio = f"  {R[key] / te:6.1f}x torch eager" if te else ""
        log(f"{key:34} {R[key] / 1e6:10.3f} M{ratio}")
    for key in sorted(k for k in R if k.startswith("ab_")):
        vals = R[key] if isinstance(R[key], list) else [R[key] * 1e6]
        log(f"{key:34} " + "  ".join(f"{v / 1e6:.3f}" for v in vals) + ("" if key.startswith("ab_agg") else " M"))
    for key in sorted(k for k in R if k.endswith("_graphs")):
        log(f"{key:34} {R[key]:10d}")
    if "bench_gpu_rc" in R:
        log(f"--- gpups bench --gpu (rc {R['bench_gpu_rc']})\n{R['bench_gpu_tail']}")
    for key in sorted(k for k in R if k.startswith("profile_")):
        log(f"--- {key}\n{R[key]}")


if __name__ == "__main__":
    main()
