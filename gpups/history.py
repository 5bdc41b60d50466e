"""Per-epoch records and the progress line printed while training."""
from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np


def epoch_record(epoch: int, seconds: float, workers: list, metrics: dict[str, float],
                 extra: dict[str, Any], skipped: list[int]) -> dict[str, Any]:
    """One epoch's record; ``extra`` holds the sync policy's own fields (SBP's ``dropped``)."""
    counts = sum(w.loss_count for w in workers)
    loss = sum(w.mean_loss() * w.loss_count for w in workers if w.loss_count) / counts if counts else None
    samples = sum(w.samples for w in workers)
    rec: dict[str, Any] = {
        "epoch": epoch + 1,
        "loss": loss,
        **metrics,
        "samples": samples,
        "samples_per_s": samples / seconds if seconds > 0 else float("inf"),
        "seconds": seconds,
        "pushes": [w.pushes for w in workers],
        "staleness_mean": [float(np.mean(w.staleness)) if w.staleness else 0.0 for w in workers],
        "staleness_max": [int(max(w.staleness)) if w.staleness else 0 for w in workers],
    }
    rec.update(extra)
    if any(skipped):
        rec["skipped"] = skipped
    return rec


class Progress:
    """One line per epoch on stderr: loss, validation metrics, samples/s; and within a long epoch
    a heartbeat line every ``every`` seconds with the share of batches launched so far."""

    every = 10.0

    def __init__(self, epochs: int, enabled: bool = True, stream: Any = None):
        self.epochs, self.enabled = epochs, enabled
        self.stream = stream or sys.stderr
        self.t0 = self.next = 0.0

    def start_epoch(self) -> None:
        self.t0 = time.perf_counter()
        self.next = self.t0 + self.every

    def due(self) -> bool:
        """Whether a heartbeat is due (cheap: called per push)."""
        return self.enabled and time.perf_counter() >= self.next

    def heartbeat(self, epoch: int, done: int, total: int, samples: int) -> None:
        now = time.perf_counter()
        self.next = now + self.every
        print(f"  epoch {epoch + 1}/{self.epochs}: {100 * done / max(total, 1):.0f}% of batches, "
              f"{samples / (now - self.t0):,.0f} samples/s, {now - self.t0:.0f}s",
              file=self.stream, flush=True)

    def epoch(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        parts = [f"epoch {rec['epoch']:>{len(str(self.epochs))}}/{self.epochs}"]
        if rec["loss"] is not None:
            parts.append(f"loss {rec['loss']:.4f}")
        parts += [f"{k} {v:.4f}" for k, v in rec.items() if k.startswith("val_")]
        parts.append(f"{rec['samples_per_s']:,.0f} samples/s")
        parts.append(f"{rec['seconds']:.2f}s")
        stale = max(rec["staleness_max"]) if rec["staleness_max"] else 0
        if stale:
            parts.append(f"max staleness {stale}")
        print("  ".join(parts), file=self.stream, flush=True)
