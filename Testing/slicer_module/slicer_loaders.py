"""How the 3D Slicer application loads scripted modules and Segment Editor effects, reproduced in Python.

slicer-core (PyPI) imports files the normal Python way; the application does not. Its C++ loaders decide which
files become modules, under which names, and what is left in ``sys.modules`` when a file fails. These classes
follow that C++ code line by line (Slicer tags v5.8.1 and v5.10.0; 5.12 and main load like 5.10), so the tests
see what a user's Slicer does with the AtlasSeg folder:

* ``qSlicerScriptedLoadableModuleFactory::isValidFile`` (Base/QTGUI/qSlicerScriptedLoadableModuleFactory.cxx):
  every top-level ``*.py`` of a module folder is a module; modules are instantiated in sorted name order
  (Base/QTCore/qSlicerAbstractModuleFactoryManager.cxx).
* ``qSlicerScriptedLoadableModule::setPythonSource`` (Base/QTGUI/qSlicerScriptedLoadableModule.cxx): the module
  name is the file's base name; the class of that name is taken from ``sys.modules[name]`` if it is there
  (5.8: ``PyImport_AddModule``, which *creates* an empty entry when there is none), else the file is loaded
  with ``qSlicerScriptedUtils::loadSourceAsModule``; no class -> "class X was not found in file F".
* ``qSlicerScriptedUtils::loadSourceAsModule`` (Base/QTCore/qSlicerScriptedUtils.cxx):
  5.8: ``imp.load_source(name, path)``, which, because the name is already in ``sys.modules`` (see above),
  executes the file again *into that same module object* (``imp._exec``); 5.10+: ``importlib.util``
  ``spec_from_file_location`` + ``module_from_spec``, ``sys.modules[name] = module`` *before*
  ``exec_module``, so a file that raises leaves its half-built module there, replacing what was there.
* ``qSlicerSegmentEditorScriptedEffect::setPythonSource``
  (Modules/Loadable/Segmentations/EditorEffects/qSlicerSegmentEditorScriptedEffect.cxx): the effect's module
  is named after the file's *parent folder*, the class after the file (``Effect`` appended when missing), then
  the same ``loadSourceAsModule``; the instance is put at ``slicer.<folder>``.

What the application adds around this, which these classes stand in for: the module's ``parent`` object (a
``qSlicerScriptedLoadableModule``), ``slicer.app.startupCompleted``, the effect factory singleton, and Qt.
``install_application_stand_ins`` installs plain-Python stand-ins for those; the loading itself is real.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import traceback
import types
import unittest
from dataclasses import dataclass, field
from pathlib import Path

VERSIONS = ("5.8", "5.10")  # 5.12 and main load scripted files like 5.10


# ------------------------------------------------------------------------------------------ loadSourceAsModule
def load_source_as_module(name: str, path, version: str):
    """``qSlicerScriptedUtils::loadSourceAsModule`` of Slicer ``version``; returns the module, raises what the
    file raises (the C++ code prints it and returns false)."""
    path = str(path)
    if path.endswith(".pyc"):  # an orphan .pyc: Python's own loader for compiled files (imp.load_compiled / importlib)
        loader = importlib.machinery.SourcelessFileLoader(name, path)
        spec = importlib.util.spec_from_loader(name, loader)
        module = sys.modules[name] if version == "5.8" else importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        loader.exec_module(module)
        return module
    if version == "5.8":
        # imp.load_source: the name is in sys.modules already (PyImport_AddModule in setPythonSource), so
        # imp._exec runs the file again in the existing module's namespace.
        module = sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        module.__file__ = path
        module.__spec__ = spec
        module.__loader__ = spec.loader
        spec.loader.exec_module(module)
        return module
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _module_for(name: str, version: str):
    """The module ``setPythonSource`` looks the class up in before loading: 5.8 ``PyImport_AddModule`` (creates
    an empty one when missing), 5.10 ``PyDict_GetItemString(sys.modules, name)`` (may be None)."""
    if version == "5.8":
        return sys.modules.setdefault(name, types.ModuleType(name))
    return sys.modules.get(name)


def _class_from_source(module_name: str, class_name: str, path, version: str):
    module = _module_for(module_name, version)
    cls = getattr(module, class_name, None) if module is not None else None
    if cls is None:
        load_source_as_module(module_name, path, version)
        module = sys.modules[module_name] if version != "5.8" else module
        cls = getattr(module, class_name, None)
    return cls


# ------------------------------------------------------------------------------------------ scripted modules
class ModuleParent:
    """Stands in for the ``qSlicerScriptedLoadableModule`` passed to the module class as ``parent``."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.name = module_name(path)
        self.icon = None
        reset_module_fields(self)


def reset_module_fields(parent) -> None:
    """The module fields a fresh ``parent`` has, and Slicer's ``ScriptedLoadableModule.__init__`` resets."""
    parent.title = ""
    parent.categories = []
    parent.dependencies = []
    parent.contributors = []
    parent.helpText = ""
    parent.acknowledgementText = ""


@dataclass
class FactoryReport:
    instances: dict = field(default_factory=dict)  # module name -> instance of its class
    errors: list = field(default_factory=list)  # what Slicer would print to the error log


# Classes of the loadable modules the application instantiates AFTER "AtlasSeg" (QMap key order over all module
# names: qSlicerAbstractModuleFactoryManager.cxx:60,371-378 @v5.8.1; a loadable module's Python wrappers are
# imported when it is instantiated, qSlicerLoadableModuleFactory.cxx:45-75): Markups, Segmentations,
# SegmentEditor, Terminologies. While AtlasSeg.py is loaded they are absent from the slicer namespace.
LATER_MODULE_CLASS_MARKERS = ("Markups", "Segmentations", "SegmentEditor", "Terminolog")


def module_files(folder) -> list:
    """The files the scripted-module factory takes (isValidFile): every top-level ``.py``, and every ``.pyc``
    without its ``.py`` (qSlicerScriptedLoadableModuleFactory.cxx:184-213 @v5.8.1), not recursively."""
    folder = Path(folder)
    files = list(folder.glob("*.py"))
    files += [p for p in folder.glob("*.pyc") if not p.with_suffix(".py").exists()]
    return sorted(files)


def module_name(path) -> str:
    """File -> module name as ``QFileInfo::baseName()``: up to the FIRST dot."""
    return Path(path).name.split(".")[0]


def load_scripted_modules(folder, version: str) -> FactoryReport:
    """Instantiate every scripted module of ``folder`` as the application's factory does: the folder is
    APPENDED to ``sys.path`` (ctkFactoryScriptedItem::load -> qSlicerCorePythonManager::appendPythonPath,
    qSlicerCorePythonManager.cxx:114-121 @v5.8.1), and the classes of modules instantiated later are absent."""
    report = FactoryReport()
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
    import slicer

    hidden = {name: value for name, value in vars(slicer).items()
              if any(marker in name for marker in LATER_MODULE_CLASS_MARKERS) and isinstance(value, type)}
    for name in hidden:
        delattr(slicer, name)
    try:
        _load_each(folder, version, report)
    finally:
        for name, value in hidden.items():
            setattr(slicer, name, value)
    return report


def _load_each(folder, version, report) -> None:
    for path in module_files(folder):  # sorted order
        name = module_name(path)
        try:
            cls = _class_from_source(name, name, path, version)
        except Exception:  # noqa: BLE001 - PythonQt::handleError prints any exception and the load fails
            report.errors.append(f"loadSourceAsModule - Failed to load file {path} as module {name}!\n"
                                 + traceback.format_exc())
            continue
        if cls is None:
            report.errors.append(f"Failed to load scripted loadable module: class {name} was not found in file "
                                 f"{path}")
            continue
        try:
            report.instances[name] = cls(ModuleParent(path))
        except Exception:  # noqa: BLE001 - instantiateClass failing (e.g. a TypeError for a non-module class)
            report.errors.append(f"{name}: instantiating the module class failed\n" + traceback.format_exc())


# ------------------------------------------------------------------------------------------ effects
class EffectFactory:
    """``qSlicerSegmentEditorEffectFactory::instance()``: the registered effects."""

    _instance = None

    def __init__(self):
        self.effects = []

    @classmethod
    def instance(cls):
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def registerEffect(self, effect):
        self.effects.append(effect)

    def registeredEffects(self):
        return list(self.effects)


class ScriptedEffect:
    """``qSlicerSegmentEditorScriptedEffect``: ``setPythonSource`` loads the effect file as Slicer does; the
    rest is what effects call on their C++ side (name, title, undo, parameter set)."""

    def __init__(self, parent=None):
        self.name = ""
        self.title = ""
        self.perSegment = True
        self.requireSegments = True
        self._self = None
        self.segmentationNode = None
        self.undoStates = 0
        self.swallowed = []  # exceptions the app would only print
        self.version = _CURRENT["version"]
        self.parameters = {}  # the effect's parameters in the Segment Editor node (name -> text)

    def setPythonSource(self, path) -> bool:
        path = Path(str(path))
        module_name = path.parent.name  # "Use parent directory name as module name"
        class_name = path.stem if path.stem.endswith("Effect") else path.stem + "Effect"
        cls = _class_from_source(module_name, class_name, path, self.version)
        if cls is None:
            raise RuntimeError(f"Failed to load segment editor scripted effect: class {class_name} was not found "
                               f"in {path}")
        self._self = cls(self)
        import slicer

        setattr(slicer, module_name, self._self)  # setModuleAttribute("slicer", moduleName, self)
        return True

    def self(self):
        return self._self

    def clone(self):
        """What the Segment Editor does with a registered effect (qSlicerSegmentEditorEffectFactory::copyEffects):
        the user clicks the clone, made by the effect's Python ``clone()``."""
        return self._self.clone()

    def processInteractionEvents(self, interactor, eventId, viewWidget):
        """qSlicerSegmentEditorScriptedEffect::processInteractionEvents: a Python exception is printed and the
        event is "not handled" (qSlicerSegmentEditorScriptedEffect.cxx:352-374 @v5.8.1)."""
        try:
            return bool(self._self.processInteractionEvents(interactor, eventId, viewWidget))
        except Exception:  # noqa: BLE001 - the app prints it to the console and goes on
            self.swallowed.append(traceback.format_exc())
            return False

    # what the effect's Python code calls on its C++ object
    def parameterSetNode(self):
        return types.SimpleNamespace(GetSegmentationNode=lambda: self.segmentationNode)

    def saveStateForUndo(self):
        self.undoStates += 1

    def addOptionsWidget(self, widget):
        pass

    # qSlicerSegmentEditorAbstractEffect's parameters (stored as text in the Segment Editor node)
    def parameter(self, name):
        return self.parameters.get(name, "")

    def parameterDefined(self, name):
        return name in self.parameters

    def setParameter(self, name, value):
        self.parameters[name] = str(value)

    def setParameterDefault(self, name, value):
        self.parameters.setdefault(name, str(value))


class AbstractScriptedSegmentEditorEffect:
    """The part of Slicer's ``SegmentEditorEffects.AbstractScriptedSegmentEditorEffect`` that effects inherit:
    ``register`` (into the factory singleton) and ``xyToRas`` (here the view maps the point)."""

    def __init__(self, scriptedEffect):
        self.scriptedEffect = scriptedEffect

    def register(self):
        EffectFactory.instance().registerEffect(self.scriptedEffect)

    def xyToRas(self, xy, viewWidget):
        return viewWidget.xyToRas(xy)


class SliceViewStandIn:
    """A slice view where event position (x, y) maps to a fixed RAS point (what the test clicks)."""

    def __init__(self, ras):
        self.ras = list(ras)

    def className(self):
        return "qMRMLSliceWidget"

    def xyToRas(self, xy):
        return self.ras


class InteractorStandIn:
    def __init__(self, shift=False):
        self.shift = shift

    def GetControlKey(self):
        return False

    def GetAltKey(self):
        return False

    def GetShiftKey(self):
        return self.shift

    def GetEventPosition(self):
        return (10, 10)


# ------------------------------------------------------------------------------------------ the application
class _QtClassMeta(type):
    def __getattr__(cls, name):
        return _QtThing()


class _QtThing:
    """Any Qt value or call: inert."""

    def __call__(self, *args, **kwargs):
        return _QtThing()

    def __getattr__(self, name):
        return _QtThing()


class _QtModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        cls = _QtClassMeta(name, (), {"__init__": lambda self, *a, **k: None,
                                       "__getattr__": lambda self, n: _QtThing()})
        setattr(self, name, cls)
        return cls


class _Application:
    """``slicer.app`` as far as module classes use it: signals to connect to, fired by the test."""

    def __init__(self, base=None):
        self._base = base
        self.slots = {}

    def connect(self, signal, slot):
        self.slots.setdefault(signal, []).append(slot)

    def topLevelWidgets(self):
        return []  # no main window: slicer.util.showStatusMessage then only logs

    def emit(self, signal):
        if signal == "startupCompleted()":  # the application emits it once (qSlicerApplicationHelper.txx:314,318)
            if getattr(self, "_started", False):
                raise RuntimeError("startupCompleted() is emitted once by the application")
            self._started = True
        for slot in self.slots.get(signal, []):
            slot()

    def __getattr__(self, name):
        if self._base is None:
            raise AttributeError(name)
        return getattr(self._base, name)


_CURRENT = {"version": "5.10"}


def install_application_stand_ins(version: str, base_app=None) -> _Application:
    """Install what the Slicer application provides around the loaders: ``qt``/``ctk`` (inert),
    ``slicer.app`` (signals), ``slicer.ScriptedLoadableModule`` base classes, the effect factory and
    ``qSlicerSegmentationsEditorEffectsPythonQt``/``SegmentEditorEffects``. ``version`` picks the loaders'
    semantics. ``base_app`` (e.g. the headless harness' app) answers everything else on ``slicer.app``."""
    if version not in VERSIONS:
        raise ValueError(f"unknown Slicer version {version!r}: one of {VERSIONS}")
    _CURRENT["version"] = version
    import slicer

    sys.modules["qt"] = _QtModule("qt")
    sys.modules["ctk"] = _QtModule("ctk")
    app = _Application(base_app)
    slicer.app = app
    slicer.qSlicerSegmentEditorEffectFactory = EffectFactory
    EffectFactory._instance = None

    effects = types.ModuleType("qSlicerSegmentationsEditorEffectsPythonQt")
    effects.qSlicerSegmentEditorScriptedEffect = ScriptedEffect
    sys.modules[effects.__name__] = effects
    editorEffects = types.ModuleType("SegmentEditorEffects")
    editorEffects.AbstractScriptedSegmentEditorEffect = AbstractScriptedSegmentEditorEffect
    sys.modules[editorEffects.__name__] = editorEffects

    import slicer_harness

    slicer_harness.installScriptedLoadableModuleStub()
    slm = sys.modules["slicer.ScriptedLoadableModule"]

    class ScriptedLoadableModule:
        """Slicer's base ``__init__`` (Base/Python/slicer/ScriptedLoadableModule.py): resets the parent's
        fields, registers the self-test."""

        def __init__(self, parent):
            self.parent = parent
            self.moduleName = self.__class__.__name__
            reset_module_fields(parent)
            if not hasattr(slicer, "selfTests"):
                slicer.selfTests = {}
            slicer.selfTests[self.moduleName] = getattr(self, "runTest", None)

    class ScriptedLoadableModuleTest(unittest.TestCase):
        """Slicer's test base: a ``unittest.TestCase`` (what ctest runs through ``slicer.testing``)."""

        def delayDisplay(self, message, msec=1000):
            print(message)

    slm.ScriptedLoadableModule = ScriptedLoadableModule
    slm.ScriptedLoadableModuleTest = ScriptedLoadableModuleTest
    slm.ScriptedLoadableModuleWidget = type("ScriptedLoadableModuleWidget", (), {})
    return app


class BlockedPackages:
    """A Slicer that has not installed the extension's packages yet: ``names`` are not found, exactly as when they
    are absent (``importlib.util.find_spec`` returns None, ``import`` raises ModuleNotFoundError)."""

    def __init__(self, names):
        self.names = set(names)
        self._saved = None

    def install(self):
        imported = sorted(n for n in sys.modules if n.split(".")[0] in self.names)
        if imported:
            raise RuntimeError(f"already imported, cannot be blocked: {imported}")
        self._saved = list(sys.meta_path)
        sys.meta_path[:] = [_Hiding(finder, self.names) for finder in self._saved]

    def remove(self):
        """'pip install' finished: the packages import from now on (same process, as in Slicer)."""
        sys.meta_path[:] = self._saved
        importlib.invalidate_caches()


class _Hiding(importlib.abc.MetaPathFinder):
    def __init__(self, finder, names):
        self.finder = finder
        self.names = names

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            return None
        find = getattr(self.finder, "find_spec", None)
        return find(name, path, target) if find else None

    def invalidate_caches(self):
        if hasattr(self.finder, "invalidate_caches"):
            self.finder.invalidate_caches()
