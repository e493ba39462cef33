"""The "Export" section of the AtlasSeg panel: a thin Qt layer over ``AtlasSegExport`` (no logic here).

Usage in the module widget's ``setup()``::

    self.exportPanel = ExportPanel(self.layout, self)
"""
from pathlib import Path

import ctk
import qt
import slicer

from AtlasSegModule.AtlasSegLogic import EXPORT_FORMATS, EXPORT_ROI_NAMES, EXPORT_TUMOR_ROI_TYPES
from AtlasSegLib.errors import AtlasSegError


def _exportLogic():
    """``AtlasSegExport``, imported on first use: it needs packages the module installs on first run (cc3d,
    highdicom, …), and the panel must appear before they are there."""
    # here: see the docstring (packages installed on first run)
    from AtlasSegModule import AtlasSegExport

    return AtlasSegExport

DICOM_FORMATS = ("dicom-seg", "rtstruct")
NAMED_FORMATS = ("dicom-seg", "rtstruct", "seg-nrrd")  # = AtlasSegExport.NAMED_FORMATS (not imported: see above)


class ExportPanel:
    """Collapsible "Export" section: segmentation, format, output folder, reference DICOM folder, ROI names (model,
    TG-263 or a mapping file), tumor ROI type (RTSTRUCT), Export button, "Import AbdomenAtlas case…" button and a
    status line.

    Args:
        parentLayout: the layout the section is added to (the module panel's).
        moduleWidget: the AtlasSeg widget; its ``logic`` loads imported cases and its parameter node's
            ``outputSegmentation`` is the default segmentation to export.
    """

    def __init__(self, parentLayout, moduleWidget):
        self.moduleWidget = moduleWidget
        self.collapsibleButton = ctk.ctkCollapsibleButton()
        self.collapsibleButton.text = "Export"
        self.collapsibleButton.collapsed = True
        parentLayout.addWidget(self.collapsibleButton)
        form = qt.QFormLayout(self.collapsibleButton)

        self.segmentationSelector = slicer.qMRMLNodeComboBox()
        self.segmentationSelector.nodeTypes = ["vtkMRMLSegmentationNode"]
        self.segmentationSelector.noneEnabled = True
        self.segmentationSelector.addEnabled = False
        self.segmentationSelector.removeEnabled = False
        self.segmentationSelector.renameEnabled = False
        self.segmentationSelector.setMRMLScene(slicer.mrmlScene)
        self.segmentationSelector.toolTip = "Segmentation to export (default: the last AtlasSeg result)"
        form.addRow("Segmentation:", self.segmentationSelector)

        self.formatCombo = qt.QComboBox()
        for key, label in EXPORT_FORMATS:
            self.formatCombo.addItem(label, key)
        self.formatCombo.toolTip = ("DICOM SEG for PACS and viewers, RTSTRUCT for radiotherapy planning systems, "
                                    ".seg.nrrd for Slicer, AbdomenAtlas case folder (NIfTI) for research")
        form.addRow("Format:", self.formatCombo)

        self.outputFolderEdit = ctk.ctkPathLineEdit()
        self.outputFolderEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.outputFolderEdit.settingKey = "AtlasSeg/ExportFolder"
        self.outputFolderEdit.toolTip = "Folder the file (or AbdomenAtlas case folder) is written into"
        form.addRow("Output folder:", self.outputFolderEdit)

        self.referenceDicomEdit = ctk.ctkPathLineEdit()
        self.referenceDicomEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.referenceDicomEdit.toolTip = ("DICOM exports only: folder holding the CT's DICOM series. Leave empty when "
                                           "the CT was loaded from Slicer's DICOM database.")
        form.addRow("Reference DICOM:", self.referenceDicomEdit)

        self.roiNamesCombo = qt.QComboBox()
        for key, label in EXPORT_ROI_NAMES:
            self.roiNamesCombo.addItem(label, key)
        self.roiNamesCombo.toolTip = ("Names of the ROIs/segments in DICOM SEG, RTSTRUCT and .seg.nrrd: the model's "
                                      "names, AAPM TG-263 standard names (tumors as GTV_<organ>), or your own "
                                      "mapping file")
        form.addRow("ROI names:", self.roiNamesCombo)

        self.nameMapEdit = ctk.ctkPathLineEdit()
        self.nameMapEdit.filters = ctk.ctkPathLineEdit.Files
        self.nameMapEdit.nameFilters = ["ROI name mapping (*.json *.csv)"]
        self.nameMapEdit.settingKey = "AtlasSeg/ExportNameMap"
        self.nameMapEdit.toolTip = ('Mapping file: JSON {"liver": "Liver", ...} or CSV lines structure,name; '
                                    "structures it leaves out keep their model names")
        form.addRow("Name mapping file:", self.nameMapEdit)

        self.tumorRoiTypeCombo = qt.QComboBox()
        for key, label in EXPORT_TUMOR_ROI_TYPES:
            self.tumorRoiTypeCombo.addItem(label, key)
        self.tumorRoiTypeCombo.toolTip = ("RTSTRUCT only: RT ROI Interpreted Type of tumor ROIs. Automatic candidates "
                                          "are unreviewed, so by default the type is left for the planner to set")
        form.addRow("Tumor ROI type:", self.tumorRoiTypeCombo)

        self.overwriteCheckBox = qt.QCheckBox("Replace an existing file")
        form.addRow("", self.overwriteCheckBox)

        buttons = qt.QHBoxLayout()
        self.exportButton = qt.QPushButton("Export")
        self.exportButton.toolTip = "Write the selected segmentation in the chosen format"
        self.importButton = qt.QPushButton("Import AbdomenAtlas case…")
        self.importButton.toolTip = "Load a case folder (ct.nii.gz + segmentations/*.nii.gz) as volume + segmentation"
        buttons.addWidget(self.exportButton)
        buttons.addWidget(self.importButton)
        form.addRow(buttons)

        self.statusLabel = qt.QLabel("")
        self.statusLabel.wordWrap = True
        self.statusLabel.setTextInteractionFlags(qt.Qt.TextSelectableByMouse)
        form.addRow(self.statusLabel)

        self.exportButton.connect("clicked(bool)", self.onExport)
        self.importButton.connect("clicked(bool)", self.onImport)
        self.formatCombo.connect("currentIndexChanged(int)", self.updateState)
        self.roiNamesCombo.connect("currentIndexChanged(int)", self.updateState)
        self.segmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateState)
        self.collapsibleButton.connect("contentsCollapsed(bool)", self.onCollapsed)
        self.updateState()

    # ------------------------------------------------------------------------------------------- state
    def currentFormat(self) -> str:
        return self.formatCombo.itemData(self.formatCombo.currentIndex)

    def onCollapsed(self, collapsed):
        # Opening the section offers the latest AtlasSeg result when nothing is chosen yet.
        if not collapsed and self.segmentationSelector.currentNode() is None:
            params = getattr(self.moduleWidget, "_parameterNode", None)
            node = getattr(params, "outputSegmentation", None) if params is not None else None
            if node is not None:
                self.segmentationSelector.setCurrentNode(node)
        self.updateState()

    def updateState(self, *_):
        fmt = self.currentFormat()
        self.referenceDicomEdit.enabled = fmt in DICOM_FORMATS
        self.roiNamesCombo.enabled = fmt in NAMED_FORMATS
        namesChoice = self.roiNamesCombo.itemData(self.roiNamesCombo.currentIndex)
        self.nameMapEdit.enabled = fmt in NAMED_FORMATS and namesChoice == "file"
        self.tumorRoiTypeCombo.enabled = fmt == "rtstruct"
        self.exportButton.enabled = self.segmentationSelector.currentNode() is not None

    def _showStatus(self, text: str, error: bool = False):
        self.statusLabel.text = text
        self.statusLabel.styleSheet = "color: #c0392b" if error else ""

    # ----------------------------------------------------------------------------------------- actions
    def onExport(self, *_):
        # Every error reaches the user (a Qt slot's exception only reaches the Python console): the expected
        # ones in the status line, anything else (packages not installed, a write error) in a dialog as well.
        with slicer.util.tryWithErrorDisplay("Export failed.", waitCursor=True):
            try:
                self._export()
            except Exception as exc:
                self._showStatus(f"Export failed: {exc}", error=True)
                if not isinstance(exc, (AtlasSegError, ValueError)):
                    raise

    def _export(self):
        segmentationNode = self.segmentationSelector.currentNode()
        folder = self.outputFolderEdit.currentPath
        if not folder:
            self._showStatus("Choose an output folder first.", error=True)
            return
        fmt = self.currentFormat()
        destination = Path(folder) / _exportLogic().defaultFileName(fmt, segmentationNode)
        self._showStatus(f"Exporting to {destination}…")
        slicer.app.processEvents()
        options = _exportLogic().exportOptions(
            fmt, self.roiNamesCombo.itemData(self.roiNamesCombo.currentIndex), self.nameMapEdit.currentPath or None,
            self.tumorRoiTypeCombo.itemData(self.tumorRoiTypeCombo.currentIndex))
        outcome = _exportLogic().exportSegmentation(
            segmentationNode, fmt, destination, referenceDicom=self.referenceDicomEdit.currentPath or None,
            overwrite=self.overwriteCheckBox.checked, **options)
        self.outputFolderEdit.addCurrentPathToHistory()
        self._showStatus(outcome.message())

    def onImport(self, *_):
        folder = qt.QFileDialog.getExistingDirectory(
            slicer.util.mainWindow(), "AbdomenAtlas case folder (ct.nii.gz + segmentations/)")
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay("Import failed.", waitCursor=True):
            try:
                imported = _exportLogic().importAbdomenAtlasCase(self.moduleWidget.logic, folder)
            except Exception as exc:
                self._showStatus(f"Import failed: {exc}", error=True)
                if not isinstance(exc, (AtlasSegError, ValueError)):
                    raise
                return
            slicer.util.setSliceViewerLayers(background=imported.volumeNode, fit=True)
            self.segmentationSelector.setCurrentNode(imported.results.segmentationNode)
            count = len(imported.results.segmentIds)
            self._showStatus(f"Imported {Path(folder).name}: {count} segment(s)"
                             + (f"; empty, not loaded: {', '.join(imported.results.emptyStructures)}"
                                if imported.results.emptyStructures else ""))
