"""Clean reference volumes for the benchmark, found at run time inside installed packages.

Every loader returns arrays in K,J,I order (slice, row, column; z,y,x) and spacing as (sk, sj, si) in mm.
Nothing is copied into the repository: the files come from the ``invesalius-examples`` Debian package, nilearn's
wheel and nibabel's wheel, under their own licences (Cranium is GPL-2 data: used here, never copied).
"""

from __future__ import annotations

import importlib.util
import plistlib
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CRANIUM_PATHS = (
    Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3"),
    Path("/usr/share/invesalius/examples/Cranium.inv3"),
)
"""Standard install locations of the Debian package ``invesalius-examples``."""
MNI_FILE = "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
EXAMPLE4D_FILE = "tests/data/example4d.nii.gz"
COLIN27_PATHS = (Path("/usr/share/mricron/templates/ch2.nii.gz"),)
"""Standard install location of the Colin27 T1 of the Debian package ``mricron-data``."""
COLIN27_SLICES = (20, 67)
"""The only Colin27 axial slices (RAS, inclusive) the benchmark may read: the rest of the volume is reserved for
independent evaluation (DATA.md)."""


class DataMissingError(RuntimeError):
    """A benchmark volume is not installed; the message says which package provides it."""


@dataclass
class Volume:
    """A clean reference volume and what the benchmark needs to know about it.

    Attributes
    ----------
    name : str
        Short key used in result files, e.g. ``'cranium'``.
    data : np.ndarray
        float32, shape (K, J, I), in the volume's units (HU for CT, template units for MRI).
    spacing : tuple of float
        (sk, sj, si) in mm.
    modality : {'ct', 'mri'}
    crop : str
        Human-readable statement of the crop taken from the source file (written into every result).
    source : str
        Where the file came from (package and file name, never a machine path).
    extra : dict
        Loader-specific arrays (e.g. the second repetition of a real-noise pair).
    """

    name: str
    data: np.ndarray
    spacing: tuple[float, float, float]
    modality: str
    crop: str
    source: str
    extra: dict = field(default_factory=dict)


def _package_file(package: str, relative: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataMissingError(f"Python package {package!r} is not installed: {install_hint}")
    for root in spec.submodule_search_locations:
        path = Path(root) / relative
        if path.is_file():
            return path
    raise DataMissingError(f"{package} is installed but lacks {relative}: {install_hint}")


def _installed_file(paths: tuple[Path, ...], what: str, package: str) -> Path:
    """The first of ``paths`` that exists, else a :class:`DataMissingError` naming the Debian ``package``."""
    for path in paths:
        if path.is_file():
            return path
    raise DataMissingError(f"{what} not found: install it with `apt-get install -y {package}`.")


def cranium_path() -> Path:
    """Path of InVesalius' ``Cranium.inv3`` example.

    Raises
    ------
    DataMissingError
        When the Debian package ``invesalius-examples`` is not installed.
    """
    return _installed_file(CRANIUM_PATHS, "Cranium.inv3", "invesalius-examples")


def read_inv3(path: Path, n_slices: int | None = None) -> tuple[np.ndarray, tuple[float, float, float], dict]:
    """Read an InVesalius project (gzip tar of ``main.plist`` and a raw array): its first ``n_slices`` slices only
    (all with None), so that slices reserved for independent evaluation are never read.

    Returns
    -------
    volume : np.ndarray
        The raw array as stored, shape (K, J, I) (InVesalius stores slices first).
    spacing : tuple of float
        (sk, sj, si) in mm (the plist stores x, y, z).
    info : dict
        The plist's top-level scalar entries (name, modality, ...).
    """
    with tarfile.open(path, "r:gz") as tar:
        members = {Path(m.name).name: m for m in tar.getmembers()}
        plist = plistlib.loads(tar.extractfile(members["main.plist"]).read())
        matrix = plist["matrix"]
        shape = list(matrix["shape"])
        if n_slices is not None:
            shape[0] = min(shape[0], n_slices)
        dtype = np.dtype(matrix["dtype"])
        raw = tar.extractfile(members[matrix["filename"]]).read(int(np.prod(shape)) * dtype.itemsize)
    volume = np.frombuffer(raw, dtype=dtype).reshape(shape)
    sx, sy, sz = (float(s) for s in plist["spacing"])
    info = {k: v for k, v in plist.items() if isinstance(v, (str, int, float))}
    return volume, (sz, sy, sx), info


def center_crop(volume: np.ndarray, size: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    """Crop the in-plane axes (J, I) to ``size`` x ``size`` around the centre.

    Returns the cropped view and the (j0, i0) offsets of its first row and column. ``None`` keeps everything.
    """
    if size is None:
        return volume, (0, 0)
    _, nj, ni = volume.shape
    j0 = max((nj - size) // 2, 0)
    i0 = max((ni - size) // 2, 0)
    return volume[:, j0 : j0 + size, i0 : i0 + size], (j0, i0)


def load_cranium(first: int = 0, last: int = 47) -> Volume:
    """The InVesalius head CT, slices ``first``..``last`` (inclusive, K axis), full 256 x 256 in-plane, in HU.

    The in-plane crop is applied later (after the projection-domain noise, which needs the whole slice).
    """
    path = cranium_path()
    raw, spacing, info = read_inv3(path, n_slices=last + 1)
    data = raw[first : last + 1].astype(np.float32)
    crop = f"Cranium.inv3 slices {first}-{last} (K), all {data.shape[1]}x{data.shape[2]} in-plane"
    return Volume("cranium", data, spacing, "ct", crop, f"invesalius-examples: {path.name} ({info.get('name')})")


def _read_nifti_kji(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    sx, sy, sz = image.GetSpacing()[:3]
    return sitk.GetArrayFromImage(image), (float(sz), float(sy), float(sx))


def load_mni152(n_slices: int = 48, center: int | None = None) -> Volume:
    """The MNI ICBM152 2009a T1 template from nilearn's wheel: ``n_slices`` axial slices around ``center``.

    The template is 1 mm isotropic and stored as (I=197, J=233, K=189) in NIfTI order, i.e. (189, 233, 197) in
    K,J,I. ``center`` defaults to slice 80 of 189 (mid-brain: ventricles and cortex; the template is brain only).
    """
    path = _package_file("nilearn", MNI_FILE, "`pip install --no-deps nilearn` (the file ships in its wheel).")
    full, spacing = _read_nifti_kji(path)
    k = 80 if center is None else center
    first = k - n_slices // 2
    data = full[first : first + n_slices].astype(np.float32)
    crop = f"MNI152 2009a T1 axial slices {first}-{first + n_slices - 1} of {full.shape[0]} (K), all in-plane"
    return Volume("mni152", data, spacing, "mri", crop, "nilearn wheel: " + Path(MNI_FILE).name)


def colin27_path() -> Path:
    """Path of the Colin27 T1 ``ch2.nii.gz``.

    Raises
    ------
    DataMissingError
        When the Debian package ``mricron-data`` is not installed.
    """
    return _installed_file(COLIN27_PATHS, "Colin27 ch2.nii.gz", "mricron-data")


def load_colin27() -> Volume:
    """The Colin27 single-subject T1 (1 mm), axial slices 20-67 only (RAS; cerebellum and temporal lobes).

    Reoriented to RAS with nibabel, then only those slices are read from the file's proxy (never the rest of the
    volume, which is reserved for independent evaluation). Returned as (48, 217, 181) in K,J,I, float32 in the
    file's units (0..255).
    """
    import nibabel as nib

    path = colin27_path()
    canonical = nib.as_closest_canonical(nib.load(str(path)))
    first, last = COLIN27_SLICES
    arr = np.asarray(canonical.dataobj[:, :, first : last + 1], dtype=np.float32)  # (I, J, K)
    data = np.ascontiguousarray(arr.transpose(2, 1, 0))
    zi, zj, zk = (float(z) for z in canonical.header.get_zooms()[:3])
    crop = f"Colin27 ch2.nii.gz, RAS axial slices {first}-{last} (K), all {data.shape[1]}x{data.shape[2]} in-plane"
    return Volume("colin27", data, (zk, zj, zi), "mri", crop, "mricron-data: ch2.nii.gz")


def load_example4d() -> Volume:
    """nibabel's real EPI pair: repetition 0 is denoised, repetition 1 (``extra['repeat']``) is the reference.

    Shape (24, 96, 128) in K,J,I per repetition; no clean reference exists.
    """
    path = _package_file("nibabel", EXAMPLE4D_FILE, "`pip install nibabel` (the file ships in its wheel).")
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(image).astype(np.float32)  # (T, K, J, I)
    sx, sy, sz = image.GetSpacing()[:3]
    crop = f"example4d.nii.gz repetition 0 of {arr.shape[0]}, all {arr.shape[1]}x{arr.shape[2]}x{arr.shape[3]}"
    return Volume(
        "example4d",
        arr[0],
        (float(sz), float(sy), float(sx)),
        "mri",
        crop,
        "nibabel wheel: example4d.nii.gz",
        extra={"repeat": arr[1]},
    )
