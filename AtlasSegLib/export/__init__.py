"""Exporting a finished run (an AtlasSeg output folder) for clinical and research tools, and reading the results back.

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

Every structure is written, empty ones too (a segment without frames, an ROI without contours, an empty
.seg.nrrd segment): a run without any finding exports as valid objects. Codes without a standard scheme use
AtlasSeg's private scheme ``99ATLASSEG``, declared in the DICOM objects. Values copied from the source CT that
break their VR are made valid, with a logged warning.
* ``seg-nrrd``: 3D Slicer's ``.seg.nrrd`` (slicerio) with names, colours, label values/layers and the
  ``TerminologyEntry`` tags Slicer uses.
* ``abdomenatlas``: an AbdomenAtlas case folder: ``ct.nii.gz``, ``segmentations/<name>.nii.gz`` (uint8 0/1),
  ``combined_labels.nii.gz`` and ``labels.json`` (label values, colours, codes).

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

import datetime as _dt
import inspect
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from .. import __version__
from .. import roinames
from ..card import complete_class
from ..errors import InputError
from ..geometry import Grid
from ..io import SliceStack, StagingDir, _default_mode, slice_stack
from ..outputs import _packed_box, _paint_order, hidden_warning, paint_labels
from .codes import (ANATOMIC_CONTEXT, PRIVATE_SCHEME, PRIVATE_SCHEME_NAME, TERMINOLOGY_CONTEXT,
                    entry_from_terminology, scheme_designator, slicer_terminology as _slicer_terminology,
                    terminology_entry)
from .contours import HOLES, fill_polygons, mask_contours
from .runfolder import GRID_TOLERANCE_MM, RunFolder, Structure, grid_differences, load_run_folder

log = logging.getLogger(__name__)

FORMATS = ("dicom-seg", "rtstruct", "seg-nrrd", "abdomenatlas")
DEFAULT_NAMES = {"dicom-seg": "segmentation.dcm", "rtstruct": "rtstruct.dcm", "seg-nrrd": "segmentation.seg.nrrd",
                 "abdomenatlas": "abdomenatlas"}
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
DETACHED_STUDY_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"
NEEDS_REFERENCE = ("DICOM SEG/RTSTRUCT export needs the CT as a DICOM series: pass --reference-dicom DIR "
                   "(the folder holding the CT's .dcm files, on the same grid as the segmentation)")


# ------------------------------------------------------------------------------------------- the run


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


# --------------------------------------------------------------------------------- DICOM reference
@dataclass
class ReferenceSeries:
    """The CT series a DICOM export refers to: headers only (no pixel data is decoded), sorted along the slice
    normal. ``grid`` is the grid a run on this series has its masks on: the series' own (regular series) or the
    regular grid ``io.read_image`` resamples an irregular one onto (``regularized``); ``stack`` has each slice's
    own position."""

    folder: str
    datasets: list = field(repr=False)
    grid: Grid = None
    stack: Optional[SliceStack] = field(default=None, repr=False)

    def first(self, keyword: str, default=None):
        return self.datasets[0].get(keyword, default)

    @property
    def sop_instance_uids(self) -> list:
        return [str(ds.SOPInstanceUID) for ds in self.datasets]

    @property
    def regularized(self) -> bool:
        return self.stack is not None and not self.stack.is_regular

    @property
    def slice_shape(self) -> tuple:
        """(slices, rows, columns) of the source series."""
        return (len(self.datasets), int(self.datasets[0].Rows), int(self.datasets[0].Columns))

    def on_slices(self, mask_kji: np.ndarray) -> np.ndarray:
        """A (k, j, i) mask on ``grid`` as masks on the source slices (slices, rows, columns): unchanged for a
        regular series; for a regularized one, each source pixel takes the grid voxel nearest to its own position
        (the grid's planes are parallel to the slices and share their pixel spacing, so this is a whole-pixel
        shift per slice)."""
        if not self.regularized:
            return mask_kji
        out = np.zeros(self.slice_shape, mask_kji.dtype)
        rows, cols = self.slice_shape[1:]
        size = self.grid.size
        for k, position in enumerate(self.stack.positions):
            i0, j0, z = (int(v) for v in np.rint(self.grid.physical_to_index(position)))
            if not 0 <= z < size[2]:
                continue
            ia, ib = max(0, i0), min(size[0], i0 + cols)
            ja, jb = max(0, j0), min(size[1], j0 + rows)
            if ia < ib and ja < jb:
                out[k, ja - j0:jb - j0, ia - i0:ib - i0] = mask_kji[z, ja:jb, ia:ib]
        return out

    def slice_to_physical(self, k: int, ij: np.ndarray) -> np.ndarray:
        """LPS positions of continuous pixel coordinates (n, 2) = (column i, row j) on source slice ``k``."""
        dx, dy = self.stack.pixel_spacing
        ij = np.asarray(ij, float)
        return (self.stack.positions[k] + np.outer(ij[:, 0] * dx, self.stack.row)
                + np.outer(ij[:, 1] * dy, self.stack.col))

    def physical_to_slice(self, points: np.ndarray, *, what: str):
        """(k, (n, 2) pixel coordinates on source slice k) of planar points lying on a source slice.

        Raises InputError (naming ``what``) when they lie between slices (more than a quarter step off)."""
        stack = self.stack
        points = np.asarray(points, float).reshape(-1, 3)
        heights = (points - stack.positions[0]) @ stack.normal
        h = float(np.median(heights))
        k = int(np.argmin(np.abs(stack.heights - h)))
        quarter = 0.25 * float(np.median(stack.gaps))
        if abs(stack.heights[k] - h) > quarter or np.ptp(heights) > quarter:
            raise InputError(f"{what} lies between slices of the DICOM series ({h:.2f} mm along the slice normal, "
                             f"nearest slice at {stack.heights[k]:.2f} mm); it belongs to another series")
        relative = points - stack.positions[k]
        dx, dy = stack.pixel_spacing
        return k, np.column_stack([relative @ stack.row / dx, relative @ stack.col / dy])


def read_reference_series(source, *, series_uid: Optional[str] = None) -> ReferenceSeries:
    """The DICOM CT series in ``source`` (a folder or a list of files) as a ``ReferenceSeries``.

    Raises InputError when no series is found, it has too few slices, irregular spacing, or lacks the UIDs a
    DICOM object needs to reference it (anonymised series sometimes drop them)."""
    import pydicom

    if isinstance(source, (list, tuple)):
        files = [str(f) for f in source]
        folder = str(Path(files[0]).parent) if files else ""
    else:
        from ..io import _dicom_series

        folder = str(Path(source).parent if Path(source).is_file() else source)  # a slice file names its folder
        if not Path(folder).is_dir():
            raise InputError(f"reference DICOM folder {folder} does not exist; {NEEDS_REFERENCE}")
        series = _dicom_series(Path(folder))
        if not series:
            raise InputError(f"no DICOM image series found in {folder}; {NEEDS_REFERENCE}")
        if series_uid and series_uid in series:
            files = list(series[series_uid][1])
        else:
            files = list(max(series.values(), key=lambda v: len(v[1]))[1])
    datasets = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001 - pydicom raises several types for non-DICOM files
            raise InputError(f"cannot read {f} as DICOM: {exc}") from None
        if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
            datasets.append(ds)
    if len(datasets) < 2:
        raise InputError(f"{folder} holds no 3D DICOM image series (fewer than 2 slices with positions); "
                         f"{NEEDS_REFERENCE}")
    if not str(datasets[0].get("PixelSpacing", "") or "").strip():
        raise InputError(f"the DICOM series in {folder} has no PixelSpacing (a Type 1 attribute): its slices cannot be "
                         f"placed in millimetres, so nothing can reference them. {NEEDS_REFERENCE}")
    spacing_rc = [float(v) for v in datasets[0].PixelSpacing]
    # The same analysis io.read_image makes: duplicates and mixed orientations are refused, tilt/uneven spacing
    # give the regularized grid the run was made on.
    stack = slice_stack([[float(v) for v in ds.ImagePositionPatient] for ds in datasets],
                        [[float(v) for v in ds.ImageOrientationPatient] for ds in datasets],
                        (spacing_rc[1], spacing_rc[0]), (int(datasets[0].Columns), int(datasets[0].Rows)),
                        f"the DICOM series in {folder}")
    datasets = [datasets[k] for k in stack.order]
    if not stack.is_regular and stack.refusal():
        raise InputError(f"the DICOM series in {folder} cannot be placed on a regular grid: {stack.refusal()}")
    orientation = np.asarray(datasets[0].ImageOrientationPatient, float)
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    steps = np.diff(stack.heights)
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")
               if not str(datasets[0].get(k, "") or "").strip()]
    missing += [k for k in ("SOPInstanceUID", "SOPClassUID")
                if any(not str(ds.get(k, "") or "").strip() for ds in datasets)]
    if missing:
        raise InputError(f"the DICOM series in {folder} has no {', '.join(missing)} (anonymised without UIDs?); a "
                         "DICOM SEG/RTSTRUCT references the CT by these UIDs, so a viewer or planning system could not "
                         "match it. Use the original series (or one with consistent UIDs) as --reference-dicom")
    if stack.is_regular:
        direction = np.column_stack([row, col, normal])
        grid = Grid((int(datasets[0].Columns), int(datasets[0].Rows), len(datasets)),
                    (spacing_rc[1], spacing_rc[0], float(np.median(steps))),
                    tuple(float(v) for v in datasets[0].ImagePositionPatient),
                    tuple(float(v) for v in direction.reshape(-1)))
    else:
        grid = stack.regular_grid()
    return ReferenceSeries(folder=folder, datasets=datasets, grid=grid, stack=stack)


def reference_for(run: RunFolder, reference_dicom=None) -> ReferenceSeries:
    """The reference series of a run: ``reference_dicom`` or the run's DICOM input, checked against the masks' grid."""
    source_info = run.report.get("input", {})
    if reference_dicom is None:
        if source_info.get("format") != "dicom" or not source_info.get("path"):
            raise InputError(f"the run in {run.path} was made from a {source_info.get('format') or 'non-DICOM'} "
                             f"file, not a DICOM series. {NEEDS_REFERENCE}")
        if not Path(source_info["path"]).is_dir():
            raise InputError(f"the run's DICOM input {source_info['path']} is no longer there; {NEEDS_REFERENCE}")
        reference_dicom = source_info["path"]
    ref = read_reference_series(reference_dicom, series_uid=source_info.get("series_uid"))
    problems = grid_differences(run.grid, ref.grid)
    if problems and ref.regularized and not source_info.get("regularized"):
        raise InputError(f"the DICOM series in {ref.folder} is irregular ({ref.stack.describe()}) and the run in "
                         f"{run.path} was not made on the regular grid this version resamples it onto (segmentation "
                         f"vs that grid: {'; '.join(problems)}): its masks may lie millimetres off the acquired slices. "
                         "Segment the series again, then export")
    if problems:
        raise InputError(f"the DICOM series in {ref.folder} does not lie on the segmentation's grid "
                         f"(segmentation vs series: {'; '.join(problems)}); pass the series the run was made from "
                         "as --reference-dicom")
    return ref


# ---------------------------------------------------------------------------------------- codes
def _code(entry: Optional[dict]):
    from pydicom.sr.coding import Code

    if not entry or not entry.get("code"):
        return None
    return Code(str(entry["code"]), scheme_designator(entry.get("scheme")), str(entry.get("meaning") or entry["code"]))


def _coding_schemes(entries) -> "object":
    """The Coding Scheme Identification Sequence (SOP Common) declaring the private schemes ``entries`` use."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    used = sorted({scheme_designator((e.get(k) or {}).get("scheme")) for e in entries
                   for k in ("category", "type", "type_modifier", "region") if e.get(k)})
    items = []
    for designator in used:
        if not designator.startswith("99"):
            continue
        item = Dataset()
        item.CodingSchemeDesignator = designator
        item.CodingSchemeName = (PRIVATE_SCHEME_NAME if designator == PRIVATE_SCHEME
                                 else f"local codes ({designator[2:]})")[:64]
        if designator == PRIVATE_SCHEME:
            item.CodingSchemeResponsibleOrganization = "AtlasSeg"
        items.append(item)
    return Sequence(items)


# ------------------------------------------------------------------------------------------ DICOM SEG
# ------------------------------------------------------------------------------------------- who reviewed
@dataclass(frozen=True)
class Provenance:
    """Who made each structure, as DICOM says it: ``edited`` structures (a person removed, added, resized or
    re-thresholded something) are SEMIAUTOMATIC, the others AUTOMATIC; ``approved``: an RTSTRUCT says APPROVED by
    ``reviewer`` at ``approved_at`` (else UNAPPROVED)."""
    edited: frozenset = frozenset()
    reviewer: Optional[str] = None
    reviewed_at: Optional[str] = None  # ISO 8601, from review.json
    approved: bool = False
    approved_at: Optional[_dt.datetime] = None
    added: tuple = ()  # ((structure, lesion id, origin), ...): lesions a reviewer added by a click

    def algorithm_type(self, name: str) -> str:
        return "SEMIAUTOMATIC" if name in self.edited else "AUTOMATIC"

    def description(self, name: str) -> Optional[str]:
        """A structure's words on what a person added to it (SEG Segment Description, RTSTRUCT ROI Description),
        e.g. "lesion #18 added by a reviewer (added: image)"; None when nothing was added."""
        added = [(rid, origin) for structure, rid, origin in self.added if structure == name]
        if not added:
            return None
        lesions = ", ".join(f"#{rid} ({origin})" for rid, origin in added)
        return f"lesion{'s' if len(added) > 1 else ''} {lesions} added by a reviewer"


def review_provenance(outdir, report: Optional[dict] = None) -> tuple:
    """``(edited structure names, reviewer, reviewed_at)`` of a run, from its review state (review.json, read by
    ``review.load_review``) and its edit history (report.json ``history``): the one place exports learn who
    touched what. Edited: a tumor with a removed candidate, an added lesion (``origin`` "added: ..."), a lesion's
    own threshold or a threshold a person set; any structure a review or threshold edit changed. Reviewer and
    time: the review state's ``reviewer`` / ``reviewed_at`` when it records them, else None."""
    from ..review import load_review

    from ..run import Run

    outdir = Path(outdir)
    if report is None:
        folder = Run(outdir, check=False)  # the run folder's owner reads report.json
        report = folder.read_report() if folder.report_path.is_file() else {}
    state = load_review(outdir)
    edited = set()
    for tumor, entry in (state.tumors or {}).items():
        decisions = entry.get("decisions") or []
        if entry.get("threshold") is not None or entry.get("lesion_thresholds") or any(
                d.get("status") == "removed" or str(d.get("origin") or "").startswith("added")
                or d.get("threshold") is not None for d in decisions):
            edited.add(tumor)
    for h in report.get("history") or ():
        if h.get("action") == "review" and h.get("structure") and (h.get("changed_voxels") or h.get("removed")):
            edited.add(h["structure"])
        elif h.get("action") == "threshold":
            edited.update(h.get("values") or {})
    reviewer = getattr(state, "reviewer", None) or None
    reviewed_at = getattr(state, "reviewed_at", None) or None
    return frozenset(edited), reviewer, reviewed_at


def provenance_for(run: RunFolder, *, approve: bool = False, reviewer: Optional[str] = None) -> Provenance:
    """The ``Provenance`` of an export: ``review_provenance`` of the run, ``reviewer`` (``--reviewer``) over the
    review state's. ``approve`` needs a reviewer's name (InputError without one)."""
    edited, recorded, reviewed_at = review_provenance(run.path, run.report)
    name = (reviewer or "").strip() or recorded
    if approve and not name:
        raise InputError("--approve records who approved the structures: give --reviewer NAME (e.g. "
                         "--reviewer 'Doe^Jane'), or review the run with a reviewer recorded")
    return Provenance(edited=edited, reviewer=name, reviewed_at=reviewed_at, approved=bool(approve),
                      approved_at=_dt.datetime.now() if approve else None, added=added_lesions(run.path))


def added_lesions(outdir) -> tuple:
    """``((structure, lesion id, origin), ...)`` of the lesions a reviewer added (review.json decisions with an
    "added: ..." origin, not removed since), in id order per structure."""
    from ..review import load_review

    state = load_review(outdir)
    out = []
    for tumor, entry in sorted((state.tumors or {}).items()):
        latest = {}
        for d in entry.get("decisions") or ():
            if d.get("id") is not None:
                latest[int(d["id"])] = d
        out += [(tumor, rid, str(d["origin"])) for rid, d in sorted(latest.items())
                if str(d.get("origin") or "").startswith("added") and d.get("status") != "removed"]
    return tuple(out)


def write_dicom_seg(run: RunFolder, dest, ref: ReferenceSeries, *, compress: bool = False,
                    provenance: Optional[Provenance] = None) -> dict:
    """Write every structure of ``run`` as a segment of one DICOM SEG referencing ``ref``. Returns notes.

    An empty structure is a segment without frames (the model looked and found nothing); when every structure is
    empty the SEG holds one empty frame per segment on the first slice (a SEG needs at least one frame).
    Explicit VR Little Endian unless ``compress`` (Deflated Explicit VR Little Endian: lossless, smaller, but
    dciodvfy and a number of PACS and planning systems cannot read it). ``provenance``: structures a person edited
    are SEMIAUTOMATIC segments, and the reviewer (if known) is the Content Creator."""
    provenance = provenance or Provenance()
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    algorithm = hd.AlgorithmIdentificationSequence(name=run.model["id"][:64], version=run.model["version"][:64],
                                                   family=codes.cid7162.ArtificialIntelligence, source="AtlasSeg")
    # Segment-major memory (one contiguous block per segment, handed to highdicom as a (slices, rows, columns,
    # segments) view): highdicom reads one segment at a time, and filling it needs no strided copy.
    shape = ref.slice_shape  # frames are made on the source slices, whatever grid the masks are on
    pixels = np.zeros((len(run.structures),) + shape, bool)
    descriptions, empty, used = [], [], np.zeros(shape[0], bool)
    for structure in run.structures:
        mask = ref.on_slices(run.mask(structure))
        if not mask.any():
            empty.append(structure.name)
        entry = structure.entry
        number = len(descriptions) + 1
        description = hd.seg.SegmentDescription(
            segment_number=number, segment_label=structure.display_name[:64],
            segmented_property_category=_code(entry["category"]), segmented_property_type=_code(entry["type"]),
            algorithm_type=getattr(hd.seg.SegmentAlgorithmTypeValues, provenance.algorithm_type(structure.name)),
            algorithm_identification=algorithm,
            tracking_uid=hd.UID(), tracking_id=structure.name[:64],
            anatomic_regions=[_code(entry["region"])] if entry.get("region") else None,
            display_color=hd.color.CIELabColor.from_rgb(*structure.color))
        if provenance.description(structure.name):
            description.SegmentDescription = provenance.description(structure.name)[:64]  # LO
        modifier = _code(entry.get("type_modifier"))
        if modifier is not None:
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                hd.sr.CodedConcept(modifier.value, modifier.scheme_designator, modifier.meaning)]
        descriptions.append(description)
        np.not_equal(mask, 0, out=pixels[number - 1])
        used |= pixels[number - 1].reshape(shape[0], -1).any(axis=1)
        del mask
    if not descriptions:
        raise InputError(f"the run in {run.path} has no structures; a DICOM SEG needs at least one segment")
    # Only the slices some structure touches are handed over (their frames would be omitted as empty anyway);
    # highdicom matches each plane to its source slice by position. Nothing anywhere: the first slice.
    first, last = np.flatnonzero(used)[[0, -1]] if used.any() else (0, 0)
    pixels = np.moveaxis(pixels[:len(descriptions), first:last + 1], 0, -1)
    positions = [hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT,
                                          [float(v) for v in ref.datasets[k].ImagePositionPatient])
                 for k in range(first, last + 1)]
    # An empty (0008,0005) in the CT means the default repertoire; highdicom refuses the empty string itself.
    # highdicom < 0.28 (Slicer 5.12 ships 0.27) has no specific_character_set argument: set the element after.
    charset = _character_set(ref.datasets[0])
    charset_argument = ({"specific_character_set": charset}
                        if "specific_character_set" in inspect.signature(hd.SOPClass.__init__).parameters else {})
    sources, filled = _source_with_type2(ref)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, plane_positions=positions,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=9901,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="AtlasSeg",
        manufacturer_model_name=run.model["id"][:64], software_versions=f"atlasseg {__version__}",
        device_serial_number="0", content_label="ATLASSEG",
        content_description=f"{run.model['title'] or run.model['id']} (automatic)"[:64],
        series_description=f"AtlasSeg {run.model['id']}"[:64], omit_empty_frames=True, **charset_argument)
    if charset is not None and not charset_argument:
        seg.SpecificCharacterSet = charset
    del pixels
    seg.ContentCreatorName = ""  # Type 2: automatic, no person created the content
    if provenance.reviewer and (provenance.edited or provenance.approved):
        seg.ContentCreatorName = provenance.reviewer  # a person edited (semi-automatic) content
    schemes = _coding_schemes([s.entry for s in run.structures])
    if len(schemes):
        seg.CodingSchemeIdentificationSequence = schemes
    changed = make_values_valid(seg, f"DICOM SEG {dest}")
    if compress:
        seg.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    _atomic_dicom(seg, dest)
    return {"segments": len(descriptions), "frames": int(seg.NumberOfFrames), "empty": empty,
            "transfer_syntax": str(seg.file_meta.TransferSyntaxUID.name), "values_made_valid": changed,
            "source_attributes_missing": filled}


# Attributes highdicom reads from the first source image as ``ds.Keyword`` (Patient and General Study modules,
# Type 2 in a CT and in the SEG): a de-identified series often lacks them (PS3.15 Annex E removes the birth date,
# sex, accession number, study id...). Written empty, as the standard allows and RTSTRUCT already does.
SEG_TYPE2_FROM_SOURCE = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                         "StudyDate", "StudyTime", "ReferringPhysicianName")


def _source_with_type2(ref: ReferenceSeries):
    """``ref.datasets`` for highdicom, the first (the one it copies the patient and study from) completed with the
    Type 2 attributes it lacks (empty) and a slice thickness when it has none (the spacing of the slices the
    frames lie on; the SEG's Pixel Measures need one). Returns (datasets, names of the attributes filled in)."""
    import copy

    first = ref.datasets[0]
    missing = [k for k in SEG_TYPE2_FROM_SOURCE if k not in first]
    thickness = first.get("SliceThickness", None)
    no_thickness = thickness is None or str(thickness).strip() == ""
    if not missing and not no_thickness:
        return ref.datasets, []
    first = copy.deepcopy(first)  # the series' own header stays as read
    for keyword in missing:
        setattr(first, keyword, "")
    if no_thickness:
        first.SliceThickness = f"{float(ref.grid.spacing[2]):.6g}"
        missing.append("SliceThickness")
    log.info("the DICOM series in %s lacks %s; written empty (slice thickness: the slice spacing)", ref.folder,
             ", ".join(missing))
    return [first] + list(ref.datasets[1:]), missing


def _character_set(ds):
    """The CT's Specific Character Set, or None where it is absent or empty (the default repertoire)."""
    value = ds.get("SpecificCharacterSet")
    values = [str(v) for v in ([value] if isinstance(value, str) else (value or [])) if str(v).strip()]
    return None if not values else (values[0] if len(values) == 1 else values)


# Maximum length in characters of the text VRs (PS3.5 table 6.2-1; PN per component group).
_VR_MAX = {"AE": 16, "CS": 16, "DA": 8, "DS": 16, "IS": 12, "LO": 64, "PN": 64, "SH": 16, "TM": 14, "LT": 10240,
           "ST": 1024}


def _valid_value(vr: str, value: str) -> str:
    """``value`` made valid for ``vr``: control characters dropped (ESC kept for ISO 2022 character sets; line
    breaks kept in LT/ST), a backslash (the value separator) replaced in single texts, CS upper case with other
    characters as "_", DA/TM/DS/IS reduced to their valid form (empty when nothing valid is left), then cut to
    the VR's maximum length."""
    import re

    from pydicom.valuerep import VALIDATORS

    if vr in ("DA", "TM", "DS", "IS") and VALIDATORS[vr](vr, value)[0]:
        return value
    keep = "\x1b\n\r\t\f" if vr in ("LT", "ST") else "\x1b"
    value = "".join(c for c in value if c >= " " or c in keep)
    if vr in ("LT", "ST"):
        value = value.replace("\\", "/")
    if vr == "CS":
        value = re.sub(r"[^A-Z0-9 _]", "_", value.upper())
    elif vr == "AE":
        value = re.sub(r"[^\x20-\x7e]", "", value)
    elif vr == "DA":
        value = re.sub(r"[^0-9]", "", value)
        value = value[:8] if len(value) >= 8 else ""
    elif vr == "TM":
        match = re.match(r"\s*(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)", value)
        value = match.group(1) if match else ""
    elif vr in ("DS", "IS"):
        from pydicom.valuerep import format_number_as_ds

        try:
            value = format_number_as_ds(float(value)) if vr == "DS" else str(int(round(float(value))))
        except (TypeError, ValueError, OverflowError):
            value = ""
    limit = _VR_MAX[vr]
    if vr == "PN":
        return "=".join(group[:limit] for group in value.split("=")[:3])
    return value[:limit].rstrip() if len(value) > limit else value


def make_values_valid(ds, what: str) -> list:
    """Make the text values of ``ds``'s top-level elements valid for their VR (the patient/study values copied
    from the source CT are written as they came; a 17-character Study ID in SH, say, would make the object
    invalid). Each change is logged as a warning. Returns ``["Keyword: 'old' -> 'new'"]``."""
    from pydicom.multival import MultiValue

    changes = []
    for element in ds:
        if element.VR not in _VR_MAX or element.value is None or element.VR == "UI":
            continue
        values = list(element.value) if isinstance(element.value, (list, MultiValue)) else [element.value]
        texts = [str(v) for v in values]
        if element.VR in ("LT", "ST"):
            fixed = [_valid_value(element.VR, "\\".join(texts))] if texts else []
        else:
            fixed = [_valid_value(element.VR, t.replace("\\", "/")) for t in texts]
        if fixed != texts:
            name = element.keyword or str(element.tag)
            old = "\\".join(texts)
            new = "\\".join(fixed)
            element.value = fixed if len(fixed) > 1 else (fixed[0] if fixed else "")
            changes.append(f"{name}: {old!r} -> {new!r}")
            log.warning("%s: %s %r from the source is not a valid %s (%s); written as %r", what, name, old,
                        element.VR, _vr_rule(element.VR), new)
    return changes


def _vr_rule(vr: str) -> str:
    return {"CS": "upper case letters, digits, space, _; at most 16", "DA": "YYYYMMDD", "TM": "HHMMSS.FFFFFF",
            "PN": "at most 64 characters per component group"}.get(vr, f"at most {_VR_MAX[vr]} characters, no "
                                                                        "control characters")


def _atomic_dicom(ds, dest) -> None:
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".dcm", dir=dest.parent)
    os.close(fd)
    try:
        ds.save_as(tmp, enforce_file_format=True)
        os.chmod(tmp, _default_mode())  # mkstemp makes 0600: as readable as the run's other files
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_dicom_seg(path, ref: ReferenceSeries) -> list:
    """The segments of a DICOM SEG on ``ref``'s grid: ``[{"number", "name", "category", "type", "type_modifier",
    "region", "color", "mask"}]`` (codes as ``{"scheme", "code", "meaning"}``, colour RGB 0-255, mask uint8 k, j, i).

    Frames are placed by their plane positions (not by the source instances they name: some writers do not say
    whether spatial locations were preserved); a frame off the grid's slices is refused with its position."""
    import highdicom as hd

    try:
        seg = hd.seg.segread(str(path))
    except Exception as exc:  # noqa: BLE001 - pydicom/highdicom raise several types for bad files
        raise InputError(f"cannot read {path} as a DICOM SEG: {exc}") from None
    numbers = [int(n) for n in seg.get_segment_numbers()]
    masks = _place_seg_frames(seg, ref, numbers, path)
    out = []
    for index, number in enumerate(numbers):
        desc = seg.get_segment_description(number)
        item = {"number": int(number), "name": str(desc.segment_label),
                "category": _code_dict(desc.segmented_property_category),
                "type": _code_dict(desc.segmented_property_type),
                "mask": masks[number]}
        sequence = desc.SegmentedPropertyTypeCodeSequence[0]
        if "SegmentedPropertyTypeModifierCodeSequence" in sequence:
            item["type_modifier"] = _code_dict(sequence.SegmentedPropertyTypeModifierCodeSequence[0])
        regions = list(desc.anatomic_regions or [])
        if regions:
            item["region"] = _code_dict(regions[0])
        if "RecommendedDisplayCIELabValue" in desc:
            item["color"] = tuple(int(v) for v in hd.color.CIELabColor.from_dicom_value(
                desc.RecommendedDisplayCIELabValue).to_rgb())
        out.append(item)
    return out


def _place_seg_frames(seg, ref: ReferenceSeries, numbers: list, path) -> dict:
    """Segment number -> uint8 (k, j, i) mask from a SEG's frames, placed on ``ref``'s source slices by position
    (for a regular series these are its grid's slices)."""
    grid = ref.grid
    slices, rows, cols = ref.slice_shape
    stack = ref.stack
    if (int(seg.Rows), int(seg.Columns)) != (rows, cols):
        raise InputError(f"{path} has {seg.Rows}x{seg.Columns} frames, the DICOM series {rows}x{cols}; "
                         "the SEG was made on another series")
    shared = seg.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in seg else None
    frames = seg.pixel_array
    if frames.ndim == 2:
        frames = frames[np.newaxis]
    masks = {n: np.zeros((slices, rows, cols), np.uint8) for n in numbers}
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        def group(name):
            if name in item:
                return item[name].value[0]
            return shared[name].value[0] if shared is not None and name in shared else None
        number = int(group("SegmentIdentificationSequence").ReferencedSegmentNumber)
        orientation = group("PlaneOrientationSequence")
        measures = group("PixelMeasuresSequence")
        if orientation is not None and not np.allclose(
                np.asarray(orientation.ImageOrientationPatient, float),
                np.asarray(grid.direction).reshape(3, 3)[:, :2].T.reshape(-1), atol=1e-3):
            raise InputError(f"{path}: frame {index + 1} is not oriented as the DICOM series")
        if measures is not None and not np.allclose([float(v) for v in measures.PixelSpacing],
                                                    [stack.pixel_spacing[1], stack.pixel_spacing[0]],
                                                    atol=GRID_TOLERANCE_MM):
            raise InputError(f"{path}: frame {index + 1} has pixel spacing {list(measures.PixelSpacing)}, the series "
                             f"{[stack.pixel_spacing[1], stack.pixel_spacing[0]]}")
        position = np.asarray(group("PlanePositionSequence").ImagePositionPatient, float)
        # Along the normal, 1 % of a step (as the grid check allows); in-plane, the export's tolerance.
        k = int(np.argmin(np.abs((position - stack.positions[0]) @ stack.normal - stack.heights)))
        offset = position - stack.positions[k]
        along = float(offset @ stack.normal)
        if abs(along) > max(GRID_TOLERANCE_MM, 0.01 * float(np.median(stack.gaps))) or \
                np.linalg.norm(offset - along * stack.normal) > GRID_TOLERANCE_MM:
            raise InputError(f"{path}: frame {index + 1} at {_fmt(position)} mm is not on a slice of the DICOM series")
        if number in masks:
            masks[number][k] |= (frames[index] != 0).astype(np.uint8)
    return masks


def _code_dict(code) -> dict:
    if hasattr(code, "scheme_designator"):  # highdicom CodedConcept
        return {"scheme": str(code.scheme_designator), "code": str(code.value), "meaning": str(code.meaning)}
    return {"scheme": str(code.CodingSchemeDesignator), "code": str(code.CodeValue), "meaning": str(code.CodeMeaning)}


# -------------------------------------------------------------------------------------------- RTSTRUCT


def write_rtstruct(run: RunFolder, dest, ref: ReferenceSeries, *, tumor_roi_type: str = "none",
                   holes: str = "keyhole", provenance: Optional[Provenance] = None) -> dict:
    """Write every structure of ``run`` as an ROI of an RT Structure Set referencing ``ref``. Returns notes.

    An empty structure is an ROI without contours (the Contour Sequence is optional), so a run without any finding
    is a valid structure set too. ``holes``: how a slice's holes are written (``mask_contours``): ``keyhole`` (one
    polygon per part, holes joined by a zero-width cut: the mask whether the reader ORs contours or applies the
    even-odd rule) or ``separate`` (holes as their own contours: only even-odd readers leave them open).

    ``tumor_roi_type``: RT ROI Interpreted Type of tumor classes (``roinames.interpreted_type``).
    ``provenance``: ROIs of structures a person edited say SEMIAUTOMATIC; approved: ApprovalStatus APPROVED with
    ReviewerName, ReviewDate and ReviewTime (default UNAPPROVED, without them: they are 2C, for APPROVED/REJECTED)."""
    provenance = provenance or Provenance()
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    first = ref.datasets[0]
    now = _dt.datetime.now()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    if _character_set(first):
        ds.SpecificCharacterSet = _character_set(first)
    ds.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    # Patient and study: copied from the CT, so the planning system files the structures with it.
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber", "StudyDescription"):
        if keyword in first:
            ds[keyword] = first[keyword]  # the element as it is (no re-validation of the source's values)
        else:
            setattr(ds, keyword, "")
    ds.Modality = "RTSTRUCT"
    ds.OperatorsName = ""  # Type 2 (RT Series): no person operated anything
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 9902
    ds.SeriesDescription = f"AtlasSeg {run.model['id']}"[:64]
    ds.FrameOfReferenceUID = first.FrameOfReferenceUID
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "") or ""  # Type 2 (Frame of Reference)
    ds.Manufacturer = "AtlasSeg"
    ds.ManufacturerModelName = run.model["id"][:64]
    ds.SoftwareVersions = f"atlasseg {__version__}"
    ds.InstanceNumber = 1
    ds.StructureSetLabel = "AtlasSeg"
    ds.StructureSetName = run.model["id"][:64]
    ds.StructureSetDescription = f"automatic segmentation: {run.model['title'] or run.model['id']}"[:1024]
    ds.StructureSetDate = now.strftime("%Y%m%d")
    ds.StructureSetTime = now.strftime("%H%M%S")
    ds.ApprovalStatus = "UNAPPROVED"  # automatic contours: a person reviews and approves them in the planning system
    if provenance.approved:
        ds.ApprovalStatus = "APPROVED"
        ds.ReviewDate = provenance.approved_at.strftime("%Y%m%d")
        ds.ReviewTime = provenance.approved_at.strftime("%H%M%S")
        ds.ReviewerName = provenance.reviewer

    def image_ref(index):
        item = Dataset()
        item.ReferencedSOPClassUID = ref.datasets[index].SOPClassUID
        item.ReferencedSOPInstanceUID = ref.datasets[index].SOPInstanceUID
        return item

    series_item = Dataset()
    series_item.SeriesInstanceUID = first.SeriesInstanceUID
    series_item.ContourImageSequence = Sequence([image_ref(k) for k in range(len(ref.datasets))])
    study_item = Dataset()
    study_item.ReferencedSOPClassUID = DETACHED_STUDY_MANAGEMENT
    study_item.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study_item.RTReferencedSeriesSequence = Sequence([series_item])
    frame_item = Dataset()
    frame_item.FrameOfReferenceUID = first.FrameOfReferenceUID
    frame_item.RTReferencedStudySequence = Sequence([study_item])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame_item])

    if holes not in HOLES:
        raise InputError(f"unknown hole form '{holes}'; choose one of {', '.join(HOLES)}")
    rois, contours_seq, observations, empty, total = [], [], [], [], 0
    for structure in run.structures:
        mask = ref.on_slices(run.mask(structure))
        contours = []
        for k in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)):
            for ring in mask_contours(mask[k], holes):
                points = ref.slice_to_physical(int(k), ring)  # on the acquired slice, at its own position
                contour = Dataset()
                contour.ContourImageSequence = Sequence([image_ref(int(k))])
                contour.ContourGeometricType = "CLOSED_PLANAR"
                contour.NumberOfContourPoints = len(points)
                contour[CONTOUR_DATA] = _raw_ds(CONTOUR_DATA, points.reshape(-1))
                contours.append(contour)
        del mask
        if not contours:
            empty.append(structure.name)
        number = len(rois) + 1
        total += len(contours)
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = first.FrameOfReferenceUID
        roi.ROIName = structure.display_name[:64]
        roi.ROIGenerationAlgorithm = provenance.algorithm_type(structure.name)
        roi.ROIGenerationDescription = f"AtlasSeg {run.model['id']} {run.model['version']}"[:64]
        if provenance.description(structure.name):
            roi.ROIDescription = provenance.description(structure.name)[:1024]  # ST
        rois.append(roi)
        item = Dataset()
        item.ROIDisplayColor = [int(v) for v in structure.color]
        item.ReferencedROINumber = number
        if contours:
            item.ContourSequence = Sequence(contours)
        contours_seq.append(item)
        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        observation.ROIObservationLabel = structure.display_name[:16]
        # Organs are ORGAN; an automatic tumor finding is left uninterpreted unless asked (a planner decides whether
        # it is a GTV), see roinames.
        observation.RTROIInterpretedType = roinames.interpreted_type(structure.kind, structure.entry, tumor_roi_type)
        observation.ROIInterpreter = ""
        code = _code(structure.entry.get("type"))
        if code is not None:
            coded = Dataset()
            coded.CodingSchemeDesignator, coded.CodeMeaning = code.scheme_designator, code.meaning[:64]
            if len(code.value) <= 16:
                coded.CodeValue = code.value
            else:  # a private code naming a long class name: Long Code Value (UC) instead of Code Value (SH)
                coded.LongCodeValue = code.value
            observation.RTROIIdentificationCodeSequence = Sequence([coded])
        observations.append(observation)
    if not rois:
        raise InputError(f"the run in {run.path} has no structures; an RT Structure Set needs at least one ROI")
    ds.StructureSetROISequence = Sequence(rois)
    ds.ROIContourSequence = Sequence(contours_seq)
    ds.RTROIObservationsSequence = Sequence(observations)
    schemes = _coding_schemes([s.entry for s in run.structures])
    if len(schemes):
        ds.CodingSchemeIdentificationSequence = schemes
    changed = make_values_valid(ds, f"RTSTRUCT {dest}")
    _atomic_dicom(ds, dest)
    return {"rois": len(rois), "contours": total, "empty": empty, "holes": holes, "values_made_valid": changed}


CONTOUR_DATA = 0x30060050


def _raw_ds(tag: int, values) -> "object":
    """A DS element from many numbers, encoded once (pydicom would build and validate one object per number)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    text = "\\".join(f"{v:.3f}".rstrip("0").rstrip(".") for v in values)  # µm precision, shortest form
    data = text.encode("ascii")
    if len(data) % 2:
        data += b" "
    return RawDataElement(Tag(tag), "DS", len(data), data, 0, False, True)


def read_rtstruct(path, grid) -> list:
    """The ROIs of an RT Structure Set as masks on ``grid``: ``[{"number", "name", "color", "mask"}]``.

    ``grid`` is a ``Grid``, or a ``ReferenceSeries`` to get the masks on its source slices (placed by each slice's
    own position, as an irregular series needs). Contours are filled with the even-odd rule on the slice they lie
    on; a contour between slices (more than a quarter slice off) is refused with its position."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot read {path} as DICOM: {exc}") from None
    if ds.get("Modality") != "RTSTRUCT" or "ROIContourSequence" not in ds:
        raise InputError(f"{path} is not an RT Structure Set (modality {ds.get('Modality')})")
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.get("StructureSetROISequence", [])}
    ref = grid if isinstance(grid, ReferenceSeries) else None
    slices, rows, cols = ref.slice_shape if ref is not None else (grid.size[2], grid.size[1], grid.size[0])
    out = []
    for item in ds.ROIContourSequence:
        number = int(item.ReferencedROINumber)
        per_slice = {}
        for contour in item.get("ContourSequence", []):
            points = np.asarray(contour.ContourData, float).reshape(-1, 3)
            if ref is not None:
                k, ij = ref.physical_to_slice(points, what=f"{path}: a contour of ROI {names.get(number, number)}")
                per_slice.setdefault(k, []).append(ij)
                continue
            ijk = grid.physical_to_index(points)
            k = float(np.median(ijk[:, 2]))
            if abs(k - round(k)) > 0.25 or np.ptp(ijk[:, 2]) > 0.25:
                raise InputError(f"{path}: a contour of ROI {names.get(number, number)} lies between slices of the "
                                 f"grid (slice index {k:.2f}); the structure set belongs to another series")
            k = int(round(k))
            if 0 <= k < slices:
                per_slice.setdefault(k, []).append(ijk[:, :2])
        mask = np.zeros((slices, rows, cols), np.uint8)
        for k, polygons in per_slice.items():
            mask[k] = fill_polygons(polygons, (rows, cols))
        color = tuple(int(v) for v in item.get("ROIDisplayColor", (255, 0, 0)))
        out.append({"number": number, "name": names.get(number, str(number)), "color": color, "mask": mask})
    return out


# ------------------------------------------------------------------------------------------- .seg.nrrd


def write_seg_nrrd(run: RunFolder, dest) -> dict:
    """Write every structure (empty ones too) into a Slicer ``.seg.nrrd`` (slicerio writes the file).

    Structures share labelmap layers where they do not overlap, organs and tumors never (as the Slicer module
    loads results, so tumors draw over their organ). The packing is done here on (k, j, i) arrays: slicerio's
    ``add_segment`` does the same on (i, j, k) views, which costs a transposed copy and strided indexing per
    structure (minutes on a 512×512×200 CT with 25 structures)."""
    import slicerio

    grid = run.grid
    shape = tuple(grid.size[::-1])
    layers, kinds, segments = [], [], []
    for structure in sorted(run.structures, key=lambda s: (s.is_tumor, s.label)):
        mask = run.mask(structure).view(bool)
        for index, labels in enumerate(layers):
            used = max((s["labelValue"] for s in segments if s["layer"] == index), default=0)
            if kinds[index] == structure.is_tumor and used < 255 and not labels[mask].any():
                break
        else:
            layers.append(np.zeros(shape, np.uint8))
            kinds.append(structure.is_tumor)
            index, used = len(layers) - 1, 0
        layers[index][mask] = used + 1
        extent = [0, -1, 0, -1, 0, -1]
        if mask.any():
            extent = []
            for axis in (2, 1, 0):  # i, j, k ranges
                hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
                extent += [int(hits[0]), int(hits[-1])]
        segments.append({
            "id": structure.name, "name": structure.display_name, "nameAutoGenerated": False,
            "color": [round(v / 255.0, 6) for v in structure.color], "colorAutoGenerated": False,
            "labelValue": used + 1, "layer": index, "extent": extent,
            "terminology": _slicer_terminology(structure.entry), "tags": {"AtlasSeg.Kind": structure.kind}})
        del mask
    if not layers:
        layers.append(np.zeros(shape, np.uint8))
    voxels = layers[0] if len(layers) == 1 else np.stack(layers)
    del layers
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = grid.matrix
    ijk_to_lps[:3, 3] = grid.origin
    # (k, j, i) in C order is (i, j, k) in Fortran order: the transposed view needs no copy for pynrrd.
    segmentation = {"voxels": voxels.T if voxels.ndim == 3 else voxels.transpose(0, 3, 2, 1), "ijkToLPS": ijk_to_lps,
                    "containedRepresentationNames": ["Binary labelmap"], "masterRepresentation": "Binary labelmap",
                    "segments": segments}
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".seg.nrrd", dir=dest.parent)
    os.close(fd)
    try:
        slicerio.write_segmentation(tmp, segmentation, compression_level=6)
        os.chmod(tmp, _default_mode())  # mkstemp makes 0600: as readable as the run's other files
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"segments": len(segments), "layers": 1 if voxels.ndim == 3 else int(voxels.shape[0])}


# ---------------------------------------------------------------------------------------- AbdomenAtlas
def _run_ct(run: RunFolder, ct=None) -> sitk.Image:
    """The CT of a run: ``ct`` (a file or DICOM folder) or the run's input, checked to lie on the masks' grid."""
    from ..io import read_image

    from ..run import Run

    source = run.report.get("input", {})
    series = None
    if ct is not None:
        path = ct
    else:  # where every command looks for the run's CT (also in a copied or moved folder: its ct.nii.gz)
        found = Run(run.path, check=False).ct_candidates(run.report)
        path, series = found[0] if found else (source.get("path"), None)
    if not path or not Path(path).exists():
        raise InputError(f"the CT of the run in {run.path} ({path or 'not recorded'}) is not there; "
                         "pass the CT with --ct FILE_OR_DICOM_FOLDER")
    image, _ = read_image(path, series_uid=series if ct is None and Path(path).is_dir() else None)
    problems = grid_differences(Grid.of(image), run.grid)
    if problems:
        raise InputError(f"the CT {path} does not lie on the segmentation's grid ({'; '.join(problems)})")
    return image


def write_abdomenatlas(run: RunFolder, dest, *, ct=None, overwrite: bool = False) -> dict:
    """Write an AbdomenAtlas case folder ``dest`` (ct.nii.gz, segmentations/, combined_labels.nii.gz, labels.json)."""
    image = _run_ct(run, ct)
    staging = StagingDir(dest, overwrite=overwrite)
    with staging as stage:
        sitk.WriteImage(image, str(stage / "ct.nii.gz"), useCompression=True)
        del image
        (stage / "segmentations").mkdir()
        combined = np.zeros(tuple(run.grid.size[::-1]), np.uint8)
        labels, drawn = [], []
        for structure in sorted(run.structures, key=lambda s: (s.is_tumor, s.label)):
            mask = run.mask(structure)
            image = run.grid.image_from_kji(mask)
            sitk.WriteImage(image, str(stage / "segmentations" / f"{structure.name}.nii.gz"), useCompression=True)
            drawn.append((int(np.count_nonzero(mask)), structure.is_tumor, structure.label, structure.name,
                          *_packed_box(mask > 0)))
            labels.append({"name": structure.name, "label": structure.label, "kind": structure.kind,
                           "color": list(structure.color),
                           **{k: structure.entry[k] for k in ("category", "type", "type_modifier", "region")
                              if structure.entry.get(k)}})
        # Smaller structures are drawn over larger ones (tumors over their organs; a small vessel stays visible).
        hidden = paint_labels(combined, ((label, name, sl, np.unpackbits(packed, count=int(np.prod(shape)))
                                          .reshape(shape).view(bool))
                                         for _, _, label, name, sl, packed, shape in _paint_order(drawn)))
        for name in hidden:
            log.warning(hidden_warning(name))
        sitk.WriteImage(run.grid.image_from_kji(combined), str(stage / "combined_labels.nii.gz"), useCompression=True)
        (stage / "labels.json").write_text(json.dumps({"model": run.model, "labels": labels}, indent=1))
        staging.commit()
    return {"structures": len(labels), "hidden_in_combined": hidden}


@dataclass
class AtlasCase:
    """An AbdomenAtlas case folder as read by ``read_abdomenatlas_case``."""

    path: Path
    ct_path: Path
    structures: list  # completed class entries (name, label, kind, color, codes) with "file"


def read_abdomenatlas_case(folder) -> AtlasCase:
    """Find the CT and masks of an AbdomenAtlas case folder (``ct.nii.gz`` + ``segmentations/*.nii.gz``).

    Names come from the file names; label values, colours and codes from ``labels.json`` when present, else from
    the structure table (AbdomenAtlas names such as ``liver`` or ``kidney_left`` are known)."""
    folder = Path(folder)
    ct_path = next((folder / n for n in ("ct.nii.gz", "ct.nii", "ct.nrrd", "ct.mha") if (folder / n).is_file()), None)
    masks = sorted((folder / "segmentations").glob("*.nii.gz")) if (folder / "segmentations").is_dir() else []
    if ct_path is None or not masks:
        raise InputError(f"{folder} is not an AbdomenAtlas case folder: it needs ct.nii.gz and "
                         "segmentations/<structure>.nii.gz")
    known = {}
    if (folder / "labels.json").is_file():
        try:
            known = {e["name"]: e for e in json.loads((folder / "labels.json").read_text())["labels"]}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"cannot read {folder / 'labels.json'}: {exc}") from None
    structures = []
    names = [p.name[: -len(".nii.gz")] for p in masks]
    for index, (name, path) in enumerate(zip(names, masks)):
        entry = complete_class({k: v for k, v in known.get(name, {"name": name}).items() if v is not None})
        entry.setdefault("label", index + 1)
        entry["file"] = str(path)
        structures.append(entry)
    labels = [e["label"] for e in structures]
    if len(set(labels)) != len(labels):  # labels.json missing entries: number them in file order
        for index, entry in enumerate(structures):
            entry["label"] = index + 1
    return AtlasCase(path=folder, ct_path=ct_path, structures=structures)


# ------------------------------------------------------------------------------------------------- API
@dataclass
class ExportResult:
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


def unreviewed_candidates(outdir) -> dict:
    """Tumor structure -> ids of its candidates nobody has kept or removed (``atlasseg review``)."""
    from ..review import TO_REVIEW, review_rows

    out = {}
    for name, rows in review_rows(outdir).items():
        ids = [r.get("id") for r in rows if r.get("status") == TO_REVIEW]
        if ids:
            out[name] = ids
    return out


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


# ---------------------------------------------------------------------------------------------- CLI
def cmd_export(args) -> int:
    # The run's warnings travel with its export: said first, on stderr, one line each.
    from ..run import Run

    try:
        warnings = Run(args.outdir, check=False).read_report().get("warnings") or []
    except (OSError, ValueError, InputError):
        warnings = []  # not a run folder: export() says so
    for text in warnings:
        print(f"atlasseg: warning: run: {text}", file=sys.stderr)
    result = export(args.outdir, args.format, args.output, reference_dicom=args.reference_dicom, ct=args.ct,
                    overwrite=args.overwrite, compress=args.compress and not args.no_compress, names=args.names,
                    name_map=args.name_map, tumor_roi_type=args.tumor_roi_type, holes=args.holes,
                    approve=getattr(args, "approve", False), reviewer=getattr(args, "reviewer", None),
                    force=getattr(args, "force", False))
    print(result.summary())
    for entry in result.notes.get("gtv_unreviewed", []):
        print(f"atlasseg: warning: --tumor-roi-type GTV given to candidates nobody has reviewed: {entry}; a GTV is "
              "a physician's call ('atlasseg review' keeps or removes each candidate)", file=sys.stderr)
    return 0
