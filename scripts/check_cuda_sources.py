"""Compile kernels/*.cu with NVRTC for sm_90, float32 and float64, without a GPU: a syntax or
type error in a CUDA source shows on a machine that has only the NVRTC library (pip install
nvidia-cuda-nvrtc-cu12, ~200 MB; CuPy's CUDA builds ship it too). Exit status 1 on an error, 2
when NVRTC is not found. Run: python scripts/check_cuda_sources.py [kernels/optim.cu ...]"""
from __future__ import annotations

import ctypes
import glob
import os
import site
import sys

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_nvrtc() -> str | None:
    import ctypes.util

    patterns = [os.path.join(root, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so*")
                for root in site.getsitepackages() + [site.getusersitepackages()]]
    patterns += ["/usr/local/cuda*/lib64/libnvrtc.so*", "/usr/lib/x86_64-linux-gnu/libnvrtc.so*"]
    for pattern in patterns:
        hits = sorted(h for h in glob.glob(pattern) if "builtins" not in h)
        if hits:
            return hits[0]
    return ctypes.util.find_library("nvrtc")


def compile_source(lib: ctypes.CDLL, path: str, arch: str = "compute_90") -> tuple[int, str]:
    prog = ctypes.c_void_p()
    src = open(path, "rb").read()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), src, path.encode(), 0, None, None) != 0:
        return 1, "nvrtcCreateProgram failed"
    opts = [b"-std=c++14", f"--gpu-architecture={arch}".encode()]
    rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return rc, log.value.decode(errors="replace")


def main(paths: list[str]) -> int:
    path = find_nvrtc()
    if path is None:
        print("NVRTC not found (pip install nvidia-cuda-nvrtc-cu12)")
        return 2
    lib = ctypes.CDLL(path)
    failed = 0
    for src in paths or sorted(glob.glob(os.path.join(HERE, "kernels", "*.cu"))):
        rc, log = compile_source(lib, src)
        print(f"{os.path.relpath(src, HERE)}: {'ok' if rc == 0 else 'FAILED'}{(chr(10) + log) if log.strip() else ''}")
        failed += rc != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
