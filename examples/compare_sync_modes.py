"""BSP, ASP, SSP, SBP and HOGWILD side by side on one data set: accuracy, samples/s, staleness."""
import gpups
from gpups import datasets
from gpups.models import MLP

data = datasets.mnist5k()
net = MLP([784, 128, 10])
modes = {"BSP": {}, "ASP": {}, "SSP": {"staleness": 2}, "SBP": {"backup_workers": 1}, "HOGWILD": {}}
print(f"{'utype':8} {'val acc':>8} {'samples/s':>10} {'max staleness':>14}")
for utype, extra in modes.items():
    res = gpups.paramserv(net.init(0), data.X, data.y, upd=net.gradients, agg="momentum",
                          hyperparams={"lr": 0.05}, utype=utype, k=4, epochs=4, batchsize=32,
                          val_features=data.Xv, val_labels=data.yv, progress=False, **extra)
    last = res.history[-1]
    print(f"{utype:8} {last['val_accuracy']:8.3f} {last['samples_per_s']:10,.0f} "
          f"{max(last['staleness_max']):14d}")
