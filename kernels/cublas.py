"""A graph-safe GEMM: cuBLAS called through ctypes with one handle per stream.

CuPy refuses cuBLAS calls during stream capture. This binding calls the cuBLAS library CuPy
already loaded, with a handle per stream whose stream and workspace are set once, before any
capture (cuBLAS's guidance for CUDA graphs), so the same call runs eagerly and inside a capture.
Row-major C = A @ B is computed as column-major C^T = B^T A^T.
"""
from __future__ import annotations

import contextlib
import ctypes
import glob
from typing import Any, Callable, Iterator

import cupy as cp
import numpy as np

from ..capture import on_stream_release

_lib = None
_handles: dict[tuple[int, int], Any] = {}
_H = ctypes.c_void_p


def _load() -> Any:
    global _lib
    if _lib is not None:
        return _lib
    a = cp.ones((2, 2), cp.float32)
    (a @ a).sum()  # make CuPy load cuBLAS
    path = None
    with open("/proc/self/maps") as maps:
        for line in maps:
            if "libcublas.so" in line and "Lt" not in line:
                path = line.split()[-1]
                break
    if path is None:
        cands = glob.glob("/usr/**/libcublas.so*", recursive=True) + glob.glob("/opt/**/libcublas.so*", recursive=True)
        if not cands:
            raise RuntimeError("libcublas not found in this process or under /usr, /opt")
        path = cands[0]
    lib = ctypes.CDLL(path)
    lib.cublasCreate_v2.argtypes = [ctypes.POINTER(_H)]
    lib.cublasSetStream_v2.argtypes = [_H, ctypes.c_void_p]
    lib.cublasSetWorkspace_v2.argtypes = [_H, ctypes.c_void_p, ctypes.c_size_t]
    lib.cublasDestroy_v2.argtypes = [_H]
    for name, ctype in (("cublasSgemm_v2", ctypes.c_float), ("cublasDgemm_v2", ctypes.c_double)):
        getattr(lib, name).argtypes = [_H, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                       ctypes.POINTER(ctype), ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                       ctypes.c_int, ctypes.POINTER(ctype), ctypes.c_void_p, ctypes.c_int]
    _lib = lib
    return lib


@on_stream_release
def release(key: tuple[int, int]) -> None:
    """Destroy the handle of a (device, stream) that is about to go (its workspace goes too)."""
    handle = _handles.pop(key, None)
    if handle is not None and _lib is not None:
        _lib.cublasDestroy_v2(handle.h)


class _Handle:
    def __init__(self, lib: Any, stream_ptr: int):
        self.h = _H()
        _check(lib.cublasCreate_v2(ctypes.byref(self.h)), "cublasCreate")
        _check(lib.cublasSetStream_v2(self.h, ctypes.c_void_p(stream_ptr)), "cublasSetStream")
        self.workspace = cp.empty(32 << 20, cp.uint8)
        _check(lib.cublasSetWorkspace_v2(self.h, ctypes.c_void_p(self.workspace.data.ptr), self.workspace.nbytes),
               "cublasSetWorkspace")


def _check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"{what} failed with cuBLAS status {status}")


def _operand(a: Any) -> tuple[Any, bool]:
    """(row-major buffer, transposed?) for a C- or F-contiguous 2-D array."""
    if a.flags.c_contiguous:
        return a, False
    if a.flags.f_contiguous:
        return a.T, True
    raise ValueError("gemm operands must be C- or F-contiguous 2-D arrays")


_ONE = {np.float32: ctypes.c_float(1.0), np.float64: ctypes.c_double(1.0)}
_ZERO = {np.float32: ctypes.c_float(0.0), np.float64: ctypes.c_double(0.0)}


def stream_handle() -> Any:
    """The current stream's handle, made on first use (call it before a capture: making one
    allocates its workspace)."""
    lib = _load()
    stream = cp.cuda.get_current_stream()
    key = (cp.cuda.Device().id, stream.ptr)
    h = _handles.get(key)
    if h is None:
        h = _handles[key] = _Handle(lib, stream.ptr)
    return h


def gemm(a: Any, b: Any, out: Any) -> Any:
    """out = a @ b on the current stream (float32 or float64, 2-D, out C-contiguous)."""
    lib = _load()
    handle = stream_handle()
    if not (a.dtype == b.dtype == out.dtype) or out.dtype.type not in _ONE:
        raise TypeError(f"gemm needs one float dtype; got {a.dtype} @ {b.dtype} -> {out.dtype}")
    A, ta = _operand(a)
    B, tb = _operand(b)
    if not out.flags.c_contiguous:
        raise ValueError("gemm output must be C-contiguous")
    if a.ndim != 2 or b.ndim != 2 or out.ndim != 2:
        raise ValueError(f"gemm needs 2-D arrays; got {a.shape} @ {b.shape} -> {out.shape}")
    m, k = a.shape
    n = b.shape[1]
    if b.shape[0] != k or out.shape != (m, n):
        raise ValueError(f"gemm shapes do not match: {a.shape} @ {b.shape} -> {out.shape}")
    if max(m, n, k, A.shape[1], B.shape[1]) >= 2**31:
        raise ValueError(f"gemm dimensions must be below 2**31 (cuBLAS takes int): {a.shape} @ {b.shape}")
    t = out.dtype.type
    fn = lib.cublasSgemm_v2 if t is np.float32 else lib.cublasDgemm_v2
    _check(fn(handle.h, 1 if tb else 0, 1 if ta else 0, n, m, k, ctypes.byref(_ONE[t]),
              ctypes.c_void_p(B.data.ptr), B.shape[1], ctypes.c_void_p(A.data.ptr), A.shape[1],
              ctypes.byref(_ZERO[t]), ctypes.c_void_p(out.data.ptr), n), "cublasGemm")
    return out


def _gemmable(a: Any, b: Any, out: Any) -> bool:
    return (isinstance(a, cp.ndarray) and isinstance(b, cp.ndarray) and a.ndim == b.ndim == 2
            and a.dtype == b.dtype and a.dtype.type in _ONE and a.shape[1] == b.shape[0]
            and (out is None or (isinstance(out, cp.ndarray) and out.dtype == a.dtype and out.flags.c_contiguous
                                 and out.shape == (a.shape[0], b.shape[1]))))


@contextlib.contextmanager
def graph_safe_matmul() -> Iterator[None]:
    """While active (a capture of a user's function), ``cupy.matmul`` and ``cupy.dot`` of 2-D
    float operands run :func:`gemm` (on the current stream's own handle); other operands go
    to CuPy, which refuses a capture (the trial then says why). ``a @ b`` cannot be redirected
    (``cupy.ndarray`` is an extension type)."""
    matmul, dot = cp.matmul, cp.dot

    def redirect(orig: Callable[..., Any]) -> Callable[..., Any]:
        def call(a: Any, b: Any, out: Any = None, **kw: Any) -> Any:
            if kw or not _gemmable(a, b, out):
                return orig(a, b, out=out, **kw) if out is not None else orig(a, b, **kw)
            a = a if a.flags.c_contiguous or a.flags.f_contiguous else cp.ascontiguousarray(a)
            b = b if b.flags.c_contiguous or b.flags.f_contiguous else cp.ascontiguousarray(b)
            return gemm(a, b, out if out is not None else cp.empty((a.shape[0], b.shape[1]), a.dtype))
        return call

    cp.matmul, cp.dot = redirect(matmul), redirect(dot)
    try:
        yield
    finally:
        cp.matmul, cp.dot = matmul, dot
