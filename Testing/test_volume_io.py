import os

import numpy as np
import pytest
import SimpleITK as sitk

from NSN2NDenoiseLib import InputError
from NSN2NDenoiseLib.volume_io import check_output_path, read_volume, write_volume

SPACING_XYZ = (0.7, 0.9, 2.5)
ORIGIN = (-12.5, 30.25, 101.0)


def _oblique_direction() -> tuple[float, ...]:
    a = np.deg2rad(20.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    b = np.deg2rad(-35.0)
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return tuple((rz @ rx).ravel())


def _image(shape_kji=(5, 6, 7), dtype=np.int16) -> sitk.Image:
    rng = np.random.default_rng(0)
    img = sitk.GetImageFromArray(rng.integers(-1000, 1500, shape_kji).astype(dtype))
    img.SetSpacing(SPACING_XYZ)
    img.SetOrigin(ORIGIN)
    img.SetDirection(_oblique_direction())
    return img


@pytest.mark.parametrize("suffix", [".nrrd", ".nii", ".nii.gz", ".mha", ".mhd"])
def test_round_trip_keeps_geometry_exactly(tmp_path, suffix):
    src = tmp_path / f"in{suffix}"
    sitk.WriteImage(_image(), str(src))
    loaded = read_volume(src)
    assert loaded.array.shape == (5, 6, 7)
    assert loaded.spacing_kji == pytest.approx(SPACING_XYZ[::-1])
    out = tmp_path / f"out{suffix}"
    denoised = loaded.array.astype(np.float32) * 0.5
    write_volume(out, denoised, loaded.image)
    back = sitk.ReadImage(str(out))
    tol = 1e-5 if suffix.startswith(".nii") else 1e-12  # NIfTI stores geometry as float32 quaternions
    assert np.allclose(back.GetSpacing(), loaded.image.GetSpacing(), atol=tol)
    assert np.allclose(back.GetOrigin(), loaded.image.GetOrigin(), atol=1e-4 if tol > 1e-12 else tol)
    assert np.allclose(back.GetDirection(), loaded.image.GetDirection(), atol=tol)
    assert back.GetPixelID() == sitk.sitkFloat32
    assert np.array_equal(sitk.GetArrayFromImage(back), denoised)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".nsn2n-")], "temporary folder left behind"


def test_nrrd_geometry_is_bit_exact(tmp_path):
    src = tmp_path / "in.nrrd"
    sitk.WriteImage(_image(), str(src))
    loaded = read_volume(src)
    write_volume(tmp_path / "out.nrrd", loaded.array.astype(np.float32), loaded.image)
    back = sitk.ReadImage(str(tmp_path / "out.nrrd"))
    assert back.GetSpacing() == loaded.image.GetSpacing()
    assert back.GetOrigin() == loaded.image.GetOrigin()
    assert back.GetDirection() == loaded.image.GetDirection()


def test_dicom_series_folder(tmp_path):
    img = sitk.Cast(_image((4, 8, 8)), sitk.sitkInt16)
    img.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
    for k in range(img.GetSize()[2]):
        sl = img[:, :, k]
        z = ORIGIN[2] + k * SPACING_XYZ[2]
        for tag, value in (
            ("0020|000e", "1.2.3.4.5"),
            ("0020|000d", "1.2.3.4"),
            ("0008|0018", f"1.2.3.4.5.{k + 1}"),
            ("0020|0032", f"{ORIGIN[0]}\\{ORIGIN[1]}\\{z}"),
            ("0020|0037", "1\\0\\0\\0\\1\\0"),
            ("0020|0013", str(k + 1)),
            ("0008|0060", "CT"),
        ):
            sl.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()  # else every file gets its own new series UID
        writer.SetFileName(str(tmp_path / f"slice{k:03d}.dcm"))
        writer.Execute(sl)
    loaded = read_volume(tmp_path)
    assert loaded.array.shape == (4, 8, 8)
    assert loaded.spacing_kji[0] == pytest.approx(SPACING_XYZ[2])
    assert np.array_equal(loaded.array, sitk.GetArrayFromImage(img))


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_volume(tmp_path / "nope.nrrd")
    junk = tmp_path / "junk.nrrd"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="Cannot read"):
        read_volume(junk)
    with pytest.raises(InputError, match="DICOM"):
        read_volume(tmp_path)  # a folder with no series


def test_2d_4d_and_vector_images_are_refused(tmp_path):
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkFloat32), str(tmp_path / "flat.nrrd"))
    with pytest.raises(InputError, match="2D"):
        read_volume(tmp_path / "flat.nrrd")
    sitk.WriteImage(sitk.Image([4, 4, 4, 3], sitk.sitkFloat32), str(tmp_path / "t.nii.gz"))
    with pytest.raises(InputError, match="4D"):
        read_volume(tmp_path / "t.nii.gz")
    sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkVectorFloat32, 3), str(tmp_path / "rgb.nrrd"))
    with pytest.raises(InputError, match="vector"):
        read_volume(tmp_path / "rgb.nrrd")


def test_output_paths_that_cannot_be_written(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        check_output_path(tmp_path / "missing" / "out.nrrd")
    with pytest.raises(InputError, match="choose an output ending"):
        check_output_path(tmp_path / "out.png")
    (tmp_path / "dir.nrrd").mkdir()
    with pytest.raises(InputError, match="folder"):
        check_output_path(tmp_path / "dir.nrrd")
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permissions: nothing to test then
            pytest.skip("running as a user that can write anywhere")
        with pytest.raises(InputError, match="not writable"):
            check_output_path(locked / "out.nrrd")
    finally:
        os.chmod(locked, 0o700)


def test_shape_mismatch_leaves_no_file(tmp_path):
    ref = _image()
    with pytest.raises(InputError, match="does not match"):
        write_volume(tmp_path / "out.nrrd", np.zeros((2, 2, 2), np.float32), ref)
    assert list(tmp_path.iterdir()) == []
