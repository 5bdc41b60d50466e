"""The same training on Ray actors: a local Ray instance is started for the call and stopped
after it (pass ray_address="auto" to use a cluster started with `ray start`). Needs gpups[ray].

Trains with checkpoints, so that a server shard that dies is restored and the run goes on."""
import sys
import tempfile

import gpups
from gpups import datasets
from gpups.models import MLP

data = datasets.digits()
net = MLP([64, 64, 10])
utype = sys.argv[1] if len(sys.argv) > 1 else "ASP"
with tempfile.TemporaryDirectory() as ckpt:
    res = gpups.paramserv(net.init(0), data.X, data.y, upd=net.gradients, agg="momentum",
                          hyperparams={"lr": 0.05}, utype=utype, k=2, servers=2, epochs=5, batchsize=32,
                          val_features=data.Xv, val_labels=data.yv, backend="ray", device="cpu",
                          checkpoint=ckpt)
print(f"{res.device}: {utype}, val accuracy {res.history[-1]['val_accuracy']:.3f}, "
      f"{res.history[-1]['samples_per_s']:,.0f} samples/s")
