"""`atlasseg batch --workers N` on a real local Ray (127.0.0.1, no mocks): same masks as the sequential run,
a corrupt case reported while the rest finish, a worker killed mid-case retried without half or duplicate
output, a rerun that skips finished cases, SIGTERM that stops Ray with it, and the install hint without Ray.

Ray is started once for the module in this process (its startup takes 10-30 s on 2 cores); the CLI runs as a
subprocess joining it with --ray-address, except for the SIGTERM test, which lets the CLI start its own."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import SimpleITK as sitk

from testdata import REPO

# Not imported here: AtlasSegLib.cluster.import_ray sets what Ray reads when it is first imported (loopback).
if importlib.util.find_spec("ray") is None:
    pytest.skip("Ray is the 'cluster' extra: pip install -e '.[test,cluster]' (make test does)", allow_module_level=True)

from AtlasSegLib.cli import main  # noqa: E402

CLI = [sys.executable, "-m", "AtlasSegLib"]
DEMO = ["--model", "atlasseg-demo"]
PHANTOMS = ("case0", "case1", "case2")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Three small phantoms (a few seconds each on one core) and a file that is not a NIfTI at all."""
    from AtlasSegLib.phantom import make_phantom

    root = tmp_path_factory.mktemp("ray") / "dataset"
    root.mkdir()
    for seed, name in enumerate(PHANTOMS):
        ph = make_phantom(seed=seed, size=(64, 56, 40), spacing_mm=(4.0, 4.0, 5.0))
        sitk.WriteImage(ph.image, str(root / f"{name}.nii.gz"))
    (root / "broken.nii.gz").write_bytes(b"\x1f\x8b this is not a gzip stream")
    return root


@pytest.fixture(scope="module")
def sequential(dataset, tmp_path_factory) -> Path:
    """The reference: today's in-process run (--workers 1)."""
    out = tmp_path_factory.mktemp("seq") / "results"
    ray_before = "ray" in sys.modules
    assert main(["batch", str(dataset), "-o", str(out), *DEMO, "--quiet"]) == 2  # the broken case
    assert ray_before or "ray" not in sys.modules  # --workers 1 never imports Ray
    # The in-process run keeps the same manifest as the Ray run.
    assert {n: c["status"] for n, c in _manifest(out).items()} == {"broken": "failed", **{n: "done" for n in PHANTOMS}}
    return out


@pytest.fixture(scope="module")
def ray_address():
    from AtlasSegLib.cluster import import_ray

    ray = import_ray()  # loopback only, token auth: as the CLI starts it
    import shutil

    temp = tempfile.mkdtemp(prefix="atlasseg-ray-test-", dir="/tmp")
    try:
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, log_to_driver=False, configure_logging=True,
                 logging_level="WARNING")
        address = ray.get_runtime_context().gcs_address
        assert address.startswith("127.0.0.1:"), address
        yield address
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def _masks(case_dir: Path) -> dict:
    return {str(p.relative_to(case_dir)): sitk.GetArrayFromImage(sitk.ReadImage(str(p)))
            for p in sorted(case_dir.rglob("*.nii.gz"))}


def _same_masks(a: Path, b: Path) -> None:
    ma, mb = _masks(a), _masks(b)
    assert sorted(ma) == sorted(mb) and "segmentations/liver.nii.gz" in ma
    for name in ma:
        assert np.array_equal(ma[name], mb[name]), f"{a.name}/{name} differs from the sequential run"


def _summary(out: Path) -> dict:
    with open(out / "batch_summary.csv", newline="") as f:
        return {r["case"]: r for r in csv.DictReader(f)}


def _manifest(out: Path) -> dict:
    return json.loads((out / "batch_manifest.json").read_text())["cases"]


def _partials(out: Path) -> list:
    return sorted(p.name for p in out.iterdir() if ".partial-" in p.name)


def _run_streaming(args, on_event=None, timeout=240):
    """The CLI with --progress-json; ``on_event(event, proc)`` sees each event as it arrives."""
    proc = subprocess.Popen([*CLI, *args, "--progress-json"], cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    events = []
    end = time.monotonic() + timeout
    for line in proc.stdout:
        event = json.loads(line)  # every stdout line is one JSON event
        events.append(event)
        if on_event is not None:
            on_event(event, proc)
        assert time.monotonic() < end, "the batch took too long"
    err = proc.stderr.read()
    proc.wait(timeout=60)
    return proc.returncode, events, err


def test_two_ray_workers_write_the_masks_of_the_sequential_run_and_report_the_corrupt_case(
        dataset, sequential, ray_address, tmp_path):
    out = tmp_path / "results"
    code, events, err = _run_streaming(["batch", str(dataset), "-o", str(out), *DEMO, "--workers", "2",
                                        "--ray-address", ray_address])
    assert code == 2, err  # one case failed
    rows = _summary(out)
    assert rows["broken"]["status"] == "failed" and "broken.nii.gz" in rows["broken"]["message"]
    for name in PHANTOMS:
        assert rows[name]["status"] == "done", rows[name]
        _same_masks(sequential / name, out / name)
    # The summary has the sequential run's columns and rows, in the same order.
    assert list(rows) == list(_summary(sequential))
    assert list(next(iter(rows.values()))) == list(next(iter(_summary(sequential).values())))
    manifest = _manifest(out)
    assert {n: c["status"] for n, c in manifest.items()} == {"broken": "failed", **{n: "done" for n in PHANTOMS}}
    assert "not a gzip" in manifest["broken"]["message"] or "NIfTI" in manifest["broken"]["message"]
    assert all(manifest[n]["worker"].split()[0] in ("w1", "w2") and manifest[n]["attempts"] == 1 for n in PHANTOMS)
    # Progress: dataset events with each worker's status, one event per case state, then "done".
    progress = [e for e in events if e["event"] == "progress"]
    assert progress[-1]["fraction"] == 1.0 and progress[-1]["message"].startswith("3 done, 1 failed of 4")
    assert any("w1 case" in e["message"] and "w2 " in e["message"] for e in progress)
    finished = {e["case"]: e["status"] for e in events if e["event"] == "case" and e["status"] in ("done", "failed")}
    assert finished == {"broken": "failed", **{n: "done" for n in PHANTOMS}}
    assert events[-1]["event"] == "done"
    assert _partials(out) == []

    # A rerun (in this process, on the same Ray) skips the finished cases, says so, keeps their rows, and tries
    # the failed one again.
    before = {n: (out / n / "report.json").stat().st_mtime_ns for n in PHANTOMS}
    assert main(["batch", str(dataset), "-o", str(out), *DEMO, "--workers", "2", "--ray-address", ray_address,
                 "--quiet"]) == 2
    rows2 = _summary(out)
    for name in PHANTOMS:
        assert rows2[name]["status"] == "skipped" and "earlier run" in rows2[name]["message"]
        assert rows2[name]["seconds"] == rows[name]["seconds"]
        assert (out / name / "report.json").stat().st_mtime_ns == before[name]  # not re-run
    assert rows2["broken"]["status"] == "failed"
    manifest2 = _manifest(out)
    assert all(manifest2[n]["status"] == "done" and manifest2[n]["started"] == manifest[n]["started"]
               for n in PHANTOMS)


def test_a_worker_killed_mid_case_has_its_case_retried_with_no_half_or_duplicate_output(
        dataset, sequential, ray_address, tmp_path):
    out = tmp_path / "results"
    killed = {}

    def kill_during_inference(event, proc):
        # The first phantom case a worker is running the network on: SIGKILL that worker's process.
        if killed or event["event"] != "progress":
            return
        for part in event["message"].split("; ")[1].split(", "):
            label, *rest = part.split()
            if len(rest) >= 2 and rest[0] in PHANTOMS and rest[1] == "inference":
                pid = running[label]
                os.kill(pid, signal.SIGKILL)
                killed.update(case=rest[0], pid=pid, worker=label)
                return

    running = {}

    def on_event(event, proc):
        if event["event"] == "case" and event["status"] == "running":
            running[event["worker"]] = event["pid"]
        kill_during_inference(event, proc)

    code, events, err = _run_streaming(["batch", str(dataset), "-o", str(out), *DEMO, "--workers", "2",
                                        "--ray-address", ray_address], on_event)
    assert killed, "no worker was seen running the network"
    assert code == 2, err  # the broken case only
    case = killed["case"]
    assert any(e["event"] == "case" and e["case"] == case and e["status"] == "retry" for e in events)
    entry = _manifest(out)[case]
    assert entry["status"] == "done" and entry["attempts"] == 2
    assert "died" in entry["history"][0] and killed["worker"] in entry["history"][0]
    rows = _summary(out)
    assert [rows[n]["status"] for n in PHANTOMS] == ["done"] * 3 and rows["broken"]["status"] == "failed"
    # No half case, no duplicate: each case one folder, no staging folder left, and the retried case's masks are
    # the sequential run's.
    assert _partials(out) == []
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == list(PHANTOMS)
    _same_masks(sequential / case, out / case)
    assert not psutil.pid_exists(killed["pid"]) or psutil.Process(killed["pid"]).status() == psutil.STATUS_ZOMBIE


def test_sigterm_stops_a_local_ray_batch_cleanly_with_a_truthful_summary(dataset, tmp_path):
    out = tmp_path / "results"
    before = set(Path("/tmp").glob("atlasseg-ray-*"))
    proc = subprocess.Popen([*CLI, "batch", str(dataset), "-o", str(out), *DEMO, "--workers", "2",
                             "--progress-json"], cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    family = set()
    for line in proc.stdout:
        event = json.loads(line)
        family |= {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        if event["event"] == "case" and event["status"] == "done":
            break  # one case finished; others are running or waiting
    else:
        pytest.fail(f"the batch ended before a case finished: {proc.stderr.read()}")
    family |= {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
    proc.send_signal(signal.SIGTERM)
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "terminated" in err and "batch_summary.csv" in err
    rows = _summary(out)
    statuses = {n: r["status"] for n, r in rows.items()}
    assert set(statuses) == {"broken", *PHANTOMS}
    assert set(statuses.values()) <= {"done", "failed", "interrupted", "not run"}
    assert "interrupted" in statuses.values() or "not run" in statuses.values()
    for name, status in statuses.items():
        # Exactly the finished cases have an output folder; the manifest says the same.
        assert (out / name).is_dir() == (status == "done"), (name, status)
        assert _manifest(out)[name]["status"] == status
    assert _partials(out) == []
    # Ray went with it: no process the batch started is left, nor its temporary folder.
    time.sleep(2)
    alive = [p for p in family if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert len(family) >= 4 and alive == [], [psutil.Process(p).cmdline()[:2] for p in alive]
    assert set(Path("/tmp").glob("atlasseg-ray-*")) - before == set()


def test_workers_without_ray_exit_2_with_the_install_hint_before_any_work(dataset, tmp_path):
    # Ray made unimportable in the CLI's process, as on a machine without the 'cluster' extra.
    code = "import sys; sys.modules['ray'] = None; from AtlasSegLib.cli import main; sys.exit(main(sys.argv[1:]))"
    r = subprocess.run([sys.executable, "-c", code, "batch", str(dataset), "-o", str(tmp_path / "results"), *DEMO,
                        "--workers", "2"], cwd=REPO, env=_env(), capture_output=True, text=True)
    assert r.returncode == 2 and "pip install 'atlasseg[cluster]'" in r.stderr, r.stderr
    assert "--workers 1" in r.stderr  # and the way to run without it
    assert not (tmp_path / "results").exists()  # refused before any work


def test_workers_that_cannot_load_the_model_exit_2_with_its_error_and_mark_no_case_failed(
        dataset, ray_address, tmp_path):
    weights = tmp_path / "damaged.pt"
    weights.write_bytes(os.urandom(2000))  # as a truncated download would be
    out = tmp_path / "results"
    r = subprocess.run([*CLI, "batch", str(dataset), "-o", str(out), *DEMO, "--weights", str(weights), "--workers", "2",
                        "--ray-address", ray_address, "--quiet"], cwd=REPO, env=_env(), capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 2, r.stderr
    assert "the workers could not load the model" in r.stderr and "damaged.pt" in r.stderr
    assert "Traceback" not in r.stderr  # the error, not Ray's account of it
    assert not (out / "batch_summary.csv").exists() and not any(p.is_dir() for p in out.iterdir())
