"""``gpups.paramserv``: one call that trains a model with a parameter server inside."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from . import checkpoint as ckpt
from .checks import array_module, as_array, as_features, check_partitions
from .columns import Columns
from .device import CPUDevice, host, resolve
from .errors import option_error
from .flat import Layout
from .local import LocalBackend
from .models.base import model_of
from .optim import check_like, make_rule, reads, resolve_hyperparams
from .options import validate
from .partition import partition
from .runtime import Run, check_metrics, log
from .seams import Backend
from .sync import Policy
from .worker import accepts_out, call_upd, readonly_error


@dataclass
class Result:
    """What :func:`paramserv` returns."""

    model: dict[str, Any]                 # trained parameters: same keys, shapes, dtypes, array kind
    history: list[dict[str, Any]]         # one record per epoch (see docs/architecture.md)
    device: str = "cpu"
    clock_log: list[tuple[int, int, int]] = field(default_factory=list)  # SSP (worker, clock, slowest)
    graphs: int = 0  # CUDA graphs captured (GPU: push intervals replayed with one launch)
    dropped: list[int] = field(default_factory=list)  # on_worker_error="drop": the workers the run went on without


def paramserv(model: Mapping[str, Any], features: Any, labels: Any, *, upd: Callable,
              agg: str | Callable = "sgd", utype: str | Policy = "BSP", freq: str = "BATCH", epochs: int = 1,
              batchsize: int = 64, k: int = 1, servers: int = 1, scheme: str = "disjoint_contiguous",
              hyperparams: Mapping[str, Any] | None = None, val_features: Any = None,
              val_labels: Any = None, evaluate: Callable | None = None, nbatches: int = 1,
              push: str = "gradients", staleness: int = 0, backup_workers: int = 0,
              device: Any = "auto", backend: str = "local", checkpoint: str | None = None,
              resume: bool = False, seed: int = 0, progress: bool = True,
              nonfinite: str = "raise", ray_address: str | None = None, trace: str | None = None,
              on_worker_error: str = "stop", max_worker_failures: int = 2, table_agg: str | None = None,
              donate: bool = False) -> Result:
    """Train ``model`` with ``k`` workers and ``servers`` parameter-server shards.

    ``upd(params, features, labels, hyperparams)`` returns the gradients of a mini-batch (a dict
    with ``params``' keys and shapes), optionally as ``(grads, loss)``. ``agg`` is the server's
    update rule: ``sgd``, ``momentum``, ``nesterov``, ``adagrad``, ``adam`` (fused kernels) or a
    function ``agg(params, grads, state, hyperparams) -> (params, state)``. ``utype`` is the sync
    mode (``BSP``, ``ASP``, ``SSP``, ``SBP``, ``HOGWILD``, or a policy object such as
    ``gpups.SSP(staleness=2)``), ``freq`` how often workers push
    (``BATCH``, ``NBATCHES``, ``EPOCH``). A push holding NaN or Inf is never applied; with
    ``nonfinite="raise"`` the run stops naming the worker and batch, with ``"skip"`` it goes on and
    counts it. ``device`` is ``"auto"``, ``"cpu"``, ``"cuda[:N]"`` or a list of GPUs (worker j on
    ``device[j % len]``, shard s on ``device[s % len]``); features are cast to the model's dtype.
    ``backend="ray"`` runs the shards and workers as Ray actors (a local Ray instance,
    or the cluster at ``ray_address``). ``trace`` names a file for a Chrome/Perfetto timeline. Inputs are never mutated. Every option is declared, with
    its meaning and check, in :class:`gpups.options.Options` (README's table is made from it).
    """
    given = {name: value for name, value in locals().items() if name not in ("model", "features", "labels")}
    features, labels = as_features("features", features), as_array("labels", labels)
    given["val_features"] = val_features = as_features("val_features", val_features)
    given["val_labels"] = val_labels = as_array("val_labels", val_labels)
    opts = validate(model, features, labels, **given)
    hp = resolve_hyperparams(opts.agg, hyperparams)
    warn_unread(hyperparams, upd, opts.agg)
    remote = opts.backend == "ray"
    actor_device = ray_device(device) if remote else ""
    dev = CPUDevice() if remote else resolve(device)  # backend="ray": the driver works on the host
    with dev.on(0):  # a GPU run makes its (first) device current for the whole call
        if dev.max_workers is not None and opts.k > dev.max_workers:
            raise option_error("k", opts.k, f"at most {dev.max_workers} workers on a GPU (the fused kernels "
                               "keep the rows they aggregate in shared memory)")
        n = features.shape[0]
        parts = partition(n, opts.k, opts.scheme, opts.seed)
        check_partitions(parts, opts.batchsize, n, opts.k)
        if evaluate is None and val_features is not None:
            evaluate = getattr(model_of(upd), "evaluate", None)

        tables = find_tables(model, upd, features, labels, parts[0][: opts.batchsize], hp, opts, dev, device)
        dense = {name: a for name, a in model.items() if name not in tables}
        layout = Layout.of(dense)
        in_xp = array_module(next(iter(model.values())))
        init = np.empty(layout.size, layout.dtype) if in_xp is np else in_xp.empty(layout.size, layout.dtype)
        layout.flatten(dense, init)
        if dev.host_memory:  # CuPy inputs train on the CPU too when asked
            init, features, labels = host(init), host(features), host(labels)
        # features in the model's dtype (the GPU's GEMMs take one dtype; the CPU's would upcast)
        xf, yl = (features if features.dtype == layout.dtype else features.astype(layout.dtype)), labels
        if val_features is not None and val_features.dtype != layout.dtype:
            val_features = val_features.astype(layout.dtype)
        dry_run(dev, layout, init, xf, yl, parts[0][: opts.batchsize], upd, opts.agg, hp, tables)
        val = None
        if val_features is not None:
            val = (dev.place(val_features), dev.place(val_labels))
            if evaluate is not None:
                first = {**layout.views(dev.place(init.copy()), readonly=True),
                         **{name: readonly(np.asarray(a)) for name, a in tables.items()}}
                check_metrics(evaluate(first, val[0][:2], val[1][:2]))

        engine: Backend  # (where the server and workers live; `backend` is the option naming it)
        if remote:
            from .ray_backend import RayBackend

            engine = RayBackend(opts, layout, init, xf, yl, parts, upd, hp, "cpu" if tables else actor_device, tables)
        else:
            engine = LocalBackend(opts, dev, layout, init, xf, yl, parts, upd, hp, tables)
        try:
            run = Run(opts, engine, layout, hp, evaluate, val)
            if opts.resume:
                resume_from(run, opts)
        except BaseException:  # the workers exist already: stop them (train() does after this)
            engine.cancel()
            engine.close()
            raise
        history = run.train(opts.epochs)

        flat = run.server.model()
        out = {}
        for name, view in layout.views(flat).items():
            arr = dev.to_host(view)
            out[name] = np.array(arr, copy=True) if in_xp is np else in_xp.asarray(arr).copy()
        tables_now = getattr(run.server, "tables", None)  # (the local backend's TableServer)
        if tables_now is not None:
            out.update(tables_now.model())  # (the run is over: its tables are the result, not copied)
        out = {name: out[name] for name in model}  # (the model's order)
        graphs = sum(len(w.graphs.graphs) for w in run.workers if getattr(w, "graphs", None) is not None)
        dropped = [w.j for w in run.workers if w.out]
        return Result(out, history, run.device.describe(), run.clock_log, graphs, dropped)


def resume_from(run: Run, opts: Any) -> None:
    """Load the newest good checkpoint of ``opts.checkpoint`` into ``run`` (none: start afresh)."""
    state = ckpt.load_latest(opts.checkpoint)
    if state is None:
        if opts.progress:
            log(f"resume: no checkpoint in {opts.checkpoint!r} yet, starting from epoch 1")
        return
    run.load_state_dict(state)
    if run.first_epoch >= opts.epochs:
        warnings.warn(f"gpups: resume=True with epochs={opts.epochs}, but the checkpoint in {opts.checkpoint!r} "
                      f"has {run.first_epoch} epochs done already: nothing is trained, the checkpoint's model "
                      "is returned (pass a larger epochs= to train on)", UserWarning, stacklevel=3)
    elif opts.progress:
        log(f"resume: continuing after epoch {run.first_epoch} from {opts.checkpoint!r}")


def warn_unread(hyperparams: Mapping[str, Any] | None, upd: Callable, agg: str | Callable) -> None:
    """Names in ``hyperparams`` that neither a built-in model's gradients nor a built-in rule
    reads are likely typos (``learning_rate`` for ``lr``): say so once. A user's function may
    read any name, so then nothing is said."""
    net, rule = model_of(upd), reads(agg)
    if not hyperparams or net is None or rule is None:
        return
    unread = sorted(set(hyperparams) - set(rule) - set(net.hyperparams))
    if unread:
        warnings.warn(f"gpups: hyperparams {unread} are read by neither upd ({net!r}.gradients reads "
                      f"{list(net.hyperparams)}) nor agg={agg!r} (reads {list(rule)}): a misspelt name?",
                      UserWarning, stacklevel=3)


def ray_device(device: Any) -> str:
    """backend="ray": what the worker actors run on ("auto": a GPU where the cluster has them)."""
    spec = device.lower() if isinstance(device, str) else device
    if spec not in ("auto", "cpu", "cuda"):
        raise option_error("device", device, "'auto', 'cpu' or 'cuda' with backend='ray' (Ray places the "
                           "workers on GPUs; it picks which)")
    return spec


def readonly(a: np.ndarray) -> np.ndarray:
    view = a.view()
    view.flags.writeable = False
    return view


def find_tables(model: Mapping[str, Any], upd: Callable, features: Any, labels: Any, rows: np.ndarray,
                hp: dict, opts: Any, dev: Any, device: Any) -> dict[str, Any]:
    """The model's sparse tables: the parameters whose gradient from ``upd`` is a
    :class:`gpups.RowGrad`. Tables read integer ids, which come in named feature columns; only
    then is ``upd`` called here, once, on read-only views of the model's own arrays (no copy of
    a table is made), and what it returns for the tables is checked."""
    from .tables import RowGrad, check_row_grad, table_rule

    if not isinstance(features, Columns):
        return {}
    if not dev.host_memory or (opts.backend == "ray" and device == "cuda"):
        raise option_error("device", device, "'cpu' (or 'auto', which picks it) when features are named columns "
                           "(a mapping): sparse tables and column features run on the CPU in this release")
    dtype = next(iter(model.values())).dtype
    params = {name: readonly(np.asarray(a)) for name, a in model.items()}
    x = features[rows].astype(dtype)
    grads, _ = call_upd(upd, False, params, x, labels[rows], hp, None)
    found = {name: model[name] for name, g in grads.items() if isinstance(g, RowGrad)}
    for name in found:
        check_row_grad(name, grads[name], params[name])
    if found:
        table_rule(opts.agg, opts.table_agg)  # (agg must have a row-wise form)
        if len(found) == len(model):
            raise ValueError(f"every parameter of the model is a sparse table ({sorted(found)}); the server needs "
                             "one dense parameter too in this release (a bias, say)")
        local = opts.push == "model" or opts.freq == "epoch" or (opts.freq == "nbatches" and opts.nbatches > 1)
        if local and opts.agg != "sgd":
            raise option_error("agg", opts.agg, "'sgd' when a model with sparse tables takes local steps between "
                               f"pushes (freq={opts.freq.upper()!r}, push={opts.push!r}): a worker updates its "
                               "cached rows by SGD; or push every batch")
    return found


def dry_run(dev: Any, layout: Layout, init: Any, X: Any, y: Any, rows: np.ndarray, upd: Callable,
            agg: str | Callable, hp: dict, tables: Mapping[str, Any] | None = None) -> None:
    """Call the user's functions once on copies, so that a wrong result is named before training
    (the sparse ``tables`` read-only, as they are: they were checked by :func:`find_tables`)."""
    flat = dev.place(init.copy())
    params = layout.views(flat, readonly=True)
    with_tables = {**params, **{name: readonly(np.asarray(a)) for name, a in (tables or {}).items()}}
    xb, yb = dev.place(X[rows]), dev.place(y[rows])
    wants_out = accepts_out(upd)
    gflat = dev.xp.zeros_like(flat)
    try:
        grads, _ = call_upd(upd, wants_out, with_tables, xb, yb, hp, layout.views(gflat))
    except ValueError as exc:
        clearer = readonly_error(exc)
        if clearer is None:
            raise
        raise clearer from exc
    if not dev.host_memory and not bool((flat == dev.place(init)).all()):  # (CuPy has no read-only arrays)
        raise ValueError("upd changed its params argument in place: upd must only read params and return the "
                         "gradients (the server owns the parameters; change them in agg)")
    from .tables import RowGrad

    if isinstance(grads, Mapping) and tables:
        grads = {name: g for name, g in grads.items() if name not in tables}
    stray = [name for name, g in grads.items() if isinstance(g, RowGrad)] if isinstance(grads, Mapping) else []
    if stray:
        raise ValueError(f"upd returned a gpups.RowGrad for {stray[0]!r}, but features is one array: a sparse table "
                         "reads integer ids, given as named columns (features={'dense': ..., 'ids': ...})")
    check_like(grads, params, "upd", "gradients")
    for name, g in grads.items():
        if not bool(dev.xp.isfinite(g).all()):
            raise ValueError(f"upd returned a non-finite gradient for {name!r} on the first batch "
                             "(NaN or Inf): check the model's initial values and the learning problem")
    if callable(agg):
        rule = make_rule(agg, hp, layout)
        G = dev.xp.zeros((1, layout.size), flat.dtype)
        rule.apply(dev.kernels, True, G, dev.rows([0]), dev.xp.zeros(1, dev.xp.int64), 1.0, dev.place(init.copy()),
                   rule.init_state(dev.xp, layout.size, flat.dtype), 1)
