"""Shared fixtures: tiny volumes with fixed seeds, and a fast configuration.

The engine is importable either installed (``pip install -e .``) or from the source tree; the path below makes the
source tree win so that the tests always exercise the checked-out code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "NSN2NDenoise"))

import torch  # noqa: E402

from NSN2NDenoiseLib import make_config  # noqa: E402
from NSN2NDenoiseLib.phantom import add_inplane_correlated_noise, make_phantom  # noqa: E402

# One thread: faster than two on a shared 2-core machine, and repeatable.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def phantom_pair() -> tuple[np.ndarray, np.ndarray]:
    """(clean, noisy) of shape (16, 64, 64), HU-like, in-plane correlated noise of 60 HU."""
    clean = make_phantom((16, 64, 64), seed=3)
    noisy = add_inplane_correlated_noise(clean, sigma=60.0, correlation_px=1.0, seed=4)
    return clean, noisy


@pytest.fixture
def tiny_config():
    """A configuration that trains in about a second: for tests of plumbing, not of quality."""
    return make_config("fast", device="cpu", training={"iterations": 5, "batch_size": 2, "patch_size": 32})
