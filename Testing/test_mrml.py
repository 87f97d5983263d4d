"""Tests of NSN2NDenoiseLib.mrml against the real MRML scene of the slicer-core package (no Slicer application)."""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import pytest
from conftest import plumbing_config, smooth_noisy_volume

MODULE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "NSN2NDenoise")
if MODULE_DIR not in sys.path:
    sys.path.insert(0, MODULE_DIR)

torch = pytest.importorskip("torch")
slicer = pytest.importorskip("slicer")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("slicer-core is not installed (the 'slicer' module found has no MRML classes)", allow_module_level=True)
vtk = pytest.importorskip("vtk")
import slicer.util  # noqa: E402

from NSN2NDenoiseLib import InputError, jobs, make_config, mrml  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield
    job = jobs.active_job()
    if job is not None:
        job.cancel()
        job.wait(60)


@pytest.fixture
def scene():
    s = slicer.vtkMRMLScene()
    slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(s)
    return s


def ijk_to_ras(node):
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


def add_volume(scene, voxels, name="noisy", spacing=(0.6, 0.9, 2.5)):
    """A scalar volume with anisotropic I,J,K spacing, oblique axes, an origin, in a subject hierarchy folder."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, voxels)
    node.SetSpacing(*spacing)
    node.SetOrigin(-12.5, 30.25, 7.0)
    angle = np.deg2rad(25.0)
    c, s = np.cos(angle), np.sin(angle)
    directions = np.array([[c, -s, 0.0], [s * 0.8, c * 0.8, 0.6], [-s * 0.6, -c * 0.6, 0.8]])  # orthonormal, oblique
    matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        for col in range(3):
            matrix.SetElement(r, col, directions[r, col])
    node.SetIJKToRASDirectionMatrix(matrix)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    folder = sh.CreateFolderItem(sh.GetSceneItemID(), "Study")
    sh.CreateItem(folder, node)
    return node


def add_transform(scene, node):
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    m = vtk.vtkMatrix4x4()
    m.SetElement(0, 3, 15.0)
    m.SetElement(1, 1, 0.0)
    m.SetElement(1, 2, -1.0)
    m.SetElement(2, 1, 1.0)
    m.SetElement(2, 2, 0.0)
    transform.SetMatrixTransformToParent(m)
    node.SetAndObserveTransformNodeID(transform.GetID())
    return transform


def assert_same_matrix(actual, expected):
    # CloneVolumeWithoutImageData and CopyOrientation rebuild the matrix from spacing and unit directions, which
    # can differ from the input's by one rounding step (about 1e-17 here); anything larger is a geometry error.
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-12)


def volume_node_ids(scene):
    return {
        scene.GetNthNodeByClass(n, "vtkMRMLVolumeNode").GetID()
        for n in range(scene.GetNumberOfNodesByClass("vtkMRMLVolumeNode"))
    }


def test_array_and_spacing_are_kji_copies():
    s = slicer.vtkMRMLScene()
    voxels = smooth_noisy_volume(1, np.int16)
    node = add_volume(s, voxels)
    array, spacing = mrml.array_and_spacing(node)
    assert array.shape == (6, 32, 32)
    assert spacing == pytest.approx((2.5, 0.9, 0.6))  # node spacing is I,J,K; ours is K,J,I
    np.testing.assert_array_equal(array, voxels)
    array[:] = 0
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), voxels)  # a copy, not a view


def test_output_has_input_geometry_and_transform_and_input_is_unchanged(scene):
    voxels = smooth_noisy_volume(1, np.int16)
    node = add_volume(scene, voxels)
    transform = add_transform(scene, node)
    node.CreateDefaultDisplayNodes()
    node.GetDisplayNode().SetAutoWindowLevel(False)
    node.GetDisplayNode().SetWindowLevel(123.0, 45.0)
    before_matrix = ijk_to_ras(node)
    before_ids = volume_node_ids(scene)

    out = mrml.MRMLDenoiser(scene).process(node, config=plumbing_config())

    assert out is not node
    assert volume_node_ids(scene) - before_ids == {out.GetID()}
    assert out.GetName() == "noisy denoised"
    assert_same_matrix(ijk_to_ras(out), ijk_to_ras(node))
    np.testing.assert_array_equal(ijk_to_ras(node), before_matrix)
    assert abs(before_matrix[0, 1]) > 0.1, "the test geometry must be oblique to mean anything"
    assert out.GetSpacing() == pytest.approx(node.GetSpacing())
    assert out.GetTransformNodeID() == transform.GetID()
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), voxels)
    assert slicer.util.arrayFromVolume(node).dtype == np.int16
    result = slicer.util.arrayFromVolume(out)
    assert result.shape == voxels.shape and result.dtype == np.float32
    assert np.all(np.isfinite(result))
    assert not np.array_equal(result, voxels.astype(np.float32))

    display = out.GetDisplayNode()
    assert display is not None
    assert (display.GetWindow(), display.GetLevel()) == pytest.approx((123.0, 45.0))

    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    out_item = sh.GetItemByDataNode(out)
    assert out_item
    assert sh.GetItemParent(out_item) == sh.GetItemParent(sh.GetItemByDataNode(node))

    report = mrml.read_report(out)
    assert report["config"]["training"]["iterations"] == 5
    assert json.loads(out.GetAttribute("NSN2N.report")) == report
    assert out.GetAttribute("NSN2N.sourceVolumeID") == node.GetID()


def test_given_output_node_is_overwritten_with_input_geometry(scene):
    node = add_volume(scene, smooth_noisy_volume(1, np.int16))
    add_transform(scene, node)
    target = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "mine")
    target.SetSpacing(5.0, 5.0, 5.0)
    out = mrml.MRMLDenoiser(scene).process(node, target, config=plumbing_config())
    assert out is target
    assert out.GetName() == "mine"
    assert_same_matrix(ijk_to_ras(out), ijk_to_ras(node))
    assert out.GetTransformNodeID() == node.GetTransformNodeID()
    assert slicer.util.arrayFromVolume(out).shape == (6, 32, 32)


def test_output_equal_to_input_is_refused(scene):
    node = add_volume(scene, smooth_noisy_volume(1, np.int16))
    with pytest.raises(InputError, match="must differ from the input"):
        mrml.MRMLDenoiser(scene).start(node, node, config=plumbing_config())
    assert jobs.active_job() is None


def test_cancelled_job_leaves_no_new_node(scene):
    node = add_volume(scene, smooth_noisy_volume(1, np.int16))
    voxels = slicer.util.arrayFromVolume(node).copy()
    before_ids = volume_node_ids(scene)
    before_count = scene.GetNumberOfNodes()
    job = mrml.MRMLDenoiser(scene).start(node, config=plumbing_config(iterations=100000))
    deadline = time.monotonic() + 120
    while (job.progress is None or job.progress.phase != "training") and time.monotonic() < deadline:
        assert job.poll() == "running"
        time.sleep(0.05)
    job.cancel()
    assert job.wait(30) == "cancelled"
    assert job.cancelled
    assert job.output_node is None
    assert volume_node_ids(scene) == before_ids
    assert scene.GetNumberOfNodes() == before_count
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), voxels)


def test_failed_job_leaves_no_new_node_and_explains(scene):
    node = add_volume(scene, np.full((6, 32, 32), 5, dtype=np.int16))  # constant: the engine refuses it
    before_count = scene.GetNumberOfNodes()
    job = mrml.MRMLDenoiser(scene).start(node, config=plumbing_config())
    assert job.wait(60) == "failed"
    assert isinstance(job.error, InputError)
    assert scene.GetNumberOfNodes() == before_count
    with pytest.raises(InputError):
        mrml.MRMLDenoiser(scene).process(node, config=plumbing_config())
    assert scene.GetNumberOfNodes() == before_count


def test_input_removed_while_running_gives_error_and_no_node(scene):
    node = add_volume(scene, smooth_noisy_volume(1, np.int16))
    job = mrml.MRMLDenoiser(scene).start(node, config=plumbing_config())
    scene.RemoveNode(node)
    before_count = scene.GetNumberOfNodes()
    assert job.wait(60) == "failed"
    assert "removed" in str(job.error)
    assert scene.GetNumberOfNodes() == before_count


def test_label_map_is_refused_with_what_to_do(scene):
    label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    slicer.util.updateVolumeFromArray(label, np.zeros((6, 32, 32), dtype=np.uint8))
    before_count = scene.GetNumberOfNodes()
    with pytest.raises(InputError, match="label map") as info:
        mrml.MRMLDenoiser(scene).start(label, config=plumbing_config())
    assert "grayscale image volume instead" in str(info.value)
    assert jobs.active_job() is None
    assert scene.GetNumberOfNodes() == before_count


def test_vector_volume_is_refused_with_what_to_do(scene):
    rgb = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "colour")
    slicer.util.updateVolumeFromArray(rgb, np.zeros((6, 32, 32, 3), dtype=np.uint8))
    assert rgb.GetImageData().GetNumberOfScalarComponents() == 3
    with pytest.raises(InputError, match="vector") as info:
        mrml.MRMLDenoiser(scene).start(rgb, config=plumbing_config())
    assert "Vector to Scalar Volume" in str(info.value)
    assert jobs.active_job() is None
    dti = scene.AddNewNodeByClass("vtkMRMLDiffusionTensorVolumeNode", "dti")
    with pytest.raises(InputError, match="tensor or diffusion"):
        mrml.check_input_node(dti)


def test_multicomponent_scalar_node_and_empty_node_are_refused(scene):
    multi = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "two components")
    image = vtk.vtkImageData()
    image.SetDimensions(32, 32, 6)
    image.AllocateScalars(vtk.VTK_FLOAT, 2)
    multi.SetAndObserveImageData(image)
    with pytest.raises(InputError, match="multi-component"):
        mrml.check_input_node(multi)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="no voxels"):
        mrml.check_input_node(empty)
    with pytest.raises(InputError, match="No input volume"):
        mrml.check_input_node(None)


def test_build_config_maps_module_options():
    cfg = mrml.build_config(
        preset="fast",
        iterations=7,
        device="GPU",
        slice_axis="J",
        lambda_rc=0.25,
        lambda_ic=2.0,
        energy_test=False,
        tta=True,
        safeguard=True,
        seed=3,
        threads=1,
    )
    d = cfg.to_dict()
    assert d["preset"] == "fast" and d["device"] == "cuda" and d["slice_axis"] == "j"
    assert d["training"]["iterations"] == 7 and d["training"]["seed"] == 3 and d["training"]["threads"] == 1
    assert d["loss"]["lambda_rc"] == 0.25 and d["loss"]["lambda_ic"] == 2.0
    assert d["weights"]["energy_test"] is False
    assert d["inference"]["tta"] is True and d["inference"]["safeguard"] is True
    # None and 0 keep the preset's values
    assert mrml.build_config("best", iterations=0).to_dict() == make_config("best").to_dict()
    with pytest.raises(InputError, match="Unknown device"):
        mrml.build_config(device="tpu")
