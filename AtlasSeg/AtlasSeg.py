"""AtlasSeg: segment abdominal CT with the AbdomenAtlas models (SuPreM, DiffTumor, your own) inside 3D Slicer.

This file holds the Slicer module class, the (thin) widget and the self-test. It is the only ``.py`` file at the
top level of the module folder, because Slicer's scripted-module factory loads every top-level ``.py`` file as
a module of its own. Everything that does work lives in the ``AtlasSegModule`` package beside it (Qt-free
where it computes, so it is tested headless with real Slicer classes):

* ``AtlasSegLogic``: the logic (runs, results into the scene, model registry, device advice);
* ``AtlasSegBridge``: the one MRML <-> numpy/SimpleITK conversion;
* ``AtlasSegRunner``: the engine process and its progress protocol;
* ``AtlasSegDependencies``: installing Python packages without touching Slicer's own;
* ``AtlasSegReview``: the sensitivity sliders, candidate review and batch clean-up (panel:
  ``AtlasSegReviewPanel``), with the Segment Editor effect's logic in ``RemoveFalsePositiveLogic`` and the
  effect itself in ``SegmentEditorRemoveFalsePositiveLib/`` (registered by ``effects``);
* ``AtlasSegExport``: DICOM SEG / RTSTRUCT / .seg.nrrd / AbdomenAtlas export and import (panel:
  ``AtlasSegExportPanel``);
* ``AtlasSegRender``: report pictures drawn by Slicer's own 3D view (panel: ``AtlasSegReportPanel``);
* ``AtlasSegTeaching``: synthetic tumors inserted at a clicked point (one undo step), the truth beside the
  result, reveal/hide answers, the demo phantom's controls (panel: ``AtlasSegTeachingPanel``).
"""
import importlib.util
import logging
import sys
import unittest
from dataclasses import dataclass
from typing import Optional

import numpy as np
import qt
import vtk

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleTest,
                                           ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

try:
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # Slicer < 5.4 has no translation support
    def _(text):
        return text

    def translate(context, text):
        return text

from AtlasSegModule import AtlasSegBridge as bridge
from AtlasSegModule import AtlasSegDependencies as deps
from AtlasSegModule.AtlasSegLogic import (DEMO_MODEL_ID, DEMO_PHANTOM_SEED, QUALITIES, QUALITY_TITLES,
                                          QUALITY_TOOLTIP, AtlasSegLogic, QualityEstimate, RunOptions,
                                          applyBlocker, describeVolume, formatDuration, modelDetailsHtml,
                                          progressText, qualityHint)
from AtlasSegModule.AtlasSegExportPanel import ExportPanel
from AtlasSegModule.AtlasSegReportPanel import ReportPanel
from AtlasSegModule.AtlasSegReviewPanel import ReviewPanel
from AtlasSegModule.AtlasSegTeachingPanel import TeachingPanel
from AtlasSegModule.AtlasSegRunner import RunState
from AtlasSegModule.effects import registerEffects
from AtlasSegModule.terminology import loadTerminology

DEVICE_CHOICES = (("auto", "Auto"), ("cpu", "CPU"), ("cuda", "GPU (CUDA)"))
BACKEND_CHOICES = (("auto", "Auto"), ("torch", "PyTorch"), ("openvino", "OpenVINO (CPU)"))
PRECISION_CHOICES = (("auto", "Auto"), ("fp32", "fp32"), ("bf16", "bf16"), ("fp16", "fp16"),
                     ("int8", "INT8 (CPU, checked on this CT)"))
POLL_INTERVAL_MS = 200
APPLY_TOOLTIP = ("Segment the input volume with the selected model. The model runs in a separate process: "
                 "Slicer stays usable and this button turns into Cancel.")
CANCEL_TOOLTIP = "Stop the running segmentation (its process is killed; the scene is left as it was)."


#
# Module
#
class AtlasSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("AtlasSeg")
        # Translated in the context Slicer translates its module categories in, so that "Segmentation" groups
        # with Slicer's own category in every language (as Slicer's scripted-module template does).
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        # The effect plugs into the Segment Editor and results are segmentation nodes.
        self.parent.dependencies = ["Segmentations", "SegmentEditor"]
        self.parent.contributors = ["AtlasSeg maintainers (AtlasSeg project)"]  # as EXTENSION_CONTRIBUTORS
        self.parent.helpText = _("""
Segments abdominal organs and tumors on CT with the AbdomenAtlas family of models (SuPreM, DiffTumor) or
your own model card. Choose the CT, a model and the structures, then click Apply: the model runs in a separate
process with a progress bar and a Cancel button. The result is a segmentation with standard names, colours and
SNOMED terminology on the CT's grid, ready for DICOM SEG export; tumor probability maps are added as hidden
volumes for adjusting sensitivity later.
<br><br>Model weights are downloaded once into a cache folder (Model section) and verified; behind a firewall,
download them yourself and use <i>Import weights file</i>.
<br><br>Research use only; not a medical device.
""")
        self.parent.acknowledgementText = _("""
If you use AtlasSeg in your work, cite the models and datasets:
<ul>
<li>SuPreM: Li W, Yuille A, Zhou Z. How Well Do Supervised 3D Models Transfer to Medical Imaging Tasks? ICLR 2024.</li>
<li>AbdomenAtlas: Li W, Qu C, Chen X, et al. AbdomenAtlas: A large-scale, detailed-annotated, and multi-center
dataset for efficient transfer learning and open algorithmic benchmarking. Medical Image Analysis 2024.</li>
<li>AbdomenAtlas-8K: Qu C, Zhang T, Qiao H, et al. AbdomenAtlas-8K: Annotating 8,000 CT Volumes for
Multi-Organ Segmentation in Three Weeks. NeurIPS 2023.</li>
<li>DiffTumor: Chen Q, Chen X, Song H, Xiong Z, Yuille A, Wei C, Zhou Z. Towards Generalizable Tumor Synthesis.
CVPR 2024.</li>
</ul>
Inference uses MONAI and PyTorch. Each model keeps its own license: see the Model section before use.
""")
        # The "Remove false positive" Segment Editor effect and AtlasSeg's terminology context are registered once
        # the application has started (the effect factory and the Terminologies module do not exist before).
        # startupCompleted is emitted once: a module created after it (Extension Wizard "Load module",
        # factoryManager().loadModules()) registers them right away.
        slicer.app.connect("startupCompleted()", _registerEffects)
        if _startupCompleted():
            qt.QTimer.singleShot(0, _registerEffects)


def _startupCompleted() -> bool:
    """Whether the application has finished starting (its main window is shown)."""
    mainWindow = slicer.util.mainWindow()
    return mainWindow is not None and mainWindow.isVisible()


def _registerEffects():
    registerEffects()
    try:
        loadTerminology()
    except Exception as exc:  # segments still carry their codes; only the selector's lookup is missing
        logging.warning("AtlasSeg: terminology context not loaded (%s)", exc)


#
# Widget
#
@dataclass
class _Job:
    """The background work the panel is waiting for (one at a time)."""

    kind: str  # "run" or "download"
    task: object  # EngineRunner (the engine, or a download in its own process)
    prepared: object = None  # PreparedRun of a run
    inputVolume: object = None
    targetSegmentation: object = None
    modelId: str = ""
    thenRun: bool = False  # a download started by Apply continues with the run


class AtlasSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel. It reads the controls, calls the logic and shows progress; it computes nothing itself."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._models = {}
        self._job: Optional[_Job] = None
        self._timer = None
        self._missingRequirements = []
        self._torchMissing = False
        self._installing = False  # pip or light-the-torch is running (under a modal dialog)
        self._importing = False  # 'models import' runs in the engine's Python; events are pumped meanwhile
        self._fillingStructures = False
        self._estimateKey = None  # what the shown (or running) estimate is for: volume, voxels' time, model, device
        self._estimateResult: Optional[QualityEstimate] = None

    # ------------------------------------------------------------------------------------------- setup
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/AtlasSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = AtlasSegLogic()

        for value, title in DEVICE_CHOICES:
            self.ui.deviceComboBox.addItem(title, value)
        for value in QUALITIES:  # the item texts gain this CT's estimate when it arrives (_showEstimate)
            self.ui.qualityComboBox.addItem(_(QUALITY_TITLES[value]), value)
        self.ui.qualityComboBox.toolTip = _(QUALITY_TOOLTIP)
        # Backend and precision rows, built here (not in the .ui file), saved with the scene like the device.
        self.backendComboBox = qt.QComboBox()
        self.backendComboBox.toolTip = _("What runs the network. Auto: OpenVINO on the CPU when installed (converted "
                                         "once per model, then 1.5-4x faster), PyTorch on the GPU.")
        self.precisionComboBox = qt.QComboBox()
        self.precisionComboBox.toolTip = _("Arithmetic precision. Auto: bf16 where the CPU supports it, else fp32; "
                                           "fp16 on the GPU. Masks agree with fp32 (Dice >= 0.99). INT8: quantized "
                                           "once, checked against fp32 on each CT (fp32 runs where it disagrees).")
        for combo, choices in ((self.backendComboBox, BACKEND_CHOICES), (self.precisionComboBox, PRECISION_CHOICES)):
            for value, title in choices:
                combo.addItem(title, value)
        self.ui.deviceCollapsibleButton.layout().addRow(_("Backend:"), self.backendComboBox)
        self.ui.deviceCollapsibleButton.layout().addRow(_("Precision:"), self.precisionComboBox)
        header = self.ui.modelTreeWidget.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(0, qt.QHeaderView.Stretch)
        for column in range(1, self.ui.modelTreeWidget.columnCount):
            header.setSectionResizeMode(column, qt.QHeaderView.ResizeToContents)
        self.ui.downloadProgressBar.setVisible(False)
        self.ui.cancelDownloadButton.setVisible(False)
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self._onTimer)
        self._probeTimer = qt.QTimer()
        self._probeTimer.setInterval(POLL_INTERVAL_MS)
        self._probeTimer.connect("timeout()", self._onProbeTimer)
        self._estimateTimer = qt.QTimer()
        self._estimateTimer.setInterval(POLL_INTERVAL_MS)
        self._estimateTimer.connect("timeout()", self._onEstimateTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.loadPhantomButton.connect("clicked(bool)", self.onLoadPhantom)
        self.ui.modelSearchBox.connect("textChanged(QString)", self.onModelSearch)
        self.ui.modelTreeWidget.connect("currentItemChanged(QTreeWidgetItem*,QTreeWidgetItem*)", self.onModelSelected)
        self.ui.downloadButton.connect("clicked(bool)", self.onDownload)
        self.ui.cancelDownloadButton.connect("clicked(bool)", self.onCancelDownload)
        self.ui.importWeightsButton.connect("clicked(bool)", self.onImportWeights)
        self.ui.openCacheFolderButton.connect("clicked(bool)", self.onOpenCacheFolder)
        self.ui.selectAllStructuresButton.connect("clicked(bool)", lambda: self._checkAllStructures(True))
        self.ui.selectNoStructuresButton.connect("clicked(bool)", lambda: self._checkAllStructures(False))
        self.ui.structureTreeWidget.connect("itemChanged(QTreeWidgetItem*,int)", self.onStructureChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.qualityComboBox.connect("currentIndexChanged(int)",
                                        lambda i: self._setChoice("quality", self.ui.qualityComboBox, i))
        self.backendComboBox.connect("currentIndexChanged(int)", lambda i: self._setChoice("backend", self.backendComboBox, i))
        self.precisionComboBox.connect("currentIndexChanged(int)",
                                       lambda i: self._setChoice("precision", self.precisionComboBox, i))
        self.ui.refreshDeviceButton.connect("clicked(bool)", lambda: self._refreshDeviceInfo(refresh=True))
        self.ui.show3DCheckBox.connect("toggled(bool)", self.onShow3DToggled)
        self.ui.undoButton.connect("clicked(bool)", self.onUndo)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.copyLogButton.connect("clicked(bool)", self.onCopyLog)

        # Sections built in code, each in its own file (thin widgets over Qt-free logic).
        self.reviewPanel = ReviewPanel(self.layout, self)
        self.reportPanel = ReportPanel(self.layout, self)
        self.exportPanel = ExportPanel(self.layout, self)
        self.teachingPanel = TeachingPanel(self.layout, self)
        self.layout.addStretch(1)

        self._checkDependencies()
        self.initializeParameterNode()
        self._populateModels()
        # The GPU check runs in a separate process (torch is never imported into Slicer's); the label fills in later.
        self._refreshDeviceInfo()

    def cleanup(self):
        """Called when the application closes and the module widget is destroyed."""
        if self._job is not None:
            self._job.task.cancel()
            if self._job.prepared is not None:
                self._job.prepared.cleanup()
            self._job = None
        if self._timer is not None:
            self._timer.stop()
        if getattr(self, "_probeTimer", None) is not None:
            self._probeTimer.stop()
        if getattr(self, "_estimateTimer", None) is not None:
            self._estimateTimer.stop()
        if self.logic is not None:
            self.logic.cancelEstimate()
        if getattr(self, "reviewPanel", None) is not None:
            self.reviewPanel.cleanup()
        if getattr(self, "teachingPanel", None) is not None:
            self.teachingPanel.cleanup()
        if self._parameterNode is not None and self._parameterNodeGuiTag is not None:  # exit() may have done it
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
        self.removeObservers()

    def onReload(self):
        """Developer "Reload": Slicer re-executes only AtlasSeg.py, so the AtlasSegModule package (logic, panels)
        and AtlasSegLib are dropped from sys.modules first and imported afresh by it. The Segment Editor effect
        stays the one registered at startup: edits to it need a restart (said in the log)."""
        for name in list(sys.modules):
            if name.split(".")[0] in ("AtlasSegModule", "AtlasSegLib"):
                del sys.modules[name]
        logging.warning("AtlasSeg reloaded (module, panels and library). The 'Remove false positive' effect is "
                        "reloaded only by restarting Slicer.")
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        # The run continues while the user works in other modules; only the GUI link is dropped.
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)

    def onSceneStartClose(self, caller, event):
        if self._job is not None and self._job.kind == "run":
            self._cancelJob(_("The scene was closed: segmentation cancelled."))
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume and not firstVolume.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = firstVolume

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
            self._updateGui()

    # ------------------------------------------------------------------------------------- GUI refresh
    def _updateGui(self, caller=None, event=None):
        """Bring the controls not bound to the parameter node, and every button's state, up to date."""
        params = self._parameterNode
        if params is None:
            return
        index = self.ui.deviceComboBox.findData(params.device)
        if index >= 0 and index != self.ui.deviceComboBox.currentIndex:
            self.ui.deviceComboBox.setCurrentIndex(index)
        for combo, value in ((self.backendComboBox, params.backend), (self.precisionComboBox, params.precision),
                             (self.ui.qualityComboBox, params.quality)):
            index = combo.findData(value)
            if index >= 0 and index != combo.currentIndex:
                combo.setCurrentIndex(index)
        self.ui.inputInfoLabel.text = describeVolume(params.inputVolume)
        self.ui.outputSegmentationSelector.enabled = params.overwrite and self._job is None
        device = self.logic.cachedDeviceInfo()
        self.ui.qualityHintLabel.text = qualityHint(device, params.device, params.quality == "fast") if device else ""
        self._refreshEstimate()
        self.ui.undoButton.enabled = self._job is None and self.logic.canUndo(params.outputSegmentation)
        self.ui.undoButton.toolTip = (
            _("Restore the segmentation (and its probability maps) as it was before the last run overwrote it.")
            if self.ui.undoButton.enabled else
            _("Nothing to undo: available after a run overwrote the selected segmentation (Overwrite ticked)."))
        self._selectModelItem(params.modelId)
        self._syncStructureChecks()
        self._updateModelButtons()
        self._updateApplyButton()

    def _updateApplyButton(self):
        if self._job is not None and self._job.kind == "run":
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _(CANCEL_TOOLTIP)
            self.ui.applyButton.enabled = True
            return
        self.ui.applyButton.text = _("Apply")
        params = self._parameterNode
        packagesFirst = ""
        if not self._models and (self._missingRequirements or self._torchMissing):
            packagesFirst = _("Install AtlasSeg's Python packages first (Install… at the top of this panel).")
        reason = applyBlocker(inputVolume=params.inputVolume, model=self._selectedModel(),
                              structures=self._selectedStructures(), overwrite=params.overwrite,
                              outputSegmentation=params.outputSegmentation, dependenciesError=packagesFirst)
        if self._job is not None:
            reason = _("Wait for the download to finish (or cancel it).")
        if self._installing:
            reason = _("Wait for the installation of AtlasSeg's Python packages to finish.")
        if self._importing:
            reason = _("Wait for the weights file to be imported.")
        self.ui.applyButton.enabled = not reason
        self.ui.applyButton.toolTip = reason or _(APPLY_TOOLTIP)

    def _updateModelButtons(self):
        model = self._selectedModel()
        downloading = self._job is not None and self._job.kind == "download"
        self.ui.installDependenciesButton.enabled = not self._installing
        self.ui.downloadButton.enabled = bool(model and not model.downloaded and model.downloadable
                                              and self._job is None and not self._installing and not self._importing)
        self.ui.downloadButton.toolTip = (
            _("Download the selected model's weights into the cache folder (verified against the published size "
              "and checksum). Slicer stays usable meanwhile.") if self.ui.downloadButton.enabled else
            _("The selected model's weights are already here.") if model and model.downloaded else
            _("This model has no download address: use Import weights file.") if model and not model.downloadable else
            _("Select a model first."))
        self.ui.cancelDownloadButton.setVisible(downloading)
        self.ui.downloadProgressBar.setVisible(downloading)
        self.ui.importWeightsButton.enabled = (model is not None and self._job is None and not self._installing
                                               and not self._importing)
        self.ui.importWeightsButton.toolTip = (
            _("Install a weights file you downloaded yourself (e.g. behind a proxy or on another computer) for the "
              "selected model. It is checked against the model card and copied into the cache.")
            if self.ui.importWeightsButton.enabled else
            _("Select a model first (and wait for the running download or segmentation to end)."))

    # ---------------------------------------------------------------------------------- dependencies
    def _checkDependencies(self):
        self._missingRequirements = deps.missingForInstall(deps.readRequirements())
        self._torchMissing = deps.torchMissing()
        missing = self._missingRequirements + (["torch (PyTorch extension)"] if self._torchMissing else [])
        unavailable = deps.unavailableFeatures()
        self.ui.dependenciesFrame.setVisible(bool(missing or unavailable))
        lines = []
        if missing:
            lines.append(_("To be installed on first use: {packages}").format(packages=", ".join(missing)))
        if unavailable:
            lines.append(_("Not available in this Slicer: {features}").format(features=", ".join(unavailable)))
        self.ui.dependenciesLabel.text = "\n".join(lines)
        self.ui.dependenciesLabel.toolTip = "\n".join(f"{reason}." for reason in unavailable.values())

    def _ensureDependencies(self) -> bool:
        """Ask, then install what is missing. False when the user declined or an install is already running.
        Raises DependencyError on failure (also when the install is incomplete)."""
        if self._installing:  # a click that reached us while pip runs (Slicer pumps events meanwhile)
            return False
        self._checkDependencies()
        if not self._missingRequirements and not self._torchMissing:
            deps.checkTorchVersion()  # an installed torch that is too old is refused with how to fix it
            return True
        question = deps.confirmationText(self._missingRequirements, self._torchMissing)
        if not slicer.util.confirmOkCancelDisplay(question, _("AtlasSeg: install Python packages")):
            return False
        self._installing = True
        self._updateGui()  # Install…, Apply, Download and Import disabled until the install has ended
        dialog = qt.QProgressDialog(_("Installing AtlasSeg's Python packages…"), "", 0, 0, slicer.util.mainWindow())
        dialog.setWindowTitle(_("AtlasSeg: installing"))
        dialog.setWindowModality(qt.Qt.ApplicationModal)
        dialog.setCancelButton(None)  # pip cannot be stopped half-way safely
        dialog.setMinimumDuration(0)
        dialog.show()

        def onLine(line):
            self._appendLog(line)
            dialog.setLabelText(_("Installing AtlasSeg's Python packages…") + "\n" + line[:100])

        def pump():
            slicer.app.processEvents()

        try:
            self._appendLog("Installing Python packages: " + ", ".join(self._missingRequirements))
            if self._torchMissing:
                dialog.setLabelText(_("Installing PyTorch (a download of up to a few GB)…"))
                self._appendLog("PyTorch " + deps.ensureTorch(pump=pump, onLine=onLine) + " installed")
            else:
                deps.checkTorchVersion()
            outcome = deps.installRequirements(deps.readRequirements(), pump=pump, onLine=onLine)
        finally:
            dialog.close()
            self._installing = False
            self._checkDependencies()
            self._populateModels()
            self._updateGui()
        for reason in (outcome.unavailable or {}).values():
            self._appendLog(f"Not available in this Slicer: {reason}.")
        self._refreshDeviceInfo(refresh=True)
        if outcome.restartRecommended and slicer.util.confirmYesNoDisplay(
                _("Packages Slicer had already loaded were changed by the install ({packages}). Restart Slicer now "
                  "to use the new versions? (You can also restart later; save your work first.)").format(
                    packages=", ".join(outcome.restartPackages)), _("AtlasSeg: restart Slicer?")):
            slicer.util.restart()
        return True

    def onInstallDependencies(self):
        with slicer.util.tryWithErrorDisplay(_("Installing AtlasSeg's Python packages failed."), waitCursor=False):
            self._ensureDependencies()

    # -------------------------------------------------------------------------------------------- input
    def onLoadPhantom(self):
        with slicer.util.tryWithErrorDisplay(_("The demo phantom could not be created."), waitCursor=True):
            shown = None
            if self.teachingPanel.customised():
                # The Teaching section's phantom controls: tumor count, sizes, contrast, structures shown.
                volume, shown = self.teachingPanel.loadPhantom()
            else:
                volume = self.logic.loadDemoPhantom()
            self._parameterNode.inputVolume = volume
            if DEMO_MODEL_ID in self._models:
                self._parameterNode.modelId = DEMO_MODEL_ID
                if shown is not None:
                    self._parameterNode.excludedStructures = ",".join(
                        s.name for s in self._models[DEMO_MODEL_ID].structures if s.name not in shown)
            slicer.util.setSliceViewerLayers(background=volume, fit=True)

    # -------------------------------------------------------------------------------------------- model
    def _populateModels(self):
        tree = self.ui.modelTreeWidget
        tree.clear()
        try:
            models = self.logic.models()
        except ImportError as exc:  # jsonschema & co. not installed yet: the list fills after installing
            self._models = {}
            self.ui.modelDetailsBrowser.setPlainText(
                _("The model list needs AtlasSeg's Python packages ({error}). Click Install… above.").format(
                    error=exc))
            return
        self._models = {m.id: m for m in models}
        for model in models:
            item = qt.QTreeWidgetItem([model.title, str(len(model.structures)), model.sizeColumnText(),
                                       model.licenseShort(), model.statusText()])
            item.setData(0, qt.Qt.UserRole, model.id)
            item.setToolTip(0, f"{model.title} ({model.id}): {model.description}")
            item.setToolTip(3, model.license)
            tree.addTopLevelItem(item)
        self.onModelSearch(self.ui.modelSearchBox.text)
        if self._parameterNode is not None:
            if self._parameterNode.modelId not in self._models and models:
                self._parameterNode.modelId = DEMO_MODEL_ID if DEMO_MODEL_ID in self._models else models[0].id
            self._selectModelItem(self._parameterNode.modelId, force=True)

    def _selectedModel(self):
        return self._models.get(self._parameterNode.modelId) if self._parameterNode else None

    def _selectModelItem(self, modelId, force=False):
        tree = self.ui.modelTreeWidget
        current = tree.currentItem()
        if not force and current is not None and current.data(0, qt.Qt.UserRole) == modelId:
            return
        for index in range(tree.topLevelItemCount):
            item = tree.topLevelItem(index)
            if item.data(0, qt.Qt.UserRole) == modelId:
                tree.setCurrentItem(item)
                return

    def onModelSearch(self, text):
        tree = self.ui.modelTreeWidget
        for index in range(tree.topLevelItemCount):
            item = tree.topLevelItem(index)
            model = self._models.get(item.data(0, qt.Qt.UserRole))
            item.setHidden(model is not None and not model.matches(text or ""))

    def onModelSelected(self, current, previous):
        if current is None or self._parameterNode is None:
            return
        modelId = current.data(0, qt.Qt.UserRole)
        model = self._models.get(modelId)
        if model is None:
            return
        self.ui.modelDetailsBrowser.setHtml(modelDetailsHtml(model))
        if self._parameterNode.modelId != modelId:
            # Another model has other structures: start again from "all ticked".
            self._parameterNode.excludedStructures = ""
            self._parameterNode.modelId = modelId
        self._fillStructures(model)
        self._updateGui()

    def onDownload(self):
        with slicer.util.tryWithErrorDisplay(_("The download could not start."), waitCursor=False):
            self._startDownload(self._selectedModel(), thenRun=False)

    def _startDownload(self, model, thenRun: bool):
        # In a process of its own, as the engine: a Python thread here gets the GIL only while Slicer runs
        # Python, so a download on one crawled (3 MB/s instead of ~190 in an emulation of Slicer's idle loop).
        task = self.logic.startDownload(model.id, logCallback=self._appendLog)
        self._job = _Job(kind="download", task=task, modelId=model.id, thenRun=thenRun)
        self.ui.downloadProgressBar.value = 0
        self.ui.downloadProgressBar.format = _("Downloading… %p%")
        self._appendLog(f"Downloading weights of {model.id} into {self.logic.cacheFolder()}")
        self._timer.start()
        self._updateGui()

    def onCancelDownload(self):
        if self._job is not None and self._job.kind == "download":
            self._job.task.cancel()

    def onImportWeights(self):
        with slicer.util.tryWithErrorDisplay(_("The weights file could not be imported."), waitCursor=True):
            model = self._selectedModel()
            path = qt.QFileDialog.getOpenFileName(
                slicer.util.mainWindow(), _("Weights file for {title}").format(title=model.title), "",
                _("Model weights (*.pth *.pt *.ckpt *.model *.tar);;All files (*)"))
            if not path or self._importing:  # a second click that reached us while the first import runs
                return
            self._importing = True
            self._updateGui()
            try:
                # In the engine's Python (the load-check imports torch, which must stay out of Slicer's process);
                # the GUI keeps painting meanwhile and the buttons above stay disabled.
                installed = self.logic.importWeights(model.id, path, pump=slicer.app.processEvents)
            finally:
                self._importing = False
            self._appendLog(f"Imported {path} as {installed}")
            self._populateModels()
            self._updateGui()

    def onOpenCacheFolder(self):
        with slicer.util.tryWithErrorDisplay(_("The cache folder could not be opened.")):
            folder = self.logic.cacheFolder()
            folder.mkdir(parents=True, exist_ok=True)
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(folder)))

    # --------------------------------------------------------------------------------------- structures
    def _fillStructures(self, model):
        tree = self.ui.structureTreeWidget
        excluded = self._excludedStructures()
        self._fillingStructures = True
        try:
            tree.clear()
            for title, names in ((_("Organs"), model.organs), (_("Tumors"), model.tumors)):
                if not names:
                    continue
                group = qt.QTreeWidgetItem([f"{title} ({len(names)})"])
                group.setFlags(group.flags() | qt.Qt.ItemIsUserCheckable | qt.Qt.ItemIsAutoTristate)
                tree.addTopLevelItem(group)
                for name in names:
                    structure = next(s for s in model.structures if s.name == name)
                    item = qt.QTreeWidgetItem([name])
                    item.setData(0, qt.Qt.UserRole, name)
                    item.setToolTip(0, structure.meaning)
                    item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
                    item.setCheckState(0, qt.Qt.Unchecked if name in excluded else qt.Qt.Checked)
                    item.setData(0, qt.Qt.DecorationRole, qt.QColor(*structure.color))
                    group.addChild(item)
                group.setExpanded(True)
        finally:
            self._fillingStructures = False
        self._updateStructureCount()

    def _syncStructureChecks(self):
        """Tick the tree as the parameter node says (it changes when a scene with AtlasSeg settings is loaded)."""
        excluded = self._excludedStructures()
        self._fillingStructures = True
        try:
            for item in self._structureItems():
                wanted = qt.Qt.Unchecked if item.data(0, qt.Qt.UserRole) in excluded else qt.Qt.Checked
                if item.checkState(0) != wanted:
                    item.setCheckState(0, wanted)
        finally:
            self._fillingStructures = False
        self._updateStructureCount()

    def _excludedStructures(self) -> set:
        text = self._parameterNode.excludedStructures if self._parameterNode else ""
        return {name for name in text.split(",") if name}

    def _structureItems(self):
        tree = self.ui.structureTreeWidget
        for groupIndex in range(tree.topLevelItemCount):
            group = tree.topLevelItem(groupIndex)
            for childIndex in range(group.childCount()):
                yield group.child(childIndex)

    def _selectedStructures(self) -> tuple:
        model = self._selectedModel()
        if model is None:
            return ()
        excluded = self._excludedStructures()
        return tuple(s.name for s in model.structures if s.name not in excluded)

    def onStructureChanged(self, item, column):
        # A group's own change is followed by its children's (auto-tristate); those are what count.
        if self._fillingStructures or self._parameterNode is None or item.data(0, qt.Qt.UserRole) is None:
            return
        excluded = [i.data(0, qt.Qt.UserRole) for i in self._structureItems() if i.checkState(0) == qt.Qt.Unchecked]
        self._parameterNode.excludedStructures = ",".join(excluded)
        self._updateStructureCount()

    def _checkAllStructures(self, checked: bool):
        model = self._selectedModel()
        if model is None:
            return
        # Through the parameter node, which then ticks the tree (one change instead of one per structure).
        self._parameterNode.excludedStructures = "" if checked else ",".join(s.name for s in model.structures)

    def _updateStructureCount(self):
        model = self._selectedModel()
        total = len(model.structures) if model else 0
        self.ui.structureCountLabel.text = _("{n} of {total} ticked").format(n=len(self._selectedStructures()),
                                                                             total=total)

    # ------------------------------------------------------------------------------------------- device
    def _refreshDeviceInfo(self, refresh: bool = False):
        """Ask the engine's Python what torch sees, in a process of its own (never import torch here: it froze
        the panel and stayed loaded in Slicer); the label fills in when the answer arrives."""
        if not refresh and self.logic.cachedDeviceInfo() is not None:
            self._showDeviceInfo(self.logic.cachedDeviceInfo())
            return
        self.logic.startDeviceProbe()
        self.ui.deviceInfoLabel.text = _("Detecting the GPU…")
        self._probeTimer.start()

    def _onProbeTimer(self):
        info = self.logic.pollDeviceProbe()
        if info is not None:
            self._probeTimer.stop()
            self._showDeviceInfo(info)

    def _showDeviceInfo(self, info):
        self.ui.deviceInfoLabel.text = _("Detected: {summary}").format(summary=info.summary())
        self._updateGui()

    # ----------------------------------------------------------------------------------------- estimate
    def _refreshEstimate(self):
        """Estimate each quality for this CT and model when either (or the device) changed: in the engine's
        Python, a process of its own (it imports torch and resamples the CT), polled by ``_estimateTimer``."""
        params = self._parameterNode
        volume = params.inputVolume if params is not None else None
        model = self._selectedModel()
        if volume is None or volume.GetImageData() is None or model is None or self._torchMissing \
                or self._missingRequirements:
            if self._estimateKey is not None or self._estimateResult is not None:
                self.logic.cancelEstimate()
                self._estimateTimer.stop()
                self._estimateKey, self._estimateResult = None, None
            self._showEstimate()
            return
        if self._job is not None and self._job.kind == "run":
            self._showEstimate()
            return  # not beside a run (both want the cores); it is asked again once the run has ended
        key = self.logic.estimateKey(volume, model.id, params.device)
        if key == self._estimateKey:
            self._showEstimate()
            return
        self._estimateKey, self._estimateResult = key, None
        try:
            self._estimateResult = self.logic.startEstimate(volume, model.id, params.device)
        except Exception as exc:  # noqa: BLE001 - no estimate is no reason to stop the panel (e.g. a full disk)
            logging.warning("AtlasSeg: no time estimate: %s", exc)
            self._estimateResult = QualityEstimate(error=str(exc))
        if self._estimateResult is None:
            self._estimateTimer.start()
        self._showEstimate()

    def _onEstimateTimer(self):
        result = self.logic.pollEstimate()
        if result is not None:
            self._estimateTimer.stop()
            self._estimateResult = result
            self._showEstimate()
        elif not self.logic.estimating():
            self._estimateTimer.stop()

    def _showEstimate(self):
        """Each quality's item with its estimate ("Balanced — 150 windows, ~4 min") and the chosen one below."""
        result = self._estimateResult
        combo = self.ui.qualityComboBox
        for index in range(combo.count):
            quality = combo.itemData(index)
            text = result.text(quality) if result is not None else ""
            title = _(QUALITY_TITLES.get(quality, quality))
            combo.setItemText(index, f"{title} — {text}" if text else title)
        params = self._parameterNode
        quality = params.quality if params is not None else ""
        if self._estimateKey is None:
            label = ""
        elif result is None:
            label = _("Estimating the time for this CT…")
        elif result.error:
            label = _("No time estimate: {error}").format(error=result.error)
        elif not result.text(quality):
            label = _("{quality}: no estimate (this model has no coarse spacing; it runs at full resolution)").format(
                quality=_(QUALITY_TITLES.get(quality, quality)))
        else:
            entry = result.presets[quality]
            runs = f"{entry.get('backend', '')} {entry.get('precision', '')}".strip()
            title = _(QUALITY_TITLES.get(quality, quality))
            if entry.get("total_s") is None:
                label = _("{quality}: {windows} windows on this CT ({runs}); the time shows after this computer's "
                          "first run of the model").format(quality=title, windows=entry["windows"], runs=runs)
            else:
                label = _("{quality}: {estimate} on this CT ({runs})").format(
                    quality=title, estimate=result.text(quality), runs=runs)
        self.ui.qualityEstimateLabel.text = label

    def onDeviceChanged(self, index):
        if self._parameterNode is not None and index >= 0:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index)

    def _setChoice(self, name: str, combo, index: int):
        if self._parameterNode is not None and index >= 0:
            setattr(self._parameterNode, name, combo.itemData(index))

    # ---------------------------------------------------------------------------------------------- run
    def onApplyButton(self):
        if self._job is not None and self._job.kind == "run":
            self._cancelJob(_("Cancelled: the scene was not changed."))
            return
        with slicer.util.tryWithErrorDisplay(_("AtlasSeg could not start the segmentation."), waitCursor=True):
            if not self._ensureDependencies():
                return
            model = self._selectedModel()
            if not model.downloaded:
                question = _("The weights of {title} ({size}) are not on this computer yet. Download them now into "
                             "{folder}? The segmentation starts when the download is complete.").format(
                    title=model.title, size=model.sizeText(), folder=self.logic.cacheFolder())
                if slicer.util.confirmOkCancelDisplay(question, _("AtlasSeg: download model")):
                    self._startDownload(model, thenRun=True)
                return
            self._startRun()

    def _startRun(self):
        params = self._parameterNode
        selected = self._selectedStructures()
        model = self._selectedModel()
        options = RunOptions(modelId=model.id,
                             structures=() if len(selected) == len(model.structures) else selected,
                             device=params.device, quality=params.quality, backend=params.backend,
                             precision=params.precision)
        prepared = self.logic.prepareRun(params.inputVolume, options)
        try:
            self.ui.logTextEdit.clear()
            self._appendLog(" ".join(prepared.command))
            runner = self.logic.startRun(prepared, logCallback=self._appendLog)
        except Exception:
            prepared.cleanup()
            raise
        self._job = _Job(kind="run", task=runner, prepared=prepared, inputVolume=params.inputVolume,
                         targetSegmentation=params.outputSegmentation if params.overwrite else None,
                         modelId=model.id)
        self.ui.runProgressBar.value = 0
        self.ui.runStatusLabel.text = _("Starting {title}…").format(title=model.title)
        self._timer.start()
        self._updateGui()

    def _cancelJob(self, message: str):
        job = self._job
        if job is None:
            return
        job.task.cancel()
        self.ui.runStatusLabel.text = message

    def _onTimer(self):
        job = self._job
        if job is None:
            self._timer.stop()
            return
        events = job.task.poll()
        if job.kind == "download":
            self._showDownloadProgress(job, events)
        else:
            self._showRunProgress(job)
        if job.task.state is not RunState.RUNNING:
            self._timer.stop()
            self._job = None
            try:
                if job.kind == "download":
                    self._finishDownload(job)
                else:
                    self._finishRun(job)
            finally:
                # tryWithErrorDisplay re-raises after showing the error: the buttons must come back regardless.
                self._updateGui()

    def _showRunProgress(self, job):
        progress = job.task.lastProgress
        elapsed = job.task.elapsedSeconds
        if progress is None:
            self.ui.runStatusLabel.text = _("Starting the engine — {elapsed} elapsed").format(
                elapsed=formatDuration(elapsed))
            return
        self.ui.runProgressBar.value = int(round(1000 * progress.fraction))
        self.ui.runProgressBar.format = f"{progress.stage} %p%"
        self.ui.runStatusLabel.text = progressText(progress.stage, progress.fraction, progress.message, elapsed)

    def _showDownloadProgress(self, job, events):
        for event in events:
            if event.kind == "progress":
                self.ui.downloadProgressBar.value = int(round(1000 * event.fraction))
                self.ui.downloadProgressBar.format = f"{event.message} (%p%)"

    def _finishDownload(self, job):
        result = job.task.result
        if result.state is RunState.SUCCEEDED:
            self._appendLog(f"Weights ready: {result.outdir}")
            self._populateModels()
            if job.thenRun and (self._parameterNode is None or self._parameterNode.inputVolume is None):
                # The scene was closed while the weights downloaded: nothing to segment any more.
                self.ui.runStatusLabel.text = _("The weights are ready; select a CT and click Apply.")
            elif job.thenRun:
                with slicer.util.tryWithErrorDisplay(_("AtlasSeg could not start the segmentation."), waitCursor=True):
                    self._startRun()
        elif result.state is RunState.CANCELLED:
            self._appendLog("Download cancelled; the next download resumes where it stopped.")
        else:
            self._appendLog(f"Download failed: {result.errorMessage}")
            slicer.util.errorDisplay(_("Downloading the model failed:\n{error}").format(error=result.errorMessage),
                                     windowTitle=_("AtlasSeg: download failed"))

    def _finishRun(self, job):
        result = job.task.result
        try:
            if result.state is RunState.SUCCEEDED:
                self.ui.runProgressBar.value = 1000
                with slicer.util.tryWithErrorDisplay(
                        _("The segmentation finished, but its results could not be loaded."), waitCursor=True):
                    results = self.logic.loadResults(result.outdir or job.prepared.outputDir, job.inputVolume,
                                                     segmentationNode=job.targetSegmentation,
                                                     structures=job.prepared.options.structures)
                    self._showResults(results, job, result.elapsedSeconds)
            elif result.state is RunState.CANCELLED:
                self.ui.runProgressBar.value = 0
                self.ui.runStatusLabel.text = _("Cancelled after {elapsed}: the scene was not changed.").format(
                    elapsed=formatDuration(result.elapsedSeconds))
            else:
                self.ui.runStatusLabel.text = _("Failed after {elapsed}.").format(
                    elapsed=formatDuration(result.elapsedSeconds))
                slicer.util.errorDisplay(_("Segmentation failed:\n{message}").format(message=result.errorMessage),
                                         windowTitle=_("AtlasSeg"), detailedText="\n".join(result.logTail))
        finally:
            job.prepared.cleanup()
            if result.state is RunState.SUCCEEDED:
                # The run recorded this computer's seconds per window: the estimates can now say (better) times.
                self.logic.forgetEstimates()
                self._estimateKey = None

    def _showResults(self, results, job, elapsedSeconds):
        segmentationNode = results.segmentationNode
        self._parameterNode.outputSegmentation = segmentationNode
        displayNode = segmentationNode.GetDisplayNode()
        if displayNode is not None:
            displayNode.SetVisibility(True)
        slicer.util.setSliceViewerLayers(background=job.inputVolume)
        if self._parameterNode.show3D:
            self.logic.showIn3D(segmentationNode)
        found = len(results.segmentIds)
        text = _("Done in {elapsed}: {n} segments in '{name}'.").format(
            elapsed=formatDuration(elapsedSeconds), n=found, name=segmentationNode.GetName())
        if results.backend:  # what actually ran (auto may have picked OpenVINO, or fallen back to torch)
            text += " " + _("Network: {backend}.").format(backend=results.backend.split(" (")[0])
            self._appendLog(f"Network backend: {results.backend}")
        if results.emptyStructures:
            text += " " + _("Not found: {names}.").format(names=", ".join(results.emptyStructures))
        # The engine's warnings (demo model on a real CT, implausible volumes or HU, organ cut by the scan's edge,
        # regularized DICOM…) go where the result is announced, never only into a file.
        if results.warnings:
            text += " " + _("{n} warning(s): check before use (see the log).").format(n=len(results.warnings))
            self.ui.runStatusLabel.setStyleSheet("color: #b35900; font-weight: bold")
        else:
            self.ui.runStatusLabel.setStyleSheet("")
        self.ui.runStatusLabel.text = text
        self.ui.runStatusLabel.toolTip = "\n".join(results.warnings)
        for warning in results.warnings:
            self._appendLog(f"WARNING: {warning}")
        for name, volume in sorted(results.volumesMl.items()):
            self._appendLog(f"{name}: {volume:.1f} ml")
        # Tumor probability maps came with the result: open the sensitivity and review section on it.
        self.reviewPanel.setSegmentationNode(segmentationNode)

    def onShow3DToggled(self, checked):
        segmentationNode = self._parameterNode.outputSegmentation if self._parameterNode else None
        if segmentationNode is None or self._job is not None:
            return
        with slicer.util.tryWithErrorDisplay(_("The 3D view could not be updated."), waitCursor=True):
            self.logic.showIn3D(segmentationNode, show=checked)

    def onUndo(self):
        with slicer.util.tryWithErrorDisplay(_("The last run could not be undone."), waitCursor=True):
            self.logic.undoLastRun(self._parameterNode.outputSegmentation)
            self.ui.runStatusLabel.text = _("The segmentation is back as it was before the last run.")
            self._updateGui()

    # ---------------------------------------------------------------------------------------------- log
    def _appendLog(self, line: str):
        self.ui.logTextEdit.appendPlainText(line)
        logging.debug("AtlasSeg engine: %s", line)

    def onCopyLog(self):
        qt.QApplication.clipboard().setText(self.ui.logTextEdit.toPlainText())


#
# Self-test (Reload and Test in developer mode, or the extension's ctest py_AtlasSeg)
#
class AtlasSegTest(ScriptedLoadableModuleTest):
    """Runs the committed demo model on the synthetic phantom and checks the segments against its truth."""

    # The demo model (trained on phantoms 0..31) scores 0.95-0.98 on organs of unseen phantoms; these bounds leave
    # room for CPU/GPU differences. Liver tumors vary too much between phantoms (Dice 0.3-0.9) to bound.
    MINIMUM_DICE = {"liver": 0.9, "spleen": 0.85, "kidney_right": 0.85, "kidney_left": 0.85, "pancreas": 0.8,
                    "aorta": 0.8}

    def setUp(self):
        # A factory build of Slicer (the extension's ctest) has neither PyTorch nor MONAI: skip, and say why,
        # instead of failing on an import. (setUp: ctest runs the test_ methods; Reload and Test runs runTest.)
        missing = [name for name in ("torch", "monai") if importlib.util.find_spec(name) is None]
        if missing:
            message = (f"AtlasSeg self-test skipped: {' and '.join(missing)} not installed (install PyTorch with the "
                       "PyTorch extension, then click Install in the AtlasSeg panel)")
            logging.warning(message)
            raise unittest.SkipTest(message)
        slicer.mrmlScene.Clear()

    def runTest(self):
        try:
            self.setUp()
        except unittest.SkipTest as exc:  # "Reload and Test" would show a skip as "Reload and Test failed."
            self.delayDisplay(str(exc))
            return
        self.test_DemoModelOnPhantom()

    def test_DemoModelOnPhantom(self):
        # here: the self-test needs scipy (through phantom), installed by the module on first run
        import SimpleITK as sitk
        from AtlasSegLib.phantom import make_phantom

        self.delayDisplay("Loading the demo phantom")
        logic = AtlasSegLogic()
        volume = logic.loadDemoPhantom(seed=DEMO_PHANTOM_SEED)

        self.delayDisplay("Segmenting it with the demo model (a minute on a CPU)")
        results = logic.runBlocking(volume, RunOptions(modelId=DEMO_MODEL_ID, device="auto"), timeoutSeconds=900)

        segmentation = results.segmentationNode.GetSegmentation()
        names = {segmentation.GetSegment(segmentId).GetName() for segmentId in results.segmentIds}
        self.assertTrue(set(self.MINIMUM_DICE) <= names, f"missing segments: {set(self.MINIMUM_DICE) - names}")
        truth = make_phantom(seed=DEMO_PHANTOM_SEED, tumors=True).labels
        for name, minimum in self.MINIMUM_DICE.items():
            predicted = bridge.arrayFromSegment(results.segmentationNode, name, volume)
            expected = sitk.GetArrayViewFromImage(truth[name]) > 0
            dice = 2.0 * np.logical_and(predicted > 0, expected).sum() / max(1, (predicted > 0).sum() + expected.sum())
            self.assertGreater(dice, minimum, f"{name}: Dice {dice:.3f}")
        self.assertIsNotNone(logic.probabilityVolume(results.segmentationNode, "liver_tumor"))
        self.delayDisplay("Test passed")

