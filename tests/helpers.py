"""Reference loops the tests compare paramserv against."""
import numpy as np

from gpups.models import MLP


def small_net():
    return MLP([6, 5, 3], activation="tanh")


def plain_sgd(net, params, X, y, batchsize, lr, epochs=1):
    """One worker, no server: w -= lr * grad for each batch in order."""
    p = {k: v.copy() for k, v in params.items()}
    for _ in range(epochs):
        for lo in range(0, len(X), batchsize):
            g, _ = net.gradients(p, X[lo:lo + batchsize], y[lo:lo + batchsize], {})
            for name in p:
                p[name] -= lr * g[name]
    return p


def assert_models_close(a, b, rtol=1e-10, atol=1e-12):
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=rtol, atol=atol, err_msg=name)


def finite_differences(loss, params, eps=1e-6):
    """Central differences of ``loss()`` with respect to every element of every array in
    ``params`` (changed in place and put back)."""
    out = {}
    for name, p in params.items():
        num = np.zeros_like(p)
        flat, nflat = p.reshape(-1), num.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + eps
            up = loss()
            flat[i] = old - eps
            down = loss()
            flat[i] = old
            nflat[i] = (up - down) / (2 * eps)
        out[name] = num
    return out
