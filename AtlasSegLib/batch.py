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
    ``out_root/batch_summary.csv``. Existing case outputs are skipped unless ``options.overwrite``."""
    cases = find_cases(root)
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    segmenter = Segmenter(load_model(card, weights), options)
    rows = []
    for n, (name, path) in enumerate(cases):
        outdir = out_root / name
        t = time.perf_counter()
        row = {"case": name, "input": str(path), "output": str(outdir), "status": "done", "message": "", "seconds": 0.0}

        def case_progress(stage, fraction, message, _n=n):
            if progress is not None:
                progress(stage, (_n + fraction) / len(cases), f"{name}: {message}")

        if outdir.exists() and not options.overwrite:
            row.update(status="skipped", message="output exists (use --overwrite to re-run)")
        else:
            try:
                image, source = read_image(path, series_uid=options.series_uid)
                report = segmenter.run(image, source, outdir, reporter=Reporter(progress=case_progress, cancel=cancel))
                row["message"] = f"{len(report['structures'])} structures"
            except Cancelled:
                raise
            except AtlasSegError as exc:
                row.update(status="failed", message=str(exc))
                log.warning("case %s failed: %s", name, exc)
        row["seconds"] = round(time.perf_counter() - t, 2)
        rows.append(row)
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(buf.getvalue(), out_root / "batch_summary.csv")
    return rows
