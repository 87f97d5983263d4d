"""Tests of NSN2NDenoiseLib.jobs: the worker-process job (files, progress, cancel, errors, one at a time)."""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import pytest
from conftest import require, smooth_noisy_volume, wait_for_training

MODULE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "NSN2NDenoise")
if MODULE_DIR not in sys.path:
    sys.path.insert(0, MODULE_DIR)

require("torch", "torch==2.13.0 first, see README")

from NSN2NDenoiseLib import (  # noqa: E402
    CancelledError,
    ConfigError,
    InputError,
    NSN2NError,
    jobs,
    make_config,
    worker,
)
from NSN2NDenoiseLib.errors import EXIT_CANCELLED  # noqa: E402
from NSN2NDenoiseLib.options import BY_NAME, to_config  # noqa: E402


def tiny_config(iterations: int = 20):
    """The fast preset on one thread: the worker receives it as option flags."""
    return to_config({"preset": "fast", "iterations": iterations, "device": "cpu", "threads": 1})


pytestmark = pytest.mark.usefixtures("no_job_leaks")


def test_worker_process_denoises_end_to_end_with_report_and_progress():
    volume = np.zeros((8, 32, 32), np.float32)
    volume[:] = smooth_noisy_volume()[:1]
    volume += np.random.default_rng(1).normal(0.0, 10.0, volume.shape).astype(np.float32)
    job = jobs.start_job(volume, (3.0, 0.8, 0.8), tiny_config())
    assert jobs.active_job() is job
    assert job.wait(60), "a 20-iteration run on 8x32x32 must finish"
    assert job.poll() == jobs.DONE, job.error
    assert job.error is None and job.returncode == 0
    assert job.result.shape == volume.shape and job.result.dtype == np.float32
    assert np.all(np.isfinite(job.result))
    assert not np.array_equal(job.result, volume)
    assert abs(float(job.result.mean()) - float(volume.mean())) < 10.0  # same units as the input
    assert job.report["config"]["training"]["iterations"] == 20
    assert job.report["config"]["preset"] == "fast"
    assert job.report["spacing"] == pytest.approx([3.0, 0.8, 0.8])  # K,J,I spacing went through the file
    p = job.progress
    assert p.phase == "inference" and p.fraction == pytest.approx(1.0) and p.remaining_s == 0.0
    assert job.device == "cpu" and "on CPU" in p.describe()
    assert jobs.active_job() is None


def test_cancel_mid_run_kills_the_process_and_leaves_nothing():
    job = jobs.start_job(smooth_noisy_volume(), (3.0, 0.8, 0.8), tiny_config(iterations=100000))
    wait_for_training(job)
    pid = job._process.pid
    t0 = time.monotonic()
    job.cancel()
    assert job.cancel_requested
    assert job.wait(jobs.KILL_GRACE_S + 10)
    assert time.monotonic() - t0 < jobs.KILL_GRACE_S + 5
    assert job.poll() == jobs.CANCELLED
    assert isinstance(job.error, CancelledError)
    assert job.result is None and job.report is None
    assert job.returncode in (EXIT_CANCELLED, -15, -9)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the worker is gone (reaped), not left training


def test_a_bad_input_gives_the_workers_one_line_error():
    constant = np.full((6, 32, 32), 7.0, dtype=np.float32)  # the engine refuses a constant volume
    job = jobs.start_job(constant, (1.0, 1.0, 1.0), tiny_config())
    assert job.wait(60)
    assert job.poll() == jobs.FAILED
    assert isinstance(job.error, InputError)  # exit code 2 -> InputError
    message = str(job.error)
    assert "\n" not in message and len(message) > 10
    assert job.traceback is None


def test_a_process_that_dies_without_a_message_is_reported(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'Segmentation fault (core dumped)' >&2\nexit 139\n")
    fake.chmod(0o755)
    if os.name == "nt":
        pytest.skip("a shell script stands in for the interpreter")
    job = jobs.start_job(smooth_noisy_volume(), (1.0, 1.0, 1.0), tiny_config(), python=str(fake))
    assert job.wait(30)
    assert job.poll() == jobs.FAILED
    assert "exit status 139" in str(job.error) and "Segmentation fault" in str(job.error)
    assert "Segmentation fault" in job.traceback


def test_an_interpreter_that_cannot_start_is_an_error_and_frees_the_slot(tmp_path):
    with pytest.raises(NSN2NError, match="Could not start"):
        jobs.start_job(smooth_noisy_volume(), (1.0, 1.0, 1.0), tiny_config(), python=str(tmp_path / "missing"))
    assert jobs.active_job() is None


def test_only_one_job_at_a_time_and_cancel_before_start():
    first = jobs.start_job(smooth_noisy_volume(), (1.0, 1.0, 1.0), tiny_config(iterations=100000))
    with pytest.raises(jobs.BusyError, match="already in progress"):
        jobs.start_job(smooth_noisy_volume(), (1.0, 1.0, 1.0), tiny_config())
    assert not first.wait(0.05)  # still running: wait() with a timeout says so
    first.cancel()
    assert first.wait(30)

    pending = jobs.DenoiseJob(smooth_noisy_volume(), (1.0, 1.0, 1.0), tiny_config())
    pending.cancel()
    assert pending.poll() == jobs.CANCELLED and pending.finished
    with pytest.raises(NSN2NError):
        pending.start()


def test_worker_arguments_are_option_flags_or_a_config_file(tmp_path):
    args = jobs.worker_arguments(tiny_config(7))
    assert "--config" not in args
    assert args[args.index("--iterations") + 1] == "7" and args[args.index("--preset") + 1] == "fast"
    parsed = worker.build_parser().parse_args([*args, "in.nrrd", "out.nrrd"])
    values = {k: v for k, v in vars(parsed).items() if k in BY_NAME}
    assert to_config(values) == tiny_config(7)
    narrow = make_config("fast", network={"width": 8})
    with pytest.raises(ConfigError, match="beyond the module's options"):
        jobs.worker_arguments(narrow)  # no folder for the file
    args = jobs.worker_arguments(narrow, tmp_path)
    path = args[args.index("--config") + 1]
    assert path == str(tmp_path / "config.json")
    from NSN2NDenoiseLib.config import NSN2NConfig

    assert NSN2NConfig.from_dict(json.loads((tmp_path / "config.json").read_text())) == narrow


def test_a_full_configuration_reaches_the_worker_through_its_config_file():
    narrow = make_config(
        "fast", device="cpu", network={"width": 8, "depth": 2},
        training={"iterations": 5, "threads": 1, "patch_size": 16, "batch_size": 2},
    )  # fmt: skip
    assert not jobs.expressible_by_options(narrow)
    job = jobs.start_job(smooth_noisy_volume(), (1.0, 1.0, 1.0), narrow)
    assert job.wait(60)
    assert job.poll() == jobs.DONE, job.error
    assert job.report["config"]["network"]["width"] == 8
    assert job.report["config"]["training"]["patch_size"] == 16


def test_start_returns_before_the_input_is_written_and_cancel_then_starts_nothing(monkeypatch):
    import threading

    gate = threading.Event()
    real = jobs.write_input

    def slow_write(*args):
        gate.wait(10)
        real(*args)

    monkeypatch.setattr(jobs, "write_input", slow_write)
    job = jobs.start_job(smooth_noisy_volume(), (1.0, 1.0, 1.0), tiny_config())
    assert job.poll() == jobs.RUNNING and not job.input_written and job._process is None
    job.cancel()
    gate.set()
    assert job.wait(10)
    assert job.poll() == jobs.CANCELLED and job._process is None and job.input_written
    assert jobs.active_job() is None


def test_the_result_is_a_view_that_keeps_its_image(tmp_path):
    import gc

    import SimpleITK as sitk

    voxels = smooth_noisy_volume()
    sitk.WriteImage(sitk.GetImageFromArray(voxels), str(tmp_path / "out.nrrd"))
    result = jobs.read_output(tmp_path / "out.nrrd")
    gc.collect()
    assert result.dtype == np.float32 and not result.flags.owndata
    np.testing.assert_array_equal(result, voxels)
    sitk.WriteImage(sitk.GetImageFromArray(voxels.astype(np.int16)), str(tmp_path / "int.nrrd"))
    assert jobs.read_output(tmp_path / "int.nrrd").dtype == np.float32


class FakeJob(jobs.DenoiseJob):
    """A job fed with the worker's stdout lines directly, to test the parsing and the time estimate."""

    def __init__(self):
        super().__init__(np.zeros((3, 4, 4)), (1.0, 1.0, 1.0), tiny_config())
        self._state = jobs.RUNNING
        self._start_time = time.monotonic()


def test_progress_records_are_parsed_with_overall_fraction_device_and_time_left():
    assert jobs.PROGRESS_PREFIX == worker.PROGRESS_PREFIX
    job = FakeJob()
    assert job.progress is None
    job._on_stdout("<filter-start><filter-name>NSN2N Denoise</filter-name>"
                   "<filter-comment>(8, 32, 32) voxels (K,J,I) on cpu</filter-comment></filter-start>")  # fmt: skip
    job._start_time -= 30.0  # 30 s into the run ...
    job._on_stdout('nsn2n-progress {"phase": "training", "step": 300, "total": 1500, "loss": 0.0021, '
                   '"fraction": 0.25, "elapsed_s": 29.0}')  # fmt: skip
    job._on_stdout("<filter-progress>0.2500</filter-progress>")
    job._on_stdout("nsn2n-progress {not json")  # ignored, the last good record stays
    p = job.progress
    assert (p.phase, p.step, p.total, p.fraction, p.device) == ("training", 300, 1500, 0.25, "cpu")
    assert p.loss == pytest.approx(0.0021)
    assert p.remaining_s == pytest.approx(90.0, abs=1.0)  # ... a quarter done: 3 x 30 s left
    assert p.describe() == "training 300/1500 on CPU, loss 0.0021, about 1 min 30 s left"
    job._on_stdout('nsn2n-progress {"phase": "weights", "step": 1, "total": 1, "loss": null, "fraction": 0.01}')
    assert job.progress.remaining_s is None  # too early to tell
    job._on_stderr("nsn2n: warning: noise is correlated between slices")
    job._on_stderr("nsn2n: error: The volume is constant.")
    assert job.warnings == ["noise is correlated between slices"]
    assert job._error_line == "The volume is constant."


@pytest.mark.parametrize("seconds, text", [(4.4, "4 s"), (125, "2 min 05 s"), (3720, "1 h 02 min")])
def test_format_seconds(seconds, text):
    assert jobs.format_seconds(seconds) == text


def test_the_worker_saves_the_model_at_a_relative_path_of_the_callers_folder(tmp_path, monkeypatch):
    from NSN2NDenoiseLib import model_io

    monkeypatch.chdir(tmp_path)  # the worker runs in the job's folder: the job passes an absolute path
    job = jobs.start_job(
        smooth_noisy_volume(), (3.0, 0.8, 0.8), tiny_config(), save_model="m.safetensors", trained_on="CT 1"
    )
    assert "--save-model" in job._command and str(tmp_path / "m.safetensors") in job._command
    assert job.wait(60) and job.poll() == jobs.DONE, job.error
    saved = model_io.load_model(tmp_path / "m.safetensors")
    assert saved.metadata["trained_on"] == "CT 1"
    assert saved.config.training.iterations == 20

    again = jobs.start_job(smooth_noisy_volume(1), (3.0, 0.8, 0.8), tiny_config(10), init_model="m.safetensors")
    assert "--init-from" in again._command and "--save-model" not in again._command
    assert again.wait(60) and again.poll() == jobs.DONE, again.error
    assert again.result.shape == (6, 32, 32)


def test_a_bad_model_reaching_the_worker_fails_the_job_with_one_line(tmp_path):
    import torch

    pickle_file = tmp_path / "model.safetensors"
    torch.save({"w": torch.zeros(3)}, pickle_file)
    job = jobs.start_job(smooth_noisy_volume(), (3.0, 0.8, 0.8), tiny_config(), init_model=pickle_file)
    assert job.wait(60) and job.poll() == jobs.FAILED
    assert isinstance(job.error, InputError)
    assert "pickle" in str(job.error) and "\n" not in str(job.error)
    assert job.traceback is None and job.result is None


def test_worker_model_flags_are_checked_before_the_input_is_read(tmp_path, capsys):
    missing_input = str(tmp_path / "none.nrrd")
    out = str(tmp_path / "out.nrrd")
    for flags, pattern in (
        (["--save-model", str(tmp_path / "m.pt")], "must end in .safetensors"),
        (["--save-model", str(tmp_path / "no" / "m.safetensors")], "does not exist"),
        (["--init-from", str(tmp_path / "absent.safetensors")], "absent.safetensors does not exist"),
    ):
        args = worker.build_parser().parse_args([missing_input, out, *flags])
        with pytest.raises(InputError, match=pattern):
            worker._model_options(args, tiny_config())
        capsys.readouterr()
        assert worker.main([missing_input, out, *flags]) == 2
        message = capsys.readouterr().err
        assert message.count("\n") == 1 and "none.nrrd" not in message and message.startswith("nsn2n: error: ")
