"""Batch runs over a dataset folder: the model is loaded once; one failing case never stops the others."""
from __future__ import annotations

import csv
import io as _io
import logging
import time
from pathlib import Path

from .errors import AtlasSegError, Cancelled, InputError
from .io import IMAGE_SUFFIXES, atomic_write_text, read_image
from .networks import load_model
from .pipeline import SegmentOptions, Segmenter
from .progress import Reporter

log = logging.getLogger(__name__)


def find_cases(root) -> list:
    """(case name, input path) for every case under ``root``, sorted by name.

    Recognised: ``<case>/ct.nii.gz`` (AbdomenAtlas), CT files directly in ``root``, and subfolders holding a
    DICOM series."""
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
    segmenter = Segmenter(load_model(card, weights), options)
    rows = []
    try:
        _run_cases(cases, out_root, segmenter, options, progress, cancel, earlier, rows)
    except (KeyboardInterrupt, Cancelled) as exc:
        done = sum(1 for r in rows if r["status"] == "done")
        current = len(rows)
        if current < len(cases):
            name, path = cases[current]
            rows.append(_row(name, path, out_root / name, "interrupted", "stopped here; its output was not written"))
        for name, path in cases[len(rows):]:
            rows.append(_row(name, path, out_root / name, "not run", "the batch was stopped before this case"))
        _write_summary(out_root / SUMMARY, rows, earlier)
        written = (f"{done} case(s) finished and kept in {out_root}, the case in progress was not written, "
                   f"{len(cases) - current - 1 if current < len(cases) else 0} not started; "
                   f"summary: {out_root / SUMMARY}")
        if isinstance(exc, Cancelled):
            raise Cancelled(f"batch cancelled: {written}") from None
        exc.written = written
        raise
    _write_summary(out_root / SUMMARY, rows, earlier)
    return rows


SUMMARY = "batch_summary.csv"
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


def _run_cases(cases, out_root, segmenter, options, progress, cancel, earlier, rows) -> None:
    for n, (name, path) in enumerate(cases):
        outdir = out_root / name
        t = time.perf_counter()
        row = _row(name, path, outdir)

        def case_progress(stage, fraction, message, _n=n):
            if progress is not None:
                progress(stage, (_n + fraction) / len(cases), f"{name}: {message}")

        if outdir.exists() and not options.overwrite:
            row.update(status="skipped", message="output exists (use --overwrite to re-run)")
        else:
            try:
                image, source = read_image(path, series_uid=options.series_uid)
                report = segmenter.run(image, source, outdir, reporter=Reporter(progress=case_progress, cancel=cancel))
                warnings = report.get("warnings") or []
                row["message"] = f"{len(report['structures'])} structures" + (
                    f", {len(warnings)} warning(s)" if warnings else "")
                row["warnings"] = " | ".join(warnings)
            except Cancelled:
                raise
            except AtlasSegError as exc:
                row.update(status="failed", message=str(exc))
                log.warning("case %s failed: %s", name, exc)
        row["seconds"] = round(time.perf_counter() - t, 2)
        rows.append(row)
