"""A run's report: the numbers and review pictures people read, made from an AtlasSeg output folder.

``build_report(OUTDIR)`` writes, each file through a temporary file and a rename (never half-written)::

    report.json                    the run's report with every existing key kept, plus a "report" section
                                   (organs, tumor components, per-tumor summary, thresholds, pictures)
    report.csv                     one table: a row per structure, per tumor component, per tumor type
    report.html                    self-contained page: CSS inline, pictures inlined as data: URIs, no scripts
    pictures/overview.png          frontal projection for label review (MODELS.md §5, ``overview.py``); the
                                   run's OUTDIR/overview.png is replaced by it, so it follows threshold changes
    pictures/<tumor>_<id>.png      axial slice through each tumor component's centroid: outline, size, scale
    pictures/3d.png                not made here (AtlasSegLib never imports vtk): ``AtlasSeg/AtlasSegModule/AtlasSegRender.py``
                                   renders it with Slicer's displayable managers; included when newer than the masks

Units are the ones a radiologist reads: volumes in ml (2 decimals), diameters in cm (1 decimal, longest axial
diameter and the longest extent perpendicular to it in the same slice), attenuation in HU (integer), centroids in
mm (RAS, 1 decimal). The run's own mm values stay in ``tumors.<name>.components``; cm fields are added beside them.

Review status comes from the sensitivity workflow (``review.review_rows``): "kept", "removed" or "unreviewed".
Components a reviewer removed are listed (status "removed") but count in no total.
"""
from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import io as _io
import json
import logging
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw
from scipy import ndimage

from . import __version__
from .errors import InputError
from .geometry import Grid, oriented, reorient_array
from .io import read_image
from .outputs import SEG_DIR, load_run
from .overview import WINDOW_HU, Overview, _font
from .progress import Reporter
from .review import component_at, operating_points, review_rows, status_text

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
CSV_COLUMNS = ("section", "case", "model_id", "model_version", "structure", "kind", "component", "organ", "status",
               "volume_ml", "mean_hu", "longest_axial_diameter_cm", "perpendicular_diameter_cm", "max_probability",
               "mean_probability", "centroid_r_mm", "centroid_a_mm", "centroid_s_mm", "threshold", "count",
               "largest_volume_ml", "largest_diameter_cm")
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
def _case_name(report: dict) -> str:
    path = (report.get("input") or {}).get("path") or ""
    name = Path(path).name or path
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nhdr"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name or "case"


def _same_grid(image: sitk.Image, grid: dict, tolerance_mm: float = 1e-3) -> bool:
    return not Grid.of(image).differences(Grid.from_dict(grid), tolerance_mm)


def _load_ct(outdir: Path, report: dict, ct) -> tuple:
    """The CT the masks were made from: ``ct`` (a path or an image) if given, else the run's input path, else
    OUTDIR/ct.nii.gz (the demo keeps its phantom there). Returns ``(image or None, note or None)``."""
    grid = (report.get("input") or {}).get("grid")
    if ct is not None:
        image = ct if isinstance(ct, sitk.Image) else read_image(ct)[0]
        if grid and not _same_grid(image, grid):
            raise InputError(f"the CT {ct if not isinstance(ct, sitk.Image) else '(image)'} is not the one this run "
                             f"segmented (its grid differs from report.json's input grid {grid['size']}); give the "
                             "run's input CT")
        return image, None
    candidates = []
    source = (report.get("input") or {}).get("path")
    if source and Path(source).exists():
        candidates.append((Path(source), (report.get("input") or {}).get("series_uid")))
    if (outdir / "ct.nii.gz").is_file():
        candidates.append((outdir / "ct.nii.gz", None))
    for path, series in candidates:
        try:
            image = read_image(path, series_uid=series if path.is_dir() else None)[0]
        except InputError as exc:
            log.warning("cannot read the run's CT %s: %s", path, exc)
            continue
        if grid is None or _same_grid(image, grid):
            return image, None
        log.warning("%s is not on the run's input grid; not used for pictures", path)
    return None, ("the CT was not found (the run's input path is gone): pictures and mean HU need it; "
                  "pass the CT with --ct")


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
                        px: int = TUMOR_PICTURE_PX) -> tuple:
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
    edge = ndimage.binary_dilation(edge, iterations=1)
    rgb = np.asarray(picture).copy()
    rgb[edge] = np.asarray(color, np.uint8)
    picture = Image.fromarray(rgb, "RGB")

    draw = ImageDraw.Draw(picture)
    font, small = _font(16), _font(13)
    w, h = picture.size
    _text(draw, (6, 5), title, font)
    _text(draw, (6, 25), size_text, small, fill=tuple(int(v) for v in color))
    _text(draw, (w / 2, 6), "A", font, fill="yellow", anchor="ma")
    _text(draw, (w / 2, h - 6), "P", font, fill="yellow", anchor="md")
    _text(draw, (6, h / 2), "R", font, fill="yellow", anchor="lm")
    _text(draw, (w - 6, h / 2), "L", font, fill="yellow", anchor="rm")
    bar_cm = _scale_bar_cm(width_mm)
    bar_px = bar_cm * 10.0 * scale
    y = h - 14
    draw.rectangle([w - 10 - bar_px, y - 2, w - 10, y + 2], fill="white", outline="black")
    _text(draw, (w - 10 - bar_px / 2, y - 6), f"{bar_cm} cm", small, anchor="md")
    s_mm = float(lgrid.index_to_physical([centre[0], centre[1], k])[2])  # LPS z = RAS S
    return picture, s_mm


# ------------------------------------------------------------------------------------------- files
def _atomic_write_bytes(data: bytes, path: Path) -> None:
    """Write through a temporary file in the same folder, then rename. Readable by all (0644): reports are
    shared, and mkstemp's private 0600 would keep a web server or a colleague's account out."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# ------------------------------------------------------------------------------------------- builder
def _load_folder(outdir: Path) -> tuple:
    """report.json and the card's operating points. The card is read as plain JSON: a report needs only its
    operating points, and a folder written from a Slicer segmentation carries a card of classes, not of a model."""
    rp, cp = outdir / "report.json", outdir / "card.json"
    if not rp.is_file():
        raise InputError(f"{outdir} is not an AtlasSeg output folder (no report.json); give the -o folder of an "
                         "'atlasseg segment' run")
    try:
        report = json.loads(rp.read_text(encoding="utf-8"))
        card = json.loads(cp.read_text(encoding="utf-8")) if cp.is_file() else {}
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the run's report.json/card.json in {outdir}: {exc}") from None
    return report, card.get("operating_points") or {}


def build_report(outdir, *, ct=None, pictures: bool = True, progress=None, cancel=None) -> ReportResult:
    """Write report.json (extended), report.csv, report.html and pictures/*.png for an AtlasSeg output folder.

    Args:
        outdir: the folder an ``atlasseg segment`` / ``demo`` run wrote (``report.json``, ``card.json``,
            ``segmentations/``).
        ct: the CT the run segmented (path or ``sitk.Image``); default: the run's input path, else
            ``OUTDIR/ct.nii.gz``. Without a CT the tables are written (mean HU from the run) but no pictures.
        pictures: False writes the tables and page without making pictures (kept ones are reused).

    Raises:
        InputError: ``outdir`` is not an output folder, or ``ct`` is not the CT the run segmented.
    """
    t0 = time.perf_counter()
    reporter = Reporter(progress=progress, cancel=cancel, stages={"read": 0.4, "measure": 0.2, "pictures": 0.3,
                                                                  "write": 0.1})
    outdir = Path(outdir)
    report, operating = _load_folder(outdir)
    notes = []
    timings = {}
    image = None
    if pictures:
        reporter.update("read", 0.0, "CT")
        image, note = _load_ct(outdir, report, ct)
        if note:
            notes.append(note)
    ct_kji = sitk.GetArrayViewFromImage(image) if image is not None else None
    grid = Grid.of(image) if image is not None else None
    timings["read_ct"] = time.perf_counter() - t0

    # Masks: each read once, for volumes, mean HU and the overview; tumor masks are kept for their pictures.
    t = time.perf_counter()
    overview = Overview(image) if image is not None else None
    entries = report.get("structures", [])
    tumors = report.get("tumors") or {}
    tumor_masks = {}
    organ_rows = []
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
        voxels = int(np.count_nonzero(inside))
        mean_hu = entry.get("mean_hu")
        if ct_kji is not None:
            if ct_kji.shape != mask.shape:
                raise InputError(f"{path} is not on the CT's grid ({mask.shape[::-1]} vs {ct_kji.shape[::-1]})")
            mean_hu = round(float(ct_kji[inside].mean()), 1) if voxels else None
            if voxels:
                overview.add(entry["name"], entry.get("color") or (255, 0, 0), mask)
        entry.update(voxels=voxels, volume_ml=round(voxels * voxel_ml, 4), mean_hu=mean_hu)
        if entry.get("kind") == "tumor":
            tumor_masks[entry["name"]] = mask
        organ_rows.append({"structure": entry["name"], "kind": entry.get("kind"), "volume_ml": round(voxels * voxel_ml, 2),
                           "mean_hu": None if mean_hu is None else int(round(mean_hu)), "voxels": voxels})
    timings["read_masks"] = time.perf_counter() - t

    t = time.perf_counter()
    reporter.update("measure", 0.0, "tumor components")
    rows_by_tumor = review_rows(outdir, masks=tumor_masks) if tumors else {}
    timings["review_rows"] = time.perf_counter() - t
    colors = {e["name"]: tuple(e.get("color") or (255, 255, 0)) for e in entries}
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
            "to_review": sum(1 for r in current if r["status"] == "unreviewed"),
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
    picture_info = {}
    if overview is not None:
        reporter.update("pictures", 0.0, "overview")
        pngs["overview"] = _png_bytes(overview.render(
            f"{_case_name(report)} - {(report.get('model') or {}).get('title') or ''}"))
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
            r["picture"] = f"{PICTURES_DIR}/{pkey}.png"
            picture_info[pkey] = {"file": r["picture"], "structure": r["structure"], "component": r["component"],
                                  "slice_s_mm": round(s_mm, 1)}
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
        "case": _case_name(report),
        "units": {"volume": "ml", "diameter": "cm", "attenuation": "HU", "centroid": "mm (RAS)"},
        "model": {k: report.get("model", {}).get(k) for k in ("id", "title", "version", "license")},
        "thresholds": {name: s["threshold"] for name, s in summary.items()},
        "organs": organ_rows,
        "tumor_components": tumor_rows,
        "tumor_summary": summary,
        "pictures": {"overview": f"{PICTURES_DIR}/overview.png" if "overview" in pngs else None,
                     "3d": THREE_D_PICTURE if "3d" in pngs else None,
                     "tumors": picture_info},
        "notes": notes,
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
    json_text = json.dumps(report, indent=1)
    paths = {}
    for key, data in pngs.items():
        if key == "3d":
            paths[key] = three_d
            continue
        paths[key] = pictures_dir / f"{key}.png"
        _atomic_write_bytes(data, paths[key])
    if "overview" in pngs and image is not None:
        # The run's own overview.png follows the masks too (after a threshold change it would be stale).
        _atomic_write_bytes(pngs["overview"], outdir / "overview.png")
    if ct_kji is not None:
        _remove_stale_pictures(pictures_dir, tumors, set(pngs))
    csv_path = outdir / "report.csv"
    _atomic_write_bytes(csv_text.encode("utf-8"), csv_path)
    html_path = outdir / "report.html"
    _atomic_write_bytes(html_text.encode("utf-8"), html_path)
    json_path = outdir / "report.json"
    _atomic_write_bytes(json_text.encode("utf-8"), json_path)
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
        "status": row.get("status", "unreviewed"),
        "status_text": status_text(row),
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


# ----------------------------------------------------------------------------------------------- CSV
def report_csv(report: dict) -> str:
    """report.csv: one long table (a "section" column says what each row is) so reports of many cases can be
    concatenated and filtered: "structure" rows (volume, mean HU), "tumor_component" rows (size in cm,
    probabilities, review status, centroid) and "tumor_summary" rows (count, largest, threshold)."""
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
                         "volume_ml": r["volume_ml"], "mean_hu": r["mean_hu"],
                         "longest_axial_diameter_cm": r["longest_axial_diameter_cm"],
                         "perpendicular_diameter_cm": r["perpendicular_diameter_cm"],
                         "max_probability": r["max_probability"], "mean_probability": r["mean_probability"],
                         "centroid_r_mm": ras[0], "centroid_a_mm": ras[1], "centroid_s_mm": ras[2],
                         "threshold": sec["tumor_summary"][r["structure"]]["threshold"]})
    for name, s in sec["tumor_summary"].items():
        largest = s["largest"] or {}
        writer.writerow({**common, "section": "tumor_summary", "structure": name, "kind": "tumor",
                         "threshold": s["threshold"], "count": s["count"], "volume_ml": s["total_volume_ml"],
                         "largest_volume_ml": largest.get("volume_ml", 0.0),
                         "largest_diameter_cm": largest.get("longest_axial_diameter_cm", 0.0)})
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
.kept{background:#d7f0dc;color:#17612b}.unreviewed{background:#fff1c9;color:#7a5600}
.removed{background:#e8e8e8;color:#666;text-decoration:line-through}
tr.removed-row td{color:#888}
.pictures{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
figure{margin:0}
figcaption{font-size:12px;color:#45505e;max-width:420px;margin-top:3px}
img{display:block;border:1px solid #c8d0da}
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


def report_html(report: dict, pngs: dict) -> str:
    """The self-contained report page (pictures from ``pngs``: key -> PNG bytes, inlined as data: URIs)."""
    sec = report["report"]
    model = report.get("model", {})
    inp = report.get("input", {})
    settings = report.get("settings", {})
    parts = [f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>AtlasSeg report: {_e(sec['case'])}</title>
<style>{CSS}</style></head><body>
<header><h1>AtlasSeg report: {_e(sec['case'])}</h1>
<div class="sub">{_e(model.get('title'))} {_e(model.get('version'))} &middot; report {_e(sec['created'])} &middot;
research use only, not for diagnosis</div></header>
<main>"""]
    warnings = report.get("warnings") or []
    if warnings:
        # First on the page: a wrong model, a scan without an abdomen or an implausible label outweighs any number.
        parts.append(f'<div class="warnings" id="warnings"><strong>{len(warnings)} warning'
                     f'{"s" if len(warnings) != 1 else ""}: check before using these results</strong><ul>'
                     + "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul></div>")
    if sec["notes"]:
        parts.append('<div class="notes">' + "<br>".join(_e(n) for n in sec["notes"]) + "</div>")

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

    overview = pngs.get("overview")
    three_d = pngs.get("3d")
    if overview or three_d:
        parts.append('<h2>Overview</h2><div class="pictures">')
        if overview:
            parts.append(f'<figure><img alt="frontal projection with the structures tinted" src="{_data_uri(overview)}">'
                         "<figcaption>Frontal projection (sum along anterior-posterior, HU -150...250, 1 mm pixels); "
                         "each structure tinted in its colour. Patient's right on the left.</figcaption></figure>")
        if three_d:
            parts.append(f'<figure><img alt="3D view of the segmentation from the front" style="max-width:460px" '
                         f'src="{_data_uri(three_d)}"><figcaption>3D surfaces, anterior view (Slicer renderer).'
                         "</figcaption></figure>")
        parts.append("</div>")

    tumor_pictures = sec["pictures"]["tumors"]
    if tumor_pictures:
        parts.append('<h2>Tumor slices</h2><div class="pictures">')
        for key, info in tumor_pictures.items():
            if key not in pngs:
                continue
            parts.append(f'<figure><img alt="axial slice of {_e(info["structure"])} #{info["component"]}" '
                         f'src="{_data_uri(pngs[key])}"><figcaption>{_e(info["structure"])} #{info["component"]}: '
                         f"axial slice at S {info['slice_s_mm']:.1f} mm through its centroid; outline of the "
                         "component; the diameters are the longest axial one (on any slice) and its "
                         "perpendicular.</figcaption></figure>")
        parts.append("</div>")

    parts.append("<h2>Organs and structures</h2><table><tr><th>Structure</th><th>Kind</th><th>Volume (ml)</th>"
                 "<th>Mean HU</th></tr>")
    for r in sec["organs"]:
        parts.append(f"<tr><td>{_e(r['structure'])}</td><td>{_e(r['kind'])}</td>"
                     f"<td class=num>{_fmt(r['volume_ml'], 1)}</td><td class=num>{_fmt(r['mean_hu'], 0)}</td></tr>")
    parts.append("</table>")

    parts.append("<h2>Model and settings</h2><dl>")
    grid = inp.get("grid") or {}
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
        ("Input", f"{inp.get('path')} ({inp.get('format')})"),
        ("Series UID", inp.get("series_uid") or "–"),
        ("Grid", f"{' x '.join(str(v) for v in grid.get('size', []))} voxels, "
                 f"{' x '.join(f'{v:.2f}' for v in grid.get('spacing', []))} mm"),
        ("Run", report.get("created")),
    ]
    for label, value in facts:
        parts.append(f"<dt>{_e(label)}</dt><dd>{_e(value)}</dd>")
    parts.append("</dl></main>")
    parts.append(f"<footer>AtlasSeg {_e(sec['atlasseg_version'])}. Volumes in ml, diameters in cm, centroids in mm "
                 "(RAS). Segmentations made by a model: check every finding on the images. Research use only."
                 "</footer></body></html>\n")
    return "\n".join(parts)


def _components_table(rows: list) -> str:
    if not rows:
        return "<p>No tumor components at the current thresholds.</p>"
    out = ["<table><tr><th>Tumor</th><th>#</th><th>Organ</th><th>Volume (ml)</th><th>Diameters (cm)</th>"
           "<th>Max p</th><th>Mean p</th><th>Mean HU</th><th>Review</th><th>Centroid R, A, S (mm)</th></tr>"]
    for r in rows:
        status = r["status"]
        label = r.get("status_text") or {"unreviewed": "to review"}.get(status, status)
        ras = ", ".join(_fmt(v, 1) for v in r["centroid_ras_mm"])
        cls = ' class="removed-row"' if status == "removed" else ""
        out.append(f"<tr{cls}><td>{_e(r['structure'])}</td><td class=num>{'&ndash;' if r['component'] is None else r['component']}</td><td>{_e(r['organ'])}</td>"
                   f"<td class=num>{_fmt(r['volume_ml'], 2)}</td>"
                   f"<td class=num>{_fmt(r['longest_axial_diameter_cm'])} &times; {_fmt(r['perpendicular_diameter_cm'])}</td>"
                   f"<td class=num>{_fmt(r['max_probability'], 2)}</td><td class=num>{_fmt(r['mean_probability'], 2)}</td>"
                   f"<td class=num>{_fmt(r['mean_hu'], 0)}</td>"
                   f'<td><span class="status {_e(status)}">{_e(label)}</span></td><td class=num>{ras}</td></tr>')
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
        rows.append([name, r["organ"] or "", _fmt(r["volume_ml"], 2),
                     f"{_fmt(r['longest_axial_diameter_cm'])} x {_fmt(r['perpendicular_diameter_cm'])}",
                     _fmt(r["max_probability"], 2),
                     r.get("status_text") or {"unreviewed": "to review"}.get(r["status"], r["status"])])
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
    """``atlasseg report OUTDIR [--ct CT] [--no-pictures]`` (the parser is in cli.py)."""
    result = build_report(args.outdir, ct=args.ct, pictures=not args.no_pictures, progress=sink)
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
