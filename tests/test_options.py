"""The options are declared once (gpups.options.Options): the signature, the CLI flags, README's
table and the checkpoint fingerprint follow it, and these tests fail when one drifts. Sync modes
own their parameters and traits (gpups.sync)."""
import argparse
import inspect
import os
import re
from dataclasses import MISSING, fields

import numpy as np
import pytest

import gpups
from gpups import sync
from gpups.options import Options, add_cli_flags, cli_kwargs, fingerprint, options_table, validate
from helpers import assert_models_close, small_net

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_paramserv_signature_is_the_declaration():
    params = inspect.signature(gpups.paramserv).parameters
    declared = {f.name: f.default for f in fields(Options)}
    keywords = {n: p.default for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert set(keywords) == set(declared)
    for name, default in declared.items():
        want = inspect.Parameter.empty if default is MISSING else default
        assert keywords[name] == want, name
    assert list(params)[:3] == ["model", "features", "labels"]


def test_readme_table_is_made_from_the_declaration():
    readme = open(os.path.join(ROOT, "README.md")).read()
    table = readme.split("<!-- options: made by gpups.options.options_table()")[1].split("-->", 1)[1]
    assert table.split("<!-- end of options -->")[0].strip() == options_table()


def test_cli_flags_come_from_the_declaration():
    from gpups.cli import main  # noqa: F401  (the real parser is built from the same call)

    parser = argparse.ArgumentParser()
    add_cli_flags(parser)
    flags = {a.dest for a in parser._actions if a.dest != "help"}
    assert flags == {f.name for f in fields(Options) if f.metadata["cli"] is not None}
    args = parser.parse_args(["--utype", "SSP", "--staleness", "2", "--k", "3", "--device", "cuda:0,cuda:1",
                              "--resume", "--checkpoint", "ck", "--backup-workers", "0"])
    kw = cli_kwargs(args)
    assert kw["utype"] == "SSP" and kw["staleness"] == 2 and kw["k"] == 3 and kw["resume"] is True
    assert kw["device"] == ["cuda:0", "cuda:1"] and kw["agg"] == "momentum"  # the CLI's own default


def test_fingerprint_is_the_options_that_must_match(blobs):
    X, y = blobs
    net = small_net()
    opts = validate(net.init(0), X, y, upd=net.gradients, utype="SSP", staleness=2, k=3, agg="adam")
    fp = fingerprint(opts)
    assert set(fp) == {f.name for f in fields(Options) if f.metadata["match"]} | {"staleness"}
    assert fp["utype"] == "ssp" and fp["staleness"] == 2 and fp["agg"] == "adam" and fp["k"] == 3
    opts = validate(net.init(0), X, y, upd=net.gradients, agg=lambda p, g, s, hp: (p, s))
    assert fingerprint(opts)["agg"] == "custom"


def test_a_policy_object_is_the_same_as_its_name_and_parameters(blobs):
    X, y = blobs
    net = small_net()
    params = net.init(0, dtype=np.float64)
    kw = dict(upd=net.gradients, k=3, batchsize=8, epochs=2, device="cpu", progress=False)
    one = dict(kw, k=1)  # one worker: deterministic
    by_name = gpups.paramserv(params, X, y, utype="SSP", staleness=1, agg="momentum", **one)
    by_object = gpups.paramserv(params, X, y, utype=gpups.SSP(staleness=1), agg="momentum", **one)
    assert_models_close(by_name.model, by_object.model, rtol=0, atol=0)
    bounded = gpups.paramserv(params, X, y, utype=gpups.SSP(staleness=1), **kw)
    assert max(c - s for _, c, s in bounded.clock_log) <= 1
    sbp = gpups.paramserv(params, X, y, utype=gpups.SBP(backup=0), **kw)
    bsp = gpups.paramserv(params, X, y, utype=gpups.BSP(), **kw)
    assert_models_close(sbp.model, bsp.model, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"staleness=2 is not allowed: expected 0 when utype is a policy object "
                                         r"\(SSP\(staleness=1\) owns its parameters\)"):
        gpups.paramserv(params, X, y, utype=gpups.SSP(staleness=1), staleness=2, **kw)
    with pytest.raises(ValueError, match=r"backup_workers=3 is not allowed: expected an integer in \[0, 2\]"):
        gpups.paramserv(params, X, y, utype=gpups.SBP(backup=3), **kw)
    with pytest.raises(ValueError, match=r"staleness=-1 is not allowed"):
        gpups.SSP(staleness=-1)
    for bad in (1.5, True, "2"):  # an integer, not a float, a bool or a string
        with pytest.raises(ValueError, match=rf"staleness={bad!r} is not allowed: expected an integer >= 0"):
            gpups.SSP(staleness=bad)
        with pytest.raises(ValueError, match=rf"backup={bad!r} is not allowed: expected an integer >= 0"):
            gpups.SBP(backup=bad)
    assert gpups.SSP(staleness=np.int64(2)) == gpups.SSP(staleness=2)


def test_no_module_but_the_policies_compares_mode_names():
    """A mode's behaviour is declared by its policy: nothing else spells 'hogwild' or compares a
    utype (a new mode then touches sync.py and its tests, not the runtime)."""
    mode = r"""["'](bsp|asp|ssp|sbp|hogwild)["']"""
    pattern = re.compile(rf"""(==|!=)\s*{mode}|{mode}\s*(==|!=)|utype\s*(==|!=|in\b)""", re.I)
    offenders = []
    for folder in ("gpups", "kernels"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                path = os.path.join(dirpath, name)
                if not name.endswith(".py") or path.endswith(os.path.join("gpups", "sync.py")):
                    continue
                for i, line in enumerate(open(path), 1):
                    code = line.split("#")[0]
                    if pattern.search(code):
                        offenders.append(f"{os.path.relpath(path, ROOT)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_policy_traits_and_registry():
    assert set(sync.POLICIES) == {"bsp", "asp", "ssp", "sbp", "hogwild"}
    assert [n.lower() for n in sync.NAMES] == list(sync.POLICIES)
    assert sync.BSP.still_during_rounds and sync.BSP.rounds and sync.BSP.retry_same_args
    assert sync.Hogwild.unlocked and not sync.ASP.unlocked and not sync.ASP.retry_same_args
    assert sync.SBP(1).history([type("W", (), {"dropped": 4})()]) == {"dropped": [4]}
    assert repr(sync.SSP(3)) == "SSP(staleness=3)" and sync.SSP(3) == sync.SSP(3) != sync.SSP(2)


def test_submodules_are_reachable_from_the_package():
    import subprocess
    import sys

    code = "import gpups; gpups.datasets.synthetic; gpups.nn.Sequential; gpups.models.MLP; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        gpups.nothing  # noqa: B018


def test_validation_data_must_be_shaped_like_the_training_data():
    """val_features as named columns exactly when features are, with the same names and row
    shapes; the val_ arrays' own problems are named with their val_ names."""
    from test_tables import init as table_init
    from test_tables import make_upd, problem

    X, y = problem()
    Xa = np.concatenate([X["dense"], X["ids"].astype(np.float64)], 1)
    base = dict(device="cpu", progress=False, epochs=1, batchsize=16, hyperparams={"lr": 0.1})
    with pytest.raises(ValueError, match=r"val_features has the columns \{\}; expected \{'dense'"):
        gpups.paramserv(table_init(), X, y, upd=make_upd(True), val_features=Xa, val_labels=y, **base)
    from gpups.models import MLP

    net = MLP([Xa.shape[1], 5, 3])
    with pytest.raises(ValueError, match=r"val_features has the columns \{'dense'.*\}; expected \{\} like"):
        gpups.paramserv(net.init(0, dtype=np.float64), Xa, y, upd=net.gradients, val_features=X, val_labels=y, **base)
    narrow = {"dense": X["dense"][:, :3], "ids": X["ids"]}
    with pytest.raises(ValueError, match=r"val_features has the columns .*\(3,\).*; expected .*\(4,\)"):
        gpups.paramserv(table_init(), X, y, upd=make_upd(True), val_features=narrow, val_labels=y, **base)
    with pytest.raises(ValueError, match=r"val_labels has 299 rows but val_features has 300"):
        gpups.paramserv(table_init(), X, y, upd=make_upd(True), val_features=X, val_labels=y[:-1], **base)


def test_an_upd_returning_what_is_not_an_array_is_named():
    """A gradient that is a list (no shape) or has a shape but no dtype is refused with a
    ValueError naming it, before any work, not with the TypeError of reading it."""
    net = small_net()
    X, y = np.random.default_rng(0).standard_normal((40, 6)), np.zeros(40, np.int64)

    class Shaped:  # (a shape, no dtype)
        def __init__(self, shape):
            self.shape = shape

    def returning(make):
        def upd(params, x, yb, hp):
            grads, loss = net.gradients(params, x, yb, hp)
            name = next(iter(grads))
            return {**grads, name: make(grads[name])}, loss
        return upd

    base = dict(device="cpu", progress=False, epochs=1, batchsize=8)
    with pytest.raises(ValueError, match=r"upd returned gradients\[.*\] of shape \(\); the parameter"):
        gpups.paramserv(net.init(0, dtype=np.float64), X, y, upd=returning(lambda g: g.tolist()), **base)
    with pytest.raises(ValueError, match=r"upd returned gradients\[.*\] of dtype Shaped; expected floating point"):
        gpups.paramserv(net.init(0, dtype=np.float64), X, y, upd=returning(lambda g: Shaped(g.shape)), **base)
