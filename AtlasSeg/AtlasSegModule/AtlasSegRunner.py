"""Run the AtlasSeg engine in a separate process and follow its JSON-lines progress, without Qt.

Inference must not run inside Slicer's process: it would freeze the GUI for minutes and a crash (out of
memory, CUDA error) would take the user's scene with it. ``EngineRunner`` starts
``python -m AtlasSegLib segment ... --progress-json`` in its own process group, reads its stdout and stderr on
two daemon threads into a queue, and hands out ``RunEvent``s from ``poll()``, which never blocks. The widget
calls ``poll()`` from a ``qt.QTimer``; tests and scripts call ``wait()``.

Protocol (one JSON object per stdout line; anything else is treated as a log line)::

    {"event": "progress", "stage": "inference", "fraction": 0.42, "message": "window 12/30"}
    {"event": "done", "outdir": "/tmp/out"}
    {"event": "error", "message": "input /x does not exist ...", "exit_code": 2}

``downloadCommand`` builds the same kind of process for a model download (``python -c DOWNLOAD_SCRIPT``), and
``ProcessOutput`` runs a short command (the GPU probe) without any thread. Slicer's idle main thread holds the
GIL (neither Slicer nor CTK enables PythonQt's thread support), so a Python thread in Slicer's process runs only
while the GUI executes Python: a download on such a thread fell from ~190 to ~3 MB/s in an emulation. Work that
moves data therefore runs in a process of its own, like inference.

``BackgroundTask`` runs an in-process function on a thread, for scripts and tests (not used by the panel).
"""
from __future__ import annotations

import enum
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional

log = logging.getLogger(__name__)

# Lines of stdout/stderr kept for the error message of a failed run (the full log goes to the log callback).
LOG_TAIL_LINES = 40


class RunState(enum.Enum):
    NOT_STARTED = "not started"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"



def _drain(q: "queue.Queue"):
    """Every item already in ``q``, without blocking (the GUI timer polls; it must never wait)."""
    while True:
        try:
            yield q.get_nowait()
        except queue.Empty:
            return

@dataclass(frozen=True)
class RunEvent:
    """One thing that happened in a run.

    ``kind`` is ``"progress"`` (stage, fraction 0..1 of the whole run, message), ``"log"`` (message: one line
    of the engine's output), ``"done"`` (outdir), ``"error"`` (message, exitCode) or ``"finished"`` (the
    process has exited; exitCode is its return code). ``"finished"`` is always the last event.
    """

    kind: str
    stage: str = ""
    fraction: float = 0.0
    message: str = ""
    outdir: str = ""
    exitCode: Optional[int] = None


@dataclass(frozen=True)
class RunResult:
    """How a run ended. ``errorMessage`` is what to show the user when ``state`` is FAILED."""

    state: RunState
    returnCode: Optional[int]
    outdir: str
    errorMessage: str
    elapsedSeconds: float
    logTail: tuple


def pythonExecutable() -> str:
    """The Python that runs the engine: ``PythonSlicer`` inside Slicer, else this interpreter.

    Slicer sets ``sys.executable`` to its ``PythonSlicer`` launcher (``qSlicerCoreApplication.cxx``), which runs
    Slicer's Python with the right library paths; it is looked up beside ``sys.executable`` (and on PATH) so
    that an embedding that left ``sys.executable`` pointing elsewhere still finds it.
    """
    folder = os.path.dirname(sys.executable)
    for name in ("PythonSlicer.exe", "PythonSlicer") if os.name == "nt" else ("PythonSlicer",):
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            return candidate
    found = shutil.which("PythonSlicer")
    if found and "slicer" in sys.modules and hasattr(sys.modules["slicer"], "app"):
        return found
    return sys.executable


class EngineRunner:
    """One engine process. Not reusable: make a new runner for the next run.

    Args:
        args: the full command line (``[python, "-m", "AtlasSegLib", "segment", ...]``).
        env: extra environment variables (added to a copy of ``os.environ``).
        cwd: working directory of the process.
        logCallback: called from ``poll()`` (on the caller's thread) with every log line.
    """

    def __init__(self, args, *, env: Optional[dict] = None, cwd: Optional[str] = None,
                 logCallback: Optional[Callable[[str], None]] = None, expectDone: bool = True):
        self.args = [str(a) for a in args]
        # The engine says "done" with its output folder; a plain command (pip, light-the-torch) succeeds on exit 0.
        self._expectDone = expectDone
        self._env = dict(os.environ)
        # Progress lines must arrive as they are printed, not when a 4 kB pipe buffer fills up.
        self._env.update({"PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"})
        self._env.update({k: str(v) for k, v in (env or {}).items()})
        self._cwd = cwd
        self._logCallback = logCallback
        self._queue: queue.Queue = queue.Queue()
        self._process: Optional[subprocess.Popen] = None
        self._threads: list = []
        self._started = 0.0
        self._ended: Optional[float] = None
        self._cancelRequested = False
        self._logTail: deque = deque(maxlen=LOG_TAIL_LINES)
        self.state = RunState.NOT_STARTED
        self.lastProgress: Optional[RunEvent] = None
        self._outdir = ""
        self._errorEvent: Optional[RunEvent] = None
        self.result: Optional[RunResult] = None

    # ------------------------------------------------------------------------------------------------ start
    def start(self) -> None:
        """Start the process. Raises ``RuntimeError`` naming the command when it cannot be started."""
        if self.state is not RunState.NOT_STARTED:
            raise RuntimeError("this runner was already started; create a new EngineRunner for another run")
        kwargs = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        else:
            # A new session makes the engine the leader of its own process group, so Cancel can kill the
            # engine and every worker it spawned (DataLoader workers, torch compile helpers) in one call.
            kwargs["start_new_session"] = True
        try:
            self._process = subprocess.Popen(
                self.args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=self._cwd, env=self._env, text=True, encoding="utf-8", errors="replace", bufsize=1,
                **kwargs)
        except OSError as exc:
            raise RuntimeError(f"cannot start the segmentation engine ({exc}); command: {' '.join(self.args)}") from exc
        self._started = time.monotonic()
        self.state = RunState.RUNNING
        readers = [threading.Thread(target=self._readStdout, name="AtlasSeg-stdout", daemon=True),
                   threading.Thread(target=self._readStderr, name="AtlasSeg-stderr", daemon=True)]
        for thread in readers:
            thread.start()
        waiter = threading.Thread(target=self._waitForExit, args=(readers,), name="AtlasSeg-wait", daemon=True)
        waiter.start()
        self._threads = readers + [waiter]

    @property
    def pid(self) -> Optional[int]:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        return self.state is RunState.RUNNING

    @property
    def elapsedSeconds(self) -> float:
        if not self._started:
            return 0.0
        return (self._ended or time.monotonic()) - self._started

    # ------------------------------------------------------------------------------------- reader threads
    def _readStdout(self) -> None:
        for line in self._process.stdout:
            line = line.rstrip("\r\n")
            if not line:
                continue
            event = _parseEvent(line)
            self._queue.put(event if event is not None else RunEvent("log", message=line))
        self._process.stdout.close()

    def _readStderr(self) -> None:
        for line in self._process.stderr:
            line = line.rstrip("\r\n")
            if line:
                self._queue.put(RunEvent("log", message=line))
        self._process.stderr.close()

    def _waitForExit(self, readers) -> None:
        returnCode = self._process.wait()
        # The readers finish once the pipes close; joining them first guarantees "finished" is the last event.
        for thread in readers:
            thread.join()
        self._queue.put(RunEvent("finished", exitCode=returnCode))

    # ---------------------------------------------------------------------------------------------- poll
    def poll(self) -> list:
        """Every event that arrived since the last call (never blocks). Updates ``state`` and ``result``."""
        events = []
        for event in _drain(self._queue):
            self._handle(event)
            events.append(event)
        return events

    def wait(self, timeout: Optional[float] = None, onEvent: Optional[Callable[[RunEvent], None]] = None) -> RunResult:
        """Block until the process ends (or ``timeout`` seconds pass, then cancel it) and return the result."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.result is None:
            try:
                event = self._queue.get(timeout=0.1)
            except queue.Empty:
                if deadline is not None and time.monotonic() > deadline and not self._cancelRequested:
                    log.warning("engine run exceeded %.0f s; cancelling it", timeout)
                    self.cancel()
                continue
            self._handle(event)
            if onEvent is not None:
                onEvent(event)
        return self.result

    def _handle(self, event: RunEvent) -> None:
        if event.kind == "log":
            self._logTail.append(event.message)
            if self._logCallback is not None:
                self._logCallback(event.message)
        elif event.kind == "progress":
            self.lastProgress = event
        elif event.kind == "done":
            self._outdir = event.outdir
        elif event.kind == "error":
            self._errorEvent = event
        elif event.kind == "finished":
            self._finish(event.exitCode)

    def _finish(self, returnCode: int) -> None:
        self._ended = time.monotonic()
        errorMessage = ""
        if self._cancelRequested:
            state = RunState.CANCELLED
            errorMessage = "cancelled by the user"
        elif returnCode == 0 and (self._outdir or not self._expectDone):
            state = RunState.SUCCEEDED
        else:
            state = RunState.FAILED
            errorMessage = self._failureMessage(returnCode)
        self.state = state
        self.result = RunResult(state=state, returnCode=returnCode, outdir=self._outdir, errorMessage=errorMessage,
                                elapsedSeconds=self.elapsedSeconds, logTail=tuple(self._logTail))

    def _failureMessage(self, returnCode: int) -> str:
        if self._errorEvent is not None and self._errorEvent.message:
            return self._errorEvent.message
        tail = "\n".join(list(self._logTail)[-8:])
        if returnCode == 0:
            return "the segmentation engine ended without reporting a result" + (f":\n{tail}" if tail else "")
        if returnCode is not None and returnCode < 0:
            how = f"was killed by signal {-returnCode}"
            if -returnCode == getattr(signal, "SIGKILL", 9):
                how += " (often: out of memory; try Fast mode)"
        else:
            how = f"failed with exit code {returnCode}"
        return f"the segmentation engine {how}" + (f"; last output:\n{tail}" if tail else "")

    # -------------------------------------------------------------------------------------------- cancel
    def cancel(self) -> None:
        """Kill the engine and all its child processes. Returns at once; ``poll()`` then reports CANCELLED."""
        if self._process is None or self.state is not RunState.RUNNING:
            return
        self._cancelRequested = True
        killProcessTree(self._process.pid)


def killProcessTree(pid: int) -> None:
    """Kill process ``pid`` and its descendants (POSIX: its whole process group; Windows: ``taskkill /T``)."""
    descendants = _descendants(pid)
    if os.name == "nt":
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(pid)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False, creationflags=subprocess.CREATE_NO_WINDOW)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # the whole group has already exited
        except PermissionError:
            # The engine was not started as a group leader (should not happen); kill the process itself.
            _killQuietly(pid)
    # Children that started their own session escaped the group; psutil (when installed) found them above.
    for child in descendants:
        _killQuietly(child)


def _descendants(pid: int) -> list:
    try:
        import psutil  # here: optional (installed by the module on first run)
    except ImportError:
        return []
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _killQuietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def _parseEvent(line: str) -> Optional[RunEvent]:
    """A ``RunEvent`` for a protocol line, ``None`` for any other line (it is then a log line)."""
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    kind = data.get("event")
    if kind == "progress":
        try:
            fraction = min(1.0, max(0.0, float(data.get("fraction", 0.0))))
        except (TypeError, ValueError):
            fraction = 0.0
        return RunEvent("progress", stage=str(data.get("stage", "")), fraction=fraction,
                        message=str(data.get("message", "")))
    if kind == "done":
        return RunEvent("done", outdir=str(data.get("outdir", "")), message=str(data.get("message", "")))
    if kind == "error":
        exitCode = data.get("exit_code")
        return RunEvent("error", message=str(data.get("message", "")),
                        exitCode=int(exitCode) if isinstance(exitCode, int) else None)
    return None


# A model download in its own process (see the module docstring for why not a thread). argv[1] is a built-in model
# id or the path of a model card (.json). Progress at most every 0.1 s, in the engine's protocol; exit code 2 with
# an "error" event for what the user can fix (no network, checksum, no URL), as the CLI does.
DOWNLOAD_SCRIPT = r"""
import json, os, sys, time
from AtlasSegLib import download
from AtlasSegLib.card import load_card
from AtlasSegLib.errors import AtlasSegError
target = sys.argv[1]
card = load_card(target) if target.endswith(".json") and os.path.isfile(target) else target
last = [0.0]
def progress(done, total):
    now = time.monotonic()
    if now - last[0] < 0.1 and not (total and done >= total):
        return
    last[0] = now
    fraction = done / total if total else 0.0
    message = f"{done / 1e6:.0f} of {total / 1e6:.0f} MB" if total else f"{done / 1e6:.0f} MB"
    print(json.dumps({"event": "progress", "stage": "download", "fraction": fraction, "message": message}), flush=True)
try:
    path = download.fetch(card, progress=progress)
except AtlasSegError as exc:
    print(json.dumps({"event": "error", "message": str(exc), "exit_code": 2}), flush=True)
    sys.exit(2)
print(json.dumps({"event": "done", "outdir": str(path)}), flush=True)
"""


def downloadCommand(python: str, modelIdOrCardPath) -> list:
    """The command line that downloads a model's weights into the cache in a separate process."""
    return [str(python), "-c", DOWNLOAD_SCRIPT, str(modelIdOrCardPath)]


class ProcessOutput:
    """A short command whose output is wanted once it has exited, checked with ``poll()`` (never blocks, no
    thread: the output goes to a temporary file, so a full pipe cannot stall the process)."""

    def __init__(self, args, *, env: Optional[dict] = None, cwd: Optional[str] = None, timeoutSeconds: float = 300):
        environment = dict(os.environ)
        environment.update({"PYTHONIOENCODING": "utf-8"})
        environment.update({k: str(v) for k, v in (env or {}).items()})
        self._output = tempfile.TemporaryFile()
        kwargs = {"creationflags": subprocess.CREATE_NO_WINDOW} if os.name == "nt" else {}
        self._deadline = time.monotonic() + timeoutSeconds
        self._timedOut = False
        self._process = subprocess.Popen([str(a) for a in args], stdin=subprocess.DEVNULL, stdout=self._output,
                                         stderr=subprocess.STDOUT, cwd=cwd, env=environment, **kwargs)
        self.returnCode: Optional[int] = None
        self.output = ""

    def poll(self) -> bool:
        """Whether the command has ended (``returnCode`` and ``output`` are then set); kills it past its time."""
        if self.returnCode is not None:
            return True
        if self._process.poll() is None:
            if time.monotonic() < self._deadline:
                return False
            self._timedOut = True
            _killQuietly(self._process.pid)
            self._process.wait()
        self.returnCode = self._process.returncode
        self._output.seek(0)
        self.output = self._output.read().decode("utf-8", errors="replace")
        self._output.close()
        if self._timedOut:
            self.output += "\n(stopped: it did not finish in time)"
        return True

    def wait(self) -> "ProcessOutput":
        while not self.poll():
            time.sleep(0.05)
        return self

    def cancel(self) -> None:
        if self.returnCode is None and self._process.poll() is None:
            _killQuietly(self._process.pid)


class BackgroundTask:
    """Run ``function(progress, cancelled)`` on a daemon thread and report through ``poll()`` (no Qt).

    ``function`` receives ``progress(fraction, message)`` to report and ``cancelled()`` to ask whether the user
    pressed Cancel; it returns its result, or raises (also when it stops because of a cancel: the state is then
    CANCELLED). Events have the same kinds as ``EngineRunner``'s: ``progress``, then one ``finished``.
    """

    def __init__(self, function: Callable, name: str = "AtlasSeg-task"):
        self._function = function
        self._name = name
        self._queue: queue.Queue = queue.Queue()
        self._cancelEvent = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.state = RunState.NOT_STARTED
        self.result = None
        self.error: Optional[BaseException] = None

    def start(self) -> None:
        self.state = RunState.RUNNING
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        def progress(fraction, message=""):
            self._queue.put(RunEvent("progress", fraction=float(fraction), message=str(message)))

        try:
            result = self._function(progress, self._cancelEvent.is_set)
        except Exception as exc:  # reported to the caller through poll(), not swallowed
            self._queue.put(("error", exc))
        else:
            self._queue.put(("result", result))

    @property
    def running(self) -> bool:
        return self.state is RunState.RUNNING

    def cancel(self) -> None:
        self._cancelEvent.set()

    def poll(self) -> list:
        events = []
        for item in _drain(self._queue):
            if isinstance(item, RunEvent):
                events.append(item)
                continue
            kind, value = item
            if kind == "result":
                self.result = value
                self.state = RunState.SUCCEEDED
            else:
                self.error = value
                self.state = RunState.CANCELLED if self._cancelEvent.is_set() else RunState.FAILED
            events.append(RunEvent("finished", message=str(value) if kind == "error" else ""))
        return events

    def wait(self, timeout: Optional[float] = None) -> RunState:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.state is RunState.RUNNING:
            self.poll()
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                deadline = None
            time.sleep(0.02)
        return self.state
