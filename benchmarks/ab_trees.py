"""Same-run A/B of two source trees of gpups on this machine's CPU: the built-in models'
training speed (paramserv samples/s, steady epochs) in alternating rounds, each run in its own
process with PYTHONPATH at one tree.

    git worktree add /tmp/old <commit>; ln -s /tmp/old/kernels /tmp/old/gpups/kernels
    python benchmarks/ab_trees.py /tmp/old . [--rounds 5] [--json out.json]

(The symbolic link makes an uninstalled tree importable: the package maps gpups.kernels to
kernels/.)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CASES = {  # name: (model spec, rows, batch, k)
    "mlp_784-512-512-10_b256_k1": ("mlp", 256 * 24, 256, 1),
    "mlp_784-512-512-10_b256_k2": ("mlp", 256 * 24, 256, 2),
    "lenet_b64_k1": ("lenet", 64 * 16, 64, 1),
    "lenet_b64_k2": ("lenet", 64 * 16, 64, 2),
}

CHILD = r"""
import json, statistics, sys
import numpy as np
import gpups
from gpups.models import MLP, LeNet
spec, n, bs, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(0)
if spec == "mlp":
    net, X = MLP([784, 512, 512, 10]), rng.standard_normal((n, 784), dtype=np.float32)
else:
    net, X = LeNet(), rng.standard_normal((n, 1, 28, 28), dtype=np.float32)
y = rng.integers(0, 10, n)
res = gpups.paramserv(net.init(0), X, y, upd=net.gradients, agg="momentum", k=k, batchsize=bs, epochs=4,
                      hyperparams={"lr": 0.01}, progress=False, device="cpu")
print(json.dumps(statistics.median(r["samples_per_s"] for r in res.history[1:])))
"""


def run(tree: str, case: tuple) -> float:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    proc = subprocess.run([sys.executable, "-c", CHILD, *map(str, case)], capture_output=True, text=True, env=env,
                          cwd="/tmp")
    if proc.returncode:
        raise SystemExit(f"{tree} {case} failed:\n{proc.stderr[-3000:]}")
    return float(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    runs: dict = {name: {"old": [], "new": []} for name in CASES}
    for r in range(args.rounds):
        for name, case in CASES.items():
            for side in (("old", "new") if r % 2 == 0 else ("new", "old")):
                runs[name][side].append(run(getattr(args, side), case))
        print(f"round {r + 1} done", file=sys.stderr, flush=True)
    out = {}
    for name, v in runs.items():
        o, n = statistics.median(v["old"]), statistics.median(v["new"])
        # a busy machine slows whole stretches of time: the ratio within each round (its two
        # runs back to back) and the best run of each side say more than the medians
        paired = statistics.median(b / a for a, b in zip(v["old"], v["new"]))
        best = max(v["new"]) / max(v["old"])
        out[name] = {**v, "median_old": o, "median_new": n, "paired_ratio": paired, "best_ratio": best}
        print(f"{name:30} old {o:10,.0f}  new {n:10,.0f}  median of paired new/old {paired:.3f}  "
              f"best new/best old {best:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"what": "paramserv samples/s, steady epochs, alternating rounds", "old": args.old,
                       "new": args.new, "cases": out}, f, indent=1)


if __name__ == "__main__":
    main()
