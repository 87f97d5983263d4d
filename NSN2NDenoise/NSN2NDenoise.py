import logging
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
TORCH_VERSION_REQUIREMENT = ">=2.1"


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
            "Training runs in the background and can be cancelled. "
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
    preset, iterations (0 = the preset's), device - main options.
    overridePreset - when True, the advanced values below replace the preset's.
    sliceAxis, lambdaRc, lambdaIc, lambdaSelf, energyTest, tta, safeguard, seed - advanced engine options.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputVolume: vtkMRMLScalarVolumeNode
    preset: Annotated[str, Choice(["fast", "default", "best"])] = "default"
    iterations: Annotated[int, WithinRange(0, 1000000)] = 0
    device: Annotated[str, Choice(["auto", "CPU", "GPU"])] = "auto"
    overridePreset: bool = False
    sliceAxis: Annotated[str, Choice(["auto", "K", "J", "I"])] = "auto"
    lambdaRc: Annotated[float, WithinRange(0.0, 100.0)] = 0.0
    lambdaIc: Annotated[float, WithinRange(0.0, 100.0)] = 0.0
    lambdaSelf: Annotated[float, WithinRange(0.0, 100.0)] = 0.5
    energyTest: bool = True
    tta: bool = False
    safeguard: bool = False
    seed: Annotated[int, WithinRange(0, 2**31 - 1)] = 0


#
# NSN2NDenoiseWidget
#


class NSN2NDenoiseWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Moves values between the GUI and the parameter node, starts the Logic's job and polls it from a timer."""

    POLL_INTERVAL_MS = 100
    GIL_YIELD_S = 0.02  # the timer sleeps this long so that the training thread gets the GIL (SimpleFilters' trick)

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._pollTimer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/NSN2NDenoise.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = NSN2NDenoiseLogic()

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(self.POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self.onPollTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.advancedOverrideCheckBox.connect("toggled(bool)", self._updateAdvancedEnabled)
        self.ui.progressBar.setValue(0)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes or the module is reloaded: stop the run and the timer."""
        if self._job is not None and not self._job.job.finished:
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
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtonState)

    def onSceneStartClose(self, caller, event) -> None:
        if self._job is not None and not self._job.job.finished:
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
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtonState)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtonState)
        self._updateButtonState()
        self._updateAdvancedEnabled()

    def _isRunning(self) -> bool:
        return self._job is not None and not self._job.job.finished

    def _updateAdvancedEnabled(self, *unused) -> None:
        enabled = bool(self.ui.advancedOverrideCheckBox.checked)
        for widget in (
            self.ui.sliceAxisComboBox,
            self.ui.lambdaRcSpinBox,
            self.ui.lambdaIcSpinBox,
            self.ui.lambdaSelfSpinBox,
            self.ui.energyTestCheckBox,
            self.ui.ttaCheckBox,
            self.ui.safeguardCheckBox,
            self.ui.seedSpinBox,
        ):
            widget.enabled = enabled

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

    def onApplyButton(self) -> None:
        if self._isRunning():
            self._job.cancel()
            self.ui.statusLabel.text = _("Cancelling...")
            self._updateButtonState()
            return
        with slicer.util.tryWithErrorDisplay(_("Could not start denoising."), waitCursor=True):
            self.logic.setupPythonRequirements(askConfirmation=True)
            p = self._parameterNode
            self._job = self.logic.startProcess(p.inputVolume, p.outputVolume, **self.logic.optionsFromParameterNode(p))
            self.ui.progressBar.setValue(0)
            self.ui.progressBar.setFormat(_("Starting..."))
            self.ui.statusLabel.text = _("Started; Slicer stays usable while the volume is denoised.")
            self._pollTimer.start()
        self._updateButtonState()

    def onPollTimer(self) -> None:
        time.sleep(self.GIL_YIELD_S)
        if self._job is None:
            self._pollTimer.stop()
            return
        state = self._job.poll()  # writes the output node here, on the main thread, when the result is ready
        progress = self._job.progress
        if progress is not None:
            self.ui.progressBar.setValue(int(round(100 * progress.fraction)))
            self.ui.progressBar.setFormat(f"{progress.phase} {progress.step}/{progress.total}")
            self.ui.statusLabel.text = progress.describe()
        if state not in ("done", "failed", "cancelled"):
            return
        self._pollTimer.stop()
        job, self._job = self._job, None
        if state == "done":
            seconds = job.job.elapsed_s
            self.ui.progressBar.setValue(100)
            self.ui.progressBar.setFormat(_("Done"))
            self.ui.statusLabel.text = _("Done in {seconds:.0f} s: '{name}'.").format(
                seconds=seconds, name=job.output_node.GetName()
            )
            if self._parameterNode and not self._parameterNode.outputVolume:
                self._parameterNode.outputVolume = job.output_node
            slicer.util.setSliceViewerLayers(background=job.output_node, fit=True)
        elif state == "cancelled":
            self.ui.progressBar.setFormat(_("Cancelled"))
            self.ui.statusLabel.text = _("Cancelled; the scene is unchanged.")
        else:
            message = str(job.error)
            self.ui.progressBar.setFormat(_("Failed"))
            self.ui.statusLabel.text = _("Failed: {message}").format(message=message)
            if job.job.traceback:
                logging.error(job.job.traceback)
            slicer.util.errorDisplay(_("Denoising failed: {message}").format(message=message))
        self._updateButtonState()


#
# NSN2NDenoiseLogic
#


class NSN2NDenoiseLogic(ScriptedLoadableModuleLogic):
    """Slicer-side logic. The work is done by the Qt-free ``NSN2NDenoiseLib.mrml.MRMLDenoiser``.

    Console use (blocking)::

        out = NSN2NDenoise.NSN2NDenoiseLogic().process(volumeNode, preset="fast", device="auto")

    Non-blocking: ``job = logic.startProcess(volumeNode)``; then ``job.poll()`` from the main thread (a timer) or
    ``job.wait()``; ``job.output_node`` is the result once the state is 'done'; ``job.cancel()`` stops it.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return NSN2NDenoiseParameterNode(super().getParameterNode())

    @staticmethod
    def isTorchAvailable() -> bool:
        import importlib.util

        return importlib.util.find_spec("torch") is not None

    def setupPythonRequirements(self, askConfirmation: bool = True) -> None:
        """Make torch importable, installing it through the PyTorch extension if the user agrees.

        PyTorchUtils' ``torch`` property would install without asking, so it is not used
        (see the PyTorch extension's PyTorchUtils.py).

        Raises
        ------
        RuntimeError
            If the PyTorch extension is missing, the user declined, or the install failed; the message says what to do.
        """
        if self.isTorchAvailable():
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
    def optionsFromParameterNode(parameterNode) -> dict:
        """Keyword arguments of :meth:`process` for the GUI state in ``parameterNode``."""
        options = {
            "preset": parameterNode.preset,
            "iterations": parameterNode.iterations or None,
            "device": parameterNode.device,
        }
        if parameterNode.overridePreset:
            options.update(
                sliceAxis=parameterNode.sliceAxis,
                lambdaRc=parameterNode.lambdaRc,
                lambdaIc=parameterNode.lambdaIc,
                lambdaSelf=parameterNode.lambdaSelf,
                energyTest=parameterNode.energyTest,
                tta=parameterNode.tta,
                safeguard=parameterNode.safeguard,
                seed=parameterNode.seed,
            )
        return options

    def _denoiser(self):
        from NSN2NDenoiseLib.mrml import MRMLDenoiser

        return MRMLDenoiser(slicer.mrmlScene)

    # The engine option behind each camelCase option of startProcess/process (see NSN2NDenoiseLib.mrml.build_config).
    OPTION_NAMES = {
        "sliceAxis": "slice_axis",
        "lambdaRc": "lambda_rc",
        "lambdaIc": "lambda_ic",
        "lambdaSelf": "lambda_self",
        "energyTest": "energy_test",
        "tta": "tta",
        "safeguard": "safeguard",
        "seed": "seed",
        "threads": "threads",
    }

    def _config(self, preset, iterations, device, **options):
        from NSN2NDenoiseLib.mrml import build_config

        unknown = set(options) - set(self.OPTION_NAMES)
        if unknown:
            raise TypeError(f"Unknown option(s) {', '.join(sorted(unknown))}; known: {', '.join(self.OPTION_NAMES)}.")
        engineOptions = {self.OPTION_NAMES[name]: value for name, value in options.items()}
        return build_config(preset=preset, iterations=iterations, device=device, **engineOptions)

    def startProcess(
        self,
        inputVolume,
        outputVolume=None,
        preset: str = "default",
        iterations: int | None = None,
        device: str = "auto",
        config=None,
        **options,
    ):
        """Start denoising in a background thread and return the job at once (non-blocking).

        Parameters
        ----------
        inputVolume : vtkMRMLScalarVolumeNode
            Never modified. Label maps and vector volumes are refused.
        outputVolume : vtkMRMLScalarVolumeNode, optional
            Receives the result; by default a new node "<input name> denoised" is created when the run is done.
        preset : {'fast', 'default', 'best'}
        iterations : int, optional
            Training iterations; None keeps the preset's.
        device : {'auto', 'CPU', 'GPU'}
        sliceAxis, lambdaRc, lambdaIc, lambdaSelf, energyTest, tta, safeguard, seed, threads : optional
            Engine options; None keeps the preset's value.
        config : NSN2NDenoiseLib.NSN2NConfig, optional
            A complete engine configuration; when given, all the options above are ignored.

        Returns
        -------
        NSN2NDenoiseLib.mrml.MRMLDenoiseJob
            ``poll()`` (call from the main thread; writes the output when done), ``wait()``, ``cancel()``,
            ``progress``, ``output_node``, ``error``.
        """
        if not self.isTorchAvailable():
            # Never install from here: a console or batch call must not start a multi-GB download by itself.
            raise RuntimeError(
                _("PyTorch is not installed. Call setupPythonRequirements() or click Denoise in the module once.")
            )
        if config is None:
            config = self._config(preset, iterations, device, **options)
        return self._denoiser().start(inputVolume, outputVolume, config=config)

    def process(self, inputVolume, outputVolume=None, *args, showResult: bool = True, **options):
        """Denoise and block until done; returns the output volume node.

        Takes the parameters of :meth:`startProcess`. Keeps the application responsive while waiting when there
        is one. Raises the run's error (``NSN2NDenoiseLib.errors.NSN2NError`` with a message saying what to change).
        """
        startTime = time.time()
        logging.info("NSN2N denoising started")
        job = self.startProcess(inputVolume, outputVolume, *args, **options)
        app = getattr(slicer, "app", None)
        try:
            while not job.job.wait(0.1):
                if app is not None:
                    app.processEvents()
        except BaseException:
            job.cancel()
            job.job.wait()
            raise
        state = job.poll()
        if state != "done":
            raise job.error
        logging.info(f"NSN2N denoising completed in {time.time() - startTime:.1f} s")
        if showResult:
            slicer.util.setSliceViewerLayers(background=job.output_node, fit=True)
        return job.output_node


#
# NSN2NDenoiseTest
#


class NSN2NDenoiseTest(ScriptedLoadableModuleTest):
    """Self-test: a small synthetic noisy volume in the scene, a short real run, geometry and noise checks."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_NSN2NDenoise1()

    def test_NSN2NDenoise1(self):
        self.delayDisplay("Starting the test")
        logic = NSN2NDenoiseLogic()
        logic.setupPythonRequirements(askConfirmation=False)

        # Smooth phantom (K,J,I = 8,48,48) with Gaussian noise of std 0.1; anisotropic spacing, oblique axes.
        rng = np.random.default_rng(0)
        k, j, i = np.meshgrid(np.arange(8), np.arange(48), np.arange(48), indexing="ij")
        clean = (0.5 + 0.3 * np.sin(j / 7.0) * np.cos(i / 9.0) + 0.05 * k / 8.0).astype(np.float32)
        noisy = (clean + rng.normal(0.0, 0.1, clean.shape)).astype(np.float32)
        ijkToRAS = np.array([[0.0, -0.7, 0.0, 10.0], [0.7, 0.0, 0.5, -5.0], [0.0, 0.0, 2.5, 3.0], [0.0, 0.0, 0.0, 1.0]])
        inputVolume = slicer.util.addVolumeFromArray(noisy, ijkToRAS=ijkToRAS, name="NSN2N test noisy")
        self.delayDisplay("Loaded test data")

        # A small network trained 200 iterations: a few seconds on one CPU core, and it reduces this noise
        # about fourfold (measured with slicer-core outside Slicer).
        from NSN2NDenoiseLib import make_config

        config = make_config(
            "fast",
            network={"width": 16, "depth": 2},
            training={"iterations": 200, "patch_size": 32, "batch_size": 4},
        )
        outputVolume = logic.process(inputVolume, config=config, showResult=False)

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
