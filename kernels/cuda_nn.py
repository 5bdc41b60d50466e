"""CUDA twins of :mod:`gpups.kernels.cpu_nn` (``nn.cu``) with the interface of
:class:`gpups.models.ops.ArrayOps`, plus ``gemm`` through the graph-safe cuBLAS binding.

Reductions write into scratch buffers kept per (stream, shape, dtype): the same addresses on
every call, so a captured step can be replayed. Nothing here allocates once warm.
"""
from __future__ import annotations

import functools
from typing import Any

import cupy as cp
import numpy as np

from ..capture import on_stream_release
from . import cublas
from .cuda import THREADS, blocks, function

COLSUM_ROWS = 32  # rows per block of the column sums (more rows: a second pass adds the parts)


class CudaOps:
    def __init__(self) -> None:
        self._scratch: dict[tuple, Any] = {}

    def scratch(self, tag: str, shape: tuple, dtype: Any) -> Any:
        key = (cp.cuda.Device().id, cp.cuda.get_current_stream().ptr, tag, shape, np.dtype(dtype).str)
        buf = self._scratch.get(key)
        if buf is None:
            buf = self._scratch[key] = cp.empty(shape, dtype)
        return buf

    def release(self, key: tuple[int, int]) -> None:
        """Drop the scratch buffers of a (device, stream) that goes."""
        for k in [k for k in self._scratch if k[:2] == key]:
            del self._scratch[k]

    @staticmethod
    def gemm(a: Any, b: Any, out: Any) -> Any:
        return cublas.gemm(a, b, out)

    def bias_act(self, z: Any, b: Any, act: int) -> None:
        rows, m = z.shape
        function("nn", "bias_act", z.dtype)((blocks(z.size),), (THREADS,),
                                            (z, b, np.int64(rows), np.int32(m), np.int32(act)))

    def colsum(self, d: Any, out: Any, scale: float = 1.0, h: Any = None, act: int = 4) -> None:
        """out = scale * column sums of d (rows, m); with ``h`` and ``act`` < 4, first
        d *= act'(h) in the same pass. One kernel up to COLSUM_ROWS rows, two beyond."""
        rows, m = d.shape
        chunks = max(1, min(64, -(-rows // COLSUM_ROWS)))
        chunk = (rows + chunks - 1) // chunks
        T = d.dtype.type
        h = d if h is None else h
        if chunks == 1:
            function("nn", "colsum_partial", d.dtype)(((m + 31) // 32, 1), (32, 8),
                                                      (d, h, out, np.int64(rows), np.int32(m), np.int64(chunk),
                                                       np.int32(act), T(scale)))
            return
        part = self.scratch("colsum", (chunks, m), d.dtype)
        function("nn", "colsum_partial", d.dtype)(((m + 31) // 32, chunks), (32, 8),
                                                  (d, h, part, np.int64(rows), np.int32(m), np.int64(chunk),
                                                   np.int32(act), T(1)))
        function("nn", "colsum_final", d.dtype)((blocks(m),), (THREADS,),
                                                (part, out, np.int32(chunks), np.int32(m), T(scale)))

    def act_back_colsum(self, d: Any, h: Any, db: Any, act: int) -> None:
        self.colsum(d, db, 1.0, h, act if act != 3 else 4)

    def softmax_xent(self, z: Any, b: Any, y: Any, dz: Any, db: Any) -> Any:
        n, c = z.shape
        if n <= 1024:  # the whole loss, its gradient and the bias gradient in one block
            loss = self.scratch("loss", (1,), z.dtype)
            function("nn", "softmax_xent_block", z.dtype)((1,), (256,), (z, b, y, dz, db, loss, np.int32(n), np.int32(c)))
            return loss.reshape(())
        lrow = self.scratch("lrow", (n, 1), z.dtype)
        loss = self.scratch("loss", (1,), z.dtype)
        function("nn", "softmax_xent", z.dtype)((blocks(n),), (THREADS,), (z, b, y, dz, lrow, np.int64(n), np.int32(c)))
        self.colsum(dz, db)
        self.colsum(lrow, loss)
        return loss.reshape(())

    def softmax_eval(self, z: Any, b: Any, y: Any) -> tuple[Any, Any]:
        n, c = z.shape
        tmp = self.scratch("evaltmp", (2, n), z.dtype)
        sums = self.scratch("evalsums", (2,), z.dtype)
        function("nn", "softmax_eval", z.dtype)((blocks(n),), (THREADS,), (z, b, y, tmp[0], tmp[1], np.int64(n), np.int32(c)))
        self.colsum(tmp[0].reshape(n, 1), sums[0:1])
        self.colsum(tmp[1].reshape(n, 1), sums[1:2])
        return sums[0], sums[1]

    def im2col(self, x: Any, kh: int, kw: int, pad: int, cols: Any) -> None:
        n, H, W, C = x.shape
        function("nn", "im2col", x.dtype)((blocks(cols.size),), (THREADS,),
                                          (x, cols, np.int32(n), np.int32(H), np.int32(W), np.int32(C),
                                           np.int32(kh), np.int32(kw), np.int32(pad)))

    def col2im(self, cols: Any, kh: int, kw: int, pad: int, dx: Any) -> None:
        n, H, W, C = dx.shape
        function("nn", "col2im", dx.dtype)((blocks(dx.size),), (THREADS,),
                                           (cols, dx, np.int32(n), np.int32(H), np.int32(W), np.int32(C),
                                            np.int32(kh), np.int32(kw), np.int32(pad)))

    def maxpool2(self, x: Any, y: Any, arg: Any) -> None:
        n, H, W, C = x.shape
        function("nn", "maxpool2", x.dtype)((blocks(y.size),), (THREADS,),
                                            (x, y, arg, np.int32(n), np.int32(H), np.int32(W), np.int32(C)))

    def maxpool2_back(self, dy: Any, arg: Any, dx: Any) -> None:
        n, H, W, C = dx.shape
        function("nn", "maxpool2_back", dx.dtype)((blocks(dx.size),), (THREADS,),
                                                  (dy, arg, dx, np.int32(n), np.int32(H), np.int32(W), np.int32(C)))


def gather_xy(x: Any, xb: Any, y: Any, yb: Any, counter: Any, flag: Any = None) -> None:
    """xb, yb = the counter[0]-th batch of x and y, in one launch; flag (one int64), if given,
    is cleared too. Copies 4-byte words where both batches allow it, else bytes."""
    unit = 4 if xb.nbytes % 4 == 0 and yb.nbytes % 4 == 0 else 1
    xw, yw = xb.nbytes // unit, yb.nbytes // unit
    function_plain("gather_batch_u32" if unit == 4 else "gather_batch_u8")(
        (blocks(xw + yw),), (THREADS,),
        (x, xb, np.int64(xw), y, yb, np.int64(yw), counter, np.uint64(0) if flag is None else flag))


def counter_inc(counter: Any) -> None:
    function_plain("counter_inc")((1,), (1,), (counter,))


_plain: dict[tuple, Any] = {}


def function_plain(name: str) -> Any:
    from .cuda import module

    key = (name, cp.cuda.runtime.getDevice())
    f = _plain.get(key)
    if f is None:
        f = _plain[key] = module("nn", key[1]).get_function(name)
    return f


@functools.lru_cache(maxsize=None)
def ops() -> CudaOps:
    return CudaOps()


on_stream_release(lambda key: ops().release(key))
