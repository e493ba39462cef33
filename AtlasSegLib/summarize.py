"""``atlasseg summarize RESULTS``: the dataset review of a batch (or a single run).

RESULTS is an ``atlasseg batch`` output root (``RESULTS/<case>/report.json`` and masks, ``batch_summary.csv``) or
one ``atlasseg segment`` output folder (a dataset of one case). Written into RESULTS:

* ``summary.csv``: one row per case and structure (tidy/long: concatenate the summaries of several datasets and
  load them with ``pandas.read_csv``), plus one row per failed case (``structure`` empty, ``status`` failed).
* ``gallery.html``: one self-contained page (``gallery.py``) with every case's frontal projection, the cases most
  likely wrong first, and accept / revise marks kept in the browser and downloaded as ``review_marks.json``.

Read from RESULTS: ``review_marks.json`` (or ``--marks FILE``), whose counts the command prints; with
``--export-accepted DIR`` the accepted cases are written together as an AbdomenAtlas dataset.

Which cases are "likely wrong" (the page states the same rule): first the number of plausibility warnings of the
run (report.json ``warnings``), then the number of organ volumes that are outliers for the dataset, then the
largest outlier score. An organ volume is an outlier when its modified z-score (Iglewicz & Hoaglin 1993:
0.6745 × (v − median) / MAD over the dataset's cases with that organ) exceeds 3.5 in absolute value; it is only
computed for organs segmented in at least ``MIN_CASES_FOR_OUTLIERS`` cases. Tumor volumes are not scored: a
dataset's tumors are expected to differ by orders of magnitude, and absence is normal.
"""
from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import io as _io
import json
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import cc3d
import numpy as np
import SimpleITK as sitk

from .batchrecord import SUMMARY
from .errors import InputError
from .gallery import write_gallery
from .io import StagingDir, atomic_write_text
from .run import Run  # the run folder's one reader

log = logging.getLogger(__name__)

SUMMARY_CSV = "summary.csv"
GALLERY_HTML = "gallery.html"
MARKS_JSON = "review_marks.json"
BATCH_SUMMARY = SUMMARY  # the batch's summary (batchrecord owns its name and format)
CACHE_JSON = ".summarize-cache.json"  # organ component counts per case, keyed by the case's files (see _stamp)
MARKS_FORMAT = "atlasseg-review-marks"
MARKS = ("accept", "revise")

Z_LIMIT = 3.5  # Iglewicz & Hoaglin's cut-off for the modified z-score
MIN_CASES_FOR_OUTLIERS = 5  # with fewer cases a median and MAD say nothing about "the dataset"

FIELDS = ("case", "structure", "kind", "volume_ml", "mean_hu", "components", "tumor_count", "largest_lesion_cm",
          "largest_lesion_ml", "volume_z", "outlier", "warnings", "case_warnings", "model", "status", "review",
          "review_note")


@dataclass
class Case:
    """One case of the results folder: its run's report, or (``status`` failed / not run) only the batch's row."""

    name: str
    folder: Path
    report: Optional[dict]
    status: str = "done"
    message: str = ""
    components: dict = field(default_factory=dict)  # structure -> 26-connected component count
    z: dict = field(default_factory=dict)  # organ -> modified z-score of its volume (outlier scoring)

    @property
    def warnings(self) -> list:
        return list((self.report or {}).get("warnings") or [])

    @property
    def outliers(self) -> list:
        return sorted(name for name, z in self.z.items() if abs(z) > Z_LIMIT)

    @property
    def labels_stamp(self) -> str:
        """Changes when the case's labels change (a re-run, a new threshold, a review edit); a mark made on other
        labels than the current ones is stale."""
        return labels_stamp(self.report) if self.report else ""

    def sort_key(self):
        failed = self.report is None
        top = max((abs(z) for z in self.z.values()), default=0.0)
        return (not failed, -len(self.warnings), -len(self.outliers), -top, self.name)


def labels_stamp(report: dict) -> str:
    """A short hash of what defines a case's labels: when the run was made, its edit history, every structure's
    voxel count and the tumor thresholds. (Not report.json's bytes: building a report page rewrites that file.)"""
    key = [report.get("created"), len(report.get("history") or []),
           [(s.get("name"), s.get("voxels")) for s in report.get("structures") or []],
           sorted((name, info.get("threshold")) for name, info in (report.get("tumors") or {}).items())]
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------------------------- reading
def find_cases(results) -> list:
    """The cases of ``results``, in name order: ``<case>/report.json`` folders plus the batch summary's failed
    cases, or ``results`` itself when it is one run's output folder.

    Raises InputError when ``results`` holds neither."""
    results = Path(results)
    if not results.is_dir():
        raise InputError(f"{results} is not a folder; 'atlasseg summarize' takes the -o folder of 'atlasseg batch' "
                         "(or of 'atlasseg segment')")
    if (results / "report.json").is_file():
        return [Case(results.resolve().name, results, _read_report(results))]
    cases = {}
    for entry in sorted(results.iterdir()):
        if entry.is_dir() and not entry.name.startswith(".") and (entry / "report.json").is_file():
            cases[entry.name] = Case(entry.name, entry, _read_report(entry))
    for row in _batch_rows(results / BATCH_SUMMARY):
        name = row.get("case") or ""
        if not name:
            continue
        if name in cases:
            if row.get("status") in ("done", "skipped"):
                cases[name].message = row.get("message", "")
            continue
        if row.get("status") in ("failed", "interrupted", "not run"):
            cases[name] = Case(name, results / name, None, status=row["status"], message=row.get("message", ""))
    if not cases:
        raise InputError(f"{results} is not an AtlasSeg results folder: it holds no <case>/report.json (nor a "
                         f"report.json, nor failed cases in {BATCH_SUMMARY}); give the -o folder of "
                         "'atlasseg batch' or 'atlasseg segment'")
    return [cases[name] for name in sorted(cases)]


def _read_report(folder: Path) -> dict:
    path = folder / "report.json"
    try:
        report = Run(folder, check=False).read_report()
    except InputError as exc:
        raise InputError(f"{exc}; re-run that case (or move its folder out of the results)") from None
    if not isinstance(report, dict) or not isinstance(report.get("structures"), list):
        raise InputError(f"{path} is not an AtlasSeg report.json (no structures list); re-run that case")
    return report


def _batch_rows(path: Path) -> list:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        log.warning("cannot read %s (%s): failed cases are not listed", path, exc)
        return []


# ------------------------------------------------------------------------------------------ components
def _stamp(folder: Path) -> str:
    """The case's report.json and mask files (name, size, mtime): any change invalidates cached counts."""
    parts = []
    for path in [folder / "report.json", *sorted((folder / "segmentations").glob("*.nii.gz"))]:
        try:
            st = path.stat()
        except OSError:
            continue
        parts.append((path.name, st.st_size, st.st_mtime_ns))
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()


def count_components(cases: list, results: Path, progress=None) -> None:
    """Each case's structures' connected-component counts (26-connected, as the post-processing counts them).

    Tumors: the run's component list. Organs: counted in the mask file, because post-processing may have been
    off and review edits may have split an organ. Reading every mask costs ~0.3 s per structure on a 512² × 300
    CT, so counts are cached in ``RESULTS/.summarize-cache.json`` per case, keyed by its files (``_stamp``)."""
    cache_path = results / CACHE_JSON
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    changed = False
    todo = [c for c in cases if c.report is not None]
    for n, case in enumerate(todo):
        if progress is not None:
            progress("summarize", n / max(len(todo), 1), f"{case.name}: components")
        tumors = case.report.get("tumors") or {}
        stamp = _stamp(case.folder)
        cached = cache.get(case.name)
        if isinstance(cached, dict) and cached.get("stamp") == stamp:
            organs = cached.get("components", {})
        else:
            organs = _organ_components(case)
            cache[case.name] = {"stamp": stamp, "components": organs}
            changed = True
        for entry in case.report["structures"]:
            name = entry["name"]
            if name in tumors:
                case.components[name] = len(tumors[name].get("components") or [])
            elif name in organs:
                case.components[name] = organs[name]
    if changed:
        try:
            atomic_write_text(json.dumps(cache), cache_path)
        except OSError as exc:  # a read-only results folder still gets its summary printed
            log.warning("cannot write %s: %s", cache_path, exc)


def _organ_components(case: Case) -> dict:
    out = {}
    tumors = case.report.get("tumors") or {}
    for entry in case.report["structures"]:
        if entry["name"] in tumors:
            continue
        path = case.folder / (entry.get("file") or f"segmentations/{entry['name']}.nii.gz")
        if not path.is_file():
            continue
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(path))) > 0
        if not mask.any():
            out[entry["name"]] = 0
            continue
        out[entry["name"]] = int(cc3d.connected_components(mask.astype(np.uint8), connectivity=26,
                                                           return_N=True)[1])
    return out


# -------------------------------------------------------------------------------------------- outliers
def modified_z_scores(values: dict) -> dict:
    """``{case: value}`` → ``{case: modified z-score}`` (Iglewicz & Hoaglin): 0.6745 (v − median) / MAD.

    When more than half the values are equal (MAD 0) the mean absolute deviation stands in (× 1.2533, its ratio
    to the standard deviation for normal data), as is usual; when every value is equal all scores are 0.
    Example: ``{a: 1000, b: 1100, c: 1050, d: 980, e: 3000}`` scores e at about 27 and the others within ±1.5."""
    if not values:
        return {}
    median = statistics.median(values.values())
    mad = statistics.median(abs(v - median) for v in values.values())
    if mad > 0:
        return {k: 0.6745 * (v - median) / mad for k, v in values.items()}
    mean_ad = sum(abs(v - median) for v in values.values()) / len(values)
    if mean_ad == 0:
        return {k: 0.0 for k in values}
    return {k: (v - median) / (1.253314 * mean_ad) for k, v in values.items()}


def score_outliers(cases: list) -> None:
    """Set each case's ``z`` (organ → modified z-score of its volume among the dataset's cases with that organ)."""
    volumes: dict = {}
    for case in cases:
        if case.report is None:
            continue
        tumors = case.report.get("tumors") or {}
        for entry in case.report["structures"]:
            if entry["name"] in tumors or entry.get("kind") == "tumor" or entry.get("volume_ml") is None:
                continue
            volumes.setdefault(entry["name"], {})[case.name] = float(entry["volume_ml"])
    by_name = {case.name: case for case in cases}
    for name, values in volumes.items():
        if len(values) < MIN_CASES_FOR_OUTLIERS:
            continue
        for case_name, z in modified_z_scores(values).items():
            by_name[case_name].z[name] = z


def sort_cases(cases: list) -> list:
    """Most likely wrong first: failed runs, then most warnings, then most outlier organs, then largest score."""
    return sorted(cases, key=Case.sort_key)


# ----------------------------------------------------------------------------------------------- marks
@dataclass
class Marks:
    """Review marks: case → {"mark": "accept" | "revise", "note": str, "at": ISO time, "labels": stamp}."""

    path: Optional[Path]
    marks: dict

    def of(self, case: Case) -> Optional[dict]:
        m = self.marks.get(case.name)
        return m if m and m.get("mark") in MARKS else None

    def status(self, case: Case) -> str:
        """accepted / revise / unreviewed / stale (marked on other labels than the case has now)."""
        m = self.of(case)
        if m is None or case.report is None:
            return "unreviewed"
        if m.get("labels") and m["labels"] != case.labels_stamp:
            return "stale"
        return "accepted" if m["mark"] == "accept" else "revise"


def read_marks(path, *, required: bool = False) -> Marks:
    """``review_marks.json`` as the gallery's *Download marks* writes it. Missing: no marks (an error when
    ``required``, i.e. named with --marks). Unreadable or not a marks file: InputError naming what is wrong."""
    path = Path(path)
    if not path.is_file():
        if required:
            raise InputError(f"marks file {path} does not exist; the gallery's 'Download marks' button saves "
                             f"{MARKS_JSON} (in your browser's download folder)")
        return Marks(None, {})
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the marks file {path}: {exc}; download it again from gallery.html") from None
    if not isinstance(data, dict) or data.get("format") != MARKS_FORMAT or not isinstance(data.get("marks"), dict):
        raise InputError(f"{path} is not a review marks file (expected {{\"format\": \"{MARKS_FORMAT}\", \"marks\": "
                         "{...}}, as gallery.html's 'Download marks' writes it)")
    marks = {}
    for case, m in data["marks"].items():
        if not isinstance(m, dict) or m.get("mark") not in (*MARKS, None):
            raise InputError(f"{path}: the mark of case {case!r} is {m!r}; expected "
                             "{\"mark\": \"accept\" or \"revise\", \"note\": ...}")
        if m.get("mark") is not None:
            marks[str(case)] = {"mark": m["mark"], "note": str(m.get("note") or ""), "at": str(m.get("at") or ""),
                                "labels": str(m.get("labels") or "")}
    return Marks(path, marks)


def marks_document(marks: dict, results: Path) -> dict:
    """The JSON the page downloads (also used by tests and for writing marks from code)."""
    return {"format": MARKS_FORMAT, "version": 1, "results": str(results),
            "saved": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "marks": marks}


# --------------------------------------------------------------------------------------------- summary
def summary_rows(cases: list, marks: Marks) -> list:
    rows = []
    for case in cases:
        review = marks.status(case)
        note = (marks.of(case) or {}).get("note", "")
        if case.report is None:
            rows.append({"case": case.name, "status": case.status, "case_warnings": case.message,
                         "review": review, "review_note": note})
            continue
        report = case.report
        tumors = report.get("tumors") or {}
        own = {f"{e['name']}: {flag}" for e in report["structures"] for flag in e.get("flags") or []}
        case_level = " | ".join(w for w in case.warnings if w not in own)
        for entry in report["structures"]:
            name = entry["name"]
            info = tumors.get(name)
            row = {"case": case.name, "structure": name, "kind": entry.get("kind") or ("tumor" if info else "organ"),
                   "volume_ml": entry.get("volume_ml"), "mean_hu": entry.get("mean_hu"),
                   "components": case.components.get(name, ""),
                   "warnings": " | ".join(entry.get("flags") or []), "case_warnings": case_level,
                   "model": (report.get("model") or {}).get("id", ""), "status": case.status, "review": review,
                   "review_note": note}
            if info is not None:
                comps = info.get("components") or []
                largest = max(comps, key=lambda c: c.get("longest_axial_diameter_mm") or 0.0, default=None)
                row.update(tumor_count=len(comps),
                           largest_lesion_cm=round(largest["longest_axial_diameter_mm"] / 10.0, 2) if largest else 0.0,
                           largest_lesion_ml=round(max(c.get("volume_ml") or 0.0 for c in comps), 3) if comps else 0.0)
            if name in case.z:
                row["volume_z"] = round(case.z[name], 2)
                row["outlier"] = int(abs(case.z[name]) > Z_LIMIT)
            rows.append(row)
    return rows


def write_summary(rows: list, path: Path) -> None:
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(FIELDS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(buf.getvalue(), path)


# ----------------------------------------------------------------------------------------------- export
def export_accepted(cases: list, marks: Marks, dest, *, results, overwrite: bool = False, progress=None) -> list:
    """Write the accepted cases (current marks only, not stale ones) as one AbdomenAtlas dataset:
    ``DEST/<case>/ct.nii.gz, segmentations/, combined_labels.nii.gz, labels.json`` (``export.write_abdomenatlas``)
    plus ``DEST/summary.csv`` (their rows) and ``DEST/review_marks.json`` (their marks). Written into a staging
    folder renamed when complete: an interrupted export leaves no half dataset. Returns the exported names."""
    # here: only with --export-accepted; the export code (DICOM writers) loads only then
    from .export import load_run_folder, write_abdomenatlas

    accepted = [c for c in cases if marks.status(c) == "accepted"]
    if not accepted:
        raise InputError("no accepted case to export: mark cases 'accept' in gallery.html, download the marks and "
                         f"save them as {MARKS_JSON} in the results folder (or pass --marks FILE)")
    staging = StagingDir(dest, overwrite=overwrite)
    with staging as stage:
        for n, case in enumerate(accepted):
            if progress is not None:
                progress("export", n / len(accepted), case.name)
            try:
                write_abdomenatlas(load_run_folder(case.folder), stage / case.name)
            except InputError as exc:
                raise InputError(f"case {case.name}: {exc}") from None
        write_summary(summary_rows(accepted, marks), stage / SUMMARY_CSV)
        atomic_write_text(json.dumps(marks_document({c.name: marks.marks[c.name] for c in accepted},
                                                    Path(results).resolve()), indent=1), stage / MARKS_JSON)
        staging.commit()
    return [c.name for c in accepted]


# -------------------------------------------------------------------------------------------------- API
@dataclass
class SummaryResult:
    cases: list  # sorted, most likely wrong first
    marks: Marks
    summary_path: Path
    gallery_path: Path
    counts: dict
    gallery_bytes: int = 0
    seconds: float = 0.0
    unknown_marks: list = field(default_factory=list)  # marked case names not in the results
    exported: list = field(default_factory=list)


def summarize(results, *, marks=None, export_to=None, overwrite: bool = False, reports: bool = False,
              progress=None) -> SummaryResult:
    """Write ``summary.csv`` and ``gallery.html`` into ``results`` and count the review marks.

    Args:
        results: an ``atlasseg batch`` output root, or one ``atlasseg segment`` output folder.
        marks: the marks file; default ``results/review_marks.json`` (no marks when it is missing).
        export_to: write the accepted cases there as an AbdomenAtlas dataset (``export_accepted``).
        overwrite: replace an existing ``export_to``.
        reports: build the missing ``report.html`` of each case (``report.build_report``) so every gallery link
            opens a report; otherwise a case without one links to its report.json.
    """

    t0 = time.perf_counter()
    results = Path(results).resolve()
    cases = find_cases(results)
    marks_obj = read_marks(marks if marks else results / MARKS_JSON, required=marks is not None)
    if export_to is not None and Path(export_to).exists() and not overwrite:
        raise InputError(f"{export_to} already exists; choose another folder or pass --overwrite")
    single = len(cases) == 1 and cases[0].folder == results
    if reports:
        # here: only with --reports; the report's picture code loads only then
        from .report import build_report

        for n, case in enumerate(cases):
            if case.report is not None and not (case.folder / "report.html").is_file():
                if progress is not None:
                    progress("reports", n / len(cases), case.name)
                build_report(case.folder)
                case.report = _read_report(case.folder)
    count_components(cases, results, progress)
    score_outliers(cases)
    cases = sort_cases(cases)
    write_summary(summary_rows(cases, marks_obj), results / SUMMARY_CSV)
    gallery_path = results / GALLERY_HTML
    size = write_gallery(cases, marks_obj, results, gallery_path, document=marks_document({}, results.resolve()),
                         marks_name=MARKS_JSON, z_limit=Z_LIMIT, min_cases=MIN_CASES_FOR_OUTLIERS, single=single,
                         progress=progress)
    statuses = [marks_obj.status(c) for c in cases]
    counts = {"cases": len(cases), "failed": sum(c.report is None for c in cases),
              "accepted": statuses.count("accepted"), "revise": statuses.count("revise"),
              "stale": statuses.count("stale"),
              "unreviewed": sum(s == "unreviewed" and c.report is not None for s, c in zip(statuses, cases)),
              "warnings": sum(len(c.warnings) for c in cases),
              "cases_with_warnings": sum(bool(c.warnings) for c in cases),
              "outliers": sum(len(c.outliers) for c in cases),
              "cases_with_outliers": sum(bool(c.outliers) for c in cases)}
    known = {c.name for c in cases}
    result = SummaryResult(cases, marks_obj, results / SUMMARY_CSV, gallery_path, counts, size,
                           unknown_marks=sorted(set(marks_obj.marks) - known))
    if export_to is not None:
        result.exported = export_accepted(cases, marks_obj, export_to, results=results, overwrite=overwrite,
                                          progress=progress)
    result.seconds = time.perf_counter() - t0
    return result
