"""``gpups`` console script: ``gpups train`` and ``gpups bench`` (:mod:`gpups.bench`)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Sequence

import numpy as np

from .options import add_cli_flags, cli_kwargs

MODELS = ("softmax", "mlp", "lenet", "linear", "dlrm")  # the --model choices


def train_parser(sub: Any) -> None:
    p = sub.add_parser("train", help="train a built-in model with paramserv",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="mlp", choices=MODELS)
    p.add_argument("--hidden", default="200", help="MLP hidden sizes, comma separated")
    p.add_argument("--data", default="mnist5k", help="mnist5k, digits, mnist, synthetic, synthetic_regression; "
                   "with --model dlrm: synthetic_ctr or criteo:PATH (Criteo TSV, .gz too)")
    p.add_argument("--data-dir", default=None, help="folder with the MNIST IDX files (--data mnist)")
    p.add_argument("--samples", type=int, default=10_000, help="rows of synthetic data (criteo: the most rows read)")
    p.add_argument("--table-rows", type=int, default=100_000, help="--model dlrm: rows per embedding table")
    p.add_argument("--tables", type=int, default=8, help="--model dlrm --data synthetic_ctr: tables")
    p.add_argument("--dim", type=int, default=16, help="--model dlrm: embedding width")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=None)
    p.add_argument("--reg", type=float, default=0.0, help="L2 regularisation")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    add_cli_flags(p)  # every paramserv option declared with a flag (gpups.options.Options)
    p.add_argument("--out", default="runs/latest", help="folder for history.json, model.npz, plot")
    p.add_argument("--quiet", action="store_true")


def ints(flag: str, text: str, lo: int = 1) -> list[int]:
    """A comma list of integers >= lo, or a ``ValueError`` naming the flag."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts or not all(p.lstrip("-").isdigit() and int(p) >= lo for p in parts):
        raise ValueError(f"{flag} {text!r} is not allowed: expected integers >= {lo}, comma separated (e.g. 200,100)")
    return [int(p) for p in parts]


def train(args: Any) -> dict[str, Any]:
    import gpups

    from . import datasets, models
    from .checks import writable_folder
    from .device import host

    hidden = ints("--hidden", args.hidden)
    if args.samples < 2:
        raise ValueError(f"--samples {args.samples} is not allowed: expected at least 2 rows")
    writable_folder("--out", args.out)  # before any work, not after training
    dtype = np.dtype(args.dtype)
    if args.model == "dlrm":
        net, X, y, Xv, yv, name = ctr_problem(args, hidden)
    else:
        data = datasets.from_spec(args.data, image=args.model == "lenet", seed=args.seed, folder=args.data_dir,
                                  n=args.samples)
        net = models.for_data(args.model, data, hidden)
        X, Xv = data.X.astype(dtype, copy=False), data.Xv.astype(dtype, copy=False)
        y, yv, name = data.y, data.yv, data.name
        if args.model == "linear":
            y, yv = y.astype(dtype), yv.astype(dtype)
    hp = {"lr": args.lr, **({"reg": args.reg} if args.reg else {})}  # (a model that reads no reg: no warning)
    if args.momentum is not None:
        hp["momentum"] = args.momentum
    t0 = time.perf_counter()
    res = gpups.paramserv(net.init(args.seed, dtype=dtype), X, y, upd=net.gradients, hyperparams=hp,
                          val_features=Xv, val_labels=yv, evaluate=net.evaluate, progress=not args.quiet,
                          donate=True,  # (the tables net.init made are the run's own)
                          **cli_kwargs(args))
    wall = time.perf_counter() - t0
    os.makedirs(args.out, exist_ok=True)
    summary = {"model": args.model, "data": name, "device": res.device, "utype": args.utype,
               "k": args.k, "epochs": args.epochs, "wall_seconds": wall, "final": res.history[-1],
               "history": res.history, "args": vars(args)}
    with open(os.path.join(args.out, "history.json"), "w") as f:
        json.dump(summary, f, indent=1, default=float)
    arrays: dict[str, Any] = {k: host(v) for k, v in res.model.items()}
    np.savez(os.path.join(args.out, "model.npz"), **arrays)
    plotted = plot_history(res.history, os.path.join(args.out, "convergence.png"), args)
    if args.trace:
        from .trace import plot

        written = plot(args.trace, os.path.join(args.out, "timeline.png"))
        print(f"wrote the timeline {args.trace}" + "".join(f", {w}" for w in written))
    last = res.history[-1]
    metric = " ".join(f"{k}={v:.4f}" for k, v in last.items() if k.startswith("val_"))
    print(f"trained {args.model} on {name} ({len(y)} rows) with {args.utype} k={args.k} on "
          f"{res.device}: {metric} in {wall:.1f}s; wrote {args.out}/history.json, model.npz"
          + (", convergence.png" if plotted else ""))
    return summary


def ctr_problem(args: Any, hidden: list[int]) -> tuple[Any, Any, Any, Any, Any, str]:
    """``--model dlrm``: the DLRM (sparse tables; bottom MLP (hidden..., dim), top MLP (hidden...))
    and its click data, ``synthetic_ctr`` or ``criteo:PATH``, a tenth held out."""
    from . import datasets
    from .models import DLRM

    for flag, v in (("--table-rows", args.table_rows), ("--tables", args.tables), ("--dim", args.dim)):
        if v < 1:
            raise ValueError(f"{flag} {v} is not allowed: expected an integer >= 1")
    if args.dtype != "float32":
        raise ValueError(f"--dtype {args.dtype} is not allowed with --model dlrm: expected float32")
    if args.data == "synthetic_ctr":
        data = datasets.synthetic_ctr(args.samples, [args.table_rows] * args.tables, seed=args.seed)
    elif args.data.startswith("criteo:"):
        data = datasets.criteo(args.data[len("criteo:"):], rows_per_table=args.table_rows, limit=args.samples)
    else:
        raise ValueError(f"--data {args.data!r} is not allowed with --model dlrm: expected synthetic_ctr or "
                         "criteo:PATH")
    tr, va = data.split(0.1)
    net = DLRM(dense=tr.features["dense"].shape[1], tables=tr.tables, dim=args.dim, bottom=(*hidden, args.dim),
               top=tuple(hidden), sparse=True)
    name = args.data.split(":")[0] + f" ({len(tr.tables)} tables of {max(tr.tables):,} rows)"
    return net, tr.features, tr.labels, va.features, va.labels, name


def plot_history(history: list, path: str, args: Any) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ep = [r["epoch"] for r in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    if history[0]["loss"] is not None:
        ax[0].plot(ep, [r["loss"] for r in history], "o-", label="train loss")
    if "val_loss" in history[0]:
        ax[0].plot(ep, [r["val_loss"] for r in history], "s-", label="validation loss")
    ax[0].set_xlabel("epoch"), ax[0].legend(), ax[0].set_title("loss")
    if "val_accuracy" in history[0]:
        ax[1].plot(ep, [r["val_accuracy"] for r in history], "o-")
        ax[1].set_title("validation accuracy")
    ax[1].set_xlabel("epoch")
    fig.suptitle(f"{args.model} on {args.data}, {args.utype} k={args.k}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpups", description="GPU-accelerated parameter-server trainer")
    sub = parser.add_subparsers(dest="command", required=True)
    train_parser(sub)
    from .bench import bench_parser
    from .bench import main as bench_main

    bench_parser(sub)
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            train(args)
        elif args.command == "bench":
            bench_main(args)
    except (ValueError, ImportError, FileNotFoundError) as exc:
        print(f"gpups {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"gpups {args.command}: {interrupted(exc, args)}", file=sys.stderr)
        return 130
    return 0


def interrupted(exc: KeyboardInterrupt, args: Any) -> str:
    """One line for Ctrl-C: how far the run got and where its newest checkpoint is."""
    folder = getattr(args, "checkpoint", None)
    if folder:
        from . import checkpoint as ckpt

        files = ckpt.checkpoints(folder)
        if files:
            epoch = int(os.path.basename(files[-1])[6:-5])
            return f"interrupted after epoch {epoch}; checkpoint in {folder} (continue with --resume)"
        return "interrupted before the first checkpoint was written"
    done = getattr(exc, "gpups_epochs_done", None)
    if done is None:
        return "interrupted"
    return f"interrupted after epoch {done} (pass --checkpoint DIR to keep progress)"

if __name__ == "__main__":
    sys.exit(main())
