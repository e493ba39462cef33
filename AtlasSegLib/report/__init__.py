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
"""
from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import io as _io
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw
from scipy import ndimage

from .. import __version__
from ..errors import InputError
from ..geometry import Grid, oriented, reorient_array
from ..io import SourceInfo, atomic_write_bytes, read_image
from ..outputs import SEG_DIR, load_run
from ..overview import WINDOW_HU, Overview, _font, short_scan_note
from ..progress import Reporter
from ..review import TO_REVIEW, component_at, operating_points, organ_text, review_rows, status_text
from ..run import Run
from ..run import validate as validate_run_file

log = logging.getLogger(__name__)

REPORT_VERSION = 1
PICTURES_DIR = "pictures"
THREE_D_PICTURE = f"{PICTURES_DIR}/3d.png"
# Per tumor type, largest first: at maximum sensitivity a run can hold dozens of specks; the page stays readable
# and the table still lists every one.
MAX_TUMOR_PICTURES = 12
# Field of view of a tumor picture: at least this wide, else 2.5 × the tumor's longest diameter, so the organ
# around a small lesion is visible and a large one is not cut off.
MIN_FOV_MM = 100.0
TUMOR_PICTURE_PX = 360
# Lecture pictures ('atlasseg report --lecture', pictures/lecture/): for a 1920 x 1080 slide. Wide pictures are
# 1920 px wide, tumor slices 1080 px square; text is LECTURE_TEXT x the page's (labels 11 -> 28 px, legend
# 13 -> 33 px, titles 16 -> 40 px): a projected label is then about 1/40 of the screen's height, readable from
# the back of a lecture hall, where the page's 11-px labels shrink to nothing.
LECTURE_DIR = f"{PICTURES_DIR}/lecture"
LECTURE_WIDTH_PX, LECTURE_HEIGHT_PX = 1920, 1080
LECTURE_TEXT = 2.5
CSV_COLUMNS = ("section", "case", "model_id", "model_version", "structure", "kind", "component", "organ", "status",
               "volume_ml", "mean_hu", "longest_axial_diameter_cm", "perpendicular_diameter_cm", "max_probability",
               "mean_probability", "centroid_r_mm", "centroid_a_mm", "centroid_s_mm", "threshold", "count",
               "largest_volume_ml", "largest_diameter_cm", "image", "side", "location", "dice", "truth_ml",
               "inside_organ_pct", "flags", "origin")
REPORT_FILES = ("report.json", "report.csv", "report.html")
ANONYMIZED_CASE = "anonymized case"
ANONYMIZED_INPUT = "(input)"


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


# -------------------------------------------------------------------------------------------- numbers
def cm(mm) -> Optional[float]:
    """mm → cm, 1 decimal (a radiologist's diameter); None stays None."""
    return None if mm is None or _nan(mm) else round(float(mm) / 10.0, 1)


def _nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _clean(value, digits: int):
    """Round for the report; NaN (no probability map) becomes None so report.json stays valid JSON."""
    if value is None or _nan(value):
        return None
    return round(float(value), digits)


def _operating_point_name(points: dict, threshold) -> Optional[str]:
    if threshold is None:
        return None
    for name, value in points.items():
        if abs(float(value) - float(threshold)) < 1e-6:
            return name
    return None


# -------------------------------------------------------------------------------------------- inputs
def _case_name(report: dict, anonymize: bool = False) -> str:
    """The case as the report names it: the input's file (or DICOM folder) name without its suffix, never a
    full path; "anonymized case" with ``anonymize`` (a folder name is often the patient's name)."""
    if anonymize:
        return ANONYMIZED_CASE
    path = (report.get("input") or {}).get("path") or ""
    name = Path(path).name or path
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nhdr"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name or "case"


def _same_grid(image: sitk.Image, grid: dict, tolerance_mm: float = 1e-3) -> bool:
    return not Grid.of(image).differences(Grid.from_dict(grid), tolerance_mm)


def load_run_ct(outdir: Path, report: dict, ct=None) -> tuple:
    """The CT the masks were made from: ``ct`` (a path or an image) if given, else the run's input path, else
    OUTDIR/ct.nii.gz (the demo keeps its phantom there). Returns ``(image or None, SourceInfo or None, note or
    None)``."""
    grid = (report.get("input") or {}).get("grid")
    if ct is not None:
        image, source = (ct, None) if isinstance(ct, sitk.Image) else read_image(ct)
        if grid and not _same_grid(image, grid):
            raise InputError(f"the CT {ct if not isinstance(ct, sitk.Image) else '(image)'} is not the one this run "
                             f"segmented (its grid differs from report.json's input grid {grid['size']}); give the "
                             "run's input CT")
        return image, source, None
    for path, series in Run(outdir, check=False).ct_candidates(report):  # where every command looks
        try:
            image, info = read_image(path, series_uid=series if path.is_dir() else None)
        except InputError as exc:
            log.warning("cannot read the run's CT %s: %s", path, exc)
            continue
        if grid is None or _same_grid(image, grid):
            return image, info, None
        log.warning("%s is not on the run's input grid; not used for pictures", path)
    return None, None, ("the CT was not found (the run's input path is gone): pictures and mean HU need it; "
                        "pass the CT with --ct")


# ---------------------------------------------------------------------------------------- DICOM header
# What the report's header shows from a DICOM input (first slice of the series), report key -> DICOM keyword.
HEADER_FIELDS = (("patient_name", "PatientName"), ("patient_id", "PatientID"), ("study_date", "StudyDate"),
                 ("study_description", "StudyDescription"), ("series_description", "SeriesDescription"),
                 ("series_number", "SeriesNumber"), ("modality", "Modality"))
_SLICE_TAGS = ("SpecificCharacterSet", "SeriesInstanceUID", "InstanceNumber", "ImagePositionPatient",
               "ImageOrientationPatient") + tuple(k for _, k in HEADER_FIELDS)


def _person_name(value) -> str:
    """DICOM PN ("FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX") as a reader writes it: "FAMILY, GIVEN MIDDLE"."""
    parts = [p.strip() for p in str(value or "").split("=")[0].split("^")]
    family, rest = (parts[0] if parts else ""), " ".join(p for p in parts[1:] if p)
    return f"{family}, {rest}" if family and rest else family or rest


def _dicom_date(value) -> str:
    text = str(value or "").strip()
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if re.fullmatch(r"\d{8}", text) else text


def dicom_facts(files=(), *, folder=None, series_uid: Optional[str] = None) -> Optional[dict]:
    """The header fields (``HEADER_FIELDS``, from the first slice) and every slice's InstanceNumber and position
    of a DICOM series, read with pydicom without pixel data (about 1 ms a slice).

    Args:
        files: the series' files (``SourceInfo.files``); when empty, ``folder`` is searched (with subfolders)
            for files of ``series_uid`` (any series when None).

    Returns:
        ``{"header": {...}, "slices": [{"instance": int or None, "position": [x, y, z] LPS mm}], "normal":
        [x, y, z]}`` or None when no file is readable as DICOM.
    """
    import pydicom

    paths = [Path(f) for f in files]
    if not paths and folder is not None and Path(folder).is_dir():
        paths = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    header, slices, normal = None, [], None
    for path in paths:
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=list(_SLICE_TAGS))
        except Exception:  # noqa: BLE001 - not DICOM (a README, a DICOMDIR's companions): skip it
            continue
        if series_uid and str(ds.get("SeriesInstanceUID", "")) != series_uid:
            continue
        if "ImagePositionPatient" not in ds:
            continue
        if header is None:
            header = {}
            for key, keyword in HEADER_FIELDS:
                value = ds.get(keyword)
                text = _person_name(value) if keyword == "PatientName" else str(value if value is not None else "")
                header[key] = _dicom_date(text) if keyword == "StudyDate" else text.strip()
            iop = [float(v) for v in ds.get("ImageOrientationPatient") or (1, 0, 0, 0, 1, 0)]
            normal = np.cross(iop[:3], iop[3:])
        instance = ds.get("InstanceNumber")
        slices.append({"instance": None if instance in (None, "") else int(instance),
                       "position": [float(v) for v in ds.ImagePositionPatient]})
    if header is None:
        return None
    return {"header": header, "slices": slices, "normal": [float(v) for v in normal]}


def _dicom_of_run(report: dict, source: Optional[SourceInfo]) -> Optional[dict]:
    """``dicom_facts`` of the run's input when it was a DICOM series still on disk (None otherwise)."""
    inp = report.get("input") or {}
    if inp.get("format") != "dicom":
        return None
    if source is not None and source.format == "dicom" and source.files:
        return dicom_facts(source.files)
    path = inp.get("path")
    if not path or not Path(path).exists():
        return None
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    return dicom_facts(folder=folder, series_uid=inp.get("series_uid"))


# ------------------------------------------------------------------------------------------ pictures
def _png_bytes(image: Image.Image) -> bytes:
    buffer = _io.BytesIO()
    image.save(buffer, format="PNG")  # optimize=True: 10 % smaller, 5 × slower
    return buffer.getvalue()


def _scale_bar_cm(fov_mm: float) -> int:
    """The longest of 1, 2, 5, 10 cm that is at most a third of the picture's width."""
    for length in (10, 5, 2, 1):
        if length * 10.0 <= fov_mm / 3.0:
            return length
    return 1


def _text(draw: ImageDraw.ImageDraw, xy, text: str, font, fill="white", anchor="la") -> None:
    """Text with a dark outline: readable over bright bone and dark air alike."""
    draw.text(xy, text, fill=fill, font=font, anchor=anchor, stroke_width=2, stroke_fill="black")


def tumor_slice_picture(ct_kji: np.ndarray, grid: Grid, comp_offset_kji, comp_kji: np.ndarray, centroid_lps, *,
                        color, title: str, size_text: str, longest_mm: float = 0.0,
                        px: int = TUMOR_PICTURE_PX, text_scale: float = 1.0) -> tuple:
    """An axial CT slice through a tumor component's centroid, in the radiological convention (anterior up,
    patient's right on the image's left), HU window −150…250, with the component's outline in ``color``, a
    scale bar, orientation letters and ``title`` / ``size_text``.

    Args:
        ct_kji: the CT (k, j, i) on ``grid``.
        comp_offset_kji, comp_kji: the component as a boolean array within its bounding box and that box's corner.
        centroid_lps: the component's centroid (LPS mm); the slice nearest it is shown, or the slice where the
            component is largest when the centroid slice misses it (a C-shaped lesion).

    Returns:
        ``(PIL RGB image, S position of the slice in mm (RAS))``.

    ``px`` is the picture's longer side; ``text_scale`` enlarges the text, the outline and the scale bar.
    """
    lgrid = oriented(grid, "LAS")
    ct_las = reorient_array(ct_kji, grid, "LAS")  # (i: R→L, j: P→A, k: I→S), a view
    size_ijk = tuple(int(v) for v in np.asarray(comp_kji.shape)[::-1])
    sub = grid.sub(tuple(int(v) for v in np.asarray(comp_offset_kji)[::-1]), size_ijk)
    comp_las = reorient_array(comp_kji, sub, "LAS")
    first = np.rint(lgrid.physical_to_index(oriented(sub, "LAS").origin)).astype(int)
    centre = lgrid.physical_to_index(np.asarray(centroid_lps, float))
    kk = int(np.rint(centre[2])) - first[2]
    if not (0 <= kk < comp_las.shape[2] and comp_las[:, :, kk].any()):
        kk = int(np.argmax(comp_las.reshape(-1, comp_las.shape[2]).sum(axis=0)))
    k = first[2] + kk
    hu = np.clip(ct_las[:, :, k].astype(np.float32), *WINDOW_HU)
    grey = ((hu - WINDOW_HU[0]) / (WINDOW_HU[1] - WINDOW_HU[0]) * 255.0).astype(np.uint8)
    mask = np.zeros(grey.shape, np.uint8)
    i0, j0 = first[0], first[1]
    mask[i0:i0 + comp_las.shape[0], j0:j0 + comp_las.shape[1]] = comp_las[:, :, kk].astype(np.uint8) * 255
    # (i, j) → rows anterior first, columns patient's right first.
    grey = np.ascontiguousarray(grey.T[::-1])
    mask = np.ascontiguousarray(mask.T[::-1])
    rows, cols = grey.shape
    sx, sy = lgrid.spacing[0], lgrid.spacing[1]
    cx, cy = centre[0], (rows - 1) - centre[1]
    fov_mm = max(MIN_FOV_MM, 2.5 * float(longest_mm))
    width_mm = min(fov_mm, cols * sx)
    height_mm = min(fov_mm, rows * sy)

    def window(c, half_px, n):
        lo = min(max(c + 0.5 - half_px, 0.0), max(n - 2 * half_px, 0.0))
        return lo, min(lo + 2 * half_px, float(n))

    x0, x1 = window(cx, width_mm / sx / 2, cols)
    y0, y1 = window(cy, height_mm / sy / 2, rows)
    scale = px / max(width_mm, height_mm)
    out_size = (max(1, int(round(width_mm * scale))), max(1, int(round(height_mm * scale))))
    box = (x0, y0, x1, y1)
    picture = Image.fromarray(grey, "L").resize(out_size, Image.BILINEAR, box=box).convert("RGB")
    inside = np.asarray(Image.fromarray(mask, "L").resize(out_size, Image.NEAREST, box=box)) > 127
    edge = inside & ~ndimage.binary_erosion(inside, border_value=0)
    edge = ndimage.binary_dilation(edge, iterations=max(1, round(text_scale)))
    rgb = np.asarray(picture).copy()
    rgb[edge] = np.asarray(color, np.uint8)
    picture = Image.fromarray(rgb, "RGB")

    draw = ImageDraw.Draw(picture)
    t = text_scale
    font, small = _font(round(16 * t)), _font(round(13 * t))
    w, h = picture.size
    _text(draw, (6 * t, 5 * t), title, font)
    _text(draw, (6 * t, 25 * t), size_text, small, fill=tuple(int(v) for v in color))
    _text(draw, (w / 2, 6 * t), "A", font, fill="yellow", anchor="ma")
    _text(draw, (w / 2, h - 6 * t), "P", font, fill="yellow", anchor="md")
    _text(draw, (6 * t, h / 2), "R", font, fill="yellow", anchor="lm")
    _text(draw, (w - 6 * t, h / 2), "L", font, fill="yellow", anchor="rm")
    bar_cm = _scale_bar_cm(width_mm)
    bar_px = bar_cm * 10.0 * scale
    y = h - 14 * t
    draw.rectangle([w - 10 * t - bar_px, y - 2 * t, w - 10 * t, y + 2 * t], fill="white", outline="black")
    _text(draw, (w - 10 * t - bar_px / 2, y - 6 * t), f"{bar_cm} cm", small, anchor="md")
    s_mm = float(lgrid.index_to_physical([centre[0], centre[1], k])[2])  # LPS z = RAS S
    return picture, s_mm


# ------------------------------------------------------------------------------- structures on slices
# Structure pictures: axial levels chosen so that every structure is seen at ≥ half of its largest axial area in
# at least one of them (at most MAX_AXIAL_LEVELS), and one coronal slice through as many structures as possible.
MAX_AXIAL_LEVELS = 6
MIN_AXIAL_LEVELS = 3  # when fewer cover every structure, levels spread over the structures' extent are added
WELL_SHOWN = 0.5  # a structure is "well shown" on a slice holding this share of its largest area
AXIAL_PANEL_PX = 300
CORONAL_PX = (640, 560)  # the coronal slice fits this box (width, height), physical aspect ratio kept …
CORONAL_MIN_HEIGHT_PX, CORONAL_MAX_WIDTH_PX = 200, 1000  # … up to this wide when that leaves it under this tall
VIEW_MARGIN_MM = 20.0  # around the structures' common box
LEGEND_W = 200


@dataclass
class StructureLayer:
    """One structure as the pictures need it: its mask cropped to its bounding box in LAS index order
    (i: patient's right → left, j: posterior → anterior, k: inferior → superior)."""

    name: str
    color: tuple
    kind: str
    lo: tuple  # LAS (i, j, k) of the crop's first voxel
    crop: np.ndarray  # bool (i, j, k)
    per_k: np.ndarray  # voxels per axial slice over the crop's k range

    @property
    def k_range(self) -> tuple:
        return self.lo[2], self.lo[2] + self.crop.shape[2] - 1

    def axial(self, k: int, box) -> Optional[np.ndarray]:
        """The structure on LAS axial slice ``k`` inside ``box`` ((i0, i1), (j0, j1)): bool (i, j), or None."""
        kk = k - self.lo[2]
        if not 0 <= kk < self.crop.shape[2] or not self.per_k[kk]:
            return None
        return _paste(self.crop[:, :, kk], self.lo[:2], box)

    def coronal(self, j: int, box) -> Optional[np.ndarray]:
        """On LAS coronal plane ``j`` inside ``box`` ((i0, i1), (k0, k1)): bool (i, k), or None."""
        jj = j - self.lo[1]
        if not 0 <= jj < self.crop.shape[1]:
            return None
        plane = self.crop[:, jj, :]
        return _paste(plane, (self.lo[0], self.lo[2]), box) if plane.any() else None


def _paste(part: np.ndarray, lo, box) -> Optional[np.ndarray]:
    (a0, a1), (b0, b1) = box
    out = np.zeros((a1 - a0, b1 - b0), bool)
    sa = slice(max(lo[0], a0), min(lo[0] + part.shape[0], a1))
    sb = slice(max(lo[1], b0), min(lo[1] + part.shape[1], b1))
    if sa.start >= sa.stop or sb.start >= sb.stop:
        return None
    out[sa.start - a0:sa.stop - a0, sb.start - b0:sb.stop - b0] = \
        part[sa.start - lo[0]:sa.stop - lo[0], sb.start - lo[1]:sb.stop - lo[1]]
    return out if out.any() else None


def structure_layer(name: str, color, kind: str, inside_kji: np.ndarray, grid: Grid) -> Optional[StructureLayer]:
    """The ``StructureLayer`` of a mask on ``grid`` (None when empty). One pass over the volume (a count per
    axial slice), then only the structure's own slab and box are touched."""
    las = reorient_array(inside_kji, grid, "LAS")
    per_k = np.fromiter((np.count_nonzero(las[:, :, k]) for k in range(las.shape[2])), np.int64, las.shape[2])
    ks = np.flatnonzero(per_k)
    if not ks.size:
        return None
    k0, k1 = int(ks[0]), int(ks[-1]) + 1
    plane = las[:, :, k0:k1].any(axis=2)
    i_any, j_any = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    i0, i1, j0, j1 = int(i_any[0]), int(i_any[-1]) + 1, int(j_any[0]), int(j_any[-1]) + 1
    return StructureLayer(name, tuple(int(v) for v in color), kind, (i0, j0, k0),
                          np.array(las[i0:i1, j0:j1, k0:k1], dtype=bool), per_k[k0:k1])


def choose_axial_levels(layers: list, n_k: int, max_levels: int = MAX_AXIAL_LEVELS) -> list:
    """LAS axial slice indices (cranial first) on which every non-tumor structure is well shown: greedy set
    cover of "≥ WELL_SHOWN of its largest area" intervals, ties to the slice where the structures it shows are
    largest. A structure left uncovered after ``max_levels`` gets its largest slice added (it must be seen).
    Fewer than MIN_AXIAL_LEVELS are topped up with the slices farthest from those chosen within the structures'
    common extent, so a reader sees their upper and lower parts too."""
    organs = [l for l in layers if l.kind != "tumor"]
    if not organs:
        organs = list(layers)
    if not organs:
        return []
    rel = np.zeros((len(organs), n_k), np.float32)
    for row, layer in zip(rel, organs):
        k0, k1 = layer.k_range
        row[k0:k1 + 1] = layer.per_k / max(int(layer.per_k.max()), 1)
    good = rel >= WELL_SHOWN
    uncovered = np.ones(len(organs), bool)
    levels = []
    while uncovered.any() and len(levels) < max_levels:
        score = good[uncovered].sum(axis=0) + rel[uncovered].sum(axis=0) / (len(organs) + 1)
        k = int(np.argmax(score))
        levels.append(k)
        uncovered &= ~good[:, k]
    for n in np.flatnonzero(uncovered):
        if not (rel[n, levels] > 0).any():
            levels.append(int(np.argmax(rel[n])))
    present = np.flatnonzero((rel > 0).any(axis=0))
    lo, hi = int(present[0]), int(present[-1])
    candidates = np.arange(lo, hi + 1)
    while len(set(levels)) < MIN_AXIAL_LEVELS and len(set(levels)) < candidates.size:
        # Away from the extent's ends (a structure's tip is a poor picture): the middle 80 %.
        inner = candidates[(candidates >= lo + 0.1 * (hi - lo)) & (candidates <= hi - 0.1 * (hi - lo))]
        pool = inner if inner.size > len(set(levels)) else candidates
        gaps = np.min(np.abs(pool[:, None] - np.asarray(sorted(set(levels)))[None, :]), axis=1)
        levels.append(int(pool[int(np.argmax(gaps))]))
    return sorted(set(levels), reverse=True)


def choose_coronal_plane(layers: list, n_j: int) -> int:
    """The LAS coronal plane (j) through the most structures (each counted where its coronal area is ≥ 30 % of
    its largest), ties to where they are largest: a plane through the organs' centre that shows most of them."""
    organs = [l for l in layers if l.kind != "tumor"] or list(layers)
    rel = np.zeros((max(len(organs), 1), n_j), np.float32)
    for row, layer in zip(rel, organs):
        per_j = layer.crop.sum(axis=(0, 2))
        row[layer.lo[1]:layer.lo[1] + per_j.size] = per_j / max(int(per_j.max()), 1)
    score = (rel >= 0.3).sum(axis=0) + rel.sum(axis=0) / (len(organs) + 1)
    return int(np.argmax(score))


def _window_uint8(hu: np.ndarray) -> np.ndarray:
    hu = np.clip(hu.astype(np.float32), *WINDOW_HU)
    return ((hu - WINDOW_HU[0]) / (WINDOW_HU[1] - WINDOW_HU[0]) * 255.0).astype(np.uint8)


def _draw_outlines(grey: np.ndarray, masks: list, size: tuple, *, font=None, line: int = 1) -> Image.Image:
    """``grey`` (rows × cols uint8, display order) resized to ``size`` with each ``(name, colour, mask)``'s outline
    (mask in display order, ``line`` px either side of the edge) in its colour and its name beside it, names never
    drawn over each other (offsets and sizes follow the font's size)."""
    picture = Image.fromarray(grey, "L").resize(size, Image.BILINEAR).convert("RGB")
    rgb = np.asarray(picture).copy()
    labels = []
    for name, color, mask in masks:
        inside = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255, "L").resize(size, Image.NEAREST)) > 127
        if not inside.any():
            continue
        edge = inside & ~ndimage.binary_erosion(inside, border_value=0)
        edge = ndimage.binary_dilation(edge, iterations=line)
        rgb[edge] = np.asarray(color, np.uint8)
        rows, cols = np.nonzero(inside)
        # A small structure's name goes below it, not over the outline a reader has to check.
        em = getattr(font, "size", 11) / 11.0  # 1 at the page's label size
        y = float(rows.mean()) if np.ptp(rows) >= 30 * em else float(rows.max()) + 10.0 * em
        labels.append((name, color, float(cols.mean()), y))
    picture = Image.fromarray(rgb, "RGB")
    if font is not None:
        draw = ImageDraw.Draw(picture)
        taken = []
        step = getattr(font, "size", 11) + 2  # a line of text: 13 px at the page's label size
        for name, color, x, y in labels:
            w = draw.textlength(name, font=font) + 4
            for dy in (0, step, -step, 2 * step, -2 * step):
                box = (x - w / 2, y + dy - (step + 1) / 2, x + w / 2, y + dy + (step + 1) / 2)
                if not any(box[0] < t[2] and t[0] < box[2] and box[1] < t[3] and t[1] < box[3] for t in taken):
                    taken.append(box)
                    _text(draw, (x, y + dy), name, font, fill=tuple(color), anchor="mm")
                    break
    return picture


def _legend(draw: ImageDraw.ImageDraw, x: int, y: int, layers: list, font) -> None:
    em = getattr(font, "size", 13) / 13.0  # swatch and line height follow the font
    for layer in layers:
        draw.rectangle([x, y + 2 * em, x + 14 * em, y + 14 * em], fill=layer.color)
        draw.text((x + 20 * em, y), layer.name, fill="white", font=font)
        y += 20 * em


def _view_box(layers: list, lgrid: Grid) -> tuple:
    """LAS index ranges ((i0, i1), (j0, j1), (k0, k1)) of every structure's box grown by VIEW_MARGIN_MM."""
    lo = np.min([l.lo for l in layers], axis=0)
    hi = np.max([np.asarray(l.lo) + l.crop.shape for l in layers], axis=0)
    grow = np.ceil(VIEW_MARGIN_MM / np.asarray(lgrid.spacing)).astype(int)
    lo = np.maximum(lo - grow, 0)
    hi = np.minimum(hi + grow, lgrid.size)
    return tuple((int(a), int(b)) for a, b in zip(lo, hi))


def axial_structures_picture(ct_las: np.ndarray, lgrid: Grid, layers: list, levels: list, *,
                             level_text=None, title: str = "", width: Optional[int] = None,
                             text_scale: float = 1.0) -> Image.Image:
    """Axial CT slices (LAS indices ``levels``, cranial first) side by side, radiological convention (anterior
    up, patient's right on the left), every structure's outline in its colour and named, a legend and each
    slice's level (``level_text(k)``, e.g. "image 12 of 30, S 40.0 mm"). ``width``: the picture's width in px
    (panels sized to fill it; default: AXIAL_PANEL_PX panels); ``text_scale`` enlarges text and outlines."""
    (i0, i1), (j0, j1), _ = _view_box(layers, lgrid)
    sx, sy = lgrid.spacing[0], lgrid.spacing[1]
    width_mm, height_mm = (i1 - i0) * sx, (j1 - j0) * sy
    cols = min(len(levels), 3)
    rows = math.ceil(len(levels) / cols)
    t = text_scale
    gap, top, legend_w = 6, round(30 * t), round(LEGEND_W * t)
    scale = AXIAL_PANEL_PX / max(width_mm, height_mm)
    if width is not None:  # panels as wide as the width leaves after the legend and the gaps
        scale = ((width - legend_w) / cols - gap) / width_mm
    size = (max(1, int(round(width_mm * scale))), max(1, int(round(height_mm * scale))))
    canvas = Image.new("RGB", (width or cols * (size[0] + gap) + legend_w, top + rows * (size[1] + gap)), "black")
    draw = ImageDraw.Draw(canvas)
    font, small, tiny = _font(round(16 * t)), _font(round(13 * t)), _font(round(11 * t))
    draw.text((6 * t, 6 * t), title, fill="white", font=font)
    for n, k in enumerate(levels):
        grey = np.ascontiguousarray(_window_uint8(ct_las[i0:i1, j0:j1, k]).T[::-1])
        masks = []
        for layer in layers:
            m = layer.axial(k, ((i0, i1), (j0, j1)))
            if m is not None:
                masks.append((layer.name, layer.color, np.ascontiguousarray(m.T[::-1])))
        panel = _draw_outlines(grey, masks, size, font=tiny, line=max(1, round(t)))
        pd = ImageDraw.Draw(panel)
        label = level_text(k) if level_text else f"slice {k}"
        fits = small
        room = size[0] - 10 * t
        if pd.textlength(label, font=small) > room:  # a long level text in a narrow panel: smaller, not cut
            fits = _font(max(9, int(getattr(small, "size", 13) * room / pd.textlength(label, font=small))))
        _text(pd, (5 * t, 4 * t), label, fits)
        _text(pd, (size[0] / 2, size[1] - 4 * t), "P", small, fill="yellow", anchor="md")
        _text(pd, (5 * t, size[1] / 2), "R", small, fill="yellow", anchor="lm")
        _text(pd, (size[0] - 5 * t, size[1] / 2), "L", small, fill="yellow", anchor="rm")
        canvas.paste(panel, ((n % cols) * (size[0] + gap), top + (n // cols) * (size[1] + gap)))
    _legend(draw, cols * (size[0] + gap) + 6 * t, top + 4 * t, layers, small)
    return canvas


def coronal_structures_picture(ct_las: np.ndarray, lgrid: Grid, layers: list, j: int, *,
                               levels=(), title: str = "", width: Optional[int] = None, height: Optional[int] = None,
                               text_scale: float = 1.0) -> Image.Image:
    """The coronal CT slice at LAS ``j`` (head up, patient's right on the left, physical aspect ratio) with
    every structure's outline and name, a legend of the structures it cuts, a scale bar and the axial
    ``levels`` marked as ticks at the sides. ``width`` x ``height``: the picture's size in px (the slice as large
    as fits beside the legend); ``text_scale`` enlarges text and outlines."""
    (i0, i1), _, (k0, k1) = _view_box(layers, lgrid)
    sx, sz = lgrid.spacing[0], lgrid.spacing[2]
    width_mm, height_mm = (i1 - i0) * sx, (k1 - k0) * sz
    t = text_scale
    top, legend_w = round(30 * t), round(LEGEND_W * t)
    scale = min(CORONAL_PX[0] / width_mm, CORONAL_PX[1] / height_mm)
    if width is not None and height is not None:
        scale = min((width - legend_w) / width_mm, (height - top) / height_mm)
    elif height_mm * scale < CORONAL_MIN_HEIGHT_PX:  # a short scan: wider rather than a thin strip
        scale = min(CORONAL_MIN_HEIGHT_PX / height_mm, CORONAL_MAX_WIDTH_PX / width_mm)
    size = (max(1, int(round(width_mm * scale))), max(1, int(round(height_mm * scale))))
    grey = np.ascontiguousarray(_window_uint8(ct_las[i0:i1, j, k0:k1]).T[::-1])
    masks, shown = [], []
    for layer in layers:
        m = layer.coronal(j, ((i0, i1), (k0, k1)))
        if m is not None:
            masks.append((layer.name, layer.color, np.ascontiguousarray(m.T[::-1])))
            shown.append(layer)
    small, tiny = _font(round(13 * t)), _font(round(11 * t))
    panel = _draw_outlines(grey, masks, size, font=tiny, line=max(1, round(t)))
    pd = ImageDraw.Draw(panel)
    _text(pd, (size[0] / 2, 4 * t), "S", small, fill="yellow", anchor="ma")
    _text(pd, (16 * t, 4 * t), "R", small, fill="yellow", anchor="la")  # beside the level ticks, not on them
    _text(pd, (size[0] - 16 * t, 4 * t), "L", small, fill="yellow", anchor="ra")
    for k in levels:  # the axial pictures' levels
        y = (k1 - 1 - k + 0.5) * sz * scale
        if 0 <= y < size[1]:
            pd.line([(0, y), (10 * t, y)], fill="yellow", width=round(2 * t))
            pd.line([(size[0] - 1 - 10 * t, y), (size[0] - 1, y)], fill="yellow", width=round(2 * t))
    bar_cm = _scale_bar_cm(width_mm)
    bar_px = bar_cm * 10.0 * scale
    yb = size[1] - 12 * t
    pd.rectangle([size[0] - 14 * t - bar_px, yb - 2 * t, size[0] - 14 * t, yb + 2 * t], fill="white", outline="black")
    _text(pd, (size[0] - 14 * t - bar_px / 2, yb - 5 * t), f"{bar_cm} cm", tiny, anchor="md")
    canvas = Image.new("RGB", (width or size[0] + legend_w,
                               height or max(top + size[1], round(top + 8 * t + 20 * t * len(shown)))), "black")
    canvas.paste(panel, (0, top))
    draw = ImageDraw.Draw(canvas)
    draw.text((6 * t, 6 * t), title, fill="white", font=_font(round(16 * t)))
    _legend(draw, size[0] + 6 * t, top + 4 * t, shown, small)
    return canvas


# ------------------------------------------------------------------------------------------- location
def body_centre(ct_las: np.ndarray, k: int) -> Optional[tuple]:
    """LAS (i, j) index centre of the body on axial slice ``k``: the largest region above −300 HU (the table is
    a separate region), its i centroid and its j mid-extent. None when the slice holds no body."""
    body = ct_las[:, :, k] > -300
    labels, n = ndimage.label(body)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    biggest = labels == (int(np.argmax(sizes)) + 1)
    ii, jj = np.nonzero(biggest)
    return float(ii.mean()), (float(jj.min()) + float(jj.max())) / 2.0


def slice_number(lps, lgrid: Grid, dicom: Optional[dict]) -> dict:
    """The image a reader opens for a point: with a DICOM input, the InstanceNumber of the acquired slice
    nearest to it along the slice normal; otherwise the axial slice counted as a viewer shows a series, from the
    head end (1 = most cranial) of the volume's slices."""
    lps = np.asarray(lps, float)
    if dicom and dicom.get("slices"):
        normal = np.asarray(dicom["normal"], float)
        positions = np.asarray([s["position"] for s in dicom["slices"]], float) @ normal
        nearest = int(np.argmin(np.abs(positions - lps @ normal)))
        instance = dicom["slices"][nearest]["instance"]
        if instance is not None:
            return {"kind": "instance", "number": int(instance), "of": len(dicom["slices"]),
                    "text": f"instance {int(instance)}"}
    k = int(np.clip(np.rint(lgrid.physical_to_index(lps)[2]), 0, lgrid.size[2] - 1))
    number = lgrid.size[2] - k
    return {"kind": "slice_from_top", "number": number, "of": lgrid.size[2],
            "text": f"axial slice {number} of {lgrid.size[2]} (from the top)"}


def lesion_location(lps, lgrid: Grid, *, ct_las=None, dicom=None, organ: Optional[StructureLayer] = None) -> dict:
    """A tumor component's place in a reader's words: the image to open (``slice_number``), the patient's
    right or left of the midline (the body's centre on that slice; the scanner's x = 0 without the CT) and by
    how much, anterior or posterior half of the body, and the third of its organ's height it lies in."""
    lps = np.asarray(lps, float)
    idx = lgrid.physical_to_index(lps)
    k = int(np.clip(np.rint(idx[2]), 0, lgrid.size[2] - 1))
    out = {"slice": slice_number(lps, lgrid, dicom)}
    centre = body_centre(ct_las, k) if ct_las is not None else None
    if centre is not None:
        # LAS i runs to the patient's left, j to anterior.
        dx_mm = (idx[0] - centre[0]) * lgrid.spacing[0]
        dy_mm = (idx[1] - centre[1]) * lgrid.spacing[1]
        out["midline"] = "body centre on the slice"
        out["anterior_posterior"] = "anterior" if dy_mm >= 0 else "posterior"
    else:
        dx_mm = float(lps[0])  # LPS x: + to the patient's left
        dy_mm = None
        out["midline"] = "scanner centre line (x = 0; the CT was not available)"
    out["side"] = "left" if dx_mm > 0 else "right"
    out["from_midline_cm"] = round(abs(float(dx_mm)) / 10.0, 1)
    parts = [f"patient's {out['side']}, {out['from_midline_cm']:.1f} cm from the midline"]
    if dy_mm is not None:
        parts.append(f"{out['anterior_posterior']} half")
    if organ is not None:
        k0, k1 = organ.k_range
        if k1 > k0:
            frac = (k - k0) / (k1 - k0)  # 0 caudal end … 1 cranial end
            third = "cranial" if frac > 2 / 3 else "caudal" if frac < 1 / 3 else "middle"
            out["organ_third"] = third
            parts.append(f"{third} third of the {organ.name.replace('_', ' ')}")
    parts.append(out["slice"]["text"])
    out["text"] = "; ".join(parts)
    return out


# ------------------------------------------------------------------------------------------- files
def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# ------------------------------------------------------------------------------------------- builder
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
    notes = []
    timings = {}
    image = source = None
    if pictures:
        reporter.update("read", 0.0, "CT")
        image, source, note = load_run_ct(outdir, report, ct)
        if note:
            notes.append(note)
    ct_kji = sitk.GetArrayViewFromImage(image) if image is not None else None
    grid = Grid.of(image) if image is not None else None
    lgrid = oriented(grid, "LAS") if grid is not None else None
    ct_las = reorient_array(ct_kji, grid, "LAS") if ct_kji is not None else None
    timings["read_ct"] = time.perf_counter() - t0
    t = time.perf_counter()
    dicom = _dicom_of_run(report, source)
    timings["dicom_header"] = time.perf_counter() - t

    # Masks: each read once, for volumes, mean HU and the overview; tumor masks are kept for their pictures.
    t = time.perf_counter()
    overview = Overview(image) if image is not None else None
    entries = report.get("structures", [])
    tumors = report.get("tumors") or {}
    tumor_masks = {}
    organ_rows = []
    layers = {}  # name -> StructureLayer: the pictures' outlines and the organ a lesion lies in
    truth_rows = []
    mask_grid = None
    for n, entry in enumerate(sorted(entries, key=lambda e: e.get("kind") == "tumor")):
        reporter.update("read", (n + 1) / max(1, len(entries)), entry["name"])
        path = outdir / (entry.get("file") or f"{SEG_DIR}/{entry['name']}.nii.gz")
        if not path.is_file():
            notes.append(f"{entry['name']}: mask file {path.name} is missing")
            continue
        mask_image = sitk.ReadImage(str(path))
        mask = sitk.GetArrayFromImage(mask_image)
        voxel_ml = float(np.prod(mask_image.GetSpacing())) / 1000.0
        inside = mask != 0
        mask_grid = mask_grid or Grid.of(mask_image)
        if ct_kji is not None and ct_kji.shape != mask.shape:
            raise InputError(f"{path} is not on the CT's grid ({mask.shape[::-1]} vs {ct_kji.shape[::-1]})")
        layer = structure_layer(entry["name"], entry.get("color") or (255, 0, 0), entry.get("kind"), inside,
                                grid or mask_grid)
        voxels = 0 if layer is None else int(layer.per_k.sum())
        mean_hu = entry.get("mean_hu")
        if layer is not None:
            layers[entry["name"]] = layer
        if ct_las is not None:
            # Within the structure's box only: the same voxels as ct[inside], a fraction of the volume read.
            if layer is not None:
                box = tuple(slice(a, a + n) for a, n in zip(layer.lo, layer.crop.shape))
                mean_hu = round(float(ct_las[box][layer.crop].mean()), 1)
                overview.add(entry["name"], entry.get("color") or (255, 0, 0), mask)
            else:
                mean_hu = None
        entry.update(voxels=voxels, volume_ml=round(voxels * voxel_ml, 4), mean_hu=mean_hu)
        if entry.get("kind") == "tumor":
            tumor_masks[entry["name"]] = mask
        truth_path = outdir / TRUTH_DIR / f"{entry['name']}.nii.gz"
        if truth_path.is_file():
            truth_rows.append(_truth_row(entry["name"], inside, truth_path, voxel_ml,
                                         tumor=entry.get("kind") == "tumor"))
        organ_rows.append({"structure": entry["name"], "kind": entry.get("kind"), "volume_ml": round(voxels * voxel_ml, 2),
                           "mean_hu": None if mean_hu is None else int(round(mean_hu)), "voxels": voxels})
    timings["read_masks"] = time.perf_counter() - t

    t = time.perf_counter()
    reporter.update("measure", 0.0, "tumor components")
    rows_by_tumor = review_rows(outdir, masks=tumor_masks) if tumors else {}
    timings["review_rows"] = time.perf_counter() - t
    colors = {e["name"]: tuple(e.get("color") or (255, 255, 0)) for e in entries}
    loc_grid = lgrid or (oriented(mask_grid, "LAS") if mask_grid is not None else None)
    tumor_rows, summary = [], {}
    comps_by_key = {}
    for name, info in tumors.items():
        mask = tumor_masks.get(name)
        rows = rows_by_tumor.get(name, [])
        current = []
        for row in rows:
            out = _tumor_row(name, row)
            seed = row.get("seed_ijk")
            if mask is not None and seed is not None:
                kji = tuple(int(v) for v in seed[::-1])
                inside_grid = all(0 <= v < s for v, s in zip(kji, mask.shape))
                out["in_mask"] = bool(inside_grid and mask[kji])
            else:
                out["in_mask"] = False
            if out["in_mask"]:
                found = component_at(mask, kji)
                if found is not None:
                    comps_by_key[(name, out["component"])] = found
                    if ct_kji is not None:
                        offset, comp = found
                        region = tuple(slice(int(o), int(o) + s) for o, s in zip(offset, comp.shape))
                        out["mean_hu"] = int(round(float(ct_kji[region][comp].mean())))
            if loc_grid is not None and None not in out["centroid_lps_mm"]:
                out["location"] = lesion_location(out["centroid_lps_mm"], loc_grid, ct_las=ct_las, dicom=dicom,
                                                  organ=layers.get(out["organ"] or ""))
            tumor_rows.append(out)
            if out["status"] != "removed" and row.get("present", True):  # not a kept one a threshold dropped
                current.append(out)
        points = operating_points(operating, name)
        largest = max(current, key=lambda r: r["volume_ml"] or 0.0) if current else None
        summary[name] = {
            "threshold": info.get("threshold"),
            "operating_point": _operating_point_name(points, info.get("threshold")),
            "operating_points": points,
            "count": len(current),
            "kept": sum(1 for r in current if r["status"] == "kept"),
            "to_review": sum(1 for r in current if r["status"] == TO_REVIEW),
            "removed": sum(1 for r in tumor_rows if r["structure"] == name and r["status"] == "removed"),
            "total_volume_ml": round(sum(r["volume_ml"] or 0.0 for r in current), 2),
            "largest": None if largest is None else {
                k: largest[k] for k in ("component", "organ", "volume_ml", "longest_axial_diameter_cm",
                                        "perpendicular_diameter_cm")},
            "gate": info.get("gate"),
            "note": info.get("note"),
        }
        for comp in info.get("components", []):
            comp["longest_axial_diameter_cm"] = cm(comp.get("longest_axial_diameter_mm"))
            comp["perpendicular_diameter_cm"] = cm(comp.get("perpendicular_diameter_mm"))
        if name in report.get("summary", {}):
            report["summary"][name]["largest_diameter_cm"] = summary[name]["largest"]["longest_axial_diameter_cm"] \
                if largest else 0.0
    timings["measure"] = time.perf_counter() - t

    # Pictures, made in memory first: nothing on disk changes until every one of them exists.
    t = time.perf_counter()
    pngs = {}
    lecture_pngs = {}  # pictures/lecture/<key>.png
    picture_info = {}
    structure_pictures = None
    title = f"{_case_name(report, anonymize)} - {(report.get('model') or {}).get('title') or ''}"
    if overview is not None:
        reporter.update("pictures", 0.0, "overview")
        pngs["overview"] = _png_bytes(overview.render(title))
    if ct_las is not None and layers:
        reporter.update("pictures", 0.05, "structures on slices")
        ordered = [layers[e["name"]] for e in entries if e["name"] in layers]
        levels = choose_axial_levels(ordered, lgrid.size[2])

        def level_text(k):
            point = lgrid.index_to_physical([lgrid.size[0] / 2, lgrid.size[1] / 2, k])
            return f"{slice_number(point, lgrid, dicom)['text']}, S {point[2]:.0f} mm"

        pngs["structures_axial"] = _png_bytes(axial_structures_picture(
            ct_las, lgrid, ordered, levels, level_text=level_text, title=f"axial slices: {title}"))
        j = choose_coronal_plane(ordered, lgrid.size[1])
        a_mm = float(-lgrid.index_to_physical([0, j, 0])[1])  # LPS y → RAS A
        pngs["structures_coronal"] = _png_bytes(coronal_structures_picture(
            ct_las, lgrid, ordered, j, levels=levels, title=f"coronal slice at A {a_mm:.0f} mm: {title}"))
        if lecture:
            lecture_pngs["structures_axial"] = _png_bytes(axial_structures_picture(
                ct_las, lgrid, ordered, levels, level_text=level_text, title=f"axial slices: {title}",
                width=LECTURE_WIDTH_PX, text_scale=LECTURE_TEXT))
            lecture_pngs["structures_coronal"] = _png_bytes(coronal_structures_picture(
                ct_las, lgrid, ordered, j, levels=levels, title=f"coronal slice at A {a_mm:.0f} mm: {title}",
                width=LECTURE_WIDTH_PX, height=LECTURE_HEIGHT_PX, text_scale=LECTURE_TEXT))
        structure_pictures = {
            "axial": f"{PICTURES_DIR}/structures_axial.png", "coronal": f"{PICTURES_DIR}/structures_coronal.png",
            "axial_levels": [{"slice": slice_number(lgrid.index_to_physical([0, 0, k]), lgrid, dicom),
                              "s_mm": round(float(lgrid.index_to_physical([0, 0, k])[2]), 1),
                              "structures": [l.name for l in ordered if l.axial(k, ((0, lgrid.size[0]),
                                                                                     (0, lgrid.size[1])))
                                             is not None]} for k in levels],
            "coronal_a_mm": round(a_mm, 1),
            "coronal_structures": [l.name for l in ordered if l.crop.shape and l.lo[1] <= j < l.lo[1] + l.crop.shape[1]
                                   and l.crop[:, j - l.lo[1], :].any()],
        }
    if ct_kji is not None:
        pictured = {}
        for r in tumor_rows:
            key = (r["structure"], r["component"])
            if key not in comps_by_key or r["status"] == "removed":
                continue
            if pictured.get(r["structure"], 0) >= MAX_TUMOR_PICTURES:
                continue
            pictured[r["structure"]] = pictured.get(r["structure"], 0) + 1
            reporter.update("pictures", len(pngs) / max(1, len(comps_by_key) + 1), f"{r['structure']} #{r['component']}")
            offset, comp = comps_by_key[key]
            size = (f"{_fmt(r['longest_axial_diameter_cm'], 1)} x {_fmt(r['perpendicular_diameter_cm'], 1)} cm, "
                    f"{_fmt(r['volume_ml'], 2)} ml")
            img, s_mm = tumor_slice_picture(ct_kji, grid, offset, comp, r["centroid_lps_mm"],
                                            color=colors.get(r["structure"], (255, 255, 0)),
                                            title=f"{r['structure']} #{r['component']}", size_text=size,
                                            longest_mm=(r["longest_axial_diameter_cm"] or 0.0) * 10.0)
            pkey = f"{r['structure']}_{r['component']}"
            pngs[pkey] = _png_bytes(img)
            if lecture:
                lecture_pngs[pkey] = _png_bytes(tumor_slice_picture(
                    ct_kji, grid, offset, comp, r["centroid_lps_mm"], color=colors.get(r["structure"], (255, 255, 0)),
                    title=f"{r['structure']} #{r['component']}", size_text=size,
                    longest_mm=(r["longest_axial_diameter_cm"] or 0.0) * 10.0, px=LECTURE_HEIGHT_PX,
                    text_scale=LECTURE_TEXT)[0])
            r["picture"] = f"{PICTURES_DIR}/{pkey}.png"
            lps = r["centroid_lps_mm"]
            picture_info[pkey] = {"file": r["picture"], "structure": r["structure"], "component": r["component"],
                                  "slice_s_mm": round(s_mm, 1),
                                  "slice": slice_number([lps[0], lps[1], s_mm], lgrid, dicom)}
        for name, count in pictured.items():
            total = sum(1 for r in tumor_rows if r["structure"] == name and r["status"] != "removed")
            if total > count:
                notes.append(f"{name}: pictures of the {count} largest of {total} components (all are in the table)")
    timings["pictures"] = time.perf_counter() - t

    pictures_dir = outdir / PICTURES_DIR
    if "overview" not in pngs and (pictures_dir / "overview.png").is_file():
        pngs["overview"] = (pictures_dir / "overview.png").read_bytes()
        if pictures:
            notes.append("the overview picture is from an earlier report (no CT to redraw it)")
    three_d = outdir / THREE_D_PICTURE
    if three_d.is_file():
        newest_mask = max((p.stat().st_mtime for p in (outdir / SEG_DIR).glob("*.nii.gz")), default=0.0)
        if three_d.stat().st_mtime >= newest_mask:
            pngs["3d"] = three_d.read_bytes()
        else:
            notes.append("pictures/3d.png is older than the masks and was left out; redraw it with "
                         "'python AtlasSeg/AtlasSegModule/AtlasSegRender.py OUTDIR'")

    section = {
        "version": REPORT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "atlasseg_version": __version__,
        "case": _case_name(report, anonymize),
        "units": {"volume": "ml", "diameter": "cm", "attenuation": "HU", "centroid": "mm (RAS)",
                  "location": "slice: DICOM InstanceNumber, else axial slice counted from the head end; side: the "
                              "patient's, from the body's centre on that slice"},
        "model": {k: report.get("model", {}).get(k) for k in ("id", "title", "version", "license")},
        "thresholds": {name: s["threshold"] for name, s in summary.items()},
        "organs": organ_rows,
        "tumor_components": tumor_rows,
        "tumor_summary": summary,
        "pictures": {"overview": f"{PICTURES_DIR}/overview.png" if "overview" in pngs else None,
                     "3d": THREE_D_PICTURE if "3d" in pngs else None,
                     "structures": structure_pictures,
                     "tumors": picture_info,
                     "lecture": [f"{LECTURE_DIR}/{key}.png" for key in lecture_pngs] or None},
        "notes": [_scrub(n, report, anonymize) for n in notes],
        "warnings": [_scrub(w, report, anonymize) for w in report.get("warnings") or []],
        "anonymized": bool(anonymize),
        "header": report_header(report, dicom, anonymize),
        "truth": truth_rows,
    }
    report["report"] = section

    # Every file's content exists in memory before the first one is replaced: a failure on the way (a full
    # disk aside) leaves the previous report whole. Then pictures first, the tables and the page that refer to
    # them next, report.json last.
    t = time.perf_counter()
    reporter.update("write", 0.0, "files")
    section["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    section["timings_s"]["total_before_writing"] = round(time.perf_counter() - t0, 3)
    csv_text = report_csv(report)
    html_text = report_html(report, pngs)
    run = Run(outdir, check=False)
    validate_run_file(report, "report", run.report_path)  # before any file changes: a bad report is never written
    paths = {}
    for key, data in pngs.items():
        if key == "3d":
            paths[key] = three_d
            continue
        paths[key] = pictures_dir / f"{key}.png"
        atomic_write_bytes(data, paths[key])
    if "overview" in pngs and image is not None:
        # The run's own overview.png follows the masks too (after a threshold change it would be stale).
        atomic_write_bytes(pngs["overview"], outdir / "overview.png")
    for key, data in lecture_pngs.items():
        paths[f"lecture/{key}"] = outdir / LECTURE_DIR / f"{key}.png"
        atomic_write_bytes(data, paths[f"lecture/{key}"])
    if lecture:  # a lecture folder holds this report's pictures only (no component a threshold dropped)
        for old in (outdir / LECTURE_DIR).glob("*.png"):
            if old.stem not in lecture_pngs:
                old.unlink()
    if ct_kji is not None:
        _remove_stale_pictures(pictures_dir, tumors, set(pngs))
    csv_path = outdir / "report.csv"
    atomic_write_bytes(csv_text.encode("utf-8"), csv_path)
    html_path = outdir / "report.html"
    atomic_write_bytes(html_text.encode("utf-8"), html_path)
    json_path = run.write_report(report)
    reporter.update("write", 1.0, "done")
    return ReportResult(report, json_path, csv_path, html_path, paths, tuple(notes), time.perf_counter() - t0)


def _remove_stale_pictures(folder: Path, tumors: dict, made: set) -> None:
    """Delete tumor pictures of components that no longer exist (e.g. after a higher threshold)."""
    if not folder.is_dir():
        return
    for name in tumors:
        pattern = re.compile(re.escape(name) + r"_\d+\.png")
        for path in folder.glob(f"{name}_*.png"):
            if pattern.fullmatch(path.name) and path.stem not in made:
                path.unlink(missing_ok=True)


def _tumor_row(name: str, row: dict) -> dict:
    ras = row.get("centroid_ras") or [None, None, None]
    return {
        "structure": name,
        "component": None if row.get("id") is None else int(row["id"]),  # None: removed, no longer numbered
        "organ": row.get("organ"),
        "organ_text": organ_text(row),
        "inside_organ_pct": row.get("inside_organ_pct"),
        "flags": list(row.get("flags") or ()),
        "status": status_text(row),
        "status_text": status_text(row),
        "origin": row.get("origin") or "model",  # "added: probability" / "added: image": a reviewer's click made it
        "volume_ml": _clean(row.get("volume_ml"), 2),
        "longest_axial_diameter_cm": cm(row.get("longest_axial_diameter_mm")),
        "perpendicular_diameter_cm": cm(row.get("perpendicular_diameter_mm")),
        "max_probability": _clean(row.get("max_probability"), 2),
        "mean_probability": _clean(row.get("mean_probability"), 2),
        "mean_hu": None,
        "centroid_ras_mm": [_clean(v, 1) for v in ras],
        "centroid_lps_mm": [_clean(v, 1) for v in row.get("centroid_lps") or [None, None, None]],
        "seed_ijk": row.get("seed_ijk"),
        "picture": None,
    }


# -------------------------------------------------------------------------------------- header, truth
TRUTH_DIR = "ground_truth"  # OUTDIR/ground_truth/<structure>.nii.gz: a known truth (the demo's phantom)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two masks (non-zero = inside); 1.0 when both are empty."""
    a = a != 0
    b = b != 0
    denom = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if denom == 0 else 2.0 * int(np.count_nonzero(a & b)) / denom


def _truth_row(name: str, inside: np.ndarray, truth_path: Path, voxel_ml: float, *, tumor: bool = False) -> dict:
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(truth_path))) != 0  # not a view: the image is temporary
    if truth.shape != inside.shape:
        return {"structure": name, "dice": None, "truth_ml": None, "segmented_ml": None,
                "note": f"{TRUTH_DIR}/{truth_path.name} is not on the masks' grid"}
    row = {"structure": name, "dice": round(dice(inside, truth), 3),
           "truth_ml": round(float(np.count_nonzero(truth)) * voxel_ml, 1),
           "segmented_ml": round(float(np.count_nonzero(inside)) * voxel_ml, 1)}
    if tumor:
        # Lesion by lesion, as 'atlasseg evaluate' counts (any overlap detects a true tumor).
        from ..evaluate import lesion_detection

        d = lesion_detection(inside, truth)
        row["lesions"] = {"truth": d.lesions, "found": len(d.detected), "missed": d.missed,
                          "false_positives": d.false_positives}
    return row


def truth_scores(outdir, names) -> dict:
    """Dice and volumes of each structure's mask in ``outdir/segmentations`` against ``outdir/ground_truth``
    (the numbers the report's truth table shows): name -> {"dice", "truth_ml", "pred_ml"}."""
    outdir = Path(outdir)
    scores = {}
    for name in names:
        truth_path = outdir / TRUTH_DIR / f"{name}.nii.gz"
        pred_path = outdir / SEG_DIR / f"{name}.nii.gz"
        if not (truth_path.is_file() and pred_path.is_file()):
            continue
        pred_image = sitk.ReadImage(str(pred_path))
        row = _truth_row(name, sitk.GetArrayViewFromImage(pred_image) != 0, truth_path,
                         float(np.prod(pred_image.GetSpacing())) / 1000.0)
        scores[name] = {"dice": row["dice"], "truth_ml": row["truth_ml"], "pred_ml": row["segmented_ml"]}
    return scores


def report_header(report: dict, dicom: Optional[dict], anonymize: bool) -> dict:
    """What the page's header says about the case: patient name/ID, study date and series description from a
    DICOM input's first slice, the input's file name (never its folder), the model and its version. With
    ``anonymize`` only the model and the kind of input."""
    inp = report.get("input") or {}
    model = report.get("model") or {}
    header = {"model": model.get("title"), "model_id": model.get("id"), "model_version": model.get("version"),
              "input_format": inp.get("format"), "anonymized": bool(anonymize)}
    if anonymize:
        return header
    path = inp.get("path") or ""
    header["input_name"] = Path(path).name if inp.get("format") != "phantom" else path
    if dicom:
        header.update(dicom["header"])
    elif inp.get("format") == "dicom":
        header["note"] = "DICOM header not available (the input series is no longer at its path)"
    return header


def _scrub(text: str, report: dict, anonymize: bool) -> str:
    """A note or warning without the input's folder (and, anonymized, without its name either)."""
    path = (report.get("input") or {}).get("path") or ""
    if not path or (report.get("input") or {}).get("format") == "phantom":
        return text
    full = str(Path(path))
    name = ANONYMIZED_INPUT if anonymize else Path(full).name
    text = text.replace(full, name)
    parent = str(Path(full).parent)
    if len(parent) > 1:
        text = text.replace(parent + os.sep, "").replace(parent, "")
    if anonymize and Path(full).name:
        text = text.replace(Path(full).name, ANONYMIZED_INPUT)
    return text


# ----------------------------------------------------------------------------------------------- CSV
def report_csv(report: dict) -> str:
    """report.csv: one long table (a "section" column says what each row is) so reports of many cases can be
    concatenated and filtered: "structure" rows (volume, mean HU), "tumor_component" rows (size in cm,
    probabilities, review status, centroid, the image to open and the side), "tumor_summary" rows (count,
    largest, threshold) and, with a known truth (the demo), "truth" rows (Dice, truth and segmented ml)."""
    sec = report["report"]
    common = {"case": sec["case"], "model_id": sec["model"].get("id"), "model_version": sec["model"].get("version")}
    out = _io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in sec["organs"]:
        writer.writerow({**common, "section": "structure", "structure": r["structure"], "kind": r["kind"],
                         "volume_ml": r["volume_ml"], "mean_hu": r["mean_hu"]})
    for r in sec["tumor_components"]:
        ras = r["centroid_ras_mm"]
        writer.writerow({**common, "section": "tumor_component", "structure": r["structure"], "kind": "tumor",
                         "component": r["component"], "organ": r["organ"], "status": r["status"],
                         "inside_organ_pct": r.get("inside_organ_pct"), "flags": "; ".join(r.get("flags") or ()),
                         "origin": r.get("origin") or "model",
                         "volume_ml": r["volume_ml"], "mean_hu": r["mean_hu"],
                         "longest_axial_diameter_cm": r["longest_axial_diameter_cm"],
                         "perpendicular_diameter_cm": r["perpendicular_diameter_cm"],
                         "max_probability": r["max_probability"], "mean_probability": r["mean_probability"],
                         "centroid_r_mm": ras[0], "centroid_a_mm": ras[1], "centroid_s_mm": ras[2],
                         "threshold": sec["tumor_summary"][r["structure"]]["threshold"],
                         "image": ((r.get("location") or {}).get("slice") or {}).get("text"),
                         "side": (r.get("location") or {}).get("side"),
                         "location": (r.get("location") or {}).get("text")})
    for name, s in sec["tumor_summary"].items():
        largest = s["largest"] or {}
        writer.writerow({**common, "section": "tumor_summary", "structure": name, "kind": "tumor",
                         "threshold": s["threshold"], "count": s["count"], "volume_ml": s["total_volume_ml"],
                         "largest_volume_ml": largest.get("volume_ml", 0.0),
                         "largest_diameter_cm": largest.get("longest_axial_diameter_cm", 0.0)})
    for r in sec.get("truth") or []:
        writer.writerow({**common, "section": "truth", "structure": r["structure"], "dice": r["dice"],
                         "truth_ml": r["truth_ml"], "volume_ml": r["segmented_ml"]})
    return out.getvalue()


# ---------------------------------------------------------------------------------------------- HTML
CSS = """
body{font-family:"DejaVu Sans","Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1c2430;background:#fff;
font-size:14px;line-height:1.4}
header{background:#1f3a5f;color:#fff;padding:14px 24px}
header h1{margin:0;font-size:22px;font-weight:600}
header .sub{color:#c9d6e8;font-size:13px;margin-top:2px}
main{padding:8px 24px 24px;max-width:1400px}
h2{font-size:17px;margin:22px 0 8px;color:#1f3a5f;border-bottom:2px solid #1f3a5f;padding-bottom:3px}
table{border-collapse:collapse;margin:4px 0 8px}
th{background:#dde6f2;color:#1c2430;text-align:left;font-weight:600;padding:5px 10px;border:1px solid #b9c6d8}
td{padding:4px 10px;border:1px solid #d3dbe6}
tr:nth-child(even) td{background:#f6f8fb}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.status{display:inline-block;padding:1px 8px;border-radius:9px;font-size:12px;font-weight:600}
.kept{background:#d7f0dc;color:#17612b}.unreviewed{background:#fff1c9;color:#7a5600}td.flags{color:#a3341b;font-size:12px}
.removed{background:#e8e8e8;color:#666;text-decoration:line-through}
tr.removed-row td{color:#888}
.pictures{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
figure{margin:0}
figcaption{font-size:12px;color:#45505e;max-width:420px;margin-top:3px}
img{display:block;border:1px solid #c8d0da}
img.wide{max-width:100%;height:auto}
figure{max-width:100%}
td.where{max-width:330px;font-size:13px}
.case dl{margin:10px 0 4px}
.notes{background:#fff7e0;border-left:4px solid #e0a800;padding:6px 12px;margin:10px 0}
.warnings{background:#fdecea;border-left:4px solid #b3261e;color:#5f1410;padding:6px 12px;margin:10px 0}
.warnings ul{margin:4px 0 2px;padding-left:20px}
.warning{color:#8a1f11;font-weight:600}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 14px;margin:4px 0}
dt{font-weight:600;color:#45505e}dd{margin:0}
footer{color:#6a7583;font-size:12px;padding:10px 24px 20px}
@media print{header{-webkit-print-color-adjust:exact;print-color-adjust:exact}}
"""


def _fmt(value, digits: int = 1) -> str:
    if value is None or _nan(value):
        return "–"
    return f"{float(value):.{digits}f}"


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _header_html(sec: dict, report: dict) -> str:
    """The case block under the title: who and what was scanned (from the DICOM input), the input's file name,
    the model; an anonymized report says what it left out."""
    h = sec.get("header") or {}
    model = f"{h.get('model') or ''} ({h.get('model_id')}), version {h.get('model_version')}"
    rows = []
    if h.get("anonymized"):
        rows.append(("Case", "anonymized: patient name and ID, study date, series description, UIDs and file names "
                             "left out"))
    elif h.get("input_format") == "phantom":
        seed = re.search(r"seed=(\d+)", h.get("input_name") or "")
        rows.append(("Case", "synthetic phantom" + (f", seed {seed.group(1)}" if seed else "")))
    else:
        name = h.get("patient_name")
        pid = h.get("patient_id")
        if name or pid:
            rows.append(("Patient", f"{name or '(no name)'}" + (f" (ID {pid})" if pid else "")))
        elif "patient_name" in h:
            rows.append(("Patient", "(no name or ID in the DICOM header)"))
        if h.get("study_date") or h.get("study_description"):
            rows.append(("Study", " · ".join(v for v in (h.get("study_date"), h.get("study_description")) if v)))
        series = " · ".join(v for v in (h.get("series_description"),
                                        f"series {h['series_number']}" if h.get("series_number") else "",
                                        h.get("modality")) if v)
        if series:
            rows.append(("Series", series))
        if h.get("input_name"):
            rows.append(("Input", f"{h['input_name']} ({h.get('input_format')})"))
        if h.get("note"):
            rows.append(("Note", h["note"]))
    rows.append(("Model", model))
    return ('<div class="case"><dl>' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows)
            + "</dl></div>")


def report_html(report: dict, pngs: dict) -> str:
    """The self-contained report page (pictures from ``pngs``: key -> PNG bytes, inlined as data: URIs)."""
    sec = report["report"]
    model = report.get("model", {})
    inp = report.get("input", {})
    settings = report.get("settings", {})
    anonymized = sec.get("anonymized", False)
    title = "AtlasSeg report" + ("" if anonymized else f": {sec['case']}")
    parts = [f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{CSS}</style></head><body>
<header><h1>{_e(title)}</h1>
<div class="sub">{_e(model.get('title'))} {_e(model.get('version'))} &middot; report {_e(sec['created'])} &middot;
research use only, not for diagnosis</div></header>
<main>"""]
    parts.append(_header_html(sec, report))
    warnings = sec.get("warnings", report.get("warnings") or [])
    if warnings:
        # First on the page: a wrong model, a scan without an abdomen or an implausible label outweighs any number.
        parts.append(f'<div class="warnings" id="warnings"><strong>{len(warnings)} warning'
                     f'{"s" if len(warnings) != 1 else ""}: check before using these results</strong><ul>'
                     + "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul></div>")
    if sec["notes"]:
        parts.append('<div class="notes">' + "<br>".join(_e(n) for n in sec["notes"]) + "</div>")

    # A known truth (the demo) first: it says how far every number below can be trusted.
    truth = sec.get("truth") or []
    if truth:
        parts.append('<h2 id="truth">Truth and Dice</h2><p>Each mask against the known truth in '
                     f"<code>{TRUTH_DIR}/</code>" + (" (the synthetic phantom's labels)" if inp.get("format") == "phantom"
                                                     else "") + ": Dice = 2 |A &cap; B| / (|A| + |B|).</p>"
                     "<table><tr><th>Structure</th><th>Dice</th><th>Truth (ml)</th><th>Segmented (ml)</th>"
                     "<th>Difference (ml)</th></tr>")
        for r in truth:
            diff = None if r.get("truth_ml") is None else r["segmented_ml"] - r["truth_ml"]
            parts.append(f"<tr><td>{_e(r['structure'])}</td><td class=num>{_fmt(r.get('dice'), 3)}</td>"
                         f"<td class=num>{_fmt(r.get('truth_ml'), 1)}</td>"
                         f"<td class=num>{_fmt(r.get('segmented_ml'), 1)}</td>"
                         f"<td class=num>{'–' if diff is None else f'{diff:+.1f}'}</td></tr>")
        parts.append("</table>")
        for r in truth:
            les = r.get("lesions")
            if les:
                parts.append(f"<p id=\"lesions-{_e(r['structure'])}\"><strong>{_e(r['structure'])}, lesion by lesion"
                             f":</strong> {les['found']} of {les['truth']} true tumor{'s' if les['truth'] != 1 else ''} "
                             f"found, {les['missed']} missed, {les['false_positives']} false positive"
                             f"{'s' if les['false_positives'] != 1 else ''} (a true tumor is found when a segmented "
                             "component overlaps it; a component overlapping none is a false positive; "
                             "<code>atlasseg evaluate</code> gives the FROC)</p>")

    parts.append("<h2>Tumors</h2>")
    if sec["tumor_summary"]:
        parts.append("<table><tr><th>Tumor type</th><th>Count</th><th>Largest (ml)</th><th>Largest diameter (cm)</th>"
                     "<th>Total (ml)</th><th>Threshold</th><th>Review</th></tr>")
        for name, s in sec["tumor_summary"].items():
            largest = s["largest"] or {}
            point = f" ({s['operating_point'].replace('_', ' ')})" if s["operating_point"] else ""
            review = f"{s['kept']} kept, {s['to_review']} to review, {s['removed']} removed"
            note = f'<br><span class="warning">{_e(s["note"])}</span>' if s.get("note") else ""
            parts.append(f"<tr><td>{_e(name)}{note}</td><td class=num>{s['count']}</td>"
                         f"<td class=num>{_fmt(largest.get('volume_ml'), 2)}</td>"
                         f"<td class=num>{_fmt(largest.get('longest_axial_diameter_cm'))} &times; "
                         f"{_fmt(largest.get('perpendicular_diameter_cm'))}</td>"
                         f"<td class=num>{_fmt(s['total_volume_ml'], 2)}</td>"
                         f"<td class=num>{_fmt(s['threshold'], 2)}{_e(point)}</td><td>{_e(review)}</td></tr>")
        parts.append("</table>")
        parts.append(_components_table(sec["tumor_components"]))
    else:
        parts.append("<p>This model segments no tumors.</p>")

    tumor_pictures = sec["pictures"]["tumors"]
    if tumor_pictures:
        parts.append('<h2>Tumor slices</h2><div class="pictures">')
        for key, info in tumor_pictures.items():
            if key not in pngs:
                continue
            where = (info.get("slice") or {}).get("text")
            parts.append(f'<figure><img decoding="sync" alt="axial slice of {_e(info["structure"])} #{info["component"]}" '
                         f'src="{_data_uri(pngs[key])}"><figcaption>{_e(info["structure"])} #{info["component"]}: '
                         f"axial slice at S {info['slice_s_mm']:.1f} mm{f' ({_e(where)})' if where else ''} "
                         "through its centroid; outline of the component; the diameters are the longest axial one "
                         "(on any slice) and its perpendicular.</figcaption></figure>")
        parts.append("</div>")

    structures = sec["pictures"].get("structures") or {}
    overview = pngs.get("overview")
    three_d = pngs.get("3d")
    if structures or overview or three_d:
        parts.append('<h2>Structures on the images</h2><div class="pictures">')
        if "structures_axial" in pngs:
            levels = structures.get("axial_levels") or []
            parts.append(f'<figure><img decoding="sync" class="wide" alt="axial slices with every structure outlined" '
                         f'src="{_data_uri(pngs["structures_axial"])}"><figcaption>Axial slices ('
                         f"{len(levels)}) chosen so that every structure is seen at half its largest area or more "
                         "in one of them; each structure outlined in its colour and named (legend on the right). "
                         "Radiological view: anterior up, patient's right on the left; HU -150...250."
                         "</figcaption></figure>")
        if "structures_coronal" in pngs:
            parts.append(f'<figure><img decoding="sync" class="wide" alt="coronal slice with the structures outlined" '
                         f'src="{_data_uri(pngs["structures_coronal"])}"><figcaption>Coronal slice at A '
                         f"{_fmt(structures.get('coronal_a_mm'), 0)} mm, through the most structures "
                         f"({len(structures.get('coronal_structures') or [])}); yellow ticks: the axial slices' "
                         "levels. Head up, patient's right on the left, true proportions.</figcaption></figure>")
        if overview:
            parts.append(f'<figure><img decoding="sync" class="wide" alt="frontal projection with the structures tinted" '
                         f'src="{_data_uri(overview)}">'
                         "<figcaption>Frontal projection (sum along anterior-posterior, HU -150...250, 1 mm pixels); "
                         "each structure tinted in its colour. Patient's right on the left.</figcaption></figure>")
        if three_d:
            parts.append(f'<figure><img decoding="sync" alt="3D view of the segmentation from the front" style="max-width:460px" '
                         f'src="{_data_uri(three_d)}"><figcaption>3D surfaces, anterior view (Slicer renderer).'
                         "</figcaption></figure>")
        parts.append("</div>")

    parts.append("<h2>Organs and structures</h2><table><tr><th>Structure</th><th>Kind</th><th>Volume (ml)</th>"
                 "<th>Mean HU</th></tr>")
    for r in sec["organs"]:
        parts.append(f"<tr><td>{_e(r['structure'])}</td><td>{_e(r['kind'])}</td>"
                     f"<td class=num>{_fmt(r['volume_ml'], 1)}</td><td class=num>{_fmt(r['mean_hu'], 0)}</td></tr>")
    parts.append("</table>")

    parts.append("<h2>Model and settings</h2><dl>")
    grid = inp.get("grid") or {}
    header = sec.get("header") or {}
    facts = [
        ("Model", f"{model.get('title')} ({model.get('id')}, version {model.get('version')})"),
        ("License", model.get("license")),
        ("Citation", model.get("citation")),
        ("Thresholds", ", ".join(f"{k} {v}" for k, v in sec["thresholds"].items()) or "–"),
        ("Operating points", "; ".join(
            f"{k}: " + ", ".join(f"{n.replace('_', ' ')} {v}" for n, v in s["operating_points"].items())
            for k, s in sec["tumor_summary"].items()) or "–"),
        ("Device", f"{settings.get('device')}{' (fast, coarse spacing)' if settings.get('fast') else ''}"),
        ("Post-processing", "on" if settings.get("postprocess", True) else "off (raw masks)"),
        ("Input", f"{ANONYMIZED_INPUT if anonymized else header.get('input_name')} ({inp.get('format')})"),
        ("Series UID", "–" if anonymized else inp.get("series_uid") or "–"),
        ("Grid", f"{' x '.join(str(v) for v in grid.get('size', []))} voxels, "
                 f"{' x '.join(f'{v:.2f}' for v in grid.get('spacing', []))} mm"),
        ("Run", report.get("created")),
    ]
    for label, value in facts:
        parts.append(f"<dt>{_e(label)}</dt><dd>{_e(value)}</dd>")
    parts.append("</dl></main>")
    parts.append(f"<footer>AtlasSeg {_e(sec['atlasseg_version'])}. Volumes in ml, diameters in cm, centroids in mm "
                 "(RAS). Location: the image to open (DICOM instance number, or the axial slice counted from the "
                 "head end) and the patient's side of the body's midline on that slice. Segmentations made by a "
                 "model: check every finding on the images. Research use only.</footer></body></html>\n")
    return "\n".join(parts)


def _components_table(rows: list) -> str:
    if not rows:
        return "<p>No tumor components at the current thresholds.</p>"
    out = ["<table><tr><th>Tumor</th><th>#</th><th>Organ</th><th>Volume (ml)</th><th>Diameters (cm)</th>"
           "<th>Max p</th><th>Mean p</th><th>Mean HU</th><th>In organ</th><th>Flags</th><th>Review</th><th>Location</th>"
           "<th>Centroid R, A, S (mm)</th></tr>"]
    for r in rows:
        status = r["status"]
        label = r.get("status_text") or status_text(r)
        if (r.get("origin") or "model") != "model":
            label = f"{label} ({r['origin']})"  # a lesion a reviewer added by a click says so
        css = {TO_REVIEW: "unreviewed", "kept, below threshold": "kept"}.get(status, status)
        pct = r.get("inside_organ_pct")
        flags = "; ".join(r.get("flags") or ()) or "–"
        ras = ", ".join(_fmt(v, 1) for v in r["centroid_ras_mm"])
        cls = ' class="removed-row"' if status == "removed" else ""
        where = (r.get("location") or {}).get("text") or "–"
        out.append(f"<tr{cls}><td>{_e(r['structure'])}</td><td class=num>{'&ndash;' if r['component'] is None else r['component']}</td><td>{_e(r.get('organ_text') or r['organ'])}</td>"
                   f"<td class=num>{_fmt(r['volume_ml'], 2)}</td>"
                   f"<td class=num>{_fmt(r['longest_axial_diameter_cm'])} &times; {_fmt(r['perpendicular_diameter_cm'])}</td>"
                   f"<td class=num>{_fmt(r['max_probability'], 2)}</td><td class=num>{_fmt(r['mean_probability'], 2)}</td>"
                   f"<td class=num>{_fmt(r['mean_hu'], 0)}</td>"
                   f"<td class=num>{'–' if pct is None else _fmt(pct, 0) + ' %'}</td><td class=flags>{_e(flags)}</td>"
                   f'<td><span class="status {_e(css)}">{_e(label)}</span></td><td class="where">{_e(where)}</td>'
                   f"<td class=num>{ras}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def table_rows(report: dict) -> list:
    """The report's rows as strings for a GUI table (the Slicer module's Report section): one row per tumor
    component, then one per structure. Columns: ``TABLE_COLUMNS``."""
    sec = report.get("report")
    if not sec:
        return []
    rows = []
    for r in sec["tumor_components"]:
        name = f"{r['structure']} (removed)" if r["component"] is None else f"{r['structure']} #{r['component']}"
        organ = r.get("organ_text") or r["organ"] or ""
        if r.get("flags"):
            organ = f"{organ} ⚑ {'; '.join(r['flags'])}"
        rows.append([name, organ, _fmt(r["volume_ml"], 2),
                     f"{_fmt(r['longest_axial_diameter_cm'])} x {_fmt(r['perpendicular_diameter_cm'])}",
                     _fmt(r["max_probability"], 2), (r.get("status_text") or status_text(r))
                     + ("" if (r.get("origin") or "model") == "model" else f" ({r['origin']})")])
    for r in sec["organs"]:
        rows.append([r["structure"], r["kind"] or "", _fmt(r["volume_ml"], 1), "", "",
                     "" if r["mean_hu"] is None else f"{r['mean_hu']} HU"])
    return rows


TABLE_COLUMNS = ("Structure", "Organ / kind", "Volume (ml)", "Diameters (cm)", "Max p", "Review / HU")


def load_report(outdir) -> dict:
    """The report.json of an output folder (with its "report" section when a report was built)."""
    return load_run(outdir)[0]


# ----------------------------------------------------------------------------------------------- CLI
def cmd_report(args, sink=None) -> int:
    """``atlasseg report OUTDIR [--ct CT] [--no-pictures] [--anonymize]`` (the parser is in cli.py)."""
    result = build_report(args.outdir, ct=args.ct, pictures=not args.no_pictures,
                          anonymize=getattr(args, "anonymize", None), progress=sink,
                          lecture=getattr(args, "lecture", False))
    if sink is not None:
        sink.close()
    sec = result.report["report"]
    print(f"report of {sec['case']} in {result.seconds:.1f} s:")
    print(f"  {result.html_path}\n  {result.csv_path}\n  {result.json_path}")
    for key, path in sorted(result.pictures.items()):
        print(f"  {path}")
    for name, s in sec["tumor_summary"].items():
        largest = s["largest"]
        text = (f"largest {largest['volume_ml']:.2f} ml, {_fmt(largest['longest_axial_diameter_cm'])} x "
                f"{_fmt(largest['perpendicular_diameter_cm'])} cm") if largest else "none"
        print(f"{name}: {s['count']} component(s) at threshold {s['threshold']}, {text}; "
              f"{s['to_review']} to review, {s['kept']} kept, {s['removed']} removed")
    for note in result.notes:
        print(f"note: {note}")
    return 0
