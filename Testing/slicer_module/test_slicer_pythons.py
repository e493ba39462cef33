"""The module and the library run on the Pythons Slicer ships, and what each Slicer installs resolves there.

Slicer 5.8 runs Python 3.9.10, 5.10 and later 3.12.10 (Slicer's CMakeLists.txt at v5.8.1 / v5.10.0); the engine
(AtlasSegLib) runs in that Python too. Checked here: the source against 3.9 with ``vermin`` (syntax, standard
library names and their arguments), and ``pip install --dry-run --python-version X --only-binary=:all:`` of the
exact pip runs ``AtlasSegDependencies.installPlan`` makes for each Slicer, with the packages that Slicer ships as
constraints. The dry runs need the package index: where it cannot answer they skip and say why.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from AtlasSegModule import AtlasSegDependencies as deps

REPO_ROOT = Path(__file__).resolve().parents[2]
VERMIN = shutil.which("vermin") or str(Path(sys.executable).with_name("vermin"))

# As in test_dependencies.py (Slicer's SuperBuild pins); torch as the PyTorch extension would install it.
SLICERS = {
    "5.8": ("3.9.10", {"pydicom": "2.4.4", "numpy": "1.26.4", "requests": "2.32.3", "simpleitk": "2.4.0",
                       "scipy": "1.13.1", "pillow": "10.3.0"}),
    "5.10": ("3.12.10", {"pydicom": "2.4.4", "numpy": "2.0.2", "requests": "2.32.3", "simpleitk": "2.4.0"}),
    "5.12": ("3.12.10", {"pydicom": "3.0.2", "highdicom": "0.27.0", "numpy": "2.4.6", "requests": "2.34.2",
                         "simpleitk": "2.4.0"}),
}


@pytest.mark.skipif(not Path(VERMIN).exists(), reason="vermin not installed (pip install vermin; test extra)")
def test_module_and_library_source_runs_on_slicer_5_8s_python_3_9():
    r = subprocess.run([VERMIN, "-t=3.9-", "--no-tips", "--violations", "--eval-annotations",
                        "--backport", "dataclasses", "--backport", "typing",
                        str(REPO_ROOT / "AtlasSeg"), str(REPO_ROOT / "AtlasSegLib")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"needs more than Python 3.9:\n{r.stdout[-4000:]}\n{r.stderr[-2000:]}"


def test_vermin_really_flags_code_newer_than_3_9(tmp_path):
    """So the check above can fail: a match statement (3.10) is reported."""
    if not Path(VERMIN).exists():
        pytest.skip("vermin not installed")
    (tmp_path / "new.py").write_text("match 1:\n    case 1:\n        pass\n", encoding="utf-8")
    r = subprocess.run([VERMIN, "-t=3.9-", "--no-tips", "--violations", str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0 and "3.10" in r.stdout


OFFLINE_SIGNS = ("Could not fetch URL", "Max retries exceeded", "NewConnectionError", "Network is unreachable",
                 "Temporary failure in name resolution", "No matching distribution found for pip")


def _dryRun(python, tmp_path, arguments, report=None):
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--disable-pip-version-check", "--python-version", python, "--only-binary=:all:",
               "--platform", "manylinux2014_x86_64", "--target", str(tmp_path / "target")]
    if report is not None:
        command += ["--report", str(report)]
    r = subprocess.run(command + list(arguments), capture_output=True, text=True, timeout=600)
    output = r.stdout + r.stderr
    if r.returncode != 0 and any(sign in output for sign in OFFLINE_SIGNS):
        pytest.skip(f"the package index did not answer: {output.strip().splitlines()[-1]}")
    return r.returncode, output


@pytest.mark.parametrize("version", sorted(SLICERS))
def test_what_each_slicer_installs_resolves_for_its_python(version, tmp_path):
    python, shipped = SLICERS[version]
    for name in ("numpy", "requests"):  # the shipped packages pip could pull in: the index must have them
        code, output = _dryRun(python, tmp_path, [f"{name}=={shipped[name]}", "--no-deps"])
        if code != 0:
            pytest.skip(f"the package index here has no {name} {shipped[name]} wheel for Python {python} (Slicer "
                        f"{version} ships it), so pip cannot resolve against it offline")
    runs, unavailable = deps.installPlan(deps.readRequirements(), versionOf=shipped.get, pythonVersion=python)
    constraints = tmp_path / "slicer-constraints.txt"
    constraints.write_text(deps.constraintsText(versionOf=shipped.get) + "torch==2.6.0\n", encoding="utf-8")
    for run in runs:
        report = tmp_path / f"report-{run.feature or 'core'}.json".replace(" ", "-")
        code, output = _dryRun(python, tmp_path, ["-c", str(constraints), *run.requirements], report)
        assert code == 0, f"Slicer {version} (Python {python}), {run.feature or 'core'} run:\n{output[-3000:]}"
        installed = {item["metadata"]["name"].lower(): item["metadata"]["version"]
                     for item in json.loads(report.read_text())["install"]}
        for name, pinned in shipped.items():  # Slicer's own packages stay as Slicer ships them
            assert installed.get(name, pinned) == pinned, (name, installed.get(name))
