"""CPU speed: one training step of MLP 784-512-512-10 (batch 256, SGD momentum) in gpups (k=1)
beside PyTorch's eager loop and a plain numpy loop; LeNet (batch 64) in gpups at k=1 and k=2 BSP
beside the same network in PyTorch's own loop; plus the SystemDS paramserv configurations.

Each contender runs in its own process (so BLAS/OpenMP thread pools do not interfere), the
contenders alternate for ``--rounds`` rounds, and the median samples/s is reported.

    python benchmarks/cpu_step.py [--rounds 3] [--json benchmarks/results/cpu.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

D_IN, H, D_OUT, BS = 784, 512, 10, 256


def median_rate(fn, batch, reps=60, warm=10, repeats=3):
    for _ in range(warm):
        fn()
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        rates.append(batch * reps / (time.perf_counter() - t))
    return statistics.median(rates)


def data(n=BS * 16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, D_IN), dtype=np.float32), rng.integers(0, 10, n)


def run_gpups():
    import gpups
    from gpups.models import MLP

    X, y = data(BS * 40)
    net = MLP([D_IN, H, H, D_OUT])
    res = gpups.paramserv(net.init(0), X, y, upd=net.gradients, agg="momentum", k=1, batchsize=BS,
                          epochs=5, hyperparams={"lr": 0.01, "momentum": 0.9}, progress=False, device="cpu")
    return statistics.median(r["samples_per_s"] for r in res.history[1:])


def run_torch():
    """PyTorch's eager loop of the same MLP (the harness behind ``gpups bench``)."""
    from gpups.bench import torch_baselines
    from gpups.device import resolve

    return torch_baselines(resolve("cpu"), f"mlp:{D_IN}-{H}-{H}-{D_OUT}", BS)["torch_eager_samples_per_s"]


def run_numpy():
    rs = np.random.default_rng(0)
    P = [rs.standard_normal((D_IN, H), dtype=np.float32) * .05, np.zeros(H, np.float32),
         rs.standard_normal((H, H), dtype=np.float32) * .05, np.zeros(H, np.float32),
         rs.standard_normal((H, D_OUT), dtype=np.float32) * .05, np.zeros(D_OUT, np.float32)]
    V = [np.zeros_like(p) for p in P]
    Xn, Yn = data()
    it = [0]

    def step():
        i = it[0] % 16
        it[0] += 1
        xb, yb = Xn[i * BS:(i + 1) * BS], Yn[i * BS:(i + 1) * BS]
        W1, b1, W2, b2, W3, b3 = P
        h1 = np.maximum(xb @ W1 + b1, 0)
        h2 = np.maximum(h1 @ W2 + b2, 0)
        z = h2 @ W3 + b3
        z -= z.max(1, keepdims=True)
        e = np.exp(z)
        p = e / e.sum(1, keepdims=True)
        p[np.arange(BS), yb] -= 1
        dz = p / BS
        dh2 = (dz @ W3.T) * (h2 > 0)
        dh1 = (dh2 @ W2.T) * (h1 > 0)
        g = [xb.T @ dh1, dh1.sum(0), h1.T @ dh2, dh2.sum(0), h2.T @ dz, dz.sum(0)]
        for p_, v_, g_ in zip(P, V, g):
            v_ *= 0.9
            v_ += g_
            p_ -= 0.01 * v_
    return median_rate(step, BS)


def run_systemds_mlp():
    """SystemDS's configuration: MLP 784-200-10, batch 64, k=2, BSP, per batch, plain SGD."""
    import gpups
    from gpups import datasets
    from gpups.models import MLP

    d = datasets.mnist5k()
    net = MLP([784, 200, 10])
    res = gpups.paramserv(net.init(0), d.X, d.y, upd=net.gradients, agg="sgd", utype="BSP", freq="BATCH",
                          k=2, batchsize=64, epochs=5, hyperparams={"lr": 0.1}, val_features=d.Xv,
                          val_labels=d.yv, progress=False, device="cpu")
    return statistics.median(r["samples_per_s"] for r in res.history[1:]), res.history[-1]["val_accuracy"]


def run_systemds_lenet():
    """SystemDS's LeNet-style CNN (conv 32 and 64 of 5x5, fc 512), batch 64, k=2, BSP."""
    import gpups
    from gpups import datasets
    from gpups.models import LeNet

    d = datasets.mnist5k(image=True)
    net = LeNet()
    res = gpups.paramserv(net.init(0), d.X[:2048], d.y[:2048], upd=net.gradients, agg="sgd", k=2, batchsize=64,
                          epochs=3, hyperparams={"lr": 0.05}, progress=False, device="cpu")
    return statistics.median(r["samples_per_s"] for r in res.history[1:]), None


def _lenet_data():
    from gpups import datasets

    d = datasets.mnist5k(image=True)
    return d.X[:2048].reshape(-1, 1, 28, 28), d.y[:2048]


def run_lenet_gpups(k):
    """gpups' LeNet (numba kernels), batch 64, SGD momentum, k workers BSP."""
    import gpups
    from gpups.models import LeNet

    X, y = _lenet_data()
    net = LeNet()
    res = gpups.paramserv(net.init(0), X, y, upd=net.gradients, agg="momentum", k=k, batchsize=64, epochs=3,
                          hyperparams={"lr": 0.01, "momentum": 0.9}, progress=False, device="cpu")
    return statistics.median(r["samples_per_s"] for r in res.history[1:])


def run_lenet_torch():
    """The same LeNet as a torch.nn.Module in PyTorch's own loop, the same batches."""
    from gpups.bench_torch import lenet_module, plain_torch

    X, y = _lenet_data()
    return plain_torch(lenet_module(), X, y, X[:256], y[:256], 64, 0.01, 3)["samples_per_s"]


CONTENDERS = {"gpups": run_gpups, "torch": run_torch, "numpy": run_numpy,
              "systemds_mlp": run_systemds_mlp, "systemds_lenet": run_systemds_lenet,
              "lenet_gpups_k1": lambda: run_lenet_gpups(1), "lenet_gpups_k2": lambda: run_lenet_gpups(2),
              "lenet_torch": run_lenet_torch}
LENET = ("lenet_gpups_k1", "lenet_gpups_k2", "lenet_torch")


def child(name):
    out = CONTENDERS[name]()
    print(json.dumps({"value": out}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=list(CONTENDERS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "cpu.json"))
    args = ap.parse_args()
    if args.only:
        return child(args.only)
    try:
        import torch  # noqa: F401
        names = ["gpups", "torch", "numpy", *LENET]
    except ImportError:
        names = ["gpups", "numpy", *LENET[:2]]
    runs = {n: [] for n in names}
    for r in range(args.rounds):
        for n in names:
            proc = subprocess.run([sys.executable, __file__, "--only", n], capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"{n} failed:\n{proc.stderr[-3000:]}")
            runs[n].append(json.loads(proc.stdout.strip().splitlines()[-1])["value"])
            print(f"round {r + 1}: {n:6} {runs[n][-1]:10,.0f} samples/s", file=sys.stderr, flush=True)
    med = {n: statistics.median(v) for n, v in runs.items()}
    lenet = {n: med.pop(n) for n in LENET if n in med}
    extra = {}
    for n in ("systemds_mlp", "systemds_lenet"):
        proc = subprocess.run([sys.executable, __file__, "--only", n], capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{n} failed:\n{proc.stderr[-3000:]}")
        extra[n] = json.loads(proc.stdout.strip().splitlines()[-1])["value"]
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "python": platform.python_version(), "numpy": np.__version__},
              "mlp_784_512_512_10_bs256_momentum_samples_per_s": med, "rounds": runs,
              "lenet_mnist5k_bs64_momentum_samples_per_s": lenet,
              "systemds_configs": {"mlp_784_200_10_bs64_k2_bsp_sgd": {"samples_per_s": extra["systemds_mlp"][0],
                                                                      "val_accuracy_5_epochs": extra["systemds_mlp"][1],
                                                                      "systemds_3_4_reference": "13-15 k samples/s, 0.91"},
                                   "lenet_bs64_k2_bsp": {"samples_per_s": extra["systemds_lenet"][0],
                                                         "systemds_3_4_reference": "about 450 samples/s"}}}
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nMLP 784-512-512-10, batch 256, momentum, {os.cpu_count()} cores (median of {args.rounds} rounds)")
    for n, v in med.items():
        print(f"  {n:8} {v:10,.0f} samples/s   {v / med['gpups']:5.2f}x of gpups")
    if "torch" in med:
        print(f"  gpups / torch = {med['gpups'] / med['torch']:.2f}")
    if lenet:
        print(f"LeNet (conv 32, 64, dense 512) bs64 momentum on mnist5k (median of {args.rounds} rounds)")
        for n, v in lenet.items():
            vs = f"   {v / lenet['lenet_torch']:5.2f}x of PyTorch" if "lenet_torch" in lenet else ""
            print(f"  {n:15} {v:8,.0f} samples/s{vs}")
    m, a = extra["systemds_mlp"]
    print(f"SystemDS config MLP 784-200-10 bs64 k=2 BSP: {m:,.0f} samples/s, val acc {a:.3f} "
          f"(SystemDS 3.4: 13-15 k, 0.91)")
    print(f"SystemDS config LeNet bs64 k=2 BSP: {extra['systemds_lenet'][0]:,.0f} samples/s (SystemDS 3.4: ~450)")


if __name__ == "__main__":
    main()
