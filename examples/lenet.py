"""LeNet-style CNN (conv 32 and 64 filters of 5x5, fc 512) on the MNIST sample, 2 workers."""
import sys

import gpups
from gpups import datasets
from gpups.models import LeNet

rows = int(sys.argv[1]) if len(sys.argv) > 1 else 4000   # fewer rows for a quicker look
data = datasets.mnist5k(image=True)                      # (n, 1, 28, 28)
net = LeNet(input_shape=(1, 28, 28), classes=10)
res = gpups.paramserv(net.init(0), data.X[:rows], data.y[:rows], upd=net.gradients, agg="momentum",
                      hyperparams={"lr": 0.02}, utype="BSP", k=2, epochs=2, batchsize=64,
                      val_features=data.Xv, val_labels=data.yv)
print(f"validation accuracy {res.history[-1]['val_accuracy']:.3f}")
