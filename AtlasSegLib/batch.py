"""Batch runs over a dataset folder: the model is loaded once; one failing case never stops the others."""
from __future__ import annotations

import csv
import datetime
import glob
import io as _io
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Optional

from .errors import AtlasSegError, Cancelled, InputError
from .io import IMAGE_SUFFIXES, atomic_write_text, read_image
from .networks import load_model
from .pipeline import SegmentOptions, Segmenter
from .progress import Reporter, clear_interrupt

log = logging.getLogger(__name__)


def find_cases(root, skipped: Optional[list] = None) -> list:
    """(case name, input path) for every case under ``root``, sorted by name.

    Recognised: ``<case>/ct.nii.gz`` (AbdomenAtlas), CT files directly in ``root``, and subfolders holding a
    DICOM series. ``skipped``: a list that receives the names of the files that are none of these (hidden files
    aside), so the caller can say which were left out."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder; 'atlasseg batch' takes a dataset folder (use 'segment' for one CT)")
    cases = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.name.lower().endswith(IMAGE_SUFFIXES):
            name = entry.name
            for suffix in IMAGE_SUFFIXES:
                if name.lower().endswith(suffix):
                    name = name[: -len(suffix)]
                    break
            cases.append((name, entry))
        elif entry.is_dir():
            ct = next((entry / f"ct{s}" for s in IMAGE_SUFFIXES if (entry / f"ct{s}").is_file()), None)
            cases.append((entry.name, ct if ct is not None else entry))
        elif skipped is not None:
            skipped.append(entry.name)
    if not cases:
        raise InputError(f"no CT cases found in {root}: expected <case>/ct.nii.gz folders, CT files, or DICOM folders")
    return cases


def run_batch(root, out_root, *, card, weights=None, options: SegmentOptions = SegmentOptions(), progress=None,
              cancel=None) -> list:
    """Segment every case of ``root`` into ``out_root/<case>``; returns one row per case and writes
    ``out_root/batch_summary.csv``. Existing case outputs are skipped unless ``options.overwrite``; a skipped
    case keeps the row an earlier run's summary has for it (its status, message and time).

    Interrupted (Ctrl-C, SIGTERM, the cancel callback): the summary is still written, with the finished cases,
    the interrupted one (its output was not written) and the ones not started; the exception is re-raised
    with ``written`` saying so."""
    cases = find_cases(root)
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    earlier = _read_summary(out_root / SUMMARY)
    manifest = Manifest(out_root, root, card.id, workers=1)
    remove_stale_staging(out_root, [name for name, _ in cases])
    segmenter = Segmenter(load_model(card, weights), options)
    rows = []
    try:
        _run_cases(cases, out_root, segmenter, options, progress, cancel, earlier, rows, manifest)
    except (KeyboardInterrupt, Cancelled) as exc:
        clear_interrupt()  # delivered: the summary below must not be interrupted again by a progress check
        done = sum(1 for r in rows if r["status"] == "done")
        current = len(rows)
        if current < len(cases):
            name, path = cases[current]
            rows.append(_row(name, path, out_root / name, "interrupted", "stopped here; its output was not written"))
        for name, path in cases[len(rows):]:
            rows.append(_row(name, path, out_root / name, "not run", "the batch was stopped before this case"))
        _write_summary(out_root / SUMMARY, rows, earlier)
        for row in rows[current:]:
            manifest.finish(row)
        manifest.save(force=True)
        written = (f"{done} case(s) finished and kept in {out_root}, the case in progress was not written, "
                   f"{len(cases) - current - 1 if current < len(cases) else 0} not started; "
                   f"summary: {out_root / SUMMARY}")
        if isinstance(exc, Cancelled):
            raise Cancelled(f"batch cancelled: {written}") from None
        exc.written = written
        raise
    _write_summary(out_root / SUMMARY, rows, earlier)
    manifest.save(force=True)
    return rows


SUMMARY = "batch_summary.csv"
MANIFEST = "batch_manifest.json"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Manifest:
    """``OUT/batch_manifest.json``: the state of every case of the dataset, for resuming and for watching a run.

    Each case: ``status`` (running, done, failed, skipped, interrupted, not run), ``input``, ``output``,
    ``worker`` and ``started`` (while running and after), ``seconds``, ``message`` (a failure's reason),
    ``attempts`` and ``history`` (one line per earlier attempt that did not finish, e.g. a worker that died).
    Only the process driving the batch writes it, whole and atomically (temp file + rename), at most once a
    second while cases run (``save(force=True)`` at the end): at 10,000 cases it is a few MB, and readers never
    see half a file. Cases of an earlier run that this run does not touch keep their entries."""

    def __init__(self, out_root, root, model_id: str, *, workers: int, min_interval_s: float = 1.0):
        self.path = Path(out_root) / MANIFEST
        self.earlier = read_manifest(self.path).get("cases", {})
        self.data = {"format": 1, "input": str(Path(root).resolve()), "model": model_id, "workers": workers,
                     "driver": f"{socket.gethostname()}:{os.getpid()}", "started": _now(), "updated": None,
                     "cases": dict(self.earlier)}
        self.min_interval_s = min_interval_s
        self._saved = 0.0
        self._dirty = False

    @property
    def cases(self) -> dict:
        return self.data["cases"]

    def start(self, name, path, *, worker: str) -> None:
        old = self.cases.get(name, {})
        attempts = (old.get("attempts", 0) if old.get("status") == "running" else 0) + 1
        self.cases[name] = {"status": "running", "input": str(path), "worker": worker, "started": _now(),
                            "attempts": attempts, "history": old.get("history", []) if attempts > 1 else []}
        self._dirty = True
        self.save()

    def retry(self, name, reason: str) -> None:
        """The case's attempt ended without a result (its worker died): recorded, the case stays 'running'
        until it is resubmitted (``start`` counts the attempt)."""
        entry = self.cases.setdefault(name, {"attempts": 1, "history": []})
        entry.setdefault("history", []).append(f"{_now()} {entry.get('worker', '?')}: {reason}")
        self._dirty = True
        self.save()

    def finish(self, row: dict) -> None:
        entry = self.cases.setdefault(row["case"], {})
        if row["status"] == "skipped":
            # A case finished earlier keeps its entry (when, by which worker); one whose output was made by
            # something else says so.
            if entry.get("status") != "done":
                self.cases[row["case"]] = {"status": "skipped", "input": row["input"], "output": row["output"],
                                           "message": row["message"]}
            return
        entry.update(status=row["status"], input=row["input"], output=row["output"], message=row["message"],
                     seconds=row["seconds"])
        if row["status"] in ("done", "failed"):
            entry["finished"] = _now()
        self._dirty = True
        self.save()

    def save(self, force: bool = False) -> None:
        if not (self._dirty or force) or (not force and time.monotonic() - self._saved < self.min_interval_s):
            return
        self.data["updated"] = _now()
        atomic_write_text(json.dumps(self.data, indent=1) + "\n", self.path)
        self._saved = time.monotonic()
        self._dirty = False


def read_manifest(path) -> dict:
    """A manifest's contents ({} when there is none or it cannot be read: it is a record, never required)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) and isinstance(data.get("cases"), dict) else {}
    except (OSError, ValueError):
        return {}


def remove_stale_staging(out_root, names) -> list:
    """Remove the staging folders (``.<case>.partial-*``) a killed process left behind: a case becomes
    ``<case>/`` only by one rename when it is complete, so a staging folder is never a result. Only the driver
    of the (one) batch writing into ``out_root`` calls this, before starting cases or after the worker that
    owned the folder died. Returns the names removed."""
    removed = []
    out_root = Path(out_root)
    for name in names:
        for stale in out_root.glob(f".{glob.escape(name)}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
            removed.append(stale.name)
    if removed:
        log.info("removed %d staging folder(s) of unfinished cases: %s", len(removed), ", ".join(removed))
    return removed

FIELDS = ("case", "input", "output", "status", "message", "seconds", "warnings")  # warnings: report.json's, " | "-joined


def _row(name, path, outdir, status="done", message="") -> dict:
    return {"case": name, "input": str(path), "output": str(outdir), "status": status, "message": message,
            "seconds": 0.0, "warnings": ""}


def _read_summary(path: Path) -> dict:
    """An earlier run's summary rows by case (empty when there is none or it cannot be read)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return {r["case"]: r for r in csv.DictReader(f) if r.get("case")}
    except (OSError, csv.Error, UnicodeDecodeError):
        return {}


def _write_summary(path: Path, rows: list, earlier: dict) -> None:
    """This run's rows (a skipped case with its earlier result: message and time), then the earlier rows of
    cases this run did not see (e.g. removed from the dataset folder since)."""
    out = []
    for row in rows:
        old = earlier.get(row["case"])
        if row["status"] == "skipped" and old is not None and old.get("status") in ("done", "skipped"):
            message = old.get("message") or ""
            if old.get("status") == "done":
                message = f"done in an earlier run: {message}".rstrip(": ")
            row = {**row, "message": message, "seconds": old.get("seconds", ""), "warnings": old.get("warnings", "")}
        out.append(row)
    seen = {r["case"] for r in rows}
    out += [{k: r.get(k, "") for k in FIELDS} for name, r in earlier.items() if name not in seen]
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(FIELDS), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(out)
    atomic_write_text(buf.getvalue(), path)


def segment_case(segmenter, name, path, outdir, options, reporter) -> dict:
    """Segment one case into ``outdir``; its summary row (status done or failed, with the reason). Shared by the
    in-process loop and the Ray workers (AtlasSegLib/cluster.py), so both write the same rows."""
    t = time.perf_counter()
    row = _row(name, path, outdir)
    try:
        image, source = read_image(path, series_uid=options.series_uid)
        report = segmenter.run(image, source, outdir, reporter=reporter)
        warnings = report.get("warnings") or []
        row["message"] = f"{len(report['structures'])} structures" + (
            f", {len(warnings)} warning(s)" if warnings else "")
        row["warnings"] = " | ".join(warnings)
    except Cancelled:
        raise
    except AtlasSegError as exc:
        row.update(status="failed", message=str(exc))
        log.info("case %s failed: %s", name, exc)  # the case's row says so (one line per case)
    row["seconds"] = round(time.perf_counter() - t, 2)
    return row


def _run_cases(cases, out_root, segmenter, options, progress, cancel, earlier, rows, manifest=None) -> None:
    for n, (name, path) in enumerate(cases):
        outdir = out_root / name

        def case_progress(stage, fraction, message, _n=n):
            if progress is not None:
                progress(stage, (_n + fraction) / len(cases), f"{name}: {message}")

        if outdir.exists() and not options.overwrite:
            row = _row(name, path, outdir, "skipped", "output exists (use --overwrite to re-run)")
        else:
            if manifest is not None:
                manifest.start(name, path, worker="in-process")
            row = segment_case(segmenter, name, path, outdir, options,
                               Reporter(progress=case_progress, cancel=cancel))
        rows.append(row)
        if manifest is not None:
            manifest.finish(row)
