"""Built-in models: each gives ``init``, ``gradients`` (the ``upd`` function), ``loss``,
``predict`` and ``evaluate``, on numpy and CuPy arrays alike."""
from .base import Model
from .cnn import LeNet
from .dense import MLP, LinearRegression, SoftmaxRegression

__all__ = ["Model", "LinearRegression", "SoftmaxRegression", "MLP", "LeNet", "for_data", "SPECS"]

SPECS = ("softmax", "mlp", "mlp:SIZES", "linear", "lenet")


def for_data(spec: str, data, hidden=(200,)) -> Model:
    """A built-in model sized for a :class:`gpups.datasets.Dataset`: ``softmax``, ``linear``,
    ``lenet``, ``mlp`` (hidden layers ``hidden``) or ``mlp:784-128-10`` (the first and last sizes
    are taken from the data)."""
    import numpy as np

    d = int(np.prod(data.shape))
    if spec == "softmax":
        return SoftmaxRegression(d, data.classes)
    if spec == "linear":
        return LinearRegression(d, data.y.shape[1] if data.y.ndim > 1 else 1)
    if spec == "lenet":
        return LeNet(input_shape=data.shape, classes=data.classes)
    if spec == "mlp":
        return MLP([d, *hidden, data.classes])
    if spec.startswith("mlp:"):
        sizes = [int(v) for v in spec[4:].split("-")]
        return MLP([d, *sizes[1:-1], data.classes])
    raise ValueError(f"model={spec!r} is not allowed: expected one of {SPECS}")
