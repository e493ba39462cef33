"""Segment Editor effect "Remove false positive": a click removes the connected component under the cursor
from the segment under the cursor (whichever visible segment is drawn there, topmost first); Shift-click keeps
only that component; with "Add missed tumor" checked a click adds the missed tumor there. Each click is one undo
step. The work is done by ``RemoveFalsePositiveLogic`` (Qt-free,
tested headless); this file only turns clicks into world points and shows the result in the status bar.

Registered at startup by ``AtlasSegModule.effects.registerEffects()``. Slicer loads this file as a module named
after its folder (``SegmentEditorRemoveFalsePositiveLib``), so nothing may import that folder as a package. Needs Slicer's
``SegmentEditorEffects`` package, which exists only inside the Slicer application.
"""
import os

import qt
import vtk

import slicer

from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect



def _logic():
    """The effect's logic module, imported on first use: it needs AtlasSeg's Python packages (cc3d, …), which
    may not be installed yet when Slicer starts and registers the effect."""
    # here: see the docstring (packages installed on first run)
    from AtlasSegModule import RemoveFalsePositiveLogic

    return RemoveFalsePositiveLogic

HELP_TEXT = """<html>Remove false positives with one click.<p>
<b>Click</b> on a connected region (island) in a slice view to remove it from the segment it belongs to &mdash;
whichever visible segment is drawn there (the topmost one), not only the selected segment. Tumor candidates
from an over-sensitive AtlasSeg run are removed in one click each.<br>
<b>Shift+click</b> keeps only the clicked region and removes all other regions of that segment.<br>
<b>Add missed tumor</b> (check the box): a click inside a tumor the model missed adds it to the tumor segment
&mdash; the model's own probability region around the point, or, where the model gave nothing, a region of similar
attenuation in the CT bounded by the organ. A click inside an existing tumor region adds nothing.<br>
In 3D views, click on a segment's surface. Clicking background does nothing.<br>
Each click is one undo step (Ctrl+Z / Undo button).</html>"""


ADD_MODE = "AtlasSeg.AddMissedTumor"  # effect parameter: "1" while the Add toggle is on

_explained = set()


def _explainOnce(message):
    """Show ``message`` in a dialog the first time, then only in the status bar (one per click is too many)."""
    if message not in _explained:
        _explained.add(message)
        slicer.util.errorDisplay(message)
    slicer.util.showStatusMessage(message, 5000)


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Remove (or keep only) the connected component under the cursor, from the segment under the cursor."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = "Remove false positive"  # stable id: modules select effects by this name
        scriptedEffect.title = "Remove FP"
        scriptedEffect.perSegment = False  # works on whichever segment is clicked
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)

    def clone(self):
        # here: Slicer's C++ effect wrapper, loaded by the Segment Editor only when it clones effects
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        iconPath = os.path.join(os.path.dirname(__file__), "Resources", "Icons", "RemoveFalsePositive.png")
        return qt.QIcon(iconPath) if os.path.exists(iconPath) else qt.QIcon()

    def helpText(self):
        return HELP_TEXT

    def setupOptionsFrame(self):
        label = qt.QLabel("Click: remove the region under the cursor. Shift+click: keep only that region.")
        label.wordWrap = True
        self.scriptedEffect.addOptionsWidget(label)
        self.addCheckBox = qt.QCheckBox("Add missed tumor")
        self.addCheckBox.toolTip = ("While checked, a click inside a tumor the model missed adds it to the tumor "
                                    "segment (one undo step); uncheck to remove false positives again.")
        self.addCheckBox.connect("toggled(bool)", lambda checked: self.updateMRMLFromGUI())
        self.scriptedEffect.addOptionsWidget(self.addCheckBox)

    def setMRMLDefaults(self):
        self.scriptedEffect.setParameterDefault(ADD_MODE, "0")

    def updateGUIFromMRML(self):
        checkBox = getattr(self, "addCheckBox", None)
        if checkBox is not None:
            wasBlocked = checkBox.blockSignals(True)
            checkBox.checked = self._addMode()
            checkBox.blockSignals(wasBlocked)

    def updateMRMLFromGUI(self):
        checkBox = getattr(self, "addCheckBox", None)
        if checkBox is not None:
            self.scriptedEffect.setParameter(ADD_MODE, "1" if checkBox.checked else "0")
            if checkBox.checked:
                self._prepareAdd()

    def _prepareAdd(self):
        """Build the tumors' probability maps and gates as the Add toggle is switched on, so the first click costs
        what later ones do (~1 s saved on a 512×512×300 CT). A failure here is left to the click to explain."""
        parameterSet = self.scriptedEffect.parameterSetNode()
        segmentationNode = parameterSet.GetSegmentationNode() if parameterSet is not None else None
        if segmentationNode is None:
            return
        qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            _logic().RemoveFalsePositiveLogic(segmentationNode, None).prepareAdd()
        except Exception:  # noqa: BLE001 - missing packages or no tumor map: the click says which
            pass
        finally:
            qt.QApplication.restoreOverrideCursor()

    def _addMode(self) -> bool:
        return self.scriptedEffect.parameterDefined(ADD_MODE) and self.scriptedEffect.parameter(ADD_MODE) == "1"

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if eventId != vtk.vtkCommand.LeftButtonPressEvent or callerInteractor.GetControlKey() \
                or callerInteractor.GetAltKey():
            return False
        segmentationNode = self.scriptedEffect.parameterSetNode().GetSegmentationNode()
        if segmentationNode is None:
            return False
        # Slicer swallows an exception raised here (the click then silently does nothing): say why instead.
        try:
            _logic()
        except ImportError as exc:
            _explainOnce(f"Remove false positive needs AtlasSeg's Python packages ({exc}). Open the AtlasSeg "
                         "module and click Install… at the top of its panel.")
            return True
        try:
            return self._click(callerInteractor, viewWidget, segmentationNode)
        except Exception as exc:
            slicer.util.errorDisplay(f"Remove false positive failed: {exc}")
            return True

    def _click(self, callerInteractor, viewWidget, segmentationNode):
        xy = callerInteractor.GetEventPosition()
        searchRadius = 0
        if viewWidget.className() == "qMRMLSliceWidget":
            ras = self.xyToRas(xy, viewWidget)
        elif viewWidget.className() == "qMRMLThreeDWidget":
            ras = _logic().pickSurfacePoint(self.scriptedEffect.renderer(viewWidget), xy[0], xy[1])
            if ras is None:
                # Not consumed: a press that hits no surface starts the 3D view's rotation as usual.
                return False
            searchRadius = _logic().SEARCH_RADIUS_3D_VOXELS
        else:
            return False
        logic = _logic().RemoveFalsePositiveLogic(segmentationNode, self.scriptedEffect.saveStateForUndo)
        qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            if self._addMode():
                result = logic.addAt(ras)
            else:
                result = logic.click(ras, keepOnly=bool(callerInteractor.GetShiftKey()),
                                     searchRadiusVoxels=searchRadius)
        finally:
            qt.QApplication.restoreOverrideCursor()
        slicer.util.showStatusMessage(result.message, 5000)
        if result.changed:
            _logic().notifyClick(segmentationNode, result)
        # Consume the press either way: a click on background must not start a slice-view pan/window-level drag.
        return True
