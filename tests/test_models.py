"""Built-in models: analytic gradients equal central finite differences (float64), every
parameter tensor checked separately; the numba kernels equal the array-expression reference;
a model trained with plain SGD equals the same model through paramserv with k=1."""
import numpy as np
import pytest

import gpups
from gpups.kernels import cpu_nn
from gpups.models import MLP, LeNet, LinearRegression, SoftmaxRegression
from gpups.models.ops import ArrayOps, NumbaOps
from helpers import finite_differences

RNG = np.random.default_rng(0)


def case(name):
    if name == "linear":
        net = LinearRegression(5, 2)
        return net, RNG.standard_normal((7, 5)), RNG.standard_normal((7, 2))
    if name == "softmax":
        return SoftmaxRegression(5, 3), RNG.standard_normal((7, 5)), RNG.integers(0, 3, 7)
    if name.startswith("mlp"):
        act = name.split("-")[1]
        return MLP([5, 6, 4, 3], activation=act), RNG.standard_normal((7, 5)), RNG.integers(0, 3, 7)
    net = LeNet(input_shape=(2, 8, 8), classes=3, filters=(3, 4), hidden=6, kernel=3)
    return net, RNG.standard_normal((4, 2, 8, 8)), RNG.integers(0, 3, 4)


MODELS = ["linear", "softmax", "mlp-relu", "mlp-tanh", "mlp-sigmoid", "lenet"]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("reg", [0.0, 0.1])
def test_gradients_equal_finite_differences(name, reg):
    net, x, y = case(name)
    params = net.init(3, dtype=np.float64)
    for p in params.values():  # non-zero biases, so every term is exercised
        p += 0.1 * RNG.standard_normal(p.shape)
    hp = {"reg": reg}
    grads, loss = net.gradients(params, x, y, hp)
    assert abs(float(loss) - net.loss(params, x, y, hp)) < 1e-12
    num = finite_differences(lambda: net.loss(params, x, y, hp), params)
    for pname in params:
        np.testing.assert_allclose(grads[pname], num[pname], rtol=1e-5, atol=1e-7, err_msg=f"{name}: {pname}")


@pytest.mark.parametrize("name", MODELS)
def test_gradients_write_into_out_and_reuse_buffers(name):
    net, x, y = case(name)
    params = net.init(0, dtype=np.float64)
    out = {k: np.full_like(v, np.nan) for k, v in params.items()}  # poisoned
    g1, _ = net.gradients(params, x, y, {}, out=out)
    assert all(g1[k] is out[k] for k in out)
    ref, _ = net.gradients(params, x, y, {})
    for k in out:
        np.testing.assert_array_equal(out[k], ref[k])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numba_layer_kernels_equal_reference(dtype):
    ref = ArrayOps(np)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for ops in (cpu_nn.parallel_ops, cpu_nn.serial_ops, NumbaOps()):
        for act in range(4):
            z = RNG.standard_normal((33, 17)).astype(dtype)
            b = RNG.standard_normal(17).astype(dtype)
            a1, a2 = z.copy(), z.copy()
            ops.bias_act(a1, b, act)
            ref.bias_act(a2, b, act)
            np.testing.assert_allclose(a1, a2, rtol=tol, atol=tol)
            d1, d2 = z.copy(), z.copy()
            db1, db2 = np.full(17, np.nan, dtype), np.full(17, np.nan, dtype)
            ops.act_back_colsum(d1, a1, db1, act)
            ref.act_back_colsum(d2, a2, db2, act)
            np.testing.assert_allclose(d1, d2, rtol=tol, atol=tol)
            np.testing.assert_allclose(db1, db2, rtol=tol, atol=tol * 10)
        z = RNG.standard_normal((9, 4)).astype(dtype) * 5
        b = RNG.standard_normal(4).astype(dtype)
        y = RNG.integers(0, 4, 9)
        outs = []
        for impl in (ops, ref):
            dz, db = np.full_like(z, np.nan), np.full(4, np.nan, dtype)
            loss = impl.softmax_xent(z, b, y, dz, db)
            outs.append((loss, dz, db, impl.softmax_eval(z, b, y)))
        for a, c in zip(outs[0], outs[1]):
            np.testing.assert_allclose(np.asarray(a, float), np.asarray(c, float), rtol=tol, atol=tol)
        x = RNG.standard_normal((3, 8, 6, 2)).astype(dtype)
        c1, c2 = (np.full((3 * 8 * 6, 3 * 3 * 2), np.nan, dtype) for _ in range(2))
        ops.im2col(x, 3, 3, 1, c1)
        ref.im2col(x, 3, 3, 1, c2)
        np.testing.assert_array_equal(c1, c2)
        x1, x2 = np.full_like(x, np.nan), np.full_like(x, np.nan)
        ops.col2im(c1, 3, 3, 1, x1)
        ref.col2im(c1, 3, 3, 1, x2)
        np.testing.assert_allclose(x1, x2, rtol=tol, atol=tol)
        y1, y2 = (np.full((3, 4, 3, 2), np.nan, dtype) for _ in range(2))
        i1, i2 = (np.full((3, 4, 3, 2), -1, np.int64) for _ in range(2))
        ops.maxpool2(x, y1, i1)
        ref.maxpool2(x, y2, i2)
        np.testing.assert_array_equal(y1, y2)
        np.testing.assert_array_equal(i1, i2)
        dy = RNG.standard_normal(y1.shape).astype(dtype)
        g1, g2 = np.full_like(x, np.nan), np.full_like(x, np.nan)
        ops.maxpool2_back(dy, i1, g1)
        ref.maxpool2_back(dy, i2, g2)
        np.testing.assert_array_equal(g1, g2)


@pytest.mark.parametrize("name", ["softmax", "mlp-relu", "lenet", "linear"])
def test_plain_sgd_equals_paramserv_with_one_worker(name):
    net, _, _ = case(name)
    shape = (2, 8, 8) if name == "lenet" else (5,)
    X = RNG.standard_normal((24, *shape))
    y = RNG.standard_normal((24, 2)) if name == "linear" else RNG.integers(0, 3, 24)
    params = net.init(1, dtype=np.float64)
    ref = {k: v.copy() for k, v in params.items()}
    for _ in range(2):
        for lo in range(0, 24, 6):
            g, _ = net.gradients(ref, X[lo:lo + 6], y[lo:lo + 6], {})
            for k in ref:
                ref[k] -= 0.05 * g[k]
    res = gpups.paramserv(params, X, y, upd=net.gradients, hyperparams={"lr": 0.05}, k=1, batchsize=6,
                          epochs=2, progress=False, device="cpu")
    for k in ref:
        np.testing.assert_allclose(res.model[k], ref[k], rtol=1e-12, atol=1e-14)


def test_model_errors_name_the_option():
    with pytest.raises(ValueError, match=r"sizes=\[5\].*at least two"):
        MLP([5])
    with pytest.raises(ValueError, match=r"activation='gelu'.*'relu', 'tanh', 'sigmoid'"):
        MLP([5, 2], activation="gelu")
    with pytest.raises(ValueError, match=r"input_shape=\(1, 30, 30\).*divisible by 4"):
        LeNet(input_shape=(1, 30, 30))


def test_predict_and_evaluate_agree():
    net, x, y = case("mlp-relu")
    params = net.init(0, dtype=np.float64)
    pred = net.predict(params, x)
    assert net.evaluate(params, x, y)["accuracy"] == pytest.approx(float((pred == y).mean()))
