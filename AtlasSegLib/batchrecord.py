"""The batch bookkeeping both batch paths share: ``OUT/batch_summary.csv`` (one row per case) and
``OUT/batch_manifest.json`` (the state of every case, for resuming and watching), and the removal of staging
folders a killed process left. Its one owner: the in-process loop (``batch.py``) and the Ray driver
(``cluster.py``) both read and write these files through this module only, so their rows and files are the same.

Light on purpose: no torch and no pipeline (``cluster`` imports it before Ray's workers load the model)."""
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

from .io import atomic_write_text

log = logging.getLogger(__name__)

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


# warnings: report.json's, " | "-joined
FIELDS = ("case", "input", "output", "status", "message", "seconds", "warnings")


def case_row(name, path, outdir, status="done", message="") -> dict:
    """One case's row of ``batch_summary.csv`` (``FIELDS``); ``seconds`` and ``warnings`` are filled in by the
    caller that ran the case."""
    return {"case": name, "input": str(path), "output": str(outdir), "status": status, "message": message,
            "seconds": 0.0, "warnings": ""}


def read_summary(path: Path) -> dict:
    """An earlier run's summary rows by case (empty when there is none or it cannot be read)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return {r["case"]: r for r in csv.DictReader(f) if r.get("case")}
    except (OSError, csv.Error, UnicodeDecodeError):
        return {}


def write_summary(path: Path, rows: list, earlier: dict) -> None:
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


def committed_since(outdir: Path, since: float) -> bool:
    """Whether ``outdir`` holds a case committed after ``since`` (time.time()): its report.json is written last,
    in the staging folder, before the one rename, so a folder with a report.json this new is whole, and not an
    earlier run's output that --overwrite was replacing. Both batch paths ask this when a stop lands between a
    case's commit and its summary row."""
    from .run import Run  # here: run loads jsonschema and the card code; the batch bookkeeping stays light

    try:
        return Run(outdir, check=False).report_path.stat().st_mtime >= since - 1.0
    except OSError:
        return False
