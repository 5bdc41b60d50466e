"""Every option of :func:`gpups.paramserv`, declared once.

:class:`Options` is a frozen dataclass; each field carries its default, what it means, its check
and two properties: whether a resumed run must match it (``match``: the checkpoint's
fingerprint is made of these) and its ``gpups train`` flag (``cli``). From this one declaration
come :func:`validate`, :func:`fingerprint`, :func:`add_cli_flags` / :func:`cli_kwargs` and
:func:`options_table` (README's table); ``paramserv``'s keyword signature is written out for
readers and IDEs, and ``tests/test_options.py`` fails when it drifts from the declaration.

Checks run in field order, each with the options before it at hand (``ctx``), so an option that
depends on another (``nbatches`` on ``freq``, ``servers`` on ``agg``) is declared after it.
"""
from __future__ import annotations

import os
from dataclasses import MISSING, dataclass, field, fields
from types import SimpleNamespace
from typing import Any, Callable, Mapping

from . import checks, sync
from .errors import option_error
from .models.base import model_of
from .optim import BUILTIN
from .partition import SCHEMES

FREQS = ("BATCH", "NBATCHES", "EPOCH")
PUSHES = ("gradients", "model")
BACKENDS = ("local", "ray")
NONFINITE = ("raise", "skip")
ON_WORKER_ERROR = ("stop", "drop")
UPD = "upd(params, features, labels, hyperparams) -> grads or (grads, loss)"
AGG = "agg(params, grads, state, hyperparams) -> (params, state)"
EVALUATE = "evaluate(params, features, labels) -> dict of metrics"


def option(default: Any, doc: str, check: Callable[[Any, Any], Any] | None = None, *, match: bool = False,
           elastic: bool = False, cli: dict[str, Any] | None = None, values: str = "") -> Any:
    """A field of :class:`Options`: ``check(value, ctx)`` returns the value to keep; ``match``:
    recorded in a checkpoint's fingerprint, and a resume must match it unless it is ``elastic``
    (then the resume re-cuts the state and the history records the change); ``values`` is how
    README's table lists what is allowed (default first)."""
    meta = {"doc": doc, "check": check, "match": match or elastic, "elastic": elastic, "cli": cli, "values": values}
    return field(metadata=meta) if default is MISSING else field(default=default, metadata=meta)


# -- checks (value, ctx) -> value ----------------------------------------------------------------
def _upd(v: Any, ctx: Any) -> Callable:
    if not callable(v):
        raise option_error("upd", v, "a function " + UPD)
    checks.check_signature("upd", v, 4, UPD)
    return v


def _agg(v: Any, ctx: Any) -> str | Callable:
    if callable(v):
        checks.check_signature("agg", v, 4, AGG)
        return v
    if not isinstance(v, str):
        raise option_error("agg", v, f"one of {BUILTIN} or a function {AGG}")
    return checks.choice("agg", v, BUILTIN)


def _hyperparams(v: Any, ctx: Any) -> Mapping | None:
    if v is not None and not isinstance(v, Mapping):
        raise option_error("hyperparams", v, "a dict of name -> value, or None")
    net = model_of(ctx.upd)
    if net is not None:  # a built-in model's gradients knows what it reads
        net.check_hyperparams(v or {})
    return v


def _choice(name: str, allowed: tuple[str, ...]) -> Callable[[Any, Any], str]:
    return lambda v, ctx: checks.choice(name, v, allowed)


def _int(name: str, lo: int) -> Callable[[Any, Any], int]:
    return lambda v, ctx: checks.integer(name, v, lo)


def _nbatches(v: Any, ctx: Any) -> int:
    nb = checks.integer("nbatches", v, 1)
    if nb != 1 and ctx.freq != "nbatches":
        raise option_error("nbatches", v, "1 unless freq='NBATCHES'")
    return nb


def _k(v: Any, ctx: Any) -> int:
    return checks.integer("k", v, 1, ctx.n)


def _utype(v: Any, ctx: Any) -> sync.Policy:
    policy = sync.resolve(v, ctx.staleness, ctx.backup_workers)
    policy.check(ctx.k)
    return policy


def _servers(v: Any, ctx: Any) -> int:
    size = sum(int(a.size) for a in ctx.model.values())
    return checks.integer("servers", v, 1, size if isinstance(ctx.agg, str) else len(ctx.model))


def _val_labels(v: Any, ctx: Any) -> Any:
    xv = ctx.val_features
    if (xv is None) != (v is None):
        raise ValueError("val_features and val_labels go together: give both or neither")
    if xv is not None:
        checks.check_data(xv, v, "val_")
        if hasattr(ctx.features, "arrays") or hasattr(xv, "arrays"):  # named columns: the same names and row shapes
            want = {n: a.shape[1:] for n, a in getattr(ctx.features, "arrays", {}).items()}
            got = {n: a.shape[1:] for n, a in getattr(xv, "arrays", {}).items()}
            if want != got:
                raise ValueError(f"val_features has the columns {got}; expected {want} like features")
        elif tuple(xv.shape[1:]) != tuple(ctx.features.shape[1:]):
            raise ValueError(f"val_features rows have shape {tuple(xv.shape[1:])}; expected "
                             f"{tuple(ctx.features.shape[1:])} like features")
        net = model_of(ctx.upd)
        if net is not None:
            net.check_data(xv, v, "val_")
    return v


def _evaluate(v: Any, ctx: Any) -> Callable | None:
    if v is None:
        return None
    if not callable(v):
        raise option_error("evaluate", v, "a function " + EVALUATE)
    checks.check_signature("evaluate", v, 3, EVALUATE)
    return v


def _device(v: Any, ctx: Any) -> Any:
    from .device import check_spec

    check_spec(v)
    return v


def _ray_address(v: Any, ctx: Any) -> str | None:
    if v is None:
        return None
    if ctx.backend != "ray":
        raise option_error("ray_address", v, "None unless backend='ray'")
    ok = isinstance(v, str) and (v == "auto" or v.startswith("ray://") or (
        ":" in v and v.rsplit(":", 1)[1].isdigit() and v.rsplit(":", 1)[0] != ""))
    if not ok:
        raise option_error("ray_address", v, "None (start a local Ray instance), 'auto' (the cluster "
                           "of `ray start` on this machine) or 'host:port' of a cluster's head")
    return v


def _checkpoint(v: Any, ctx: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, (str, os.PathLike)):
        raise option_error("checkpoint", v, "a folder path or None")
    return os.fspath(v)


def _trace(v: Any, ctx: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, (str, os.PathLike)) or os.path.isdir(v):
        raise option_error("trace", v, "a file path for the trace (e.g. 'run.trace.json') or None")
    path = os.fspath(v)
    checks.writable_folder("trace", os.path.dirname(os.path.abspath(path)))
    return path


def _on_worker_error(v: Any, ctx: Any) -> str:
    return checks.choice("on_worker_error", v, ON_WORKER_ERROR)


def _table_agg(v: Any, ctx: Any) -> str | None:
    from .tables import TABLE_AGGS

    return None if v is None else checks.choice("table_agg", v, TABLE_AGGS)


def _resume(v: Any, ctx: Any) -> bool:
    rs = checks.flag("resume", v)
    if rs and ctx.checkpoint is None:
        raise option_error("resume", v, "False unless checkpoint= names a folder")
    return rs


@dataclass(frozen=True)
class Options:
    """The options of one ``paramserv`` call, checked (see the module docstring)."""

    upd: Callable = option(MISSING, "`upd(params, x, y, hyperparams) -> grads` or `(grads, loss)`: the "
                           "worker's gradient function; a built-in model's `gradients` is checked against its "
                           "model and runs in CUDA graphs", _upd, values="a function")
    agg: str | Callable = option("sgd", "server update rule; built-in names are fused kernels. A function "
                                 "`agg(params, grads, state, hp) -> (params, state)` sees whole named tensors "
                                 "(shards are cut at tensor boundaries then); `grads` are views of a buffer gpups "
                                 "reuses: copy what the state keeps", _agg, match=True,
                                 cli={"default": "momentum", "help": "server update rule: sgd, momentum, nesterov, adagrad, adam"},
                                 values="`sgd`, `momentum`, `nesterov`, `adagrad`, `adam`, or a function")
    hyperparams: Mapping[str, Any] | None = option(
        None, "passed to `upd` and `agg`; built-in rules read `lr`, `momentum`, `eps`, `beta1`, `beta2` "
        "(defaults filled in), built-in models' `gradients` read `reg` (L2, >= 0). Other names are passed on "
        "for your own functions; when both functions are built-in and neither reads a name (`learning_rate=` "
        "for `lr=`), a warning says so. Values may be Python or numpy numbers", _hyperparams, values="dict")
    freq: str = option("BATCH", "a worker pushes after every batch, every `nbatches` batches, or once per pass "
                       "over its partition; between pushes it updates its own replica with the same optimizer",
                       _choice("freq", FREQS), elastic=True, cli={"help": "BATCH, NBATCHES or EPOCH"}, values="`BATCH`, `NBATCHES`, `EPOCH`")
    nbatches: int = option(1, "batches per push with `freq='NBATCHES'`", _nbatches, elastic=True, cli={"type": int},
                           values="int >= 1")
    push: str = option("gradients", "push the sum of the interval's gradients, or the replica's change since its "
                       "pull (model averaging: BSP/SBP set the model to the workers' mean; async modes add each "
                       "change divided by k)", _choice("push", PUSHES), match=True, cli={"help": "gradients, or model (model averaging)"},
                       values="`gradients`, `model`")
    k: int = option(1, "workers", _k, elastic=True, cli={"type": int, "default": 2}, values="int >= 1")
    staleness: int = option(0, "SSP's bound s (or `utype=gpups.SSP(staleness=s)`)", None, cli={"type": int},
                            values="int >= 0")
    backup_workers: int = option(0, "SBP's b, 0 <= b < k (or `utype=gpups.SBP(backup=b)`)", None,
                                 cli={"type": int}, values="int >= 0")
    utype: Any = option("BSP", sync.describe().rstrip("."), _utype, elastic=True,
                        cli={"help": "sync mode: " + ", ".join(sync.NAMES)},
                        values=", ".join(f"`{n}`" for n in sync.NAMES) + ", or a policy object "
                                                                         "(`gpups.SSP(staleness=2)`)")
    epochs: int = option(1, "passes over the data", _int("epochs", 1), cli={"type": int, "default": 5},
                         values="int >= 1")
    batchsize: int = option(64, "rows per mini-batch, at most the smallest partition", _int("batchsize", 1),
                            elastic=True, cli={"type": int}, values="int >= 1")
    servers: int = option(1, "server shards: contiguous ranges of the flat parameter vector, each with its own "
                          "stream and optimizer state", _servers, elastic=True, cli={"type": int}, values="int >= 1")
    scheme: str = option("disjoint_contiguous", "how rows are dealt to workers (seeded)",
                         _choice("scheme", SCHEMES), elastic=True, cli={},
                         values="`disjoint_contiguous`, `disjoint_round_robin`, `disjoint_random`, "
                                "`overlap_reshuffle`")
    val_features: Any = option(None, "validation rows, scored after every epoch", None, values="array or None")
    val_labels: Any = option(None, "their labels", _val_labels, values="array or None")
    evaluate: Callable | None = option(None, "`evaluate(params, x, y) -> dict` of validation metrics; a built-in "
                                       "model's `evaluate` is used when `upd` is its `gradients`", _evaluate,
                                       values="a function or None")
    device: Any = option("auto", "`auto` picks the GPU when CuPy finds one. A list places worker j on device "
                         "`j % len` and server shard s on device `s % len` (so give `servers` >= the number of "
                         "devices to spread the server too); pushes and pulls between devices are async copies. "
                         "With `backend='ray'`: `auto`, `cpu` or `cuda`, for the worker actors", _device,
                         cli={"help": "auto, cpu, cuda, cuda:N, or several GPUs as a comma list: cuda:0,cuda:1"},
                         values="`auto`, `cpu`, `cuda`, `cuda:N`, or a list of `cuda:N`")
    backend: str = option("local", "`ray`: the shards and workers run as Ray actors (see \"Ray backend\")",
                          _choice("backend", BACKENDS), cli={}, values="`local`, `ray`")
    ray_address: str | None = option(None, "with `backend='ray'`: join a running cluster (`auto` or `host:port`) "
                                     "instead of starting a local instance", _ray_address, cli={},
                                     values="None, `auto`, `host:port`")
    checkpoint: str | None = option(None, "folder for per-epoch checkpoints (created if missing)", _checkpoint,
                                    cli={}, values="None or a folder")
    resume: bool = option(False, "continue from the newest checkpoint in `checkpoint`", _resume,
                          cli={"action": "store_true"}, values="bool")
    trace: str | None = option(None, "write a timeline of the run there: Chrome/Perfetto trace-event JSON (one "
                               "track per worker and shard, staleness and samples/s counters; see README)", _trace,
                               cli={"help": "write a Chrome/Perfetto trace-event JSON of the run to this file"},
                               values="None or a file path")
    seed: int = option(0, "partition seed", _int("seed", 0), match=True, cli={"type": int}, values="int >= 0")
    progress: bool = option(True, "one line per epoch on stderr", lambda v, ctx: checks.flag("progress", v),
                            values="bool")
    nonfinite: str = option("raise", "a push holding NaN or Inf is never applied; `raise` stops the run at the end "
                            "of the epoch naming the worker and batch, `skip` goes on and counts it "
                            "(`history[i]['skipped']`)", _choice("nonfinite", NONFINITE),
                            cli={"help": "a NaN/Inf push: 'raise' (stop the run) or 'skip'"},
                            values="`raise`, `skip`")

    on_worker_error: str = option("stop", "a worker whose `upd` raises: `stop` the run with its error, or `drop`: log "
                                  "it, discard that push and retry from the worker's next interval; one failure past "
                                  "`max_worker_failures` and the run goes on without it (its rows dealt to the others "
                                  "from the next epoch; `Result.dropped`). With `backend='ray'` a worker actor that dies past Ray's restarts "
                                  "leaves the run too, and that epoch is done again without it", _on_worker_error, cli={},
                                  values="`stop`, `drop`")
    max_worker_failures: int = option(2, "with `on_worker_error='drop'`: failures a worker may have and stay",
                                      _int("max_worker_failures", 0), cli={"type": int}, values="int >= 0")

    table_agg: str | None = option(None, "the sparse tables' row-wise rule (tables: parameters whose gradient is "
                                   "a `gpups.RowGrad`); None: `agg`'s own (`adam` on rows is lazy: moments of the "
                                   "touched rows only); `rowwise_adagrad` keeps one accumulator per row",
                                   _table_agg, match=True, cli={}, values="None, `sgd`, `adagrad`, `rowwise_adagrad`, `adam`")
    donate: bool = option(False, "the server keeps the caller's sparse tables as its own copy instead of copying "
                          "them (one table-sized copy less); they are updated in place and are the trained "
                          "tables the result holds. Tables that are not writable C-ordered numpy arrays are "
                          "copied", lambda v, ctx: checks.flag("donate", v), values="bool")

    @property
    def policy(self) -> sync.Policy:
        """The sync mode (``utype`` as checked is a :class:`~gpups.sync.Policy`)."""
        return self.utype


def validate(model: Any, features: Any, labels: Any, **given: Any) -> Options:
    """Check every option (in declaration order) and the arrays; returns the :class:`Options`.
    Creates the checkpoint folder last, once everything else was found fine."""
    unknown = set(given) - {f.name for f in fields(Options)}
    if unknown:
        raise TypeError(f"unknown options {sorted(unknown)}")
    checks.check_model(model)
    checks.check_data(features, labels)
    ctx = SimpleNamespace(model=model, features=features, labels=labels, n=features.shape[0])
    values = {}
    for f in fields(Options):
        value = given.get(f.name, f.default)
        if value is MISSING:
            raise TypeError(f"paramserv() needs the keyword argument {f.name!r}")
        check = f.metadata["check"]
        values[f.name] = check(value, ctx) if check else value
        setattr(ctx, f.name, values[f.name])
        net = model_of(value) if f.name == "upd" else None
        if net is not None:  # a built-in model's gradients: the model knows its shapes and classes
            net.check_params(model)
            net.check_data(features, labels)
    if values["checkpoint"] is not None:
        checks.writable_folder("checkpoint", values["checkpoint"])
    return Options(**values)


def elastic_keys() -> set[str]:
    """Fingerprint entries a resume may change: the elastic options, and the sync mode's
    parameters (they go with ``utype``)."""
    keys = {f.name for f in fields(Options) if f.metadata["elastic"]}
    return keys | {"staleness", "backup"}


def fingerprint(opts: Options) -> dict[str, Any]:
    """What a checkpoint records of the options (those declared ``match`` or ``elastic``), as
    plain values; a resume must match all but :func:`elastic_keys`."""
    out: dict[str, Any] = {}
    for f in fields(Options):
        if f.metadata["match"]:
            value = getattr(opts, f.name)
            if isinstance(value, sync.Policy):
                out[f.name] = value.name
                out.update(value.params())
            else:
                out[f.name] = value if isinstance(value, (str, int, float, bool)) else "custom"
    return out


# -- the command line -----------------------------------------------------------------------------
def cli_options() -> list[Any]:
    return [f for f in fields(Options) if f.metadata["cli"] is not None]


def add_cli_flags(parser: Any) -> None:
    """``--name`` flags for every option declared with ``cli``."""
    for f in cli_options():
        cli = dict(f.metadata["cli"])
        kw: dict[str, Any] = {"default": cli.pop("default", f.default), "help": cli.pop("help", _first(f))}
        kw.update(cli)
        parser.add_argument("--" + f.name.replace("_", "-"), **kw)


def cli_kwargs(args: Any) -> dict[str, Any]:
    """``paramserv`` keyword arguments from parsed flags (a comma list of GPUs becomes a list)."""
    kw = {f.name: getattr(args, f.name) for f in cli_options()}
    if isinstance(kw["device"], str) and "," in kw["device"]:
        kw["device"] = kw["device"].split(",")
    return kw


def _first(f: Any) -> str:
    return f.metadata["doc"].split(";")[0].split(". ")[0].replace("`", "")


def options_table() -> str:
    """README's options table, made from the declaration."""
    rows = ["| option | values (default first) | meaning |", "|---|---|---|"]
    for f in fields(Options):
        default = "required" if f.default is MISSING else f"`{f.default!r}`".replace("'", '"')
        rows.append(f"| `{f.name}` | {default}; {f.metadata['values']} | {f.metadata['doc']}. |")
    return "\n".join(rows)
