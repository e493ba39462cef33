"""A run's report: the numbers and review pictures people read, made from an AtlasSeg output folder.

``build_report(OUTDIR)`` writes, each file through a temporary file and a rename (never half-written)::

    report.json                    the run's report with every existing key kept, plus a "report" section
                                   (organs, tumor components, per-tumor summary, thresholds, pictures)
    report.csv                     one table: a row per structure, per tumor component, per tumor type
    report.html                    self-contained page: CSS inline, pictures inlined as data: URIs, no scripts
    pictures/overview.png          frontal projection for label review (MODELS.md §5, ``overview.py``); the
                                   run's OUTDIR/overview.png is replaced by it, so it follows threshold changes
    pictures/structures_axial.png  axial slices on which every structure is seen, each outlined and named
    pictures/structures_coronal.png  the coronal slice through the most structures, outlined and named
    pictures/<tumor>_<id>.png      axial slice through each tumor component's centroid: outline, size, scale
    pictures/3d.png                not made here (AtlasSegLib never imports vtk): ``AtlasSeg/AtlasSegModule/AtlasSegRender.py``
                                   renders it with Slicer's displayable managers; included when newer than the masks

Units are the ones a radiologist reads: volumes in ml (2 decimals), diameters in cm (1 decimal, longest axial
diameter and the longest extent perpendicular to it in the same slice), attenuation in HU (integer), centroids in
mm (RAS, 1 decimal). The run's own mm values stay in ``tumors.<name>.components``; cm fields are added beside them.

The header names the case as a reader files it: from a DICOM input, patient name and ID, study date and series
description (first slice's header, read with pydicom); the input's file name, never its folder; the model and
version. ``anonymize`` leaves everything but the model out. A tumor component's location is given as the image to
open (the DICOM InstanceNumber of the nearest acquired slice, else the axial slice counted from the head end), the
patient's side of the body's midline on that slice and the third of its organ's height. With a known truth
(``OUTDIR/ground_truth/<structure>.nii.gz``, the demo's phantom) a table gives Dice and volumes.

Review status comes from the sensitivity workflow (``review.review_rows``): "kept", "removed" or "unreviewed".
Components a reviewer removed are listed (status "removed") but count in no total.

The package, along the report's steps (``build_report`` runs measure → pictures → assemble → csv/html, then
writes every file, pictures first and report.json last)::

    measure.py      the run's CT read again, each mask's ml and mean HU, tumor rows in cm, lesion location
    dicomfacts.py   a DICOM input's header facts and slice numbers; the header block
    pictures.py     the pictures in memory, one ``PictureStyle`` for the page and one for lecture slides
    assemble.py     report.json's "report" section; the case's name; notes without the input's folder
    csv_table.py    report.csv
    html_page.py    report.html (a builder per section) and the Slicer panel's table rows
    units.py        cm, rounding and number text, shared by all of them

Demo truth scoring (Dice, lesion counts against ``OUTDIR/ground_truth``) is ``evaluate``'s; the ``atlasseg report``
command is ``cli/report.py``.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import InputError
from ..evaluate import TRUTH_DIR, truth_scores
from ..io import atomic_write_bytes, atomic_write_text
from ..masks import dice
from ..outputs import load_run
from ..overview import Overview
from ..progress import Reporter
from ..run import Run
from ..run import validate as validate_run_file
from .assemble import (ANONYMIZED_CASE, ANONYMIZED_INPUT, REPORT_VERSION, add_cm_to_run, assemble_section,
                       case_name)
from .csv_table import CSV_COLUMNS, report_csv
from .dicomfacts import HEADER_FIELDS, dicom_facts, report_header
from .html_page import CSS, TABLE_COLUMNS, report_html, table_rows
from .measure import (Measurements, Scan, StructureLayer, body_centre, lesion_location, load_run_ct, measure,
                      read_scan, slice_number, structure_layer)
from .pictures import (AXIAL_PANEL_PX, CORONAL_PX, LECTURE, LECTURE_DIR, LECTURE_HEIGHT_PX, LECTURE_TEXT,
                       LECTURE_WIDTH_PX, MAX_AXIAL_LEVELS, MAX_TUMOR_PICTURES, MIN_AXIAL_LEVELS, MIN_FOV_MM, PAGE,
                       PICTURES_DIR, THREE_D_PICTURE, TUMOR_PICTURE_PX, Pictures, PictureStyle,
                       add_kept_pictures, axial_structures_picture, choose_axial_levels, choose_coronal_plane,
                       coronal_structures_picture, draw_pictures, tumor_slice_picture)
from .units import cm

__all__ = [
    "ANONYMIZED_CASE", "ANONYMIZED_INPUT", "AXIAL_PANEL_PX", "CORONAL_PX", "CSS", "CSV_COLUMNS", "HEADER_FIELDS",
    "LECTURE", "LECTURE_DIR", "LECTURE_HEIGHT_PX", "LECTURE_TEXT", "LECTURE_WIDTH_PX", "MAX_AXIAL_LEVELS",
    "MAX_TUMOR_PICTURES", "MIN_AXIAL_LEVELS", "MIN_FOV_MM", "PAGE", "PICTURES_DIR", "REPORT_FILES",
    "REPORT_VERSION", "TABLE_COLUMNS", "THREE_D_PICTURE", "TRUTH_DIR", "TUMOR_PICTURE_PX", "Measurements",
    "PictureStyle", "Pictures", "ReportResult", "Scan", "StructureLayer", "axial_structures_picture", "body_centre",
    "build_report", "case_name", "choose_axial_levels", "choose_coronal_plane", "cm", "coronal_structures_picture",
    "dice", "dicom_facts", "lesion_location", "load_report", "load_run_ct", "report_csv", "report_header",
    "report_html", "slice_number", "structure_layer", "table_rows", "truth_scores", "tumor_slice_picture",
]

REPORT_FILES = ("report.json", "report.csv", "report.html")


@dataclass(frozen=True)
class ReportResult:
    """What ``build_report`` wrote: the updated report (as in report.json) and the files' paths."""

    report: dict
    json_path: Path
    csv_path: Path
    html_path: Path
    pictures: dict = field(default_factory=dict)  # picture key ("overview", "3d", "<tumor>_<id>") -> Path
    notes: tuple = ()
    seconds: float = 0.0


def load_report(outdir) -> dict:
    """The report.json of an output folder (with its "report" section when a report was built)."""
    return load_run(outdir)[0]


def _load_folder(outdir: Path) -> tuple:
    """report.json and the card's operating points. The card is read as plain JSON: a report needs only its
    operating points, and a folder written from a Slicer segmentation carries a card of classes, not of a model."""
    run = Run(outdir, check=False)
    report = run.read_report()
    card = run.read_card_json() if run.card_path.is_file() else {}
    return report, card.get("operating_points") or {}


def build_report(outdir, *, ct=None, pictures: bool = True, anonymize: Optional[bool] = None, progress=None,
                 cancel=None, lecture: bool = False) -> ReportResult:
    """Write report.json (extended), report.csv, report.html and pictures/*.png for an AtlasSeg output folder.

    Args:
        outdir: the folder an ``atlasseg segment`` / ``demo`` run wrote (``report.json``, ``card.json``,
            ``segmentations/``).
        ct: the CT the run segmented (path or ``sitk.Image``); default: the run's input path, else
            ``OUTDIR/ct.nii.gz``. Without a CT the tables are written (mean HU from the run) but no pictures.
        pictures: False writes the tables and page without making pictures (kept ones are reused).
        anonymize: True leaves the patient's name and ID, the study date, the series description, UIDs and the
            input's file name out of report.html, report.csv, the pictures and report.json's "report" section;
            None (default) keeps the choice of the folder's previous report (so 'atlasseg threshold' and review
            rebuilds stay anonymized), False for a first report.
        lecture: also write the structure and tumor pictures for slides into ``pictures/lecture/``: 1920 px wide
            (tumor slices 1080 px square), text 2.5 x larger (``LECTURE_TEXT``), each structure named on the image.
            They are files only: the page keeps its own pictures, which a 1920-px one would not fit.

    Raises:
        InputError: ``outdir`` is not an output folder, or ``ct`` is not the CT the run segmented.
    """
    if lecture and not pictures:
        raise InputError("lecture pictures are drawn on the CT: leave out --no-pictures to make them")
    t0 = time.perf_counter()
    reporter = Reporter(progress=progress, cancel=cancel, stages={"read": 0.4, "measure": 0.2, "pictures": 0.3,
                                                                  "write": 0.1})
    outdir = Path(outdir)
    report, operating = _load_folder(outdir)
    if anonymize is None:
        anonymize = bool((report.get("report") or {}).get("anonymized", False))
    notes, timings = [], {}

    # Measure: the CT and each mask read once; the overview is fed each mask while it is in memory.
    scan = read_scan(outdir, report, ct, with_ct=pictures, reporter=reporter, notes=notes, timings=timings)
    overview = Overview(scan.image) if scan.image is not None else None
    m = measure(outdir, report, operating, scan, overview=overview, reporter=reporter, notes=notes, timings=timings)

    # Pictures, made in memory first: nothing on disk changes until every one of them exists.
    title = f"{case_name(report, anonymize)} - {(report.get('model') or {}).get('title') or ''}"
    drawn = draw_pictures(report, m, scan, overview=overview, title=title, lecture=lecture, reporter=reporter,
                          notes=notes, timings=timings)
    add_kept_pictures(outdir, drawn, redrawn=pictures, notes=notes)

    # Assemble report.json's "report" section, then write every file.
    add_cm_to_run(report, m.summary)
    section = assemble_section(report, m, drawn, notes=notes, dicom=scan.dicom, anonymize=anonymize)
    report["report"] = section
    reporter.update("write", 0.0, "files")
    section["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    section["timings_s"]["total_before_writing"] = round(time.perf_counter() - t0, 3)
    paths, csv_path, html_path, json_path = _write_files(outdir, report, drawn, ct_read=scan.image is not None,
                                                         lecture=lecture)
    reporter.update("write", 1.0, "done")
    return ReportResult(report, json_path, csv_path, html_path, paths, tuple(notes), time.perf_counter() - t0)


def _write_files(outdir: Path, report: dict, drawn: Pictures, *, ct_read: bool, lecture: bool) -> tuple:
    """Every file's content exists in memory before the first one is replaced: a failure on the way (a full disk
    aside) leaves the previous report whole. Then pictures first, the tables and the page that refer to them
    next, report.json last. ``ct_read``: the pictures were drawn from the CT now, so the run's overview.png is
    replaced and tumor pictures of components gone are deleted. Returns ``(picture paths, csv, html, json)``."""
    csv_text = report_csv(report)
    html_text = report_html(report, drawn.page)
    run = Run(outdir, check=False)
    validate_run_file(report, "report", run.report_path)  # before any file changes: a bad report is never written
    pictures_dir = outdir / PICTURES_DIR
    paths = {}
    for key, data in drawn.page.items():
        if key == "3d":
            paths[key] = outdir / THREE_D_PICTURE  # Slicer's picture, read and kept as it is
            continue
        paths[key] = pictures_dir / f"{key}.png"
        atomic_write_bytes(data, paths[key])
    if "overview" in drawn.page and ct_read:
        # The run's own overview.png follows the masks too (after a threshold change it would be stale).
        atomic_write_bytes(drawn.page["overview"], outdir / "overview.png")
    for key, data in drawn.lecture.items():
        paths[f"lecture/{key}"] = outdir / LECTURE_DIR / f"{key}.png"
        atomic_write_bytes(data, paths[f"lecture/{key}"])
    if lecture:  # a lecture folder holds this report's pictures only (no component a threshold dropped)
        for old in (outdir / LECTURE_DIR).glob("*.png"):
            if old.stem not in drawn.lecture:
                old.unlink()
    if ct_read:
        _remove_stale_pictures(pictures_dir, report.get("tumors") or {}, set(drawn.page))
    csv_path = outdir / "report.csv"
    atomic_write_text(csv_text, csv_path)
    html_path = outdir / "report.html"
    atomic_write_text(html_text, html_path)
    return paths, csv_path, html_path, run.write_report(report)


def _remove_stale_pictures(folder: Path, tumors: dict, made: set) -> None:
    """Delete tumor pictures of components that no longer exist (e.g. after a higher threshold)."""
    if not folder.is_dir():
        return
    for name in tumors:
        pattern = re.compile(re.escape(name) + r"_\d+\.png")
        for path in folder.glob(f"{name}_*.png"):
            if pattern.fullmatch(path.name) and path.stem not in made:
                path.unlink(missing_ok=True)
