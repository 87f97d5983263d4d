"""Volume files through SimpleITK: NRRD, NIfTI, MetaImage and DICOM series in; NRRD, NIfTI, MetaImage out.

Axis order is settled here and nowhere else: SimpleITK images are indexed (x, y, z) = (I, J, K) and its
``GetSpacing()`` is (sx, sy, sz), while ``GetArrayFromImage`` gives arrays in (K, J, I) order. The engine works
in K,J,I order, so :func:`read_volume` returns the array and the spacing both in K,J,I order. The output
keeps the input's spacing, origin and direction exactly (``CopyInformation``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError

WRITE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


@dataclass
class LoadedVolume:
    """A volume read from disk: voxels (K, J, I) in the file's units, and the image that carries geometry."""

    array: np.ndarray
    """Voxels in K,J,I order, in the file's units (rescale slope/intercept applied), original dtype."""
    spacing_kji: tuple[float, float, float]
    """Spacing in mm, K,J,I order."""
    image: sitk.Image
    """The SimpleITK image read (spacing, origin, direction in ITK's x,y,z order)."""
    source: str
    """What was read: a file path, or a DICOM folder with its series UID."""


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _check_scalar_3d(image: sitk.Image, source: str) -> None:
    if image.GetNumberOfComponentsPerPixel() > 1:
        raise InputError(
            f"{source} is a vector image ({image.GetNumberOfComponentsPerPixel()} components per voxel, e.g. RGB or "
            "a displacement field); NSN2N denoises scalar volumes: extract one component first."
        )
    dim = image.GetDimension()
    if dim == 2:
        raise InputError(f"{source} is a 2D image; NSN2N needs a 3D volume with at least 3 slices.")
    if dim == 4:
        raise InputError(f"{source} is 4D (size {image.GetSize()}, e.g. a time series); extract one 3D volume first.")
    if dim != 3:
        raise InputError(f"{source} has {dim} dimensions; NSN2N needs a 3D volume.")


def _read_dicom_folder(folder: Path) -> tuple[sitk.Image, str]:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(
            f"{folder} is a folder without a DICOM series; give a volume file (.nrrd, .nii, .nii.gz, .mha, .mhd) "
            "or a folder holding one DICOM series."
        )
    # Several series: take the one with the most slices, as a viewer's default would.
    files = max((reader.GetGDCMSeriesFileNames(str(folder), uid) for uid in series), key=len)
    uid = next(uid for uid in series if reader.GetGDCMSeriesFileNames(str(folder), uid) == files)
    reader.SetFileNames(files)
    return reader.Execute(), f"{folder} (DICOM series {uid}, {len(files)} files)"


def read_volume(path: str | os.PathLike) -> LoadedVolume:
    """Read a 3D scalar volume from a file SimpleITK reads, or from a folder holding a DICOM series.

    Raises
    ------
    InputError
        Missing or unreadable path, 2D, 4D or vector images, with what to do.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p} does not exist: check the path.")
    if p.is_dir():
        image, source = _read_dicom_folder(p)
    else:
        try:
            image = sitk.ReadImage(str(p))
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
            raise InputError(
                f"Cannot read {p} as an image ({first}); NSN2N reads NRRD, NIfTI, MetaImage and DICOM series."
            ) from exc
        source = str(p)
    _check_scalar_3d(image, source)
    array = sitk.GetArrayFromImage(image)  # (K, J, I)
    sx, sy, sz = image.GetSpacing()
    return LoadedVolume(array=array, spacing_kji=(sz, sy, sx), image=image, source=source)


def check_output_path(path: str | os.PathLike) -> Path:
    """Fail early, before any training, if ``path`` cannot be written as a volume file.

    Raises
    ------
    InputError
        Unsupported extension, missing folder, a folder in the way, or a folder that is not writable.
    """
    p = Path(path)
    if _suffix(p) not in WRITE_SUFFIXES:
        raise InputError(f"Cannot write {p.name!r}: choose an output ending in {', '.join(WRITE_SUFFIXES)}.")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"The output folder {parent} does not exist: create it first.")
    if p.is_dir():
        raise InputError(f"The output path {p} is a folder: give a file name.")
    if not os.access(parent, os.W_OK):
        raise InputError(f"The output folder {parent} is not writable: choose another output path.")
    return p


def check_report_path(path: str | os.PathLike) -> Path:
    """Fail before any work when the folder of a report file does not exist.

    Raises
    ------
    InputError
        With what to do.
    """
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"The report folder {parent} does not exist: create it first.")
    return p


def check_paths_differ(input_path: str | os.PathLike, output_path: str | os.PathLike) -> None:
    """Refuse an output that is the input itself (the same file by a link or another spelling, or a file inside
    the input's DICOM folder), which a run would overwrite.

    Raises
    ------
    InputError
        With what to do.
    """
    src, dst = Path(input_path), Path(output_path)
    same = False
    if dst.exists() and src.exists():
        same = os.path.samefile(src, dst)
    same = same or src.resolve() == dst.resolve()
    if src.is_dir() and not same:
        same = src.resolve() in dst.resolve().parents
    if same:
        raise InputError(
            f"The output {dst} is the input {src}: writing it would replace the original. Choose another output path."
        )


def write_volume(path: str | os.PathLike, array: np.ndarray, reference: sitk.Image, compress: bool = True) -> Path:
    """Write ``array`` (K, J, I) as float32 with the geometry (spacing, origin, direction) of ``reference``,
    compressed where the format allows it unless ``compress`` is false (a temporary file read back at once: gzip
    costs seconds for a large volume).

    The file appears complete or not at all: it is written in a temporary folder beside the target and moved
    into place (both files of a .mhd/.raw pair), so a failed write leaves no broken output.
    """
    p = check_output_path(path)
    expected = tuple(reversed(reference.GetSize()))
    if tuple(array.shape) != expected:
        raise InputError(f"Array shape {array.shape} does not match the reference volume {expected} (K,J,I).")
    image = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    image.CopyInformation(reference)
    parent = p.parent if str(p.parent) else Path(".")
    tmp = Path(tempfile.mkdtemp(prefix=".nsn2n-", dir=parent))
    try:
        sitk.WriteImage(image, str(tmp / p.name), useCompression=compress and _suffix(p) != ".nii")
        for produced in tmp.iterdir():
            os.replace(produced, parent / produced.name)
    except RuntimeError as exc:
        raise InputError(f"Cannot write {p}: {str(exc).strip().splitlines()[-1]}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return p
