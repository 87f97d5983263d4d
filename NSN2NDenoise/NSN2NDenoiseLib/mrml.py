"""The MRML adapter: volume node -> numpy -> engine -> new volume node, with no Qt.

Runs inside 3D Slicer and with the ``slicer-core`` package outside it. Every function takes the scene as a
parameter, because ``slicer-core`` has no ``slicer.mrmlScene``. All scene changes happen on the thread that
calls :meth:`MRMLDenoiseJob.poll` or :meth:`MRMLDenoiseJob.wait` (the main thread in Slicer); the worker
process of :mod:`.jobs` only sees the files the job writes and reads back, and the job's own thread does that
file work.

No call stalls the main thread for long, whatever the volume's size: the job's thread writes the input and
reads the result, and :meth:`MRMLDenoiseJob.poll` copies the result into an off-scene image slab by slab
(:data:`FILL_CHUNK_BYTES` at a time, for at most about :data:`FILL_BUDGET_S` per call) before it puts the
complete node into the scene in one short last step. With ``residual=True`` it fills a second image, what was
removed (input minus output), the same way, and both nodes enter the scene in the same last step.

Axis order: ``slicer.util.arrayFromVolume`` gives arrays in K,J,I order (slice, row, column), while
``node.GetSpacing()`` is in I,J,K order; :func:`array_and_spacing` reverses the spacing so both are K,J,I.
"""

from __future__ import annotations

import json
import time
import weakref
from typing import Any

import numpy as np

from . import jobs
from .errors import CancelledError, InputError, NSN2NError
from .jobs import CANCELLED, DONE, FAILED, FINISHED_STATES
from .options import to_config

REPORT_ATTRIBUTE = "NSN2N.report"
"""Node attribute holding the run report as JSON (configuration, device, timings, loss curve, warnings)."""
SOURCE_ATTRIBUTE = "NSN2N.sourceVolumeID"
"""Node attribute holding the MRML node ID of the input volume."""
WARNINGS_ATTRIBUTE = "NSN2N.warnings"
"""Output node attribute holding the run report's warnings, one per line; absent when the run had none."""
RESIDUAL_OF_ATTRIBUTE = "NSN2N.residualOf"
"""Residual node attribute holding the MRML node ID of the output volume whose removed part it holds."""
RESIDUAL_NAME = "{input} removed by NSN2N"
"""Name of the residual volume node (input minus output); made unique in the scene."""
FILL_CHUNK_BYTES = 32 * 2**20
"""Most bytes of the result copied into the output image in one go (whole K slices, at least one)."""
FILL_BUDGET_S = 0.04
"""Seconds one :meth:`MRMLDenoiseJob.poll` may spend copying the result before it returns (it finishes the slab
it is copying, so one call takes at most about this plus one slab's copy)."""


def check_input_node(node) -> None:
    """Raise :class:`InputError` with what to do unless ``node`` is a single-component scalar volume with voxels.

    Label maps, vector (e.g. RGB) volumes, tensor and diffusion-weighted volumes are refused.
    """
    if node is None:
        raise InputError("No input volume is selected. Load a volume and select it as the input.")
    if not node.IsA("vtkMRMLVolumeNode"):
        raise InputError(f"'{node.GetName()}' is not a volume. Select a scalar (grayscale) volume as the input.")
    if node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(
            f"'{node.GetName()}' is a label map (segmentation labels), which cannot be denoised. Select the "
            "grayscale image volume instead, or convert the label map to a scalar volume in the Volumes module."
        )
    diffusion = node.IsA("vtkMRMLDiffusionTensorVolumeNode") or node.IsA("vtkMRMLDiffusionWeightedVolumeNode")
    image = node.GetImageData()
    components = image.GetNumberOfScalarComponents() if image is not None else 0
    # vtkMRMLVectorVolumeNode derives from vtkMRMLTensorVolumeNode: test for vectors before other tensors.
    if not diffusion and (node.IsA("vtkMRMLVectorVolumeNode") or components > 1):
        raise InputError(
            f"'{node.GetName()}' is a vector (multi-component, e.g. RGB colour) volume. Convert it to a scalar "
            "volume first (Vector to Scalar Volume module), then denoise that."
        )
    if diffusion or node.IsA("vtkMRMLTensorVolumeNode"):
        raise InputError(
            f"'{node.GetName()}' is a tensor or diffusion-weighted volume. Denoise one scalar volume instead "
            "(e.g. extract a baseline or a scalar map first)."
        )
    if not node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError(f"'{node.GetName()}' is not a scalar volume. Select a grayscale image volume.")
    if image is None or image.GetNumberOfPoints() == 0:
        raise InputError(f"'{node.GetName()}' has no voxels. Load image data into it first.")


def array_and_spacing(node) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The node's voxels in K,J,I order, as a view (no copy), and the spacing in mm in the same K,J,I order.

    The view is what :func:`~.jobs.write_input` needs: the job's thread writes it to the job's file once, right
    after the start, and then lets it go (see :attr:`.jobs.DenoiseJob.input_written`). Nothing in this package
    changes the input's voxels; replacing its image data meanwhile is safe, as the view keeps the old buffer.

    Raises
    ------
    InputError
        From :func:`check_input_node`.
    """
    import slicer.util

    check_input_node(node)
    spacing_ijk = node.GetSpacing()
    return slicer.util.arrayFromVolume(node), (float(spacing_ijk[2]), float(spacing_ijk[1]), float(spacing_ijk[0]))


DEVICE_ALIASES = {"gpu": "cuda"}
"""Spellings accepted besides the engine's device names ('auto', 'cpu', 'cuda'), for console and batch users."""


WARM_START_ITERATION_FRACTION = 0.5
"""Share of the preset's iterations that a run started from a saved model trains when no iteration count is given:
on a cohort of CT (other dose) and MRI (other noise level) volumes, a warm start with half the iterations was within
0.15 dB PSNR of a cold start with all of them (benchmarks/results/cohort/README.md)."""


def build_config(preset: str = "default", warm_start: bool = False, **options: Any):
    """The engine configuration for option values of :data:`options.OPTIONS` (snake_case names).

    Parameters
    ----------
    preset : {'fast', 'default', 'best'}
        Quality/time trade-off; every option left out or None keeps this preset's value.
    warm_start : bool
        The run starts from a saved model: without an iteration count (None or 0) it trains
        :data:`WARM_START_ITERATION_FRACTION` of the preset's iterations.
    **options
        ``iterations`` (0 also keeps the preset's), ``device`` ('auto', 'cpu', 'cuda'; 'gpu' means 'cuda';
        any case), ``slice_axis`` (any case), ``seed``, ``threads``, ``tta``, ``axes`` (any case),
        ``neighbour_fusion`` (any case), ``wiener`` (any case), ``lambda_self``, ``lambda_rc``, ``lambda_ic``: see
        :data:`options.OPTIONS`.

    Raises
    ------
    ConfigError
        For an unknown option, an unknown choice or a value out of bounds; the message names the field.
    """
    values = {name: value for name, value in options.items() if value is not None}
    if values.get("iterations") == 0:
        del values["iterations"]
    for name in ("device", "slice_axis", "axes", "neighbour_fusion", "wiener"):
        if name in values:
            values[name] = str(values[name]).lower()
    if "device" in values:
        values["device"] = DEVICE_ALIASES.get(values["device"], values["device"])
    config = to_config({"preset": str(preset).lower(), **values})
    if warm_start and "iterations" not in values:
        warm = max(1, int(round(config.training.iterations * WARM_START_ITERATION_FRACTION)))
        config = to_config({"preset": str(preset).lower(), **values, "iterations": warm})
    return config


def _model_path(path) -> str | None:
    """None for an unset path (None, '' or '.', what an empty path field gives), else the path as text."""
    text = str(path).strip() if path is not None else ""
    return None if text in ("", ".") else text


def check_model_paths(save_model_path=None, init_model_path=None):
    """Check a run's model paths before it starts, as the worker does; returns the start model or None.

    Raises
    ------
    InputError
        The model to save does not end in ``.safetensors`` or its folder does not exist; the start model is
        missing, a pickle (code) file, or not a safetensors model of NSN2N.
    ConfigError
        The start model's tensors do not match its stored network settings.
    """
    save_model_path, init_model_path = _model_path(save_model_path), _model_path(init_model_path)
    if not (save_model_path or init_model_path):
        return None
    from . import model_io

    if save_model_path:
        model_io.check_save_path(save_model_path)
    return model_io.load_model(init_model_path) if init_model_path else None


def _report_dict(report) -> dict[str, Any]:
    if report is None:
        return {}
    if hasattr(report, "to_dict"):
        return report.to_dict()
    return dict(report)


AUTO_PERCENTILES = (0.1, 99.9)
"""Percentiles of the voxels that Slicer's automatic window/level spans (widened by :data:`AUTO_EXPANSION`)."""
AUTO_EXPANSION = 0.1
WINDOW_LEVEL_SAMPLES = 200_000
"""About this many voxels, evenly spread, estimate the window/level of an output whose input has no display."""


def _auto_range(image) -> tuple[float, float] | None:
    """The range that Slicer's automatic window/level spans (percentiles 0.1-99.9 of the voxels, widened by 10 %
    each side), estimated from a sample of :data:`WINDOW_LEVEL_SAMPLES` voxels; None when no voxel is finite."""
    from vtk.util.numpy_support import vtk_to_numpy

    flat = vtk_to_numpy(image.GetPointData().GetScalars())
    sample = np.array(flat[:: max(1, flat.size // WINDOW_LEVEL_SAMPLES)], dtype=np.float64)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return None
    ranks = [int(round(p / 100.0 * (sample.size - 1))) for p in AUTO_PERCENTILES]
    low, high = (float(v) for v in np.partition(sample, ranks)[ranks])
    return low - AUTO_EXPANSION * (high - low), high + AUTO_EXPANSION * (high - low)


def _estimate_window_level(image) -> tuple[float, float]:
    """Slicer's automatic window/level (percentiles 0.1-99.9, widened by 10 % each side) from a sample."""
    span = _auto_range(image)
    if span is None:
        return 1.0, 0.0
    low, high = span
    return max(high - low, 1e-6), (low + high) / 2.0


def _residual_window(image) -> float:
    """Window of a residual (input minus output) display, centred on level 0: the automatic range (see
    :func:`_auto_range`) made symmetric, so that 0 (nothing removed) is mid-grey and both signs show alike."""
    span = _auto_range(image)
    half = max(abs(span[0]), abs(span[1])) if span is not None else 0.5
    return max(2.0 * half, 1e-6)


def _set_up_display(scene, input_node, output_node, image) -> None:
    """Give the output the input's colour map and window/level (so that both compare at a glance), fixed.

    The window/level is set, never automatic: Slicer's automatic one computes a histogram of the whole volume
    on the main thread (about 2 s at 512x512x600). With no input display, it is estimated from a sample of the
    output's voxels. Called before the image is attached to a node that already has a display node, so that
    that node does not recompute its automatic window/level either.
    """
    import slicer

    input_display = input_node.GetDisplayNode()
    if input_display is not None:
        window, level = input_display.GetWindow(), input_display.GetLevel()
        color = input_display.GetColorNodeID()
    else:
        window, level = _estimate_window_level(image)
        color = None
    display = output_node.GetDisplayNode()
    if display is None:
        display = slicer.vtkMRMLScalarVolumeDisplayNode()
        display.SetAutoWindowLevel(False)
        display.SetWindowLevel(window, level)
        scene.AddNode(display)
        output_node.SetAndObserveDisplayNodeID(display.GetID())
    else:
        display.SetAutoWindowLevel(False)
        display.SetWindowLevel(window, level)
    display.SetAndObserveColorNodeID(color or display.GetColorNodeID() or "vtkMRMLColorTableNodeGrey")


def _set_up_residual_display(scene, residual_node, image) -> None:
    """A grey display, window from :func:`_residual_window`, level 0, fixed (never Slicer's automatic one, which
    would compute a whole-volume histogram on the main thread)."""
    import slicer

    display = slicer.vtkMRMLScalarVolumeDisplayNode()
    display.SetAutoWindowLevel(False)
    display.SetWindowLevel(_residual_window(image), 0.0)
    display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
    if scene.AddNode(display) is None:
        raise NSN2NError("Could not add the display node of the residual volume to the scene.")
    residual_node.SetAndObserveDisplayNodeID(display.GetID())


def _remove_new_node(scene, node) -> None:
    """Take a node this module added back out of the scene: its subject hierarchy item, display nodes and itself."""
    if node is None or not scene.IsNodePresent(node):
        return
    sh = scene.GetFirstNodeByClass("vtkMRMLSubjectHierarchyNode")
    item = sh.GetItemByDataNode(node) if sh is not None else 0
    if item:
        sh.RemoveItem(item, False, False)  # the item only; the node goes below
    displays = [node.GetNthDisplayNode(n) for n in range(node.GetNumberOfDisplayNodes())]
    for display in displays:
        if display is not None and scene.IsNodePresent(display):
            scene.RemoveNode(display)
    scene.RemoveNode(node)


def _read_only_voxels(node) -> np.ndarray:
    """A read-only K,J,I view (no copy) of the node's voxels."""
    import slicer.util

    view = slicer.util.arrayFromVolume(node).view()
    view.flags.writeable = False
    return view


def _place_beside(scene, input_node, output_node) -> None:
    sh = scene.GetFirstNodeByClass("vtkMRMLSubjectHierarchyNode")
    if sh is None:
        return
    input_item = sh.GetItemByDataNode(input_node)
    if not input_item:
        return
    parent = sh.GetItemParent(input_item)
    output_item = sh.GetItemByDataNode(output_node)
    if not output_item:
        output_item = sh.CreateItem(parent, output_node)
    else:
        sh.SetItemParent(output_item, parent)


def _check_result_shape(input_node, result: np.ndarray) -> None:
    dims = input_node.GetImageData().GetDimensions() if input_node.GetImageData() is not None else (0, 0, 0)
    expected = (dims[2], dims[1], dims[0])
    if tuple(result.shape) != expected:
        raise NSN2NError(f"The denoised volume has shape {tuple(result.shape)}, expected the input's {expected}.")


class ImageFill:
    """Copies a K,J,I float32 array into a new ``vtkImageData``, outside any scene, a slab at a time.

    :meth:`step` copies whole K slices, :data:`FILL_CHUNK_BYTES` at a time, until ``budget_s`` has passed;
    ``image`` is complete once it returns True. The image is allocated at once (the memory is committed only as
    the copy touches it) and seen by nothing else until it is attached to a node.

    Parameters
    ----------
    result : numpy.ndarray
        K,J,I voxels (the denoised volume); read, never modified.
    subtract_from : numpy.ndarray, optional
        K,J,I voxels of the same shape (the input volume); read, never modified. When given, the image holds
        ``subtract_from - result`` (what was removed), computed slab by slab and stored as float32, instead of
        ``result``.
    """

    def __init__(self, result: np.ndarray, subtract_from: np.ndarray | None = None):
        import vtk
        from vtk.util.numpy_support import vtk_to_numpy

        self.result = np.asarray(result)
        if self.result.ndim != 3:
            raise NSN2NError(f"The denoised volume has {self.result.ndim} dimensions, expected 3.")
        self.subtract_from = None if subtract_from is None else np.asarray(subtract_from)
        if self.subtract_from is not None and self.subtract_from.shape != self.result.shape:
            raise NSN2NError(
                f"The denoised volume has shape {self.result.shape}, the input {self.subtract_from.shape}."
            )
        k, j, i = self.result.shape
        self.image = vtk.vtkImageData()
        self.image.SetDimensions(i, j, k)
        self.image.AllocateScalars(vtk.VTK_FLOAT, 1)
        self._target = vtk_to_numpy(self.image.GetPointData().GetScalars()).reshape(k, j, i)
        self._slices = k
        self._slab = max(1, FILL_CHUNK_BYTES // max(1, j * i * 4))
        self.next_slice = 0

    @property
    def done(self) -> bool:
        return self.next_slice >= self._slices

    def step(self, budget_s: float | None = None) -> bool:
        """Copy slabs for about ``budget_s`` seconds (:data:`FILL_BUDGET_S` by default; at least one slab); True
        once the whole image is filled."""
        budget_s = FILL_BUDGET_S if budget_s is None else budget_s
        t0 = time.perf_counter()
        slices = self._slices
        while self.next_slice < slices:
            start = time.perf_counter()
            end = min(slices, self.next_slice + self._slab)
            target, result = self._target[self.next_slice : end], self.result[self.next_slice : end]
            if self.subtract_from is None:
                np.copyto(target, result, casting="same_kind")
            else:  # written straight into the image: no temporary array of the slab
                np.subtract(self.subtract_from[self.next_slice : end], result, out=target, casting="same_kind")
            self.next_slice = end
            now = time.perf_counter()
            if now - t0 + (now - start) > budget_s:  # the next slab would overrun the budget: stop here
                break
        if self.done and self.result is not None:
            self.image.GetPointData().GetScalars().Modified()
            self.image.Modified()
            self._target = self.result = self.subtract_from = None  # the image holds the voxels now
        return self.done


def _copy_geometry(input_node, output_node) -> None:
    """Spacing, origin and axis directions, each copied as is (``CopyOrientation`` goes through the IJK-to-RAS
    matrix and can change the spacing by a rounding step)."""
    import vtk

    directions = vtk.vtkMatrix4x4()
    input_node.GetIJKToRASDirectionMatrix(directions)
    output_node.SetIJKToRASDirectionMatrix(directions)
    output_node.SetSpacing(input_node.GetSpacing())
    output_node.SetOrigin(input_node.GetOrigin())


def attach_output(scene, input_node, image, report=None, output_node=None, name: str | None = None):
    """Put a filled ``vtkImageData`` (same dimensions as the input's) into a volume node with the input's geometry.

    The image is taken over, not copied (``SetAndObserveImageData``). A new node is built outside the scene
    (name, IJK-to-RAS, parent transform, attributes, voxels) and added complete; a given ``output_node`` gets
    the input's geometry and the image at once. Same parameters and result as :func:`write_output`.

    The report's warnings, if any, go into the node attribute :data:`WARNINGS_ATTRIBUTE` one per line (and are
    removed from a given node that has them from an earlier run).
    """
    import slicer

    if output_node is not None and output_node is input_node:
        raise InputError("The output volume must differ from the input volume; the input is never overwritten.")
    new = output_node is None
    if new:
        output_node = slicer.vtkMRMLScalarVolumeNode()
        output_node.SetName(scene.GenerateUniqueName(name or f"{input_node.GetName()} denoised"))
    _copy_geometry(input_node, output_node)
    output_node.SetAndObserveTransformNodeID(input_node.GetTransformNodeID())
    output_node.SetAttribute(SOURCE_ATTRIBUTE, input_node.GetID() or "")
    report_dict = _report_dict(report)
    output_node.SetAttribute(REPORT_ATTRIBUTE, json.dumps(report_dict, default=_json_default))
    warnings = report_warnings(report_dict)
    if warnings:
        output_node.SetAttribute(WARNINGS_ATTRIBUTE, "\n".join(warnings))
    else:
        output_node.RemoveAttribute(WARNINGS_ATTRIBUTE)
    if new:
        output_node.SetAndObserveImageData(image)
        if scene.AddNode(output_node) is None:
            raise NSN2NError("Could not add the output volume node to the scene.")
        _set_up_display(scene, input_node, output_node, image)
    else:
        _set_up_display(scene, input_node, output_node, image)
        output_node.SetAndObserveImageData(image)
    _place_beside(scene, input_node, output_node)
    return output_node


def attach_residual(scene, input_node, image, output_node):
    """Put a filled residual image (input minus output, float32) into a new volume node beside the input.

    The node, named after :data:`RESIDUAL_NAME` (unique in the scene), gets the input's exact geometry and parent
    transform, the attributes :data:`SOURCE_ATTRIBUTE` (the input's ID) and :data:`RESIDUAL_OF_ATTRIBUTE`
    (``output_node``'s ID), and a grey display centred on 0 (:func:`_set_up_residual_display`). It is built
    outside the scene and added complete; if a later step fails, it is taken out again and the error raised.

    Parameters
    ----------
    scene : vtkMRMLScene
    input_node : vtkMRMLScalarVolumeNode
        The volume that was denoised; never modified.
    image : vtkImageData
        Same dimensions as the input's (I,J,K as VTK counts them); taken over, not copied.
    output_node : vtkMRMLScalarVolumeNode
        The denoised volume, already in the scene.

    Returns
    -------
    vtkMRMLScalarVolumeNode
    """
    import slicer

    residual_node = slicer.vtkMRMLScalarVolumeNode()
    residual_node.SetName(scene.GenerateUniqueName(RESIDUAL_NAME.format(input=input_node.GetName())))
    _copy_geometry(input_node, residual_node)
    residual_node.SetAndObserveTransformNodeID(input_node.GetTransformNodeID())
    residual_node.SetAttribute(SOURCE_ATTRIBUTE, input_node.GetID() or "")
    residual_node.SetAttribute(RESIDUAL_OF_ATTRIBUTE, output_node.GetID() or "")
    residual_node.SetAndObserveImageData(image)
    if scene.AddNode(residual_node) is None:
        raise NSN2NError("Could not add the residual volume node to the scene.")
    try:
        _set_up_residual_display(scene, residual_node, image)
        _place_beside(scene, input_node, residual_node)
    except BaseException:
        _remove_new_node(scene, residual_node)
        raise
    return residual_node


def report_warnings(report) -> list[str]:
    """The warnings of a run report (a RunReport, a dict or None), as a list of text lines; empty if none."""
    return [str(w) for w in (_report_dict(report).get("warnings") or [])]


def write_output(scene, input_node, result: np.ndarray, report=None, output_node=None, name: str | None = None):
    """Put a denoised K,J,I array into a volume node with the input's exact geometry, in one call.

    (:class:`MRMLDenoiseJob` does the same in steps, so that the main thread never waits long.)

    Parameters
    ----------
    scene : vtkMRMLScene
        The scene holding ``input_node``.
    input_node : vtkMRMLScalarVolumeNode
        The volume that was denoised; never modified.
    result : numpy.ndarray
        Denoised voxels, K,J,I order, same shape as the input; stored as float32.
    report : RunReport or dict, optional
        Stored as JSON in the node attribute ``NSN2N.report``; its ``warnings``, if any, also in
        ``NSN2N.warnings``, one per line.
    output_node : vtkMRMLScalarVolumeNode, optional
        Node to overwrite; by default a new node "<input name> denoised" is created with the input's
        IJK-to-RAS matrix and parent transform.
    name : str, optional
        Name of the new node.

    Returns
    -------
    vtkMRMLScalarVolumeNode
        The output node, with a display node like the input's, beside the input in the subject hierarchy.
    """
    if output_node is not None and output_node is input_node:
        raise InputError("The output volume must differ from the input volume; the input is never overwritten.")
    _check_result_shape(input_node, result)
    fill = ImageFill(result)
    fill.step(float("inf"))
    return attach_output(scene, input_node, fill.image, report, output_node, name)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def read_report(node) -> dict[str, Any] | None:
    """The run report stored on an output node, as a dict, or None if the node has none."""
    text = node.GetAttribute(REPORT_ATTRIBUTE) if node is not None else None
    return json.loads(text) if text else None


def _observe_node_removals(scene, job: MRMLDenoiseJob) -> weakref.finalize:
    """Call ``job._on_node_removed`` on the scene's NodeRemovedEvent without the scene keeping ``job`` alive.

    A bound method given to ``AddObserver`` is held by the scene's C++ side, where Python's garbage collector cannot
    see it: job -> scene -> observer -> job would then be a cycle that is never freed, so a job dropped before it
    finished would stay in memory, with its result, as long as the scene (for ``slicer.mrmlScene``, the session).
    The observer holds the job weakly instead. Returns the call that removes the observer: it runs once, when the
    job finishes (:meth:`MRMLDenoiseJob.poll`) or when the job is freed, whichever comes first.
    """
    method = weakref.WeakMethod(job._on_node_removed)

    def on_node_removed(caller=None, event=None) -> None:
        bound = method()
        if bound is not None:
            bound()

    return weakref.finalize(job, scene.RemoveObserver, scene.AddObserver(scene.NodeRemovedEvent, on_node_removed))


class MRMLDenoiseJob:
    """A :class:`~.jobs.DenoiseJob` tied to its input and output nodes; applies its result to the scene.

    When the worker's result has been read (by the job's thread), the following :meth:`poll` calls copy it into
    an image outside the scene, a slab per call (see :class:`ImageFill`), and the last one puts the complete
    node into the scene (or the image into the given output node). Until then :meth:`poll` returns 'running'
    (:attr:`filling` tells this stage apart), so 'done' means the node is complete and nothing of it is in the
    scene before. A cancel or a failure at any stage changes nothing in the scene. Removing the input node from
    the scene cancels the run (observed at once, and checked again in :meth:`poll`).

    With ``residual=True`` the polls then fill a second image, input minus output (float32, K,J,I), from the
    input node's voxels as they are then (read, never modified; it takes as much memory again as the output),
    and the same last poll adds both nodes: the output, then the residual (:func:`attach_residual`), or the
    residual first when the output node was given, so that if the second fails the first is taken out again.
    """

    def __init__(
        self, scene, input_node, job, output_node=None, output_name: str | None = None, residual: bool = False
    ):
        self.scene = scene
        self.input_node = input_node
        self.job = job
        self.output_node = output_node
        """The output node, once :meth:`poll` returned 'done' (or the node given at start)."""
        self.residual = bool(residual)
        """Whether the run also writes what was removed (input minus output) into a new node."""
        self.residual_node = None
        """The residual node "<input name> removed by NSN2N" once :meth:`poll` returned 'done' with
        :attr:`residual` on; None otherwise."""
        self._output_name = output_name
        self._state = jobs.RUNNING
        self._fills: list[ImageFill] = []
        self._apply_error: NSN2NError | None = None
        self._cancelled_here = False
        self._input_removed = False
        self._stop_observing = _observe_node_removals(scene, self)

    def _on_node_removed(self, caller=None, event=None) -> None:
        if not self._input_removed and not self.scene.IsNodePresent(self.input_node):
            self._input_removed = True
            self.cancel()

    @property
    def state(self) -> str:
        """The state :meth:`poll` returned last ('running' before the first call); reading it does no work."""
        return self._state

    @property
    def filling(self) -> bool:
        """True while :meth:`poll` is copying the finished result into the output image (poll often then)."""
        return bool(self._fills)

    def poll(self) -> str:
        """The state: one of the :mod:`.jobs` states ('pending', 'running', 'done', 'failed', 'cancelled').

        Call this from the thread that owns the scene. Once the run has finished, each call copies part of the
        result (about :data:`FILL_BUDGET_S` of work) and returns 'running' until the output node is complete
        and in the scene; then 'done'. A failure while writing makes the state 'failed'.
        """
        if self._state in FINISHED_STATES:
            return self._state
        self._on_node_removed()
        if self._cancelled_here:
            state = CANCELLED
        else:
            state = self.job.poll()
            if state == DONE:
                state = self._apply_step()
        if state in FINISHED_STATES:
            self._fills = []
            self._stop_observing()
        self._state = state
        return state

    def _apply_step(self) -> str:
        """One step of writing the result into the scene: 'running' until the node (and the residual node, when
        asked for) is complete, then 'done'."""
        try:
            if not self._fills:
                result = self.job.result
                _check_result_shape(self.input_node, result)
                self._fills = [ImageFill(result)]
                if self.residual:
                    self._fills.append(ImageFill(result, subtract_from=_read_only_voxels(self.input_node)))
            unfinished = next((fill for fill in self._fills if not fill.done), None)
            if unfinished is not None:
                unfinished.step()
                return jobs.RUNNING  # the nodes go into the scene in a poll of their own
            if self.output_node is not None and not self.scene.IsNodePresent(self.output_node):
                self.output_node = None  # the chosen output was deleted meanwhile: make a new one instead
            self.output_node, self.residual_node = self._attach()
            return DONE
        except NSN2NError as exc:
            self._apply_error = exc
        except Exception as exc:  # noqa: BLE001 - report scene errors as messages, like the worker's
            self._apply_error = NSN2NError(f"Writing the denoised volume failed ({type(exc).__name__}: {exc}).")
        return FAILED

    def _attach(self):
        """Add the complete output node (and residual node) to the scene; (output, residual or None).

        A new output node is added first, as the residual needs its ID; a given one already has it, so the residual
        goes first there. Either way, if the second fails, the first is taken out again before the error is raised.
        """
        output_image = self._fills[0].image
        report = self.job.report

        def output(node):
            return attach_output(self.scene, self.input_node, output_image, report, node, self._output_name)

        if not self.residual:
            return output(self.output_node), None
        residual_image = self._fills[1].image
        if self.output_node is not None:
            residual_node = attach_residual(self.scene, self.input_node, residual_image, self.output_node)
            try:
                return output(self.output_node), residual_node
            except BaseException:
                _remove_new_node(self.scene, residual_node)
                raise
        output_node = output(None)
        try:
            return output_node, attach_residual(self.scene, self.input_node, residual_image, output_node)
        except BaseException:
            _remove_new_node(self.scene, output_node)
            raise

    def cancel(self) -> None:
        """Stop the run, or the writing of its result; the scene stays as it was. Returns at once."""
        if self._state in FINISHED_STATES:
            return
        self.job.cancel()
        if self._fills or self.job.poll() == DONE:
            self._cancelled_here = True  # the process had ended: drop the result instead

    def wait(self, timeout: float | None = None, poll_interval: float = 0.1, callback=None) -> str:
        """Block until the run ends (or ``timeout`` seconds pass); returns the state. See :func:`.jobs.wait`."""
        return jobs.wait(self, timeout, poll_interval, callback)

    @property
    def progress(self):
        """The latest :class:`~.jobs.Progress`, or None."""
        return self.job.progress

    @property
    def report(self):
        """The run report (a dict) once done, else None."""
        return self.job.report if self._state == DONE else None

    @property
    def error(self) -> NSN2NError | None:
        """Why the job failed or was cancelled, or None."""
        if self._input_removed and self._state == CANCELLED:
            return CancelledError(
                f"The input volume '{self.input_node.GetName()}' was removed from the scene, so the run was "
                "cancelled; nothing was written."
            )
        if self._cancelled_here and self._state == CANCELLED:
            return CancelledError("The run was cancelled while its result was being written; nothing was written.")
        return self._apply_error or self.job.error

    @property
    def cancelled(self) -> bool:
        """True when the job ended because it was cancelled."""
        return self._state == CANCELLED


class MRMLDenoiser:
    """Denoise volume nodes of one scene: the Qt-free logic behind the Slicer module and the batch script.

    Parameters
    ----------
    scene : vtkMRMLScene
        ``slicer.mrmlScene`` in Slicer, or a ``vtkMRMLScene()`` with slicer-core.
    python : str, optional
        Interpreter of the worker process (see :class:`~.jobs.DenoiseJob`); ``sys.executable`` by default.
    """

    def __init__(self, scene, python: str | None = None):
        if scene is None:
            raise NSN2NError("A MRML scene is needed.")
        self.scene = scene
        self.python = python

    def start(
        self,
        input_node,
        output_node=None,
        config=None,
        output_name: str | None = None,
        save_model_path=None,
        init_model_path=None,
        residual: bool = False,
        **options,
    ):
        """Start denoising ``input_node`` in a worker process; returns an :class:`MRMLDenoiseJob` at once.

        Parameters
        ----------
        input_node : vtkMRMLScalarVolumeNode
            Never modified; its voxels are written once to the job's folder before this returns.
        output_node : vtkMRMLScalarVolumeNode, optional
            Overwritten with the result when done; by default a new node "<input name> denoised".
        config : NSN2NConfig, optional
            Full configuration; if given, ``options`` must be empty.
        output_name : str, optional
            Name of a newly created output node.
        save_model_path : path, optional
            Save the trained model there (``.safetensors``, written after a successful run), to start later runs
            of the same protocol from it. None or '' saves nothing.
        init_model_path : path, optional
            Start training from a model saved by an earlier run; its network settings are used, and without an
            iteration count in ``options``, :data:`WARM_START_ITERATION_FRACTION` of the preset's iterations.
            None or '' starts from scratch.
        residual : bool
            Also write what was removed, input minus output (float32, K,J,I, the input's geometry), into a new
            node "<input name> removed by NSN2N" beside the input, shown centred on 0 (mid-grey: nothing removed).
            It should look like noise, with no edges or anatomy. Its attribute ``NSN2N.residualOf`` holds the
            output node's ID; the job's ``residual_node`` is it once done. Off by default.
        **options
            Passed to :func:`build_config` (preset and the snake_case names of :data:`options.OPTIONS`).

        Raises
        ------
        InputError
            For a label map, vector volume or other unusable input, or output == input; a model path that is
            not a ``.safetensors`` file, a missing start model, or a file that is not an NSN2N model (a pickle,
            which could run code, is refused unread).
        ConfigError
            For bad options, or a start model whose tensors do not match its network.
        BusyError
            When another job is running.
        """
        if config is not None and options:
            raise NSN2NError("Give either a configuration or options, not both.")
        voxels, spacing = array_and_spacing(input_node)
        if output_node is not None and output_node is input_node:
            raise InputError("The output volume must differ from the input volume; the input is never overwritten.")
        saved = check_model_paths(save_model_path, init_model_path)  # before any work, with one clear line
        if config is None:
            config = build_config(warm_start=saved is not None, **options)
        if saved is not None:
            config = config.replace(network=saved.config.network)  # the model decides the network
        job = jobs.start_job(
            voxels,
            spacing,
            config,
            python=self.python,
            save_model=_model_path(save_model_path),
            init_model=_model_path(init_model_path),
            trained_on=input_node.GetName(),
        )
        return MRMLDenoiseJob(
            self.scene, input_node, job, output_node=output_node, output_name=output_name, residual=residual
        )

    def process(
        self,
        input_node,
        output_node=None,
        config=None,
        output_name: str | None = None,
        save_model_path=None,
        init_model_path=None,
        residual: bool = False,
        **options,
    ):
        """Denoise and block until done; returns the output node.

        Same parameters as :meth:`start`. Raises the job's error (an :class:`NSN2NError` with a message saying
        what to change; :class:`CancelledError` if cancelled). Ctrl+C while waiting cancels the run. With
        ``residual``, the residual node is the one whose ``NSN2N.residualOf`` attribute is the output's ID.
        """
        mrml_job = self.start(
            input_node,
            output_node,
            config=config,
            output_name=output_name,
            save_model_path=save_model_path,
            init_model_path=init_model_path,
            residual=residual,
            **options,
        )
        if mrml_job.wait() != DONE:
            raise mrml_job.error
        return mrml_job.output_node
