"""Quick start: an MLP on the bundled 5,000-image MNIST sample, 4 workers, BSP.

Runs on the GPU when CuPy finds one, else on the CPU (numpy + numba). About 5 s on 2 CPU cores.
"""
import gpups
from gpups import datasets
from gpups.models import MLP

data = datasets.mnist5k()                       # 4,000 train / 1,000 validation images, [0, 1]
net = MLP([784, 200, 10])
result = gpups.paramserv(
    net.init(seed=0), data.X, data.y,
    upd=net.gradients, agg="momentum", hyperparams={"lr": 0.05, "momentum": 0.9},
    utype="BSP", freq="BATCH", k=4, epochs=5, batchsize=64,
    val_features=data.Xv, val_labels=data.yv,   # net.evaluate is used for validation metrics
)
final = result.history[-1]
print(f"validation accuracy {final['val_accuracy']:.3f} after {final['epoch']} epochs on {result.device}")
