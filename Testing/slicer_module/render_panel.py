"""Render the AtlasSeg panel (``AtlasSeg/Resources/UI/AtlasSeg.ui``) offscreen to a PNG for the README.

Slicer's Qt is not available outside Slicer, so this loads a copy of the .ui with PySide6's QUiLoader, the
Slicer/CTK widget classes replaced by their Qt base classes (qMRMLNodeComboBox -> QComboBox,
ctkCollapsibleButton -> QGroupBox, ctkSearchBox -> QLineEdit, qMRMLWidget -> QWidget), and fills the controls
with what the panel shows during a run on the demo phantom. Model rows come from the real model cards.

PySide6 must not go into the project's venv (it would clash with Slicer's and vtk's Qt); use a throwaway one::

    python3 -m venv /tmp/pyside && /tmp/pyside/bin/pip install PySide6-Essentials
    QT_QPA_PLATFORM=offscreen /tmp/pyside/bin/python Testing/slicer_module/render_panel.py [OUTPUT.png]

Default output: ``Resources/Screenshots/panel.png``.
"""
import json
import os
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QRect, Qt  # noqa: E402
from PySide6.QtGui import QColor  # noqa: E402
from PySide6.QtUiTools import QUiLoader  # noqa: E402
from PySide6.QtWidgets import QApplication, QGroupBox, QHeaderView, QTreeWidgetItem  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
UI_FILE = REPO_ROOT / "AtlasSeg" / "Resources" / "UI" / "AtlasSeg.ui"
DEFAULT_OUTPUT = REPO_ROOT / "Resources" / "Screenshots" / "panel.png"

BASE_CLASSES = {"qMRMLWidget": "QWidget", "qMRMLNodeComboBox": "QComboBox", "ctkCollapsibleButton": "QGroupBox",
                "ctkSearchBox": "QLineEdit"}
# Properties of the Slicer/CTK classes that their Qt stand-ins do not have.
SLICER_ONLY_PROPERTIES = {"nodeTypes", "showChildNodeTypes", "addEnabled", "removeEnabled", "noneEnabled", "collapsed"}


def plainQtUi() -> bytes:
    """The .ui XML with Slicer/CTK classes swapped for Qt ones (collapsible buttons become group boxes)."""
    tree = ElementTree.parse(UI_FILE)
    root = tree.getroot()
    for widget in root.iter("widget"):
        original = widget.get("class")
        if original in BASE_CLASSES:
            widget.set("class", BASE_CLASSES[original])
        for prop in list(widget.findall("property")):
            if prop.get("name") in SLICER_ONLY_PROPERTIES:
                widget.remove(prop)
            elif original == "ctkCollapsibleButton" and prop.get("name") == "text":
                prop.set("name", "title")
    for section in ("customwidgets", "connections"):
        element = root.find(section)
        if element is not None:
            root.remove(element)
    return ElementTree.tostring(root, encoding="utf-8")


def modelRows() -> list:
    """(title, number of classes, size, license, status) of every built-in model card."""
    rows = []
    for path in sorted((REPO_ROOT / "AtlasSegLib" / "cards").glob("*.json")):
        card = json.loads(path.read_text(encoding="utf-8"))
        size = (card.get("weights") or {}).get("size")
        shipped = bool((card.get("weights") or {}).get("file"))
        rows.append((card["title"], str(len(card["classes"])), f"{size / 1e6:.0f} MB" if size else "?",
                     "not stated" if card["license"].lower().startswith("not stated")
                     else card["license"].split(" (")[0].split(";")[0],
                     "ready" if shipped else "not downloaded"))
    return sorted(rows)


def structureGroups(cardId: str) -> dict:
    structures = json.loads((REPO_ROOT / "AtlasSegLib" / "data" / "structures.json").read_text())["structures"]
    card = json.loads((REPO_ROOT / "AtlasSegLib" / "cards" / f"{cardId}.json").read_text())
    groups = {"Organs": [], "Tumors": []}
    for entry in card["classes"]:
        known = structures.get(entry["name"], {})
        kind = entry.get("kind") or known.get("kind", "organ")
        colour = entry.get("color") or known.get("color", [128, 174, 128])
        groups["Tumors" if kind == "tumor" else "Organs"].append((entry["name"], colour))
    return groups


def fill(panel) -> None:
    """Put the panel in the state of a running segmentation of the demo phantom."""
    find = panel.findChild
    find(QGroupBox, "logCollapsibleButton").setVisible(False)  # collapsed in Slicer
    find(object, "dependenciesFrame").setVisible(False)
    find(object, "inputVolumeSelector").addItem("AtlasSeg phantom")
    find(object, "inputInfoLabel").setText("192×160×96 voxels, 2×2×2.5 mm, LPS")
    tree = find(object, "modelTreeWidget")
    for row in modelRows():
        tree.addTopLevelItem(QTreeWidgetItem(list(row)))
    header = tree.header()
    header.setStretchLastSection(False)
    header.setSectionResizeMode(0, QHeaderView.Stretch)
    for column in range(1, tree.columnCount()):
        header.setSectionResizeMode(column, QHeaderView.ResizeToContents)
    target = "SuPreM SegResNet (AbdomenAtlas 1.1, 2,100 CT)"
    for index in range(tree.topLevelItemCount()):
        if tree.topLevelItem(index).text(0) == target:
            tree.setCurrentItem(tree.topLevelItem(index))
    find(object, "modelDetailsBrowser").setHtml(
        "<b>SuPreM SegResNet (AbdomenAtlas 1.1, 2,100 CT)</b> <small>(suprem-segresnet)</small><br>Supervised "
        "pre-trained SegResNet from the SuPreM work, trained on AbdomenAtlas 1.1.<p><b>Organs (25)</b>, "
        "<b>Tumors (7)</b></p><p><b>License:</b> Apache-2.0 (weights)<br><b>Cite:</b> Li W, Yuille A, Zhou Z. "
        "ICLR 2024.</p>")
    find(object, "downloadProgressBar").setVisible(False)
    find(object, "cancelDownloadButton").setVisible(False)
    find(object, "downloadButton").setEnabled(True)
    structures = find(object, "structureTreeWidget")
    groups = structureGroups("suprem-segresnet")
    for title, members in groups.items():
        group = QTreeWidgetItem([f"{title} ({len(members)})"])
        group.setFlags(group.flags() | Qt.ItemIsUserCheckable | Qt.ItemIsAutoTristate)
        structures.addTopLevelItem(group)
        for name, colour in members:
            item = QTreeWidgetItem([name])
            item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
            item.setCheckState(0, Qt.Unchecked if name in ("prostate", "femur_left", "femur_right") else Qt.Checked)
            item.setData(0, Qt.DecorationRole, QColor(*colour))
            group.addChild(item)
        group.setExpanded(True)
    total = sum(len(m) for m in groups.values())
    find(object, "structureCountLabel").setText(f"{total - 3} of {total} ticked")
    device = find(object, "deviceComboBox")
    device.addItems(["Auto", "CPU", "GPU (CUDA)"])
    find(object, "deviceInfoLabel").setText("Detected: torch 2.5.1 (CPU-only build); no CUDA GPU detected")
    # The quality presets with this CT's estimate, as the panel shows them once 'atlasseg estimate' answered: SuPreM
    # SegResNet on the demo phantom places 96 / 36 / 2 windows (estimate.estimate); the times are those windows at
    # the seconds per window measured on this 2-core machine (OpenVINO fp32 1.06 s, INT8 0.58 s; issue 24) with
    # estimate's non-network share.
    quality = find(object, "qualityComboBox")
    quality.addItems(["Reference — 96 windows, ~2 min", "Balanced — 36 windows, ~20 s", "Fast (3 mm) — 2 windows, ~10 s"])
    quality.setCurrentIndex(1)
    find(object, "qualityEstimateLabel").setText("Balanced: 36 windows, ~20 s on this CT (openvino int8)")
    find(object, "qualityHintLabel").setText(
        "This torch build has no CUDA support, so a GPU cannot be used; reinstall torch with CUDA from the "
        "PyTorch Utils module to use an NVIDIA GPU.")
    find(object, "outputSegmentationSelector").addItem("AtlasSeg phantom AtlasSeg")
    find(object, "outputSegmentationSelector").setEnabled(False)
    find(object, "undoButton").setEnabled(False)
    find(object, "applyButton").setText("Cancel")
    progress = find(object, "runProgressBar")
    progress.setValue(420)
    progress.setFormat("inference %p%")
    find(object, "runStatusLabel").setText("Running the model (window 12/30) — 42% — 1:15 elapsed")


def loadPanel():
    """The .ui panel as plain Qt widgets, filled as during a run on the demo phantom (a QApplication must exist)."""
    data = QByteArray(plainQtUi())
    buffer = QBuffer(data)
    buffer.open(QIODevice.ReadOnly)
    panel = QUiLoader().load(buffer)
    buffer.close()
    if panel is None:
        raise SystemExit(f"QUiLoader could not load {UI_FILE}")
    fill(panel)
    return panel


def main(argv) -> int:
    output = Path(argv[1]) if len(argv) > 1 else DEFAULT_OUTPUT
    app = QApplication.instance() or QApplication([])
    panel = loadPanel()
    panel.resize(440, 100)
    panel.adjustSize()
    panel.resize(440, panel.sizeHint().height())
    panel.show()
    app.processEvents()  # lay the widgets out at the final size before measuring them
    # Crop below the last section (the module widget's stretch would add empty space).
    last = panel.findChild(QGroupBox, "runCollapsibleButton")
    bottom = last.geometry().bottom() + 8
    output.parent.mkdir(parents=True, exist_ok=True)
    if not panel.grab(QRect(0, 0, panel.width(), bottom)).save(str(output)):
        raise SystemExit(f"could not write {output}")
    print(output)
    app.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
