"""The CUDA sources compile (NVRTC, sm_90, no GPU needed): skipped where NVRTC is not installed,
which CI is not (scripts/check_cuda_sources.py says how to get it)."""
import os
import runpy

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "check_cuda_sources.py")


def test_cuda_sources_compile_with_nvrtc():
    mod = runpy.run_path(SCRIPT)
    if mod["find_nvrtc"]() is None:
        pytest.skip("NVRTC not installed")
    assert mod["main"]([]) == 0
