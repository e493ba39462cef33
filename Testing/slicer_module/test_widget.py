"""The module's widget runs: setup, enter, exit, cleanup and the panels, under a Qt stand-in that validates every
signal, property, method, enum and ``self.ui.X`` against the real classes (``qt_standin``, ``widget_harness``).

Each test runs in a fresh process (the harness replaces ``qt``/``ctk``). What only the real application can
confirm: drawing, focus and modality (the stand-in checks names and drives the slots, it does not paint), and the
real parameterNodeWrapper's GUI connectors (modelled here for the widget classes the .ui binds).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

PRELUDE = """
import json, sys
sys.path.insert(0, {here!r})
import vtk, slicer
import widget_harness
out = {{}}
"""


def _run(body: str, env: dict = None, **format) -> dict:
    script = PRELUDE.format(here=str(HERE)) + body + '\nprint("RESULT " + json.dumps(out))\n'
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=str(HERE),
                       env=None if env is None else {**os.environ, **env})
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    assert r.returncode == 0 and lines, f"exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def test_the_widget_sets_up_enters_exits_and_cleans_up_under_the_validating_qt():
    out = _run("""
env = widget_harness.start()
widget = env.createWidget()
widget.enter()
# The parameter node is bound to the .ui (Show 3D reaches it), and the scene's first CT fills the input.
widget.ui.show3DCheckBox.checked = True
out["fast"] = widget._parameterNode.show3D
volume = widget.logic.loadDemoPhantom()
widget.exit(); widget.enter()
out["input"] = widget._parameterNode.inputVolume is not None
# The GPU check answers through the panel's timer (a process of its own): torch never enters this process.
import time
deadline = time.time() + 120
while widget.logic.cachedDeviceInfo() is None and time.time() < deadline:
    widget._probeTimer.fire(); time.sleep(0.05)
out["device"] = widget.ui.deviceInfoLabel.text
out["torchImported"] = "torch" in sys.modules
out["models"] = widget.ui.modelTreeWidget.topLevelItemCount
out["applyEnabled"] = widget.ui.applyButton.enabled
out["applyTip"] = widget.ui.applyButton.toolTip
widget.exit()
widget.cleanup()
out["errors"] = env.qt.ERRORS
out["dialogs"] = env.dialogs.errors
""")
    assert out["errors"] == [] and out["dialogs"] == []
    assert out["fast"] is True and out["input"] is True
    assert out["device"].startswith("Detected: torch ")
    assert out["torchImported"] is False
    assert out["models"] >= 1 and out["applyEnabled"] is True, out["applyTip"]


def test_the_stand_in_refuses_what_the_real_classes_lack():
    """So the test above can fail: a misspelt signal, property, method, enum or .ui name is an error."""
    out = _run("""
env = widget_harness.start()
qt, ctk = sys.modules["qt"], sys.modules["ctk"]
checks = {
  "signal": lambda: qt.QPushButton().connect("clickd(bool)", print),
  "property": lambda: setattr(qt.QPushButton(), "enabeld", False),
  "method": lambda: qt.QComboBox().addItme("x"),
  "enum": lambda: qt.QHeaderView.Strech,
  "qtEnum": lambda: qt.Qt.UserRol,
  "ctkSignal": lambda: ctk.ctkCollapsibleButton().connect("collapsed(bool)", print),
  "mrmlSignal": lambda: slicer.qMRMLNodeComboBox().connect("currentNodeChanged(vtkMRMLScene*)", print),
  "ui": lambda: env.createWidget().ui.applyButon,
}
for name, check in checks.items():
    try:
        check()
        out[name] = "accepted"
    except AttributeError as exc:
        out[name] = str(exc)
ok = qt.QPushButton()
ok.connect("clicked(bool)", print); ok.enabled = False
ctk.ctkCollapsibleButton().connect("contentsCollapsed(bool)", print)
slicer.qMRMLNodeComboBox().connect("currentNodeChanged(vtkMRMLNode*)", print)
out["valid"] = "ok"
""")
    for name in ("signal", "property", "method", "enum", "qtEnum", "ctkSignal", "mrmlSignal", "ui"):
        assert out[name] != "accepted", name
    assert "clickd(bool)" in out["signal"] and "applyButon" in out["ui"]
    assert out["valid"] == "ok"


def test_install_disables_the_buttons_and_a_second_click_does_not_start_another_pip():
    """D2: Slicer processes clicks while pip runs; the panel must not start a second install meanwhile. pip runs
    for real here (the package is already satisfied, so no network) and then the import check."""
    out = _run("""
env = widget_harness.start()
widget = env.createWidget()
import AtlasSeg
deps = AtlasSeg.deps
import importlib.metadata as metadata
realVersion = metadata.version
state = {"installed": False}
def version(name):  # tqdm is not installed until pip has run
    if name == "tqdm" and not state["installed"]:
        raise metadata.PackageNotFoundError(name)
    return realVersion(name)
metadata.version = version
calls = []
realRun = deps.runCommand
def spyRun(command, **kwargs):
    calls.append(command[:5])
    try:
        return realRun(command, **kwargs)
    finally:
        state["installed"] = True
deps.runCommand = spyRun
seen = []
def duringInstall():
    if not seen:  # the user clicks Install (and Apply) again while pip runs
        seen.append({"install": widget.ui.installDependenciesButton.enabled, "apply": widget.ui.applyButton.enabled,
                     "download": widget.ui.downloadButton.enabled})
        widget.ui.installDependenciesButton.emit("clicked(bool)", False)
        widget.ui.applyButton.emit("clicked(bool)", False)
env.app.processEventsHooks.append(duringInstall)
widget.ui.installDependenciesButton.emit("clicked(bool)", False)
env.app.processEventsHooks.clear()
out["during"] = seen[0] if seen else None
out["pipRuns"] = [c for c in calls if "pip" in c]
out["after"] = widget.ui.installDependenciesButton.enabled
out["errors"] = env.qt.ERRORS
out["dialogs"] = env.dialogs.errors
out["questions"] = len(env.dialogs.questions)
""")
    assert out["errors"] == [] and out["dialogs"] == []
    assert out["during"] == {"install": False, "apply": False, "download": False}
    assert len(out["pipRuns"]) == 1  # the second click started nothing
    assert out["questions"] == 1 and out["after"] is True


def test_export_before_the_packages_are_installed_says_so_instead_of_failing_silently(tmp_path):
    """D8: the export logic's ImportError (cc3d not installed yet) escaped the Qt slot: console only."""
    out = _run("""
import slicer_loaders
blocked = slicer_loaders.BlockedPackages(["cc3d"]); blocked.install()
env = widget_harness.start()
widget = env.createWidget()
panel = widget.exportPanel
segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
panel.segmentationSelector.setCurrentNode(segmentation)
panel.outputFolderEdit.currentPath = {folder!r}
panel.exportButton.emit("clicked(bool)", False)
out["status"] = panel.statusLabel.text
out["dialogs"] = env.dialogs.errors
out["errors"] = env.qt.ERRORS
""".replace("{folder!r}", repr(str(tmp_path))))
    assert out["errors"] == []
    assert out["status"].startswith("Export failed:") and "cc3d" in out["status"]
    assert out["dialogs"] and "Export failed" in out["dialogs"][0]


def test_an_effect_click_before_the_packages_are_installed_says_so_once():
    """D9: Slicer swallows the effect's exception (the click silently did nothing, a traceback per click)."""
    out = _run("""
import slicer_loaders
blocked = slicer_loaders.BlockedPackages(["cc3d"]); blocked.install()
env = widget_harness.start(started=False)
env.createModule()
env.app.emit("startupCompleted()")
effect = slicer.qSlicerSegmentEditorEffectFactory.instance().registeredEffects()[0]
effect.segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
clicks = [effect.self().processInteractionEvents(slicer_loaders.InteractorStandIn(), vtk.vtkCommand.LeftButtonPressEvent,
                                                  slicer_loaders.SliceViewStandIn([0, 0, 0])) for _ in range(2)]
out["consumed"] = clicks
out["dialogs"] = env.dialogs.errors
out["status"] = env.dialogs.status
""")
    assert out["consumed"] == [True, True]
    assert len(out["dialogs"]) == 1 and "Install" in out["dialogs"][0]
    assert len(out["status"]) == 2


def test_the_effect_is_registered_when_the_module_is_created_after_startup():
    """D1: startupCompleted is emitted once; a module loaded later (Extension Wizard) never got it."""
    out = _run("""
env = widget_harness.start(started=True)
env.createModule()
env.qt.runSingleShots()  # the event loop runs, no startupCompleted
out["after"] = [e.name for e in slicer.qSlicerSegmentEditorEffectFactory.instance().registeredEffects()]
env.createModule()  # a second instance (Reload) registers nothing twice
env.qt.runSingleShots()
out["again"] = [e.name for e in slicer.qSlicerSegmentEditorEffectFactory.instance().registeredEffects()]
""")
    assert out["after"] == ["Remove false positive"] and out["again"] == ["Remove false positive"]


def test_at_normal_startup_the_effect_waits_for_startup_completed():
    out = _run("""
env = widget_harness.start(started=False)
env.createModule()
env.qt.runSingleShots()
out["before"] = len(slicer.qSlicerSegmentEditorEffectFactory.instance().registeredEffects())
env.app.emit("startupCompleted()")
out["after"] = len(slicer.qSlicerSegmentEditorEffectFactory.instance().registeredEffects())
""")
    assert out == {"before": 0, "after": 1}


def test_the_review_never_repoints_the_segment_editor_and_keeps_its_own_undo():
    """D10: repointing the Segment Editor's widget discarded the user's undo history there."""
    out = _run("""
import types, numpy as np
env = widget_harness.start()
widget = env.createWidget()
panel = widget.reviewPanel
volume = widget.logic.loadDemoPhantom()
reviewed = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
reviewed.SetReferenceImageGeometryParameterFromVolumeNode(volume)
segmentId = reviewed.GetSegmentation().AddEmptySegment("liver_tumor")
other = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
repointed = []
editor = types.SimpleNamespace(segmentationNode=lambda: other, setSegmentationNode=repointed.append,
                               setSourceVolumeNode=repointed.append, saveStateForUndo=lambda: None)
slicer.modules.segmenteditor = types.SimpleNamespace(
    widgetRepresentation=lambda: types.SimpleNamespace(self=lambda: types.SimpleNamespace(editor=editor)))
panel.session = types.SimpleNamespace(segmentationNode=reviewed, refresh=lambda: None)
mask = np.zeros(slicer.util.arrayFromVolume(volume).shape, np.uint8); mask[10:20, 10:20, 10:20] = 1
panel._saveStateForUndo()
slicer.util.updateSegmentBinaryLabelmapFromArray(mask, reviewed, segmentId, volume)
out["edited"] = int(slicer.util.arrayFromSegmentBinaryLabelmap(reviewed, segmentId, volume).sum())
panel._history().undo()
out["undone"] = int(slicer.util.arrayFromSegmentBinaryLabelmap(reviewed, segmentId, volume).sum())
panel._history().redo()
out["redone"] = int(slicer.util.arrayFromSegmentBinaryLabelmap(reviewed, segmentId, volume).sum())
out["repointed"] = len(repointed)
out["historyKind"] = type(panel._history()).__name__
editor.segmentationNode = lambda: reviewed  # the Segment Editor already shows it: one shared history
out["sharedKind"] = type(panel._history()).__name__
""")
    assert out["repointed"] == 0
    assert out["historyKind"] == "PanelHistory" and out["sharedKind"] == "EditorHistory"
    assert out["edited"] == 1000 and out["undone"] == 0 and out["redone"] == 1000


def test_a_download_started_by_apply_that_ends_after_the_scene_was_closed_does_not_run():
    """D13: _startRun dereferenced the closed scene's parameter node: "AtlasSeg could not start the segmentation"."""
    out = _run("""
env = widget_harness.start()
widget = env.createWidget()
import AtlasSeg
from AtlasSegModule.AtlasSegRunner import EngineRunner
task = EngineRunner([sys.executable, "-c", "print(" + repr(json.dumps({"event": "done", "outdir": "w.pth"})) + ")"])
task.start(); task.wait(timeout=60)
job = AtlasSeg._Job(kind="download", task=task, modelId="atlasseg-demo", thenRun=True)
widget.onSceneStartClose(None, None)  # the user closed the scene; the module is not shown
widget._finishDownload(job)
out["dialogs"] = env.dialogs.errors
out["status"] = widget.ui.runStatusLabel.text
""")
    assert out["dialogs"] == []
    assert "select a CT" in out["status"]


def test_developer_reload_reimports_the_package_and_the_library_and_cleanup_releases_the_gui():
    """D15: Slicer's Reload re-executes only AtlasSeg.py; the AtlasSegModule package and AtlasSegLib stayed the
    old ones. (That the new widget then builds is what Slicer's reload does next: only the app shows it.)"""
    out = _run("""
env = widget_harness.start()
widget = env.createWidget()
widget.enter()
import AtlasSegModule.AtlasSegLogic as oldLogic
widget.cleanup()
out["guiReleased"] = widget._parameterNodeGuiTag is None
widget.onReload()
out["reloadedByBase"] = getattr(widget, "reloaded", False)
out["dropped"] = sorted(n for n in sys.modules if n.split(".")[0] in ("AtlasSegModule", "AtlasSegLib"))
import AtlasSegModule.AtlasSegLogic as newLogic
out["fresh"] = newLogic is not oldLogic
out["errors"] = env.qt.ERRORS
""")
    assert out["errors"] == [] and out["guiReleased"] is True
    assert out["dropped"] == [] and out["reloadedByBase"] is True and out["fresh"] is True


def test_reload_and_test_shows_a_skip_as_a_message_not_as_a_failure():
    """D15: 'Reload and Test' wraps runTest in tryWithErrorDisplay: a SkipTest read as 'Reload and Test failed.'"""
    out = _run("""
import slicer_loaders
blocked = slicer_loaders.BlockedPackages(["torch", "monai"]); blocked.install()
env = widget_harness.start()
import AtlasSeg
test = AtlasSeg.AtlasSegTest()
shown = []
test.delayDisplay = lambda message, *a: shown.append(message)
test.runTest()  # raised unittest.SkipTest before
out["shown"] = shown
""")
    assert len(out["shown"]) == 1 and "skipped" in out["shown"][0]


@pytest.mark.engine  # Apply runs the demo model in the engine (inside the script string, which tier detection misses)
def test_the_panel_offers_the_presets_with_this_cts_estimate_and_passes_the_chosen_one_to_the_engine(tmp_path):
    """Issue 24: the presets with an estimated time for this CT before Apply. The estimate runs in the engine's
    Python (``atlasseg estimate``, which imports torch) and arrives through the panel's timer; the chosen preset
    goes to the engine as --quality and is kept in the parameter node. A cache of its own: this computer has timed
    nothing yet (other tests of the session record window times in the session's cache)."""
    out = _run(env={"ATLASSEG_HOME": str(tmp_path / "home")}, body="""
env = widget_harness.start()
widget = env.createWidget()
widget.enter()
import time
def pump(timer, until, seconds=240):
    deadline = time.time() + seconds
    while not until() and time.time() < deadline:
        timer.fire(); time.sleep(0.05)
volume = widget.logic.loadDemoPhantom()
widget.exit(); widget.enter()
out["default"] = widget._parameterNode.quality
out["waiting"] = widget.ui.qualityEstimateLabel.text
pump(widget._estimateTimer, lambda: not widget.logic.estimating())
combo = widget.ui.qualityComboBox
out["items"] = [combo.itemText(i) for i in range(combo.count)]
out["label"] = widget.ui.qualityEstimateLabel.text
out["estimate"] = widget._estimateResult.presets
out["startedAgain"] = (widget._updateGui(), widget.logic.estimating())[1]  # same CT and model: no new process
combo.setCurrentIndex(combo.findData("reference"))
out["param"] = widget._parameterNode.quality
out["referenceLabel"] = widget.ui.qualityEstimateLabel.text
combo.setCurrentIndex(combo.findData("balanced"))
commands = []
realPrepare = widget.logic.prepareRun
def spyPrepare(*a, **k):
    prepared = realPrepare(*a, **k)
    commands.append(prepared.command)
    return prepared
widget.logic.prepareRun = spyPrepare
widget.onApplyButton()
pump(widget._timer, lambda: widget._job is None)
out["command"] = commands[-1][3:] if commands else None
out["status"] = widget.ui.runStatusLabel.text
# After the run this computer has timed the model: the estimate is asked again and now says seconds.
widget._updateGui()
pump(widget._estimateTimer, lambda: not widget.logic.estimating())
out["after"] = widget._estimateResult.presets
out["afterLabel"] = widget.ui.qualityEstimateLabel.text
out["torchImported"] = "torch" in sys.modules
widget.exit(); widget.cleanup()
out["errors"] = env.qt.ERRORS
out["dialogs"] = env.dialogs.errors
""")
    from AtlasSegLib.card import builtin_card
    from AtlasSegLib.estimate import estimate
    from AtlasSegLib.phantom import make_phantom
    from AtlasSegModule.AtlasSegLogic import DEMO_PHANTOM_SEED

    assert out["errors"] == [] and out["dialogs"] == [], out
    assert out["default"] == "balanced" and out["waiting"] == "Estimating the time for this CT…"
    assert out["torchImported"] is False
    # What the panel shows is what the library estimates for this CT (the demo phantom) and model.
    expected = estimate(make_phantom(seed=DEMO_PHANTOM_SEED, tumors=True).image, builtin_card("atlasseg-demo"),
                        device="cpu")
    assert {q: e["windows"] for q, e in out["estimate"].items()} == {q: e["windows"] for q, e in expected.items()}
    balanced = expected["balanced"]["windows"]
    assert out["items"][1].startswith(f"Balanced — {balanced} windows, ")
    assert out["label"].startswith(f"Balanced: {balanced} windows on this CT")
    assert out["items"][2] == "Fast (3 mm)"  # the demo model has no coarse spacing: no estimate for it
    assert out["startedAgain"] is False
    assert out["param"] == "reference" and out["referenceLabel"].startswith(
        f"Reference: {expected['reference']['windows']} windows")
    command = out["command"]
    assert command[command.index("--quality") + 1] == "balanced" and "--fast" not in command
    assert out["status"].startswith("Done in "), out["status"]
    # The run timed this computer: the chosen preset's estimate now has seconds (what the run itself ran).
    after = out["after"]["balanced"]
    assert after["timing"] == "measured" and after["total_s"] is not None, out["after"]
    assert out["afterLabel"].startswith(f"Balanced: {balanced} windows, ~") and "s on this CT" in out["afterLabel"]


def test_the_review_panels_lesion_threshold_resizes_the_selected_lesion_alone_in_one_undo_step(tmp_path):
    out = _run("""
import numpy as np
from pathlib import Path
env = widget_harness.start()
widget = env.createWidget()
panel = widget.reviewPanel
from review_scene import TRUE_TUMOR_BOX_KJI, makeReviewScene
import os
scene = makeReviewScene(widget.logic, Path(os.environ["REVIEW_SCENE_FOLDER"]))
panel.setSegmentationNode(scene.segmentationNode)
node = scene.segmentationNode
def tumor():
    return slicer.util.arrayFromSegmentBinaryLabelmap(node, node.GetSegmentation().GetSegmentIdBySegmentName(
        "liver_tumor"), scene.volume).copy()
before = tumor()
out["enabled"] = bool(panel.resizeButton.enabled)
panel.table.selectRow(0)  # the true tumor (the only candidate at the engine's 0.5)
out["shown"] = panel.lesionThresholdSpin.value
panel.lesionThresholdSpin.setValue(0.7)
panel.resizeButton.emit("clicked()")
after = tumor()
out["message"] = panel.messageLabel.text
out["shrunk"] = int(before.sum() - after.sum())
out["onlyRemoved"] = bool(((after != before) <= (before == 1)).all())
out["recorded"] = [d.get("threshold") for d in panel.session.state.decisions("liver_tumor")]
panel.undoButton.emit("clicked()")
out["undone"] = bool((tumor() == before).all())
""", env={"REVIEW_SCENE_FOLDER": str(tmp_path / "out")})
    assert out["enabled"] and out["shown"] == 0.5
    assert "shrank" in out["message"] and out["shrunk"] > 0 and out["onlyRemoved"]
    assert out["recorded"] == [0.7]
    assert out["undone"]
