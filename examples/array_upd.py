"""A hand-written MLP `upd` in array expressions: numpy on the CPU, CuPy on a GPU, the same code.

On a GPU gpups tries it under CUDA-graph capture (it is not declared graph-safe): one call is
captured in a private memory pool, replayed and compared with an eager call at the next step;
when they agree, the workers' push intervals replay as graphs. It uses `xp.matmul` rather than
`@`, since CuPy refuses cuBLAS in a capture and only `cupy.matmul` / `cupy.dot` are redirected
to gpups' graph-safe GEMM; it reads nothing on the host (the loss stays a device scalar).

    python examples/array_upd.py [--device cpu|cuda]
"""
import argparse

import numpy as np

import gpups
from gpups import datasets


def mlp_upd(xp):
    """``upd`` of a ReLU MLP with softmax cross-entropy; params ``W{i}``, ``b{i}``."""
    def upd(p, x, y, hp):
        n, layers = x.shape[0], len(p) // 2
        hs = [x]
        for i in range(1, layers + 1):
            z = xp.matmul(hs[-1], p[f"W{i}"]) + p[f"b{i}"]
            hs.append(xp.maximum(z, 0) if i < layers else z)
        z = hs.pop()
        e = xp.exp(z - z.max(axis=1, keepdims=True))
        prob = e / e.sum(axis=1, keepdims=True)
        onehot = xp.arange(z.shape[1])[None, :] == y[:, None]
        loss = -(xp.log(prob + 1e-30) * onehot).sum() / n
        d = (prob - onehot) / n
        grads = {}
        for i in range(layers, 0, -1):
            h = hs[i - 1]
            grads[f"W{i}"], grads[f"b{i}"] = xp.matmul(h.T, d), d.sum(axis=0)
            if i > 1:
                d = xp.matmul(d, p[f"W{i}"].T) * (h > 0)
        return grads, loss
    return upd


def mlp_evaluate(xp):
    def evaluate(p, x, y):
        h = x
        for i in range(1, len(p) // 2 + 1):
            z = xp.matmul(h, p[f"W{i}"]) + p[f"b{i}"]
            h = xp.maximum(z, 0)
        return {"accuracy": float((z.argmax(axis=1) == y).mean())}
    return evaluate


def init(sizes, xp, seed=0):
    rng = np.random.default_rng(seed)
    p = {}
    for i, (m, k) in enumerate(zip(sizes[:-1], sizes[1:]), 1):
        p[f"W{i}"] = (rng.standard_normal((m, k)) * np.sqrt(2.0 / m)).astype(np.float32)
        p[f"b{i}"] = np.zeros(k, np.float32)
    return {k: xp.asarray(v) for k, v in p.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    dev = gpups.device.resolve(args.device)
    xp = dev.xp
    data = datasets.mnist5k()
    res = gpups.paramserv(init([784, 128, 10], xp), data.X, data.y, upd=mlp_upd(xp), evaluate=mlp_evaluate(xp), agg="momentum",
                          hyperparams={"lr": 0.1, "momentum": 0.9}, utype="BSP", k=2, epochs=4, batchsize=64,
                          val_features=data.Xv, val_labels=data.yv, device=args.device)
    print(f"{res.device}: {res.graphs} CUDA graphs; validation accuracy {res.history[-1]['val_accuracy']:.3f}")


if __name__ == "__main__":
    main()
