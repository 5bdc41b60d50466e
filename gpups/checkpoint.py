"""Checkpoints: the whole training state after an epoch, written atomically.

A checkpoint is one pickle file ``epoch-NNNNN.ckpt`` holding host copies of the server's
parameters and optimizer state, the workers' local optimizer state, clocks, history, epoch and
the options that must match on resume. It is written to a temporary file in the same folder,
flushed, fsynced and renamed over the final name, so a crash leaves either the old or the new
checkpoint, never half of one. The newest ``keep`` checkpoints are kept.
"""
from __future__ import annotations

import os
import pickle
import re
import tempfile
from typing import Any

_NAME = re.compile(r"^epoch-(\d{5,})\.ckpt$")


def save(folder: str, epoch: int, state: dict[str, Any], keep: int = 2) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"epoch-{epoch:05d}.ckpt")
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".ckpt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    for old in checkpoints(folder)[:-keep]:
        os.unlink(old)
    return path


def checkpoints(folder: str) -> list[str]:
    """Checkpoint files in ``folder``, oldest first."""
    if not os.path.isdir(folder):
        return []
    names = sorted((int(m.group(1)), n) for n in os.listdir(folder) if (m := _NAME.match(n)))
    return [os.path.join(folder, n) for _, n in names]


def load_latest(folder: str) -> dict[str, Any] | None:
    files = checkpoints(folder)
    if not files:
        return None
    with open(files[-1], "rb") as f:
        return pickle.load(f)
