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


def smooth_volume(shape, seed=0):
    """A smooth volume of ``shape`` (K, J, I) with an edge along I, float32, and the random generator of ``seed``
    for the noise a test adds (the Wiener stage's and block matching's tests)."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    clean = 100 * np.sin(3 * k + 2 * j) + 80 * (i > 0.5) + 40 * np.cos(5 * j * i)
    return clean.astype(np.float32), rng


MISSING = "missing: "
"""Prefix of every skip reason that means "a package the tests need is not installed"."""
STRICT_ENV = "NSN2N_STRICT_SKIPS"
"""When this environment variable is 1 (the README's test command and CI set it), a skip for a missing package
fails the run: a suite that silently skipped the Slicer-side tests must not look green."""


def require(module: str, install: str):
    """Import ``module`` or skip the calling test module with a reason that says what to install."""
    return pytest.importorskip(module, reason=f"{MISSING}{module} (install {install})")


def _missing(config) -> list[str]:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    reasons = {str(r.longrepr[2]) for r in skipped if isinstance(r.longrepr, tuple)}
    return sorted(reason for reason in reasons if MISSING in reason)


def pytest_sessionfinish(session, exitstatus):
    import os

    if _missing(session.config) and os.environ.get(STRICT_ENV) == "1" and exitstatus in (0, 5):
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    import os

    missing = _missing(config)
    if missing:
        terminalreporter.write_line("Skipped for missing packages: " + "; ".join(missing), yellow=True)
        if os.environ.get(STRICT_ENV) == "1":
            terminalreporter.write_line(f"{STRICT_ENV}=1: these skips fail the run.", red=True)


def job_folders() -> set[str]:
    """The temporary folders of module jobs (``nsn2n-*`` in the system's temporary folder)."""
    import os
    import tempfile

    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("nsn2n-")}


@pytest.fixture
def no_job_leaks():
    """After a test: no module job left running (it is cancelled) and no job folder left behind."""
    from NSN2NDenoiseLib import jobs

    folders = job_folders()
    yield
    job = jobs.active_job()
    if job is not None:  # never leak a running job into the next test
        job.cancel()
        job.wait(30)
    assert job_folders() <= folders, "a job left its temporary folder behind"


def wait_for_training(job, timeout: float = 60.0) -> None:
    """Poll ``job`` (a jobs.DenoiseJob or an mrml job) until its worker reports the training phase."""
    import time

    from NSN2NDenoiseLib import jobs

    deadline = time.monotonic() + timeout
    while (job.progress is None or job.progress.phase != "training") and time.monotonic() < deadline:
        assert job.poll() == jobs.RUNNING, job.error
        time.sleep(0.05)
    assert job.progress is not None and job.progress.phase == "training"


@pytest.fixture
def noisy_case():
    """A smooth (10, 20, 22) volume, it with Gaussian noise of sd 10, and a pilot with noise of sd 2 (float32): the
    Wiener-stage benchmarks' toy case."""
    clean, rng = smooth_volume((10, 20, 22))
    noisy = (clean + rng.normal(0, 10, clean.shape)).astype(np.float32)
    pilot = (clean + rng.normal(0, 2, clean.shape)).astype(np.float32)
    return clean, noisy, pilot


@pytest.fixture
def toy_case(noisy_case, monkeypatch):
    """:func:`noisy_case` as the Wiener-stage benchmarks' ``wiener_grid._case`` returns a case (white in-plane noise,
    slice axis 0, the whole volume as the head, the noise's sd 10), patched in so that any case and seed give it."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks import datasets, wiener_grid

    clean, noisy, pilot = noisy_case
    head = np.ones(clean.shape, bool)
    ds = datasets.Dataset("toy", "t", clean, noisy, (1.0, 1.0, 1.0), "mri", head, 300.0, "all", noise_sigma=10.0)
    case = wiener_grid._Case(ds, {"slice_axis": 0, "inplane_noise_lag1": [0.0, 0.0]}, noisy, pilot)
    monkeypatch.setattr(wiener_grid, "_case", lambda name, seed: case)
    return case
