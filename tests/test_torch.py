"""PyTorch modules as workers (gpups.torch): equal to PyTorch's own loop, under every mode."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import gpups  # noqa: E402
import gpups.torch as gt  # noqa: E402
from gpups.partition import partition  # noqa: E402

F = torch.nn.functional


def cnn(seed=0, channels=4, classes=3, side=8, norm=False):
    torch.manual_seed(seed)
    layers = [torch.nn.Conv2d(1, channels, 3, padding=1)]
    if norm:
        layers.append(torch.nn.BatchNorm2d(channels))
    layers += [torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
               torch.nn.Linear(channels * (side // 2) ** 2, classes)]
    return torch.nn.Sequential(*layers)


def images(n=96, side=8, classes=3, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    X = rng.standard_normal((n, 1, side, side)) + y[:, None, None, None] * 0.5
    return X.astype(dtype), y


def ps(params, X, y, upd, **kw):
    base = dict(upd=upd, device="cpu", progress=False, k=1, batchsize=16, epochs=2, hyperparams={"lr": 0.1})
    base.update(kw)
    return gpups.paramserv(params, X, y, **base)


def torch_sgd(module, X, y, batchsize, lr, epochs, order=None):
    """PyTorch's own loop: torch.optim.SGD over the batches in order."""
    opt = torch.optim.SGD(module.parameters(), lr=lr)
    order = np.arange(len(X)) if order is None else order
    for _ in range(epochs):
        for lo in range(0, len(order), batchsize):
            rows = order[lo:lo + batchsize]
            opt.zero_grad()
            F.cross_entropy(module(torch.from_numpy(X[rows])), torch.from_numpy(y[rows])).backward()
            opt.step()
    return {n: p.detach().numpy() for n, p in module.named_parameters()}


def test_k1_bsp_sgd_equals_torch_optim_sgd_loop():
    X, y = images()
    m = cnn()
    params, upd, _ = gt.functional(m, F.cross_entropy)
    res = ps(params, X, y, upd)
    ref = torch_sgd(cnn(), X, y, 16, 0.1, 2)
    assert res.model.keys() == ref.keys()
    for name in ref:
        assert res.model[name].dtype == np.float32
        np.testing.assert_allclose(res.model[name], ref[name], rtol=1e-6, atol=1e-6, err_msg=name)
    for name, p in m.named_parameters():  # the module given is left as it was
        np.testing.assert_array_equal(p.detach().numpy(), params[name])


def test_bsp_k_workers_equals_torch_with_k_times_batch_float64():
    X, y = images(n=120, dtype=np.float64)
    k, b = 3, 8
    params, upd, _ = gt.functional(cnn().double(), F.cross_entropy)
    res = ps(params, X, y, upd, k=k, batchsize=b)
    parts = partition(len(X), k, "disjoint_contiguous", 0)
    order = np.concatenate([np.concatenate([p[r * b:(r + 1) * b] for p in parts]) for r in range(len(parts[0]) // b)])
    ref = torch_sgd(cnn().double(), X, y, k * b, 0.1, 2, order)
    for name in ref:
        np.testing.assert_allclose(res.model[name], ref[name], rtol=1e-12, atol=1e-13, err_msg=name)


@pytest.mark.parametrize("mode", [dict(utype="BSP", servers=2, agg="adam"), dict(utype="ASP", agg="momentum"),
                                  dict(utype="SSP", staleness=1, servers=2), dict(utype="SBP", backup_workers=1, k=3),
                                  dict(utype="HOGWILD"), dict(utype="BSP", freq="EPOCH", push="model")])
def test_every_mode_trains_the_module(mode):
    X, y = images(n=144)
    params, upd, evaluate = gt.functional(cnn(), F.cross_entropy)
    lr = {"adam": 0.01, "momentum": 0.005}.get(mode.get("agg"), 0.05)  # (momentum 0.9: 10x the step)
    kw = dict(k=2, epochs=4, hyperparams={"lr": lr})
    kw.update(mode)
    res = ps(params, X, y, upd, **kw)
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert evaluate(res.model, X, y)["loss"] < evaluate(params, X, y)["loss"]
    assert all(np.isfinite(v).all() for v in res.model.values())


def test_reg_adds_l2_on_weights_only():
    X, y = images(n=16)
    m = cnn()
    params, upd, _ = gt.functional(m, F.cross_entropy)
    g0, _ = upd(params, X, y, {})
    g1, _ = upd(params, X, y, {"reg": 0.5})
    for name, p in params.items():
        want = g0[name] + 0.5 * p if p.ndim >= 2 else g0[name]
        np.testing.assert_allclose(g1[name], want, rtol=1e-6, atol=1e-7, err_msg=name)
    m.zero_grad()
    F.cross_entropy(m(torch.from_numpy(X)), torch.from_numpy(y)).backward()
    for name, p in m.named_parameters():
        np.testing.assert_allclose(g0[name], p.grad.numpy(), rtol=1e-6, atol=1e-7, err_msg=name)


def test_gradients_are_written_into_out_without_a_new_array():
    X, y = images(n=16)
    params, upd, _ = gt.functional(cnn(), F.cross_entropy)
    out = {n: np.full_like(p, np.nan) for n, p in params.items()}
    grads, loss = upd(params, X, y, {}, out=out)
    assert all(grads[n] is out[n] for n in out) and np.isfinite(loss)
    assert all(np.isfinite(g).all() for g in out.values())


def test_batchnorm_buffers_are_per_worker_and_evaluate_uses_their_mean():
    X, y = images(n=96)
    params, upd, evaluate = gt.functional(cnn(norm=True), F.cross_entropy)
    res = ps(params, X, y, upd, k=2, epochs=1, hyperparams={"lr": 0.05})
    states = [upd.state(j).module for j in (0, 1)]
    means = [dict(m.named_buffers())["1.running_mean"] for m in states]
    assert not torch.equal(means[0], means[1])  # each worker saw its own rows
    merged = upd.export(res.model)
    np.testing.assert_allclose(dict(merged.named_buffers())["1.running_mean"].numpy(),
                               ((means[0] + means[1]) / 2).numpy(), rtol=1e-6)
    assert int(dict(merged.named_buffers())["1.num_batches_tracked"]) == 3
    with torch.no_grad():
        z = merged(torch.from_numpy(X))
    acc = float((z.argmax(1).numpy() == y).mean())
    assert evaluate(res.model, X, y)["accuracy"] == pytest.approx(acc)


def test_ssp_k2_trains_a_small_cnn_to_pytorchs_accuracy():
    from gpups.datasets import mnist5k

    ds = mnist5k(image=True)
    Xtr, Xva = ds.X.reshape(-1, 1, 28, 28), ds.Xv.reshape(-1, 1, 28, 28)

    def net():
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Conv2d(1, 6, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                   torch.nn.Flatten(), torch.nn.Linear(6 * 12 * 12, 10))
    params, upd, evaluate = gt.functional(net(), F.cross_entropy)
    res = ps(params, Xtr, ds.y, upd, evaluate=evaluate, val_features=Xva, val_labels=ds.yv, k=2,
             utype="SSP", staleness=2, batchsize=32, epochs=4, hyperparams={"lr": 0.03})
    ref = net()
    torch_sgd(ref, Xtr, ds.y, 32, 0.03, 4)
    with torch.no_grad():
        torch_acc = float((ref(torch.from_numpy(Xva)).argmax(1).numpy() == ds.yv).mean())
    ours = res.history[-1]["val_accuracy"]
    assert torch_acc > 0.85  # (the reference learned)
    print(f"SSP k=2 {ours:.3f}, PyTorch {torch_acc:.3f}")
    assert ours >= torch_acc - 0.025, (ours, torch_acc)  # (measured: 0.876-0.881 against 0.891)


def test_bad_modules_and_losses_are_named():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        gt.functional(lambda x: x, F.cross_entropy)
    mixed = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2).double())
    with pytest.raises(ValueError, match="several dtypes"):
        gt.functional(mixed, F.cross_entropy)
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        gt.functional(frozen, F.cross_entropy)
    X, y = images(n=32)
    params, upd, _ = gt.functional(cnn(), lambda z, t: F.cross_entropy(z, t, reduction="none"))
    with pytest.raises(ValueError, match="scalar"):
        ps(params, X, y, upd)
    params, upd, _ = gt.functional(cnn(side=10), F.cross_entropy)
    with pytest.raises(ValueError, match=r"features of shape \(16, 1, 8, 8\)"):
        ps(params, X, y, upd)


def test_frozen_parameters_stay_in_the_module():
    m = cnn()
    m[0].bias.requires_grad_(False)
    params, upd, _ = gt.functional(m, F.cross_entropy)
    assert "0.bias" not in params
    X, y = images()
    res = ps(params, X, y, upd, k=2)
    exported = upd.export(res.model)
    np.testing.assert_array_equal(exported[0].bias.detach().numpy(), m[0].bias.detach().numpy())
    np.testing.assert_array_equal(exported[0].weight.detach().numpy(), res.model["0.weight"])
