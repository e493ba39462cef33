"""Refuse early and exactly: an output place that cannot be written, a bad tumor threshold, a missing or broken
input are refused with exit 2 before any work, and before torch is imported.

About the unwritable places: the tests run as root, for whom a chmod'ed folder is still writable. Two cases that
mean the same thing for root and everyone else are used instead:
* an output path whose parent is a regular file (ENOTDIR, for every user);
* a read-only file system: a read-only tmpfs (or a read-only bind mount of an existing run folder) where the
  test may mount (root); otherwise, as a normal user, a folder without write permission (which then does stop
  the user). Where neither is possible the read-only case skips and says why.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from testdata import REPO

CHILD = ("import json, os, sys\n"
         "from AtlasSegLib.cli import main\n"
         "code = main(sys.argv[1:])\n"
         "heavy = [m for m in ('torch', 'monai', 'openvino', 'ray') if m in sys.modules]\n"
         "open(os.environ['PREFLIGHT_RESULT'], 'w').write(json.dumps({'code': code, 'heavy': heavy}))\n")


def run_cli(tmp_path, *args):
    """The CLI in a fresh interpreter: (exit code, stderr, heavy modules it imported)."""
    result = tmp_path / f"result-{os.getpid()}-{len(list(tmp_path.glob('result-*')))}.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFLIGHT_RESULT": str(result)}
    proc = subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)
    info = json.loads(result.read_text())
    return info["code"], proc.stderr, info["heavy"]


@contextmanager
def read_only(folder: Path):
    """Make the existing ``folder`` read-only for whoever runs the test: a read-only bind mount as root, the
    permission bits otherwise. Skips when root may not mount."""
    if os.geteuid() != 0:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(mode)
        return
    bind = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, text=True)
    if bind.returncode != 0:
        pytest.skip(f"cannot make a read-only mount here ({bind.stderr.strip()}): root ignores permission bits")
    try:
        ro = subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True, text=True)
        if ro.returncode != 0:
            pytest.skip(f"cannot remount read-only here ({ro.stderr.strip()})")
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


@pytest.fixture
def blocked_by_file(tmp_path):
    """An output path below a regular file: no one can create it."""
    f = tmp_path / "notafolder"
    f.write_text("a file")
    return f / "out"


@pytest.fixture(scope="module")
def demo_master(tmp_path_factory):
    from AtlasSegLib.demo import run_demo

    out = tmp_path_factory.mktemp("preflight_demo") / "run"
    run_demo(out, overwrite=True, device="cpu")
    return out


@pytest.fixture
def demo_run(demo_master, tmp_path):
    out = tmp_path / "runs" / "run"
    shutil.copytree(demo_master, out)
    return out


# ----------------------------------------------------------------------------------------- output places
def test_segment_into_a_path_below_a_file_is_refused_before_torch(tmp_path, small_ct, blocked_by_file):
    code, err, heavy = run_cli(tmp_path, "segment", small_ct, "-o", blocked_by_file, "--model", "atlasseg-demo",
                               "--quiet")
    assert code == 2, err
    assert "is a file, not a folder" in err and str(blocked_by_file.parent) in err
    assert heavy == []


def test_segment_into_a_read_only_folder_is_refused_before_torch(tmp_path, small_ct):
    place = tmp_path / "ro"
    place.mkdir()
    with read_only(place):
        code, err, heavy = run_cli(tmp_path, "segment", small_ct, "-o", place / "out", "--model", "atlasseg-demo",
                                   "--quiet")
    assert code == 2, err
    assert f"the folder {place} is not writable" in err
    assert "read-only file system" in err or "permission denied" in err
    assert heavy == []


def test_batch_and_synthesize_and_export_refuse_an_unwritable_output(tmp_path, small_ct, blocked_by_file, demo_run,
                                                                      capsys):
    from AtlasSegLib.cli import main

    data = tmp_path / "dataset"
    data.mkdir()
    shutil.copy(small_ct, data / "a.nii.gz")
    code, err, heavy = run_cli(tmp_path, "batch", data, "-o", blocked_by_file, "--model", "atlasseg-demo", "--quiet")
    assert code == 2 and "is a file, not a folder" in err and heavy == [], err
    for argv in (["synthesize", str(small_ct), "-o", str(blocked_by_file), "--organ", "liver", "--run", str(demo_run)],
                 ["export", str(demo_run), "--format", "seg-nrrd", "-o", str(blocked_by_file / "x.seg.nrrd")],
                 ["evaluate", str(demo_run), "--truth", str(demo_run), "-o", str(blocked_by_file)],
                 ["demo", "-o", str(blocked_by_file)]):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, (argv[0], err)
        assert "is a file, not a folder" in err and str(blocked_by_file.parent) in err, (argv[0], err)
        assert "internal error" not in err


def test_commands_editing_a_read_only_run_folder_refuse_before_changing_anything(demo_run, capsys):
    from AtlasSegLib.cli import main

    before = {p: p.stat().st_mtime_ns for p in demo_run.rglob("*")}
    with read_only(demo_run):
        for argv in (["threshold", str(demo_run), "--set", "liver_tumor=0.3"],
                     ["report", str(demo_run), "--no-pictures"],
                     ["review", str(demo_run), "--structure", "liver_tumor", "--remove", "1"],
                     ["export", str(demo_run), "--format", "seg-nrrd"]):
            code = main(argv)
            err = capsys.readouterr().err
            assert code == 2, (argv[0], err)
            assert str(demo_run) in err and "not writable" in err, (argv[0], err)
            assert "internal error" not in err
        # Listing the candidates writes nothing: it still works on a read-only run.
        assert main(["review", str(demo_run), "--json"]) == 0
        capsys.readouterr()
    assert {p: p.stat().st_mtime_ns for p in demo_run.rglob("*")} == before


# -------------------------------------------------------------------------------------- segment --threshold
@pytest.mark.parametrize("value, words", [
    ("liver_tumor=1.5", ["threshold for liver_tumor must be between 0 and 1 (exclusive), got 1.5"]),
    ("liver=0.3", ["liver is not a tumor structure of", "tumors: liver_tumor"]),
    ("liver_tumor", ["must look like name=value"]),
])
def test_segment_threshold_is_checked_before_inference_with_the_threshold_command_messages(tmp_path, small_ct, value,
                                                                                            words):
    out = tmp_path / "out"
    code, err, heavy = run_cli(tmp_path, "segment", small_ct, "-o", out, "--model", "atlasseg-demo", "--threshold",
                               value, "--quiet")
    assert code == 2, err
    for w in words:
        assert w in err, (w, err)
    assert heavy == [] and not out.exists()


def test_segment_threshold_on_a_structure_left_out_by_structures_is_refused(tmp_path, small_ct):
    code, err, _ = run_cli(tmp_path, "segment", small_ct, "-o", tmp_path / "out", "--model", "atlasseg-demo",
                           "--structures", "liver", "--threshold", "liver_tumor=0.3", "--quiet")
    assert code == 2 and "liver_tumor is not a tumor structure of" in err and "tumors: none" in err, err


def test_batch_threshold_is_checked_before_any_case(tmp_path, small_ct):
    data = tmp_path / "dataset"
    data.mkdir()
    shutil.copy(small_ct, data / "a.nii.gz")
    code, err, heavy = run_cli(tmp_path, "batch", data, "-o", tmp_path / "res", "--model", "atlasseg-demo",
                               "--threshold", "liver_tumor=0", "--quiet")
    assert code == 2 and "between 0 and 1" in err and heavy == [], err
    assert not (tmp_path / "res").exists()


# ------------------------------------------------------------------------------------- inputs, before torch
def _png(tmp_path) -> Path:
    import numpy as np
    import SimpleITK as sitk

    path = tmp_path / "photo.png"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((32, 32), np.uint8)), str(path))
    return path


def _truncated(tmp_path, small_ct) -> Path:
    data = small_ct.read_bytes()
    path = tmp_path / "truncated.nii.gz"
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("case, words", [
    ("missing", ["does not exist"]),
    ("png", ["2D", "3D CT volume is needed"]),
    ("truncated", ["cannot read", "truncated"]),
    ("existing_output", ["already exists", "--overwrite"]),
])
def test_segment_refusals_do_not_import_torch(tmp_path, small_ct, case, words):
    out = tmp_path / "out"
    source = small_ct
    if case == "missing":
        source = tmp_path / "nope.nii.gz"
    elif case == "png":
        source = _png(tmp_path)
    elif case == "truncated":
        source = _truncated(tmp_path, small_ct)
    else:
        out.mkdir()
    code, err, heavy = run_cli(tmp_path, "segment", source, "-o", out, "--model", "atlasseg-demo", "--quiet")
    assert code == 2, err
    for w in words:
        assert w in err, (w, err)
    assert heavy == [], f"{case}: a refusal imported {heavy}"
    assert "libpng" not in err and "ITK" not in err.replace("ITK ERROR", "")  # one line, no raw library text


def test_demo_into_an_existing_folder_is_refused_before_its_phantom_and_torch(tmp_path):
    (tmp_path / "out").mkdir()
    code, err, heavy = run_cli(tmp_path, "demo", "-o", tmp_path / "out")
    assert code == 2 and "already exists" in err and heavy == [], err


def test_batch_of_a_missing_folder_is_refused_before_torch(tmp_path):
    code, err, heavy = run_cli(tmp_path, "batch", tmp_path / "nope", "-o", tmp_path / "res", "--model",
                               "atlasseg-demo", "--quiet")
    assert code == 2 and "does not exist" in err and heavy == [], err
