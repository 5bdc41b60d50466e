"""A hand-written `upd` (gradients of ridge-regularised logistic regression) and `agg` (SGD with
a decaying learning rate and gradient clipping), plugged into paramserv."""
import numpy as np

import gpups
from gpups import datasets

data = datasets.digits()
X, y = data.X, (data.y >= 5).astype(np.float32)        # binary task: digit >= 5
Xv, yv = data.Xv, (data.yv >= 5).astype(np.float32)


def upd(params, x, t, hp):
    """Gradient of mean logistic loss + ridge penalty; returns (grads, loss)."""
    z = x @ params["w"] + params["b"]
    p = 1 / (1 + np.exp(-z))
    loss = float(np.mean(np.logaddexp(0, z) - t * z)) + 0.5 * hp["reg"] * float(params["w"] @ params["w"])
    r = (p - t) / len(x)
    return {"w": x.T @ r + hp["reg"] * params["w"], "b": np.array([r.sum()], np.float32)}, loss


def agg(params, grads, state, hp):
    """SGD with lr / sqrt(step) and the gradient's norm clipped to hp['clip']."""
    step = state.get("step", 0) + 1
    norm = np.sqrt(sum(float((g * g).sum()) for g in grads.values()))
    scale = min(1.0, hp["clip"] / (norm + 1e-12)) * hp["lr"] / np.sqrt(step)
    return {n: params[n] - scale * grads[n] for n in params}, {"step": step}


def evaluate(params, x, t):
    pred = (x @ params["w"] + params["b"]) > 0
    return {"accuracy": float((pred == (t > 0.5)).mean())}


model = {"w": np.zeros(64, np.float32), "b": np.zeros(1, np.float32)}
res = gpups.paramserv(model, X, y, upd=upd, agg=agg, evaluate=evaluate, val_features=Xv, val_labels=yv,
                      hyperparams={"lr": 2.0, "reg": 1e-3, "clip": 5.0}, utype="ASP", k=3, epochs=5,
                      batchsize=32)
print(f"validation accuracy {res.history[-1]['val_accuracy']:.3f}")
