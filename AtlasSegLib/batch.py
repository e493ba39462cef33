"""Batch runs over a dataset folder: the model is loaded once; one failing case never stops the others."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

from .batchrecord import (SUMMARY, Manifest, case_row, committed_since, read_summary, remove_stale_staging,
                          write_summary)
from .errors import AtlasSegError, Cancelled, InputError
from .io import IMAGE_SUFFIXES, read_image
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
    earlier = read_summary(out_root / SUMMARY)
    manifest = Manifest(out_root, root, card.id, workers=1)
    remove_stale_staging(out_root, [name for name, _ in cases])
    segmenter = Segmenter(load_model(card, weights), options)
    rows = []
    started = time.time()
    try:
        _run_cases(cases, out_root, segmenter, options, progress, cancel, earlier, rows, manifest)
    except (KeyboardInterrupt, Cancelled) as exc:
        clear_interrupt()  # delivered: the summary below must not be interrupted again by a progress check
        first_unrecorded = len(rows)
        in_progress = None  # the case the stop came in, when its output was not written
        if first_unrecorded < len(cases):
            name, path = cases[first_unrecorded]
            if committed_since(out_root / name, started):
                # Stopped after the case's folder was swapped in but before its row was kept: the folder is
                # complete (it is renamed into place whole), so the summary must say so, not "not written".
                rows.append(case_row(name, path, out_root / name, "done", "finished as the batch was stopped"))
            else:
                in_progress = name
                rows.append(case_row(name, path, out_root / name, "interrupted",
                                     "stopped here; its output was not written"))
        for name, path in cases[len(rows):]:
            rows.append(case_row(name, path, out_root / name, "not run", "the batch was stopped before this case"))
        write_summary(out_root / SUMMARY, rows, earlier)
        for row in rows[first_unrecorded:]:
            manifest.finish(row)
        manifest.save(force=True)
        done = sum(1 for r in rows if r["status"] == "done")
        not_started = sum(1 for r in rows if r["status"] == "not run")
        written = (f"{done} case(s) finished and kept in {out_root}, "
                   + ("the case in progress was not written, " if in_progress else "")
                   + f"{not_started} not started; summary: {out_root / SUMMARY}")
        if isinstance(exc, Cancelled):
            raise Cancelled(f"batch cancelled: {written}") from None
        exc.written = written
        raise
    write_summary(out_root / SUMMARY, rows, earlier)
    manifest.save(force=True)
    return rows


def segment_case(segmenter, name, path, outdir, options, reporter) -> dict:
    """Segment one case into ``outdir``; its summary row (status done or failed, with the reason). Shared by the
    in-process loop and the Ray workers (AtlasSegLib/cluster.py), so both write the same rows."""
    t = time.perf_counter()
    row = case_row(name, path, outdir)
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
            row = case_row(name, path, outdir, "skipped", "output exists (use --overwrite to re-run)")
        else:
            if manifest is not None:
                manifest.start(name, path, worker="in-process")
            row = segment_case(segmenter, name, path, outdir, options,
                               Reporter(progress=case_progress, cancel=cancel))
        rows.append(row)
        if manifest is not None:
            manifest.finish(row)
