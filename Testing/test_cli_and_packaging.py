"""The command line as a user and the Slicer module meet it; the library stays host-independent."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from testdata import REPO
from models_for_tests import bone_model


def test_importing_the_library_loads_no_slicer_qt_ctk_or_vtk():
    code = ("import sys, pkgutil, importlib, AtlasSegLib\n"
            "for m in pkgutil.iter_modules(AtlasSegLib.__path__):\n"
            "    if m.name != '__main__': importlib.import_module('AtlasSegLib.' + m.name)\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('slicer', 'qt', 'ctk', 'vtk', 'vtkmodules', 'PythonQt')]\n"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_building_the_cli_parser_imports_no_heavy_packages():
    # `atlasseg --help`, tab completion and the Slicer module's engine probe must answer at once.
    code = ("import sys, AtlasSegLib.cli as c\n"
            "c.build_parser()\n"
            "heavy = [m for m in ('numpy', 'SimpleITK', 'torch', 'monai', 'pydicom', 'highdicom', 'cc3d') if m in sys.modules]\n"
            "print(heavy); sys.exit(1 if heavy else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_cli_export_formats_are_the_exporters_formats():
    from AtlasSegLib import cli, export

    assert cli.EXPORT_FORMATS == export.FORMATS


def test_help_shows_examples_and_commands():
    r = subprocess.run([sys.executable, "-m", "AtlasSegLib", "--help"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0
    for word in ("segment", "demo", "threshold", "review", "report", "export", "models", "examples:"):
        assert word in r.stdout


def test_progress_json_lines_end_with_done(small_ct, tmp_path):
    card = bone_model(tmp_path)
    r = subprocess.run([sys.executable, "-m", "AtlasSegLib", "segment", str(small_ct), "-o", str(tmp_path / "o"),
                        "--model-card", str(card), "--progress-json"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and all(0 <= e["fraction"] <= 1 for e in progress)
    assert [e["fraction"] for e in progress] == sorted(e["fraction"] for e in progress)
    assert events[-1]["event"] == "done"


def test_progress_json_reports_errors_with_exit_code(tmp_path):
    r = subprocess.run([sys.executable, "-m", "AtlasSegLib", "segment", str(tmp_path / "missing.nii.gz"), "-o",
                        str(tmp_path / "o"), "--model", "atlasseg-demo", "--progress-json"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 2
    last = json.loads(r.stdout.splitlines()[-1])
    assert last["event"] == "error" and last["exit_code"] == 2 and "does not exist" in last["message"]


def test_segment_prints_a_volume_table(small_ct, tmp_path):
    card = bone_model(tmp_path)
    r = subprocess.run([sys.executable, "-m", "AtlasSegLib", "segment", str(small_ct), "-o", str(tmp_path / "o"),
                        "--model-card", str(card)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "vertebrae" in r.stdout and "volume ml" in r.stdout


def test_batch_segments_every_case_and_reports_failures_without_stopping(small_ct, tmp_path, capsys):
    import csv

    from AtlasSegLib.cli import main

    root = tmp_path / "dataset"
    (root / "BDMAP_00000001").mkdir(parents=True)
    (root / "BDMAP_00000001" / "ct.nii.gz").symlink_to(small_ct)
    (root / "broken.nii.gz").write_bytes(b"not an image")
    (root / "case3.nii.gz").symlink_to(small_ct)
    card = bone_model(tmp_path)
    code = main(["batch", str(root), "-o", str(tmp_path / "results"), "--model-card", str(card), "--quiet"])
    assert code == 2  # one case failed
    rows = list(csv.DictReader(open(tmp_path / "results" / "batch_summary.csv")))
    status = {r["case"]: r["status"] for r in rows}
    assert status == {"BDMAP_00000001": "done", "broken": "failed", "case3": "done"}
    assert (tmp_path / "results" / "BDMAP_00000001" / "segmentations" / "vertebrae.nii.gz").is_file()
    assert "cannot read" in next(r["message"] for r in rows if r["case"] == "broken")
    # A second run skips finished cases.
    main(["batch", str(root), "-o", str(tmp_path / "results"), "--model-card", str(card), "--quiet"])
    rows = list(csv.DictReader(open(tmp_path / "results" / "batch_summary.csv")))
    assert {r["case"]: r["status"] for r in rows}["case3"] == "skipped"


@pytest.mark.parametrize("command,says", [
    ("synthesize", "nothing was written"), ("summarize", "none is half-written"), ("evaluate", "none is half-written"),
])
def test_an_interrupted_synthesize_summarize_or_evaluate_says_what_was_left(command, says):
    # synthesize stages its output folder; summarize and evaluate replace each file whole (temp file, rename).
    import argparse

    from AtlasSegLib.cli import _interrupted_message

    assert says in _interrupted_message(argparse.Namespace(command=command), KeyboardInterrupt())
