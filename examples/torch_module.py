"""A PyTorch module trained by gpups: two workers under stale-synchronous parallel (SSP) on the
bundled MNIST sample, the module's own layers and autograd computing every gradient.

    pip install -e '.[data,torch]' && python examples/torch_module.py
"""
import torch

import gpups
import gpups.torch
from gpups import datasets

torch.manual_seed(0)
module = torch.nn.Sequential(
    torch.nn.Conv2d(1, 8, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),   # 12 x 12 x 8
    torch.nn.Flatten(), torch.nn.Linear(8 * 12 * 12, 10),
)
params, upd, evaluate = gpups.torch.functional(module, torch.nn.functional.cross_entropy)

data = datasets.mnist5k(image=True)                     # (n, 1, 28, 28) float32, 10 classes
res = gpups.paramserv(params, data.X, data.y, upd=upd, evaluate=evaluate, agg="momentum",
                      hyperparams={"lr": 0.01, "momentum": 0.9}, utype="SSP", staleness=2, k=2, epochs=3,
                      batchsize=32, val_features=data.Xv, val_labels=data.yv)
trained = upd.export(res.model)                         # a torch module again, holding the trained weights
with torch.no_grad():
    agree = (trained(torch.from_numpy(data.Xv)).argmax(1).numpy() == data.yv).mean()
print(f"validation accuracy {res.history[-1]['val_accuracy']:.3f} (the exported module: {agree:.3f})")
