"""gpups.nn: every layer's backward equals central finite differences (float64), through models
that also put a parameterised layer in front of it (so its input gradient is checked too); the
built-in models are Sequential definitions; composed models train through paramserv."""
import numpy as np
import pytest

import gpups
from gpups import nn
from gpups.models import MLP, LeNet, SoftmaxRegression
from helpers import assert_models_close, finite_differences

RNG = np.random.default_rng(0)


def fd_check(net, x, y, hp=None, step=0, tol=1e-5):
    """Analytic gradients (at ``step``: a Dropout mask depends on it) against central
    differences of the training loss, element by element."""
    params = net.init(3, dtype=np.float64)
    for p in params.values():  # off the initial values: non-zero biases, gammas away from 1
        p += 0.1 * RNG.standard_normal(p.shape)
    net.workspace(np, x.shape[0], np.float64)["_step"] = step
    grads, loss = net.gradients(params, x, y, hp)
    assert abs(float(loss) - net.training_loss(params, x, y, hp, step=step)) < 1e-12
    num = finite_differences(lambda: net.training_loss(params, x, y, hp, step=step), params)
    for name in params:
        np.testing.assert_allclose(grads[name], num[name], rtol=tol, atol=1e-7, err_msg=name)


def classes(n, c=3):
    return RNG.integers(0, c, n)


DENSE = {
    "dense-relu": [nn.Dense(6, "relu"), nn.Dense(3)],
    "dense-tanh-sigmoid": [nn.Dense(6, "tanh"), nn.Dense(5, "sigmoid"), nn.Dense(3)],
    "dense-nobias": [nn.Dense(6, "relu", bias=False), nn.Dense(3, bias=False)],
    "activations": [nn.Dense(6), nn.ReLU(), nn.Dense(6), nn.Tanh(), nn.Dense(6), nn.Sigmoid(), nn.Dense(6),
                    nn.GELU(), nn.Dense(3)],
    "layernorm": [nn.Dense(6), nn.LayerNorm(), nn.Dense(3)],
    "dropout": [nn.Dense(8, "relu"), nn.Dropout(0.4, seed=7), nn.Dense(3)],
    "residual": [nn.Dense(6, "relu"), nn.Residual(nn.Dense(6, "tanh"), nn.Dense(6)), nn.ReLU(), nn.Dense(3)],
    "concat": [nn.Dense(5), nn.Concat([nn.Dense(4, "relu")], [nn.Dense(2, "tanh"), nn.LayerNorm()], nn.Flatten()),
               nn.Dense(3)],
    "last-activation": [nn.Dense(4), nn.Dense(3, "tanh")],  # no fused bias: the loss gets a zero one
}


@pytest.mark.parametrize("name", list(DENSE))
def test_dense_layers_equal_finite_differences(name):
    net = nn.Sequential(DENSE[name], loss="softmax_ce", input_shape=(5,))
    fd_check(net, RNG.standard_normal((7, 5)), classes(7), hp={"reg": 0.05}, step=3)


@pytest.mark.parametrize("loss", ["bce_with_logits", "mse"])
def test_losses_equal_finite_differences(loss):
    net = nn.Sequential([nn.Dense(6, "tanh"), nn.Dense(2)], loss=loss, input_shape=(5,))
    y = RNG.integers(0, 2, (7, 2)).astype(float) if loss == "bce_with_logits" else RNG.standard_normal((7, 2))
    fd_check(net, RNG.standard_normal((7, 5)), y)


IMAGES = {
    "conv-same": [nn.Conv2D(3, 3, activation="relu"), nn.Conv2D(2, 3), nn.Flatten(), nn.Dense(3)],
    "conv-stride-pad": [nn.Conv2D(3, 3, stride=2, padding=1, activation="tanh"), nn.Conv2D(2, 2, padding=0),
                        nn.Flatten(), nn.Dense(3)],
    "maxpool": [nn.Conv2D(3, 3, activation="relu"), nn.MaxPool2D(2), nn.Conv2D(2, 1), nn.Flatten(), nn.Dense(3)],
    "maxpool3-avgpool": [nn.Conv2D(2, 3), nn.AvgPool2D(2), nn.Conv2D(2, 1), nn.Flatten(), nn.Dense(3)],
    "residual-cnn": [nn.Conv2D(3, 3, activation="relu"), nn.Residual(nn.Conv2D(3, 3, activation="relu"),
                                                                     nn.Conv2D(3, 3)), nn.ReLU(), nn.MaxPool2D(2),
                     nn.Flatten(), nn.Dense(3)],
}


@pytest.mark.parametrize("name", list(IMAGES))
def test_image_layers_equal_finite_differences(name):
    net = nn.Sequential(IMAGES[name], input_shape=(2, 4, 4))
    fd_check(net, RNG.standard_normal((3, 2, 4, 4)), classes(3))


def test_maxpool_of_other_sizes_equals_finite_differences():
    net = nn.Sequential([nn.Conv2D(2, 3), nn.MaxPool2D(3), nn.Flatten(), nn.Dense(3)], input_shape=(1, 6, 6))
    fd_check(net, RNG.standard_normal((3, 1, 6, 6)), classes(3))


def test_embedding_equals_finite_differences_and_scatters_repeated_ids():
    net = nn.Sequential([nn.Embedding(7, 3), nn.Dense(4, "relu"), nn.Dense(2)], input_shape=(2,))
    ids = np.array([[0, 3], [3, 3], [6, 1], [0, 0]], float)  # repeats: their gradients add up
    fd_check(net, ids, classes(4, 2))


def test_dropout_masks_are_reproducible_and_change_with_the_step():
    layer = nn.Dropout(0.5, seed=1)
    a, b, c = layer.mask(np, (4, 100), 3), layer.mask(np, (4, 100), 3), layer.mask(np, (4, 100), 4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert set(np.unique(a)) == {0.0, 2.0} and abs((a > 0).mean() - 0.5) < 0.1
    net = nn.Sequential([nn.Dense(8, "relu"), nn.Dropout(0.3), nn.Dense(3)], input_shape=(5,))
    X, y = RNG.standard_normal((60, 5)), classes(60)
    runs = [gpups.paramserv(net.init(0, dtype=np.float64), X, y, upd=net.gradients, k=2, batchsize=10, epochs=2,
                            device="cpu", progress=False, hyperparams={"lr": 0.1}) for _ in range(2)]
    assert_models_close(runs[0].model, runs[1].model, rtol=0, atol=0)  # BSP: the same masks, the same model
    p = runs[0].model
    np.testing.assert_array_equal(net.predict(p, X), net.predict(p, X))  # no dropout in evaluation


def test_builtin_models_are_sequential_definitions():
    for net, names in [(MLP([4, 3, 2]), ["W1", "b1", "W2", "b2"]), (SoftmaxRegression(4, 2), ["W1", "b1"]),
                       (LeNet((1, 8, 8), 3, filters=(2, 3), hidden=4), ["W1", "b1", "W2", "b2", "W3", "b3", "W4",
                                                                         "b4"])]:
        assert isinstance(net, nn.Sequential)
        assert list(net.shapes()) == names
        assert net.last_bias == names[-1]
        assert net.capture_blocker() is None  # every layer of theirs runs fused kernels


def test_layers_that_allocate_keep_a_model_off_cuda_graphs():
    from gpups.capture import capture_blocker

    net = nn.Sequential([nn.Dense(4), nn.LayerNorm(), nn.Dense(2)], input_shape=(3,))
    assert "LayerNorm" in capture_blocker(net.gradients, {})
    assert capture_blocker(MLP([3, 2]).gradients, {}) is None
    assert "reg" in capture_blocker(MLP([3, 2]).gradients, {"reg": 0.1})


def test_composition_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"input_shape=None is not allowed"):
        nn.Sequential([nn.Dense(2)])
    with pytest.raises(ValueError, match=r"Embedding must be the first layer"):
        nn.Sequential([nn.Dense(2), nn.Embedding(3, 2)], input_shape=(4,))
    with pytest.raises(ValueError, match=r"Residual: the block maps rows of shape \(4,\) to \(3,\)"):
        nn.Sequential([nn.Residual(nn.Dense(3)), nn.Dense(2)], input_shape=(4,))
    with pytest.raises(ValueError, match=r"activation='swish' is not allowed"):
        nn.Dense(3, "swish")
    with pytest.raises(ValueError, match=r"loss='hinge' is not allowed"):
        nn.Sequential([nn.Dense(2)], loss="hinge", input_shape=(4,))
    with pytest.raises(ValueError, match=r"Conv2D needs image rows"):
        nn.Sequential([nn.Dense(4), nn.Conv2D(2, 3)], input_shape=(4,))
    with pytest.raises(ValueError, match=r"MaxPool2D\(2\) needs image rows .* divisible by 2"):
        nn.Sequential([nn.Conv2D(2, 3), nn.MaxPool2D(2)], input_shape=(1, 5, 5))
    net = nn.Sequential([nn.Dense(4, "relu"), nn.Dense(3)], input_shape=(6,))
    with pytest.raises(ValueError, match=r"features has shape \(10, 5\)"):
        gpups.paramserv(net.init(0), np.zeros((10, 5), np.float32), np.zeros(10, np.int64), upd=net.gradients,
                        batchsize=5, device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"labels\[0\] = 3 is outside the model's classes"):
        gpups.paramserv(net.init(0), np.zeros((10, 6), np.float32), np.full(10, 3), upd=net.gradients,
                        batchsize=5, device="cpu", progress=False)


def test_a_residual_mlp_trains_under_every_mode(blobs):
    X, y = blobs
    net = nn.Sequential([nn.Dense(16, "relu"), nn.Residual(nn.Dense(16, "relu"), nn.Dense(16)), nn.ReLU(),
                         nn.LayerNorm(), nn.Dense(3)], input_shape=(6,))
    for utype in ("BSP", "ASP", gpups.SSP(staleness=1), "HOGWILD"):
        res = gpups.paramserv(net.init(0, dtype=np.float64), X[:200], y[:200], upd=net.gradients, utype=utype, k=2,
                              batchsize=10, epochs=4, agg="momentum", hyperparams={"lr": 0.05}, device="cpu",
                              progress=False, val_features=X[200:], val_labels=y[200:])
        assert res.history[-1]["val_accuracy"] >= 0.85, utype
