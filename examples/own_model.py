"""Your own model with gpups.nn: a small CNN with a residual block, trained on the bundled MNIST
sample with two workers. Backward is derived from the layers; nothing is written by hand."""
import gpups
from gpups import datasets, nn

data = datasets.mnist5k(image=True)                     # (n, 1, 28, 28) float32, 10 classes
net = nn.Sequential([
    nn.Conv2D(16, 3, activation="relu"), nn.MaxPool2D(2),            # 14 x 14 x 16
    nn.Residual(nn.Conv2D(16, 3, activation="relu"), nn.Conv2D(16, 3)),
    nn.ReLU(), nn.MaxPool2D(2),                                      # 7 x 7 x 16
    nn.Flatten(), nn.Dense(64, "relu"), nn.Dense(10),
], loss="softmax_ce", input_shape=(1, 28, 28))

res = gpups.paramserv(net.init(seed=0), data.X, data.y, upd=net.gradients, agg="momentum",
                      hyperparams={"lr": 0.05, "momentum": 0.9}, utype="BSP", k=2, epochs=4, batchsize=32,
                      val_features=data.Xv, val_labels=data.yv)
print(f"validation accuracy {res.history[-1]['val_accuracy']:.3f}")
