"""The report's measure step: the run's CT found and read again (``load_run_ct``), each mask read once for its
volume in ml and mean HU, each tumor component's row in a radiologist's units (cm, ml, HU, review status) and its
location in a reader's words (the image to open, the side of the midline, the third of its organ), and the
summary per tumor type. Also the ``StructureLayer`` (a mask cropped to its box in LAS order) that the pictures
draw and the location reads. Nothing here draws or writes a file."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..errors import InputError
from ..evaluate import TRUTH_DIR, truth_row
from ..geometry import Grid, oriented, reorient_array
from ..io import SourceInfo, read_image
from ..masks import bounding_slices
from ..outputs import SEG_DIR
from ..review import TO_REVIEW, component_at, operating_points, organ_text, review_rows, status_text
from ..run import Run
from .dicomfacts import dicom_of_run
from .units import clean, cm

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- the CT
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


@dataclass(frozen=True)
class Scan:
    """The run's CT as every step needs it (all None without a CT) and its DICOM facts (None unless the input was
    a DICOM series still on disk)."""

    image: Optional[sitk.Image] = None
    source: Optional[SourceInfo] = None
    ct_kji: Optional[np.ndarray] = None  # a view of ``image``'s voxels, (k, j, i)
    grid: Optional[Grid] = None
    lgrid: Optional[Grid] = None  # ``grid`` in LAS order (the pictures' and the location's)
    ct_las: Optional[np.ndarray] = None  # ``ct_kji`` as a LAS (i, j, k) view
    dicom: Optional[dict] = None


def read_scan(outdir: Path, report: dict, ct=None, *, with_ct: bool, reporter, notes: list, timings: dict) -> Scan:
    """The run's CT (``load_run_ct``; not read when ``with_ct`` is False) and its DICOM header facts. A CT that
    is not found adds a note."""
    t = time.perf_counter()
    image = source = None
    if with_ct:
        reporter.update("read", 0.0, "CT")
        image, source, note = load_run_ct(outdir, report, ct)
        if note:
            notes.append(note)
    ct_kji = grid = lgrid = ct_las = None
    if image is not None:
        ct_kji = sitk.GetArrayViewFromImage(image)
        grid = Grid.of(image)
        lgrid = oriented(grid, "LAS")
        ct_las = reorient_array(ct_kji, grid, "LAS")
    timings["read_ct"] = time.perf_counter() - t
    t = time.perf_counter()
    dicom = dicom_of_run(report, source)
    timings["dicom_header"] = time.perf_counter() - t
    return Scan(image, source, ct_kji, grid, lgrid, ct_las, dicom)


# ------------------------------------------------------------------------------------- structure layers
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

    @property
    def box(self) -> tuple:
        """The crop's place in the LAS volume, as slices: ``ct_las[layer.box][layer.crop]`` are its voxels."""
        return tuple(slice(a, a + n) for a, n in zip(self.lo, self.crop.shape))

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
    slab = bounding_slices(per_k)
    if slab is None:
        return None
    ks = slab[0]
    i_box, j_box = bounding_slices(las[:, :, ks].any(axis=2))
    return StructureLayer(name, tuple(int(v) for v in color), kind, (i_box.start, j_box.start, ks.start),
                          np.array(las[i_box, j_box, ks], dtype=bool), per_k[ks])


# -------------------------------------------------------------------------------------------- location
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


# ------------------------------------------------------------------------------------------ measuring
@dataclass
class Measurements:
    """What the measure step found, for the pictures and report.json's "report" section."""

    organ_rows: list = field(default_factory=list)  # a row per structure: volume (ml), mean HU, voxels
    layers: dict = field(default_factory=dict)  # name -> StructureLayer (outlines; the organ a lesion lies in)
    tumor_masks: dict = field(default_factory=dict)  # tumor name -> full-grid mask (k, j, i)
    truth_rows: list = field(default_factory=list)  # with OUTDIR/ground_truth: Dice and volumes per structure
    mask_grid: Optional[Grid] = None  # the masks' grid (the CT's, when there is one)
    tumor_rows: list = field(default_factory=list)  # a row per tumor component, removed ones included
    summary: dict = field(default_factory=dict)  # tumor name -> count, largest, threshold, review counts
    components: dict = field(default_factory=dict)  # (tumor, component id) -> (offset kji, bool crop)


def measure(outdir: Path, report: dict, operating: dict, scan: Scan, *, overview=None, reporter, notes: list,
            timings: dict) -> Measurements:
    """Every structure's volume and mean HU, then every tumor component's row and each tumor type's summary.
    ``overview`` (an ``overview.Overview``) is given each mask while it is in memory, so each is read once."""
    t = time.perf_counter()
    m = Measurements()
    _measure_structures(outdir, report, scan, m, overview=overview, reporter=reporter, notes=notes)
    timings["read_masks"] = time.perf_counter() - t
    t = time.perf_counter()
    reporter.update("measure", 0.0, "tumor components")
    tumors = report.get("tumors") or {}
    rows_by_tumor = review_rows(outdir, masks=m.tumor_masks) if tumors else {}
    timings["review_rows"] = time.perf_counter() - t
    _measure_tumors(tumors, rows_by_tumor, operating, scan, m)
    timings["measure"] = time.perf_counter() - t
    return m


def _measure_structures(outdir: Path, report: dict, scan: Scan, m: Measurements, *, overview, reporter,
                        notes: list) -> None:
    """Each mask read once (tumors last): its voxels, ml and mean HU into its report.json entry and an organ row,
    its ``StructureLayer``, the tumor masks kept for their components, and its truth row when a truth exists."""
    entries = report.get("structures", [])
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
        m.mask_grid = m.mask_grid or Grid.of(mask_image)
        if scan.ct_kji is not None and scan.ct_kji.shape != mask.shape:
            raise InputError(f"{path} is not on the CT's grid ({mask.shape[::-1]} vs {scan.ct_kji.shape[::-1]})")
        layer = structure_layer(entry["name"], entry.get("color") or (255, 0, 0), entry.get("kind"), inside,
                                scan.grid or m.mask_grid)
        voxels = 0 if layer is None else int(layer.per_k.sum())
        mean_hu = entry.get("mean_hu")
        if layer is not None:
            m.layers[entry["name"]] = layer
        if scan.ct_las is not None:
            # Within the structure's box only: the same voxels as ct[inside], a fraction of the volume read.
            if layer is not None:
                mean_hu = round(float(scan.ct_las[layer.box][layer.crop].mean()), 1)
                overview.add(entry["name"], entry.get("color") or (255, 0, 0), mask)
            else:
                mean_hu = None
        entry.update(voxels=voxels, volume_ml=round(voxels * voxel_ml, 4), mean_hu=mean_hu)
        if entry.get("kind") == "tumor":
            m.tumor_masks[entry["name"]] = mask
        truth_path = outdir / TRUTH_DIR / f"{entry['name']}.nii.gz"
        if truth_path.is_file():
            m.truth_rows.append(truth_row(entry["name"], inside, truth_path, voxel_ml,
                                          tumor=entry.get("kind") == "tumor"))
        m.organ_rows.append({"structure": entry["name"], "kind": entry.get("kind"),
                             "volume_ml": round(voxels * voxel_ml, 2),
                             "mean_hu": None if mean_hu is None else int(round(mean_hu)), "voxels": voxels})


def _measure_tumors(tumors: dict, rows_by_tumor: dict, operating: dict, scan: Scan, m: Measurements) -> None:
    """A row per tumor component (``review.review_rows``'s, in cm and with its mean HU and location) and each
    tumor type's summary; a component still in its mask is kept (``m.components``) for its picture."""
    loc_grid = scan.lgrid or (oriented(m.mask_grid, "LAS") if m.mask_grid is not None else None)
    for name, info in tumors.items():
        mask = m.tumor_masks.get(name)
        current = []
        for row in rows_by_tumor.get(name, []):
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
                    m.components[(name, out["component"])] = found
                    if scan.ct_kji is not None:
                        offset, comp = found
                        region = tuple(slice(int(o), int(o) + s) for o, s in zip(offset, comp.shape))
                        out["mean_hu"] = int(round(float(scan.ct_kji[region][comp].mean())))
            if loc_grid is not None and None not in out["centroid_lps_mm"]:
                out["location"] = lesion_location(out["centroid_lps_mm"], loc_grid, ct_las=scan.ct_las,
                                                  dicom=scan.dicom, organ=m.layers.get(out["organ"] or ""))
            m.tumor_rows.append(out)
            if out["status"] != "removed" and row.get("present", True):  # not a kept one a threshold dropped
                current.append(out)
        m.summary[name] = _tumor_summary(name, info, current, m.tumor_rows, operating_points(operating, name))


def _tumor_summary(name: str, info: dict, current: list, all_rows: list, points: dict) -> dict:
    """One tumor type at its threshold: how many components, the largest, the review counts."""
    largest = max(current, key=lambda r: r["volume_ml"] or 0.0) if current else None
    return {
        "threshold": info.get("threshold"),
        "operating_point": _operating_point_name(points, info.get("threshold")),
        "operating_points": points,
        "count": len(current),
        "kept": sum(1 for r in current if r["status"] == "kept"),
        "to_review": sum(1 for r in current if r["status"] == TO_REVIEW),
        "removed": sum(1 for r in all_rows if r["structure"] == name and r["status"] == "removed"),
        "total_volume_ml": round(sum(r["volume_ml"] or 0.0 for r in current), 2),
        "largest": None if largest is None else {
            k: largest[k] for k in ("component", "organ", "volume_ml", "longest_axial_diameter_cm",
                                    "perpendicular_diameter_cm")},
        "gate": info.get("gate"),
        "note": info.get("note"),
    }


def _operating_point_name(points: dict, threshold) -> Optional[str]:
    if threshold is None:
        return None
    for name, value in points.items():
        if abs(float(value) - float(threshold)) < 1e-6:
            return name
    return None


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
        "volume_ml": clean(row.get("volume_ml"), 2),
        "longest_axial_diameter_cm": cm(row.get("longest_axial_diameter_mm")),
        "perpendicular_diameter_cm": cm(row.get("perpendicular_diameter_mm")),
        "max_probability": clean(row.get("max_probability"), 2),
        "mean_probability": clean(row.get("mean_probability"), 2),
        "mean_hu": None,
        "centroid_ras_mm": [clean(v, 1) for v in ras],
        "centroid_lps_mm": [clean(v, 1) for v in row.get("centroid_lps") or [None, None, None]],
        "seed_ijk": row.get("seed_ijk"),
        "picture": None,
    }
