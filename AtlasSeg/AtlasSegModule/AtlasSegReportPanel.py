"""The "Report" section of the AtlasSeg panel: a table of the report's rows and buttons to make and open it.

Thin on purpose: everything it shows or writes comes from Qt-free functions (``AtlasSegLib.report.build_report``,
``table_rows``, ``load_report`` and ``AtlasSegRender.renderOutputFolder`` for the 3D picture), which the tests
run headless. The module widget creates it::

    self.reportPanel = ReportPanel(self.layout, self)
    self.reportPanel.setOutputFolder(folder)   # after a run whose output folder is kept, to show its report
"""
import logging
from pathlib import Path

import ctk
import qt

import slicer

try:
    from slicer.i18n import tr as _
except ImportError:  # Slicer < 5.4 has no translation support
    def _(text):
        return text



def _reportLib():
    """``AtlasSegLib.report``, imported on first use: it needs packages the module installs on first run (pillow,
    cc3d, …), and the panel must appear before they are there."""
    # here: see the docstring (packages installed on first run)
    from AtlasSegLib import report

    return report

MAKE_TOOLTIP = _("Choose an AtlasSeg output folder and write report.html, report.csv, report.json and pictures "
                 "(frontal overview, a slice per tumor, a 3D view) into it.")
SCENE_TOOLTIP = _("Write the current AtlasSeg segmentation as it is now (after your review: removed false positives, "
                  "kept tumors) with its probability maps into a new folder, and make its report there.")
OPEN_TOOLTIP = _("Open report.html in the web browser (it is self-contained and works offline).")
OPEN_DISABLED_TOOLTIP = _("No report yet: click 'Make report…' first.")


class ReportPanel:
    """A collapsible "Report" section added to ``parentLayout``."""

    def __init__(self, parentLayout, moduleWidget):
        self.moduleWidget = moduleWidget
        self.outputDir = None
        self.htmlPath = None

        self.section = ctk.ctkCollapsibleButton()
        self.section.text = _("Report")
        self.section.collapsed = True
        parentLayout.addWidget(self.section)
        layout = qt.QVBoxLayout(self.section)

        self.folderLabel = qt.QLabel(_("No report yet."))
        self.folderLabel.wordWrap = True
        layout.addWidget(self.folderLabel)

        self.table = qt.QTableWidget(0, 0)  # columns come with the first report (see _show)
        self.table.setEditTriggers(qt.QAbstractItemView.NoEditTriggers)
        self.table.setSelectionBehavior(qt.QAbstractItemView.SelectRows)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setToolTip(_("Tumor components (volume, longest axial x perpendicular diameter, highest "
                                "probability, review status), then every structure's volume and mean HU."))
        layout.addWidget(self.table)

        self.anonymizeCheckBox = qt.QCheckBox(_("Anonymize (no patient name, ID, dates or file names)"))
        self.anonymizeCheckBox.toolTip = _("For a report that leaves the hospital: the page, table and pictures "
                                           "name no patient, study date, UID or file. (report.json keeps the input "
                                           "path for AtlasSeg's own tools: send the HTML, CSV and pictures.)")
        layout.addWidget(self.anonymizeCheckBox)

        # Two rows: three buttons side by side would make the panel wider than Slicer's usual module panel.
        buttons = qt.QGridLayout()
        self.sceneButton = qt.QPushButton(_("Report of the segmentation…"))
        self.sceneButton.toolTip = SCENE_TOOLTIP
        self.makeButton = qt.QPushButton(_("Report of an output folder…"))
        self.makeButton.toolTip = MAKE_TOOLTIP
        self.openButton = qt.QPushButton(_("Open report"))
        self.openButton.enabled = False
        self.openButton.toolTip = OPEN_DISABLED_TOOLTIP
        buttons.addWidget(self.sceneButton, 0, 0)
        buttons.addWidget(self.makeButton, 0, 1)
        buttons.addWidget(self.openButton, 1, 0, 1, 2)
        layout.addLayout(buttons)

        self.sceneButton.connect("clicked(bool)", self.onSceneReport)
        self.makeButton.connect("clicked(bool)", self.onMakeReport)
        self.openButton.connect("clicked(bool)", self.onOpenReport)

    def setOutputFolder(self, folder) -> None:
        """Remember an output folder (the default of "Make report…") and show its report if it has one."""
        self.outputDir = Path(folder) if folder else None
        report = None
        if self.outputDir is not None and (self.outputDir / "report.html").is_file():
            try:
                report = _reportLib().load_report(self.outputDir)
            except Exception as exc:  # noqa: BLE001 - an unreadable old report only means none is shown
                logging.warning("AtlasSeg: cannot read the report in %s: %s", self.outputDir, exc)
        self._show(report, self.outputDir / "report.html" if report else None)

    def onMakeReport(self) -> None:
        start = str(self.outputDir) if self.outputDir else qt.QDir.homePath()
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("AtlasSeg output folder"), start)
        if not folder:
            return
        previous = self.folderLabel.text
        with slicer.util.tryWithErrorDisplay(_("The report could not be made."), waitCursor=True):
            try:
                self.folderLabel.text = _("Drawing the 3D view…")
                slicer.app.processEvents()
                try:
                    # here: the offscreen renderer loads only when the 3D view is drawn
                    from AtlasSegModule import AtlasSegRender

                    AtlasSegRender.renderOutputFolder(folder)
                except Exception as exc:  # noqa: BLE001 - the report is useful without its 3D picture
                    logging.warning("AtlasSeg: no 3D picture for the report: %s", exc)
                self.folderLabel.text = _("Writing the report…")
                slicer.app.processEvents()
                result = _reportLib().build_report(folder, anonymize=self.anonymizeCheckBox.checked)
            except Exception:
                self.folderLabel.text = previous
                raise
            self.outputDir = Path(folder)
            self._show(result.report, result.html_path)

    def _currentSegmentation(self):
        review = getattr(self.moduleWidget, "reviewPanel", None)
        node = review.segmentationSelector.currentNode() if review is not None else None
        parameters = getattr(self.moduleWidget, "_parameterNode", None)
        return node or (parameters.outputSegmentation if parameters is not None else None)

    def onSceneReport(self) -> None:
        segmentationNode = self._currentSegmentation()
        if segmentationNode is None:
            slicer.util.errorDisplay(_("Run a model first, or select a segmentation in the review section."),
                                     windowTitle=_("AtlasSeg report"))
            return
        start = str(self.outputDir.parent) if self.outputDir else qt.QDir.homePath()
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(),
                                                     _("New or empty folder for the report"), start)
        if not folder:
            return
        # here: AtlasSegExport needs packages the module installs on first run (highdicom, …)
        from AtlasSegModule import AtlasSegExport

        with slicer.util.tryWithErrorDisplay(_("The report could not be made."), waitCursor=True):
            self.folderLabel.text = _("Writing the segmentation and drawing the report…")
            slicer.app.processEvents()
            result = AtlasSegExport.makeReport(segmentationNode, folder, progress=self._progress,
                                               anonymize=self.anonymizeCheckBox.checked)
            self.outputDir = Path(folder)
            self._show(result.report, result.html_path)

    def _progress(self, stage: str, fraction: float, message: str = "") -> None:
        """The report's own progress (reading, measuring, pictures, writing) in the status line, so a long report
        of a large CT shows where it is instead of a frozen panel."""
        self.folderLabel.text = _("Report: {stage} {percent}% {message}").format(
            stage=stage, percent=int(round(100 * fraction)), message=message)
        slicer.app.processEvents()

    def onOpenReport(self) -> None:
        if self.htmlPath is not None:
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(self.htmlPath)))

    def _show(self, report, htmlPath) -> None:
        lib = _reportLib()
        if self.table.columnCount != len(lib.TABLE_COLUMNS):
            self.table.setColumnCount(len(lib.TABLE_COLUMNS))
            self.table.setHorizontalHeaderLabels([_(c) for c in lib.TABLE_COLUMNS])
        rows = lib.table_rows(report) if report else []
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row):
                item = qt.QTableWidgetItem(text)
                if c in (2, 3, 4):
                    item.setTextAlignment(qt.Qt.AlignRight | qt.Qt.AlignVCenter)
                self.table.setItem(r, c, item)
        self.table.resizeColumnsToContents()
        self.htmlPath = htmlPath if htmlPath is not None and Path(htmlPath).is_file() else None
        self.openButton.enabled = self.htmlPath is not None
        self.openButton.toolTip = OPEN_TOOLTIP if self.htmlPath else OPEN_DISABLED_TOOLTIP
        if self.htmlPath is not None:
            notes = (report.get("report") or {}).get("notes") or []
            self.folderLabel.text = str(self.htmlPath) + ("\n" + "\n".join(notes) if notes else "")
        else:
            self.folderLabel.text = _("No report yet.")
