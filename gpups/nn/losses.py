"""Losses over the network's output ``z`` (n, m) plus an optional fused bias ``b`` (the last
Dense layer's, added inside the loss kernel as the built-in models always did): the mean loss,
its gradient ``dz`` and the bias gradient ``db``, and what evaluation reports."""
from __future__ import annotations

from typing import Any

from ..models.base import _mse, labels_of, xp_of


class Loss:
    name = ""
    classes = False   # labels are class indices (checked against the output width)
    binary = False    # labels are 0/1 targets

    def __call__(self, z: Any, b: Any, y: Any, dz: Any, db: Any, ws: dict[str, Any], ops: Any) -> Any:
        raise NotImplementedError

    def evaluate(self, z: Any, b: Any, y: Any, ops: Any) -> tuple[float, int | None]:
        """(sum of the batch's losses, correct predictions or None)."""
        raise NotImplementedError

    def predict(self, z: Any) -> Any:
        return z


class SoftmaxCE(Loss):
    """Softmax cross-entropy against class indices (one fused kernel with the bias)."""

    name = "softmax_ce"
    classes = True

    def __call__(self, z, b, y, dz, db, ws, ops):
        return ops.softmax_xent(z, b, labels_of(y, xp_of(z)), dz, db)

    def evaluate(self, z, b, y, ops):
        ls, hits = ops.softmax_eval(z, b, labels_of(y, xp_of(z)))
        return float(ls), int(hits)

    def predict(self, z):
        return z.argmax(axis=1)


class BCEWithLogits(Loss):
    """Binary cross-entropy of sigmoid(z) against 0/1 targets, in the stable log-sum-exp form."""

    name = "bce_with_logits"
    binary = True

    def __call__(self, z, b, y, dz, db, ws, ops):
        xp = xp_of(z)
        n = z.shape[0]
        t = y.reshape(z.shape).astype(z.dtype)
        v = z + b
        loss = float((xp.logaddexp(0, v) - t * v).sum()) / n
        dz[...] = (1.0 / (1.0 + xp.exp(-v)) - t) / n
        db[...] = dz.sum(axis=0)
        return loss

    def evaluate(self, z, b, y, ops):
        xp = xp_of(z)
        v = z + b
        t = y.reshape(v.shape).astype(v.dtype)
        return float((xp.logaddexp(0, v) - t * v).sum()), int(((v > 0) == (t > 0.5)).sum())

    def predict(self, z):
        return (z > 0).astype(z.dtype)


class MSE(Loss):
    """Half the mean squared error (no allocation on a GPU: the step can be captured)."""

    name = "mse"

    def __call__(self, z, b, y, dz, db, ws, ops):
        return _mse(z, b, y, dz, db, ws.get("loss"))

    def evaluate(self, z, b, y, ops):
        r = z + b - y.reshape(z.shape)
        return 0.5 * float((r * r).sum()), None


LOSSES = {"softmax_ce": SoftmaxCE, "bce_with_logits": BCEWithLogits, "mse": MSE}
softmax_ce, bce_with_logits, mse = SoftmaxCE(), BCEWithLogits(), MSE()


def resolve_loss(loss: Any) -> Loss:
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str) and loss in LOSSES:
        return LOSSES[loss]()
    raise ValueError(f"loss={loss!r} is not allowed: expected one of {tuple(LOSSES)}")


