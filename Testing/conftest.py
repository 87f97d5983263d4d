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


def plumbing_config(iterations: int = 5):
    """A width-8 network trained for a few iterations: plumbing tests of the jobs and the MRML adapter."""
    return make_config(
        "fast",
        device="cpu",
        network={"width": 8, "depth": 2},
        training={"iterations": iterations, "threads": 1, "patch_size": 16, "batch_size": 2},
    )


def smooth_noisy_volume(seed: int = 0, dtype=np.float32) -> np.ndarray:
    """(6, 32, 32) smooth pattern plus 10-unit Gaussian noise, K,J,I order."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(np.arange(6), np.arange(32), np.arange(32), indexing="ij")
    clean = 100.0 + 50.0 * np.sin(j / 5.0) * np.cos(i / 6.0) + 2.0 * k
    return (clean + rng.normal(0.0, 10.0, clean.shape)).astype(dtype)
