"""``gpups.nn``: layers with forward and backward, composed into models whose backward is
derived from the composition (as SystemDS's ``nn`` library gives ``paramserv`` its models).

>>> from gpups import nn
>>> net = nn.Sequential([nn.Dense(128, "relu"), nn.Dense(10)], loss="softmax_ce", input_shape=(784,))
>>> params = net.init(seed=0)          # then gpups.paramserv(params, X, y, upd=net.gradients, ...)
"""
from .blocks import Chain, Concat, Residual
from .conv import AvgPool2D, Conv2D, MaxPool2D
from .layers import GELU, Activation, Dense, Dropout, Embedding, Flatten, Layer, LayerNorm, ReLU, Sigmoid, Spec, Tanh
from .losses import MSE, BCEWithLogits, Loss, SoftmaxCE, bce_with_logits, mse, softmax_ce
from .sequential import Sequential

__all__ = ["Layer", "Spec", "Dense", "Conv2D", "MaxPool2D", "AvgPool2D", "Activation", "ReLU", "Tanh", "Sigmoid",
           "GELU", "Dropout", "Flatten", "LayerNorm", "Embedding", "Residual", "Concat", "Chain", "Sequential",
           "Loss", "SoftmaxCE", "BCEWithLogits", "MSE", "softmax_ce", "bce_with_logits", "mse"]
