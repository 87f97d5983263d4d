import logging
import os
import pathlib
import shutil
import sys
import time
from typing import Annotated

import numpy as np
import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# NSN2NDenoiseLib (the engine) needs torch, which comes from the PyTorch extension and may not be installed
# yet: it is imported only inside the Logic, after setupPythonRequirements().

README_URL = "https://github.com/nsn2n/SlicerNSN2N#readme"
TORCH_MINIMUM_VERSION = (2, 1)
TORCH_VERSION_REQUIREMENT = ">=2.1"  # the engine's requirement (pyproject.toml)
LONG_CPU_RUN_S = 120.0
"""Before a CPU run estimated longer than this, the GUI shows the estimate and offers the 'fast' preset."""


#
# NSN2NDenoise
#


class NSN2NDenoise(ScriptedLoadableModule):
    """Module description shown in Slicer's module panel and help."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("NSN2N Denoise")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Filtering")]
        self.parent.dependencies = []
        self.parent.contributors = ["NSN2N founding engineers"]
        self.parent.helpText = _(
            "Removes noise from a CT or MRI volume by self-supervised training on that volume alone "
            "(neighbouring-slice Noise2Noise, NS-N2N): no clean images and no pre-trained model are needed. "
            "Select the input volume, choose a preset and click Denoise; the result is a new volume. "
            "Training runs in a separate process, so Slicer stays responsive, and can be cancelled. "
            'See the <a href="{url}">documentation</a> for the options, the console API and batch mode.'
        ).format(url=README_URL)
        self.parent.acknowledgementText = _(
            "Implements the NS-N2N method of neighbouring-slice Noise2Noise self-supervised denoising. "
            "Uses PyTorch through the SlicerPyTorch extension. Developed by the NSN2N founding engineers."
        )


#
# NSN2NDenoiseParameterNode
#


@parameterNodeWrapper
class NSN2NDenoiseParameterNode:
    """GUI state of the module.

    inputVolume - scalar volume to denoise (never modified).
    outputVolume - volume receiving the result; None creates "<input name> denoised".
    overridePreset - when True, the advanced option values replace the preset's; when False the preset decides
        them (the widget then shows the preset's values).
    saveModelPath - save the trained model there (.safetensors) after a successful run; empty: not saved.
    initModelPath - start training from a model saved by an earlier run; empty: start from scratch.
    showResidual - also output what was removed (input - output) as a second new volume, to check that only noise
        was removed.
    The other fields are the options of ``NSN2NDenoiseLib.options.OPTIONS``, named by ``Option.slicer_name``,
    with its choices and bounds, and the 'default' preset's values as defaults (iterations: 0 means the
    preset's). The table imports without torch, but the fields stay written out: every one needs a widget
    named for it in the .ui file anyway, and a class built at load time could only be checked inside Slicer
    (slicer-core has no parameterNodeWrapper). Testing/test_slicer_static.py compares every field, and its
    widget, with the table, without torch.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputVolume: vtkMRMLScalarVolumeNode
    preset: Annotated[str, Choice(["fast", "default", "best"])] = "default"
    iterations: Annotated[int, WithinRange(0, 1000000)] = 0
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    overridePreset: bool = False
    sliceAxis: Annotated[str, Choice(["auto", "k", "j", "i"])] = "auto"
    seed: Annotated[int, WithinRange(0, 2147483647)] = 0
    threads: Annotated[int, WithinRange(0, 1024)] = 0
    tta: Annotated[int, Choice([1, 2, 4, 8])] = 8
    axes: Annotated[str, Choice(["auto", "slice", "all"])] = "auto"
    neighbourFusion: Annotated[str, Choice(["off", "auto", "on"])] = "off"
    wiener: Annotated[str, Choice(["off", "filters", "matched"])] = "matched"
    lambdaSelf: Annotated[float, WithinRange(0.0, 100.0)] = 0.5
    lambdaRc: Annotated[float, WithinRange(0.0, 100.0)] = 0.0
    lambdaIc: Annotated[float, WithinRange(0.0, 100.0)] = 0.0
    saveModelPath: pathlib.Path
    initModelPath: pathlib.Path
    showResidual: bool = False


#
# NSN2NDenoiseWidget
#


class NSN2NDenoiseWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Moves values between the GUI and the parameter node, starts the Logic's job and polls it from a timer."""

    POLL_INTERVAL_MS = 200  # the worker is another process: the timer only reads its progress
    FILL_POLL_INTERVAL_MS = 10  # then each poll copies one short part of the result into the scene

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._pollTimer = None
        self._syncedPreset = None
        self._advancedWidgets = []

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/NSN2NDenoise.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self._advancedWidgets = [
            w
            for w in uiWidget.findChildren(qt.QWidget)
            if w.property("SlicerParameterName") in NSN2NDenoiseLogic.ADVANCED_OPTIONS
        ]

        self.logic = NSN2NDenoiseLogic()

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(self.POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self.onPollTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.advancedOverrideCheckBox.connect("toggled(bool)", self._onOverrideToggled)
        self.ui.progressBar.setRange(0, 1000)
        self.ui.progressBar.setValue(0)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes or the module is reloaded: stop the run and the timer."""
        if self._isRunning():
            self._job.cancel()
        if self._pollTimer is not None:
            self._pollTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        # The job keeps running and the timer keeps polling while another module is shown.
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        if self._isRunning():
            self._job.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode and not firstVolumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        self._syncedPreset = None
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._onParameterNodeModified()

    def _isRunning(self) -> bool:
        return self._job is not None and self._job.state not in ("done", "failed", "cancelled")

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        self._showPresetValues()
        self._updateButtonState()
        self._updateAdvancedEnabled()
        self._updateDeviceInfo()

    def _onOverrideToggled(self, checked) -> None:
        if not checked:
            self._syncedPreset = None  # show the preset's values again
        self._onParameterNodeModified()

    def _showPresetValues(self) -> None:
        """Without the override, the advanced fields show the values the preset will use."""
        p = self._parameterNode
        if not p or p.overridePreset or p.preset == self._syncedPreset:
            return
        values = self.logic.presetOptionValues(p.preset)
        if values is None:  # the engine cannot be imported yet (no PyTorch): the preset still decides
            return
        self._syncedPreset = p.preset  # first: each assignment below calls this method again
        for name, value in values.items():
            if getattr(p, name) != value:
                setattr(p, name, value)

    def _updateAdvancedEnabled(self) -> None:
        enabled = bool(self.ui.advancedOverrideCheckBox.checked)
        for widget in self._advancedWidgets:
            widget.enabled = enabled

    def _updateDeviceInfo(self) -> None:
        p = self._parameterNode
        if self._isRunning() or not p or not p.inputVolume:
            return
        self.ui.deviceInfoLabel.text = self.logic.describeRun(p.inputVolume, **self.logic.optionsFromParameterNode(p))

    def _updateButtonState(self, caller=None, event=None) -> None:
        if self._isRunning():
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop the run; the scene is left as it was.")
            self.ui.applyButton.enabled = not self._job.job.cancel_requested
            return
        self.ui.applyButton.text = _("Denoise")
        if self._parameterNode and self._parameterNode.inputVolume:
            self.ui.applyButton.toolTip = _("Train on the input volume and write the denoised volume.")
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.toolTip = _("Select an input volume.")
            self.ui.applyButton.enabled = False

    def _confirmLongCpuRun(self, options: dict) -> bool:
        """Before a long CPU run, show the estimate and offer the 'fast' preset. False: the user cancelled."""
        if slicer.app.testingEnabled() or slicer.app.commandOptions().noMainWindow:
            return True
        p = self._parameterNode
        forecast = self.logic.forecastRun(p.inputVolume, **options)
        if forecast is None or forecast["device"] != "cpu" or forecast["seconds"] <= LONG_CPU_RUN_S:
            return True
        box = qt.QMessageBox(slicer.util.mainWindow())
        box.setIcon(qt.QMessageBox.Question)
        box.setWindowTitle(_("Long run on the CPU"))
        box.setText(
            _("No usable GPU: this run takes about {time} on the CPU and needs about {memory} of memory.").format(
                time=forecast["time"], memory=forecast["memory"]
            )
        )
        box.setInformativeText(
            _("The 'fast' preset takes about {time}. Slicer stays usable meanwhile.").format(time=forecast["fastTime"])
        )
        fastButton = box.addButton(_("Use 'fast'"), qt.QMessageBox.AcceptRole)
        runButton = box.addButton(_("Run as set"), qt.QMessageBox.AcceptRole)
        box.addButton(qt.QMessageBox.Cancel)
        box.setDefaultButton(fastButton)
        box.exec_()
        if box.clickedButton() == fastButton:
            p.preset = "fast"
            p.iterations = 0
            options.update(self.logic.optionsFromParameterNode(p))
            return True
        return box.clickedButton() == runButton

    def onApplyButton(self) -> None:
        if self._isRunning():
            self._job.cancel()
            self.ui.statusLabel.text = _("Cancelling...")
            self._updateButtonState()
            return
        with slicer.util.tryWithErrorDisplay(_("Could not start denoising."), waitCursor=True):
            self.logic.setupPythonRequirements(askConfirmation=True)
            p = self._parameterNode
            options = self.logic.optionsFromParameterNode(p)
            if not self._confirmLongCpuRun(options):
                return
            self._job = self.logic.startProcess(p.inputVolume, p.outputVolume, showResidual=p.showResidual, **options)
            self.ui.progressBar.setValue(0)
            self.ui.progressBar.setFormat(_("Starting..."))
            self.ui.statusLabel.text = _("Started; Slicer stays usable while the volume is denoised.")
            self._pollTimer.start()
        self._updateButtonState()

    def onPollTimer(self) -> None:
        if self._job is None:
            self._pollTimer.stop()
            return
        from NSN2NDenoiseLib.jobs import CANCELLED, DONE, FINISHED_STATES
        from NSN2NDenoiseLib.mrml import report_warnings

        # Cheap while the worker runs; once its result has been read (in the job's thread), each poll copies a
        # slab of it into an image outside the scene, and the last one adds the complete node.
        state = self._job.poll()
        filling = state not in FINISHED_STATES and self._job.filling
        self._pollTimer.setInterval(self.FILL_POLL_INTERVAL_MS if filling else self.POLL_INTERVAL_MS)
        if filling:
            self.ui.progressBar.setFormat(_("Writing the result %p%"))
            self.ui.statusLabel.text = _("Writing the denoised volume into the scene...")
            return
        progress = self._job.progress
        if progress is not None:
            self.ui.progressBar.setValue(int(round(1000 * progress.fraction)))
            self.ui.progressBar.setFormat(f"{progress.phase} %p%")
            self.ui.statusLabel.text = progress.describe()
        if state not in FINISHED_STATES:
            return
        self._pollTimer.stop()
        self._pollTimer.setInterval(self.POLL_INTERVAL_MS)
        job, self._job = self._job, None
        if state == DONE:
            self.ui.progressBar.setValue(1000)
            self.ui.progressBar.setFormat(_("Done"))
            done = _("Done in {time}: '{name}'.").format(
                time=self.logic.formatSeconds(job.job.elapsed_s), name=job.output_node.GetName()
            )
            warnings = report_warnings(job.report)
            if warnings:
                done += " " + _("Warning: {warning}").format(warning=warnings[0])
                if len(warnings) > 1:
                    done += " " + _("({count} more warnings in the Python console.)").format(count=len(warnings) - 1)
                logging.warning("NSN2N: '%s': %s", job.output_node.GetName(), "\n".join(warnings))
            self.ui.statusLabel.text = done
            if self._parameterNode and not self._parameterNode.outputVolume:
                self._parameterNode.outputVolume = job.output_node
            slicer.util.setSliceViewerLayers(background=job.output_node, fit=True)
        elif state == CANCELLED:
            self.ui.progressBar.setFormat(_("Cancelled"))
            self.ui.statusLabel.text = str(job.error) if job.error else _("Cancelled; the scene is unchanged.")
        else:
            message = str(job.error)
            self.ui.progressBar.setFormat(_("Failed"))
            self.ui.statusLabel.text = _("Failed: {message}").format(message=message)
            if job.job.traceback:
                logging.error(job.job.traceback)
            slicer.util.errorDisplay(_("Denoising failed: {message}").format(message=message))
        self._updateButtonState()
        self._updateDeviceInfo()


#
# NSN2NDenoiseLogic
#


class NSN2NDenoiseLogic(ScriptedLoadableModuleLogic):
    """Slicer-side logic. The work is done by the Qt-free ``NSN2NDenoiseLib.mrml.MRMLDenoiser``, whose job runs
    the engine in a separate Python process (``PythonSlicer``), so that training runs at full speed and the GUI
    stays responsive. Never shows a dialog.

    Console use (blocking)::

        out = NSN2NDenoise.NSN2NDenoiseLogic().process(volumeNode, preset="fast", device="auto")

    Non-blocking: ``job = logic.startProcess(volumeNode)``; then ``job.poll()`` from the main thread (a
    ``qt.QTimer``) or ``job.wait()``; ``job.output_node`` is the result once the state is 'done';
    ``job.cancel()`` stops it.
    """

    ADVANCED_OPTIONS = (
        "sliceAxis",
        "seed",
        "threads",
        "tta",
        "axes",
        "neighbourFusion",
        "wiener",
        "lambdaSelf",
        "lambdaRc",
        "lambdaIc",
    )
    """Parameter names of the options with ``Option.advanced`` (checked against the engine's table by the tests):
    the values that "Override the preset" sends."""
    MODEL_PATHS = ("saveModelPath", "initModelPath")
    """Parameter names of the optional model files (empty: off), sent whether or not the preset is overridden."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._devices = {}

    def getParameterNode(self):
        return NSN2NDenoiseParameterNode(super().getParameterNode())

    @staticmethod
    def isTorchAvailable() -> bool:
        import importlib.util

        return importlib.util.find_spec("torch") is not None

    @staticmethod
    def checkTorchVersion() -> None:
        """Raise RuntimeError, saying what to do, if the installed torch is older than the engine needs."""
        import importlib.metadata
        import re

        version = importlib.metadata.version("torch")
        match = re.match(r"(\d+)\.(\d+)", version)
        if match is None or (int(match.group(1)), int(match.group(2))) < TORCH_MINIMUM_VERSION:
            raise RuntimeError(
                _(
                    "PyTorch {version} is installed, but NSN2N Denoise needs torch{requirement}. Open the PyTorch "
                    "Util module, uninstall PyTorch, restart Slicer and install it again there."
                ).format(version=version, requirement=TORCH_VERSION_REQUIREMENT)
            )

    def setupPythonRequirements(self, askConfirmation: bool = True) -> None:
        """Make torch importable, installing it through the PyTorch extension if the user agrees.

        PyTorchUtils' ``torch`` property would install without asking, so it is not used
        (see the PyTorch extension's PyTorchUtils.py).

        Raises
        ------
        RuntimeError
            If the PyTorch extension is missing, the user declined, the install failed, or the installed torch
            is too old; the message says what to do.
        """
        if self.isTorchAvailable():
            self.checkTorchVersion()
            return
        try:
            import PyTorchUtils
        except ModuleNotFoundError as exc:
            raise RuntimeError(
                _(
                    "NSN2N Denoise needs the PyTorch extension. Install 'PyTorch' from the Extensions Manager, "
                    "restart Slicer and try again."
                )
            ) from exc
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if torchLogic.torchInstalled():
            self.checkTorchVersion()
            return
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
            _(
                "NSN2N Denoise needs PyTorch, which is not installed yet. Install it now? "
                "This downloads about 1-3 GB and can take several minutes."
            ),
            _("PyTorch is required"),
        ):
            raise RuntimeError(_("PyTorch was not installed, so the volume cannot be denoised."))
        torch = torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_VERSION_REQUIREMENT)
        if torch is None:
            raise RuntimeError(
                _("Installing PyTorch failed. Open the PyTorch Util module to install it, then restart Slicer.")
            )

    @staticmethod
    def workerPython() -> str:
        """The interpreter of the worker process: ``PythonSlicer`` in Slicer, else this Python.

        Inside Slicer ``sys.executable`` is Slicer itself, which cannot run ``-m``; PythonSlicer is the launcher
        of Slicer's own Python, with the same packages (torch included).
        """
        app = getattr(slicer, "app", None)
        if app is None:
            return sys.executable
        found = shutil.which("PythonSlicer")
        if found:
            return found
        name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
        return os.path.join(app.slicerHome, "bin", name)

    @staticmethod
    def _options():
        from NSN2NDenoiseLib import options

        return options

    def presetOptionValues(self, preset: str):
        """{parameter name: value} of the advanced options in ``preset``, or None while the engine (torch)
        cannot be imported."""
        try:
            options = self._options()
        except ImportError:
            return None
        return {o.slicer_name: o.default(preset) for o in options.OPTIONS if o.advanced}

    @classmethod
    def optionsFromParameterNode(cls, parameterNode) -> dict:
        """Keyword arguments of :meth:`process` for the GUI state in ``parameterNode``."""
        options = {
            "preset": parameterNode.preset,
            "iterations": parameterNode.iterations or None,
            "device": parameterNode.device,
        }
        if parameterNode.overridePreset:
            options.update({name: getattr(parameterNode, name) for name in cls.ADVANCED_OPTIONS})
        for name in cls.MODEL_PATHS:
            path = cls._modelPath(getattr(parameterNode, name))
            if path:
                options[name] = path
        return options

    @staticmethod
    def _modelPath(path):
        """The path as text, or None when unset (None, '' or '.', what an empty path field holds)."""
        text = str(path).strip() if path is not None else ""
        return None if text in ("", ".") else text

    def _config(
        self, preset="default", iterations=None, device="auto", saveModelPath=None, initModelPath=None, **options
    ):
        """The engine configuration for the camelCase options of :meth:`startProcess` (``Option.slicer_name``).

        With a start model (``initModelPath``) and no iteration count, half the preset's iterations
        (``NSN2NDenoiseLib.mrml.WARM_START_ITERATION_FRACTION``); its network settings are applied when the run
        starts. ``saveModelPath`` changes nothing here.
        """
        from NSN2NDenoiseLib.mrml import build_config

        byName = self._options().BY_SLICER_NAME
        unknown = set(options) - set(byName)
        if unknown:
            raise TypeError(f"Unknown option(s) {', '.join(sorted(unknown))}; known: {', '.join(byName)}.")
        engineOptions = {byName[name].name: value for name, value in options.items()}
        return build_config(
            preset=preset,
            iterations=iterations,
            device=device,
            warm_start=self._modelPath(initModelPath) is not None,
            **engineOptions,
        )

    def resolveDevice(self, device: str = "auto") -> str:
        """'cpu' or 'cuda': where a run with this device choice will go (cached; imports torch)."""
        key = str(device).lower()
        if key not in self._devices:
            from NSN2NDenoiseLib.api import resolve_device
            from NSN2NDenoiseLib.mrml import DEVICE_ALIASES

            try:
                self._devices[key] = resolve_device(DEVICE_ALIASES.get(key, key)).type
            except Exception:  # noqa: BLE001 - 'cuda' without a GPU: the run itself says so
                self._devices[key] = "unavailable"
        return self._devices[key]

    @staticmethod
    def formatSeconds(seconds: float) -> str:
        from NSN2NDenoiseLib.jobs import format_seconds

        return format_seconds(seconds)

    def forecastRun(self, inputVolume, config=None, **options):
        """The cost model's forecast for denoising ``inputVolume`` with these options, or None without torch.

        Returns
        -------
        dict or None
            device ('cpu', 'cuda' or 'unavailable'), seconds, time (text), memory (text), fastTime (text, the
            'fast' preset's time on the same device).
        """
        if not self.isTorchAvailable() or inputVolume is None or inputVolume.GetImageData() is None:
            return None
        from NSN2NDenoiseLib import costmodel

        cfg = config if config is not None else self._config(**options)
        device = self.resolveDevice(cfg.device)
        deviceType = "cuda" if device == "cuda" else "cpu"
        dims = inputVolume.GetImageData().GetDimensions()
        shape = (dims[2], dims[1], dims[0])
        sp = inputVolume.GetSpacing()
        spacing = (sp[2], sp[1], sp[0])
        estimate = costmodel.estimate(shape, cfg, deviceType, spacing_kji=spacing)
        fast = costmodel.estimate(
            shape, self._config(preset="fast", device=cfg.device), deviceType, spacing_kji=spacing
        )
        return {
            "device": device,
            "seconds": estimate.total_seconds,
            "time": self.formatSeconds(estimate.total_seconds),
            "memory": f"{estimate.host_bytes / 2**30:.1f} GB",
            "fastTime": self.formatSeconds(fast.total_seconds),
        }

    def describeRun(self, inputVolume, **options) -> str:
        """One line for the GUI: where the run will go and how long it should take."""
        if not self.isTorchAvailable():
            return _("PyTorch is not installed yet; clicking Denoise offers to install it.")
        try:
            forecast = self.forecastRun(inputVolume, **options)
        except Exception as exc:  # noqa: BLE001 - a bad option: the run reports it with what to change
            return str(exc)
        if forecast is None:
            return ""
        if forecast["device"] == "unavailable":
            return _("No usable CUDA GPU: choose 'cpu' or 'auto' as the device.")
        if forecast["device"] == "cuda":
            return _("Runs on the GPU (CUDA): about {time}.").format(time=forecast["time"])
        text = _("Runs on the CPU (no usable CUDA GPU): about {time}, {memory} of memory.").format(
            time=forecast["time"], memory=forecast["memory"]
        )
        if forecast["seconds"] > LONG_CPU_RUN_S:
            text += " " + _("The 'fast' preset takes about {time}.").format(time=forecast["fastTime"])
        return text

    def startProcess(
        self,
        inputVolume,
        outputVolume=None,
        preset: str = "default",
        iterations: int | None = None,
        device: str = "auto",
        config=None,
        saveModelPath=None,
        initModelPath=None,
        showResidual: bool = False,
        **options,
    ):
        """Start denoising in a separate process and return the job at once (non-blocking).

        Parameters
        ----------
        inputVolume : vtkMRMLScalarVolumeNode
            Never modified. Label maps and vector volumes are refused. Removing it from the scene cancels the run.
        outputVolume : vtkMRMLScalarVolumeNode, optional
            Receives the result; by default a new node "<input name> denoised" is created when the run is done.
        preset : {'fast', 'default', 'best'}
        iterations : int, optional
            Training iterations; None keeps the preset's.
        device : {'auto', 'cpu', 'cuda'}
        sliceAxis, seed, threads, tta, axes, neighbourFusion, wiener, lambdaSelf, lambdaRc, lambdaIc : optional
            The other options of ``NSN2NDenoiseLib.options.OPTIONS`` by their camelCase names; None keeps the
            preset's value.
        config : NSN2NDenoiseLib.NSN2NConfig, optional
            A complete engine configuration instead of the options above (any fields; one the options cannot
            express goes to the worker as a ``--config`` JSON file in the job's folder).
        saveModelPath : str or pathlib.Path, optional
            Save the trained model there (a ``.safetensors`` file, written after a successful run) to start later
            runs of the same protocol from it. None or empty: nothing is saved.
        initModelPath : str or pathlib.Path, optional
            Start training from a model saved by an earlier run: its network settings are used and, when
            ``iterations`` is None, half the preset's iterations (a warm start with half the iterations was within
            0.15 dB of a cold start with all of them). A model that does not fit, or a file that is not an NSN2N
            model (a pickle, which could run code, is refused unread), raises one clear error before any work.
        showResidual : bool
            Also output what was removed (input - output, float32, the input's geometry) as a second new volume
            "<input name> removed by NSN2N", shown centred on 0, to check that only noise was removed: it should
            look like noise, with no edges or anatomy. The job's ``residual_node`` once done. Off by default.

        Returns
        -------
        NSN2NDenoiseLib.mrml.MRMLDenoiseJob
            ``poll()`` (call from the main thread; once the run has ended, each call copies a part of the result
            and the last one adds the complete output node), ``wait()``, ``cancel()``, ``progress``,
            ``filling``, ``output_node``, ``residual_node``, ``report`` (its ``warnings`` are also in the output
            node's ``NSN2N.warnings`` attribute), ``error``.
        """
        if not self.isTorchAvailable():
            # Never install from here: a console or batch call must not start a multi-GB download by itself.
            raise RuntimeError(
                _("PyTorch is not installed. Call setupPythonRequirements() or click Denoise in the module once.")
            )
        self.checkTorchVersion()
        from NSN2NDenoiseLib.mrml import MRMLDenoiser

        if config is None:
            config = self._config(preset, iterations, device, initModelPath=initModelPath, **options)
        return MRMLDenoiser(slicer.mrmlScene, python=self.workerPython()).start(
            inputVolume,
            outputVolume,
            config=config,
            save_model_path=self._modelPath(saveModelPath),
            init_model_path=self._modelPath(initModelPath),
            residual=showResidual,
        )

    def process(
        self, inputVolume, outputVolume=None, *args, showResult: bool = True, showResidual: bool = False, **options
    ):
        """Denoise and block until done; returns the output volume node.

        Takes the parameters of :meth:`startProcess`. Keeps the application responsive while waiting when there
        is one. Raises the run's error (``NSN2NDenoiseLib.errors.NSN2NError`` with a message saying what to change).
        With ``showResidual``, the residual volume is the one whose ``NSN2N.residualOf`` attribute is the output's
        ID.
        """
        from NSN2NDenoiseLib.jobs import DONE

        startTime = time.time()
        logging.info("NSN2N denoising started")
        job = self.startProcess(inputVolume, outputVolume, *args, showResidual=showResidual, **options)
        app = getattr(slicer, "app", None)
        state = job.wait(callback=(lambda j: app.processEvents()) if app is not None else None)
        if state != DONE:
            raise job.error
        logging.info(f"NSN2N denoising completed in {time.time() - startTime:.1f} s")
        if showResult:
            slicer.util.setSliceViewerLayers(background=job.output_node, fit=True)
        return job.output_node


#
# NSN2NDenoiseTest
#


class NSN2NDenoiseTest(ScriptedLoadableModuleTest):
    """Self-test: a small synthetic noisy volume in the scene, a short real run, geometry and noise checks.

    Skipped, with a message, where PyTorch is not installed: a test never installs it.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_NSN2NDenoise1()

    def test_NSN2NDenoise1(self):
        self.delayDisplay("Starting the test")
        logic = NSN2NDenoiseLogic()
        if not logic.isTorchAvailable():
            message = "NSN2N self-test skipped: PyTorch is not installed (install it with the PyTorch Util module)."
            self.delayDisplay(message)
            self.skipTest(message)
        logic.checkTorchVersion()

        # Smooth phantom (K,J,I = 8,48,48) with Gaussian noise of std 0.1; anisotropic spacing, oblique axes.
        rng = np.random.default_rng(0)
        k, j, i = np.meshgrid(np.arange(8), np.arange(48), np.arange(48), indexing="ij")
        clean = (0.5 + 0.3 * np.sin(j / 7.0) * np.cos(i / 9.0) + 0.05 * k / 8.0).astype(np.float32)
        noisy = (clean + rng.normal(0.0, 0.1, clean.shape)).astype(np.float32)
        ijkToRAS = np.array([[0.0, -0.7, 0.0, 10.0], [0.7, 0.0, 0.5, -5.0], [0.0, 0.0, 2.5, 3.0], [0.0, 0.0, 0.0, 1.0]])
        inputVolume = slicer.util.addVolumeFromArray(noisy, ijkToRAS=ijkToRAS, name="NSN2N test noisy")
        self.delayDisplay("Loaded test data")

        # The fast preset for 200 iterations on one thread: seconds on a CPU, in the worker process.
        outputVolume = logic.process(
            inputVolume, preset="fast", iterations=200, device="cpu", threads=1, showResult=False
        )

        self.assertIsNotNone(outputVolume)
        self.assertEqual(outputVolume.GetName(), "NSN2N test noisy denoised")
        inputMatrix, outputMatrix = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        inputVolume.GetIJKToRASMatrix(inputMatrix)
        outputVolume.GetIJKToRASMatrix(outputMatrix)
        np.testing.assert_allclose(
            slicer.util.arrayFromVTKMatrix(outputMatrix), slicer.util.arrayFromVTKMatrix(inputMatrix)
        )
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(inputVolume), noisy)
        result = slicer.util.arrayFromVolume(outputVolume)
        self.assertEqual(result.shape, noisy.shape)
        self.assertTrue(np.all(np.isfinite(result)))
        noiseBefore = float(np.std(noisy - clean))
        noiseAfter = float(np.std(result - clean))
        logging.info(f"NSN2N self-test: error std {noiseBefore:.4f} -> {noiseAfter:.4f}")
        self.assertLess(noiseAfter, 0.8 * noiseBefore)
        self.assertIsNotNone(outputVolume.GetAttribute("NSN2N.report"))

        self.delayDisplay("Test passed")
