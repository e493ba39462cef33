"""What both DICOM writers (``dicom_seg``, ``rtstruct``) share: the CT series they reference (``ReferenceSeries``:
headers of the source slices, their UIDs checked, the grid a run on them has; ``read_reference_series``,
``reference_for``), class codes as DICOM codes and the private coding schemes they declare, the source's character
set, values copied from the source (possibly de-identified) made valid for their VR (``make_values_valid``), and
the atomic save of a dataset (``save_dicom``, through ``io.atomic_path``)."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.sr.coding import Code
from pydicom.valuerep import VALIDATORS, format_number_as_ds

from ..errors import InputError
from ..geometry import Grid
from ..io import SliceStack, dicom_series, atomic_path, slice_stack
from .codes import PRIVATE_SCHEME, PRIVATE_SCHEME_NAME, scheme_designator
from .runfolder import RunFolder, grid_differences

log = logging.getLogger(__name__)

NEEDS_REFERENCE = ("DICOM SEG/RTSTRUCT export needs the CT as a DICOM series: pass --reference-dicom DIR "
                   "(the folder holding the CT's .dcm files, on the same grid as the segmentation)")


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
    if isinstance(source, (list, tuple)):
        files = [str(f) for f in source]
        folder = str(Path(files[0]).parent) if files else ""
    else:
        folder = str(Path(source).parent if Path(source).is_file() else source)  # a slice file names its folder
        if not Path(folder).is_dir():
            raise InputError(f"reference DICOM folder {folder} does not exist; {NEEDS_REFERENCE}")
        series = dicom_series(Path(folder))
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


def dicom_code(entry: Optional[dict]):
    """A class entry's code (``{"scheme", "code", "meaning"}``) as a pydicom ``Code`` with the designator every
    export writes (``codes.scheme_designator``); None for a missing code."""
    if not entry or not entry.get("code"):
        return None
    return Code(str(entry["code"]), scheme_designator(entry.get("scheme")), str(entry.get("meaning") or entry["code"]))


def coding_schemes(entries) -> Sequence:
    """The Coding Scheme Identification Sequence (SOP Common) declaring the private schemes ``entries`` use."""
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


def character_set(ds):
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


def save_dicom(ds, dest) -> None:
    """Save ``ds`` as a DICOM file (preamble and file meta) at ``dest``, atomically (``io.atomic_path``)."""
    with atomic_path(dest, suffix=".dcm") as tmp:
        ds.save_as(tmp, enforce_file_format=True)
