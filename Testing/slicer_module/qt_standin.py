"""A Qt for the module's widgets that VALIDATES what the code asks of it, instead of ignoring it.

Slicer's widgets are PythonQt wrappers: ``widget.connect("clicked(bool)", slot)`` names a signal by its C++
signature, properties are attributes (``button.enabled = False``), enums are class attributes
(``qt.QHeaderView.Stretch``). None of that exists headless. This stand-in answers the same calls and checks every
one against the real classes: Qt classes against PySide6's meta-objects (signals, properties) and Python API
(methods, enums); CTK and MRML widget classes against ``data/qt_signatures.json`` (written down once from their
headers). A signal, property, method or enum that the real class lacks raises ``QtStandInError`` (and is recorded
in ``ERRORS``, since PythonQt and Slicer swallow some exceptions), so a typo in a connection string fails a test
instead of silently doing nothing in the app.

It also keeps the state the panels read back (a combo box's items, a tree's items, a property's value) and lets a
test fire a signal (``widget.emit("clicked(bool)", True)``), which calls the slots as PythonQt does: with as many
arguments as the slot accepts.
"""
from __future__ import annotations

import inspect
import json
import types
import xml.etree.ElementTree as ET
from pathlib import Path

from PySide6 import QtCore, QtGui, QtWidgets

DATA = json.loads((Path(__file__).resolve().parent / "data" / "qt_signatures.json").read_text(encoding="utf-8"))
ERRORS: list = []
SLOT_EXCEPTIONS: list = []  # what reached only the console in the app (PythonQt prints a slot's exception)
PENDING_SINGLE_SHOTS: list = []


class QtStandInError(AttributeError):
    pass


def _fail(message: str):
    ERRORS.append(message)
    raise QtStandInError(message)


# ---------------------------------------------------------------------------------------------- class specs
class Spec:
    """What a class has: signals (normalized C++ signatures), properties, methods, enums."""

    def __init__(self, name, signals, properties, methods, enums, pyside=None):
        self.name = name
        self.signals = set(signals)
        self.properties = set(properties)
        self.methods = set(methods)
        self.enums = dict(enums)
        self.pyside = pyside


_SPECS: dict = {}


def _pysideClass(name):
    for module in (QtWidgets, QtCore, QtGui):
        cls = getattr(module, name, None)
        if isinstance(cls, type):
            return cls
    return None


def spec(name: str) -> Spec:
    if name in _SPECS:
        return _SPECS[name]
    data = DATA["classes"].get(name)
    if data is not None:
        base = spec(data["base"])
        result = Spec(name, base.signals | set(data["signals"]), base.properties | set(data["properties"]),
                      base.methods | set(data["methods"]) | set(data["properties"]), {**base.enums, **data["enums"]},
                      base.pyside)
    else:
        cls = _pysideClass(name)
        if cls is None:
            _fail(f"unknown Qt class {name}")
        signals, properties = set(), set()
        meta = getattr(cls, "staticMetaObject", None)
        if meta is not None:
            for index in range(meta.methodCount()):
                method = meta.method(index)
                if method.methodType() == QtCore.QMetaMethod.MethodType.Signal:
                    signals.add(bytes(method.methodSignature()).decode())
            properties = {meta.property(i).name() for i in range(meta.propertyCount())}
        methods = {m for m in dir(cls) if not m.startswith("_")}
        result = Spec(name, signals, properties, methods | properties, {}, cls)
    _SPECS[name] = result
    return result


def normalizeSignature(signature: str) -> str:
    return signature.replace(" ", "").replace("constQString&", "QString")


# ------------------------------------------------------------------------------------------------ values
class Inert:
    """What an unmodelled call returns: falsy, empty, and further calls and attributes are inert too."""

    def __call__(self, *args, **kwargs):
        return Inert()

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return Inert()

    def __bool__(self):
        return False

    def __iter__(self):
        return iter(())

    def __int__(self):
        return 0

    def __index__(self):
        return 0

    def __or__(self, other):
        return other

    __ror__ = __or__


_DEFAULTS = {"enabled": True, "visible": True, "checked": False, "collapsed": False, "text": "", "toolTip": "",
             "currentIndex": -1, "value": 0, "minimum": 0, "maximum": 99, "currentPath": "", "styleSheet": "",
             "columnCount": 1, "topLevelItemCount": 0, "rowCount": 0, "count": 0, "isEntered": False,
             "objectName": "", "format": "%p%", "plainText": ""}

# A property change that Qt signals (what the panels connect to after setting a property in code).
_CHANGE_SIGNALS = {"checked": "toggled(bool)", "currentIndex": "currentIndexChanged(int)",
                   "value": "valueChanged(double)", "text": "textChanged(QString)",
                   "collapsed": "contentsCollapsed(bool)"}


class Widget:
    """Any QObject of class ``className``: properties, signals and methods validated against the class."""

    def __init__(self, *args, className: str = "QWidget", **kwargs):
        object.__setattr__(self, "_spec", spec(className))
        object.__setattr__(self, "_props", {})
        object.__setattr__(self, "_slots", {})
        object.__setattr__(self, "_items", [])  # combo box (text, data), list/tree/table items, layout children
        object.__setattr__(self, "_data", {})
        object.__setattr__(self, "_children", [])
        object.__setattr__(self, "_layout", None)
        for arg in args:
            if isinstance(arg, str) and "text" in self._spec.properties:
                self._props["text"] = arg
        for name, value in kwargs.items():
            setattr(self, name, value)

    # --- validation
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        s = object.__getattribute__(self, "_spec")
        behaviour = getattr(type(self), "_m_" + name, None)
        if name in s.properties and behaviour is None:
            return self._props.get(name, _DEFAULTS.get(name, Inert()))
        if name in s.enums:
            return s.enums[name]
        if name in s.methods:
            if behaviour is not None:
                return types.MethodType(behaviour, self)
            return self._generic(name)
        if s.pyside is not None and hasattr(s.pyside, name):
            return _enumValue(getattr(s.pyside, name))
        _fail(f"{s.name} has no attribute '{name}'")

    def __setattr__(self, name, value):
        s = self._spec
        if name not in s.properties:
            _fail(f"{s.name} has no property '{name}' (set to {value!r})")
        old = self._props.get(name, _DEFAULTS.get(name))
        self._props[name] = value
        signal = _CHANGE_SIGNALS.get(name)
        if signal and old != value:
            for candidate in (signal, signal.replace("(double)", "(int)")):
                if candidate in s.signals:
                    self.emit(candidate, value)
                    break

    def _generic(self, name):
        def call(*args, **kwargs):
            if name.startswith("set") and len(args) == 1 and name[3:4].isupper():
                prop = name[3].lower() + name[4:]
                if prop in self._spec.properties:
                    setattr(self, prop, args[0])
                    return None
            if name in self._spec.properties and not args:
                return self._props.get(name, _DEFAULTS.get(name, Inert()))
            return Inert()

        return call

    # --- signals
    def connect(self, signature, slot):
        signature = normalizeSignature(signature)
        if signature not in self._spec.signals:
            _fail(f"{self._spec.name} has no signal '{signature}' (has: {sorted(self._spec.signals)})")
        self._slots.setdefault(signature, []).append(slot)
        return True

    def disconnect(self, signature, slot=None):
        signature = normalizeSignature(signature)
        if signature not in self._spec.signals:
            _fail(f"{self._spec.name} has no signal '{signature}'")
        if slot is None:
            self._slots.pop(signature, None)
        elif slot in self._slots.get(signature, []):
            self._slots[signature].remove(slot)

    def emit(self, signature, *args):
        """Fire a signal as Qt would, calling each slot with as many arguments as it takes (PythonQt)."""
        signature = normalizeSignature(signature)
        if signature not in self._spec.signals:
            _fail(f"{self._spec.name} has no signal '{signature}'")
        for slot in list(self._slots.get(signature, [])):
            try:
                slot(*args[:_arity(slot, len(args))])
            except Exception as exc:  # PythonQt prints a slot's exception to the console and goes on
                SLOT_EXCEPTIONS.append(f"{type(exc).__name__}: {exc}")
                if isinstance(exc, QtStandInError):
                    raise

    def className(self):
        return self._spec.name

    def isA(self, name):
        return name == self._spec.name

    # --- common QWidget behaviour
    def _m_setVisible(self, visible):
        self._props["visible"] = bool(visible)

    def _m_isVisible(self):
        return self._props.get("visible", True)

    def _m_setEnabled(self, enabled):
        self.enabled = bool(enabled)

    def _m_setToolTip(self, tip):
        self.toolTip = tip

    def _m_setText(self, text):
        self.text = text

    def _m_setStyleSheet(self, sheet):
        self.styleSheet = sheet

    def _m_layout(self):
        return self._layout

    def _m_setLayout(self, layout):
        object.__setattr__(self, "_layout", layout)

    def _m_setMRMLScene(self, scene):
        self._data["scene"] = scene

    def _m_mrmlScene(self):
        return self._data.get("scene")

    def _m_deleteLater(self):
        pass


def _enumValue(value):
    if hasattr(value, "value") and not callable(value):
        return value.value
    return value


def _arity(slot, available: int) -> int:
    try:
        signature = inspect.signature(slot)
    except (TypeError, ValueError):
        return available
    count = 0
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.VAR_POSITIONAL:
            return available
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            count += 1
    return min(count, available)


# ------------------------------------------------------------------------------------- modelled classes
class ComboBox(Widget):
    def _m_addItem(self, text, data=None):
        self._items.append((text, data))
        if len(self._items) == 1:
            self.currentIndex = 0

    def _m_addItems(self, texts):
        for text in texts:
            self._m_addItem(text)

    def _m_clear(self):
        self._items.clear()
        self._props["currentIndex"] = -1

    def _m_findData(self, data):
        return next((i for i, (_, d) in enumerate(self._items) if d == data), -1)

    def _m_findText(self, text):
        return next((i for i, (t, _) in enumerate(self._items) if t == text), -1)

    def _m_itemData(self, index):
        return self._items[index][1] if 0 <= index < len(self._items) else None

    def _m_itemText(self, index):
        return self._items[index][0] if 0 <= index < len(self._items) else ""

    def _m_setCurrentIndex(self, index):
        self.currentIndex = index

    def _m_setItemData(self, index, value, role=None):
        pass

    def _m_setItemText(self, index, text):
        if 0 <= index < len(self._items):
            self._items[index] = (text, self._items[index][1])

    @property
    def count(self):
        return len(self._items)

    @property
    def currentText(self):
        return self._m_itemText(self._props.get("currentIndex", -1))


class NodeComboBox(Widget):
    def _m_currentNode(self):
        return self._data.get("node")

    def _m_setCurrentNode(self, node):
        if node is not self._data.get("node"):
            self._data["node"] = node
            self.emit("currentNodeChanged(vtkMRMLNode*)", node)

    def _m_setCurrentNodeID(self, nodeId):
        scene = self._data.get("scene")
        self._m_setCurrentNode(scene.GetNodeByID(nodeId) if scene is not None and nodeId else None)


class TreeWidget(Widget):
    def _m_addTopLevelItem(self, item):
        self._items.append(item)
        item._tree = self

    def _m_topLevelItem(self, index):
        return self._items[index]

    def _m_clear(self):
        self._items.clear()
        self._data["current"] = None

    def _m_currentItem(self):
        return self._data.get("current")

    def _m_setCurrentItem(self, item):
        previous = self._data.get("current")
        if item is not previous:
            self._data["current"] = item
            self.emit("currentItemChanged(QTreeWidgetItem*,QTreeWidgetItem*)", item, previous)

    def _m_header(self):
        return self._data.setdefault("header", Widget(className="QHeaderView"))

    @property
    def topLevelItemCount(self):
        return len(self._items)


class TreeWidgetItem:
    """A QTreeWidgetItem (not a QObject): methods validated against PySide6's QTreeWidgetItem."""

    _cls = QtWidgets.QTreeWidgetItem

    def __init__(self, texts=None, *args):
        self._texts = list(texts or [])
        self._data = {}
        self._check = {}
        self._children = []
        self._parent = None
        self._tree = None
        self._flags = 0
        self._hidden = False

    def __getattr__(self, name):
        if name.startswith("_") or not hasattr(self._cls, name):
            _fail(f"{type(self).__name__[:-0] or 'item'} ({self._cls.__name__}) has no attribute '{name}'")
        return lambda *args, **kwargs: Inert()

    def setData(self, column, role, value):
        self._data[(column, role)] = value
        if role == _enumValue(QtCore.Qt.ItemDataRole.CheckStateRole):
            self.setCheckState(column, value)

    def data(self, column, role):
        return self._data.get((column, role))

    def text(self, column):
        return self._texts[column] if column < len(self._texts) else ""

    def setToolTip(self, column, text):
        self._data[(column, "tip")] = text

    def setFlags(self, flags):
        self._flags = flags

    def flags(self):
        return self._flags

    def setCheckState(self, column, state):
        old = self._check.get(column)
        self._check[column] = state
        tree = self._tree or (self._parent._tree if self._parent is not None else None)
        if tree is not None and old != state:
            tree.emit("itemChanged(QTreeWidgetItem*,int)", self, column)

    def checkState(self, column):
        return self._check.get(column, 0)

    def addChild(self, child):
        child._parent = self
        self._children.append(child)

    def child(self, index):
        return self._children[index]

    def childCount(self):
        return len(self._children)

    def setExpanded(self, expanded):
        pass

    def setHidden(self, hidden):
        self._hidden = bool(hidden)

    def isHidden(self):
        return self._hidden


class TableWidgetItem(TreeWidgetItem):
    _cls = QtWidgets.QTableWidgetItem

    def __init__(self, text="", *args):
        super().__init__([text])

    def text(self):
        return self._texts[0]

    def setText(self, text):
        self._texts = [text]

    def setData(self, role, value):
        self._data[role] = value

    def data(self, role):
        return self._data.get(role)

    def setToolTip(self, text):
        self._data["tip"] = text

    def setForeground(self, brush):
        self._data["fg"] = brush

    def setTextAlignment(self, alignment):
        pass


class TableWidget(Widget):
    def _m_setRowCount(self, rows):
        self._props["rowCount"] = rows
        self._data["cells"] = {k: v for k, v in self._data.get("cells", {}).items() if k[0] < rows}

    def _m_rowCount(self):
        return self._props.get("rowCount", 0)

    def _m_setItem(self, row, column, item):
        self._data.setdefault("cells", {})[(row, column)] = item

    def _m_item(self, row, column):
        return self._data.get("cells", {}).get((row, column))

    def _m_horizontalHeader(self):
        return self._data.setdefault("header", Widget(className="QHeaderView"))

    def _m_verticalHeader(self):
        return self._data.setdefault("vheader", Widget(className="QHeaderView"))

    def _m_selectRow(self, row):
        self._data["selected"] = row
        self.emit("itemSelectionChanged()")

    def _m_currentRow(self):
        return self._data.get("selected", -1)

    def _m_selectedItems(self):
        row = self._data.get("selected")
        return [v for (r, _), v in self._data.get("cells", {}).items() if r == row]


class Layout(Widget):
    def _add(self, thing):
        self._items.append(thing)

    def _m_addWidget(self, widget, *args):
        self._add(widget)

    def _m_addLayout(self, layout, *args):
        self._add(layout)

    def _m_addRow(self, *args):
        for arg in args:
            if not isinstance(arg, str):
                self._add(arg)

    def _m_addStretch(self, *args):
        pass

    def _m_count(self):
        return len(self._items)

    def _m_takeAt(self, index):
        thing = self._items.pop(index)
        return types.SimpleNamespace(widget=lambda: thing if isinstance(thing, Widget) else None)


class Timer(Widget):
    def _m_start(self, *args):
        self._data["active"] = True

    def _m_stop(self):
        self._data["active"] = False

    def _m_isActive(self):
        return self._data.get("active", False)

    def fire(self):
        """The test's clock: one timeout."""
        self.emit("timeout()")


_MODELLED = {"QComboBox": ComboBox, "qMRMLNodeComboBox": NodeComboBox, "QTreeWidget": TreeWidget,
             "QTableWidget": TableWidget, "QTimer": Timer,
             "QVBoxLayout": Layout, "QHBoxLayout": Layout, "QFormLayout": Layout, "QGridLayout": Layout}


def create(className: str, *args, **kwargs):
    """A stand-in instance of ``className`` (validated as that class)."""
    if className == "QTreeWidgetItem":
        return TreeWidgetItem(*args)
    if className == "QTableWidgetItem":
        return TableWidgetItem(*args)
    cls = _MODELLED.get(className, Widget)
    widget = cls(*args, className=className, **kwargs)
    if cls is Layout and args and isinstance(args[0], Widget):
        args[0]._m_setLayout(widget)
    return widget


# ---------------------------------------------------------------------------------------------- modules
class _StaticClass:
    """``qt.QTimer`` etc. as a class: calling makes a stand-in; attributes are enums and static methods, checked
    against the real class."""

    def __init__(self, name, statics=None):
        self._name = name
        self._spec = spec(name)
        self._statics = statics or {}

    def __call__(self, *args, **kwargs):
        return create(self._name, *args, **kwargs)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if name in self._statics:
            return self._statics[name]
        if name in self._spec.enums:
            return self._spec.enums[name]
        if self._spec.pyside is not None and hasattr(self._spec.pyside, name):
            value = getattr(self._spec.pyside, name)
            if callable(value) and not hasattr(value, "value"):
                return lambda *args, **kwargs: Inert()
            return _enumValue(value)
        _fail(f"{self._name} has no attribute '{name}'")


class _Namespace:
    """``qt.Qt``: enum values checked against PySide6's ``Qt`` namespace."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if not hasattr(QtCore.Qt, name):
            _fail(f"Qt has no '{name}'")
        return _enumValue(getattr(QtCore.Qt, name))


def _singleShot(msec, slot):
    PENDING_SINGLE_SHOTS.append(slot)


def runSingleShots():
    while PENDING_SINGLE_SHOTS:
        PENDING_SINGLE_SHOTS.pop(0)()


class QtModule(types.ModuleType):
    """The ``qt`` (or ``ctk``, ``slicer``-widget) module: every class looked up is validated."""

    STATICS = {"QTimer": {"singleShot": _singleShot},
               "QApplication": {"setOverrideCursor": lambda *a: None, "restoreOverrideCursor": lambda *a: None,
                                "clipboard": lambda: Widget(className="QClipboard"), "processEvents": lambda *a: None},
               "QFileDialog": {}}

    def __init__(self, name, allowed=None):
        super().__init__(name)
        self._allowed = allowed

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if name == "Qt":
            return _Namespace()
        if self._allowed is not None and name not in self._allowed:
            raise AttributeError(name)
        value = _StaticClass(name, self.STATICS.get(name))
        setattr(self, name, value)
        return value


def install(sys_modules) -> None:
    ERRORS.clear()
    SLOT_EXCEPTIONS.clear()
    PENDING_SINGLE_SHOTS.clear()
    sys_modules["qt"] = QtModule("qt")
    sys_modules["ctk"] = QtModule("ctk", allowed={n for n in DATA["classes"] if n.startswith("ctk")})


# ------------------------------------------------------------------------------------------------ .ui
def loadUI(path):
    """``slicer.util.loadUI``: the .ui file's widgets as stand-ins of their declared classes, with the properties
    the file sets (every one validated against the class), objectName set. Returns the top widget."""
    root = ET.parse(path).getroot().find("widget")
    return _build(root, None)


def _build(element, parentLayout):
    widget = create(element.get("class"))
    widget._props["objectName"] = element.get("name", "")
    for prop in element.findall("property"):
        name = prop.get("name")
        if prop.get("stdset") == "0":  # a dynamic property (SlicerParameterName): no class check
            widget._data.setdefault("dynamic", {})[name] = _propertyValue(prop)
            continue
        if name not in widget._spec.properties:
            _fail(f"{element.get('class')} '{element.get('name')}' in the .ui file: no property '{name}'")
        widget._props[name] = _propertyValue(prop)
    for child in element:
        if child.tag == "layout":
            layout = create(child.get("class"))
            widget._m_setLayout(layout)
            _buildLayout(child, layout, widget)
        elif child.tag == "widget":
            widget._children.append(_build(child, None))
    return widget


def _buildLayout(element, layout, owner):
    for item in element.findall("item"):
        for child in item:
            if child.tag == "widget":
                built = _build(child, layout)
                layout._items.append(built)
                owner._children.append(built)
            elif child.tag == "layout":
                inner = create(child.get("class"))
                layout._items.append(inner)
                _buildLayout(child, inner, owner)


def _propertyValue(prop):
    for value in prop:
        if value.tag == "bool":
            return value.text == "true"
        if value.tag in ("number",):
            return int(value.text)
        if value.tag == "double":
            return float(value.text)
        if value.tag in ("string", "cstring", "enum", "set"):
            return value.text or ""
        if value.tag == "stringlist":
            return [s.text for s in value.findall("string")]
    return None


def childWidgetVariables(widget):
    """``slicer.util.childWidgetVariables``: every named descendant; a missing name raises (validated)."""
    found = {}

    def walk(w):
        for child in w._children:
            name = child._props.get("objectName")
            if name:
                found[name] = child
            walk(child)

    walk(widget)
    return _UiNamespace(found)


class _UiNamespace:
    def __init__(self, widgets):
        self.__dict__["_widgets"] = widgets

    def __getattr__(self, name):
        widgets = self.__dict__["_widgets"]
        if name not in widgets:
            _fail(f"self.ui.{name}: no widget named '{name}' in the .ui file")
        return widgets[name]

    def __iter__(self):
        return iter(self.__dict__["_widgets"].items())
