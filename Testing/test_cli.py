import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from NSN2NDenoiseLib.cli import _config, build_parser, main
from NSN2NDenoiseLib.options import OPTIONS, from_config

FAST = ["--iterations", "3", "--threads", "1", "--quiet"]


def _write(path, array, spacing=(0.8, 0.8, 2.0)):
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin((1.0, -2.0, 3.0))
    img.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, -1))
    sitk.WriteImage(img, str(path))
    return img


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["denoise", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--iterations", "--device", "--slice-axis", "--seed", "--report", "--quiet", "--preset"):
        assert option in text
    actions = [a for a in build_parser()._subparsers._group_actions[0].choices["denoise"]._actions]
    assert all(a.help for a in actions), "every option has a help text"


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.name)
def test_every_option_flag_reaches_the_configuration(option):
    """Each flag of the option table, given a value other than its default, sets its configuration field."""
    value = next(v for v in (*option.choices, option.high, option.low) if v is not None and v != option.default())
    args = build_parser().parse_args(["denoise", "in.nrrd", "out.nrrd", option.flag, str(value)])
    assert from_config(_config(args))[option.name] == value


def test_denoise_writes_output_with_geometry_and_report(tmp_path, phantom_pair):
    _, noisy = phantom_pair
    src = tmp_path / "in.nii.gz"
    ref = _write(src, np.round(noisy).astype(np.int16))
    out, rep = tmp_path / "out.nrrd", tmp_path / "report.json"
    assert main(["denoise", str(src), str(out), "--report", str(rep), "--seed", "2", "--axes", "slice", *FAST]) == 0
    img = sitk.ReadImage(str(out))
    assert img.GetSize() == ref.GetSize() and img.GetPixelID() == sitk.sitkFloat32
    assert np.allclose(img.GetSpacing(), ref.GetSpacing()) and np.allclose(img.GetDirection(), ref.GetDirection())
    assert np.allclose(img.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    report = json.loads(rep.read_text())
    assert report["iterations"] == 3 and report["config"]["training"]["seed"] == 2
    assert report["config"]["inference"]["axes"] == "slice" and len(report["prediction_axes"]) == 1


@pytest.mark.parametrize(
    "make_input, message",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_bytes(b"garbage"), "Cannot read"),
        (lambda p: _write(p, np.zeros((2, 8, 8), np.float32) + np.arange(8)), "at least 3"),
        (lambda p: _write(p, np.full((4, 8, 8), 5, np.int16)), "constant"),
    ],
)
def test_bad_input_exits_non_zero_with_one_line_and_no_output(tmp_path, capsys, make_input, message):
    src = tmp_path / "in.nrrd"
    make_input(src)
    out = tmp_path / "out.nrrd"
    code = main(["denoise", str(src), str(out), *FAST])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("nsn2n: error:") and message in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["in.nrrd"] if src.exists() else [])


def test_unwritable_output_fails_before_training(tmp_path, capsys, phantom_pair):
    src = tmp_path / "in.nrrd"
    _write(src, phantom_pair[1])
    code = main(["denoise", str(src), str(tmp_path / "no" / "out.nrrd"), "--iterations", "100000", "--quiet"])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_cuda_on_a_machine_without_gpu(tmp_path, capsys, phantom_pair):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    src = tmp_path / "in.nrrd"
    _write(src, phantom_pair[1])
    assert main(["denoise", str(src), str(tmp_path / "o.nrrd"), "--device", "cuda", *FAST]) == 3
    assert "CUDA" in capsys.readouterr().err


def test_demo_writes_its_files_and_prints_psnr(tmp_path):
    # In a fresh process, as a user runs it, with the source tree's package first on the path.
    cmd = [sys.executable, "-c", "import sys; from NSN2NDenoiseLib.cli import main; sys.exit(main())"]
    proc = subprocess.run(
        [*cmd, "demo", str(tmp_path / "demo"), "--iterations", "2", "--threads", "1", "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": _lib_path()},
    )
    assert proc.returncode == 0, proc.stderr
    assert "PSNR before:" in proc.stdout and "after:" in proc.stdout
    names = {p.name for p in (tmp_path / "demo").iterdir()}
    assert {"noisy.nrrd", "denoised.nrrd", "clean.nrrd", "demo.png", "report.json"} <= names


def _lib_path() -> str:
    from pathlib import Path

    return str(Path(__file__).resolve().parents[1] / "NSN2NDenoise")


def test_residual_is_input_minus_output_with_the_input_geometry(tmp_path):
    """--residual writes what was removed, so that a user can look at it; it equals input - output exactly."""
    import numpy as np
    import SimpleITK as sitk

    from NSN2NDenoiseLib.cli import main

    rng = np.random.default_rng(0)
    vol = (100 + 20 * rng.standard_normal((6, 24, 20))).astype(np.float32)
    image = sitk.GetImageFromArray(vol)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((1.0, -2.0, 3.0))
    src = tmp_path / "in.nrrd"
    sitk.WriteImage(image, str(src))
    out, res = tmp_path / "out.nrrd", tmp_path / "res.nrrd"
    args = [str(src), str(out), "--residual", str(res), "--preset", "fast", "--iterations", "3", "--device", "cpu",
            "--quiet"]  # fmt: skip
    assert main(["denoise", *args]) == 0
    r, o = sitk.ReadImage(str(res)), sitk.ReadImage(str(out))
    assert r.GetSpacing() == image.GetSpacing() and r.GetOrigin() == image.GetOrigin()
    np.testing.assert_allclose(sitk.GetArrayFromImage(r), vol - sitk.GetArrayFromImage(o), atol=1e-4)
    assert np.abs(sitk.GetArrayFromImage(r)).max() > 0  # something was removed
    assert main(["denoise", str(src), str(tmp_path / "o2.nrrd"), "--residual", str(src), "--quiet"]) == 2
