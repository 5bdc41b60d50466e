"""The fused numba kernels against the textbook formulas, on poisoned buffers."""
import numpy as np
import pytest

from gpups.kernels import cpu

RNG = np.random.default_rng(0)


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
SLOTS = {"sgd": (), "momentum": ("v",), "nesterov": ("v",), "adagrad": ("h",), "adam": ("m", "v")}


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("name", list(HP))
@pytest.mark.parametrize("serial", [False, True])
def test_fused_update_matches_formula(name, dtype, rtol, serial):
    k, n = 5, 1001
    G = RNG.standard_normal((k, n)).astype(dtype)
    G[3] = np.nan  # poison: a buffer not in rows must never be read
    rows = np.array([0, 2, 4], np.int64)
    w0 = RNG.standard_normal(n).astype(dtype)
    state0 = {s: np.abs(RNG.standard_normal(n)).astype(dtype) for s in SLOTS[name]}
    t = 3
    g = G[rows].sum(0) / 3
    hp = HP[name]
    scalars = hp if name != "adam" else hp + (1 / (1 - hp[1] ** t), 1 / (1 - hp[2] ** t))
    w = w0.copy()
    state = {s: v.copy() for s, v in state0.items()}
    fn = cpu.UPDATES[name][1 if serial else 0]
    fn(G, rows, dtype(1 / 3), w, *state.values(), *(dtype(x) for x in scalars))
    w_ref, st_ref = reference(name, g.astype(np.float64), w0.astype(np.float64),
                              {s: v.astype(np.float64) for s, v in state0.items()}, hp, t)
    np.testing.assert_allclose(w, w_ref, rtol=rtol, atol=rtol)
    for s in state:
        np.testing.assert_allclose(state[s], st_ref[s], rtol=rtol, atol=rtol)


def test_aggregate_and_finite_check():
    G = RNG.standard_normal((4, 100))
    out = np.full(100, np.nan)
    cpu.aggregate(G, np.array([1, 3], np.int64), 0.5, out)
    np.testing.assert_allclose(out, (G[1] + G[3]) / 2)
    assert cpu.all_finite(G[0])
    x = G[0].copy()
    x[50] = np.inf
    assert not cpu.all_finite(x)
