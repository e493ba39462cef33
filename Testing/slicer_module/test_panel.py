"""The panel (.ui), the widget code that uses it, and the packaging that ships them.

The widget needs Qt and cannot run here; these tests read the files instead, so a renamed widget, a button
without a tooltip or a file missing from CMake fails here rather than in a user's Slicer.
"""
import ast
import re
import sys
import xml.etree.ElementTree as ElementTree

import pytest

from slicer_harness import MODULE_DIR, REPO_ROOT

UI_FILE = MODULE_DIR / "Resources" / "UI" / "AtlasSeg.ui"
WIDGET_FILE = MODULE_DIR / "AtlasSeg.py"
LOGIC_FILE = MODULE_DIR / "AtlasSegModule" / "AtlasSegLogic.py"
CLICKABLE = {"QPushButton", "QToolButton", "QCheckBox", "QRadioButton", "QComboBox", "qMRMLNodeComboBox",
             "ctkSearchBox"}


def _uiWidgets() -> dict:
    """name -> (class, {property: text}) for every widget in the .ui file."""
    widgets = {}
    for element in ElementTree.parse(UI_FILE).iter("widget"):
        properties = {}
        for prop in element.findall("property"):
            text = prop.find("string")
            properties[prop.get("name")] = text.text if text is not None else ""
        widgets[element.get("name")] = (element.get("class"), properties)
    return widgets


def _uiNamesUsedInCode() -> set:
    tree = ast.parse(WIDGET_FILE.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"):
            names.add(node.attr)
    return names


def _parameterFields() -> set:
    tree = ast.parse(LOGIC_FILE.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "AtlasSegParameterNode":
            return {item.target.id for item in node.body if isinstance(item, ast.AnnAssign)}
    raise AssertionError("AtlasSegParameterNode not found in AtlasSegLogic.py")


def test_every_widget_the_code_uses_exists_in_the_ui_file():
    used = _uiNamesUsedInCode()
    assert len(used) > 20, "the AST scan found too few widget names; did the widget code change shape?"
    missing = sorted(used - set(_uiWidgets()))
    assert not missing, f"AtlasSeg.py uses widgets that AtlasSeg.ui does not define: {missing}"


def test_every_control_has_a_tooltip():
    bare = [name for name, (cls, props) in _uiWidgets().items() if cls in CLICKABLE and not props.get("toolTip")]
    assert not bare, f"controls without a tooltip: {bare}"


def test_parameter_bindings_name_real_parameter_fields():
    fields = _parameterFields()
    bound = {props["SlicerParameterName"] for _, props in _uiWidgets().values() if "SlicerParameterName" in props}
    assert bound and bound <= fields, f"unknown SlicerParameterName(s): {sorted(bound - fields)}"


def test_custom_widget_classes_are_declared():
    root = ElementTree.parse(UI_FILE).getroot()
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {cls for cls, _ in _uiWidgets().values()}
    custom = {cls for cls in used if cls.startswith(("qMRML", "ctk", "qSlicer"))}
    assert custom <= declared, f"undeclared custom widgets: {sorted(custom - declared)}"


def test_node_selectors_get_the_scene():
    """qMRMLNodeComboBoxes list nothing unless the scene reaches them through a connection in the .ui."""
    root = ElementTree.parse(UI_FILE).getroot()
    receivers = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    selectors = {name for name, (cls, _) in _uiWidgets().items() if cls == "qMRMLNodeComboBox"}
    assert selectors <= receivers


def test_module_cmake_lists_every_script_and_resource():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8").replace("${MODULE_NAME}", "AtlasSeg")
    listed = set(re.findall(r"[\w/.-]+\.(?:py|ui|png|txt|json)", cmake))
    scripts = {str(p.relative_to(MODULE_DIR)) for p in MODULE_DIR.rglob("*.py") if "__pycache__" not in p.parts}
    resources = {str(p.relative_to(MODULE_DIR)) for p in MODULE_DIR.rglob("Resources/**/*")
                 if p.is_file() and "__pycache__" not in p.parts}
    assert scripts <= listed, f"scripts missing from AtlasSeg/CMakeLists.txt: {sorted(scripts - listed)}"
    assert resources <= listed, f"resources missing from AtlasSeg/CMakeLists.txt: {sorted(resources - listed)}"


def test_extension_cmake_has_the_metadata_the_extension_index_requires():
    cmake = (REPO_ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf"set\({key} \"[^\"]+\"\)", cmake), key
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in cmake
    assert "add_subdirectory(AtlasSeg)" in cmake


def test_icon_is_128_pixels_square():
    from PIL import Image

    with Image.open(MODULE_DIR / "Resources" / "Icons" / "AtlasSeg.png") as icon:
        assert icon.size == (128, 128)


@pytest.mark.parametrize("module", ["AtlasSegLogic", "AtlasSegBridge", "AtlasSegRunner", "AtlasSegDependencies"])
def test_logic_side_imports_without_qt(module):
    __import__(f"AtlasSegModule.{module}")
    assert "qt" not in sys.modules and "ctk" not in sys.modules


def test_help_text_cites_the_models_and_datasets():
    text = WIDGET_FILE.read_text(encoding="utf-8")
    for citation in ("How Well Do Supervised 3D Models Transfer", "AbdomenAtlas",
                     "Towards Generalizable Tumor Synthesis"):
        assert citation in text


def test_review_sliders_grid_holds_only_widgets_so_a_rebuild_deletes_everything():
    """The panel clears the sliders grid with ``takeAt(0).widget().deleteLater()``; a nested layout's item has no
    widget, so its buttons stayed on screen when the panel was rebuilt for a second segmentation."""
    import ast

    source = (MODULE_DIR / "AtlasSegModule" / "AtlasSegReviewPanel.py").read_text(encoding="utf-8")
    calls = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Attribute) and node.func.attr in ("addLayout", "addItem")
             and "slidersLayout" in ast.unparse(node.func.value)]
    assert calls == [], [ast.unparse(c) for c in calls]
