"""The fused optimizer kernels against the textbook formulas, on poisoned buffers, for the numba
kernels and (marked gpu) their CUDA twins."""
import numpy as np
import pytest

from gpups.optim import RULES

RNG = np.random.default_rng(0)


def numba_backend():
    from gpups.kernels import cpu
    return cpu, np


def cuda_backend():
    import cupy

    from gpups.kernels import cuda
    return cuda, cupy


BACKENDS = [pytest.param(numba_backend, id="numba"),
            pytest.param(cuda_backend, id="cuda", marks=pytest.mark.gpu)]


def reference(name, g, w, state, hp, t):
    w = w.copy()
    st = {k: v.copy() for k, v in state.items()}
    lr = hp[0]
    if name == "sgd":
        w -= lr * g
    elif name == "momentum":
        st["v"] = hp[1] * st["v"] + g
        w -= lr * st["v"]
    elif name == "nesterov":
        st["v"] = hp[1] * st["v"] + g
        w -= lr * (g + hp[1] * st["v"])
    elif name == "adagrad":
        st["h"] = st["h"] + g * g
        w -= lr * g / (np.sqrt(st["h"]) + hp[1])
    elif name == "adam":
        b1, b2, eps = hp[1], hp[2], hp[3]
        st["m"] = b1 * st["m"] + (1 - b1) * g
        st["v"] = b2 * st["v"] + (1 - b2) * g * g
        w -= lr * (st["m"] / (1 - b1 ** t)) / (np.sqrt(st["v"] / (1 - b2 ** t)) + eps)
    return w, st


HP = {"sgd": (0.1,), "momentum": (0.1, 0.9), "nesterov": (0.1, 0.9), "adagrad": (0.1, 1e-8),
      "adam": (0.01, 0.9, 0.999, 1e-8)}
SLOTS = {name: rule.slots for name, rule in RULES.items()}


def test_every_rule_has_a_kernel_in_every_module():
    """One record per rule (gpups.optim.RULES); each kernel module keys into it."""
    import os

    from gpups.kernels import cpu, cpu_numpy

    assert set(HP) == set(RULES)
    src = open(os.path.join(os.path.dirname(cpu.__file__), "optim.cu")).read()
    for name, rule in RULES.items():
        assert len(cpu.UPDATES[name]) == 2 and len(cpu_numpy.UPDATES[name]) == 2
        assert f"void {name}_##S(ARGS(T), T* w, " + "".join(f"T* {s}, " for s in rule.slots) in src, name
        assert len(rule.scalars({**rule.defaults}, 1)) == len(HP[name]) + (2 if rule.step_dependent else 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("name", list(HP))
@pytest.mark.parametrize("serial", [False, True])
def test_fused_update_matches_formula(backend, name, dtype, rtol, serial):
    kernels, xp = backend()
    k, n = 5, 10001
    G = RNG.standard_normal((k, n)).astype(dtype)
    G[3] = np.nan    # poison: a buffer not in rows must never be read
    G[1, 7] = np.inf  # worker 1 is in rows but flagged bad: skipped
    rows = np.array([0, 1, 2, 4], np.int64)
    bad = np.array([0, 9, 0, 0, 0], np.int64)
    w0 = RNG.standard_normal(n).astype(dtype)
    state0 = {s: np.abs(RNG.standard_normal(n)).astype(dtype) for s in SLOTS[name]}
    t = 3
    g = G[[0, 2, 4]].sum(0) / 3  # mean over the good rows
    hp = HP[name]
    scalars = hp if name != "adam" else hp + (1 / (1 - hp[1] ** t), 1 / (1 - hp[2] ** t))
    w = xp.array(w0)  # a copy: w0 stays the reference input
    state = {s: xp.array(v) for s, v in state0.items()}
    fn = kernels.UPDATES[name][1 if serial else 0]
    fn(xp.asarray(G), xp.asarray(rows), xp.asarray(bad), dtype(1 / 4), w, *state.values(),
       *(dtype(x) for x in scalars))
    w_ref, st_ref = reference(name, g.astype(np.float64), w0.astype(np.float64),
                              {s: v.astype(np.float64) for s, v in state0.items()}, hp, t)
    host = (lambda a: a.get()) if xp is not np else (lambda a: a)
    np.testing.assert_allclose(host(w), w_ref, rtol=rtol, atol=rtol)
    for s in state:
        np.testing.assert_allclose(host(state[s]), st_ref[s], rtol=rtol, atol=rtol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_rows_bad_changes_nothing(backend):
    kernels, xp = backend()
    G = xp.asarray(np.full((2, 100), np.nan))
    w = xp.asarray(RNG.standard_normal(100))
    v = xp.asarray(RNG.standard_normal(100))
    w0, v0 = w.copy(), v.copy()
    kernels.UPDATES["momentum"][0](G, xp.asarray([0, 1]), xp.asarray([1, 1]), 0.5, w, v, 0.1, 0.9)
    assert bool((w == w0).all()) and bool((v == v0).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_aggregate_and_nonfinite_flags(backend):
    kernels, xp = backend()
    G = RNG.standard_normal((4, 1000))
    out = xp.asarray(np.full(1000, np.nan))
    kernels.aggregate(xp.asarray(G), xp.asarray([1, 3]), xp.zeros(4, xp.int64), 0.5, out)
    np.testing.assert_allclose(out.get() if xp is not np else out, (G[1] + G[3]) / 2)
    bad = xp.zeros((3, 4), xp.int64)
    stamp = xp.asarray([7], dtype=xp.int64)
    x = xp.asarray(G[0].copy())
    kernels.flag_nonfinite(x, bad, 2, stamp)
    assert int(bad.sum()) == 0
    x[500] = np.inf
    kernels.flag_nonfinite(x, bad, 2, stamp)
    stamp[0] = 9
    bad[0, 2] = 0  # the worker clears its flag at the start of each push interval
    kernels.flag_nonfinite(x, bad, 2, stamp)
    got = bad.get() if xp is not np else bad
    assert got[:, 2].tolist() == [9, 2, 7] and int(got.sum()) == 18


@pytest.mark.parametrize("name", list(HP))
def test_numpy_fallback_kernels_equal_numba(name):
    from gpups.kernels import cpu, cpu_numpy
    G = RNG.standard_normal((4, 777))
    rows, bad = np.array([0, 1, 3]), np.array([0, 1, 0, 0])
    outs = []
    for mod in (cpu, cpu_numpy):
        w = np.linspace(-1, 1, 777)
        state = [np.full(777, 0.5) for _ in SLOTS[name]]
        hp = HP[name] if name != "adam" else HP[name] + (1.5, 1.2)
        mod.UPDATES[name][0](G, rows, bad, 0.25, w, *state, *hp)
        outs.append([w, *state])
    for a, b in zip(*outs):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(HP))
@pytest.mark.parametrize("flagged", [False, True])
def test_cuda_fused_pull_equals_update_then_copy(name, flagged):
    """ASP's update writes the new parameters into the pusher's replica in the same pass: the
    same parameters and state as the update alone, and the replica equal to them (all rows
    flagged: nothing changes and the replica still gets the parameters)."""
    kernels, xp = cuda_backend()
    n = 70001
    G = xp.asarray(RNG.standard_normal((3, n)))
    rows, bad = xp.asarray([1]), xp.asarray([0, int(flagged), 0])
    w0 = xp.asarray(RNG.standard_normal(n))
    state0 = [xp.asarray(np.abs(RNG.standard_normal(n))) for _ in SLOTS[name]]
    hp = HP[name] if name != "adam" else HP[name] + (1.5, 1.1)
    fn = kernels.UPDATES[name][0]
    w1, s1 = w0.copy(), [s.copy() for s in state0]
    fn(G, rows, bad, 1.0, w1, *s1, *hp)
    w2, s2 = w0.copy(), [s.copy() for s in state0]
    pulled = xp.full(n, xp.nan)
    fn(G, rows, bad, 1.0, w2, *s2, *hp, pull=pulled)
    assert bool((w2 == w1).all()) and all(bool((a == b).all()) for a, b in zip(s1, s2))
    assert bool((pulled == w2).all())
    assert bool((w1 == w0).all()) == flagged
