"""The "Sensitivity and review" section of the AtlasSeg module panel (Qt): the segmentation selector, one
sensitivity slider per tumor (debounced preview, Apply/Cancel), the candidate table with keep/remove/next/previous
and their keyboard shortcuts, the selected lesion's own threshold ("Resize lesion"), the batch clean-up buttons,
the Reviewer field (remembered in the application settings), Undo/Redo and "Export review". The review itself
(thresholds, candidates, decisions, batch edits) is in ``AtlasSegReview`` (tested headless, imported on first
use: it needs packages installed on first run); this file builds widgets, forwards clicks to a
``ReviewSession``, listens to the "Remove false positive" effect's clicks to update the table, and owns the
undo history the session's edits go into.

Undo (``EditorHistory`` / ``PanelHistory``): when the Segment Editor module already shows the reviewed
segmentation, edits go into its history, so the panel's Undo, the Segment Editor's Undo/Ctrl+Z and the "Remove
false positive" effect share one history; otherwise the panel keeps its own ``vtkSegmentationHistory`` (the
Segment Editor is never repointed: that discarded the user's undo history there).

``AtlasSeg.py`` makes one in ``setup()`` (``self.reviewPanel = ReviewPanel(self.layout, self)``), hands it each
loaded result (``setSegmentationNode``) and calls ``cleanup()`` when the module closes.
"""
import ctk
import qt

import slicer


REVIEWER_SETTING = "AtlasSeg/Reviewer"  # the Reviewer field, remembered across sessions


def _reviewLogic():
    """``AtlasSegReview``, imported on first use: it needs packages the module installs on first run (cc3d, …),
    and the panel must appear before they are there."""
    # here: see the docstring (packages installed on first run)
    from AtlasSegModule import AtlasSegReview

    return AtlasSegReview


def _removeLogic():
    # here: as _reviewLogic, the effect's logic needs packages installed on first run (cc3d, edt, ...)
    from AtlasSegModule import RemoveFalsePositiveLogic

    return RemoveFalsePositiveLogic

def _segmentEditorWidget():
    """The Segment Editor module's editor widget, or None where there is none (it is created lazily)."""
    module = getattr(slicer.modules, "segmenteditor", None)
    if module is None:
        return None
    return module.widgetRepresentation().self().editor


class EditorHistory:
    """The Segment Editor widget's undo history (when it shows the reviewed segmentation)."""

    def __init__(self, editor):
        self.editor = editor

    def saveStateForUndo(self):
        self.editor.saveStateForUndo()

    def undo(self):
        self.editor.undo()

    def redo(self):
        self.editor.redo()


class PanelHistory:
    """The review panel's own undo history of one segmentation (``vtkSegmentationHistory``, as the Segment
    Editor keeps one), used when the Segment Editor shows another segmentation."""

    def __init__(self, segmentationNode, maximumStates: int = 20):
        self.segmentationNode = segmentationNode
        self.history = slicer.vtkSegmentationHistory()
        self.history.SetMaximumNumberOfStates(maximumStates)
        self.history.SetSegmentation(segmentationNode.GetSegmentation() if segmentationNode is not None else None)

    def saveStateForUndo(self):
        self.history.SaveState()

    def undo(self):
        if self.history.IsRestorePreviousStateAvailable():
            self.history.RestorePreviousState()

    def redo(self):
        if self.history.IsRestoreNextStateAvailable():
            self.history.RestoreNextState()


DEBOUNCE_MS = 150
SLIDER_STEPS = 100  # threshold = step / 100, from 0.01 to 0.99
COLUMNS = ("#", "Tumor", "Organ", "Volume (ml)", "Diameter (mm)", "Max p", "Status")
STATUS_TEXT = {"unreviewed": "to review"}  # "to review" is already the word (review.TO_REVIEW)  # as the counter and the report say it
STATUS_COLOURS = {"kept": "#2e7d32", "removed": "#b71c1c", "unreviewed": "#000000", "to review": "#000000",
                  "kept, below threshold": "#2e7d32"}


def _nodeId(node):
    return node.GetID() if node is not None else None


class ReviewPanel:
    """Sensitivity sliders, candidate table, review shortcuts and batch clean-up for one segmentation."""

    def __init__(self, parentLayout, moduleWidget):
        self.moduleWidget = moduleWidget
        self.session = None
        self._ownHistory = None  # PanelHistory, when the Segment Editor shows another segmentation
        self.sliders = {}  # tumor -> (slider, value label)
        self._pendingTumor = None
        self._shortcuts = []

        self.section = ctk.ctkCollapsibleButton()
        self.section.text = "Sensitivity and review"
        self.section.collapsed = True
        parentLayout.addWidget(self.section)
        layout = qt.QVBoxLayout(self.section)

        self.segmentationSelector = slicer.qMRMLNodeComboBox()
        self.segmentationSelector.nodeTypes = ["vtkMRMLSegmentationNode"]
        self.segmentationSelector.addEnabled = False
        self.segmentationSelector.removeEnabled = False
        self.segmentationSelector.noneEnabled = True
        self.segmentationSelector.setMRMLScene(slicer.mrmlScene)
        self.segmentationSelector.setToolTip("The AtlasSeg result to review (segments with probability maps).")
        self.segmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.setSegmentationNode)
        form = qt.QFormLayout()
        form.addRow("Segmentation:", self.segmentationSelector)
        self.reviewerEdit = qt.QLineEdit()
        self.reviewerEdit.setPlaceholderText("e.g. Doe^Jane")
        self.reviewerEdit.setToolTip("Who reviews: recorded with the decisions (review.json 'reviewer') and named "
                                     "by exports. Remembered for the next session.")
        self.reviewerEdit.text = str(qt.QSettings().value(REVIEWER_SETTING, "") or "")
        self.reviewerEdit.connect("editingFinished()", self.onReviewerChanged)
        form.addRow("Reviewer:", self.reviewerEdit)
        layout.addLayout(form)

        self.slidersBox = qt.QGroupBox("Sensitivity (probability threshold per tumor)")
        self.slidersLayout = qt.QGridLayout(self.slidersBox)
        layout.addWidget(self.slidersBox)
        applyRow = qt.QHBoxLayout()
        self.applyButton = qt.QPushButton("Apply")
        self.applyButton.setToolTip("Keep the previewed thresholds (one undo step each).")
        self.cancelButton = qt.QPushButton("Cancel")
        self.cancelButton.setToolTip("Put back the tumors as they were before the preview.")
        self.applyButton.connect("clicked()", self.onApplyThresholds)
        self.cancelButton.connect("clicked()", self.onCancelThresholds)
        applyRow.addWidget(self.applyButton)
        applyRow.addWidget(self.cancelButton)
        layout.addLayout(applyRow)

        self.counterLabel = qt.QLabel("No candidates.")
        layout.addWidget(self.counterLabel)
        self.table = qt.QTableWidget()
        self.table.setColumnCount(len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setSelectionBehavior(qt.QAbstractItemView.SelectRows)
        self.table.setSelectionMode(qt.QAbstractItemView.SingleSelection)
        self.table.setEditTriggers(qt.QAbstractItemView.NoEditTriggers)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(180)
        self.table.connect("itemSelectionChanged()", self.onRowSelected)
        layout.addWidget(self.table)

        buttons = qt.QHBoxLayout()
        self.previousButton = self._button(buttons, "Previous", "Previous candidate (P)", self.onPrevious)
        self.nextButton = self._button(buttons, "Next", "Next candidate (N)", self.onNext)
        self.keepButton = self._button(buttons, "Keep", "Mark the selected candidate as a true tumor (K)", self.onKeep)
        self.removeButton = self._button(buttons, "Remove", "Remove the selected candidate from its segment "
                                         "(R or Delete; undoable)", self.onRemove)
        self.undoButton = self._button(buttons, "Undo", "Undo the last edit (Segment Editor history)", self.onUndo)
        self.redoButton = self._button(buttons, "Redo", "Redo", self.onRedo)
        layout.addLayout(buttons)

        # Resize one lesion: the selected candidate alone at its own probability threshold (one undo step).
        resizeRow = qt.QHBoxLayout()
        resizeRow.addWidget(qt.QLabel("Selected lesion at p ≥"))
        self.lesionThresholdSpin = self._spin(0.01, 0.99, 0.5, 0.05, 2, "")
        self.lesionThresholdSpin.setToolTip("The selected lesion's own probability threshold: lower grows it, "
                                            "higher shrinks it, on its probability map; other lesions stay as "
                                            "they are.")
        resizeRow.addWidget(self.lesionThresholdSpin)
        self.resizeButton = self._button(resizeRow, "Resize lesion", "Grow or shrink the selected lesion alone to "
                                         "this threshold (undoable; recorded in review.json)", self.onResizeLesion)
        layout.addLayout(resizeRow)

        batch = qt.QGroupBox("Batch clean-up")
        batchLayout = qt.QGridLayout(batch)
        self.minMlSpin = self._spin(0.0, 100.0, 0.5, 0.01, 2, " ml")
        self.minProbabilitySpin = self._spin(0.0, 1.0, 0.5, 0.05, 2, "")
        self.largestNSpin = qt.QSpinBox()
        self.largestNSpin.setRange(1, 10)
        self.largestNSpin.setValue(1)
        smaller = qt.QPushButton("Remove candidates smaller than")
        smaller.setToolTip("Remove every tumor component below this volume, in every reviewed tumor.")
        smaller.connect("clicked()", self.onRemoveSmaller)
        below = qt.QPushButton("Remove candidates with max probability below")
        below.setToolTip("Remove every tumor component whose highest probability is below this value.")
        below.connect("clicked()", self.onRemoveBelow)
        largest = qt.QPushButton("Keep largest N per organ")
        largest.setToolTip("Keep only the N largest islands of each organ segment. Tumors are never touched.")
        largest.connect("clicked()", self.onKeepLargest)
        batchLayout.addWidget(smaller, 0, 0)
        batchLayout.addWidget(self.minMlSpin, 0, 1)
        batchLayout.addWidget(below, 1, 0)
        batchLayout.addWidget(self.minProbabilitySpin, 1, 1)
        batchLayout.addWidget(largest, 2, 0)
        batchLayout.addWidget(self.largestNSpin, 2, 1)
        layout.addWidget(batch)
        self.exportButton = qt.QPushButton("Export review.json...")
        self.exportButton.setToolTip("Write the review decisions for the report (also saved with the scene).")
        self.exportButton.connect("clicked()", self.onExport)
        layout.addWidget(self.exportButton)
        self.messageLabel = qt.QLabel("")
        self.messageLabel.wordWrap = True
        layout.addWidget(self.messageLabel)

        self.debounce = qt.QTimer()
        self.debounce.setSingleShot(True)
        self.debounce.setInterval(DEBOUNCE_MS)
        self.debounce.connect("timeout()", self._previewPending)
        # Undo/redo in the Segment Editor, or any other effect, changes the segments behind the table's back.
        self.refreshTimer = qt.QTimer()
        self.refreshTimer.setSingleShot(True)
        self.refreshTimer.setInterval(2 * DEBOUNCE_MS)
        self.refreshTimer.connect("timeout()", self._refreshTable)
        self._observed = None  # (segmentation node, observer tag)

        for keys, slot in ((("N",), self.onNext), (("P",), self.onPrevious), (("K",), self.onKeep),
                           (("R", "Delete"), self.onRemove)):
            for key in keys:
                shortcut = qt.QShortcut(qt.QKeySequence(key), self.section)
                shortcut.setContext(qt.Qt.WidgetWithChildrenShortcut)
                shortcut.connect("activated()", slot)
                self._shortcuts.append(shortcut)

        self._listening = False  # to "Remove false positive" clicks (from the first review session on)
        self._tooltips = {w: w.toolTip for w in (self.applyButton, self.cancelButton, self.exportButton,
                                                 self.previousButton, self.nextButton, self.keepButton,
                                                 self.removeButton, self.resizeButton)}
        self._updateEnabled()

    # ---------------------------------------------------------------------------------------- helpers
    def _button(self, layout, text, tip, slot):
        button = qt.QPushButton(text)
        button.setToolTip(tip)
        button.connect("clicked()", slot)
        layout.addWidget(button)
        return button

    @staticmethod
    def _spin(minimum, maximum, value, step, decimals, suffix):
        spin = qt.QDoubleSpinBox()
        spin.setRange(minimum, maximum)
        spin.setDecimals(decimals)
        spin.setSingleStep(step)
        spin.setValue(value)
        spin.setSuffix(suffix)
        return spin

    def _history(self):
        """Where the panel's edits are undone: the Segment Editor's own history when its editor already shows the
        reviewed segmentation (one history shared with the "Remove false positive" effect there), else the
        panel's own. The Segment Editor is never pointed at the reviewed segmentation: that would discard the
        user's undo history of whatever it showed (vtkSegmentationHistory::SetSegmentation clears it) and, in
        Slicer 5.8, change its selected segment, source volume and label layer."""
        node = self.session.segmentationNode if self.session else None
        editor = _segmentEditorWidget()
        if node is not None and editor is not None and _nodeId(editor.segmentationNode()) == _nodeId(node):
            return EditorHistory(editor)
        if self._ownHistory is None or self._ownHistory.segmentationNode is not node:
            self._ownHistory = PanelHistory(node)
        return self._ownHistory

    def _saveStateForUndo(self):
        self._history().saveStateForUndo()

    def _message(self, text):
        self.messageLabel.text = text
        slicer.util.showStatusMessage(text, 4000)

    def _updateEnabled(self):
        hasSession = self.session is not None
        hasRows = hasSession and bool(self.session.rows)
        pending = hasSession and any(c.pending for c in self.session.controllers.values())
        for widget in (self.previousButton, self.nextButton, self.keepButton, self.removeButton, self.resizeButton,
                       self.lesionThresholdSpin):
            widget.enabled = hasRows
        self.undoButton.enabled = hasSession
        self.redoButton.enabled = hasSession
        self.applyButton.enabled = pending
        self.cancelButton.enabled = pending
        self.exportButton.enabled = hasSession
        # A disabled button's tooltip says why it is disabled.
        reason = "" if hasSession else "Select an AtlasSeg segmentation with tumor probability maps."
        for widget, tip in self._tooltips.items():
            widget.setToolTip(tip if widget.enabled or not reason else reason)

    # ---------------------------------------------------------------------------------------- session
    def setSegmentationNode(self, node):
        if _nodeId(self.segmentationSelector.currentNode()) != _nodeId(node):
            self.segmentationSelector.setCurrentNode(node)
            return  # the selector's signal calls back here
        self.session = None
        self._unobserve()
        while self.slidersLayout.count():
            item = self.slidersLayout.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        self.sliders = {}
        if node is not None:
            try:
                _reviewLogic()
            except ImportError as exc:  # before "Install…": say so in the panel, not in an error dialog
                self._message(f"The review needs AtlasSeg's Python packages ({exc}): click Install… at the top "
                              "of the panel.")
                node = None
        if node is not None:
            with slicer.util.tryWithErrorDisplay("Cannot start the review of this segmentation.", waitCursor=True):
                review = _reviewLogic()
                if review.reviewableTumors(node):
                    self.session = review.ReviewSession(node, saveStateForUndo=self._saveStateForUndo)
                    self.session.reviewer = self.reviewerEdit.text.strip() or None
                    if not self._listening:
                        _removeLogic().clickObservers.append(self._onEffectClick)
                        self._listening = True
        if self.session is not None:
            self._buildSliders()
            self.section.collapsed = False
            tag = node.AddObserver(slicer.vtkSegmentation.SourceRepresentationModified,
                                   lambda caller, event: self.refreshTimer.start())
            self._observed = (node, tag)
        self._fillTable()

    def _unobserve(self):
        if self._observed is not None:
            node, tag = self._observed
            node.RemoveObserver(tag)
            self._observed = None

    def _refreshTable(self):
        if self.session is not None:
            self.session.refresh()
            self._fillTable()

    def _buildSliders(self):
        for row, (tumor, controller) in enumerate(self.session.controllers.items()):
            self.slidersLayout.addWidget(qt.QLabel(tumor), 2 * row, 0)
            slider = qt.QSlider(qt.Qt.Horizontal)
            slider.setRange(1, SLIDER_STEPS - 1)
            slider.setValue(round(controller.threshold * SLIDER_STEPS))
            slider.setToolTip("Lower = more sensitive: fewer missed tumors, more false positives to remove.")
            value = qt.QLabel(f"{controller.threshold:.2f}")
            slider.connect("valueChanged(int)", lambda v, t=tumor: self.onSliderMoved(t, v))
            self.slidersLayout.addWidget(slider, 2 * row, 1)
            self.slidersLayout.addWidget(value, 2 * row, 2)
            # The presets go on a row of their own under the slider: beside it they squeeze the slider to nothing
            # in a panel of usual width. In a widget of their own, not a nested layout: rebuilding the grid for
            # another segmentation deletes takeAt(i).widget(), which is None for a layout item (the buttons of a
            # nested layout were left behind).
            presetsRow = qt.QWidget()
            presets = qt.QHBoxLayout(presetsRow)
            presets.setContentsMargins(0, 0, 0, 0)
            for name, threshold in controller.operatingPoints().items():
                preset = qt.QPushButton(name.replace("_", " "))
                preset.setToolTip(f"Threshold {threshold:g}")
                preset.connect("clicked()", lambda t=tumor, s=slider, p=threshold: s.setValue(round(p * SLIDER_STEPS)))
                presets.addWidget(preset)
            self.slidersLayout.addWidget(presetsRow, 2 * row + 1, 1, 1, 2)
            self.sliders[tumor] = (slider, value)
        self.slidersLayout.setColumnStretch(1, 1)

    # ----------------------------------------------------------------------------------------- slider
    def onSliderMoved(self, tumor, value):
        self.sliders[tumor][1].text = f"{value / SLIDER_STEPS:.2f}"
        self._pendingTumor = tumor
        self.debounce.start()  # restarts: the preview runs once the slider rests for DEBOUNCE_MS

    def _previewPending(self):
        tumor, self._pendingTumor = self._pendingTumor, None
        if self.session is None or tumor is None:
            return
        threshold = self.sliders[tumor][0].value / SLIDER_STEPS
        with slicer.util.tryWithErrorDisplay(f"Cannot preview {tumor} at {threshold:.2f}."):
            voxels = self.session.controllers[tumor].preview(threshold)
            # The table (statistics of every candidate: slower than the preview) follows via refreshTimer,
            # started by the segmentation's change event, once the slider has rested.
            self._message(f"Preview: {tumor} at p ≥ {threshold:.2f} ({voxels:,} voxels). Apply keeps it.")
        self._updateEnabled()

    def onApplyThresholds(self):
        with slicer.util.tryWithErrorDisplay("Cannot apply the thresholds."):
            applied = [t for t in self.session.controllers if self.session.applyThreshold(t)]
            self._message(f"Applied the threshold of {', '.join(applied)}." if applied else "Nothing to apply.")
        self._fillTable()

    def onCancelThresholds(self):
        for tumor, controller in self.session.controllers.items():
            controller.cancel()
            slider, _ = self.sliders[tumor]
            wasBlocked = slider.blockSignals(True)
            slider.setValue(round(controller.threshold * SLIDER_STEPS))
            slider.blockSignals(wasBlocked)
            self.sliders[tumor][1].text = f"{controller.threshold:.2f}"
        self.session.refresh()
        self._fillTable()
        self._message("Preview cancelled.")

    # ------------------------------------------------------------------------------------------ table
    def _fillTable(self):
        rows = self.session.rows if self.session else []
        wasBlocked = self.table.blockSignals(True)
        self.table.setRowCount(len(rows))
        for index, row in enumerate(rows):
            diameter = f"{row['longest_axial_diameter_mm']:.1f} × {row['perpendicular_diameter_mm']:.1f}"
            values = ("–" if row["id"] is None else str(row["id"]), row["tumor"], row.get("organ") or "", f"{row['volume_ml']:.2f}", diameter,
                      f"{row['max_probability']:.2f}", STATUS_TEXT.get(row["status"], row["status"]))
            for column, text in enumerate(values):
                item = qt.QTableWidgetItem(text)
                if column == len(values) - 1:
                    item.setForeground(qt.QBrush(qt.QColor(STATUS_COLOURS.get(row["status"], "#000000"))))
                self.table.setItem(index, column, item)
        if self.session is not None and 0 <= self.session.selected < len(rows):
            self.table.selectRow(self.session.selected)
        self.table.blockSignals(wasBlocked)
        self.table.resizeColumnsToContents()
        self.counterLabel.text = self.session.counterText() if self.session else "No candidates."
        self._updateEnabled()

    def onRowSelected(self):
        index = self.table.currentRow()
        if self.session is None or index < 0:
            return
        self.session.select(index)
        self.session.centreOn(index)
        self._showLesionThreshold()

    def _showLesionThreshold(self):
        if self.session is not None and 0 <= self.session.selected < len(self.session.rows):
            self.lesionThresholdSpin.setValue(self.session.lesionThreshold())

    def onResizeLesion(self):
        if self.session is not None and self.session.rows:
            with slicer.util.tryWithErrorDisplay("Cannot resize this lesion."):
                self._message(self.session.resizeLesion(threshold=self.lesionThresholdSpin.value))
            self._fillTable()

    def _go(self, row):
        if row is not None:
            self.table.selectRow(self.session.selected)
            self.session.centreOn()
            self._showLesionThreshold()

    def onNext(self):
        if self.session is not None:
            self._go(self.session.next())

    def onPrevious(self):
        if self.session is not None:
            self._go(self.session.previous())

    def onKeep(self):
        if self.session is not None and self.session.rows:
            self._message(self.session.keep())
            self._fillTable()

    def onRemove(self):
        if self.session is not None and self.session.rows:
            with slicer.util.tryWithErrorDisplay("Cannot remove this candidate."):
                self._message(self.session.remove())
            self._fillTable()

    def onUndo(self):
        if self.session is not None:
            self._history().undo()
            self.session.refresh()
            self._fillTable()

    def onRedo(self):
        if self.session is not None:
            self._history().redo()
            self.session.refresh()
            self._fillTable()

    def onReviewerChanged(self):
        name = self.reviewerEdit.text.strip()
        qt.QSettings().setValue(REVIEWER_SETTING, name)
        if self.session is not None:
            self.session.reviewer = name or None

    def _onEffectClick(self, segmentationNode, result):
        if self.session is not None and _nodeId(segmentationNode) == _nodeId(self.session.segmentationNode):
            self.session.recordClick(result)
            self._fillTable()

    # ------------------------------------------------------------------------------------------ batch
    def _batch(self, title, operation):
        if self.session is None:
            return
        with slicer.util.tryWithErrorDisplay(f"{title} failed.", waitCursor=True):
            messages = [operation(tumor).message for tumor in self.session.controllers]
            self._message(" ".join(messages))
        self._fillTable()

    def onRemoveSmaller(self):
        self._batch("Remove small candidates", lambda t: self.session.removeSmallerThan(t, self.minMlSpin.value))

    def onRemoveBelow(self):
        self._batch("Remove low-probability candidates",
                    lambda t: self.session.removeBelowProbability(t, self.minProbabilitySpin.value))

    def onKeepLargest(self):
        if self.session is None:
            return
        with slicer.util.tryWithErrorDisplay("Keep largest per organ failed.", waitCursor=True):
            self._message(self.session.keepLargestPerOrgan(self.largestNSpin.value).message)
        self._fillTable()

    def onExport(self):
        path = qt.QFileDialog.getSaveFileName(None, "Export review decisions", "review.json", "JSON (*.json)")
        if path:
            with slicer.util.tryWithErrorDisplay("Cannot write the review file."):
                self._message(f"Wrote {self.session.exportReview(path)}.")

    def cleanup(self):
        self.debounce.stop()
        self.refreshTimer.stop()
        self._unobserve()
        if self._listening:
            observers = _removeLogic().clickObservers
            if self._onEffectClick in observers:
                observers.remove(self._onEffectClick)
            self._listening = False
        for shortcut in self._shortcuts:
            shortcut.setParent(None)
        self._shortcuts = []
        self.session = None
