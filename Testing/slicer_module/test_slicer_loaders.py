"""The AtlasSeg folder as the real Slicer application loads it (``slicer_loaders``: the C++ loaders of 5.8 and
5.10+, reproduced), not the normal Python way slicer-core tests import it.

Each scenario runs in a fresh Python process, because the loaders' whole point is what they leave in
``sys.modules``. What each test protects (the defects found in the real application):

1. ``test_only_the_module_class_loads_and_nothing_is_redefined``: a helper ``.py`` at the top level of
   ``AtlasSeg/`` is loaded as a module by the factory ("class X was not found"); on 5.8 it is executed again
   into the module ``AtlasSeg.py`` imported, so ``RunState`` is redefined and a finished background task is
   never ``RunState.SUCCEEDED`` as the widget sees it.
2. ``test_first_launch_without_packages_then_install_then_review_export_and_effect_work``: on a first launch
   without the extension's pip packages, a file the factory loads fails half-way and stays half-built in
   ``sys.modules`` (5.8 and 5.10+ alike); after installing, in the same session, review, export and the effect
   must work, which they cannot if an import returns that half-built module.
3. The same test registers the effect through the effect factory's loader: the effect module is named after
   its folder (5.10+ replaces ``sys.modules[<folder>]``), so the effect's logic must not live in a package of
   that folder's name; the effect is then clicked.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MODULE_DIR = REPO / "AtlasSeg"

# What AtlasSeg/Resources/requirements.txt installs on first run: exactly what Slicer does not ship. Slicer ships
# numpy, SimpleITK, requests, vtk, and also scipy 1.13.1, pillow 10.3.0, pydicom 2.4.4 (SuperBuild/
# External_python-scipy.cmake:40, External_python-dicom-requirements.cmake:44,61 @v5.8.1), and imports numpy and
# scipy at startup (Base/Python/slicer/__init__.py:213-215): those are not blocked.
NOT_YET_INSTALLED = ("cc3d", "edt", "fill_voids", "isal", "fastremap", "monai", "torch", "highdicom", "contourpy",
                     "slicerio", "nrrd", "nibabel", "jsonschema", "tqdm", "psutil")

PRELUDE = """
import json, sys, time
# The loader APPENDS the module folder to sys.path, as Slicer does; the tests' helpers are added for the scene.
sys.path[:0] = [{here!r}]
import vtk  # noqa: F401 (before slicer)
from vtk.util import numpy_support  # noqa: F401
import slicer
import slicer_loaders as L
version = {version!r}
blocked = L.BlockedPackages({blocked!r})
if {first_launch!r}:
    blocked.install()
import slicer_harness
app = slicer_harness.setup()
app = L.install_application_stand_ins(version, base_app=app)
factory = L.load_scripted_modules({module_dir!r}, version)
app.emit("startupCompleted()")
out = {{"errors": factory.errors, "modules": sorted(factory.instances)}}
"""

STARTUP = """
module = factory.instances.get("AtlasSeg")
out["title"] = module.parent.title if module else None
out["categories"] = module.parent.categories if module else None
out["dependencies"] = module.parent.dependencies if module else None
# Classes the module files took from elsewhere must still be the ones their home modules define.
redefined = []
for name, loaded in list(sys.modules.items()):
    if not (name == "AtlasSeg" or name.startswith("AtlasSegModule")):
        continue
    for attr, value in vars(loaded).items():
        home = sys.modules.get(getattr(value, "__module__", None) or "")
        if isinstance(value, type) and home is not None and home is not loaded:
            if getattr(home, value.__name__, value) is not value:
                redefined.append(f"{{name}}.{{attr}}")
out["redefined"] = redefined
# The widget's view of a background task (Apply, Download): it must see the task finish.
AtlasSeg = sys.modules["AtlasSeg"]
# (The widget's timer polls while "task.state is RunState.RUNNING", with RunState as AtlasSeg.py imported it.)
# (A download is such a task too: an engine-protocol process, like the run.)
from AtlasSegModule.AtlasSegRunner import EngineRunner
task = EngineRunner([sys.executable, "-c", "print('{\\"event\\": \\"done\\", \\"outdir\\": \\"42\\"}')"])
task.start()
deadline = time.time() + 30
while task.state is AtlasSeg.RunState.RUNNING and time.time() < deadline:
    task.poll()
    time.sleep(0.01)
out["taskSucceeded"] = task.state is AtlasSeg.RunState.SUCCEEDED and task.result.outdir == "42"
out["effects"] = [e.name for e in L.EffectFactory.instance().registeredEffects()]
print("RESULT " + json.dumps(out))
"""

AFTER_INSTALL = """
# Before installing, the user opens the review and export sections: their logic cannot be imported yet.
from AtlasSegModule import AtlasSegExportPanel, AtlasSegLogic, AtlasSegReviewPanel
for accessor in (AtlasSegReviewPanel._reviewLogic, AtlasSegExportPanel._exportLogic):
    try:
        accessor()
    except ImportError:
        pass
    else:
        raise AssertionError(f"{{accessor.__name__}} imported although its packages are not installed")
blocked.remove()  # "Install" finished; same session, no restart
# What the panels use, fetched the way the panels fetch it:
AtlasSegReview = AtlasSegReviewPanel._reviewLogic()
AtlasSegExport = AtlasSegExportPanel._exportLogic()
import review_scene
from pathlib import Path
folder = Path({tmp!r})
scene = review_scene.makeReviewScene(AtlasSegLogic.AtlasSegLogic(), folder / "run")
# Review: the sensitivity slider's preview at the maximum-sensitivity point shows all three candidates.
session = AtlasSegReview.ReviewSession(scene.segmentationNode)
controller = session.controllers["liver_tumor"]
controller.preview(0.1)
out["candidates"] = len(controller.candidates()[1])
controller.apply()
# Export: the reviewed segmentation as .seg.nrrd.
outcome = AtlasSegExport.exportSegmentation(scene.segmentationNode, "seg-nrrd", folder / "reviewed.seg.nrrd")
out["exported"] = (folder / "reviewed.seg.nrrd").is_file()
# The effect as the user clicks it: the Segment Editor's clone of the registered one, through the C++ wrapper
# (which swallows a Python exception): click the p 0.2 false positive in a slice view.
effects = L.EffectFactory.instance().registeredEffects()
effect = effects[0].clone()
effect.segmentationNode = scene.segmentationNode
before = int(review_scene.segmentArray(scene, "liver_tumor").sum())
ras = scene.rasOfKji(scene.boxToFullKji(review_scene.FP_MAX_BOX_KJI))
consumed = effect.processInteractionEvents(L.InteractorStandIn(), vtk.vtkCommand.LeftButtonPressEvent,
                                           L.SliceViewStandIn(ras))
out["swallowed"] = effect.swallowed
after = int(review_scene.segmentArray(scene, "liver_tumor").sum())
out["effectConsumed"] = bool(consumed)
out["effectRemovedVoxels"] = before - after
out["undoStates"] = effect.undoStates
# The effect's "Add missed tumor" toggle on: a click on a tumor the model missed (a dark ball in the liver where the
# map holds nothing) adds it, one more undo step.
from review_scene import SHAPE, ball
missed = (12, 30, 24)
ct = slicer.util.arrayFromVolume(scene.volume)
ct[ball(SHAPE, missed, 3)] -= 45
slicer.util.arrayFromVolumeModified(scene.volume)
effect.self().setMRMLDefaults()
effect.setParameter("AtlasSeg.AddMissedTumor", "1")
before = int(review_scene.segmentArray(scene, "liver_tumor").sum())
effect.processInteractionEvents(L.InteractorStandIn(), vtk.vtkCommand.LeftButtonPressEvent,
                                L.SliceViewStandIn(scene.rasOfKji(missed)))
out["addSwallowed"] = effect.swallowed
out["effectAddedVoxels"] = int(review_scene.segmentArray(scene, "liver_tumor").sum()) - before
out["undoStatesAfterAdd"] = effect.undoStates
print("RESULT " + json.dumps(out))
"""


def _run(script: str, cwd: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd, timeout=300)
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    assert r.returncode == 0 and lines, f"exit {r.returncode}\n{r.stdout[-4000:]}\n{r.stderr[-6000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def _prelude(version, firstLaunch):
    return PRELUDE.format(module_dir=str(MODULE_DIR), here=str(HERE), version=version, blocked=NOT_YET_INSTALLED,
                          first_launch=firstLaunch)


@pytest.mark.parametrize("version", ["5.8", "5.10"])
def test_only_the_module_class_loads_and_nothing_is_redefined(version, tmp_path):
    out = _run(_prelude(version, False) + STARTUP, tmp_path)
    assert out["errors"] == []
    assert out["modules"] == ["AtlasSeg"]  # every top-level .py is a module: only AtlasSeg.py may be there
    assert out["title"] == "AtlasSeg" and out["categories"] == ["Segmentation"]
    assert set(out["dependencies"]) == {"Segmentations", "SegmentEditor"}
    assert out["redefined"] == []
    assert out["taskSucceeded"] is True
    assert out["effects"] == ["Remove false positive"]


@pytest.mark.parametrize("version", ["5.8", "5.10"])
def test_first_launch_without_packages_then_install_then_review_export_and_effect_work(version, tmp_path):
    script = _prelude(version, True) + AFTER_INSTALL.format(tmp=str(tmp_path))
    out = _run(script, tmp_path)
    assert out["errors"] == []  # the module (and its Install button) loads without the packages
    assert out["modules"] == ["AtlasSeg"]
    assert out["candidates"] == 3  # true tumor + the 0.35 and the 0.2 false positives
    assert out["exported"] is True
    assert out["swallowed"] == []
    assert out["effectConsumed"] is True
    assert out["effectRemovedVoxels"] > 0
    assert out["undoStates"] == 1  # one undo step for the click
    assert out["addSwallowed"] == [] and out["effectAddedVoxels"] > 0  # Add mode: the missed tumor is added
    assert out["undoStatesAfterAdd"] == 2


def test_effect_folder_is_not_imported_as_a_package_anywhere():
    """Slicer names the effect's module after its folder and (5.10+) replaces that ``sys.modules`` entry."""
    effectFolders = {p.parent.name for p in MODULE_DIR.rglob("SegmentEditorEffect.py")}
    assert effectFolders, "no Segment Editor effect found"
    offenders = []
    for path in list(MODULE_DIR.rglob("*.py")) + list(REPO.glob("Testing/**/*.py")):
        text = path.read_text(encoding="utf-8")
        for folder in effectFolders:
            if f"import {folder}" in text or f"from {folder}" in text:
                offenders.append(f"{path.relative_to(REPO)} imports {folder}")
    assert offenders == []


SELF_TEST = """
import unittest
AtlasSeg = sys.modules["AtlasSeg"]
result = unittest.TextTestRunner(verbosity=0).run(unittest.TestLoader().loadTestsFromTestCase(AtlasSeg.AtlasSegTest))
out["skipped"] = [reason for _, reason in result.skipped]
out["failures"] = len(result.failures) + len(result.errors)
print("RESULT " + json.dumps(out))
"""


def test_self_test_skips_with_a_message_in_a_slicer_without_torch_and_monai(tmp_path):
    """The extension's ctest runs in a factory-built Slicer, which has neither."""
    out = _run(_prelude("5.10", True) + SELF_TEST, tmp_path)
    assert out["failures"] == 0
    assert len(out["skipped"]) == 1 and "torch and monai not installed" in out["skipped"][0]


SHADOWED = """
# Slicer appends the module folder; an AtlasSegLib found earlier on sys.path (the atlasseg wheel pip-installed into
# Slicer's Python, another checkout) must not be the one the extension and its engine use.
import AtlasSegModule, AtlasSegLib
out["libraryFile"] = AtlasSegLib.__file__
out["libraryParent"] = str(AtlasSegModule.LIBRARY_PARENT_DIR)
print("RESULT " + json.dumps(out))
"""


@pytest.mark.parametrize("version", ["5.8", "5.10"])
def test_an_atlasseglib_earlier_on_sys_path_does_not_shadow_the_extensions_own(version, tmp_path):
    shadow = tmp_path / "site-packages"
    (shadow / "AtlasSegLib").mkdir(parents=True)
    (shadow / "AtlasSegLib" / "__init__.py").write_text("__version__ = 'an older wheel'\n", encoding="utf-8")
    script = _prelude(version, False).replace("import json, sys, time\n",
                                              f"import json, sys, time\nsys.path.insert(0, {str(shadow)!r})\n", 1)
    out = _run(script + SHADOWED, tmp_path)
    assert out["errors"] == []
    assert out["libraryParent"] == str(REPO) and out["libraryFile"].startswith(str(REPO / "AtlasSegLib"))


def test_the_factory_takes_top_level_py_and_orphan_pyc_files_named_up_to_the_first_dot(tmp_path):
    sys.path.insert(0, str(HERE))
    import slicer_loaders as L

    for name in ("A.py", "B.pyc", "C.py", "C.pyc", "D.tar.py"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "E.py").write_bytes(b"")
    assert [p.name for p in L.module_files(tmp_path)] == ["A.py", "B.pyc", "C.py", "D.tar.py"]
    assert L.module_name(tmp_path / "D.tar.py") == "D"
    # What the app's factory takes from AtlasSeg/: only the module file (no stray .py or orphan .pyc).
    assert [p.name for p in L.module_files(MODULE_DIR)] == ["AtlasSeg.py"]


def test_an_orphan_pyc_is_loaded_as_a_module_like_a_py(tmp_path):
    import py_compile

    folder = tmp_path / "modules"
    folder.mkdir()
    source = tmp_path / "Compiled.py"
    source.write_text("class Compiled:\n    def __init__(self, parent):\n        self.parent = parent\n"
                      "        parent.title = 'from pyc'\n",
                      encoding="utf-8")
    py_compile.compile(str(source), cfile=str(folder / "Compiled.pyc"))
    script = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
import slicer_loaders as L
report = L.load_scripted_modules({str(folder)!r}, "5.10")
print("RESULT", report.instances["Compiled"].parent.title, report.errors)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "RESULT from pyc []" in r.stdout, r.stderr[-2000:]


def test_atlasseg_py_uses_no_class_of_a_module_the_app_instantiates_after_it(tmp_path):
    """Markups, Segmentations, SegmentEditor, Terminologies sort after AtlasSeg: their classes do not exist yet
    while AtlasSeg.py loads (the loader hides them then); a module-level use would fail only in the app."""
    out = _run(_prelude("5.10", False) + """
out["hiddenDuringLoad"] = all(hasattr(slicer, n) for n in ("vtkSlicerTerminologiesModuleLogic",
                                                          "vtkSlicerSegmentationsModuleLogic"))
print("RESULT " + json.dumps(out))
""", tmp_path)
    assert out["errors"] == [] and out["modules"] == ["AtlasSeg"]
    assert out["hiddenDuringLoad"] is True  # restored after loading
