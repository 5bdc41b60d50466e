"""``gpups bench --torch``: a PyTorch module trained by gpups (:mod:`gpups.torch`) beside PyTorch's
own loop over the same module, batches and learning rate, in one run.

Lines (LeNet: conv 32 and 64, dense 512): plain PyTorch (``torch.optim.SGD``, momentum 0.9, one
loop), the adapter at k=1 BSP with gpups' ``momentum`` rule (the same arithmetic: what the
adapter costs), k=2 ASP and SSP(2) (which a plain PyTorch loop does not offer in one process),
then gpups' own LeNet (numba kernels) on the same batches. samples/s is the median over the
epochs after the first.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np


def lenet_module(seed: int = 0) -> Any:
    """:class:`gpups.models.LeNet` (conv 5x5 32 and 64 'same', max-pool 2, dense 512) as a
    ``torch.nn.Module``, with the same He-normal initialisation."""
    import torch

    torch.manual_seed(seed)
    nn = torch.nn
    m = nn.Sequential(nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                      nn.Linear(64 * 7 * 7, 512), nn.ReLU(), nn.Linear(512, 10))
    for layer in m:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)  # type: ignore[arg-type]
    return m


def _data(spec: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from . import datasets

    d = datasets.from_spec(spec, image=True)
    side = int(round(np.sqrt(d.X[0].size)))
    shape = (-1, 1, side, side)
    return (d.X.reshape(shape).astype(np.float32), d.y, d.Xv.reshape(shape).astype(np.float32), d.yv)


def plain_torch(module: Any, X: np.ndarray, y: np.ndarray, Xv: np.ndarray, yv: np.ndarray, batch: int,
                lr: float, epochs: int) -> dict[str, Any]:
    import torch

    lf = torch.nn.functional.cross_entropy
    opt = torch.optim.SGD(module.parameters(), lr=lr, momentum=0.9)
    tx, ty = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))
    rates = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for lo in range(0, len(X), batch):
            opt.zero_grad()
            lf(module(tx[lo:lo + batch]), ty[lo:lo + batch]).backward()
            opt.step()
        rates.append(len(X) / (time.perf_counter() - t0))
    with torch.no_grad():
        acc = float((module(torch.from_numpy(Xv)).argmax(1).numpy() == yv).mean())
    return {"samples_per_s": statistics.median(rates[1:] or rates), "val_accuracy": acc}


def adapter(module: Any, X: np.ndarray, y: np.ndarray, Xv: np.ndarray, yv: np.ndarray, batch: int, lr: float,
            epochs: int, **mode: Any) -> dict[str, Any]:
    import torch

    import gpups
    from gpups.torch import functional

    params, upd, evaluate = functional(module, torch.nn.functional.cross_entropy)
    res = gpups.paramserv(params, X, y, upd=upd, evaluate=evaluate, val_features=Xv, val_labels=yv, batchsize=batch,
                          epochs=epochs, agg="momentum", hyperparams={"lr": lr, "momentum": 0.9}, device="cpu",
                          progress=False, **mode)
    rates = [r["samples_per_s"] for r in res.history]
    return {"samples_per_s": statistics.median(rates[1:] or rates), "val_accuracy": res.history[-1]["val_accuracy"]}


def builtin(X: np.ndarray, y: np.ndarray, Xv: np.ndarray, yv: np.ndarray, batch: int, lr: float, epochs: int,
            **mode: Any) -> dict[str, Any]:
    """gpups' own LeNet (:class:`gpups.models.LeNet`, numba kernels) on the same batches."""
    import gpups
    from gpups.models import LeNet

    net = LeNet(input_shape=X.shape[1:])
    res = gpups.paramserv(net.init(0), X, y, upd=net.gradients, val_features=Xv, val_labels=yv, batchsize=batch,
                          epochs=epochs, agg="momentum", hyperparams={"lr": lr, "momentum": 0.9}, device="cpu",
                          progress=False, **mode)
    rates = [r["samples_per_s"] for r in res.history]
    return {"samples_per_s": statistics.median(rates[1:] or rates), "val_accuracy": res.history[-1]["val_accuracy"]}


LINES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("PyTorch loop (SGD momentum)", "torch", None),
    ("gpups.torch k=1 BSP", "adapter", dict(k=1)),
    ("gpups.torch k=2 ASP", "adapter", dict(k=2, utype="ASP")),
    ("gpups.torch k=2 SSP(2)", "adapter", dict(k=2, utype="SSP", staleness=2)),
    ("gpups LeNet (built-in) k=1", "builtin", dict(k=1)),
    ("gpups LeNet (built-in) k=2 BSP", "builtin", dict(k=2)),
]


def line(i: int, data: str, batch: int, lr: float, epochs: int) -> dict[str, Any]:
    """Line ``i`` of :data:`LINES`, measured in this process."""
    name, kind, mode = LINES[i]
    X, y, Xv, yv = _data(data)
    if kind == "torch":
        r = plain_torch(lenet_module(), X, y, Xv, yv, batch, lr, epochs)
    elif kind == "adapter":
        r = adapter(lenet_module(), X, y, Xv, yv, batch, lr, epochs, **(mode or {}))
    else:
        r = builtin(X, y, Xv, yv, batch, lr, epochs, **(mode or {}))
    return {"line": name, **r}


def run(data: str = "mnist5k", batch: int = 64, lr: float = 0.01, epochs: int = 3,
        report: Any = None) -> list[dict[str, Any]]:
    """The lines of the table, each ``{"line", "samples_per_s", "val_accuracy", "vs_torch"}``,
    each measured in a process of its own: PyTorch's OpenMP threads spin for a while after its
    last op, which slowed gpups' own kernels in the same process by 1.6x."""
    out = []
    for i, (name, _, _) in enumerate(LINES):
        if report:
            report(i, len(LINES), name)
        proc = subprocess.run([sys.executable, "-m", "gpups.bench_torch", json.dumps([i, data, batch, lr, epochs])],
                              capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"bench line {name!r} failed:\n{proc.stderr[-3000:]}")
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    if report:
        report(len(LINES), len(LINES), "done")
    for r in out:
        r["vs_torch"] = r["samples_per_s"] / out[0]["samples_per_s"]
    return out


def table(lines: list[dict[str, Any]]) -> str:
    rows = [f"{'LeNet as a torch.nn.Module':<32} {'samples/s':>10} {'vs PyTorch':>10} {'val acc':>8}"]
    rows += [f"{r['line']:<32} {r['samples_per_s']:>10,.0f} {r['vs_torch']:>9.2f}x {r['val_accuracy']:>8.3f}"
             for r in lines]
    return "\n".join(rows)


if __name__ == "__main__":  # (one line, in a process of its own: see run)
    print(json.dumps(line(*json.loads(sys.argv[1])), default=float))
