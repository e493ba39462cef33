"""The CLI as a process: signals, pipes, terminals, working directories, exit codes. Each test runs the real
``atlasseg`` in a subprocess on the real CT with the shipped demo model (or a real local setup: a pty, a
closed pipe, an unreachable proxy)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testdata import REPO

CLI = [sys.executable, "-m", "AtlasSegLib"]
DEMO = ["--model", "atlasseg-demo"]


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _partials(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, ctdata):
    """A finished run on the real CT, written by the engine's OutputWriter from its TotalSegmentator organs and
    synthetic liver lesions (report_cases.real_ct_output; no model, seconds instead of a demo-model process): the
    tests using it run review, threshold and export as processes on it. Read-only; copy before editing."""
    from report_cases import real_ct_output

    return real_ct_output(ctdata, tmp_path_factory.mktemp("cli"))


def _wait_for(predicate, proc, timeout=300.0, step=0.005):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(step)
    return False


def test_sigterm_during_segment_cleans_up_like_ctrl_c(tmp_path, ctdata):
    out = tmp_path / "out"
    proc = subprocess.Popen([*CLI, "segment", str(ctdata / "totalseg_dicom_upper_abdomen" / "example_ct_dicom"),
                             "-o", str(out), *DEMO, "--quiet"], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # The staging folder exists while the outputs are written: terminate the run right then.
    assert _wait_for(lambda: _partials(tmp_path), proc), "the run ended before writing its outputs"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "terminated" in err and "nothing was written" in err
    assert _partials(tmp_path) == [] and not out.exists()


@pytest.mark.quick_representative  # make test-quick's one CLI subprocess (its run folder is written, not segmented)
def test_review_into_a_closed_pipe_ends_quietly(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    # The reader is gone before the first byte: every write fails with EPIPE.
    proc = subprocess.Popen([*CLI, "review", str(run)], cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "BrokenPipeError" not in err and "Traceback" not in err and "Exception ignored" not in err, err
    assert proc.returncode == 141
    # And as a user types it.
    r = subprocess.run(f"{sys.executable} -m AtlasSegLib review '{run}' | head -1", shell=True, cwd=REPO, env=_env(),
                       capture_output=True, text=True)
    # stderr holds the run's warnings (one line each, never on stdout) and nothing about the closed pipe.
    assert len(r.stdout.splitlines()) == 1
    assert all(line.startswith("atlasseg: warning: ") for line in r.stderr.splitlines()), r.stderr


def test_verbose_flag_is_accepted_after_the_command(tmp_path, small_ct):
    r = subprocess.run([*CLI, "segment", str(small_ct), "-o", str(tmp_path / "o"), *DEMO, "--structures",
                        "liver_tumor", "--quiet", "-v"], cwd=REPO, env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "INFO " in r.stderr and "gated to it" in r.stderr  # -v took effect: details are logged
    r = subprocess.run([*CLI, "review", str(tmp_path / "o"), "--verbose"], cwd=REPO, env=_env(), capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr


def test_relative_input_is_stored_absolute_and_report_finds_the_ct_from_elsewhere(tmp_path, ctdata):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ctdata / "totalseg_abdomen_sm" / "example_ct_sm.nii.gz", work / "ct.nii.gz")  # a temporary copy
    r = subprocess.run([*CLI, "segment", "ct.nii.gz", "-o", "out", *DEMO, "--quiet"], cwd=work, env=_env(),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    report = json.loads((work / "out" / "report.json").read_text())
    assert Path(report["input"]["path"]).is_absolute()
    assert Path(report["input"]["path"]) == work / "ct.nii.gz"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = subprocess.run([*CLI, "report", str(work / "out")], cwd=elsewhere, env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (work / "out" / "pictures" / "overview.png").is_file()  # drawn from the CT, found via the stored path
    # --force: the demo model on a real CT (its warning refuses the export otherwise); the path is what is tested
    r = subprocess.run([*CLI, "export", str(work / "out"), "--format", "abdomenatlas", "--force"], cwd=elsewhere, env=_env(),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_damaged_weights_give_exit_2_and_a_message(tmp_path, small_ct):
    import io
    import random
    import zipfile

    import torch

    from AtlasSegLib.card import builtin_card

    card = builtin_card("atlasseg-demo")
    data = (card.base_dir / card.weights["file"]).resolve().read_bytes()
    src = zipfile.ZipFile(io.BytesIO(data))
    names = src.namelist()
    pkl = next(n for n in names if n.endswith("data.pkl"))
    rng = random.Random(0)
    # One changed byte in the pickle: find a damage that torch itself reports as a KeyError (the crash seen).
    for _ in range(2000):
        b = bytearray(src.read(pkl))
        b[rng.randrange(len(b))] = rng.randrange(256)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
            for n in names:
                z.writestr(n, bytes(b) if n == pkl else src.read(n))
        try:
            torch.load(io.BytesIO(buf.getvalue()), map_location="cpu", weights_only=True)
        except KeyError:
            break
        except Exception:  # noqa: BLE001 - other damages: look further
            continue
    else:
        pytest.fail("no single-byte damage raising KeyError found")
    bad = tmp_path / "damaged.pt"
    bad.write_bytes(buf.getvalue())
    r = subprocess.run([*CLI, "segment", str(small_ct), "-o", str(tmp_path / "o"), *DEMO, "--weights", str(bad),
                        "--quiet"], cwd=REPO, env=_env(), capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "not a loadable PyTorch checkpoint" in r.stderr and "internal error" not in r.stderr


def test_models_fetch_without_network_exits_3(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on: the proxy every request must go through
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proxy = f"http://127.0.0.1:{port}"
    env = _env(ATLASSEG_HOME=str(tmp_path / "cache"), HTTP_PROXY=proxy, HTTPS_PROXY=proxy, http_proxy=proxy,
               https_proxy=proxy, NO_PROXY="", no_proxy="")
    r = subprocess.run([*CLI, "models", "fetch", "suprem-segresnet"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 3, r.stderr
    assert "could not download" in r.stderr and "atlasseg models import" in r.stderr
    help_text = subprocess.run([*CLI, "--help"], cwd=REPO, env=_env(), capture_output=True, text=True).stdout
    assert "3    download failed" in help_text
    assert "| 3 |" in (REPO / "README.md").read_text()


def _stderr_on_a_terminal(args, cwd) -> str:
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(args, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=300)
    os.close(master)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def test_threshold_review_and_export_draw_no_empty_progress_bar(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    for args in (["threshold", str(run), "--set", "liver_tumor=0.3"], ["review", str(run)],
                 ["export", str(run), "--format", "seg-nrrd", "--force"]):
        err = _stderr_on_a_terminal([*CLI, *args], REPO)
        assert "%|" not in err and "0%" not in err, (args, err)


def test_library_warnings_go_to_the_log_not_raw_to_stderr(tmp_path, ctdata):
    """ITK's own warning (a series with a missing slice) and a Python warning: silent by default, in the log
    with -v."""
    files = sorted((ctdata / "ibsi_sts008_sarcoma_tumor" / "CT" / "image").glob("*.dcm"))
    code = f"""
import sys, warnings, logging
import SimpleITK as sitk
from AtlasSegLib import cli
verbose = sys.argv[1] == "1"
logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
cli._route_library_warnings(verbose)
files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames({str(files[0].parent)!r}))
del files[20]
r = sitk.ImageSeriesReader(); r.SetFileNames(files); r.Execute()
warnings.warn("a library deprecation", DeprecationWarning)
warnings.warn("a library user warning", UserWarning)
"""
    quiet = subprocess.run([sys.executable, "-c", code, "0"], cwd=REPO, env=_env(), capture_output=True, text=True)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    loud = subprocess.run([sys.executable, "-c", code, "1"], cwd=REPO, env=_env(), capture_output=True, text=True)
    assert "AtlasSegLib.itk" in loud.stderr and "Non uniform sampling" in loud.stderr
    assert "py.warnings" in loud.stderr and "a library user warning" in loud.stderr
    assert not any(line.startswith("WARNING: In ") for line in loud.stderr.splitlines())  # never ITK's raw text


def test_batch_interrupted_writes_a_truthful_summary_and_a_rerun_keeps_earlier_results(tmp_path, ctdata):
    root = tmp_path / "dataset"
    root.mkdir()
    for name in ("case1", "case2", "case3"):
        (root / f"{name}.nii.gz").symlink_to(ctdata / "totalseg_abdomen_sm" / "example_ct_sm.nii.gz")
    results = tmp_path / "results"
    args = [*CLI, "batch", str(root), "-o", str(results), *DEMO, "--quiet"]
    proc = subprocess.Popen(args, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Stop once case2 is under way (its staging folder exists): case1's folder alone appearing does not mean its
    # row was kept yet, and a stop in between is a different, also truthful, summary (the test below).
    assert _wait_for(lambda: (results / "case1").is_dir() and any(".case2.partial-" in p.name
                                                                   for p in results.iterdir()), proc), \
        "the batch ended before its second case"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    rows = {r["case"]: r for r in csv.DictReader(open(results / "batch_summary.csv"))}
    assert rows["case1"]["status"] == "done"
    assert rows["case2"]["status"] == "interrupted" and not (results / "case2").exists()
    assert rows["case3"]["status"] == "not run"
    assert "1 case(s) finished" in err and "batch_summary.csv" in err and "nothing was written" not in err
    assert _partials(results) == []
    first_message = rows["case1"]["message"]
    r = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = {r["case"]: r for r in csv.DictReader(open(results / "batch_summary.csv"))}
    assert rows["case1"]["status"] == "skipped" and first_message in rows["case1"]["message"]
    assert "earlier run" in rows["case1"]["message"] and float(rows["case1"]["seconds"]) > 0
    assert rows["case2"]["status"] == rows["case3"]["status"] == "done"


def test_a_ctrl_c_swallowed_by_a_finalizer_is_raised_at_the_next_progress_check(monkeypatch):
    """A SIGINT whose KeyboardInterrupt lands inside an object's __del__ is printed and dropped by Python; CI saw
    'atlasseg batch' then run to the end and exit 0 after Ctrl-C. With the CLI's handlers installed, the next
    progress check raises it (once), so the run still stops."""
    from AtlasSegLib.cli import install_signal_handlers
    from AtlasSegLib.progress import Reporter

    class Finalized:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)  # the handler runs here, inside __del__

    swallowed = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: swallowed.append(u.exc_type))
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the test run was started in a script's background
    restore = install_signal_handlers()
    try:
        Finalized()  # freed at once: Python reports "Exception ignored" and goes on
        assert swallowed == [KeyboardInterrupt]
        reporter = Reporter()
        with pytest.raises(KeyboardInterrupt):
            reporter.update("inference", 0.5)
        reporter.update("inference", 0.6)  # raised once, not again while the interrupt is being handled
    finally:
        restore()
    assert signal.getsignal(signal.SIGINT) is before


def test_a_stop_after_a_case_folder_is_complete_but_before_its_row_counts_that_case_as_done(tmp_path, monkeypatch):
    """Ctrl-C between the moment a case's folder is renamed into place (complete) and the moment its summary row is
    kept: the summary says the case is done (its folder is whole) and nothing is called "not written"."""
    import SimpleITK as sitk

    from AtlasSegLib import batch
    from AtlasSegLib.card import builtin_card
    from AtlasSegLib.phantom import make_phantom
    from AtlasSegLib.pipeline import SegmentOptions

    data = tmp_path / "dataset"
    data.mkdir()
    for n in (1, 2):
        sitk.WriteImage(make_phantom(n, size=(96, 80, 48), spacing_mm=(4.0, 4.0, 5.0)).image, str(data / f"case{n}.nii.gz"))
    real = batch.segment_case

    def segment_then_stop(*args, **kwargs):
        real(*args, **kwargs)  # the case's folder is written and swapped in
        raise KeyboardInterrupt  # ... and the stop comes before its row is returned

    monkeypatch.setattr(batch, "segment_case", segment_then_stop)
    results = tmp_path / "results"
    with pytest.raises(KeyboardInterrupt) as info:
        batch.run_batch(data, results, card=builtin_card("atlasseg-demo"), options=SegmentOptions(device="cpu"))
    rows = {r["case"]: r for r in csv.DictReader(open(results / "batch_summary.csv"))}
    assert rows["case1"]["status"] == "done" and (results / "case1" / "report.json").is_file()
    assert rows["case2"]["status"] == "not run"
    assert "1 case(s) finished" in info.value.written and "not written" not in info.value.written
