import signal

import numpy as np
import pytest

from gpups.device import cuda_available


@pytest.fixture(autouse=True)
def no_hang():
    """Every test must end: a hang is a failure, not a stuck CI."""
    def boom(*_):
        raise TimeoutError("test exceeded 300 s: something hangs")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(300)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def pytest_collection_modifyitems(config, items):
    if cuda_available():
        return
    skip = pytest.mark.skip(reason="needs CuPy and a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def blobs():
    """Small float64 classification problem: 240 rows, 6 features, 3 classes."""
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((3, 6)) * 2
    y = rng.integers(0, 3, 240)
    X = centres[y] + rng.standard_normal((240, 6))
    return X.astype(np.float64), y.astype(np.int64)


try:  # property-based tests: fixed and derandomized in CI, many random draws with HYPOTHESIS_PROFILE=dev
    import os

    from hypothesis import settings

    settings.register_profile("ci", max_examples=300, derandomize=True, deadline=None, print_blob=True)
    settings.register_profile("dev", max_examples=2000, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:
    pass
