"""Tests of NSN2NDenoiseLib.mrml against the real MRML scene of the slicer-core package (no Slicer application)."""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import weakref

import numpy as np
import pytest
from conftest import MISSING, require, smooth_noisy_volume, wait_for_training

MODULE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "NSN2NDenoise")
if MODULE_DIR not in sys.path:
    sys.path.insert(0, MODULE_DIR)

torch = require("torch", "torch==2.13.0 first, see README")
slicer = require("slicer", "the test extra: pip install -e .[test] (slicer-core, vtk)")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip(
        f"{MISSING}slicer-core (the 'slicer' module found has no MRML classes; pip install -e .[test])",
        allow_module_level=True,
    )
vtk = require("vtk", "the test extra: pip install -e .[test]")
import slicer.util  # noqa: E402

from NSN2NDenoiseLib import CancelledError, ConfigError, InputError, jobs, make_config, mrml, options  # noqa: E402


def plumbing_config(iterations: int = 20):
    """The fast preset on one thread, a few iterations: what the worker process can receive as flags."""
    return mrml.build_config("fast", iterations=iterations, device="cpu", threads=1)


pytestmark = pytest.mark.usefixtures("no_job_leaks")


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


def test_array_and_spacing_are_a_kji_view_and_kji_spacing():
    s = slicer.vtkMRMLScene()
    voxels = smooth_noisy_volume(1, np.int16)
    node = add_volume(s, voxels)
    array, spacing = mrml.array_and_spacing(node)
    assert array.shape == (6, 32, 32)
    assert spacing == pytest.approx((2.5, 0.9, 0.6))  # node spacing is I,J,K; ours is K,J,I
    np.testing.assert_array_equal(array, voxels)
    assert np.shares_memory(array, slicer.util.arrayFromVolume(node))  # a view: no copy of a large volume


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
    assert report["config"]["training"]["iterations"] == 20
    assert report["spacing"] == pytest.approx([2.5, 0.9, 0.6])  # K,J,I spacing reached the worker
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


def test_cancelled_job_kills_the_worker_and_leaves_no_new_node(scene):
    node = add_volume(scene, smooth_noisy_volume(1, np.int16))
    voxels = slicer.util.arrayFromVolume(node).copy()
    before_ids = volume_node_ids(scene)
    before_count = scene.GetNumberOfNodes()
    job = mrml.MRMLDenoiser(scene).start(node, config=plumbing_config(iterations=100000))
    wait_for_training(job)
    pid = job.job._process.pid
    job.cancel()
    assert job.wait(jobs.KILL_GRACE_S + 10) == jobs.CANCELLED
    assert job.cancelled and isinstance(job.error, CancelledError)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert job.output_node is None
    assert volume_node_ids(scene) == before_ids
    assert scene.GetNumberOfNodes() == before_count
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), voxels)


def test_failed_job_leaves_no_new_node_and_explains(scene):
    node = add_volume(scene, np.full((6, 32, 32), 5, dtype=np.int16))  # constant: the engine refuses it
    before_count = scene.GetNumberOfNodes()
    job = mrml.MRMLDenoiser(scene).start(node, config=plumbing_config())
    assert job.wait(60) == jobs.FAILED
    assert isinstance(job.error, InputError)
    assert scene.GetNumberOfNodes() == before_count
    with pytest.raises(InputError):
        mrml.MRMLDenoiser(scene).process(node, config=plumbing_config())
    assert scene.GetNumberOfNodes() == before_count


def test_removing_the_input_node_cancels_the_run(scene):
    node = add_volume(scene, smooth_noisy_volume(1, np.int16))
    job = mrml.MRMLDenoiser(scene).start(node, config=plumbing_config(iterations=100000))
    wait_for_training(job)
    scene.RemoveNode(node)
    assert job.job.cancel_requested, "the scene's NodeRemovedEvent must cancel at once, without a poll"
    before_count = scene.GetNumberOfNodes()
    assert job.wait(jobs.KILL_GRACE_S + 10) == jobs.CANCELLED
    assert isinstance(job.error, CancelledError) and "removed" in str(job.error)
    assert job.output_node is None
    assert scene.GetNumberOfNodes() == before_count


def test_a_job_dropped_before_it_finished_is_freed_and_stops_observing_the_scene(scene):
    # The scene's observer must not keep the job (and its result) alive once nothing else refers to it.
    node = add_volume(scene, np.full((6, 32, 32), 5, dtype=np.int16))  # constant: the worker fails at once
    job = mrml.MRMLDenoiser(scene).start(node, config=plumbing_config())
    assert scene.HasObserver(scene.NodeRemovedEvent)
    assert jobs.wait(job.job, 60) == jobs.FAILED  # the worker ended; the MRML job was never polled
    freed = weakref.ref(job)
    del job
    gc.collect()
    assert freed() is None, "the scene's NodeRemovedEvent observer keeps a dropped job alive"
    assert not scene.HasObserver(scene.NodeRemovedEvent)
    scene.RemoveNode(node)  # no observer left to call


def test_a_finished_job_stops_observing_the_scene(scene):
    node = add_volume(scene, np.full((6, 32, 32), 5, dtype=np.int16))
    job = mrml.MRMLDenoiser(scene).start(node, config=plumbing_config())
    assert job.wait(60) == jobs.FAILED
    assert not scene.HasObserver(scene.NodeRemovedEvent)
    assert job.poll() == jobs.FAILED


def test_interrupting_a_blocking_wait_cancels_the_run(scene):
    node = add_volume(scene, smooth_noisy_volume(1, np.int16))
    job = mrml.MRMLDenoiser(scene).start(node, config=plumbing_config(iterations=100000))

    def interrupt_in_training(j):
        if j.progress is not None and j.progress.phase == "training":
            raise KeyboardInterrupt  # Ctrl+C in a console

    with pytest.raises(KeyboardInterrupt):
        job.wait(60, poll_interval=0.05, callback=interrupt_in_training)
    assert job.poll() == jobs.CANCELLED
    assert job.output_node is None


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
        preset="FAST",
        iterations=7,
        device="GPU",
        slice_axis="J",
        lambda_rc=0.25,
        lambda_ic=2.0,
        lambda_self=0.0,
        tta=2,
        axes="Slice",
        seed=3,
        threads=1,
    )
    d = cfg.to_dict()
    assert d["preset"] == "fast" and d["device"] == "cuda" and d["slice_axis"] == "j"
    assert d["training"]["iterations"] == 7 and d["training"]["seed"] == 3 and d["training"]["threads"] == 1
    assert d["loss"]["lambda_rc"] == 0.25 and d["loss"]["lambda_ic"] == 2.0 and d["loss"]["lambda_self"] == 0.0
    assert d["inference"]["tta"] == 2 and d["inference"]["axes"] == "slice"
    # None and 0 keep the preset's values; every option of the table is accepted
    assert mrml.build_config("best", iterations=0, tta=None) == make_config("best")
    assert mrml.build_config("default", **{o.name: o.default() for o in options.OPTIONS[1:]}) == make_config()
    with pytest.raises(ConfigError, match="device"):
        mrml.build_config(device="tpu")
    with pytest.raises(ConfigError, match="unknown option"):
        mrml.build_config(energy_test=False)  # an option the engine no longer has


# -- the chunked fill: the finished result goes into the scene over several polls --------------------------------


class FinishedJob:
    """A DenoiseJob whose worker has ended and whose result has been read: what MRMLDenoiseJob sees at the end."""

    def __init__(self, result, report=None):
        self.result = result
        self.report = report if report is not None else {"config": {"preset": "fast"}}
        self.cancel_requested = False
        self.error = None
        self.progress = None

    def poll(self):
        return jobs.DONE

    def cancel(self):
        self.cancel_requested = True  # the process has ended: nothing else to do


@pytest.fixture
def slab_per_poll(monkeypatch):
    """Two K slices of 32x32 per poll, whatever the time."""
    monkeypatch.setattr(mrml, "FILL_CHUNK_BYTES", 2 * 32 * 32 * 4)
    monkeypatch.setattr(mrml, "FILL_BUDGET_S", 0.0)


def test_the_result_fills_over_several_polls_and_the_node_appears_only_when_complete(scene, slab_per_poll):
    node = add_volume(scene, smooth_noisy_volume(1, np.int16))
    transform = add_transform(scene, node)
    result = (smooth_noisy_volume(2) * 1.5 + 0.125).astype(np.float32)
    before_ids, before_count = volume_node_ids(scene), scene.GetNumberOfNodes()
    job = mrml.MRMLDenoiseJob(scene, node, FinishedJob(result))
    states = []
    while (state := job.poll()) == jobs.RUNNING:
        states.append(state)
        assert job.filling and job.output_node is None and job.report is None
        assert volume_node_ids(scene) == before_ids and scene.GetNumberOfNodes() == before_count
        assert len(states) < 10
    assert state == jobs.DONE and job.state == jobs.DONE and not job.filling
    assert len(states) == 3  # 6 slices, 2 per poll; the fourth poll adds the complete node
    out = job.output_node
    assert volume_node_ids(scene) - before_ids == {out.GetID()}
    assert out.GetName() == "noisy denoised"
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(out), result)  # bit-identical
    assert slicer.util.arrayFromVolume(out).dtype == np.float32
    assert out.GetSpacing() == node.GetSpacing() and out.GetOrigin() == node.GetOrigin()
    assert_same_matrix(ijk_to_ras(out), ijk_to_ras(node))
    assert out.GetTransformNodeID() == transform.GetID()
    assert mrml.read_report(out) == {"config": {"preset": "fast"}}
    assert out.GetAttribute("NSN2N.sourceVolumeID") == node.GetID()
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert sh.GetItemParent(sh.GetItemByDataNode(out)) == sh.GetItemParent(sh.GetItemByDataNode(node))
    assert out.GetDisplayNode() is not None
    assert job.poll() == jobs.DONE and scene.GetNumberOfNodes() == before_count + 2  # volume and display node


def test_cancel_during_the_fill_leaves_the_scene_unchanged(scene, slab_per_poll):
    node = add_volume(scene, smooth_noisy_volume(1, np.int16))
    target = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "mine")
    slicer.util.updateVolumeFromArray(target, np.zeros((2, 3, 4), np.float32))
    target_image = target.GetImageData()
    before_count = scene.GetNumberOfNodes()
    job = mrml.MRMLDenoiseJob(scene, node, FinishedJob(smooth_noisy_volume(2)), output_node=target)
    assert job.poll() == jobs.RUNNING and job.filling
    job.cancel()
    assert job.poll() == jobs.CANCELLED and job.cancelled and not job.filling
    assert isinstance(job.error, CancelledError)
    assert job.poll() == jobs.CANCELLED  # stays cancelled; nothing more is copied
    assert scene.GetNumberOfNodes() == before_count
    assert target.GetImageData() is target_image and slicer.util.arrayFromVolume(target).shape == (2, 3, 4)
    assert job.output_node is target and job.report is None


def test_removing_the_input_during_the_fill_cancels_it(scene, slab_per_poll):
    node = add_volume(scene, smooth_noisy_volume(1, np.int16))
    job = mrml.MRMLDenoiseJob(scene, node, FinishedJob(smooth_noisy_volume(2)))
    assert job.poll() == jobs.RUNNING
    scene.RemoveNode(node)
    before_count = scene.GetNumberOfNodes()
    assert job.poll() == jobs.CANCELLED
    assert "removed" in str(job.error) and job.output_node is None
    assert scene.GetNumberOfNodes() == before_count


def test_a_result_of_the_wrong_shape_fails_without_touching_the_scene(scene):
    node = add_volume(scene, smooth_noisy_volume(1, np.int16))
    before_count = scene.GetNumberOfNodes()
    job = mrml.MRMLDenoiseJob(scene, node, FinishedJob(np.zeros((5, 32, 32), np.float32)))
    assert job.poll() == jobs.FAILED
    assert "shape" in str(job.error) and scene.GetNumberOfNodes() == before_count


def test_no_poll_of_a_large_fill_takes_long(scene):
    """A 96x512x512 result (96 MB) with the default slab size and time budget: several short polls."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "large")
    slicer.util.updateVolumeFromArray(node, np.zeros((96, 512, 512), np.int16))
    result = np.random.default_rng(0).random((96, 512, 512), dtype=np.float32)
    job = mrml.MRMLDenoiseJob(scene, node, FinishedJob(result))
    durations = []
    while True:
        t0 = time.perf_counter()
        state = job.poll()
        durations.append(time.perf_counter() - t0)
        if state != jobs.RUNNING:
            break
    assert state == jobs.DONE and len(durations) >= 2
    assert max(durations) < 0.5, durations  # about FILL_BUDGET_S + one slab; loose for a loaded machine
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(job.output_node), result)


def test_blocking_wait_and_write_output_give_the_same_node(scene):
    node = add_volume(scene, smooth_noisy_volume(1, np.int16))
    result = smooth_noisy_volume(3)
    job = mrml.MRMLDenoiseJob(scene, node, FinishedJob(result))
    assert job.wait(10) == jobs.DONE
    direct = mrml.write_output(scene, node, result, {"a": 1})
    assert direct.GetName() == "noisy denoised_1" or direct.GetName() != job.output_node.GetName()
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(direct), slicer.util.arrayFromVolume(job.output_node))
    np.testing.assert_array_equal(ijk_to_ras(direct), ijk_to_ras(job.output_node))


# -- saving a run's model and starting a run from it -------------------------------------------------------------


def narrow_model(path, width: int = 8):
    """A model file of an untrained network narrower than the presets' (the run must take the model's network)."""
    from NSN2NDenoiseLib import model_io
    from NSN2NDenoiseLib.config import NetworkConfig
    from NSN2NDenoiseLib.training import build_network

    cfg = plumbing_config()
    cfg = cfg.replace(network=NetworkConfig(depth=cfg.network.depth, width=width))
    model_io.save_model(path, build_network(cfg).state_dict(), cfg, trained_on="narrow")
    return cfg.network


def test_a_run_saves_its_model_and_a_second_run_starts_from_it(scene, tmp_path):
    from NSN2NDenoiseLib import model_io

    first = add_volume(scene, smooth_noisy_volume(1, np.int16), name="first")
    model = tmp_path / "protocol.safetensors"
    fast = {"preset": "fast", "device": "cpu", "threads": 1}
    out1 = mrml.MRMLDenoiser(scene).process(first, save_model_path=str(model), iterations=20, **fast)
    assert out1 is not None and model.is_file()
    saved = model_io.load_model(model)
    assert saved.metadata["trained_on"] == "first" and saved.metadata["iterations"] == "20"
    assert not list(tmp_path.glob(".nsn2n-model-*")), "the model is written atomically, no temporary file left"

    second = add_volume(scene, smooth_noisy_volume(2, np.int16), name="second")
    before_ids = volume_node_ids(scene)
    out2 = mrml.MRMLDenoiser(scene).process(second, init_model_path=model, iterations=10, **fast)
    assert volume_node_ids(scene) - before_ids == {out2.GetID()}
    assert out2.GetName() == "second denoised"
    result = slicer.util.arrayFromVolume(out2)
    assert result.shape == (6, 32, 32) and np.all(np.isfinite(result))
    assert mrml.read_report(out2)["config"]["training"]["iterations"] == 10
    assert model.stat().st_size > 0  # starting from a model leaves it as it was


def test_a_run_started_from_a_model_takes_its_network(scene, tmp_path):
    model = tmp_path / "narrow.safetensors"
    network = narrow_model(model)
    node = add_volume(scene, smooth_noisy_volume(1, np.int16))
    out = mrml.MRMLDenoiser(scene).process(
        node, init_model_path=model, preset="fast", iterations=10, device="cpu", threads=1
    )
    assert mrml.read_report(out)["config"]["network"] == {"depth": network.depth, "width": network.width}


def test_a_start_model_halves_the_presets_iterations_unless_they_are_given():
    assert mrml.WARM_START_ITERATION_FRACTION == 0.5
    for preset in ("fast", "default", "best"):
        cold = mrml.build_config(preset).training.iterations
        assert mrml.build_config(preset, warm_start=True).training.iterations == cold // 2
        assert mrml.build_config(preset, warm_start=True, iterations=0).training.iterations == cold // 2
        assert mrml.build_config(preset, warm_start=True, iterations=77).training.iterations == 77


def test_unset_model_paths_are_off():
    for unset in (None, "", ".", "  "):
        assert mrml.check_model_paths(unset, unset) is None


def test_bad_model_files_give_one_clear_error_before_any_work_and_no_node(scene, tmp_path):
    import safetensors.torch

    from NSN2NDenoiseLib.config import NetworkConfig
    from NSN2NDenoiseLib.training import build_network

    node = add_volume(scene, smooth_noisy_volume(1, np.int16))
    before_count = scene.GetNumberOfNodes()
    pickle_file = tmp_path / "model.safetensors"
    torch.save({"w": torch.zeros(3)}, pickle_file)  # a torch.save file (pickle), whatever its name
    misfit = tmp_path / "misfit.safetensors"  # tensors of a narrower network under the metadata of a wider one
    cfg = plumbing_config()
    header = {"format": "nsn2n-model", "format_version": "1", "config": json.dumps(cfg.to_dict())}
    narrow = build_network(cfg.replace(network=NetworkConfig(depth=cfg.network.depth, width=4))).state_dict()
    safetensors.torch.save_file(narrow, str(misfit), metadata=header)
    cases = [
        ({"init_model_path": pickle_file}, InputError, "pickle"),
        ({"init_model_path": misfit}, ConfigError, "does not fit"),
        ({"init_model_path": tmp_path / "missing.safetensors"}, InputError, "does not exist"),
        ({"save_model_path": tmp_path / "model.pt"}, InputError, r"must end in \.safetensors"),
        ({"save_model_path": tmp_path / "no" / "m.safetensors"}, InputError, "does not exist"),
    ]
    for paths, error, pattern in cases:
        with pytest.raises(error, match=pattern) as info:
            mrml.MRMLDenoiser(scene).start(node, config=plumbing_config(), **paths)
        assert "\n" not in str(info.value), str(info.value)
        assert jobs.active_job() is None, "nothing was started"
        assert scene.GetNumberOfNodes() == before_count
    assert not (tmp_path / "no").exists()


# -- what was removed (input minus output) and the run's warnings ------------------------------------------------


def residual_nodes_of(scene, output_node):
    """The volume nodes whose NSN2N.residualOf attribute names ``output_node``."""
    nodes = [
        scene.GetNthNodeByClass(n, "vtkMRMLVolumeNode")
        for n in range(scene.GetNumberOfNodesByClass("vtkMRMLVolumeNode"))
    ]
    return [n for n in nodes if n.GetAttribute("NSN2N.residualOf") == output_node.GetID()]


def sh_item_count(scene):
    return slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene).GetNumberOfItems()


def assert_is_the_residual(scene, removed, node, out, transform, expected):
    """``removed`` holds exactly ``expected`` (input - output), with the input's geometry, beside it, centred on 0."""
    residual = slicer.util.arrayFromVolume(removed)
    assert residual.dtype == np.float32 and residual.shape == expected.shape
    np.testing.assert_array_equal(residual, expected)  # bit-identical, and the sign: input minus output
    assert removed.GetSpacing() == node.GetSpacing() and removed.GetOrigin() == node.GetOrigin()
    assert_same_matrix(ijk_to_ras(removed), ijk_to_ras(node))
    assert removed.GetTransformNodeID() == transform.GetID()
    assert removed.GetAttribute("NSN2N.sourceVolumeID") == node.GetID()
    assert removed.GetAttribute("NSN2N.residualOf") == out.GetID()
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert sh.GetItemParent(sh.GetItemByDataNode(removed)) == sh.GetItemParent(sh.GetItemByDataNode(node))
    display = removed.GetDisplayNode()
    assert display is not None and not display.GetAutoWindowLevel()
    assert display.GetLevel() == 0.0
    magnitude = np.abs(expected)
    assert np.percentile(magnitude, 99.0) < display.GetWindow() / 2.0 <= 1.25 * magnitude.max()  # symmetric about 0


def test_residual_is_input_minus_output_with_the_input_geometry_and_the_input_is_unchanged(scene):
    voxels = smooth_noisy_volume(1, np.int16)
    node = add_volume(scene, voxels)
    transform = add_transform(scene, node)
    before_matrix, before_ids = ijk_to_ras(node), volume_node_ids(scene)

    out = mrml.MRMLDenoiser(scene).process(node, config=plumbing_config(), residual=True)

    removed_nodes = residual_nodes_of(scene, out)
    assert len(removed_nodes) == 1
    removed = removed_nodes[0]
    assert volume_node_ids(scene) - before_ids == {out.GetID(), removed.GetID()}
    assert removed.GetName() == "noisy removed by NSN2N" and out.GetName() == "noisy denoised"
    expected = voxels.astype(np.float32) - slicer.util.arrayFromVolume(out)
    assert np.count_nonzero(expected) > expected.size // 2, "something must be removed for the test to mean anything"
    assert_is_the_residual(scene, removed, node, out, transform, expected)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), voxels)
    assert slicer.util.arrayFromVolume(node).dtype == np.int16
    np.testing.assert_array_equal(ijk_to_ras(node), before_matrix)
    assert out.GetAttribute("NSN2N.residualOf") is None


def test_without_residual_a_run_adds_exactly_one_volume(scene):
    node = add_volume(scene, smooth_noisy_volume(1, np.int16))
    before_ids, before_count = volume_node_ids(scene), scene.GetNumberOfNodes()
    job = mrml.MRMLDenoiseJob(scene, node, FinishedJob(smooth_noisy_volume(2)))
    assert not job.residual
    assert job.wait(10) == jobs.DONE
    assert job.residual_node is None
    assert volume_node_ids(scene) - before_ids == {job.output_node.GetID()}
    assert scene.GetNumberOfNodes() == before_count + 2  # the volume and its display node
    assert residual_nodes_of(scene, job.output_node) == []
    out = mrml.MRMLDenoiser(scene).process(node, config=plumbing_config())  # the default of the adapter: off
    assert residual_nodes_of(scene, out) == [] and len(volume_node_ids(scene) - before_ids) == 2


def test_the_residual_fills_over_several_polls_and_both_nodes_appear_together(scene, slab_per_poll):
    voxels = smooth_noisy_volume(1, np.int16)
    node = add_volume(scene, voxels)
    transform = add_transform(scene, node)
    result = (smooth_noisy_volume(2) * 1.5 + 0.125).astype(np.float32)
    result_before = result.copy()
    before_ids, before_count, before_items = volume_node_ids(scene), scene.GetNumberOfNodes(), sh_item_count(scene)
    job = mrml.MRMLDenoiseJob(scene, node, FinishedJob(result), residual=True)
    states = []
    while (state := job.poll()) == jobs.RUNNING:
        states.append(state)
        assert job.filling and job.output_node is None and job.residual_node is None and job.report is None
        assert volume_node_ids(scene) == before_ids and scene.GetNumberOfNodes() == before_count
        assert sh_item_count(scene) == before_items
        assert len(states) < 20
    assert state == jobs.DONE and not job.filling
    assert len(states) == 6  # 6 slices, 2 per poll: 3 polls for the output, 3 for the residual; then both nodes
    out, removed = job.output_node, job.residual_node
    assert volume_node_ids(scene) - before_ids == {out.GetID(), removed.GetID()}
    assert scene.GetNumberOfNodes() == before_count + 4  # two volumes, two display nodes
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(out), result)
    assert_is_the_residual(scene, removed, node, out, transform, voxels.astype(np.float32) - result)
    np.testing.assert_array_equal(result, result_before)  # neither array is written to
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), voxels)


def test_cancel_during_the_residual_fill_leaves_the_scene_unchanged(scene, slab_per_poll):
    voxels = smooth_noisy_volume(1, np.int16)
    node = add_volume(scene, voxels)
    before_ids, before_count, before_items = volume_node_ids(scene), scene.GetNumberOfNodes(), sh_item_count(scene)
    job = mrml.MRMLDenoiseJob(scene, node, FinishedJob(smooth_noisy_volume(2)), residual=True)
    for _ in range(4):  # the output image is complete, the residual's is being filled
        assert job.poll() == jobs.RUNNING and job.filling
    assert job._fills[0].done and not job._fills[1].done and job._fills[1].next_slice > 0
    job.cancel()
    assert job.poll() == jobs.CANCELLED and job.cancelled and not job.filling
    assert isinstance(job.error, CancelledError)
    assert job.output_node is None and job.residual_node is None
    assert volume_node_ids(scene) == before_ids and scene.GetNumberOfNodes() == before_count
    assert sh_item_count(scene) == before_items
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), voxels)


@pytest.mark.parametrize("given_output", [False, True], ids=["new output", "given output"])
def test_a_failure_adding_the_second_node_takes_the_first_out_again(scene, monkeypatch, given_output):
    """A new output is added first and removed when the residual fails; with a given output the residual goes
    first and is removed when the output fails."""
    node = add_volume(scene, smooth_noisy_volume(1, np.int16))
    target = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "mine") if given_output else None
    before_ids, before_count, before_items = volume_node_ids(scene), scene.GetNumberOfNodes(), sh_item_count(scene)

    def fail(*args):
        raise RuntimeError("no display for you")

    monkeypatch.setattr(mrml, "_set_up_display" if given_output else "_set_up_residual_display", fail)
    job = mrml.MRMLDenoiseJob(scene, node, FinishedJob(smooth_noisy_volume(2)), output_node=target, residual=True)
    assert job.wait(10) == jobs.FAILED
    assert "no display for you" in str(job.error)
    assert job.residual_node is None and job.output_node is target
    assert volume_node_ids(scene) == before_ids and scene.GetNumberOfNodes() == before_count
    assert sh_item_count(scene) == before_items


def test_the_reports_warnings_go_onto_the_output_node(scene):
    node = add_volume(scene, smooth_noisy_volume(1, np.int16))
    result = smooth_noisy_volume(2)
    warnings = ["slices 3-5: structure removed", "noise correlated between slices"]
    out = mrml.write_output(scene, node, result, report={"warnings": warnings})
    assert out.GetAttribute("NSN2N.warnings") == "slices 3-5: structure removed\nnoise correlated between slices"
    assert mrml.read_report(out)["warnings"] == warnings
    assert mrml.write_output(scene, node, result, report={"warnings": []}).GetAttribute("NSN2N.warnings") is None
    assert mrml.write_output(scene, node, result).GetAttribute("NSN2N.warnings") is None
    mrml.write_output(scene, node, result, report={"warnings": []}, output_node=out)  # a rerun without warnings
    assert out.GetAttribute("NSN2N.warnings") is None
    job = mrml.MRMLDenoiseJob(scene, node, FinishedJob(result, report={"warnings": warnings[:1]}), residual=True)
    assert job.wait(10) == jobs.DONE
    assert job.output_node.GetAttribute("NSN2N.warnings") == "slices 3-5: structure removed"
    assert mrml.report_warnings(job.report) == warnings[:1] and mrml.report_warnings(None) == []
