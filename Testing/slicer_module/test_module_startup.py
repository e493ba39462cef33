"""Slicer imports the module's files at startup, before the module has installed its Python packages (cc3d,
MONAI, pillow, highdicom, …): every file the startup imports must load with only what Slicer ships, or the
module — and its "Install dependencies" button — would not appear at all."""
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

# What AtlasSeg/Resources/requirements.txt installs (Slicer ships numpy, SimpleITK, requests, vtk).
NOT_YET_INSTALLED = ("cc3d", "edt", "scipy", "PIL", "monai", "torch", "highdicom", "pydicom", "contourpy", "slicerio",
                     "nrrd", "nibabel", "jsonschema", "tqdm", "psutil")

SCRIPT = f"""
import importlib.abc, sys, types
sys.path[:0] = [{str(HERE)!r}, {str(REPO / "AtlasSeg")!r}, {str(REPO)!r}]
blocked = {NOT_YET_INSTALLED!r}

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"{{name}} is not installed yet")
        return None

sys.meta_path.insert(0, NotInstalled())

class _QtModule(types.ModuleType):
    # Slicer's PythonQt modules do not exist headless; importing them is all the startup does.
    def __getattr__(self, name):
        return type(name, (), {{}})

sys.modules["qt"] = _QtModule("qt")
sys.modules["ctk"] = _QtModule("ctk")
import vtk  # noqa: F401 (before slicer)
import slicer
import slicer_harness
slicer_harness.installScriptedLoadableModuleStub()
for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleTest"):
    # Widget and module base classes come with Slicer's Qt application; the import only needs the names.
    setattr(sys.modules["slicer.ScriptedLoadableModule"], name, type(name, (), {{}}))
import AtlasSeg
from AtlasSegModule import AtlasSegExportPanel, AtlasSegReportPanel, AtlasSegReviewPanel, effects
assert effects.registerEffects() is False  # no Slicer application here
print("ok")
"""


def test_module_files_import_before_the_module_installs_its_packages():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr
