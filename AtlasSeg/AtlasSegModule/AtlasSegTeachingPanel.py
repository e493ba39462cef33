"""The "Teaching" section of the AtlasSeg panel: a thin Qt layer over ``AtlasSegTeaching`` (no logic here).

* Demo phantom controls (seed, tumor count, diameters, contrast, structures shown), used by *Load demo phantom*
  at the top of the panel and by this section's own button.
* Insert tumor: a point placed in a slice view (markups), diameter and contrast sliders, an optional organ
  segment; *Insert tumor* and *Undo insert* (one step per insert; undo puts back the exact voxels).
* Answers: *Reveal answers* toggles the "Teaching truth" segmentation; *Truth beside result* shows the truth in
  the right slice view and the model's result in the left one, on the same CT.

Usage in the module widget's ``setup()``::

    self.teachingPanel = TeachingPanel(self.layout, self)
"""
import ctk
import qt

import slicer

from AtlasSegModule.AtlasSegLogic import DEMO_PHANTOM_SEED
from AtlasSegModule.AtlasSegTeaching import (CONTRAST_RANGE_HU, DEFAULT_CONTRAST_HU, DEFAULT_DIAMETER_MM,
                                             DIAMETER_RANGE_MM, TeachingLogic)

try:
    from slicer.i18n import tr as _
except ImportError:  # Slicer < 5.4 has no translation support
    def _(text):
        return text

# = AtlasSegLib.phantom.STRUCTURES (not imported: that module needs SimpleITK/scipy, which the panel must not
# require before AtlasSeg's packages are installed).
PHANTOM_STRUCTURES = ("liver", "spleen", "kidney_right", "kidney_left", "pancreas", "aorta", "vertebrae",
                      "liver_tumor")
POINT_NAME = "Teaching point"


class TeachingPanel:
    """Collapsible "Teaching" section. ``moduleWidget`` is the AtlasSeg widget (its logic adds phantoms; its
    parameter node's input volume and output segmentation are the defaults here)."""

    def __init__(self, parentLayout, moduleWidget):
        self.moduleWidget = moduleWidget
        self.logic = TeachingLogic()
        self._besideSaved = None  # (layout, display nodes' views) while "Truth beside result" is on
        self.section = ctk.ctkCollapsibleButton()
        self.section.text = _("Teaching")
        self.section.collapsed = True
        parentLayout.addWidget(self.section)
        layout = qt.QVBoxLayout(self.section)

        # --- demo phantom -------------------------------------------------------------------------------
        phantomBox = qt.QGroupBox(_("Demo phantom"))
        form = qt.QFormLayout(phantomBox)
        self.seedSpin = qt.QSpinBox()
        self.seedSpin.setRange(0, 2 ** 31 - 1)
        self.seedSpin.value = DEMO_PHANTOM_SEED
        self.seedSpin.toolTip = _("The same seed gives the same patient (the demo uses 2024).")
        form.addRow(_("Seed:"), self.seedSpin)
        self.randomTumorsCheck = qt.QCheckBox(_("Random tumors (1-4, as the plain demo)"))
        self.randomTumorsCheck.checked = True
        form.addRow(self.randomTumorsCheck)
        self.countSpin = qt.QSpinBox()
        self.countSpin.setRange(0, 10)
        self.countSpin.value = 2
        form.addRow(_("Tumor count:"), self.countSpin)
        self.diameterRange = ctk.ctkRangeWidget()
        self.diameterRange.minimum, self.diameterRange.maximum = DIAMETER_RANGE_MM
        self.diameterRange.minimumValue, self.diameterRange.maximumValue = 10.0, 25.0
        self.diameterRange.suffix = " mm"
        self.diameterRange.toolTip = _("Each tumor's diameter is drawn from this range.")
        form.addRow(_("Diameters:"), self.diameterRange)
        self.phantomContrast = ctk.ctkSliderWidget()
        self.phantomContrast.minimum, self.phantomContrast.maximum = CONTRAST_RANGE_HU
        self.phantomContrast.value = DEFAULT_CONTRAST_HU
        self.phantomContrast.suffix = " HU"
        self.phantomContrast.toolTip = _("Mean HU of the tumors relative to the liver: negative = darker "
                                         "(most liver tumors), near 0 = hard to see, positive = brighter.")
        form.addRow(_("Contrast:"), self.phantomContrast)
        self.structureList = qt.QListWidget()
        for name in PHANTOM_STRUCTURES:
            item = qt.QListWidgetItem(name)
            item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
            item.setCheckState(qt.Qt.Checked)
            self.structureList.addItem(item)
        self.structureList.setMaximumHeight(110)
        self.structureList.toolTip = _("Structures whose truth is loaded into the hidden 'Teaching truth' and "
                                       "that the demo model segments (the structure list above is set to them).")
        form.addRow(_("Structures shown:"), self.structureList)
        self.loadPhantomButton = qt.QPushButton(_("Load demo phantom with these settings"))
        form.addRow(self.loadPhantomButton)
        layout.addWidget(phantomBox)
        self.randomTumorsCheck.connect("toggled(bool)", self._updateEnabled)
        self.loadPhantomButton.connect("clicked(bool)", self.onLoadPhantom)

        # --- insert a tumor -----------------------------------------------------------------------------
        insertBox = qt.QGroupBox(_("Insert a tumor"))
        form = qt.QFormLayout(insertBox)
        self.volumeSelector = slicer.qMRMLNodeComboBox()
        self.volumeSelector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
        self.volumeSelector.addEnabled = self.volumeSelector.removeEnabled = False
        self.volumeSelector.noneEnabled = True
        self.volumeSelector.setMRMLScene(slicer.mrmlScene)
        self.volumeSelector.toolTip = _("The CT the tumor goes into (its voxels are changed; Undo insert restores "
                                        "them exactly).")
        form.addRow(_("CT:"), self.volumeSelector)
        self.pointPlace = slicer.qSlicerMarkupsPlaceWidget()
        self.pointPlace.setMRMLScene(slicer.mrmlScene)
        self.pointPlace.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceSingleMarkup
        self.pointPlace.toolTip = _("Click the arrow, then click in a slice view where the tumor's centre goes.")
        form.addRow(_("Centre:"), self.pointPlace)
        self.organSelector = slicer.qMRMLSegmentSelectorWidget()
        self.organSelector.setMRMLScene(slicer.mrmlScene)
        self.organSelector.noneEnabled = True
        self.organSelector.toolTip = _("Optional: the organ segment (e.g. the model's liver). The tumor stays "
                                       "inside it and its contrast is relative to the organ's mean HU; without "
                                       "one, relative to the tissue around the point.")
        form.addRow(_("Organ:"), self.organSelector)
        self.diameterSlider = ctk.ctkSliderWidget()
        self.diameterSlider.minimum, self.diameterSlider.maximum = DIAMETER_RANGE_MM
        self.diameterSlider.singleStep = 1.0
        self.diameterSlider.value = DEFAULT_DIAMETER_MM
        self.diameterSlider.suffix = " mm"
        form.addRow(_("Diameter:"), self.diameterSlider)
        self.contrastSlider = ctk.ctkSliderWidget()
        self.contrastSlider.minimum, self.contrastSlider.maximum = CONTRAST_RANGE_HU
        self.contrastSlider.singleStep = 5.0
        self.contrastSlider.value = DEFAULT_CONTRAST_HU
        self.contrastSlider.suffix = " HU"
        form.addRow(_("Contrast:"), self.contrastSlider)
        buttons = qt.QHBoxLayout()
        self.insertButton = qt.QPushButton(_("Insert tumor"))
        self.undoButton = qt.QPushButton(_("Undo insert"))
        self.undoButton.toolTip = _("Put back the CT's voxels as they were before the last insert (an exact copy "
                                    "of the changed box was kept) and remove its truth segment.")
        buttons.addWidget(self.insertButton)
        buttons.addWidget(self.undoButton)
        form.addRow(buttons)
        layout.addWidget(insertBox)
        self.insertButton.connect("clicked(bool)", self.onInsert)
        self.undoButton.connect("clicked(bool)", self.onUndo)

        # --- answers ------------------------------------------------------------------------------------
        answers = qt.QHBoxLayout()
        self.revealButton = qt.QPushButton(_("Reveal answers"))
        self.revealButton.checkable = True
        self.revealButton.toolTip = _("Show or hide the 'Teaching truth' (inserted tumors, phantom truth).")
        self.besideButton = qt.QPushButton(_("Truth beside result"))
        self.besideButton.toolTip = _("Two slice views side by side on the CT: the model's result on the left, the "
                                      "truth on the right. Click again to get the previous views back.")
        answers.addWidget(self.revealButton)
        answers.addWidget(self.besideButton)
        layout.addLayout(answers)
        self.statusLabel = qt.QLabel("")
        self.statusLabel.wordWrap = True
        layout.addWidget(self.statusLabel)
        self.revealButton.connect("toggled(bool)", self.onReveal)
        self.besideButton.connect("clicked(bool)", self.onBeside)
        self._updateEnabled()

    # ------------------------------------------------------------------------------------------ phantom
    def customised(self) -> bool:
        """Whether the phantom controls differ from the plain demo's."""
        return (not self.randomTumorsCheck.checked or self.seedSpin.value != DEMO_PHANTOM_SEED
                or len(self._shownStructures()) != len(PHANTOM_STRUCTURES))

    def _shownStructures(self) -> list:
        return [self.structureList.item(n).text() for n in range(self.structureList.count)
                if self.structureList.item(n).checkState() == qt.Qt.Checked]

    def loadPhantom(self):
        """The demo phantom with these controls (the module's *Load demo phantom* calls this); returns the CT."""
        controls = {}
        if not self.randomTumorsCheck.checked:
            controls = dict(tumorCount=int(self.countSpin.value),
                            diameterMm=(float(self.diameterRange.minimumValue),
                                        float(self.diameterRange.maximumValue)),
                            contrastHu=float(self.phantomContrast.value))
        shown = self._shownStructures()
        volume, truth, phantom = self.logic.loadPhantom(self.moduleWidget.logic, seed=int(self.seedSpin.value),
                                                        structures=shown, **controls)
        self.volumeSelector.setCurrentNode(volume)
        self.revealButton.checked = False
        self.statusLabel.text = _("Phantom seed {seed}: {n} tumor(s) inserted; answers hidden.").format(
            seed=phantom.seed, n=len(phantom.tumors))
        return volume, shown

    def onLoadPhantom(self):
        with slicer.util.tryWithErrorDisplay(_("The demo phantom could not be created."), waitCursor=True):
            self.moduleWidget.onLoadPhantom()

    # ------------------------------------------------------------------------------------------- insert
    def _pointNode(self):
        node = self.pointPlace.currentNode()
        if node is None:
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", POINT_NAME)
            node.CreateDefaultDisplayNodes()
            self.pointPlace.setCurrentNode(node)
        return node

    def onInsert(self):
        volume = self.volumeSelector.currentNode()
        with slicer.util.tryWithErrorDisplay(_("The tumor could not be inserted."), waitCursor=True):
            point = self._pointNode()
            if volume is None or point.GetNumberOfControlPoints() < 1:
                raise ValueError(_("Choose a CT and place the centre point in a slice view first."))
            ras = [0.0, 0.0, 0.0]
            point.GetNthControlPointPositionWorld(point.GetNumberOfControlPoints() - 1, ras)
            insertion = self.logic.insertTumor(
                volume, ras, diameterMm=float(self.diameterSlider.value), contrastHu=float(self.contrastSlider.value),
                organSegmentation=self.organSelector.currentNode(),
                organSegmentId=self.organSelector.currentSegmentID() or None)
            self.statusLabel.text = _("Inserted: {d:.0f} mm, {c:+.0f} HU ({n} voxels changed). "
                                      "Answers {state}.").format(
                d=float(self.diameterSlider.value), c=float(self.contrastSlider.value), n=insertion.changedVoxels,
                state=_("shown") if self.revealButton.checked else _("hidden"))
            TeachingLogic.setAnswersVisible(volume, self.revealButton.checked)
        self._updateEnabled()

    def onUndo(self):
        with slicer.util.tryWithErrorDisplay(_("The insert could not be undone."), waitCursor=True):
            self.logic.undoInsert()
            self.statusLabel.text = _("Last insert undone: the CT's voxels are as before it.")
        self._updateEnabled()

    # ------------------------------------------------------------------------------------------ answers
    def onReveal(self, checked):
        volume = self.volumeSelector.currentNode()
        if volume is not None and not TeachingLogic.setAnswersVisible(volume, checked):
            self.statusLabel.text = _("No answers yet: insert a tumor or load the demo phantom.")
        self.revealButton.text = _("Hide answers") if checked else _("Reveal answers")

    def onBeside(self):
        if self._besideSaved is not None:  # second click: back to the views as they were
            self._restoreViews()
            return
        volume = self.volumeSelector.currentNode()
        with slicer.util.tryWithErrorDisplay(_("The views could not be arranged."), waitCursor=False):
            truth = TeachingLogic.truthNode(volume) if volume is not None else None
            if truth is None:
                raise ValueError(_("No 'Teaching truth' for this CT yet: insert a tumor or load the demo phantom."))
            params = getattr(self.moduleWidget, "_parameterNode", None)
            result = params.outputSegmentation if params is not None else None
            layoutManager = slicer.app.layoutManager()
            layout = layoutManager.layout
            layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)
            slicer.util.setSliceViewerLayers(background=volume, fit=True)
            red = layoutManager.sliceWidget("Red").mrmlSliceNode().GetID()
            yellow = layoutManager.sliceWidget("Yellow").mrmlSliceNode().GetID()
            self._besideSaved = (layout, TeachingLogic.showBeside(truth, result, [yellow], [red]))
            self.besideButton.text = _("Back to the previous views")
            self.revealButton.checked = True

    def _restoreViews(self):
        if self._besideSaved is None:
            return
        layout, saved = self._besideSaved
        self._besideSaved = None
        TeachingLogic.restoreViews(saved)
        slicer.app.layoutManager().setLayout(layout)
        self.besideButton.text = _("Truth beside result")

    def _updateEnabled(self, *args):
        custom = not self.randomTumorsCheck.checked
        for widget in (self.countSpin, self.diameterRange, self.phantomContrast):
            widget.enabled = custom
        self.undoButton.enabled = self.logic.canUndo()

    def cleanup(self):
        self._besideSaved = None  # the scene (and its display nodes) may be gone: nothing to restore
        self.logic.forgetVolume(None)
