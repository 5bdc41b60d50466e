"""Checkpoints: the whole training state after an epoch, written atomically.

A checkpoint is one pickle file ``epoch-NNNNN.ckpt`` holding host copies of the server's
parameters and optimizer state, the workers' local optimizer state, clocks, history, epoch and
the options that must match on resume. It is written to a temporary file in the same folder,
flushed, fsynced and renamed over the final name, so a crash leaves either the old or the new
checkpoint, never half of one; a temporary file left by a kill is removed at the next save. The
newest ``keep`` checkpoints are kept. On resume an unreadable newest checkpoint (truncated,
corrupt, empty, not gpups') is named in a warning and the one before it is tried.

Checkpoints are pickles: load only folders you trust.
"""
from __future__ import annotations

import os
import pickle
import re
import tempfile
import warnings
from typing import Any

_NAME = re.compile(r"^epoch-(\d{5,})\.ckpt$")
_TMP = re.compile(r"^\.tmp-.*\.ckpt$")
KEYS = ("format", "epoch", "fingerprint", "server", "history", "workers")


def save(folder: str, epoch: int, state: dict[str, Any], keep: int = 2) -> str:
    os.makedirs(folder, exist_ok=True)
    for stale in os.listdir(folder):  # half-written files of a killed run
        if _TMP.match(stale):
            os.unlink(os.path.join(folder, stale))
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
    """The newest readable checkpoint in ``folder`` (None if it has none). An unreadable one is
    named in a warning and the one before it tried; if none is readable, a ``ValueError``."""
    files = checkpoints(folder)
    if not files:
        return None
    bad = []
    for path in reversed(files):
        try:
            return read(path)
        except Exception as exc:  # (pickle raises many kinds on a damaged file)
            why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            bad.append(f"{os.path.basename(path)} ({why})")
            warnings.warn(f"gpups: checkpoint {path} is unreadable ({why}); trying the one before it",
                          RuntimeWarning, stacklevel=2)
    raise ValueError(f"checkpoint={folder!r} holds no readable checkpoint: {'; '.join(bad)}; expected "
                     "files written by gpups (remove the folder, or pass another, to start afresh)")


def read(path: str) -> dict[str, Any]:
    """One checkpoint file; ``ValueError`` if it is not a whole gpups checkpoint."""
    with open(path, "rb") as f:
        state = pickle.load(f)
    if not isinstance(state, dict) or any(k not in state for k in KEYS) or state["format"] != 1:
        raise ValueError("not a gpups checkpoint")
    return state
