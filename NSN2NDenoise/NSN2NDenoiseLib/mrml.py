"""The MRML adapter: volume node -> numpy -> engine -> new volume node, with no Qt.

Runs inside 3D Slicer and with the ``slicer-core`` package outside it. Every function takes the scene as a
parameter, because ``slicer-core`` has no ``slicer.mrmlScene``. All scene changes happen on the thread that
calls :meth:`MRMLDenoiseJob.poll` or :meth:`MRMLDenoiseJob.wait` (the main thread in Slicer); the worker
process of :mod:`.jobs` only sees the files the job writes and reads back.

Axis order: ``slicer.util.arrayFromVolume`` gives arrays in K,J,I order (slice, row, column), while
``node.GetSpacing()`` is in I,J,K order; :func:`array_and_spacing` reverses the spacing so both are K,J,I.
"""

from __future__ import annotations

import json
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

    The view is what :func:`~.jobs.write_input` needs: it is written to the job's file once and not kept.

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


def build_config(preset: str = "default", **options: Any):
    """The engine configuration for option values of :data:`options.OPTIONS` (snake_case names).

    Parameters
    ----------
    preset : {'fast', 'default', 'best'}
        Quality/time trade-off; every option left out or None keeps this preset's value.
    **options
        ``iterations`` (0 also keeps the preset's), ``device`` ('auto', 'cpu', 'cuda'; 'gpu' means 'cuda';
        any case), ``slice_axis`` (any case), ``seed``, ``threads``, ``tta``, ``lambda_self``, ``lambda_rc``,
        ``lambda_ic``: see :data:`options.OPTIONS`.

    Raises
    ------
    ConfigError
        For an unknown option, an unknown choice or a value out of bounds; the message names the field.
    """
    values = {name: value for name, value in options.items() if value is not None}
    if values.get("iterations") == 0:
        del values["iterations"]
    for name in ("device", "slice_axis"):
        if name in values:
            values[name] = str(values[name]).lower()
    if "device" in values:
        values["device"] = DEVICE_ALIASES.get(values["device"], values["device"])
    return to_config({"preset": str(preset).lower(), **values})


def _report_dict(report) -> dict[str, Any]:
    if report is None:
        return {}
    if hasattr(report, "to_dict"):
        return report.to_dict()
    return dict(report)


def _set_up_display(scene, input_node, output_node) -> None:
    display = output_node.GetDisplayNode()
    if display is None:
        output_node.CreateDefaultDisplayNodes()
        display = output_node.GetDisplayNode()
    input_display = input_node.GetDisplayNode()
    if display is None or input_display is None:
        return
    # Same colour map and window/level as the input, so that input and output compare at a glance.
    display.SetAndObserveColorNodeID(input_display.GetColorNodeID())
    display.SetAutoWindowLevel(input_display.GetAutoWindowLevel())
    if not input_display.GetAutoWindowLevel():
        display.SetWindowLevel(input_display.GetWindow(), input_display.GetLevel())


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


def write_output(scene, input_node, result: np.ndarray, report=None, output_node=None, name: str | None = None):
    """Put a denoised K,J,I array into a volume node with the input's exact geometry.

    Parameters
    ----------
    scene : vtkMRMLScene
        The scene holding ``input_node``.
    input_node : vtkMRMLScalarVolumeNode
        The volume that was denoised; never modified.
    result : numpy.ndarray
        Denoised voxels, K,J,I order, same shape as the input.
    report : RunReport or dict, optional
        Stored as JSON in the node attribute ``NSN2N.report``.
    output_node : vtkMRMLScalarVolumeNode, optional
        Node to overwrite; by default a new node "<input name> denoised" is created with
        ``vtkSlicerVolumesLogic.CloneVolumeWithoutImageData`` (IJK-to-RAS and parent transform copied).
    name : str, optional
        Name of the new node.

    Returns
    -------
    vtkMRMLScalarVolumeNode
        The output node, with a display node like the input's, beside the input in the subject hierarchy.
    """
    import slicer.util
    from slicer import vtkSlicerVolumesLogic

    result = np.asarray(result, dtype=np.float32)
    expected = tuple(slicer.util.arrayFromVolume(input_node).shape)
    if result.shape != expected:
        raise NSN2NError(f"The denoised volume has shape {result.shape}, expected the input's {expected}.")
    if output_node is None:
        output_node = vtkSlicerVolumesLogic.CloneVolumeWithoutImageData(
            scene, input_node, name or f"{input_node.GetName()} denoised"
        )
        if output_node is None:
            raise NSN2NError("Could not create the output volume node.")
    else:
        if output_node is input_node:
            raise InputError("The output volume must differ from the input volume; the input is never overwritten.")
        output_node.CopyOrientation(input_node)
        output_node.SetAndObserveTransformNodeID(input_node.GetTransformNodeID())
    slicer.util.updateVolumeFromArray(output_node, result)
    _set_up_display(scene, input_node, output_node)
    _place_beside(scene, input_node, output_node)
    output_node.SetAttribute(SOURCE_ATTRIBUTE, input_node.GetID() or "")
    output_node.SetAttribute(REPORT_ATTRIBUTE, json.dumps(_report_dict(report), default=_json_default))
    return output_node


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


class MRMLDenoiseJob:
    """A :class:`~.jobs.DenoiseJob` tied to its input and output nodes; applies its result to the scene.

    The output node is created (or the given one overwritten) only when the result is ready, inside
    :meth:`poll` or :meth:`wait`, on the caller's thread. A cancelled or failed job changes nothing in the scene.
    Removing the input node from the scene cancels the run (observed at once, and checked again in :meth:`poll`).
    """

    def __init__(self, scene, input_node, job, output_node=None, output_name: str | None = None):
        self.scene = scene
        self.input_node = input_node
        self.job = job
        self.output_node = output_node
        """The output node, once :meth:`poll` returned 'done' (or the node given at start)."""
        self._output_name = output_name
        self._applied = False
        self._apply_error: NSN2NError | None = None
        self._input_removed = False
        self._observer = scene.AddObserver(scene.NodeRemovedEvent, self._on_node_removed)

    def _on_node_removed(self, caller=None, event=None) -> None:
        if not self._input_removed and not self.scene.IsNodePresent(self.input_node):
            self._input_removed = True
            self.job.cancel()

    def poll(self) -> str:
        """The state: one of the :mod:`.jobs` states ('pending', 'running', 'done', 'failed', 'cancelled').

        When the run has just finished, writes the output node first (so call this from the thread that owns
        the scene). A failure while writing makes the state 'failed'.
        """
        self._on_node_removed()
        state = self.job.poll()
        if state in FINISHED_STATES and self._observer is not None:
            self.scene.RemoveObserver(self._observer)
            self._observer = None
        if state == DONE and not self._applied:
            self._applied = True
            try:
                if self.output_node is not None and not self.scene.IsNodePresent(self.output_node):
                    self.output_node = None  # the chosen output was deleted meanwhile: make a new one instead
                self.output_node = write_output(
                    self.scene, self.input_node, self.job.result, self.job.report, self.output_node, self._output_name
                )
            except NSN2NError as exc:
                self._apply_error = exc
            except Exception as exc:  # noqa: BLE001 - report scene errors as messages, like the worker's
                self._apply_error = NSN2NError(f"Writing the denoised volume failed ({type(exc).__name__}: {exc}).")
        if state == DONE and self._apply_error is not None:
            return FAILED
        return state

    def cancel(self) -> None:
        """Stop the run; the scene stays as it was. Returns at once."""
        self.job.cancel()

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
        return self.job.report

    @property
    def error(self) -> NSN2NError | None:
        """Why the job failed or was cancelled, or None."""
        if self._input_removed and self.job.poll() == CANCELLED:
            return CancelledError(
                f"The input volume '{self.input_node.GetName()}' was removed from the scene, so the run was "
                "cancelled; nothing was written."
            )
        return self._apply_error or self.job.error

    @property
    def cancelled(self) -> bool:
        """True when the job ended because it was cancelled."""
        return self.job.poll() == CANCELLED


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

    def start(self, input_node, output_node=None, config=None, output_name: str | None = None, **options):
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
        **options
            Passed to :func:`build_config` (preset and the snake_case names of :data:`options.OPTIONS`).

        Raises
        ------
        InputError
            For a label map, vector volume or other unusable input, or output == input.
        ConfigError
            For bad options.
        BusyError
            When another job is running.
        """
        if config is not None and options:
            raise NSN2NError("Give either a configuration or options, not both.")
        voxels, spacing = array_and_spacing(input_node)
        if output_node is not None and output_node is input_node:
            raise InputError("The output volume must differ from the input volume; the input is never overwritten.")
        if config is None:
            config = build_config(**options)
        job = jobs.start_job(voxels, spacing, config, python=self.python)
        return MRMLDenoiseJob(self.scene, input_node, job, output_node=output_node, output_name=output_name)

    def process(self, input_node, output_node=None, config=None, output_name: str | None = None, **options):
        """Denoise and block until done; returns the output node.

        Same parameters as :meth:`start`. Raises the job's error (an :class:`NSN2NError` with a message saying
        what to change; :class:`CancelledError` if cancelled). Ctrl+C while waiting cancels the run.
        """
        mrml_job = self.start(input_node, output_node, config=config, output_name=output_name, **options)
        if mrml_job.wait() != DONE:
            raise mrml_job.error
        return mrml_job.output_node
