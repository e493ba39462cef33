"""``atlasseg batch --workers N`` / ``--ray-address ADDR``: a dataset segmented by Ray actors.

Ray (https://docs.ray.io, the ``cluster`` extra: ``pip install 'atlasseg[cluster]'``) places the workers, starts
and restarts their processes and moves the small messages; AtlasSeg keeps no scheduler of its own beyond a queue
of case names in this driver process:

- Each worker is an actor (``CaseWorker``) that loads the model once, then segments the cases the driver sends
  it, one at a time. Inputs and outputs are paths on storage every worker reaches (a shared filesystem: NFS,
  Lustre, CephFS...); only case names, paths and summary rows travel through Ray.
- A case's output appears only complete (``Segmenter`` writes into ``.<case>.partial-*`` and renames it), so a
  worker that dies leaves at most a staging folder, which the driver removes before it resubmits the case.
- Fault tolerance: Ray restarts a dead actor process (``max_restarts``; it reloads the model). Tasks are not
  retried by Ray (``max_task_retries=0``): the driver resubmits the case itself, to whichever worker is free
  next, at most ``MAX_ATTEMPTS`` times in all, so a case that kills every worker it touches (out of memory) ends
  as failed instead of looping.
- The driver alone writes ``OUT/batch_manifest.json`` (the state of each case) and ``OUT/batch_summary.csv``
  (the format of the in-process run), both atomically.
"""
from __future__ import annotations

import collections
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from .errors import Cancelled, InputError, Terminated
from .progress import clear_interrupt

# AtlasSegLib.batch (torch, SimpleITK) and AtlasSegLib.batchrecord (SimpleITK, through io) are imported where they
# are used: '--workers 2' without Ray must answer with the install hint at once, and Ray's workers import this
# module before they load the model.

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # a case whose worker died this many times is reported as failed
INSTALL_HINT = "pip install 'atlasseg[cluster]'"


def import_ray(ray_address=None):
    """Ray, or InputError (exit 2) saying how to install it. A Ray started here, or joined at a loopback address,
    listens on 127.0.0.1 only (Ray would otherwise bind to the machine's network address)."""
    local = ray_address is None or str(ray_address).split("://")[-1].split(":")[0] in ("127.0.0.1", "localhost")
    if local:
        # Read by Ray when it is imported: ask for the loopback address instead of the network one.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if ray_address is None:
        # Token authentication (Ray's default for a new cluster), without Ray's notice about it; read at import.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        import ray  # here: optional (atlasseg[cluster]); refused with INSTALL_HINT below
    except ImportError:
        raise InputError(f"--workers > 1 and --ray-address run on Ray, which is not installed: {INSTALL_HINT} "
                         "(or run with --workers 1, in this process)") from None
    return ray


class CaseWorker:
    """One Ray actor: loads the model once, segments one case at a time. Threaded (max_concurrency=2) so that
    ``state()`` answers while ``segment()`` runs."""

    def __init__(self, card, weights, options, threads: int):
        # here: in the Ray worker only (see the note at the top)
        import torch

        from .networks import load_model
        from .pipeline import Segmenter

        if threads > 0:
            torch.set_num_threads(threads)
        self.segmenter = Segmenter(load_model(card, weights), options)
        self.options = options
        self._state = {"case": None, "stage": "idle", "fraction": 0.0}

    def ready(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "device": self.segmenter.device.type}

    def state(self) -> dict:
        return dict(self._state)

    def segment(self, name: str, path: str, outdir: str) -> dict:
        # here: torch and SimpleITK load in the worker, not at import (see the note at the top)
        from .batch import segment_case
        from .batchrecord import case_row
        from .progress import Reporter

        def progress(stage, fraction, message):
            self._state = {"case": name, "stage": stage, "fraction": round(fraction, 3)}

        self._state = {"case": name, "stage": "read", "fraction": 0.0}
        try:
            return segment_case(self.segmenter, name, Path(path), Path(outdir), self.options,
                                Reporter(progress=progress))
        except Exception as exc:  # noqa: BLE001 - a bug on one case must not end the dataset: reported as failed
            log.exception("case %s: internal error", name)
            row = case_row(name, path, outdir, "failed", f"internal error: {type(exc).__name__}: {exc}")
            return row
        finally:
            self._state = {"case": None, "stage": "idle", "fraction": 0.0}


def plan_cpus(workers: int, cpus_per_worker, gpus_per_worker: float, local: bool, ray=None) -> int:
    """CPUs each worker reserves (and uses as torch/OpenVINO threads): given, or this machine's cores shared
    out (local), or the cluster's CPUs shared out but no more than its smallest node has (an actor lives on
    one node)."""
    if cpus_per_worker:
        return int(cpus_per_worker)
    if local:
        return max(1, (os.cpu_count() or 1) // workers)
    nodes = [n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    total = sum(nodes)
    if not nodes or total == 0:
        return 1
    return int(max(1, min(total // workers, min(n for n in nodes if n > 0))))


def run_batch_ray(root, out_root, *, card, weights=None, options=None, workers: int = 2,
                  ray_address=None, gpus_per_worker: float = 0.0, cpus_per_worker=None, progress=None, events=None,
                  cancel=None, verbose: bool = False) -> list:
    """Segment every case of ``root`` into ``out_root/<case>`` on ``workers`` Ray actors; returns one row per
    case (in case order) and writes ``out_root/batch_summary.csv`` and ``out_root/batch_manifest.json``.

    Ray: the one this process is already connected to, else the cluster at ``ray_address``, else a local one
    started here (127.0.0.1, no dashboard, a temporary folder removed at the end) and shut down at the end.
    ``progress(stage, fraction, message)`` gets the dataset's progress with each worker's status; ``events``
    (keyword arguments) one event per case state change. Interrupted (Ctrl-C, SIGTERM, ``cancel``): the workers
    are stopped, the summary and manifest say which cases finished, which were stopped, which never started;
    the exception is re-raised with ``written`` saying so."""
    # here: see the note at the top (batch: torch; batchrecord: SimpleITK)
    from .batch import find_cases
    from .batchrecord import SUMMARY, Manifest, case_row, read_summary, remove_stale_staging, write_summary
    from .pipeline import SegmentOptions

    options = options or SegmentOptions()
    ray = import_ray(ray_address)
    cases = find_cases(root)
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    earlier = read_summary(out_root / SUMMARY)
    manifest = Manifest(out_root, root, card.id, workers=workers)
    remove_stale_staging(out_root, [name for name, _ in cases])
    rows = {}
    todo = []
    for name, path in cases:
        outdir = out_root / name
        if outdir.exists() and not options.overwrite:
            rows[name] = case_row(name, path, outdir, "skipped", "output exists (use --overwrite to re-run)")
            manifest.finish(rows[name])
        else:
            todo.append((name, path))
    emit = events or (lambda **kw: None)
    emit(event="batch", cases=len(cases), to_run=len(todo), skipped=len(cases) - len(todo), workers=workers)

    def ordered():
        return [rows[name] for name, _ in cases if name in rows]

    if not todo:
        write_summary(out_root / SUMMARY, ordered(), earlier)
        manifest.save(force=True)
        return ordered()
    driver = _Driver(ray, todo, out_root, manifest, rows, card=card, weights=weights, options=options,
                     workers=min(workers, len(todo)), gpus_per_worker=gpus_per_worker, progress=progress, emit=emit,
                     cancel=cancel)
    own_ray, temp_dir = False, None
    stdout = _RayPrintsToLog.install()
    sigterm = _SigtermSeen.install()
    try:
        if not ray.is_initialized():
            own_ray = True
            if not ray_address:  # a short path: Ray's socket paths must stay under the OS limit (~107 characters)
                temp_dir = tempfile.mkdtemp(prefix="atlasseg-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
            _start_or_join(ray, ray_address, temp_dir, workers, cpus_per_worker, gpus_per_worker, verbose)
        threads = plan_cpus(driver.workers, cpus_per_worker, gpus_per_worker, ray_address is None and own_ray, ray)
        driver.run(threads)
    except (KeyboardInterrupt, Cancelled) as exc:
        clear_interrupt()  # delivered (see progress.note_interrupt)
        if sigterm.seen and not isinstance(exc, Terminated):
            exc = Terminated()  # Ray's waits turn any signal handler's exception into KeyboardInterrupt
        stopped = driver.stop()
        for name, path in todo:
            if name not in rows:
                rows[name] = case_row(name, path, out_root / name, "not run", "the batch was stopped before this case")
                manifest.finish(rows[name])
        write_summary(out_root / SUMMARY, ordered(), earlier)
        manifest.save(force=True)
        done = sum(1 for name, _ in todo if rows[name]["status"] == "done")
        failed = sum(1 for name, _ in todo if rows[name]["status"] == "failed")
        not_started = sum(1 for name, _ in todo if rows[name]["status"] == "not run")
        written = (f"{done} case(s) finished and kept in {out_root}, {failed} failed, {stopped} in progress "
                   f"stopped (not written), {not_started} not started; summary: {out_root / SUMMARY}")
        if isinstance(exc, Cancelled):
            raise Cancelled(f"batch cancelled: {written}") from None
        exc.written = written
        raise exc from None
    finally:
        driver.shutdown()
        if own_ray:
            _shutdown(ray, temp_dir)
        stdout.uninstall()
        sigterm.uninstall()
        # Staging folders of cases whose workers were stopped: those processes are gone now.
        remove_stale_staging(out_root, [name for name, _ in todo if rows.get(name, {}).get("status") != "done"])
    write_summary(out_root / SUMMARY, ordered(), earlier)
    manifest.save(force=True)
    return ordered()


def _start_or_join(ray, ray_address, temp_dir, workers, cpus_per_worker, gpus_per_worker, verbose):
    """Connect to ``ray_address`` or start a local Ray sized for the workers, in ``temp_dir`` (removed by
    ``_shutdown``). Ray's own SIGTERM handler is replaced by the one the CLI had, so
    SIGTERM still ends the batch cleanly (summary first)."""
    previous = signal.getsignal(signal.SIGTERM) if _main_thread() else None
    quiet = dict(logging_level=logging.INFO if verbose else logging.WARNING, log_to_driver=verbose)
    try:
        if ray_address:
            try:
                ray.init(address=ray_address, **quiet)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise InputError(f"could not join the Ray cluster at {ray_address}: {exc}. Start it first "
                                 "('ray start --head' on the head node) and pass the address it prints") from None
        else:
            cpus = plan_cpus(workers, cpus_per_worker, gpus_per_worker, True) * workers
            # GPUs: as Ray detects them (CUDA_VISIBLE_DEVICES); a worker asking for more waits, so say so early.
            ray.init(num_cpus=cpus, include_dashboard=False, _temp_dir=temp_dir,
                     configure_logging=True, **quiet)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _shutdown(ray, temp_dir):
    try:
        ray.shutdown()  # a local Ray: ends its processes (GCS, raylet, workers); a joined cluster: disconnects
    finally:
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)


class _SigtermSeen:
    """Notes a SIGTERM, then runs the handler that was there (the CLI's raises Terminated). Needed because Ray's
    blocking calls replace whatever a signal handler raises with KeyboardInterrupt, so the exception alone no
    longer tells SIGTERM (exit 143) from Ctrl-C (130)."""

    def __init__(self):
        self.seen = False
        self.previous = None

    @classmethod
    def install(cls) -> "_SigtermSeen":
        guard = cls()
        if _main_thread():
            guard.previous = signal.signal(signal.SIGTERM, guard._handle)
        return guard

    def _handle(self, signum, frame):
        self.seen = True
        if callable(self.previous):
            self.previous(signum, frame)
        raise Terminated()

    def uninstall(self) -> None:
        if self.previous is not None and signal.getsignal(signal.SIGTERM) == self._handle:
            signal.signal(signal.SIGTERM, self.previous)


class _RayPrintsToLog:
    """sys.stdout while Ray runs: what Ray's driver threads print there (a worker that died, from its error
    listener thread) goes to the log instead (-v shows it), so stdout keeps only this program's output: the
    --progress-json protocol stays one JSON object a line. Every other thread writes through unchanged."""

    def __init__(self, stream):
        self.stream = stream

    @classmethod
    def install(cls) -> "_RayPrintsToLog":
        guard = cls(sys.stdout)
        sys.stdout = guard
        return guard

    def uninstall(self) -> None:
        if sys.stdout is self:
            sys.stdout = self.stream

    def write(self, text):
        if threading.current_thread().name.startswith("ray_"):
            if text.strip():
                log.info("ray: %s", text.strip())
            return len(text)
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class _Worker:
    def __init__(self, index, handle):
        self.index = index
        self.handle = handle
        self.label = f"w{index + 1}"
        self.where = ""  # host:pid once ready
        self.ready_ref = handle.ready.remote()
        self.pid = None
        self.task = None  # (ref, name, path, started: monotonic)
        self.started_wall = 0.0  # the task's start on the clock file times use
        self.state_ref = None
        self.state = {}
        self.deaths = 0
        self.gone = False


class _Driver:
    """The loop of the Ray run: keep every ready worker busy, collect results, resubmit cases of dead workers."""

    def __init__(self, ray, todo, out_root, manifest, rows, *, card, weights, options, workers, gpus_per_worker,
                 progress, emit, cancel):
        self.ray = ray
        self.todo = todo
        self.queue = collections.deque(todo)
        self.out_root = out_root
        self.manifest = manifest
        self.rows = rows
        self.card, self.weights, self.options = card, weights, options
        self.workers = workers
        self.gpus_per_worker = gpus_per_worker
        self.progress = progress
        self.emit = emit
        self.cancel = cancel
        self.pool = []
        self.attempts = collections.Counter()
        self.t0 = None
        self.last_error = ""
        self.init_errors = []
        self._last_state, self._last_report = None, 0.0

    # -- lifecycle
    def run(self, threads: int) -> None:
        ray = self.ray
        actor = ray.remote(num_cpus=threads, num_gpus=self.gpus_per_worker or 0, max_restarts=MAX_ATTEMPTS,
                           max_task_retries=0, max_concurrency=2)(CaseWorker)
        self.pool = [_Worker(i, actor.remote(self.card, self.weights, self.options, threads))
                     for i in range(self.workers)]
        self._report("starting workers (each loads the model)")
        self.t0 = time.monotonic()
        while self.queue or any(w.task for w in self.pool):
            self._check_cancel()
            self._collect_ready()
            self._dispatch()
            self._collect_results()
            self._poll_states()
            if not any(not w.gone for w in self.pool):
                if self.init_errors and not self.attempts:
                    # No worker could load the model (bad weights, a missing file on a node): that is the error, as
                    # in the in-process run; no case was attempted, so none is marked failed.
                    raise InputError(f"the workers could not load the model: {self.init_errors[0]}")
                for name, path in list(self.queue):
                    self._fail(name, path, "no worker left: every worker died or could not start"
                               + (f" ({self.last_error})" if self.last_error else ""))
                self.queue.clear()
            self._report()
            self.manifest.save()

    def stop(self) -> int:
        """Interrupted: the cases in progress are marked interrupted (their outputs were not written); their
        workers are killed by ``shutdown``. Returns how many were stopped."""
        # here: batchrecord imports SimpleITK (see the note at the top)
        from .batchrecord import case_row, committed_since

        stopped = 0
        for w in self.pool:
            if w.task is not None:
                _, name, path, _ = w.task
                row = case_row(name, path, self.out_root / name, "interrupted",
                               "stopped here; its output was not written")
                if committed_since(self.out_root / name, w.started_wall):
                    # Its output was committed just before the stop: the result is kept, but the row says so.
                    row.update(status="done", message="finished as the batch was stopped (see its report.json)")
                self.rows[name] = row
                self.manifest.finish(row)
                self.emit(event="case", case=name, status=row["status"], worker=w.label, message=row["message"])
                w.task = None
                stopped += row["status"] == "interrupted"
        return stopped

    def shutdown(self) -> None:
        for w in self.pool:
            try:
                self.ray.kill(w.handle, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.pool = []

    # -- steps
    def _check_cancel(self):
        if self.cancel is not None and self.cancel():
            raise Cancelled("cancelled by the user")

    def _collect_ready(self):
        waiting = {w.ready_ref: w for w in self.pool if w.ready_ref is not None}
        if not waiting:
            return
        done, _ = self.ray.wait(list(waiting), num_returns=len(waiting), timeout=0)
        for ref in done:
            w = waiting[ref]
            w.ready_ref = None
            try:
                info = self.ray.get(ref)
            except self.ray.exceptions.RayError as exc:  # could not start: the model did not load there
                w.gone = True
                self.last_error = f"{w.label}: {_init_error(exc)}"
                if getattr(exc, "actor_init_failed", False):
                    self.init_errors.append(_init_error(exc))
                log.info("worker %s could not start: %s", w.label, exc)
                self.emit(event="worker", worker=w.label, status="gone", message=_init_error(exc))
                continue
            w.where, w.pid = f"{info['host']}:{info['pid']}", info["pid"]
            self.emit(event="worker", worker=w.label, status="ready", host=info["host"], pid=info["pid"],
                      device=info["device"])

    def _dispatch(self):
        for w in self.pool:
            if w.gone or w.task is not None or w.ready_ref is not None or not self.queue:
                continue
            name, path = self.queue.popleft()
            outdir = self.out_root / name
            ref = w.handle.segment.remote(name, str(path), str(outdir))
            w.task = (ref, name, path, time.monotonic())
            w.started_wall = time.time()
            w.state = {"case": name, "stage": "queued", "fraction": 0.0}
            self.attempts[name] += 1
            self.manifest.start(name, path, worker=f"{w.label} ({w.where})")
            self.emit(event="case", case=name, status="running", worker=w.label, where=w.where, pid=w.pid,
                      attempt=self.attempts[name])

    def _collect_results(self):
        # here: batchrecord imports SimpleITK (see the note at the top)
        from .batchrecord import case_row

        busy = {w.task[0]: w for w in self.pool if w.task is not None}
        if not busy:
            time.sleep(0.2)
            return
        done, _ = self.ray.wait(list(busy), num_returns=1, timeout=0.5)
        if done:  # and every other result already there (many workers: several finish per loop)
            done, _ = self.ray.wait(list(busy), num_returns=len(busy), timeout=0)
        for ref in done:
            w = busy[ref]
            _, name, path, started = w.task
            w.task = None
            w.state = {}
            try:
                row = self.ray.get(ref)
            except self.ray.exceptions.RayActorError as exc:
                self._worker_died(w, name, path, started, exc)
                continue
            except self.ray.exceptions.RayError as exc:  # the task itself failed in Ray (not in AtlasSeg)
                row = case_row(name, path, self.out_root / name, "failed", f"worker error: {_first_line(exc)}")
            self._finish(row, w)

    def _worker_died(self, w, name, path, started, exc):
        # here: batchrecord imports SimpleITK (see the note at the top)
        from .batchrecord import case_row, committed_since, remove_stale_staging

        w.deaths += 1
        reason = f"worker {w.label} ({w.where}) died after {time.monotonic() - started:.0f} s on this case"
        log.warning("case %s: %s: %s", name, reason, _first_line(exc))
        remove_stale_staging(self.out_root, [name])
        self.manifest.retry(name, reason)
        outdir = self.out_root / name
        if committed_since(outdir, w.started_wall):
            # The worker committed the case (one rename) and died before answering: the output is complete.
            row = case_row(name, path, outdir, "done", "finished (its worker died right after writing it)")
            self._finish(row, w)
        elif self.attempts[name] >= MAX_ATTEMPTS:
            self._fail(name, path, f"its worker died {self.attempts[name]} times while segmenting it (out of "
                       "memory? see the worker logs)", worker=w)
        else:
            self.queue.appendleft((name, path))  # first in line for the next free (or restarted) worker
            self.emit(event="case", case=name, status="retry", worker=w.label, message=reason)
        if w.deaths > MAX_ATTEMPTS:
            w.gone = True
            self.last_error = f"{w.label} died {w.deaths} times"
        else:
            w.where = "restarting"
            w.ready_ref = w.handle.ready.remote()  # Ray restarts the actor (max_restarts); it reloads the model

    def _finish(self, row, w=None):
        self.rows[row["case"]] = row
        self.manifest.finish(row)
        self.emit(event="case", case=row["case"], status=row["status"], worker=w.label if w else None,
                  seconds=row["seconds"], message=row["message"])

    def _fail(self, name, path, reason, worker=None):
        # here: batchrecord imports SimpleITK (see the note at the top)
        from .batchrecord import case_row

        self._finish(case_row(name, path, self.out_root / name, "failed", reason), worker)

    def _poll_states(self):
        """Each busy worker's stage (its ``state()``, answered while it segments), one call in flight per worker,
        collected without waiting."""
        asked = {w.state_ref: w for w in self.pool if w.state_ref is not None}
        if asked:
            done, _ = self.ray.wait(list(asked), num_returns=len(asked), timeout=0)
            for ref in done:
                w = asked[ref]
                w.state_ref = None
                try:
                    state = self.ray.get(ref)
                except self.ray.exceptions.RayError:
                    continue  # a worker that died: its task's result says so
                if w.task is not None and state.get("case") == w.task[1]:
                    w.state = state
        for w in self.pool:
            if w.state_ref is None and w.task is not None and not w.gone:
                w.state_ref = w.handle.state.remote()

    # -- progress
    def _report(self, note: str = ""):
        if self.progress is None:
            return
        n = len(self.todo)
        finished = [self.rows[name] for name, _ in self.todo if name in self.rows]
        failed = sum(1 for r in finished if r["status"] == "failed")
        done = len(finished) - failed
        eta = ""
        if finished and self.t0 is not None and len(finished) < n:
            rate = len(finished) / max(1e-6, time.monotonic() - self.t0)
            eta = f", ETA {_duration((n - len(finished)) / rate)}"
        workers = []
        if len(self.pool) > 6:  # many workers: counts, not one entry each
            busy = sum(1 for w in self.pool if w.task is not None)
            loading = sum(1 for w in self.pool if w.ready_ref is not None and not w.gone)
            gone = sum(1 for w in self.pool if w.gone)
            workers = [f"workers: {busy} busy, {loading} loading, {len(self.pool) - busy - loading - gone} idle"
                       + (f", {gone} gone" if gone else "")]
        for w in self.pool if len(self.pool) <= 6 else []:
            if w.gone:
                workers.append(f"{w.label} gone")
            elif w.ready_ref is not None:
                workers.append(f"{w.label} loading")
            elif w.task is not None:
                stage = w.state.get("stage", "")
                frac = w.state.get("fraction")
                workers.append(f"{w.label} {w.task[1]} {stage}" + (f" {100 * frac:.0f}%" if frac else ""))
            else:
                workers.append(f"{w.label} idle")
        state = f"{done} done, {failed} failed of {n}; " + ", ".join(workers) + (f"; {note}" if note else "")
        # A line when something changed (a case, a worker's stage), else one every few seconds for the ETA.
        if state == self._last_state and time.monotonic() - self._last_report < 5.0:
            return
        self._last_state, self._last_report = state, time.monotonic()
        message = f"{done} done, {failed} failed of {n}{eta}; " + ", ".join(workers) + (f"; {note}" if note else "")
        self.progress("batch", len(finished) / n if n else 1.0, message)


def _init_error(exc) -> str:
    """What a worker's constructor raised: the AtlasSeg error's message at the end of Ray's traceback text."""
    for line in reversed(str(exc).splitlines()):
        if line.startswith("AtlasSegLib.errors.") and ": " in line:
            return line.split(": ", 1)[1]
    return _first_line(exc)


def _first_line(exc) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"


class DatasetBar:
    """The CLI's view of a Ray batch: one bar for the dataset (cases done/failed, ETA, each worker's case and
    stage) on stderr, or with --progress-json the same as "progress" events plus one "case"/"worker" event per
    state change, on stdout (the format of ``cli._ProgressSink``)."""

    def __init__(self, sink):
        self.sink = sink
        self.bar = None

    def __call__(self, stage: str, fraction: float, message: str = "") -> None:
        if self.sink.json_lines:
            self.sink(stage, fraction, message)
            return
        if not self.sink.want_bar:
            return
        if self.bar is None:
            # tqdm here: only when a bar is drawn
            from tqdm import tqdm

            self.bar = tqdm(total=1000, file=sys.stderr, bar_format="{percentage:3.0f}%|{bar:20}| {elapsed} {desc}")
        self.bar.set_description_str(message)
        self.bar.n = round(1000 * fraction)
        self.bar.refresh()

    def event(self, **payload) -> None:
        self.sink.event(**payload)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
