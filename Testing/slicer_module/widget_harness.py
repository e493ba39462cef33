"""Run AtlasSeg's real widget (``AtlasSegWidget``: setup, enter, exit, cleanup, the panels) headless.

Around it: the real MRML scene and logics (``slicer_harness``), the validating Qt stand-in (``qt_standin``: every
signal, property, method, enum and ``self.ui.X`` is checked against the real classes and the .ui file), Slicer's
``ScriptedLoadableModuleWidget`` life cycle (the app creates the widget with a module-widget parent whose layout
the panel fills, and calls ``setup()`` on first show), ``slicer.parameterNodeWrapper`` (fields with defaults stored
on the real parameter node, ``connectGui`` binding the .ui widgets whose ``SlicerParameterName`` names a field, and
refusing one that names none), and the user's side of dialogs (``Dialogs``: answers and records them).

Usage (in a fresh process: it replaces ``qt``/``ctk``)::

    env = widget_harness.start()
    widget = env.createWidget()          # AtlasSegWidget(parent); setup()
    widget.ui.applyButton.emit("clicked(bool)", False)
"""
from __future__ import annotations

import os
import sys
import types
import typing
from pathlib import Path

import vtk

import slicer

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
MODULE_DIR = REPO_ROOT / "AtlasSeg"


class Dialogs:
    """The user: answers questions (``answers``) and records what was shown."""

    def __init__(self):
        self.errors = []
        self.questions = []
        self.status = []
        self.answers = {"okCancel": True, "yesNo": False}

    def install(self):
        util = slicer.util
        util.errorDisplay = lambda text, *a, **k: self.errors.append(str(text))
        util.warningDisplay = lambda text, *a, **k: self.errors.append(str(text))
        util.infoDisplay = lambda text, *a, **k: self.status.append(str(text))

        def okCancel(text, *a, **k):
            self.questions.append(str(text))
            return self.answers["okCancel"]

        def yesNo(text, *a, **k):
            self.questions.append(str(text))
            return self.answers["yesNo"]

        util.confirmOkCancelDisplay = okCancel
        util.confirmYesNoDisplay = yesNo
        util.showStatusMessage = lambda text, *a, **k: self.status.append(str(text))
        util.setSliceViewerLayers = lambda *a, **k: None
        util.restart = lambda: self.status.append("RESTART")


class Application:
    """What ``slicer.app`` adds to the headless one for the widget: signals, a main window, event processing."""

    def __init__(self, base, qt_standin, started=True):
        self.base = base
        self.slots = {}
        self.processEventsHooks = []
        self.startupEmitted = started  # a started application has emitted it already
        self.mainWindow = qt_standin.create("QMainWindow")
        self.mainWindow._props["objectName"] = "qSlicerMainWindow"
        self.mainWindow._props["visible"] = started
        self.qt = qt_standin

    def connect(self, signal, slot):
        self.slots.setdefault(signal, []).append(slot)

    def emit(self, signal):
        if signal == "startupCompleted()":  # the application emits it once (qSlicerApplicationHelper.txx:314,318)
            if self.startupEmitted:
                raise RuntimeError("startupCompleted() is emitted once by the application")
            self.startupEmitted = True
        for slot in self.slots.get(signal, []):
            slot()

    def topLevelWidgets(self):
        return [self.mainWindow]

    def processEvents(self, *args):
        self.qt.runSingleShots()
        for hook in list(self.processEventsHooks):
            hook()

    def setOverrideCursor(self, *args):
        pass

    def restoreOverrideCursor(self):
        pass

    def testingEnabled(self):
        return False

    def __getattr__(self, name):
        return getattr(self.base, name)


# --------------------------------------------------------------------------------- parameterNodeWrapper
class Choice:
    def __init__(self, choices):
        self.choices = list(choices)


def parameterNodeWrapper(cls):
    """Slicer's ``@parameterNodeWrapper`` (Base/Python/slicer/parameterNodeWrapper, Slicer >= 5.3) as far as
    AtlasSeg uses it: typed fields with defaults, stored on the wrapped ``vtkMRMLScriptedModuleNode`` (node
    fields as node references), Choice validated, ``connectGui``/``disconnectGui``."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {}
    for name, hint in hints.items():
        choices = None
        base = hint
        if typing.get_origin(hint) is typing.Annotated:
            base, *extras = typing.get_args(hint)
            choices = next((e.choices for e in extras if isinstance(e, Choice)), None)
        fields[name] = (base, getattr(cls, name, None), choices)

    class Wrapped:
        _fields = fields

        def __init__(self, node):
            object.__setattr__(self, "parameterNode", node)
            object.__setattr__(self, "_guis", {})
            for name, (base, default, _) in fields.items():
                if not _isNode(base) and not node.GetParameter(name):
                    node.SetParameter(name, _text(default if default is not None else base()))

        def __getattr__(self, name):
            if name not in fields:
                raise AttributeError(f"{cls.__name__} has no parameter '{name}'")
            base, default, _ = fields[name]
            node = object.__getattribute__(self, "parameterNode")
            if _isNode(base):
                return node.GetNodeReference(name)
            text = node.GetParameter(name)
            return text == "True" if base is bool else base(text)

        def __setattr__(self, name, value):
            if name not in fields:
                raise AttributeError(f"{cls.__name__} has no parameter '{name}'")
            base, _, choices = fields[name]
            if choices is not None and value not in choices:
                raise ValueError(f"{name}: {value!r} is not one of {choices}")
            if _isNode(base):
                self.parameterNode.SetNodeReferenceID(name, value.GetID() if value is not None else None)
            else:
                self.parameterNode.SetParameter(name, _text(value))
            for widget in self._guis.get(name, []):
                _setWidget(widget, value)

        def AddObserver(self, *args):
            return self.parameterNode.AddObserver(*args)

        def RemoveObserver(self, *args):
            return self.parameterNode.RemoveObserver(*args)

        def connectGui(self, ui):
            """Bind each widget whose SlicerParameterName names a field; one naming no field is an error."""
            guis = {}
            for objectName, widget in ui:
                parameter = widget._data.get("dynamic", {}).get("SlicerParameterName")
                if parameter is None:
                    continue
                if parameter not in fields:
                    raise ValueError(f"{objectName}: SlicerParameterName '{parameter}' is not a parameter of "
                                     f"{cls.__name__}")
                guis.setdefault(parameter, []).append(widget)
                _setWidget(widget, getattr(self, parameter))
                _bindWidget(widget, self, parameter)
            object.__setattr__(self, "_guis", guis)
            return object()

        def disconnectGui(self, tag):
            object.__setattr__(self, "_guis", {})

    Wrapped.__name__ = cls.__name__
    return Wrapped


def _isNode(base):
    return isinstance(base, type) and issubclass(base, vtk.vtkObject)


def _text(value):
    return str(value)


def _setWidget(widget, value):
    name = widget.className()
    if name == "QCheckBox":
        widget._props["checked"] = bool(value)
    elif name == "qMRMLNodeComboBox":
        widget._data["node"] = value
    elif name == "QComboBox":
        index = widget._m_findData(value)
        if index < 0:
            index = widget._m_findText(value)
        widget._props["currentIndex"] = index
    else:
        raise TypeError(f"no GUI connector for {name} (parameter value {value!r})")


def _bindWidget(widget, wrapper, parameter):
    name = widget.className()
    if name == "QCheckBox":
        widget.connect("toggled(bool)", lambda checked: setattr(wrapper, parameter, bool(checked)))
    elif name == "qMRMLNodeComboBox":
        widget.connect("currentNodeChanged(vtkMRMLNode*)", lambda node: setattr(wrapper, parameter, node))


# -------------------------------------------------------------------------------------------- start
class Environment:
    def __init__(self, app, dialogs, qt_standin):
        self.app = app
        self.dialogs = dialogs
        self.qt = qt_standin

    def createWidget(self):
        """What the app does on first showing the module: ``AtlasSegWidget(parent)`` then ``setup()``."""
        import AtlasSeg

        parent = self.qt.create("qSlicerScriptedLoadableModuleWidget")
        parent._m_setLayout(self.qt.create("QVBoxLayout"))
        parent._m_setMRMLScene(slicer.mrmlScene)
        widget = AtlasSeg.AtlasSegWidget(parent)
        widget.setup()
        self.qt.runSingleShots()
        return widget

    def createModule(self):
        import AtlasSeg

        return AtlasSeg.AtlasSeg(types.SimpleNamespace())


def start(started: bool = True) -> Environment:
    """Install the application around the module (``started``: the main window is already shown)."""
    for path in (HERE, MODULE_DIR, REPO_ROOT):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    import qt_standin
    import slicer_harness

    base = slicer_harness.setup()
    qt_standin.install(sys.modules)
    app = Application(base, qt_standin, started=started)
    slicer.app = app
    for name in ("qMRMLNodeComboBox", "qMRMLSegmentSelectorWidget", "qSlicerMarkupsPlaceWidget", "qMRMLWidget"):
        setattr(slicer, name, qt_standin._StaticClass(name))
    slicer.util.loadUI = qt_standin.loadUI
    slicer.util.childWidgetVariables = qt_standin.childWidgetVariables
    dialogs = Dialogs()
    dialogs.install()

    wrapperModule = types.ModuleType("slicer.parameterNodeWrapper")
    wrapperModule.parameterNodeWrapper = parameterNodeWrapper
    wrapperModule.Choice = Choice
    sys.modules["slicer.parameterNodeWrapper"] = wrapperModule
    slicer.parameterNodeWrapper = wrapperModule

    _installScriptedLoadableModule()
    _installEffects()
    return Environment(app, dialogs, qt_standin)


def _installScriptedLoadableModule():
    import slicer_harness

    slicer_harness.installScriptedLoadableModuleStub()
    slm = sys.modules["slicer.ScriptedLoadableModule"]

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent
            self.moduleName = self.__class__.__name__

    class ScriptedLoadableModuleWidget:
        """Slicer's base (Base/Python/slicer/ScriptedLoadableModule.py): the parent's layout, resourcePath."""

        def __init__(self, parent=None):
            self.parent = parent
            self.layout = parent.layout()
            self.moduleName = self.__class__.__name__[:-len("Widget")]

        def resourcePath(self, filename):
            return os.path.join(str(MODULE_DIR), "Resources", filename)

        def setup(self):
            pass

        def onReload(self):
            self.reloaded = True

    import unittest

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=1000):
            print(message)

    slm.ScriptedLoadableModule = ScriptedLoadableModule
    slm.ScriptedLoadableModuleWidget = ScriptedLoadableModuleWidget
    slm.ScriptedLoadableModuleTest = ScriptedLoadableModuleTest


def _installEffects():
    import slicer_loaders

    slicer.qSlicerSegmentEditorEffectFactory = slicer_loaders.EffectFactory
    slicer_loaders.EffectFactory._instance = None
    effects = types.ModuleType("qSlicerSegmentationsEditorEffectsPythonQt")
    effects.qSlicerSegmentEditorScriptedEffect = slicer_loaders.ScriptedEffect
    sys.modules[effects.__name__] = effects
    editorEffects = types.ModuleType("SegmentEditorEffects")
    editorEffects.AbstractScriptedSegmentEditorEffect = slicer_loaders.AbstractScriptedSegmentEditorEffect
    sys.modules[editorEffects.__name__] = editorEffects
