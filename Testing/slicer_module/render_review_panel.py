"""Render the whole AtlasSeg module panel offscreen to a PNG: the .ui sections (filled as ``render_panel.py`` fills
them) followed by the three sections built in Python, "Sensitivity and review" (``AtlasSegReviewPanel``),
"Report" (``AtlasSegReportPanel``) and "Export" (``AtlasSegExportPanel``), running the panels' own code.

Slicer's Qt (PythonQt ``qt``, ``ctk`` and the ``slicer`` GUI classes) is not available outside Slicer, so this
approximates Slicer's look with plain Qt widgets from PySide6: before the panel modules are imported it installs
small ``qt`` and ``ctk`` shim modules that map the PythonQt idioms the panels use onto PySide6 (``w.connect(
"clicked()", slot)``; Qt properties read and written as attributes, e.g. ``label.text``, ``button.enabled =
False``; ctkCollapsibleButton -> QGroupBox, ctkPathLineEdit -> combo box + "..." button), and adds the few GUI
parts of ``slicer`` they call (``qMRMLNodeComboBox`` as a QComboBox over the real scene, ``slicer.util.
tryWithErrorDisplay``, ``slicer.util.mainWindow``, the Segment Editor's undo history backed by a real
``vtkSlicerSegmentEditorLogic``). Everything else is real: the MRML scene and segmentation come from slicer-core
through ``slicer_harness`` and ``review_scene`` (a liver tumor with a probability map), and the review, report and
export sections are driven by clicking their buttons.

The state shown: the liver_tumor slider at "maximum sensitivity" (0.1) applied, 3 candidates, one kept, one
removed, one left to review; the kept one selected and resized on its own threshold ("Resize lesion" at p ≥ 0.5);
the Reviewer field filled; below the module's sections, the options of the Segment Editor effect "Remove false positive"
(``SegmentEditorRemoveFalsePositiveLib``'s own ``setupOptionsFrame``, which lives in the Segment Editor, not in this
panel) with "Add missed tumor" checked; the report of the reviewed segmentation made with "Report of the
segmentation..."; Export opened (it offers the last result). The picture is 440 px wide (as ``panel.png``) or the
panel's minimum width if that is larger; fonts and style are the offscreen Qt defaults, not Slicer's.

PySide6 must not go into the project's venv; it is put on ``sys.path`` at run time from a throwaway venv
(``ATLASSEG_PYSIDE_SITE``, default ``/tmp/pyside/lib/python3.11/site-packages``, same Python as .venv)::

    python3.11 -m venv /tmp/pyside && /tmp/pyside/bin/pip install PySide6-Essentials
    QT_QPA_PLATFORM=offscreen .venv/bin/python Testing/slicer_module/render_review_panel.py [OUTPUT.png]

Default output: ``Resources/Screenshots/review_panel.png``.
"""
import contextlib
import inspect
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
MODULE_DIR = REPO_ROOT / "AtlasSeg"
DEFAULT_OUTPUT = REPO_ROOT / "Resources" / "Screenshots" / "review_panel.png"
PYSIDE_SITE = os.environ.get("ATLASSEG_PYSIDE_SITE", "/tmp/pyside/lib/python3.11/site-packages")
PANEL_WIDTH = 440  # as Resources/Screenshots/panel.png; the panel widens to its minimum width if that is larger
# A fixed name, so the report path the picture shows does not change from run to run; removed at the end.
WORK_DIR = Path(tempfile.gettempdir()) / "atlasseg-review-panel"

for _path in (HERE, MODULE_DIR, REPO_ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
if PYSIDE_SITE not in sys.path:
    sys.path.append(PYSIDE_SITE)  # appended: the venv's own packages win

import vtk  # noqa: E402,F401  (vtk before slicer, as in conftest.py)
import slicer  # noqa: E402

import slicer_harness  # noqa: E402

slicer_harness.installScriptedLoadableModuleStub()

from PySide6 import QtCore, QtGui, QtWidgets  # noqa: E402
from PySide6.QtCore import QRect, Signal  # noqa: E402

import render_panel  # noqa: E402  (plainQtUi() and fill() for the .ui part)


# ------------------------------------------------------------------------------------ PythonQt idioms
def _trimmed(slot, signalArgs):
    """PythonQt passes a slot the signal's arguments, dropping those the slot does not take."""
    try:
        parameters = inspect.signature(slot).parameters.values()
        if any(p.kind is p.VAR_POSITIONAL for p in parameters):
            accepted = signalArgs
        else:
            accepted = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)
    except (TypeError, ValueError):
        accepted = signalArgs
    count = min(signalArgs, accepted)
    return lambda *args: slot(*args[:count])


class _PythonQt:
    """Mixin (first base) giving a PySide6 class PythonQt's attribute semantics: a Qt property is read and
    written as a plain attribute (``label.text``, ``button.enabled = False``), shadowing a method of the same
    name as in PythonQt, and ``connect("signal(args)", slot)`` connects the PySide signal."""

    def _shimAttribute(self, name):
        """The attribute a shim class (not PySide) defines under ``name``, or None. Looked up by hand: PySide's
        attribute lookup prefers some QObject names (``connect``) over a subclass's."""
        for cls in type(self).__mro__:
            if cls.__module__.startswith(("PySide6", "Shiboken")) or cls is object:
                continue
            if name in cls.__dict__:
                return cls.__dict__[name]
        return None

    def _isQtProperty(self, name):
        return QtCore.QObject.metaObject(self).indexOfProperty(name) >= 0

    def __getattribute__(self, name):
        if name[0] != "_":
            attribute = _PythonQt._shimAttribute(self, name)
            if attribute is not None:
                return attribute.__get__(self, type(self)) if hasattr(attribute, "__get__") else attribute
            if _PythonQt._isQtProperty(self, name):
                return QtCore.QObject.property(self, name)
        return super().__getattribute__(name)

    def __setattr__(self, name, value):
        if name[0] != "_" and _PythonQt._shimAttribute(self, name) is None and _PythonQt._isQtProperty(self, name):
            if not QtCore.QObject.setProperty(self, name, value):
                raise TypeError(f"cannot set Qt property {type(self).__name__}.{name} to {value!r}")
            return
        super().__setattr__(name, value)

    def connect(self, signature, slot):
        name, _, arguments = signature.partition("(")
        signalArgs = len([a for a in arguments.rstrip(")").split(",") if a.strip()])
        super().__getattribute__(name).connect(_trimmed(slot, signalArgs))


def _shim(base):
    return type(base.__name__, (_PythonQt, base), {"__module__": "qt"})


class CollapsibleButton(_PythonQt, QtWidgets.QGroupBox):
    """ctkCollapsibleButton drawn as a titled group box; ``collapsed`` hides the contents."""

    __module__ = "ctk"
    contentsCollapsed = Signal(bool)

    def __init__(self, *args):
        super().__init__(*args)
        self._collapsed = False

    @property
    def text(self):
        return self.title()

    @text.setter
    def text(self, value):
        self.setTitle(value)

    @property
    def collapsed(self):
        return self._collapsed

    @collapsed.setter
    def collapsed(self, value):
        if bool(value) == self._collapsed:
            return
        self._collapsed = bool(value)
        for child in self.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindDirectChildrenOnly):
            child.setVisible(not self._collapsed)
        self.contentsCollapsed.emit(self._collapsed)


class PathLineEdit(_PythonQt, QtWidgets.QWidget):
    """ctkPathLineEdit: an editable combo box of recent paths and a browse button."""

    __module__ = "ctk"
    Dirs = 0x001
    Files = 0x002

    def __init__(self, *args):
        super().__init__(*args)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._combo = QtWidgets.QComboBox()
        self._combo.setEditable(True)
        self._combo.setSizePolicy(QtWidgets.QSizePolicy.Expanding, QtWidgets.QSizePolicy.Fixed)
        layout.addWidget(self._combo)
        browse = QtWidgets.QToolButton()
        browse.setText("...")
        layout.addWidget(browse)
        self.filters = self.Dirs
        self.settingKey = ""

    @property
    def currentPath(self):
        return self._combo.currentText()

    @currentPath.setter
    def currentPath(self, value):
        self._combo.setEditText(value)

    def addCurrentPathToHistory(self):
        self._combo.addItem(self._combo.currentText())


class NodeComboBox(_PythonQt, QtWidgets.QComboBox):
    """qMRMLNodeComboBox: the nodes of ``nodeTypes`` in the scene, "None" first when ``noneEnabled``."""

    __module__ = "slicer"
    currentNodeChanged = Signal(object)

    def __init__(self, *args):
        super().__init__(*args)
        self._scene = None
        self.nodeTypes = []
        self.noneEnabled = False
        self.addEnabled = True
        self.removeEnabled = True
        self.renameEnabled = False
        QtWidgets.QComboBox.currentIndexChanged.__get__(self).connect(
            lambda index: self.currentNodeChanged.emit(self.currentNode()))

    def setMRMLScene(self, scene):
        self._scene = scene
        self.blockSignals(True)
        self.clear()
        if self.noneEnabled:
            self.addItem("None", None)
        for nodeType in self.nodeTypes:
            collection = scene.GetNodesByClass(nodeType)
            for index in range(collection.GetNumberOfItems()):
                node = collection.GetItemAsObject(index)
                self.addItem(node.GetName(), node.GetID())
        self.setCurrentIndex(0 if QtWidgets.QComboBox.count(self) else -1)
        self.blockSignals(False)

    def currentNode(self):
        nodeId = self.itemData(QtWidgets.QComboBox.currentIndex(self))
        return self._scene.GetNodeByID(nodeId) if nodeId and self._scene is not None else None

    def setCurrentNode(self, node):
        nodeId = node.GetID() if node is not None else None
        index = self.findData(nodeId)
        if index < 0:
            self.addItem(node.GetName(), nodeId)
            index = QtWidgets.QComboBox.count(self) - 1
        self.setCurrentIndex(index)


class _Dialogs:
    """QFileDialog with scripted answers (the render must not block on a dialog)."""

    existingDirectory = ""
    saveFileName = ""

    @classmethod
    def getExistingDirectory(cls, *args):
        return cls.existingDirectory

    @classmethod
    def getSaveFileName(cls, *args):
        return cls.saveFileName


def installQtShims():
    """``qt`` and ``ctk`` modules in PythonQt's spelling, over PySide6."""
    qt = types.ModuleType("qt")
    for module in (QtCore, QtGui, QtWidgets):
        for name in dir(module):
            if not name.startswith("_"):
                setattr(qt, name, getattr(module, name))
    for base in (QtWidgets.QWidget, QtWidgets.QLabel, QtWidgets.QPushButton, QtWidgets.QCheckBox,
                 QtWidgets.QComboBox, QtWidgets.QGroupBox, QtWidgets.QSlider, QtWidgets.QSpinBox,
                 QtWidgets.QDoubleSpinBox, QtWidgets.QTableWidget, QtWidgets.QLineEdit, QtCore.QTimer,
                 QtGui.QShortcut):
        setattr(qt, base.__name__, _shim(base))
    qt.QFileDialog = _Dialogs
    sys.modules["qt"] = qt
    ctk = types.ModuleType("ctk")
    ctk.ctkCollapsibleButton = CollapsibleButton
    ctk.ctkPathLineEdit = PathLineEdit
    sys.modules["ctk"] = ctk


# ------------------------------------------------------------------------------------ the effect's options
class _ScriptedEffect:
    """The part of Slicer's qSlicerSegmentEditorScriptedEffect the effect's options frame calls: options widgets go
    into ``layout``; parameters in a dict; the parameter set node gives the real segmentation node."""

    def __init__(self, layout, segmentationNode):
        self.layout = layout
        self.parameters = {}
        self._parameterSet = types.SimpleNamespace(GetSegmentationNode=lambda: segmentationNode)

    def addOptionsWidget(self, widget):
        self.layout.addWidget(widget)

    def setParameter(self, name, value):
        self.parameters[name] = str(value)

    def setParameterDefault(self, name, value):
        self.parameters.setdefault(name, str(value))

    def parameterDefined(self, name):
        return name in self.parameters

    def parameter(self, name):
        return self.parameters[name]

    def parameterSetNode(self):
        return self._parameterSet


def effectOptions(segmentationNode):
    """The "Remove false positive" effect's options frame, built by the effect's own ``setupOptionsFrame`` (Slicer's
    ``SegmentEditorEffects`` base class replaced by a plain one: it exists only inside the application)."""
    import importlib.util

    base = types.ModuleType("SegmentEditorEffects")

    class AbstractScriptedSegmentEditorEffect:
        def __init__(self, scriptedEffect):
            self.scriptedEffect = scriptedEffect

    base.AbstractScriptedSegmentEditorEffect = AbstractScriptedSegmentEditorEffect
    sys.modules.setdefault("SegmentEditorEffects", base)
    path = MODULE_DIR / "SegmentEditorRemoveFalsePositiveLib" / "SegmentEditorEffect.py"
    spec = importlib.util.spec_from_file_location("SegmentEditorRemoveFalsePositiveLib", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    box = QtWidgets.QGroupBox("Segment Editor › Remove false positive (effect options)")
    boxLayout = QtWidgets.QVBoxLayout(box)
    scripted = _ScriptedEffect(boxLayout, segmentationNode)
    scripted.name = ""
    effect = module.SegmentEditorEffect.__new__(module.SegmentEditorEffect)
    effect.scriptedEffect = scripted
    effect.setMRMLDefaults()
    effect.setupOptionsFrame()
    effect.addCheckBox.checked = True  # the toggle's own handler runs: parameter set, map and gate prepared
    if scripted.parameter(module.ADD_MODE) != "1":
        raise SystemExit("the Add missed tumor toggle did not set the effect's parameter")
    return box


# ------------------------------------------------------------------------------------ slicer GUI parts
class _SegmentEditorWidget:
    """The part of qMRMLSegmentEditorWidget the review panel calls, on a real vtkSlicerSegmentEditorLogic."""

    def __init__(self, logic):
        self.logic = logic

    def segmentationNode(self):
        return self.logic.GetSegmentationNode()

    def setSegmentationNode(self, node):
        self.logic.SetSegmentationNode(node)

    def setSourceVolumeNode(self, volume):
        self.logic.SetSourceVolumeNode(volume)

    def saveStateForUndo(self):
        self.logic.SaveStateForUndo()

    def undo(self):
        self.logic.Undo()

    def redo(self):
        self.logic.Redo()


def installSlicerGuiParts(app, editorLogic):
    """Add to the real slicer-core ``slicer`` module the GUI names the panels use."""
    slicer.qMRMLNodeComboBox = NodeComboBox

    @contextlib.contextmanager
    def tryWithErrorDisplay(message=None, show=True, waitCursor=False):
        yield  # errors propagate: a failure in the panel code must stop the render

    slicer.util.tryWithErrorDisplay = tryWithErrorDisplay
    slicer.util.showStatusMessage = lambda text, duration=0: None
    slicer.util.mainWindow = lambda: None
    slicer.util.errorDisplay = lambda text, **kwargs: (_ for _ in ()).throw(RuntimeError(text))
    editor = _SegmentEditorWidget(editorLogic)
    representation = types.SimpleNamespace(self=lambda: types.SimpleNamespace(editor=editor))
    app.modules.segmenteditor = types.SimpleNamespace(widgetRepresentation=lambda: representation)


# ------------------------------------------------------------------------------------------- render
def wait(milliseconds):
    """Run the Qt event loop (debounce and refresh timers) for a while."""
    loop = QtCore.QEventLoop()
    QtCore.QTimer.singleShot(milliseconds, loop.quit)
    loop.exec()


def main(argv) -> int:
    output = Path(argv[1]) if len(argv) > 1 else DEFAULT_OUTPUT
    qApp = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    work = WORK_DIR
    work.mkdir(parents=True)

    app = slicer_harness.setup()
    from AtlasSegModule import AtlasSegLogic
    from review_scene import makeEditor, makeReviewScene

    logic = AtlasSegLogic.AtlasSegLogic()
    scene = makeReviewScene(logic, work / "out")
    installSlicerGuiParts(app, makeEditor(app, scene.segmentationNode, scene.volume, "liver"))
    installQtShims()
    from AtlasSegModule.AtlasSegExportPanel import ExportPanel
    from AtlasSegModule.AtlasSegReportPanel import ReportPanel
    from AtlasSegModule.AtlasSegReviewPanel import ReviewPanel

    container = QtWidgets.QWidget()
    layout = QtWidgets.QVBoxLayout(container)
    layout.addWidget(render_panel.loadPanel())  # above the code-built sections, as in the module
    moduleWidget = types.SimpleNamespace(
        logic=logic, _parameterNode=types.SimpleNamespace(outputSegmentation=scene.segmentationNode))
    # In this order in AtlasSegWidget.setup().
    moduleWidget.reviewPanel = review = ReviewPanel(layout, moduleWidget)
    moduleWidget.reportPanel = report = ReportPanel(layout, moduleWidget)
    moduleWidget.exportPanel = export = ExportPanel(layout, moduleWidget)
    options = effectOptions(scene.segmentationNode)
    layout.addWidget(options)
    layout.addStretch(1)
    container.resize(PANEL_WIDTH, 100)
    container.show()

    # Review: the reviewer names herself, the result loads, the liver_tumor slider goes to "maximum sensitivity",
    # Apply, keep one, remove one.
    review.reviewerEdit.text = "Doe^Jane"
    review.setSegmentationNode(scene.segmentationNode)
    presets = [w for w in review.slidersBox.findChildren(QtWidgets.QPushButton)
               if w.text == "maximum sensitivity"]  # PythonQt spelling: the panel's buttons are shims
    if not presets:
        raise SystemExit("no 'maximum sensitivity' button in the review section")
    presets[0].click()
    wait(800)  # debounce (preview), then the table refresh that follows the segmentation's change
    review.applyButton.click()
    review.table.selectRow(0)
    review.keepButton.click()
    review.nextButton.click()
    review.removeButton.click()
    review.table.selectRow([r["status"] for r in review.session.rows].index("to review"))  # the one to review
    counter = review.counterLabel.text
    if counter != "3 candidates, 1 removed, 1 kept, 1 to review":
        raise SystemExit(f"unexpected review state: {counter!r}")
    # Resize: the kept lesion alone at its own threshold (it shrinks; the others do not change).
    review.table.selectRow([r.get("status") for r in review.session.rows].index("kept"))
    review.lesionThresholdSpin.value = 0.5
    review.resizeButton.click()
    wait(50)

    # Report: "Report of the segmentation..." into a new folder (the dialog answers it).
    _Dialogs.existingDirectory = str(work / "Review CT report")
    report.section.collapsed = False
    report.sceneButton.click()
    if report.htmlPath is None:
        raise SystemExit("the report was not made")

    # Export: opening the section offers the last AtlasSeg result.
    export.collapsibleButton.collapsed = False
    wait(50)

    container.resize(PANEL_WIDTH, container.sizeHint().height())
    container.show()
    wait(50)
    bottom = options.geometry().bottom() + 8  # the effect's options box, below the module's sections
    # The sections built in code only (the .ui part above them is Resources/Screenshots/panel.png).
    top = max(0, review.section.geometry.top() - 8)
    output.parent.mkdir(parents=True, exist_ok=True)
    if not container.grab(QRect(0, top, container.width(), bottom - top)).save(str(output)):
        raise SystemExit(f"could not write {output}")
    print(output)
    review.cleanup()
    slicer_harness.teardown()
    shutil.rmtree(work, ignore_errors=True)
    qApp.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
