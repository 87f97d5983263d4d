"""End-to-end test of the batch script NSN2NDenoise/Scripts/nsn2n_batch.py, a thin wrapper over the engine's worker,
run under plain Python in a subprocess (as ``Slicer --no-main-window --python-script`` would run it, minus the
application). The worker itself is tested through the CLI module in test_cli_module.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import require

from NSN2NDenoiseLib.errors import EXIT_INPUT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "NSN2NDenoise", "Scripts", "nsn2n_batch.py")

sitk = require("SimpleITK", "the engine: pip install -e .")

DIRECTION = (0.8, 0.0, -0.6, 0.0, 1.0, 0.0, 0.6, 0.0, 0.8)  # oblique (rotation about y), LPS as ITK stores it


def run_script(*args, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    # Run from an unrelated folder so that the script must find NSN2NDenoiseLib next to itself.
    return subprocess.run(
        [sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=os.sep
    )


@pytest.fixture
def noisy_nrrd(tmp_path):
    rng = np.random.default_rng(0)
    k, j, i = np.meshgrid(np.arange(6), np.arange(32), np.arange(32), indexing="ij")
    voxels = (100.0 + 50.0 * np.sin(j / 5.0) * np.cos(i / 6.0) + rng.normal(0.0, 10.0, (6, 32, 32))).astype(np.int16)
    image = sitk.GetImageFromArray(voxels)  # K,J,I array -> x=I, y=J, z=K image
    image.SetSpacing((0.7, 0.8, 3.0))
    image.SetOrigin((10.0, -20.0, 5.5))
    image.SetDirection(DIRECTION)
    path = tmp_path / "noisy.nrrd"
    sitk.WriteImage(image, str(path))
    return path, voxels


def test_batch_script_denoises_a_file_and_keeps_its_geometry(noisy_nrrd, tmp_path):
    path, voxels = noisy_nrrd
    output = tmp_path / "out" / "denoised.nii.gz"
    output.parent.mkdir()
    before = path.read_bytes()
    result = run_script(
        "--input", str(path), "--output", str(output),
        "--preset", "fast", "--iterations", "10", "--device", "cpu", "--threads", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith("<filter-end>")
    assert path.read_bytes() == before
    out = sitk.ReadImage(str(output))
    assert out.GetSize() == (32, 32, 6)
    assert out.GetSpacing() == pytest.approx((0.7, 0.8, 3.0), abs=1e-6)
    assert out.GetOrigin() == pytest.approx((10.0, -20.0, 5.5), abs=1e-6)
    assert out.GetDirection() == pytest.approx(DIRECTION, abs=1e-6)
    array = sitk.GetArrayFromImage(out)
    assert np.all(np.isfinite(array))
    assert not np.array_equal(array, voxels.astype(array.dtype))


def test_batch_script_reports_a_missing_input_in_one_line(tmp_path):
    output = tmp_path / "never.nrrd"
    result = run_script("--input", str(tmp_path / "missing.nrrd"), "--output", str(output))
    assert result.returncode == EXIT_INPUT
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nsn2n: error:") and "missing.nrrd" in lines[0]
    assert not output.exists()


@pytest.mark.parametrize("args", [["--device", "tpu"], []])
def test_batch_script_rejects_bad_arguments_with_status_2(noisy_nrrd, tmp_path, args):
    path, _ = noisy_nrrd
    result = run_script("--input", str(path), *args, *(["--output", str(tmp_path / "o.nrrd")] if args else []))
    assert result.returncode == 2
    assert ("--device" if args else "--output") in result.stderr
