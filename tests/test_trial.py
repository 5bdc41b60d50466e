"""The trial of an upd that is not declared graph-safe (gpups.trial), on the CPU: its logic
driven by a stand-in for a CUDA graph, and the plan that decides who is tried. The trial on a
real GPU (private pool, matmul redirected, CuPy's refusals) is in test_gpu.py."""
import numpy as np
import pytest

from gpups import graph_safe, nn
from gpups.capture import Tryable, capture_plan
from gpups.flat import Layout
from gpups.models import MLP
from gpups.trial import Trial, differs

RNG = np.random.default_rng(0)


class ClosureGraph:
    """Stands for a CUDA graph: ``capture`` records the work without running it and ``replay``
    runs that same work again, on the buffers and with the Python values it was captured with
    (the trial hands each call a dict of its own)."""

    def __init__(self, fail: Exception | None = None):
        self.fail, self.captures, self.replays, self.eagers = fail, 0, 0, 0

    def eager(self, fn):
        self.eagers += 1
        return fn()

    def capture(self, fn):
        self.captures += 1
        if self.fail is not None:
            raise self.fail
        return fn

    def replay(self, graph):
        self.replays += 1
        graph()


def setup(upd, dtype=np.float64):
    net = MLP([6, 5, 3])
    params = net.init(0, dtype=dtype)
    layout = Layout.of(params)
    flat = layout.flatten(params, np.empty(layout.size, dtype))
    x = RNG.standard_normal((8, 6)).astype(dtype)
    y = RNG.integers(0, 3, 8)
    return net, layout, flat, x, y


def user_mlp(net):
    """A user's own numpy upd (no out=, new arrays each call, device scalar loss)."""
    def upd(p, x, y, hp):
        g, loss = net.gradients(p, x, y, hp)
        return {k: v.copy() for k, v in g.items()}, np.asarray(loss)
    return upd


def trial(upd, wants_out=False, hp=None, **kw):
    net, layout, flat, x, y = setup(None, **kw)
    upd = upd(net)
    t = Trial(upd, wants_out, layout, np, flat, x, y, {"lr": 0.1, "worker": 0, "step": 3, **(hp or {})})
    return t, flat, x


def test_a_pure_upd_passes_and_leaves_the_workers_buffers_alone():
    t, flat, x = trial(user_mlp)
    flat0, x0 = flat.copy(), x.copy()
    cap = ClosureGraph()
    assert t.run(cap) is None and t.passed
    assert (cap.eagers, cap.captures, cap.replays) == (2, 1, 1)
    np.testing.assert_array_equal(flat, flat0)
    np.testing.assert_array_equal(x, x0)


def test_an_upd_writing_into_out_passes():
    def make(net):
        def upd(p, x, y, hp, out=None):  # (the built-ins' way: into the views it is given)
            g, loss = net.gradients(p, x, y, hp, out=out)
            assert all(g[k] is out[k] for k in out)
            return g, np.asarray(loss)
        return upd

    t, _, _ = trial(make, wants_out=True)
    assert t.run(ClosureGraph()) is None


def test_an_upd_that_depends_on_the_step_differs_and_stays_eager():
    def make(net):
        def upd(p, x, y, hp):  # a dropout-like mask drawn from hp['step']
            g, loss = user_mlp(net)(p, x, y, hp)
            mask = np.random.default_rng(hp["step"]).random(g["W1"].shape) > 0.5
            return {**g, "W1": g["W1"] * mask}, loss
        return upd

    t, _, _ = trial(make)
    reason = t.run(ClosureGraph())
    assert t.passed is False and "differs" in reason and "W1" in reason and "step" in reason


def test_host_state_that_changes_per_call_differs():
    def make(net):
        calls = []

        def upd(p, x, y, hp):
            calls.append(1)
            g, loss = user_mlp(net)(p, x, y, hp)
            return {k: v * len(calls) for k, v in g.items()}, loss
        return upd

    reason = trial(make)[0].run(ClosureGraph())
    assert reason is not None and "differs" in reason


def test_a_host_number_loss_is_refused():
    def make(net):
        def upd(p, x, y, hp):
            g, loss = user_mlp(net)(p, x, y, hp)
            return g, float(loss)
        return upd

    reason = trial(make)[0].run(ClosureGraph())
    assert "host number" in reason


def test_a_capture_cupy_refuses_names_the_way_out():
    t, _, _ = trial(user_mlp)
    refusal = NotImplementedError("calling cuBLAS API during stream capture is currently unsupported")
    reason = t.run(ClosureGraph(fail=refusal))
    assert t.passed is False and "capturing it failed" in reason and "cupy.matmul" in reason


def test_an_upd_with_wrong_shapes_fails_the_trial_with_the_tensor_named():
    def make(net):
        def upd(p, x, y, hp):
            g, loss = user_mlp(net)(p, x, y, hp)
            return {**g, "b1": g["b1"][:-1]}, loss
        return upd

    reason = trial(make)[0].run(ClosureGraph())
    assert "eager run failed" in reason and "'b1'" in reason


@pytest.mark.parametrize("dtype,close,far", [(np.float32, 1e-5, 1e-2), (np.float64, 1e-12, 1e-6)])
def test_differs_allows_rounding_not_more(dtype, close, far):
    layout = Layout.of({"a": np.zeros((3, 4), dtype), "b": np.zeros(4, dtype)})
    want = RNG.standard_normal(layout.size).astype(dtype)
    want[2] = np.nan
    assert differs(layout, want * (1 + close), want, np) is None  # (NaN where eager has NaN)
    got = want.copy()
    got[-1] += far * np.abs(want).max() * 10
    assert differs(layout, got, want, np).startswith("b:")
    assert differs(None, np.asarray(1.0, dtype), np.asarray(1.0 + far * 10, dtype), np).startswith("loss:")


def test_the_plan_tries_what_is_not_declared():
    def upd(p, x, y, hp):
        return p

    assert capture_plan(upd, {})[0] == "try"
    upd.graph_safe = False
    assert capture_plan(upd, {}) == ("eager", "upd is declared not graph-safe (graph_safe = False)")
    assert capture_plan(graph_safe(lambda p, x, y, hp: p), {}) == ("capture", None)
    net = MLP([3, 2])
    assert capture_plan(net.gradients, {}) == ("capture", None)
    mode, why = capture_plan(net.gradients, {"reg": 0.1})
    assert mode == "try" and "reg" in why  # (it allocates: a private pool holds that)
    ln = nn.Sequential([nn.Dense(4), nn.LayerNorm(), nn.Dense(2)], loss="softmax_ce", input_shape=(3,))
    mode, why = capture_plan(ln.gradients, {})
    assert mode == "try" and "LayerNorm" in why
    blocked = graph_safe(lambda p, x, y, hp: p, unless=lambda hp, owner: "it reads the host")
    assert capture_plan(blocked, {}) == ("eager", "it reads the host")
    maybe = graph_safe(lambda p, x, y, hp: p, unless=lambda hp, owner: Tryable("it allocates"))
    assert capture_plan(maybe, {}) == ("try", "it allocates")
