"""Click-through prediction with sparse embedding tables: DLRM on synthetic_ctr, 2 workers, BSP.

    python examples/ctr.py [n] [rows_per_table]
"""
import sys

import gpups
from gpups.datasets import synthetic_ctr
from gpups.models import DLRM

n = int(sys.argv[1]) if len(sys.argv) > 1 else 60_000
rows = int(sys.argv[2]) if len(sys.argv) > 2 else 500
data = synthetic_ctr(n, tables=[rows] * 6, seed=0)
train, val = data.split(0.2)
net = DLRM(dense=13, tables=data.tables, dim=8, bottom=(32, 8), top=(32,))
res = gpups.paramserv(net.init(seed=0), train.features, train.labels, upd=net.gradients, agg="adagrad",
                      hyperparams={"lr": 0.05}, k=2, batchsize=128, epochs=2, device="cpu",
                      val_features=val.features, val_labels=val.labels,
                      donate=True)  # the server trains the tables net.init made, without a copy
last = res.history[-1]
print(f"val AUC {last['val_auc']:.4f} (the hidden model's: {data.ceiling['auc']:.4f}), "
      f"val logloss {last['val_logloss']:.4f} (its: {data.ceiling['logloss']:.4f})")
