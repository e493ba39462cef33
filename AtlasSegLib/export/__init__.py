"""Exporting a finished run (an AtlasSeg output folder) for clinical and research tools, and reading the results back.

The package, along its products (every public name is also importable from ``AtlasSegLib.export`` itself):

  __init__       ``export()``, the one entry point (checks the options, refuses a run whose warnings make its labels
                 meaningless, names the ROIs, calls the writer), ``FORMATS``, ``ExportResult``, default destinations
  runfolder      the run as the writers read it: ``RunFolder``, ``Structure``, ``load_run_folder``, grid tolerance
  provenance     who edited, reviewed, added or approved what (review.json and report.json's history)
  codes          class codes and their coding schemes; Slicer ``TerminologyEntry`` strings
  dicom_common   what both DICOM writers share: the reference CT series (``ReferenceSeries``), DICOM codes,
                 character set, source values made valid for their VR, the atomic save
  dicom_seg      DICOM SEG, written and read
  rtstruct       RT Structure Set (header, references, one ROI builder), written and read
  contours       mask <-> polygons: tracing with keyholes, even-odd polygon fill
  seg_nrrd       Slicer's .seg.nrrd
  abdomenatlas   AbdomenAtlas case folders, written and read

The command (``atlasseg export`` and what it prints) is ``AtlasSegLib.cli.export``.

Formats (``export(outdir, fmt, ...)``):

* ``dicom-seg``: DICOM Segmentation (highdicom), one binary segment per structure with its SNOMED category/type
  (and anatomic region for tumors), CIELab colour and the model as algorithm (AUTOMATIC); frames reference the
  source CT instances; empty frames are omitted. Explicit VR Little Endian, which every reader takes; on request
  (``compress``) Deflated (lossless, plain zlib: the only compressed transfer syntax highdicom allows for BINARY
  segmentations besides JPEG 2000, which needs an extra codec to write; dciodvfy and a number of PACS/TPS cannot
  read Deflated).
* ``rtstruct``: DICOM RT Structure Set for radiotherapy planning systems: one ROI per structure with its
  colour, CLOSED_PLANAR contours per axial slice, each referencing its CT slice. Holes are joined to their outer
  boundary by a zero-width cut (keyhole), so the mask comes back whether a reader ORs the contours of a slice or
  applies the even-odd rule; ``holes="separate"`` writes them as inner contours (even-odd readers only).
* ``seg-nrrd``: 3D Slicer's ``.seg.nrrd`` (slicerio) with names, colours, label values/layers and the
  ``TerminologyEntry`` tags Slicer uses.
* ``abdomenatlas``: an AbdomenAtlas case folder: ``ct.nii.gz``, ``segmentations/<name>.nii.gz`` (uint8 0/1),
  ``combined_labels.nii.gz`` and ``labels.json`` (label values, colours, codes).

Every structure is written, empty ones too (a segment without frames, an ROI without contours, an empty
.seg.nrrd segment): a run without any finding exports as valid objects. Codes without a standard scheme use
AtlasSeg's private scheme ``99ATLASSEG``, declared in the DICOM objects. Values copied from the source CT that
break their VR are made valid, with a logged warning.

DICOM exports need the CT as a DICOM series: the run's own input when it was a DICOM folder, or
``reference_dicom``. The series must lie on the masks' grid; differences are named in the error. An irregular
series (gantry tilt, uneven spacing, missing slices) was segmented on the regular grid ``io.read_image`` resampled
it onto; its exports still reference the acquired slices: each mask is carried onto every source slice (nearest
grid voxel to each of its pixels) and frames/contours are placed by that slice's own position.
Names: structures are exported under their model names, TG-263 names or the user's own (``names``/``name_map``,
see ``roinames``); RTSTRUCT tumor ROIs get the RT ROI Interpreted Type ``tumor_roi_type`` (default: none set).
Every file is written to a temporary name first and renamed when complete.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .. import roinames
from ..errors import InputError
from .abdomenatlas import AtlasCase, read_abdomenatlas_case, write_abdomenatlas
from .codes import (ANATOMIC_CONTEXT, PRIVATE_SCHEME, PRIVATE_SCHEME_NAME, TERMINOLOGY_CONTEXT, entry_from_terminology,
                    scheme_designator, terminology_entry)
from .contours import HOLES, fill_polygons, mask_contours
from .dicom_common import NEEDS_REFERENCE, ReferenceSeries, make_values_valid, read_reference_series, reference_for
from .dicom_seg import SEG_TYPE2_FROM_SOURCE, read_dicom_seg, write_dicom_seg
from .provenance import Provenance, added_lesions, provenance_for, review_provenance, unreviewed_candidates
from .rtstruct import (CONTOUR_DATA, DETACHED_STUDY_MANAGEMENT, RT_STRUCTURE_SET_STORAGE, read_rtstruct,
                       write_rtstruct)
from .runfolder import GRID_TOLERANCE_MM, RunFolder, Structure, grid_differences, load_run_folder
from .seg_nrrd import write_seg_nrrd

__all__ = [
    # the entry point and its options
    "FORMATS", "DEFAULT_NAMES", "BLOCKING_TOPICS", "ExportResult", "export", "default_destination", "case_name",
    "blocking_warnings",
    # runfolder
    "GRID_TOLERANCE_MM", "RunFolder", "Structure", "grid_differences", "load_run_folder",
    # provenance
    "Provenance", "added_lesions", "provenance_for", "review_provenance", "unreviewed_candidates",
    # codes
    "ANATOMIC_CONTEXT", "PRIVATE_SCHEME", "PRIVATE_SCHEME_NAME", "TERMINOLOGY_CONTEXT", "entry_from_terminology",
    "scheme_designator", "terminology_entry",
    # dicom_common, dicom_seg, rtstruct, contours
    "NEEDS_REFERENCE", "ReferenceSeries", "make_values_valid", "read_reference_series", "reference_for",
    "SEG_TYPE2_FROM_SOURCE", "read_dicom_seg", "write_dicom_seg",
    "CONTOUR_DATA", "DETACHED_STUDY_MANAGEMENT", "RT_STRUCTURE_SET_STORAGE", "read_rtstruct", "write_rtstruct",
    "HOLES", "fill_polygons", "mask_contours",
    # seg_nrrd, abdomenatlas
    "write_seg_nrrd", "AtlasCase", "read_abdomenatlas_case", "write_abdomenatlas",
]

log = logging.getLogger(__name__)

FORMATS = ("dicom-seg", "rtstruct", "seg-nrrd", "abdomenatlas")
DEFAULT_NAMES = {"dicom-seg": "segmentation.dcm", "rtstruct": "rtstruct.dcm", "seg-nrrd": "segmentation.seg.nrrd",
                 "abdomenatlas": "abdomenatlas"}


@dataclass
class ExportResult:
    """What ``export`` wrote: the file or folder, how long it took, its size and the writer's notes (counts, empty
    structures, values made valid, names, review state); ``summary()`` is the line ``atlasseg export`` prints."""

    format: str
    path: Path
    seconds: float
    bytes: int
    notes: dict

    def summary(self) -> str:
        extra = ", ".join(f"{k} {', '.join(v) if isinstance(v, list) else v}" for k, v in self.notes.items()
                          if v not in ([], None))
        return f"{self.format}: {self.path} ({self.bytes / 1e6:.2f} MB, {self.seconds:.1f} s; {extra})"


def default_destination(outdir, fmt: str, run: Optional[RunFolder] = None) -> Path:
    base = Path(outdir) / "export"
    if fmt == "abdomenatlas":
        return base / "abdomenatlas" / case_name(run) if run is not None else base / "abdomenatlas"
    return base / DEFAULT_NAMES[fmt]


def case_name(run: RunFolder) -> str:
    """A case folder name: the AbdomenAtlas case of the input (``BDMAP_x/ct.nii.gz``), else the input's name."""
    path = Path(str(run.report.get("input", {}).get("path") or run.path.name))
    if path.name.startswith("ct."):
        return path.parent.name or "case"
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.endswith(suffix):
            return name[: -len(suffix)] or "case"
    return name or "case"


def export(outdir, fmt: str, dest=None, *, reference_dicom=None, ct=None, overwrite: bool = False,
           compress: bool = False, names: str = "model", name_map=None, tumor_roi_type: str = "none",
           holes: str = "keyhole", approve: bool = False, reviewer: Optional[str] = None,
           force: bool = False) -> ExportResult:
    """Export a finished run.

    Args:
        outdir: the run's output folder (``atlasseg segment -o``).
        fmt: one of ``FORMATS``.
        dest: output file (folder for ``abdomenatlas``); default ``outdir/export/...``.
        reference_dicom: the CT's DICOM folder (or file list) for ``dicom-seg``/``rtstruct``; default: the run's
            input when it was a DICOM series.
        ct: the CT for ``abdomenatlas`` when the run's input path is gone.
        overwrite: replace an existing ``dest``.
        compress: write the DICOM SEG with the Deflated transfer syntax (lossless, smaller; not read by dciodvfy
            and a number of PACS and planning systems). Default: Explicit VR Little Endian, which every reader takes.
        names: ROI/segment names, ``model`` or ``tg263``; ``name_map``: a mapping file (JSON/CSV) or dict applied
            over them (``roinames``). Not for ``abdomenatlas`` (its files are named by the AbdomenAtlas names).
        tumor_roi_type: RTSTRUCT RT ROI Interpreted Type of tumor classes (``roinames.TUMOR_ROI_TYPES``).
        holes: RTSTRUCT form of holes (``HOLES``): ``keyhole`` (default; the mask whether a planning system ORs the
            contours of a slice or applies the even-odd rule) or ``separate`` (inner contours, even-odd readers only).
        approve: RTSTRUCT only: ApprovalStatus APPROVED by ``reviewer`` (or the reviewer review.json records).
        reviewer: the reviewer's name (DICOM PN, e.g. ``Doe^Jane``); structures a person edited are SEMIAUTOMATIC
            whether or not a name is known (``review_provenance``).
        force: export a run whose warnings say its labels are meaningless (``blocking_warnings``: a scan that is
            not an abdomen, the demo model on a real CT), which is refused otherwise.

    Raises:
        InputError: unknown format, not an output folder, no/mismatching DICOM reference, ``dest`` exists, an
            invalid ROI name mapping or an option the format does not have.
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if approve and fmt != "rtstruct":
        raise InputError(f"--approve sets an RT Structure Set's ApprovalStatus; {fmt} has no approval: export "
                         "--format rtstruct --approve --reviewer NAME")
    if holes not in HOLES:
        raise InputError(f"unknown hole form '{holes}'; choose one of {', '.join(HOLES)}")
    t0 = time.perf_counter()
    run = load_run_folder(outdir)
    blocking = blocking_warnings(run.report)
    if blocking and not force:
        raise InputError(f"the run in {run.path} has warnings that make its labels meaningless ("
                         + "; ".join(_topics(blocking)) + "): exported, its structures would reach a "
                         "viewer or planning system looking like real organs. Segment a suitable CT with a real model, "
                         "or pass --force to export anyway")
    naming = _apply_roi_names(run, fmt, names, name_map, tumor_roi_type)
    dest = Path(dest) if dest else default_destination(outdir, fmt, run)
    if dest.exists() and not overwrite:
        raise InputError(f"{dest} already exists; choose another output or pass --overwrite")
    if fmt in ("dicom-seg", "rtstruct"):
        provenance = provenance_for(run, approve=approve, reviewer=reviewer)
        ref = reference_for(run, reference_dicom)
        notes = write_dicom_seg(run, dest, ref, compress=compress, provenance=provenance) if fmt == "dicom-seg" \
            else write_rtstruct(run, dest, ref, tumor_roi_type=tumor_roi_type, holes=holes, provenance=provenance)
        notes = {**notes, "semiautomatic": sorted(provenance.edited & {st.name for st in run.structures})}
        if provenance.approved:
            notes["approved_by"] = provenance.reviewer
    elif fmt == "seg-nrrd":
        notes = write_seg_nrrd(run, dest)
    else:
        notes = write_abdomenatlas(run, dest, ct=ct, overwrite=overwrite)
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) if dest.is_dir() else dest.stat().st_size
    if naming is not None:
        notes = {**notes, **naming.notes()}
    if tumor_roi_type == "GTV":
        unreviewed = unreviewed_candidates(outdir)
        if unreviewed:
            notes = {**notes, "gtv_unreviewed": [f"{name} #{', #'.join(map(str, ids))}" for name, ids in unreviewed.items()]}
    if blocking:
        notes = {**notes, "forced_past": _topics(blocking)}
    return ExportResult(fmt, dest, time.perf_counter() - t0, size, notes)


# Run warnings (report.json "warnings", by their "topic:" prefix) after which no label can be trusted: the scan is
# not an abdomen (coverage) or the demo model met a real CT (model). An export of such a run is refused unless forced.
BLOCKING_TOPICS = ("coverage", "model")


def blocking_warnings(report: dict) -> list:
    return [w for w in report.get("warnings") or [] if w.split(":")[0].strip() in BLOCKING_TOPICS]


def _topics(warnings: list) -> list:
    return [t for t in BLOCKING_TOPICS if any(w.split(":")[0].strip() == t for w in warnings)]


def _apply_roi_names(run: RunFolder, fmt: str, names: str, name_map, tumor_roi_type: str):
    """Give ``run``'s structures their export names (``roinames``); None when they keep their model names.
    Raises InputError for invalid names and for options the format does not have."""
    if tumor_roi_type not in roinames.TUMOR_ROI_TYPES:
        raise InputError(f"unknown tumor ROI type '{tumor_roi_type}'; choose one of "
                         f"{', '.join(roinames.TUMOR_ROI_TYPES)}")
    if tumor_roi_type != "none" and fmt != "rtstruct":
        raise InputError(f"--tumor-roi-type is an RTSTRUCT setting (RT ROI Interpreted Type); {fmt} has no ROI types")
    if names == "model" and name_map is None:
        return None
    if fmt == "abdomenatlas":
        raise InputError("--names/--name-map set DICOM and Slicer segment names; an AbdomenAtlas case folder names "
                         "its files by the AbdomenAtlas structure names (liver.nii.gz), so it takes neither")
    naming = roinames.roi_names([s.name for s in run.structures], names=names, name_map=name_map)
    for structure in run.structures:
        structure.roi_name = naming.names[structure.name]
    if naming.over_16:
        log.warning("ROI names longer than TG-263's %d characters (some planning systems cut them): %s",
                    roinames.TG263_MAX, ", ".join(naming.over_16))
    return naming
