"""Built-in models: each gives ``init``, ``gradients`` (the ``upd`` function), ``loss``,
``predict`` and ``evaluate``, on numpy and CuPy arrays alike."""
from .base import Model
from .cnn import LeNet
from .dense import MLP, LinearRegression, SoftmaxRegression

__all__ = ["Model", "LinearRegression", "SoftmaxRegression", "MLP", "LeNet"]
