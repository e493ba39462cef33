"""The out-of-process runner: progress, cancel (whole process tree), failures surfaced (AtlasSegRunner)."""
import os
import time

import numpy as np
import pytest

import slicer

from AtlasSegModule import AtlasSegBridge as bridge
from AtlasSegModule import AtlasSegLogic
from AtlasSegModule.AtlasSegRunner import BackgroundTask, EngineRunner, RunState, _parseEvent
from fake_engine import protocolScript, pythonCommand


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child of an exited parent is reaped by init; a zombie still answers kill(0).
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _pollUntil(runner, condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    events = []
    while time.monotonic() < deadline:
        events += runner.poll()
        if condition(events):
            return events
        time.sleep(0.02)
    raise AssertionError(f"condition not met in {timeout} s; events: {events}")


def test_progress_events_arrive_in_order_and_the_run_succeeds(tmp_path):
    logLines = []
    runner = EngineRunner(pythonCommand(protocolScript(tmp_path), "ok", tmp_path / "out"), logCallback=logLines.append)
    runner.start()
    events = _pollUntil(runner, lambda ev: any(e.kind == "finished" for e in ev))

    progress = [e for e in events if e.kind == "progress"]
    assert [e.stage for e in progress] == ["read", "inference", "write"]
    assert [round(e.fraction, 3) for e in progress] == [0.333, 0.667, 1.0]
    assert progress[1].message == "step 2/3"
    assert events[-1].kind == "finished"
    assert runner.state is RunState.SUCCEEDED
    assert runner.result.outdir == str(tmp_path / "out")
    # Non-protocol stdout and all stderr lines reach the log.
    assert "fake engine starting" in logLines and "a plain stdout line" in logLines
    assert runner.result.elapsedSeconds > 0


def test_poll_never_blocks_while_the_engine_works(tmp_path):
    runner = EngineRunner(pythonCommand(protocolScript(tmp_path), "hang", tmp_path / "out"))
    runner.start()
    try:
        started = time.monotonic()
        runner.poll()
        assert time.monotonic() - started < 0.05
        assert runner.running
    finally:
        runner.cancel()
        runner.wait(timeout=20)


def test_cancel_kills_the_engine_and_its_children(tmp_path):
    outdir = tmp_path / "out"
    runner = EngineRunner(pythonCommand(protocolScript(tmp_path), "hang", outdir))
    runner.start()
    _pollUntil(runner, lambda ev: any(e.message == "child started" for e in ev))
    childPid = int((tmp_path / "out.child").read_text())
    assert _alive(runner.pid) and _alive(childPid)

    runner.cancel()
    result = runner.wait(timeout=20)

    assert result.state is RunState.CANCELLED
    assert result.errorMessage == "cancelled by the user"
    deadline = time.monotonic() + 10
    while _alive(childPid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(runner.pid)
    assert not _alive(childPid), "the engine's child process survived Cancel"


def test_cancel_also_kills_a_child_that_left_the_process_group(tmp_path):
    pytest.importorskip("psutil")
    outdir = tmp_path / "out"
    runner = EngineRunner(pythonCommand(protocolScript(tmp_path), "escape", outdir))
    runner.start()
    _pollUntil(runner, lambda ev: any(e.message == "child started" for e in ev))
    childPid = int((tmp_path / "out.child").read_text())

    runner.cancel()
    assert runner.wait(timeout=20).state is RunState.CANCELLED
    deadline = time.monotonic() + 10
    while _alive(childPid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(childPid)


def test_engine_error_event_is_the_message_shown(tmp_path):
    runner = EngineRunner(pythonCommand(protocolScript(tmp_path), "fail", tmp_path / "out"))
    runner.start()
    result = runner.wait(timeout=20)
    assert result.state is RunState.FAILED
    assert result.returnCode == 2
    assert result.errorMessage == "input /nonexistent.nii.gz does not exist; give a CT file"


def test_crash_without_an_error_event_shows_the_last_output(tmp_path):
    runner = EngineRunner(pythonCommand(protocolScript(tmp_path), "crash", tmp_path / "out"))
    runner.start()
    result = runner.wait(timeout=20)
    assert result.state is RunState.FAILED
    assert "exit code 1" in result.errorMessage
    assert "MemoryError: cannot allocate 12 GiB" in result.errorMessage


def test_a_missing_executable_fails_with_the_command_in_the_message(tmp_path):
    runner = EngineRunner([str(tmp_path / "no-such-python"), "-m", "AtlasSegLib"])
    with pytest.raises(RuntimeError, match="no-such-python"):
        runner.start()


def test_wait_with_timeout_cancels_a_hanging_engine(tmp_path):
    runner = EngineRunner(pythonCommand(protocolScript(tmp_path), "hang", tmp_path / "out"))
    runner.start()
    assert runner.wait(timeout=1.0).state is RunState.CANCELLED


def test_cancelled_prepared_run_leaves_the_scene_unchanged(logic, tmp_path):
    """A run cancelled through the logic adds nothing to the scene and removes its temporary files."""
    geometry = bridge.VolumeGeometry((8, 7, 6), (1, 1, 1), (0, 0, 0), tuple(map(tuple, np.eye(3))))
    volume = bridge.volumeNodeFromArray(np.zeros((6, 7, 8), np.int16), geometry, "ct")
    nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
    prepared = logic.prepareRun(volume, AtlasSegLogic.RunOptions(modelId="atlasseg-demo"))
    assert prepared.inputPath.is_file()
    prepared.command = pythonCommand(protocolScript(tmp_path), "hang", prepared.outputDir)
    runner = logic.startRun(prepared)
    _pollUntil(runner, lambda ev: any(e.kind == "progress" for e in ev))
    runner.cancel()
    assert runner.wait(timeout=20).state is RunState.CANCELLED
    prepared.cleanup()

    assert slicer.mrmlScene.GetNumberOfNodes() == nodesBefore
    assert not prepared.tempDir.exists()


def test_protocol_lines_are_parsed_and_other_lines_are_not():
    event = _parseEvent('{"event": "progress", "stage": "inference", "fraction": 1.7, "message": "w"}')
    assert (event.kind, event.stage, event.fraction) == ("progress", "inference", 1.0)
    assert _parseEvent('{"event": "error", "message": "bad", "exit_code": 2}').exitCode == 2
    assert _parseEvent("100%|#####| 30/30") is None
    assert _parseEvent('{"not": "an event"}') is None
    assert _parseEvent("{broken json") is None


def test_background_task_reports_progress_result_and_errors():
    def work(progress, cancelled):
        progress(0.5, "half")
        return 42

    task = BackgroundTask(work)
    task.start()
    assert task.wait(timeout=10) is RunState.SUCCEEDED and task.result == 42

    def failing(progress, cancelled):
        raise OSError("proxy refused the connection")

    task = BackgroundTask(failing)
    task.start()
    assert task.wait(timeout=10) is RunState.FAILED and "proxy" in str(task.error)


def test_background_task_cancel_is_seen_by_the_function():
    def slow(progress, cancelled):
        while not cancelled():
            time.sleep(0.01)
        raise InterruptedError("cancelled")

    task = BackgroundTask(slow)
    task.start()
    task.cancel()
    assert task.wait(timeout=10) is RunState.CANCELLED
