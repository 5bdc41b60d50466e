"""Peak host memory of a DLRM run with large sparse tables against the bytes its tables and their
optimizer state need (issue 14's memory target: within 1.3x), on the CPU.

    python benchmarks/table_memory.py [--tables 26] [--rows 1000000] [--dim 16] [--agg adagrad]

The run trains a few thousand rows (k=2 BSP) so that every part is allocated: the caller's
initial tables (with ``donate=True``, the default here, the server's own; ``--copy``: copied),
its optimizer state, the workers' row caches. Peak RSS is
the process's ``ru_maxrss``; the baseline is the RSS before the model was made (Python, numpy,
numba and gpups loaded).
"""
from __future__ import annotations

import argparse
import json
import resource


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables", type=int, default=26)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--agg", default="adagrad", help="sgd, adagrad, rowwise_adagrad")
    ap.add_argument("--copy", action="store_true", help="donate=False: the server copies the tables")
    ap.add_argument("--n", type=int, default=8192, help="rows of synthetic_ctr to train on")
    args = ap.parse_args()
    import gpups
    from gpups.datasets import synthetic_ctr
    from gpups.models import DLRM

    data = synthetic_ctr(args.n, [1000] * args.tables, seed=0)  # ids drawn in a small range, re-spread below
    data.features["cat"] = (data.features["cat"] * (args.rows // 1000)) % args.rows
    data.tables[:] = [args.rows] * args.tables
    base = rss_mb()
    net = DLRM(dense=13, tables=data.tables, dim=args.dim, bottom=(64, args.dim), top=(64,), sparse=True)
    agg, table_agg = ("adagrad", "rowwise_adagrad") if args.agg == "rowwise_adagrad" else (args.agg, None)
    res = gpups.paramserv(net.init(0), data.features, data.labels, upd=net.gradients, agg=agg, table_agg=table_agg,
                          k=2, batchsize=256, epochs=1, hyperparams={"lr": 0.05}, device="cpu", progress=False,
                          donate=not args.copy)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    table_mb = args.tables * args.rows * args.dim * 4 / 2**20
    state_mb = {"sgd": 0.0, "adagrad": table_mb, "rowwise_adagrad": args.tables * args.rows * 4 / 2**20}[args.agg]
    out = {"config": vars(args), "baseline_rss_mb": base, "peak_rss_mb": peak, "tables_mb": table_mb,
           "state_mb": state_mb, "ratio": (peak - base) / (table_mb + state_mb),
           "samples_per_s": res.history[0]["samples_per_s"]}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
