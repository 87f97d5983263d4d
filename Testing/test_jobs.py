"""Tests of NSN2NDenoiseLib.jobs: the Qt-free background job (thread, progress, cancel, errors, one at a time)."""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
import pytest
from conftest import plumbing_config, smooth_noisy_volume

MODULE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "NSN2NDenoise")
if MODULE_DIR not in sys.path:
    sys.path.insert(0, MODULE_DIR)

torch = pytest.importorskip("torch")

from NSN2NDenoiseLib import (  # noqa: E402
    CancelledError,
    DeviceError,
    InputError,
    NSN2NError,
    jobs,
)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield
    job = jobs.active_job()
    if job is not None:  # never leak a running job into the next test
        job.cancel()
        job.wait(60)


class Gate:
    """A fake engine that blocks until released, so that tests control timing exactly."""

    def __init__(self):
        self.entered = threading.Event()
        self.release = threading.Event()
        self.seen = None

    def __call__(self, volume, spacing, config, progress, cancel):
        self.entered.set()
        progress("training", 0, 10, None)
        while not self.release.wait(0.01):
            if cancel.is_set():
                raise CancelledError("cancelled")
        self.seen = np.array(volume, copy=True)
        return volume.astype(np.float32), {"fake": True}


def raising(exc):
    def fn(volume, spacing, config, progress, cancel):
        raise exc

    return fn


def test_real_run_reaches_done_with_result_report_and_progress():
    volume = smooth_noisy_volume()
    job = jobs.start_job(volume, (3.0, 0.8, 0.8), plumbing_config())
    assert job.wait(120), "a 5-iteration run on 6x32x32 must finish"
    assert job.poll() == jobs.DONE, job.error
    assert job.error is None
    assert job.result.shape == volume.shape
    assert job.result.dtype == np.float32
    assert np.all(np.isfinite(job.result))
    assert job.report.to_dict()["config"]["training"]["iterations"] == 5
    assert job.progress is not None and job.progress.phase in ("weights", "training", "inference")
    assert 0.0 <= job.progress.fraction <= 1.0
    assert jobs.active_job() is None


def test_job_works_on_a_copy_of_the_volume():
    gate = Gate()
    volume = smooth_noisy_volume()
    original = volume.copy()
    job = jobs.start_job(volume, (1.0, 1.0, 1.0), plumbing_config(), denoise_fn=gate)
    assert gate.entered.wait(10)
    volume[:] = 0.0  # the caller reuses its array while the job runs
    gate.release.set()
    assert job.wait(10)
    np.testing.assert_array_equal(gate.seen, original)


def test_cancel_during_real_training_ends_quickly_without_result():
    job = jobs.start_job(smooth_noisy_volume(), (3.0, 0.8, 0.8), plumbing_config(iterations=100000))
    deadline = time.monotonic() + 120
    while (job.progress is None or job.progress.phase != "training") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.poll() == jobs.RUNNING
    t0 = time.monotonic()
    job.cancel()
    assert job.wait(30)
    assert time.monotonic() - t0 < 30
    assert job.poll() == jobs.CANCELLED
    assert isinstance(job.error, CancelledError)
    assert job.result is None and job.report is None


def test_cancel_before_start():
    job = jobs.DenoiseJob(smooth_noisy_volume(), (1.0, 1.0, 1.0), plumbing_config())
    job.cancel()
    assert job.poll() == jobs.CANCELLED
    assert job.finished
    with pytest.raises(NSN2NError):
        job.start()


def test_only_one_job_at_a_time():
    gate = Gate()
    first = jobs.start_job(smooth_noisy_volume(), (1.0, 1.0, 1.0), plumbing_config(), denoise_fn=gate)
    assert gate.entered.wait(10)
    assert jobs.active_job() is first
    with pytest.raises(jobs.BusyError, match="already in progress"):
        jobs.start_job(smooth_noisy_volume(), (1.0, 1.0, 1.0), plumbing_config(), denoise_fn=Gate())
    assert not first.wait(0.05)  # still running: wait() with a timeout says so
    gate.release.set()
    assert first.wait(10)
    assert first.poll() == jobs.DONE
    second = jobs.start_job(
        smooth_noisy_volume(), (1.0, 1.0, 1.0), plumbing_config(), denoise_fn=raising(InputError("x"))
    )
    assert second.wait(10)


@pytest.mark.parametrize(
    "exc",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA error: out of memory"),
    ],
)
def test_cuda_out_of_memory_becomes_device_error_saying_what_to_change(exc):
    job = jobs.start_job(smooth_noisy_volume(), (1.0, 1.0, 1.0), plumbing_config(), denoise_fn=raising(exc))
    assert job.wait(10)
    assert job.poll() == jobs.FAILED
    assert isinstance(job.error, DeviceError)
    message = str(job.error)
    assert "GPU ran out of memory" in message and "CPU" in message


def test_host_memory_error_and_unexpected_errors_are_explained():
    job = jobs.start_job(smooth_noisy_volume(), (1.0, 1.0, 1.0), plumbing_config(), denoise_fn=raising(MemoryError()))
    assert job.wait(10)
    assert isinstance(job.error, InputError) and "Crop" in str(job.error)

    job = jobs.start_job(
        smooth_noisy_volume(), (1.0, 1.0, 1.0), plumbing_config(), denoise_fn=raising(ZeroDivisionError("boom"))
    )
    assert job.wait(10)
    assert job.poll() == jobs.FAILED
    assert "ZeroDivisionError: boom" in str(job.error)
    assert "ZeroDivisionError" in job.traceback


def test_engine_input_error_reaches_caller_unchanged():
    constant = np.full((6, 32, 32), 7.0, dtype=np.float32)
    job = jobs.start_job(constant, (1.0, 1.0, 1.0), plumbing_config())
    assert job.wait(60)
    assert job.poll() == jobs.FAILED
    assert isinstance(job.error, InputError)
    assert job.traceback is None


def test_progress_estimates_time_left():
    def fn(volume, spacing, config, progress, cancel):
        for step in range(0, 11):
            progress("training", step, 10, 0.5 / (step + 1))
            time.sleep(0.02)
            if step == 5:
                snapshot["p"] = job_box["job"].progress
        return volume.astype(np.float32), {}

    snapshot, job_box = {}, {}
    job = jobs.DenoiseJob(smooth_noisy_volume(), (1.0, 1.0, 1.0), plumbing_config(), denoise_fn=fn)
    job_box["job"] = job
    job.start()
    assert job.wait(10)
    p = snapshot["p"]
    assert (p.phase, p.step, p.total) == ("training", 5, 10)
    assert p.remaining_s is not None and 0.0 < p.remaining_s < 5.0
    assert p.fraction == pytest.approx(0.5)
    assert "training 5/10" in p.describe() and "left" in p.describe()


@pytest.mark.parametrize("seconds, text", [(4.4, "4 s"), (125, "2 min 05 s"), (3720, "1 h 02 min")])
def test_format_seconds(seconds, text):
    assert jobs.format_seconds(seconds) == text
