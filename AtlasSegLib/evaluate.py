"""``atlasseg evaluate RUN --truth DIR``: a run (or a batch of runs) against known truth, lesion by lesion.

Tumors are scored as a reader scores them: each true tumor is found or missed, each predicted component that
is no tumor is a false positive. The kept probability maps (``probabilities/<tumor>.nii.gz``) are thresholded
again over a grid of thresholds with the engine's own rule (``ProbabilityMap.labels``: p ≥ t, inside the dilated
gate organ, components under the card's minimum volume dropped), so the whole free-response operating
characteristic (FROC: sensitivity against false positives per case) comes from one run, without running the
model again.

Matching rule (one rule for every threshold, the report and the tests):

* true tumors are the 26-connected components of the truth mask;
* a true tumor is **detected** when at least one voxel of it lies in a predicted component (any overlap);
  one predicted component may detect several true tumors;
* a predicted component that overlaps no true tumor is a **false positive**.

Size classes are those of the SyntheticTumors recipe (Hu et al., CVPR 2023: radii of 4, 8, 16 and 32 mm, each
0.75–1.25×, named tiny, small, medium and large), given as the longest 3D diameter of the true tumor measured on
voxel corners: tiny < 10 mm ≤ small < 20 mm ≤ medium < 40 mm ≤ large.

Arrays are numpy (k, j, i) as everywhere in AtlasSegLib.
"""
from __future__ import annotations

import csv
import io as _io
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk
from scipy.spatial import ConvexHull, QhullError

from .errors import InputError
from .geometry import LPS_TO_RAS, Grid
from .io import atomic_write_bytes, atomic_write_text
from .masks import bounding_slices, dice
from .outputs import SEG_DIR, load_run
from .postprocess import ranked_components
from .review import ProbabilityMap, operating_points
from .run import Run

log = logging.getLogger(__name__)



def _size_classes() -> tuple:
    """``(name, lower, upper)`` diameters in mm from ``data/synthesis.json`` (the recipe ``atlasseg synthesize``
    follows), so inserted and evaluated tumors are classed by the same bounds."""
    upper = json.loads((Path(__file__).resolve().parent / "data" / "synthesis.json").read_text(encoding="utf-8"))[
        "size_classes"]["diameter_mm_upper"]
    out, lo = [], 0.0
    for name in ("tiny", "small", "medium", "large"):
        hi = math.inf if upper.get(name) is None else float(upper[name])
        out.append((name, lo, hi))
        lo = hi
    return tuple(out)


SIZE_CLASSES = _size_classes()  # tiny < 10 mm <= small < 20 <= medium < 40 <= large
THRESHOLDS = tuple(round(i / 100, 2) for i in range(1, 100))  # p kept if ≥ t; plus the run's and the card's
FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # the FROC summary points (as LUNA16's CPM)
# Suggested card operating points: the lowest threshold with at most this many false positives per case. The
# names are the card's own, so a pasted snippet replaces what the review panel and the report show; "balanced"
# stays the model's own threshold.
SUGGESTIONS = (("high_sensitivity", 1.0), ("maximum_sensitivity", 8.0))
# NIfTI keeps geometry in float32: µm-level differences between a truth and the run's masks are expected.
GRID_TOLERANCE_MM = 0.01
NOT_STRUCTURES = {"ct", "combined_labels"}  # files in an AbdomenAtlas case folder that are no label


def size_class(diameter_mm: float) -> str:
    """The SyntheticTumors size class of a tumor by its longest diameter (mm): tiny < 10 ≤ small < 20 ≤ medium
    < 40 ≤ large."""
    for name, lo, hi in SIZE_CLASSES:
        if lo <= diameter_mm < hi:
            return name
    raise ValueError(f"diameter must be a length in mm >= 0, got {diameter_mm}")


# ------------------------------------------------------------------------------------------ demo truth
TRUTH_DIR = "ground_truth"  # OUTDIR/ground_truth/<structure>.nii.gz: a known truth (the demo's phantom)


def truth_row(name: str, inside: np.ndarray, truth_path: Path, voxel_ml: float, *, tumor: bool = False) -> dict:
    """A mask (``inside``, on the run's grid) against its truth file: Dice, truth and segmented ml, and for a tumor
    the lesion-by-lesion count (``lesion_detection``); the row of the report's truth table."""
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(truth_path))) != 0  # not a view: the image is temporary
    if truth.shape != inside.shape:
        return {"structure": name, "dice": None, "truth_ml": None, "segmented_ml": None,
                "note": f"{TRUTH_DIR}/{truth_path.name} is not on the masks' grid"}
    row = {"structure": name, "dice": round(dice(inside, truth), 3),
           "truth_ml": round(float(np.count_nonzero(truth)) * voxel_ml, 1),
           "segmented_ml": round(float(np.count_nonzero(inside)) * voxel_ml, 1)}
    if tumor:
        # Lesion by lesion, as 'atlasseg evaluate' counts (any overlap detects a true tumor).
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
        row = truth_row(name, sitk.GetArrayViewFromImage(pred_image) != 0, truth_path,
                        float(np.prod(pred_image.GetSpacing())) / 1000.0)
        scores[name] = {"dice": row["dice"], "truth_ml": row["truth_ml"], "pred_ml": row["segmented_ml"]}
    return scores


def longest_diameter_mm(sub_kji: np.ndarray, grid: Grid) -> float:
    """The longest 3D distance across a component (mm) between its voxels' corners: the voxelised object's
    outer extent (as ``postprocess.axial_diameters`` measures in-plane). ``sub_kji``: boolean, the component
    in its bounding box; ``grid``: any grid with the image's spacing and directions."""
    if not sub_kji.any():
        return 0.0
    padded = np.pad(sub_kji, 1)
    inner = padded[1:-1, 1:-1, 1:-1] & padded[:-2, 1:-1, 1:-1] & padded[2:, 1:-1, 1:-1] & padded[1:-1, :-2, 1:-1] \
        & padded[1:-1, 2:, 1:-1] & padded[1:-1, 1:-1, :-2] & padded[1:-1, 1:-1, 2:]
    # Only surface voxels' corners can be hull vertices.
    kji = np.argwhere(sub_kji & ~inner).astype(float)
    corners = np.array([[a, b, c] for a in (-0.5, 0.5) for b in (-0.5, 0.5) for c in (-0.5, 0.5)])
    pts = ((kji[:, None, :] + corners[None]).reshape(-1, 3))[:, ::-1] @ grid.matrix.T
    try:
        hull = pts[ConvexHull(pts).vertices]
    except (QhullError, ValueError):  # flat or tiny: every point may be extreme
        hull = np.unique(pts, axis=0)
    best = 0.0
    for start in range(0, len(hull), 512):  # bounded memory for large hulls
        d = hull[start:start + 512, None, :] - hull[None, :, :]
        best = max(best, float(np.sqrt((d ** 2).sum(-1)).max()))
    return best


# --------------------------------------------------------------------------------------------- lesions
@dataclass
class Lesion:
    """One true tumor (a 26-connected component of the truth mask) and how the run did on it."""
    case: str
    structure: str
    id: int  # 1.. by decreasing volume within its case
    voxels: int
    volume_ml: float
    diameter_mm: float
    size_class: str  # by nominal_diameter_mm when known, else by diameter_mm
    centroid_ras: tuple
    nominal_diameter_mm: Optional[float] = None  # as inserted (tumors.json beside the truth), when known
    max_probability: Optional[float] = None  # highest p the model gave any voxel of it (None: no map there)
    highest_detecting_threshold: Optional[float] = None  # on the threshold grid; None: missed at every threshold
    detected_at_run_threshold: Optional[bool] = None
    detected_in_saved_mask: Optional[bool] = None  # the run's mask as saved (review edits included)


@dataclass(frozen=True)
class Detection:
    """Lesion-level result of one predicted mask against one truth mask."""
    lesions: int
    detected: tuple  # lesion ids (1..) found
    false_positives: int
    predicted: int  # predicted components

    @property
    def missed(self) -> int:
        return self.lesions - len(self.detected)


def nominal_tumors(truth_dir: Path, grid: Grid) -> list:
    """``[(kji voxel, nominal diameter mm)]`` of the tumors listed in ``truth_dir/tumors.json`` (written by
    ``atlasseg synthesize``: ``center_zyx`` voxels; by ``atlasseg demo``: ``centre_lps_mm``); empty without one.
    The recipe's size classes are those of the diameter a tumor was made with, which its voxelised, deformed
    truth overstates (an elongated 14 mm phantom tumor measures 21 mm corner to corner on 2.5 mm voxels)."""
    path = Path(truth_dir) / "tumors.json"
    if not path.is_file():
        return []
    try:
        tumors = json.loads(path.read_text(encoding="utf-8")).get("tumors") or []
    except (OSError, ValueError, AttributeError):
        log.warning("%s is not readable JSON: tumors classed by their measured diameters", path)
        return []
    out = []
    for t in tumors:
        if not isinstance(t, dict) or not isinstance(t.get("diameter_mm"), (int, float)):
            continue
        if t.get("center_zyx") is not None:
            kji = tuple(int(round(float(v))) for v in t["center_zyx"])
        elif t.get("centre_lps_mm") is not None:
            kji = tuple(int(round(float(v))) for v in grid.physical_to_index(t["centre_lps_mm"])[::-1])
        else:
            continue
        out.append((kji, float(t["diameter_mm"])))
    return out


def _lesions(truth: np.ndarray, grid: Grid, case: str, structure: str, nominal=()):
    """(Lesion list, the truth's Labelling) for a boolean truth mask on ``grid``; ``nominal``: as
    ``nominal_tumors`` (a lesion holding several centres, merged tumors, takes the largest diameter)."""
    lab = ranked_components(truth)
    rank_of = {label: rank for rank, (label, _, _) in enumerate(lab.parts, start=1)}
    made = {}
    for kji, d in nominal:
        if all(0 <= v < n for v, n in zip(kji, truth.shape)) and lab.labels[kji]:
            rank = rank_of.get(int(lab.labels[kji]))
            if rank is not None:
                made[rank] = max(d, made.get(rank, 0.0))
    out = []
    for rank, (label, slc, voxels) in enumerate(lab.parts, start=1):
        sub = lab.labels[slc] == label
        offset = np.array([s.start for s in slc])
        centroid_ijk = (np.argwhere(sub).mean(0) + offset)[::-1]
        ras = LPS_TO_RAS @ grid.index_to_physical(centroid_ijk)
        diameter = longest_diameter_mm(sub, grid)
        out.append(Lesion(case, structure, rank, int(voxels), round(voxels * grid.voxel_volume_mm3 / 1000.0, 4),
                          round(diameter, 1), size_class(made.get(rank, diameter)),
                          tuple(round(float(v), 1) for v in ras),
                          nominal_diameter_mm=round(made[rank], 1) if rank in made else None))
    return out, lab


def _lesion_lut(truth_lab) -> np.ndarray:
    """cc3d label value -> lesion id (1.., by size); 0 for background."""
    lut = np.zeros(int(truth_lab.labels.max()) + 1 if truth_lab.labels.size else 1, np.int64)
    for rank, (label, _, _) in enumerate(truth_lab.parts, start=1):
        lut[label] = rank
    return lut


def match(pred_labels: np.ndarray, n_pred: int, truth_ids: np.ndarray, n_lesions: int) -> Detection:
    """Apply the matching rule. ``pred_labels``: predicted components (any distinct non-zero values, ``n_pred``
    of them); ``truth_ids``: lesion ids 1..``n_lesions`` on the same voxels (0 outside every lesion).

    >>> pred = np.array([[1, 1, 0, 2, 0, 3]]); truth = np.array([[1, 0, 0, 0, 2, 2]])
    >>> match(pred, 3, truth, 2)          # 1 hits lesion 1, 3 hits lesion 2, 2 hits nothing
    Detection(lesions=2, detected=(1, 2), false_positives=1, predicted=3)
    """
    both = (pred_labels != 0) & (truth_ids != 0)
    hit_lesions = np.unique(truth_ids[both])
    hit_pred = np.unique(pred_labels[both])
    return Detection(n_lesions, tuple(int(v) for v in hit_lesions), n_pred - int(hit_pred.size), n_pred)


def lesion_detection(pred: np.ndarray, truth: np.ndarray) -> Detection:
    """Lesion-level detection of a predicted tumor mask against a truth mask (same grid; non-zero = inside),
    by the module's matching rule. What the report's truth section shows."""
    pl = ranked_components(pred != 0)
    tl = ranked_components(truth != 0)
    return match(pl.labels, len(pl.parts), _lesion_lut(tl)[tl.labels], len(tl.parts))


# ------------------------------------------------------------------------------------------------ cases
@dataclass(frozen=True)
class Case:
    name: str
    run: Path
    truth: Path


def _is_run(folder: Path) -> bool:
    return Run.is_run(folder)


def truth_files(folder: Path) -> dict:
    """structure -> truth file of one truth folder: ``<structure>.nii.gz`` in it or in its ``segmentations/``
    (the AbdomenAtlas case layout; that one wins)."""
    out = {}
    for sub in (folder, folder / SEG_DIR):
        if sub.is_dir():
            for p in sorted(sub.glob("*.nii.gz")):
                name = p.name[: -len(".nii.gz")]
                if name not in NOT_STRUCTURES:
                    out[name] = p
    return out


def pair_cases(run, truth) -> tuple:
    """``([Case], [note])``: RUN is one ``atlasseg segment`` output or a batch results folder (``RUN/<case>/``),
    TRUTH one truth folder or a dataset of them (``TRUTH/<case>/``); batch cases pair by folder name."""
    run, truth = Path(run), Path(truth)
    if not run.is_dir():
        raise InputError(f"{run} is not a folder; give the -o folder of 'atlasseg segment' or of 'atlasseg batch'")
    if not truth.is_dir():
        raise InputError(f"--truth {truth} is not a folder; give a folder of <structure>.nii.gz truth masks "
                         "(or segmentations/<structure>.nii.gz), or a dataset of such case folders")
    truth_is_case = bool(truth_files(truth))
    truth_cases = {} if truth_is_case else {p.name: p for p in sorted(truth.iterdir())
                                            if p.is_dir() and truth_files(p)}
    if not truth_is_case and not truth_cases:
        raise InputError(f"--truth {truth} holds no truth masks: expected <structure>.nii.gz files, "
                         "segmentations/<structure>.nii.gz, or case folders holding them")
    if _is_run(run):
        if truth_is_case:
            return [Case(run.name, run, truth)], []
        if run.name in truth_cases:
            return [Case(run.name, run, truth_cases[run.name])], []
        raise InputError(f"--truth {truth} is a dataset of {len(truth_cases)} case folders and none is named "
                         f"{run.name}; give this case's truth folder (--truth {truth}/<case>)")
    runs = {p.name: p for p in sorted(run.iterdir()) if p.is_dir() and _is_run(p)}
    if not runs:
        raise InputError(f"{run} is neither an AtlasSeg output folder (report.json, card.json) nor a batch results "
                         "folder of them (<case>/report.json)")
    if truth_is_case:
        raise InputError(f"{run} is a batch of {len(runs)} cases but --truth {truth} is one case's truth; give the "
                         "dataset folder holding one truth folder per case (named as the batch's case folders)")
    cases = [Case(name, path, truth_cases[name]) for name, path in runs.items() if name in truth_cases]
    notes = [f"{name}: no truth folder {truth / name}; not evaluated" for name in runs if name not in truth_cases]
    notes += [f"{name}: truth without a run in {run}; not evaluated" for name in truth_cases if name not in runs]
    if not cases:
        raise InputError(f"no case of {run} ({', '.join(list(runs)[:5])}...) has a truth folder of the same name "
                         f"in {truth} ({', '.join(list(truth_cases)[:5])}...)")
    return cases, notes


def _read_info(path: Path) -> Grid:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return Grid(tuple(int(v) for v in reader.GetSize()), tuple(float(v) for v in reader.GetSpacing()),
                tuple(float(v) for v in reader.GetOrigin()), tuple(float(v) for v in reader.GetDirection()))


def _read_mask(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))) != 0


def _check_grid(truth_path: Path, grid: Grid, case: Case) -> None:
    diffs = grid.differences(_read_info(truth_path), GRID_TOLERANCE_MM)
    if diffs:
        raise InputError(f"{truth_path} is not on the grid of the run {case.run} ({'; '.join(diffs)}); evaluate "
                         "compares voxel by voxel: give truth masks on the CT's own grid (the grid the run's "
                         "segmentations/ lie on)")


# ----------------------------------------------------------------------------------------------- sweep
@dataclass
class TumorCase:
    """One case's sweep for one tumor structure."""
    case: str
    structure: str
    thresholds: tuple
    lesions: list
    detected: np.ndarray  # bool (thresholds, lesions)
    false_positives: np.ndarray  # int (thresholds,)
    run_threshold: float
    saved: Detection
    note: Optional[str] = None


def _sweep_case(case: Case, name: str, report: dict, grid: Grid, truth_path: Path, thresholds) -> TumorCase:
    truth = _read_mask(truth_path)
    lesions, truth_lab = _lesions(truth, grid, case.name, name, nominal_tumors(case.truth, grid))
    lut = _lesion_lut(truth_lab)
    info = report["tumors"][name]
    run_t = round(float(info.get("threshold") or 0.5), 4)
    seg_path = case.run / SEG_DIR / f"{name}.nii.gz"
    saved_mask = _read_mask(seg_path)
    n = len(lesions)
    detected = np.zeros((len(thresholds), n), bool)
    fps = np.zeros(len(thresholds), np.int64)
    note = None
    if info.get("probability_file"):
        pm = ProbabilityMap.from_output(case.run, name)
        ids_box = lut[truth_lab.labels[pm.box_slices]]
        # The rule only looks at the predicted labels on true-tumor voxels: gather those once, not the box per
        # threshold (a tenth of the sweep's time on the phantoms' liver boxes).
        on_truth = np.flatnonzero(ids_box)
        ids_on = ids_box.ravel()[on_truth]
        for ti, t in enumerate(thresholds):
            lab = pm.labels(t)
            if not lab.parts:
                continue
            d = match(lab.labels.ravel()[on_truth], len(lab.parts), ids_on, n)
            detected[ti, [i - 1 for i in d.detected]] = True
            fps[ti] = d.false_positives
        q_in = pm.q[ids_box != 0]
        ids_in = ids_box[ids_box != 0]
        for les in lesions:
            vals = q_in[ids_in == les.id]
            les.max_probability = round(float(vals.max()) / 255.0, 3) if vals.size else None
    elif saved_mask.any():
        raise InputError(f"{case.run} keeps no probability map for {name} (probabilities/{name}.nii.gz): the FROC "
                         "is computed from it; runs of 'atlasseg segment' keep one for every tumor they found")
    else:
        # No map because nothing could be found (no gate organ, p zero everywhere): nothing at any threshold.
        note = info.get("note") or "no probability map and an empty mask"
    saved = lesion_detection(saved_mask, truth)
    for li, les in enumerate(lesions):
        hits = np.flatnonzero(detected[:, li])
        les.highest_detecting_threshold = float(thresholds[hits.max()]) if hits.size else None
        les.detected_at_run_threshold = bool(detected[thresholds.index(run_t), li])
        les.detected_in_saved_mask = les.id in saved.detected
    return TumorCase(case.name, name, thresholds, lesions, detected, fps, run_t, saved, note)


def froc_rows(cases: list, thresholds: tuple) -> list:
    """One row per threshold: cases, lesions, detected, sensitivity, false positives (total and per case) and
    the same per size class, summed over ``cases`` (TumorCase of one structure)."""
    rows = []
    classes = [c for c, _, _ in SIZE_CLASSES]
    lesion_class = [[les.size_class for les in tc.lesions] for tc in cases]
    for ti, t in enumerate(thresholds):
        det = sum(int(tc.detected[ti].sum()) for tc in cases)
        total = sum(len(tc.lesions) for tc in cases)
        fp = sum(int(tc.false_positives[ti]) for tc in cases)
        row = {"threshold": t, "cases": len(cases), "lesions": total, "detected": det,
               "sensitivity": round(det / total, 4) if total else None, "false_positives": fp,
               "fp_per_case": round(fp / len(cases), 4) if cases else None}
        for c in classes:
            n_c = sum(k == c for lc in lesion_class for k in lc)
            d_c = sum(int(tc.detected[ti, i]) for tc, lc in zip(cases, lesion_class) for i, k in enumerate(lc) if k == c)
            row[f"lesions_{c}"] = n_c
            row[f"detected_{c}"] = d_c
            row[f"sensitivity_{c}"] = round(d_c / n_c, 4) if n_c else None
        rows.append(row)
    return rows


def best_at(rows: list, max_fp_per_case: float) -> Optional[dict]:
    """The row of the lowest threshold with at most ``max_fp_per_case`` false positives per case (None when no
    row qualifies). Under the matching rule sensitivity never rises with the threshold (masks only grow as it
    falls, and a lesion once touched stays touched), so this is also the highest sensitivity within the budget;
    false positives are not monotone (components merge), hence the search over all rows."""
    ok = [r for r in rows if r["sensitivity"] is not None and r["fp_per_case"] <= max_fp_per_case + 1e-9]
    return min(ok, key=lambda r: r["threshold"]) if ok else None


def suggest(rows: list, balanced: Optional[float] = None, why_not: Optional[dict] = None) -> dict:
    """name -> {"threshold", "sensitivity", "fp_per_case", "rule"} for SUGGESTIONS that some threshold meets.

    The points are ordered by sensitivity: maximum_sensitivity <= high_sensitivity <= ``balanced`` (the card's
    own point) in threshold. A budget whose lowest threshold lies above ``balanced`` is not suggested: such a
    "high sensitivity" point would find fewer tumors than the balanced one. ``why_not`` receives a sentence per
    point not suggested."""
    out = {}
    for name, budget in SUGGESTIONS:
        row = best_at(rows, budget)
        if row is None:
            reason = f"no threshold keeps false positives at or under {budget:g} per case"
        elif balanced is not None and row["threshold"] > balanced + 1e-9:
            at = next((r for r in rows if abs(r["threshold"] - balanced) < 1e-9), None)
            reason = (f"no threshold at or below balanced (t={balanced:g}) keeps false positives at or under "
                      f"{budget:g} per case" + (f" (balanced has {at['fp_per_case']:g})" if at else "")
                      + f"; the lowest that does, t={row['threshold']:g}, is less sensitive than balanced")
        else:
            out[name] = {"threshold": row["threshold"], "sensitivity": row["sensitivity"],
                         "fp_per_case": row["fp_per_case"],
                         "rule": f"lowest threshold with at most {budget:g} false positive(s) per case"}
            continue
        if why_not is not None:
            why_not[name] = reason
    return out


def run_threshold_view(tcs: list) -> dict:
    """At the run's threshold: per size class, per-lesion sensitivity; per case (patient), sensitivity (cases
    with a true tumor in which at least one is found) and specificity (cases without a true tumor in which
    nothing is predicted), as the seed papers report them."""
    per = {c: {"lesions": 0, "detected": 0} for c, _, _ in SIZE_CLASSES}
    with_tumor = tp = without = tn = 0
    for tc in tcs:
        ti = tc.thresholds.index(tc.run_threshold)
        for i, les in enumerate(tc.lesions):
            per[les.size_class]["lesions"] += 1
            per[les.size_class]["detected"] += int(tc.detected[ti, i])
        if tc.lesions:
            with_tumor += 1
            tp += int(tc.detected[ti].any())
        else:
            without += 1
            tn += int(tc.false_positives[ti] == 0)
    for v in per.values():
        v["sensitivity"] = round(v["detected"] / v["lesions"], 4) if v["lesions"] else None
    thresholds = sorted({tc.run_threshold for tc in tcs})
    return {"threshold": thresholds[0] if len(thresholds) == 1 else thresholds, "per_lesion": per,
            "patients": {"with_tumor": with_tumor, "true_positive": tp,
                         "sensitivity": round(tp / with_tumor, 4) if with_tumor else None,
                         "without_tumor": without, "true_negative": tn,
                         "specificity": round(tn / without, 4) if without else None}}


# ------------------------------------------------------------------------------------------------ organs
def surface_metrics(pred: np.ndarray, truth: np.ndarray, spacing_kji) -> dict:
    """Dice, average symmetric surface distance and 95th-percentile Hausdorff distance (mm, on the physical
    spacing) of two boolean masks, defined as MONAI's ``compute_average_surface_distance(symmetric=True)`` and
    ``compute_hausdorff_distance(percentile=95)`` define them (surface = mask XOR its erosion; the HD95 is the
    larger of the two directed 95th percentiles) and computed with SciPy's exact Euclidean distance transform:
    the same numbers without importing torch and MONAI (~10 s) into a command that needs no network.
    Distances are None when either mask is empty."""
    pred, truth = pred != 0, truth != 0
    out = {"dice": round(dice(pred, truth), 4), "assd_mm": None, "hd95_mm": None}
    if not pred.any() or not truth.any():
        return out
    # here: only the organ metrics need ndimage (tumor detection and the FROC do not)
    from scipy import ndimage

    box = bounding_slices(pred | truth)
    # One voxel of background around the box: a mask touching the box's (or the image's) side has its surface
    # there, as the erosion sees outside as background.
    a, b = np.pad(pred[box], 1), np.pad(truth[box], 1)
    edge_a = a ^ ndimage.binary_erosion(a)
    edge_b = b ^ ndimage.binary_erosion(b)
    spacing = [float(v) for v in spacing_kji]
    d_ab = ndimage.distance_transform_edt(~edge_b, sampling=spacing)[edge_a]
    d_ba = ndimage.distance_transform_edt(~edge_a, sampling=spacing)[edge_b]
    out["assd_mm"] = round(float(np.concatenate([d_ab, d_ba]).mean()), 2)
    out["hd95_mm"] = round(float(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))), 2)
    return out


# -------------------------------------------------------------------------------------------- evaluation
@dataclass
class Evaluation:
    outdir: Path
    cases: list  # case names evaluated
    notes: list
    tumors: dict  # structure -> {"rows", "summary", "suggested", "marks", "saved"}
    lesions: list  # Lesion
    per_case: list  # dicts: case, structure, lesions, detected / fp at the run threshold and in the saved mask
    structures: list  # dicts: case, structure, dice, assd_mm, hd95_mm, truth_ml, pred_ml
    seconds: float = 0.0
    files: dict = field(default_factory=dict)


def evaluate(run, truth, outdir=None, *, structures=None) -> Evaluation:
    """Evaluate RUN against TRUTH (see the module docstring) and write OUT (default ``RUN/evaluation``):
    froc.csv, froc.png, lesions.csv, cases.csv, structures.csv, operating_points.json and evaluation.json.

    Raises InputError (exit 2) for folders that are not runs or truth, truth off the run's grid, a tumor run
    without probability maps, or structures named that neither side has."""
    t0 = time.perf_counter()
    cases, notes = pair_cases(run, truth)
    outdir = Path(outdir) if outdir is not None else Path(run) / "evaluation"
    wanted = set(structures) if structures else None
    per_structure = {}
    structure_rows = []
    card_points = {}
    found_any = set()
    for case in cases:
        report, card = load_run(case.run)
        files = truth_files(case.truth)
        tumors = report.get("tumors") or {}
        names = [e["name"] for e in report.get("structures", [])]
        if wanted is not None:
            found_any |= wanted & set(names) & set(files)
        names = [n for n in names if n in files and (wanted is None or n in wanted)]
        if not names:
            notes.append(f"{case.name}: no structure of the run has a truth file in {case.truth}")
            continue
        grid = _read_info(case.run / SEG_DIR / f"{names[0]}.nii.gz")
        for name in names:
            _check_grid(files[name], grid, case)
        for name in names:
            pred = _read_mask(case.run / SEG_DIR / f"{name}.nii.gz")
            tmask = _read_mask(files[name])
            voxel_ml = grid.voxel_volume_mm3 / 1000.0
            structure_rows.append({"case": case.name, "structure": name,
                                   "kind": "tumor" if name in tumors else "organ",
                                   **surface_metrics(pred, tmask, grid.spacing[::-1]),
                                   "truth_ml": round(np.count_nonzero(tmask) * voxel_ml, 2),
                                   "pred_ml": round(np.count_nonzero(pred) * voxel_ml, 2)})
            del pred, tmask
            if name in tumors:
                per_structure.setdefault(name, []).append((case, report, grid, files[name]))
                card_points.setdefault(name, operating_points(card, name))
    if wanted is not None and wanted - found_any:
        raise InputError(f"--structures {', '.join(sorted(wanted - found_any))}: not a structure of the run(s) "
                         "with a truth file; name structures that both have (e.g. liver_tumor)")
    if not structure_rows:
        raise InputError(f"no structure of {run} has a truth file in {truth}: truth files are named as the run's "
                         "segmentations (e.g. liver.nii.gz, liver_tumor.nii.gz)")

    tumors_out, all_lesions, per_case = {}, [], []
    for name, items in per_structure.items():
        extra = {round(float(r["tumors"][name].get("threshold") or 0.5), 4) for _, r, _, _ in items}
        extra |= {round(v, 4) for v in card_points[name].values()}
        thresholds = tuple(sorted(set(THRESHOLDS) | extra))
        tcs = [_sweep_case(case, name, report, grid, tpath, thresholds) for case, report, grid, tpath in items]
        rows = froc_rows(tcs, thresholds)
        by_t = {r["threshold"]: r for r in rows}
        marks = [{"name": f"card {k}", "threshold": v, **_point(by_t[round(v, 4)])}
                 for k, v in sorted(card_points[name].items(), key=lambda kv: kv[1])]
        for t in sorted({tc.run_threshold for tc in tcs}):
            marks.append({"name": "run threshold", "threshold": t, **_point(by_t[round(t, 4)])})
        n_les = sum(len(tc.lesions) for tc in tcs)
        saved = {"detected": sum(len(tc.saved.detected) for tc in tcs), "lesions": n_les,
                 "false_positives": sum(tc.saved.false_positives for tc in tcs)}
        saved["sensitivity"] = round(saved["detected"] / n_les, 4) if n_les else None
        saved["fp_per_case"] = round(saved["false_positives"] / len(tcs), 4)
        froc = {f"{r:g}": (best_at(rows, r) or {}).get("sensitivity") for r in FP_RATES}
        reached = [v for v in froc.values() if v is not None]
        tumors_out[name] = {
            "cases": len(tcs), "lesions": n_les,
            "lesions_by_class": {c: sum(les.size_class == c for tc in tcs for les in tc.lesions)
                                 for c, _, _ in SIZE_CLASSES},
            "rows": rows, "marks": marks, "saved_masks": saved, "sensitivity_at_fp_per_case": froc,
            # LUNA16's competition performance metric: mean sensitivity at the seven FP rates (0 where unreached)
            "cpm": round(sum(reached) / len(FP_RATES), 4) if rows and rows[0]["sensitivity"] is not None else None,
            "suggested": suggest(rows, card_points[name].get("balanced"), why_not := {}),
            "not_suggested": why_not,
            "at_run_threshold": run_threshold_view(tcs),
            "notes": [f"{tc.case}: {tc.note}" for tc in tcs if tc.note],
        }
        for tc in tcs:
            all_lesions += tc.lesions
            ti = thresholds.index(tc.run_threshold)
            per_case.append({"case": tc.case, "structure": name, "lesions": len(tc.lesions),
                             "run_threshold": tc.run_threshold, "detected_at_run_threshold": int(tc.detected[ti].sum()),
                             "fp_at_run_threshold": int(tc.false_positives[ti]),
                             "detected_in_saved_mask": len(tc.saved.detected),
                             "fp_in_saved_mask": tc.saved.false_positives})
    ev = Evaluation(outdir, [c.name for c in cases], notes, tumors_out, all_lesions, per_case, structure_rows)
    _write(ev)
    ev.seconds = time.perf_counter() - t0
    return ev


def _point(row: dict) -> dict:
    return {"sensitivity": row["sensitivity"], "fp_per_case": row["fp_per_case"]}


def operating_points_snippet(ev: Evaluation) -> dict:
    """The suggested points in the model card's format (``operating_points`` per tumor structure), ready to
    paste into a card."""
    return {"operating_points": {name: {k: v["threshold"] for k, v in t["suggested"].items()}
                                 for name, t in ev.tumors.items() if t["suggested"]}}


# ------------------------------------------------------------------------------------------------- files
def _csv_text(rows: list, fields: list) -> str:
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
    return buf.getvalue()


def _write(ev: Evaluation) -> None:
    out = ev.outdir
    out.mkdir(parents=True, exist_ok=True)
    classes = [c for c, _, _ in SIZE_CLASSES]
    froc_fields = ["structure", "threshold", "cases", "lesions", "detected", "sensitivity", "false_positives",
                   "fp_per_case"] + [f"{k}_{c}" for c in classes for k in ("lesions", "detected", "sensitivity")]
    froc = [{"structure": name, **r} for name, t in ev.tumors.items() for r in t["rows"]]
    atomic_write_text(_csv_text(froc, froc_fields), out / "froc.csv")
    ev.files["froc.csv"] = out / "froc.csv"
    lesion_rows = [{**asdict(les), "centroid_ras": " ".join(f"{v:g}" for v in les.centroid_ras)} for les in ev.lesions]
    atomic_write_text(_csv_text(lesion_rows, list(Lesion.__dataclass_fields__)), out / "lesions.csv")
    ev.files["lesions.csv"] = out / "lesions.csv"
    if ev.per_case:
        atomic_write_text(_csv_text(ev.per_case, list(ev.per_case[0])), out / "cases.csv")
        ev.files["cases.csv"] = out / "cases.csv"
    atomic_write_text(_csv_text(ev.structures, ["case", "structure", "kind", "dice", "assd_mm", "hd95_mm",
                                                "truth_ml", "pred_ml"]), out / "structures.csv")
    ev.files["structures.csv"] = out / "structures.csv"
    if ev.tumors:
        atomic_write_text(json.dumps(operating_points_snippet(ev), indent=1) + "\n", out / "operating_points.json")
        ev.files["operating_points.json"] = out / "operating_points.json"
        _plot(ev, out / "froc.png")
        ev.files["froc.png"] = out / "froc.png"
    summary = {"matching_rule": "a true tumor (26-connected truth component) is detected when a predicted "
               "component overlaps it by at least one voxel; a predicted component overlapping no true tumor is a "
               "false positive",
               "size_classes_mm": {c: [lo, None if math.isinf(hi) else hi] for c, lo, hi in SIZE_CLASSES},
               "cases": ev.cases, "notes": ev.notes,
               "tumors": {n: {k: v for k, v in t.items() if k != "rows"} for n, t in ev.tumors.items()},
               "structures": _structure_means(ev.structures), "per_case": ev.per_case}
    atomic_write_text(json.dumps(summary, indent=1) + "\n", out / "evaluation.json")
    ev.files["evaluation.json"] = out / "evaluation.json"


def _structure_means(rows: list) -> dict:
    out = {}
    for name in dict.fromkeys(r["structure"] for r in rows):
        mine = [r for r in rows if r["structure"] == name]
        entry = {"cases": len(mine)}
        for key in ("dice", "assd_mm", "hd95_mm"):
            vals = [r[key] for r in mine if r[key] is not None]
            entry[key] = round(float(np.mean(vals)), 4) if vals else None
        out[name] = entry
    return out


def _plot(ev: Evaluation, path: Path) -> None:
    """Sensitivity against false positives per case (log x; zero FP drawn at the left edge), overall and per
    size class, with the card's operating points, the run's threshold and the suggested points marked."""
    # here: matplotlib (~0.5 s) loads only when a FROC plot is drawn, and with the headless Agg backend
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): pyplot picks its backend when first imported

    names = list(ev.tumors)
    fig, axes = plt.subplots(1, len(names), figsize=(8 * len(names), 6.2), squeeze=False, dpi=110)
    colours = {"tiny": "#d62728", "small": "#ff7f0e", "medium": "#2ca02c", "large": "#1f77b4"}
    for ax, name in zip(axes[0], names):
        t = ev.tumors[name]
        rows = t["rows"]
        cases = max(1, t["cases"])
        zero_x = 0.5 / cases  # the smallest non-zero rate is 1/cases: zero goes half a step left of it
        # Drawn in threshold order, highest first (false positives need not fall monotonically with the threshold:
        # components merge), so the line is the path the threshold takes rather than an envelope.
        rows = rows[::-1]
        xs = [max(r["fp_per_case"], zero_x) for r in rows]
        hi = max([1.0] + xs) * 1.6
        for c, _, _ in SIZE_CLASSES:
            if t["lesions_by_class"][c]:
                ax.plot(xs, [r[f"sensitivity_{c}"] for r in rows], color=colours[c], lw=1.3, ls="--",
                        label=f"{c} ({t['lesions_by_class'][c]} tumors)")
        ax.plot(xs, [r["sensitivity"] for r in rows], color="black", lw=2.4, marker=".", ms=5,
                label=f"all tumors ({t['lesions']})")
        markers = {"card balanced": "o", "card high_sensitivity": "s", "card maximum_sensitivity": "D"}
        for m in t["marks"]:
            if m["sensitivity"] is None:
                continue
            x = max(m["fp_per_case"], zero_x)
            ax.plot([x], [m["sensitivity"]], marker="*" if m["name"] == "run threshold" else markers.get(m["name"], "^"),
                    ms=15 if m["name"] == "run threshold" else 10, color="#9467bd", mec="black", ls="none",
                    label=f"{m['name']} {m['threshold']:g}: {m['sensitivity']:.2f} at {m['fp_per_case']:g} FP/case",
                    zorder=5)
        for k, s in t["suggested"].items():
            ax.plot([max(s["fp_per_case"], zero_x)], [s["sensitivity"]], marker="o", ms=14, mfc="none", mec="#e377c2",
                    mew=2.2, ls="none", zorder=6,
                    label=f"suggested {k} {s['threshold']:g} (≤ {dict(SUGGESTIONS)[k]:g} FP/case)")
        ax.set_xscale("log")
        ax.set_xlim(zero_x / 1.5, hi)
        ticks = [zero_x] + [v for v in (0.125, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64) if zero_x < v < hi]
        ax.set_xticks(ticks)
        ax.set_xticklabels(["0"] + [f"{v:g}" for v in ticks[1:]])
        ax.minorticks_off()
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
        ax.set_xlabel("false positives per case")
        ax.set_ylabel("sensitivity (true tumors detected)")
        ax.set_title(f"{name}: FROC over {t['cases']} case(s), thresholds {rows[-1]['threshold']:g}–"
                     f"{rows[0]['threshold']:g}", fontsize=11)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = _io.BytesIO()
    try:
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    atomic_write_bytes(buf.getvalue(), path)


# ------------------------------------------------------------------------------------------- summary text
def summary_lines(ev: Evaluation) -> list:
    """The summary of an evaluation as text lines (what 'atlasseg evaluate' prints without --json)."""
    lines = [f"evaluated {len(ev.cases)} case(s) in {ev.seconds:.1f} s -> {ev.outdir}"]
    lines += [f"note: {n}" for n in ev.notes]
    for name, t in ev.tumors.items():
        by_class = ", ".join(f"{c} {n}" for c, n in t["lesions_by_class"].items() if n)
        lines.append(f"{name}: {t['lesions']} true tumor(s) in {t['cases']} case(s) ({by_class or 'none'})")
        for m in t["marks"]:
            row = next(r for r in t["rows"] if r["threshold"] == round(m["threshold"], 4))
            per = ", ".join(f"{c} {row[f'detected_{c}']}/{row[f'lesions_{c}']}" for c, _, _ in SIZE_CLASSES
                            if row[f"lesions_{c}"])
            sens = "-" if row["sensitivity"] is None else f"{row['sensitivity']:.2f}"
            lines.append(f"  {m['name']:<27} t={m['threshold']:<5g} sensitivity {sens} ({row['detected']}/"
                         f"{row['lesions']}{'; ' + per if per else ''}), {row['fp_per_case']:g} FP/case")
        s = t["saved_masks"]
        lines.append(f"  {'saved masks (after review)':<27}         {s['detected']}/{s['lesions']} found, "
                     f"{s['fp_per_case']:g} FP/case")
        froc = "  ".join(f"{k}:{'-' if v is None else f'{v:.2f}'}" for k, v in t["sensitivity_at_fp_per_case"].items())
        lines.append(f"  sensitivity at FP/case  {froc}  (CPM {t['cpm'] if t['cpm'] is not None else '-'})")
        for k, v in t["suggested"].items():
            lines.append(f"  suggested {k:<20} t={v['threshold']:<5g} sensitivity {v['sensitivity']:.2f} at "
                         f"{v['fp_per_case']:g} FP/case ({v['rule']})")
        for k, why in t.get("not_suggested", {}).items():
            lines.append(f"  not suggested {k:<16} {why}")
        view = t.get("at_run_threshold")
        if view:
            lines.append(f"  {'size class':<12}{'lesions':>8}{'found':>7}{'sensitivity':>13}   (per lesion, at the run "
                         f"threshold {view['threshold']})")
            for c, v in view["per_lesion"].items():
                sens = "-" if v["sensitivity"] is None else f"{v['sensitivity']:.2f}"
                lines.append(f"  {c:<12}{v['lesions']:>8}{v['detected']:>7}{sens:>13}")
            pt = view["patients"]
            fmt = lambda n, d, v: f"{n}/{d} ({v:.2f})" if v is not None else "-"  # noqa: E731
            lines.append(f"  patients: sensitivity {fmt(pt['true_positive'], pt['with_tumor'], pt['sensitivity'])}, "
                         f"specificity {fmt(pt['true_negative'], pt['without_tumor'], pt['specificity'])} (a case "
                         "with a tumor counts when one is found; a case without, when nothing is predicted)")
        lines += [f"  note: {n}" for n in t["notes"]]
    means = _structure_means(ev.structures)
    if means:
        lines.append(f"{'structure':<20}{'cases':>6}{'Dice':>8}{'ASSD mm':>9}{'HD95 mm':>9}")
        for name, m in means.items():
            f = lambda v, d: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
            lines.append(f"{name:<20}{m['cases']:>6}{f(m['dice'], 3):>8}{f(m['assd_mm'], 2):>9}{f(m['hd95_mm'], 2):>9}")
    lines.append("files: " + ", ".join(sorted(ev.files)))
    return lines
