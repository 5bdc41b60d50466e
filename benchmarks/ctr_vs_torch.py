"""DLRM on synthetic_ctr: gpups (sparse tables, k workers, BSP) beside the same model in plain
PyTorch (nn.EmbeddingBag(sparse=True) + Adagrad over the same batches), in one run.

    python benchmarks/ctr_vs_torch.py [--n 200000] [--rows 1000000] [--tables 8] [--json out.json]

PyTorch: ``pip install torch==2.13.0`` (a CPU build lies on this machine's disk). Prints
samples/s, validation AUC and logloss, server row updates/s, peak RSS.
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np


def run_gpups(tr, va, args):
    import gpups
    from gpups.models import DLRM

    net = DLRM(dense=13, tables=tr.tables, dim=args.dim, bottom=(64, args.dim), top=(64,), sparse=True)
    t0 = time.perf_counter()
    res = gpups.paramserv(net.init(0), tr.features, tr.labels, upd=net.gradients, agg="adagrad", k=args.k,
                          batchsize=args.batch, epochs=args.epochs, hyperparams={"lr": args.lr},
                          val_features=va.features, val_labels=va.labels, device="cpu", progress=False)
    wall = time.perf_counter() - t0
    h = res.history[-1]
    return {"samples_per_s": sum(r["samples"] for r in res.history) / sum(r["seconds"] for r in res.history),
            "auc": h["val_auc"], "logloss": h["val_logloss"], "wall_s": wall}


def run_torch(tr, va, args):
    import torch
    from torch import nn

    torch.manual_seed(0)
    d, T = args.dim, len(tr.tables)

    class TorchDLRM(nn.Module):
        def __init__(self):
            super().__init__()
            self.bot = nn.Sequential(nn.Linear(13, 64), nn.ReLU(), nn.Linear(64, d), nn.ReLU())
            self.emb = nn.ModuleList([nn.EmbeddingBag(r, d, mode="sum", sparse=True) for r in tr.tables])
            for e, r in zip(self.emb, tr.tables):
                nn.init.uniform_(e.weight, -(1 / r) ** 0.5, (1 / r) ** 0.5)
            f = T + 1
            self.li, self.lj = torch.triu_indices(f, f, 1)
            self.top = nn.Sequential(nn.Linear(d + len(self.li), 64), nn.ReLU(), nn.Linear(64, 1))

        def forward(self, x, cat):
            b = self.bot(x)
            Z = torch.stack([b] + [e(cat[:, t:t + 1]) for t, e in enumerate(self.emb)], 1)
            dots = torch.bmm(Z, Z.transpose(1, 2))[:, self.li, self.lj]
            return self.top(torch.cat([b, dots], 1)).squeeze(1)

    m = TorchDLRM()
    dense_p = [p for n, p in m.named_parameters() if not n.startswith("emb")]
    opt = torch.optim.Adagrad(dense_p, lr=args.lr)
    sopt = torch.optim.Adagrad(list(m.emb.parameters()), lr=args.lr)  # (Adagrad takes sparse gradients)
    X = torch.from_numpy(tr.features["dense"])
    C = torch.from_numpy(tr.features["cat"])
    Y = torch.from_numpy(tr.labels.astype(np.float32))
    lossf = nn.BCEWithLogitsLoss()
    t0 = time.perf_counter()
    for _ in range(args.epochs):
        for lo in range(0, len(Y), args.batch):
            opt.zero_grad()
            sopt.zero_grad()
            loss = lossf(m(X[lo:lo + args.batch], C[lo:lo + args.batch]), Y[lo:lo + args.batch])
            loss.backward()
            opt.step()
            sopt.step()
    secs = time.perf_counter() - t0
    from gpups.models.dlrm import auc

    with torch.no_grad():
        v = m(torch.from_numpy(va.features["dense"]), torch.from_numpy(va.features["cat"])).double().numpy()
    t = va.labels.astype(np.float64)
    return {"samples_per_s": args.epochs * len(Y) / secs, "auc": auc(t, v),
            "logloss": float((np.logaddexp(0, v) - t * v).mean()), "wall_s": secs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows per table")
    ap.add_argument("--tables", type=int, default=8)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--json")
    args = ap.parse_args()
    from gpups.datasets import synthetic_ctr

    data = synthetic_ctr(args.n, [args.rows] * args.tables, seed=0)
    tr, va = data.split(0.1)
    out = {"config": vars(args), "ceiling": data.ceiling, "gpups": run_gpups(tr, va, args)}
    try:
        out["torch"] = run_torch(tr, va, args)
        out["ratio_samples_per_s"] = out["gpups"]["samples_per_s"] / out["torch"]["samples_per_s"]
    except ImportError:
        out["torch"] = "not installed (pip install torch==2.13.0)"
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
