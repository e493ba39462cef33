"""Data on stdout only, one line per warning on stderr (``atlasseg: warning: ...``), library chatter in the -v log.

Every command runs in its own process (the CLI's logging set-up is what is tested) on a run of the real sarcoma
DICOM series: its Study ID breaks SH's 16 characters (pydicom complains on every export) and the demo model on a
thigh gives plenty of run warnings. Each command's stdout is parsed as what it claims to be."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from testdata import REPO


def atlasseg(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "AtlasSegLib", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600, cwd=cwd)


def assert_clean_stderr(proc, what):
    """Every stderr line is one of ours (no 'WARNING pydicom:', no 'libpng error', no traceback)."""
    for line in proc.stderr.splitlines():
        if line.strip():
            assert line.startswith("atlasseg: "), f"{what}: raw line on stderr: {line!r}\n{proc.stderr}"


def assert_no_warning_on_stdout(proc, what):
    """No warning text on stdout (a count such as 'batch's "7 warning(s)" is data)."""
    for line in proc.stdout.splitlines():
        assert not line.lower().lstrip().startswith(("warning", "atlasseg:")) and "warning:" not in line.lower(), \
            f"{what}: a warning on stdout: {line!r}"


@pytest.fixture(scope="module")
def sarcoma_run(tmp_path_factory, ctdata):
    root = tmp_path_factory.mktemp("streams")
    proc = atlasseg("segment", ctdata / "ibsi_sts008_sarcoma_tumor" / "CT" / "image", "-o", root / "run",
                    "--model", "atlasseg-demo", "--quiet")
    assert proc.returncode == 0, proc.stderr
    return root / "run", proc


def test_segment_prints_its_table_on_stdout_and_each_warning_once_on_stderr(sarcoma_run):
    run, proc = sarcoma_run
    assert_clean_stderr(proc, "segment")
    assert_no_warning_on_stdout(proc, "segment")
    lines = proc.stdout.splitlines()
    assert lines[1].split() == ["structure", "volume", "ml", "mean", "HU"]
    warnings = json.loads((run / "report.json").read_text())["warnings"]
    printed = [line for line in proc.stderr.splitlines() if line.startswith("atlasseg: warning: ")]
    assert len(printed) == len(set(printed)) and len(printed) >= len(warnings) > 0


def test_review_table_and_json_carry_no_warnings_on_stdout(sarcoma_run):
    run, _ = sarcoma_run
    table = atlasseg("review", run)
    assert table.returncode == 0
    assert_clean_stderr(table, "review")
    assert_no_warning_on_stdout(table, "review")
    assert table.stdout.splitlines()[0].startswith("liver_tumor: ")
    assert "atlasseg: warning: model: atlasseg-demo" in table.stderr
    as_json = atlasseg("review", run, "--json")
    rows = json.loads(as_json.stdout)
    assert set(rows) == {"liver_tumor"} and rows["liver_tumor"][0]["id"] == 1
    assert_clean_stderr(as_json, "review --json")
    if shutil.which("jq"):  # what a user types: review --json | jq
        piped = subprocess.run(f"{sys.executable} -m AtlasSegLib review {run} --json | jq -r '.liver_tumor[0].id'",
                               shell=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert piped.stdout.strip() == "1", piped.stderr


@pytest.mark.parametrize("fmt", ["dicom-seg", "rtstruct"])
def test_export_prints_one_summary_line_and_no_raw_library_lines(sarcoma_run, fmt, tmp_path):
    run, _ = sarcoma_run
    proc = atlasseg("export", run, "--format", fmt, "-o", tmp_path / "x.dcm", "--force")
    assert proc.returncode == 0, proc.stderr
    assert_clean_stderr(proc, f"export {fmt}")
    assert_no_warning_on_stdout(proc, f"export {fmt}")
    assert len(proc.stdout.splitlines()) == 1 and proc.stdout.startswith(f"{fmt}: ")
    # The change AtlasSeg made to the source's value is said once, in its own words; pydicom's text is in -v only.
    assert "StudyID 'IBSI_1_STS_008_CT'" in proc.stderr and "value length" not in proc.stderr
    verbose = atlasseg("-v", "export", run, "--format", fmt, "-o", tmp_path / "y.dcm", "--force")
    assert "value length" in verbose.stderr


def test_report_and_threshold_keep_stdout_to_their_results(sarcoma_run, tmp_path):
    run, _ = sarcoma_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    report = atlasseg("report", copy, "--no-pictures")
    assert report.returncode == 0, report.stderr
    assert_clean_stderr(report, "report")
    assert_no_warning_on_stdout(report, "report")
    threshold = atlasseg("threshold", copy, "--set", "liver_tumor=0.3")
    assert threshold.returncode == 0, threshold.stderr
    assert_clean_stderr(threshold, "threshold")
    assert threshold.stdout.splitlines()[0].startswith("liver_tumor: threshold 0.3, ")


# ------------------------------------------------------------------------------ warnings travel with an export
def test_export_of_a_run_whose_labels_are_meaningless_is_refused_unless_forced(sarcoma_run, tmp_path):
    run, _ = sarcoma_run
    out = tmp_path / "seg.dcm"
    refused = atlasseg("export", run, "--format", "dicom-seg", "-o", out)
    assert refused.returncode == 2, refused.stderr
    assert not out.exists() and refused.stdout == ""
    # The run's warnings first, each one line, then why the export was refused and what to do.
    lines = refused.stderr.splitlines()
    assert any(line.startswith("atlasseg: warning: run: coverage: ") for line in lines)
    assert any(line.startswith("atlasseg: warning: run: model: atlasseg-demo") for line in lines)
    assert lines[-1].startswith("atlasseg: error: ") and "coverage; model" in lines[-1] and "--force" in lines[-1]
    forced = atlasseg("export", run, "--format", "seg-nrrd", "-o", tmp_path / "x.seg.nrrd", "--force")
    assert forced.returncode == 0 and "forced_past coverage, model" in forced.stdout, forced.stderr


def test_gtv_on_unreviewed_candidates_warns_and_the_summary_names_them(sarcoma_run, tmp_path):
    run, _ = sarcoma_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert atlasseg("review", copy, "--structure", "liver_tumor", "--keep", "1", "--remove", "2").returncode == 0
    proc = atlasseg("export", copy, "--format", "rtstruct", "--tumor-roi-type", "GTV", "--force", "-o",
                    tmp_path / "rt.dcm")
    assert proc.returncode == 0, proc.stderr
    assert "gtv_unreviewed liver_tumor #3, #4" in proc.stdout
    gtv = [line for line in proc.stderr.splitlines() if "GTV" in line]
    assert len(gtv) == 1 and gtv[0].startswith("atlasseg: warning: ") and "liver_tumor #3, #4" in gtv[0]
    plain = atlasseg("export", copy, "--format", "rtstruct", "--force", "-o", tmp_path / "rt2.dcm")
    assert "GTV" not in plain.stderr and "gtv_unreviewed" not in plain.stdout


# -------------------------------------------------------------------------------------------------- batch lines
def test_batch_names_its_engine_gives_one_line_per_case_and_lists_skipped_files(tmp_path, small_ct, ctdata):
    data = tmp_path / "dataset"
    data.mkdir()
    shutil.copy(small_ct, data / "a.nii.gz")
    shutil.copytree(ctdata / "ibsi_sts008_sarcoma_tumor" / "CT" / "image", data / "thigh")
    (data / "readme.txt").write_text("notes")
    (data / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    proc = atlasseg("batch", data, "-o", tmp_path / "res", "--model", "atlasseg-demo", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert_clean_stderr(proc, "batch")
    assert_no_warning_on_stdout(proc, "batch")
    err = proc.stderr.splitlines()
    assert err[0] == "atlasseg: batch: 2 cases, 1 worker in this process"
    out = proc.stdout.splitlines()
    # One line per case (name, status, time, its warning count), then the total.
    for line, case in zip(out, ("a", "thigh")):
        fields = line.split()
        assert fields[0] == case and fields[1] == "done"
    counts = {}
    for case in ("a", "thigh"):
        report = json.loads((tmp_path / "res" / case / "report.json").read_text())
        counts[case] = len(report["warnings"])
        line = next(line for line in out if line.split()[0] == case)
        assert line.endswith(f"{counts[case]} warning(s)" if counts[case] else "structures"), line
    assert counts["thigh"] > 1 and out[2].startswith("2 of 2 cases done")
    # The warnings themselves are not repeated case by case: one line says where they are.
    assert not any(line.startswith("atlasseg: warning: thigh: ") for line in err)
    assert any("warning" in line and "batch_summary.csv" in line for line in err)
    assert err[-1] == "atlasseg: batch: not a CT case, skipped: photo.png, readme.txt"


def test_evaluate_json_and_models_list_and_synthesize_keep_stdout_parseable(sarcoma_run, ctdata, tmp_path):
    run, _ = sarcoma_run
    truth = tmp_path / "truth"
    truth.mkdir()
    shutil.copy(ctdata / "ibsi_sts008_sarcoma_tumor" / "nifti" / "CT_mask.nii.gz", truth / "liver_tumor.nii.gz")
    proc = atlasseg("evaluate", run, "--truth", truth, "-o", tmp_path / "eval", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["tumors"]["liver_tumor"]["lesions"] == 1
    assert_clean_stderr(proc, "evaluate --json")
    listing = atlasseg("models", "list")
    assert listing.returncode == 0 and listing.stdout.splitlines()[0].split()[:2] == ["id", "classes"]
    assert_clean_stderr(listing, "models list")
    synth = atlasseg("synthesize", ctdata / "ibsi_sts008_sarcoma_tumor" / "nifti" / "CT_image.nii.gz", "-o",
                     tmp_path / "synth", "--organ", "liver", "--organ-mask",
                     ctdata / "ibsi_sts008_sarcoma_tumor" / "nifti" / "CT_mask.nii.gz", "--diameter", "10")
    assert synth.returncode == 0, synth.stderr
    assert_clean_stderr(synth, "synthesize")
    assert_no_warning_on_stdout(synth, "synthesize")
    assert synth.stdout.splitlines()[0].startswith("1 synthetic liver tumor(s)")
