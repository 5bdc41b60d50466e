"""Built-in models: each gives ``init``, ``gradients`` (the ``upd`` function), ``loss``,
``predict`` and ``evaluate``, on numpy and CuPy arrays alike."""
from .base import Model
from .cnn import LeNet
from .dense import MLP, LinearRegression, SoftmaxRegression
from .dlrm import DLRM

__all__ = ["Model", "LinearRegression", "SoftmaxRegression", "MLP", "LeNet", "DLRM", "for_data", "check_spec", "SPECS"]

SPECS = ("softmax", "mlp", "mlp:SIZES", "linear", "lenet")


def for_data(spec: str, data, hidden=(200,)) -> Model:
    """A built-in model sized for a :class:`gpups.datasets.Dataset`: ``softmax``, ``linear``,
    ``lenet``, ``mlp`` (hidden layers ``hidden``) or ``mlp:784-128-10`` (the first and last sizes
    are taken from the data)."""
    import numpy as np

    check_spec(spec)
    d = int(np.prod(data.shape))
    if spec != "linear" and not data.classes:
        raise ValueError(f"model={spec!r} is not allowed for data {data.name!r}: it has real-valued targets, "
                         "not classes; expected model 'linear'")
    if spec == "softmax":
        return SoftmaxRegression(d, data.classes)
    if spec == "linear":
        return LinearRegression(d, data.y.shape[1] if data.y.ndim > 1 else 1)
    if spec == "lenet":
        return LeNet(input_shape=data.shape, classes=data.classes)
    if spec == "mlp":
        return MLP([d, *hidden, data.classes])
    return MLP([d, *mlp_sizes(spec)[1:-1], data.classes])


def check_spec(spec: str) -> None:
    """A ``ValueError`` naming ``spec`` unless it is one of :data:`SPECS`."""
    if spec.startswith("mlp:"):
        mlp_sizes(spec)
    elif spec not in ("softmax", "mlp", "linear", "lenet"):
        raise ValueError(f"model={spec!r} is not allowed: expected one of {SPECS}")


def mlp_sizes(spec: str) -> list[int]:
    """The layer sizes of ``mlp:784-128-10`` (first and last are replaced by the data's)."""
    parts = spec[4:].split("-")
    if len(parts) < 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"model={spec!r} is not allowed: expected mlp:SIZES, positive layer sizes joined "
                         "by '-', e.g. mlp:784-128-10")
    return [int(p) for p in parts]
