"""``gpups bench --ctr``: DLRM on ``synthetic_ctr`` with sparse tables, beside the same model in
plain PyTorch (``nn.EmbeddingBag(sparse=True)`` + Adagrad over the same batches), in one run.

``batch`` is the global batch: each of gpups' k workers takes ``batch / k`` rows, so a BSP round
(the mean of k pushes) is one PyTorch step over as many rows: the same algorithm, so the two
should reach the same AUC, and samples/s compares like with like. Each line runs in a process of its own (PyTorch's OpenMP threads keep spinning after its ops and
slow other kernels in the same process). A line reports samples/s (training time only), the
validation AUC and logloss after every epoch with the time it was reached (the AUC-against-time
plot), server row updates/s (gpups: rows its tables' shards updated, from the pushes' touched
rows), and the process's peak RSS.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

import numpy as np

DEFAULTS = {"n": 100_000, "rows": 1_000_000, "tables": 8, "dim": 16, "batch": 256, "epochs": 2, "k": 2,
            "lr": 0.05, "utype": "BSP", "seed": 0, "seeds": 1}


def _data(cfg: dict[str, Any]) -> tuple[Any, Any, Any]:
    from .datasets import synthetic_ctr

    data = synthetic_ctr(cfg["n"], [cfg["rows"]] * cfg["tables"], seed=cfg.get("seed", 0))
    tr, va = data.split(0.1)
    return data, tr, va


def run_gpups(cfg: dict[str, Any]) -> dict[str, Any]:
    import gpups
    from gpups.models import DLRM

    _, tr, va = _data(cfg)
    net = DLRM(dense=13, tables=tr.tables, dim=cfg["dim"], bottom=(64, cfg["dim"]), top=(64,), sparse=True)
    per_worker = max(1, cfg["batch"] // cfg["k"])  # a BSP round of k workers is PyTorch's one batch
    res = gpups.paramserv(net.init(cfg.get("seed", 0)), tr.features, tr.labels, upd=net.gradients, agg="adagrad",
                          k=cfg["k"], utype=cfg["utype"], batchsize=per_worker, epochs=cfg["epochs"],
                          hyperparams={"lr": cfg["lr"]}, val_features=va.features, val_labels=va.labels,
                          device="cpu", progress=False, donate=True)
    h = res.history
    secs = sum(r["seconds"] for r in h)
    # rows a shard updates per push: the distinct ids of the pushed batches, per table
    cat = tr.features["cat"]
    per_batch = [sum(len(np.unique(cat[lo:lo + per_worker, t])) for t in range(cat.shape[1]))
                 for lo in range(0, len(cat), per_worker)]
    return {"line": "gpups", "samples_per_s": sum(r["samples"] for r in h) / secs, "auc": h[-1]["val_auc"],
            "logloss": h[-1]["val_logloss"], "row_updates_per_s": cfg["epochs"] * sum(per_batch) / secs,
            "curve": [(sum(r["seconds"] for r in h[:i + 1]), h[i]["val_auc"]) for i in range(len(h))]}


def run_torch(cfg: dict[str, Any]) -> dict[str, Any]:
    import torch
    from torch import nn

    from .models.dlrm import auc

    _, tr, va = _data(cfg)
    torch.manual_seed(cfg.get("seed", 0))
    d, T = cfg["dim"], len(tr.tables)

    class TorchDLRM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bot = nn.Sequential(nn.Linear(13, 64), nn.ReLU(), nn.Linear(64, d), nn.ReLU())
            self.emb = nn.ModuleList([nn.EmbeddingBag(r, d, mode="sum", sparse=True) for r in tr.tables])
            for e, r in zip(self.emb, tr.tables):
                nn.init.uniform_(e.weight, -(1 / r) ** 0.5, (1 / r) ** 0.5)  # type: ignore[arg-type]
            f = T + 1
            self.li, self.lj = torch.triu_indices(f, f, 1)
            self.top = nn.Sequential(nn.Linear(d + len(self.li), 64), nn.ReLU(), nn.Linear(64, 1))

        def forward(self, x: Any, cat: Any) -> Any:
            b = self.bot(x)
            Z = torch.stack([b] + [e(cat[:, t:t + 1]) for t, e in enumerate(self.emb)], 1)
            dots = torch.bmm(Z, Z.transpose(1, 2))[:, self.li, self.lj]
            return self.top(torch.cat([b, dots], 1)).squeeze(1)

    m = TorchDLRM()
    opt = torch.optim.Adagrad([p for n, p in m.named_parameters() if not n.startswith("emb")], lr=cfg["lr"])
    sopt = torch.optim.Adagrad(list(m.emb.parameters()), lr=cfg["lr"])  # (Adagrad takes sparse gradients)
    X, C = torch.from_numpy(tr.features["dense"]), torch.from_numpy(tr.features["cat"])
    Y = torch.from_numpy(tr.labels.astype(np.float32))
    Xv, Cv = torch.from_numpy(va.features["dense"]), torch.from_numpy(va.features["cat"])
    t = va.labels.astype(np.float64)
    lossf = nn.BCEWithLogitsLoss()
    secs, curve, bs = 0.0, [], cfg["batch"]
    for _ in range(cfg["epochs"]):
        t0 = time.perf_counter()
        for lo in range(0, len(Y), bs):
            opt.zero_grad()
            sopt.zero_grad()
            lossf(m(X[lo:lo + bs], C[lo:lo + bs]), Y[lo:lo + bs]).backward()
            opt.step()
            sopt.step()
        secs += time.perf_counter() - t0
        with torch.no_grad():
            v = m(Xv, Cv).double().numpy()
        curve.append((secs, auc(t, v)))
    return {"line": "pytorch", "samples_per_s": cfg["epochs"] * len(Y) / secs, "auc": curve[-1][1],
            "logloss": float((np.logaddexp(0, v) - t * v).mean()), "curve": curve}


LINES = {"gpups": run_gpups, "pytorch": run_torch}


def line(name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """One line, in a process of its own."""
    code = ("import json, sys; from gpups import bench_ctr as b; "
            "print('RESULT', json.dumps(b.measure(sys.argv[1], json.loads(sys.argv[2]))))")
    proc = subprocess.run([sys.executable, "-c", code, name, json.dumps(cfg)], capture_output=True, text=True)
    found = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not found:
        if "No module named 'torch'" in proc.stderr:
            return {"line": name, "error": "PyTorch is not installed (pip install 'gpups[torch]')"}
        raise RuntimeError(f"bench --ctr line {name!r} failed:\n{proc.stderr[-3000:]}")
    return json.loads(found[0][len("RESULT "):])


def measure(name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    out = LINES[name](cfg)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run(**cfg: Any) -> dict[str, Any]:
    """Both lines with this configuration (:data:`DEFAULTS` for what is not given). With
    ``seeds`` > 1 each line runs once per seed (the data, the initial model and the batches'
    order all drawn from it), alternating, and a line's figures are the means over the seeds
    (``auc_sd``: the AUC's standard deviation); ``per_seed`` keeps every run."""
    cfg = {**DEFAULTS, **cfg}
    runs = [[line(name, {**cfg, "seed": cfg["seed"] + s}) for name in LINES] for s in range(cfg["seeds"])]
    lines = [_mean([r[i] for r in runs]) for i in range(len(LINES))]
    doc: dict[str, Any] = {"config": cfg, "lines": lines, "ceiling": _data(cfg)[0].ceiling}
    if cfg["seeds"] > 1:
        doc["per_seed"] = runs
    ok = [ln for ln in lines if "error" not in ln]
    if len(ok) == 2:
        doc["ratio_samples_per_s"] = ok[0]["samples_per_s"] / ok[1]["samples_per_s"]
        doc["auc_gap"] = ok[0]["auc"] - ok[1]["auc"]
    return doc


def _mean(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One line's runs over the seeds: the first run's curve, the means of the figures."""
    if len(runs) == 1 or any("error" in r for r in runs):
        return runs[0]
    out = dict(runs[0])
    for key in ("samples_per_s", "auc", "logloss", "row_updates_per_s", "peak_rss_mb"):
        if key in out:
            out[key] = float(np.mean([r[key] for r in runs]))
    out["auc_sd"] = float(np.std([r["auc"] for r in runs], ddof=1))
    out["seeds"] = len(runs)
    return out


def table(doc: dict[str, Any]) -> str:
    c = doc["config"]
    rows = [f"DLRM on synthetic_ctr: {c['n']:,} rows, {c['tables']} tables of {c['rows']:,} rows x {c['dim']}, "
            f"batch {c['batch']}, {c['epochs']} epoch(s), adagrad lr {c['lr']}; gpups {c['utype']} k={c['k']}; "
            + (f"means over {c['seeds']} seeds; " if c.get("seeds", 1) > 1 else "") +
            f"the hidden model's AUC {doc['ceiling']['auc']:.4f}",
            f"{'line':>8} {'samples/s':>10} {'val AUC':>8} {'logloss':>8} {'row upd/s':>10} {'peak RSS':>9}"]
    for ln in doc["lines"]:
        if "error" in ln:
            rows.append(f"{ln['line']:>8} {ln['error']}")
            continue
        ups = f"{ln['row_updates_per_s']:>10,.0f}" if "row_updates_per_s" in ln else f"{'':>10}"
        sd = f" +-{ln['auc_sd']:.4f}" if "auc_sd" in ln else ""
        rows.append(f"{ln['line']:>8} {ln['samples_per_s']:>10,.0f} {ln['auc']:>8.4f}{sd} {ln['logloss']:>8.4f} {ups} "
                    f"{ln['peak_rss_mb']:>6,.0f} MB")
    if "ratio_samples_per_s" in doc:
        rows.append(f"gpups / PyTorch: {doc['ratio_samples_per_s']:.2f}x samples/s, AUC {doc['auc_gap']:+.4f}")
    return "\n".join(rows)


def plot(doc: dict[str, Any], path: str) -> bool:
    """Validation AUC against training time, one curve per line (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for ln in doc["lines"]:
        if "curve" in ln:
            ax.plot([t for t, _ in ln["curve"]], [a for _, a in ln["curve"]], marker="o", label=ln["line"])
    ax.axhline(doc["ceiling"]["auc"], color="grey", linestyle=":", label="hidden model")
    ax.set_xlabel("training seconds")
    ax.set_ylabel("validation AUC")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def main(args: Any) -> dict[str, Any]:
    from .cli import ints

    if args.ctr_seeds < 1:
        raise ValueError(f"--ctr-seeds {args.ctr_seeds} is not allowed: expected an integer >= 1")
    cfg = {"n": args.ctr_n, "rows": args.ctr_rows, "tables": args.ctr_tables, "epochs": args.epochs,
           "k": ints("--k", args.k)[-1], "batch": ints("--batch", args.batch)[0], "utype": args.utypes.split(",")[0],
           "seeds": args.ctr_seeds}
    doc = run(**cfg)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "ctr.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    print(table(doc))
    png = os.path.join(args.out, "ctr_auc.png")
    print(f"wrote {path}" + (f", {png}" if plot(doc, png) else ""))
    return doc
