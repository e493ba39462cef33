"""Post-processing and measurements on masks held as (k, j, i) numpy arrays inside a box of a grid.

Volumes are in mm³ and diameters in mm, computed from the grid's spacing and directions, never voxel counts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cc3d
import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from .geometry import LPS_TO_RAS, Grid
from .masks import bounding_slices


def quantize(prob: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] → uint8 p × 255 (rounded)."""
    return np.clip(np.rint(prob * 255.0), 0, 255).astype(np.uint8)


def threshold_level(threshold: float) -> int:
    """The uint8 level of a probability threshold: a voxel is kept if its stored value ≥ this level,
    i.e. if p ≥ threshold up to the 1/255 quantisation of the stored map."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    return max(1, int(math.ceil(threshold * 255.0 - 1e-6)))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a binary mask (uint8)."""
    if not mask.any():
        return mask
    return cc3d.largest_k(mask, k=1, connectivity=26).astype(np.uint8, copy=False)


def largest_per_side(mask: np.ndarray, grid: Grid, midline_lps_x: float) -> np.ndarray:
    """For a paired organ in one class (both kidneys, both lungs): the largest component on each side of the
    body's midline (the LPS x of ``midline_lps_x``). ``grid`` is the mask's own (box) grid."""
    labels, n = cc3d.connected_components(mask, connectivity=26, return_N=True)
    if n <= 1:
        return mask
    stats = cc3d.statistics(labels)
    voxels = stats["voxel_counts"][1:]
    centroids_kji = stats["centroids"][1:]
    x = grid.index_to_physical(centroids_kji[:, ::-1])[:, 0]
    keep = []
    for side in (x < midline_lps_x, x >= midline_lps_x):
        if side.any():
            ids = np.nonzero(side)[0]
            keep.append(ids[np.argmax(voxels[ids])] + 1)
    return np.isin(labels, keep).astype(np.uint8)


def remove_small(mask: np.ndarray, voxel_mm3: float, min_mm3: float) -> np.ndarray:
    """Drop 26-connected components whose volume is below ``min_mm3`` (kept if volume ≥ min_mm3)."""
    if min_mm3 <= 0 or not mask.any():
        return mask
    min_voxels = min_voxels_of(voxel_mm3, min_mm3)
    return cc3d.dust(mask, threshold=min_voxels, connectivity=26, in_place=False).astype(np.uint8, copy=False)


def ball_radius_voxels(spacing_kji, radius_mm: float) -> list:
    """Per-axis radius (k, j, i) in voxels of the ball ``dilate_mm`` uses (at least one voxel)."""
    return [max(1, int(round(radius_mm / s))) for s in spacing_kji]


def dilate_mm(mask: np.ndarray, spacing_kji, radius_mm: float) -> np.ndarray:
    """Binary dilation by a ball of ``radius_mm`` (per-axis radius in voxels from the spacing)."""
    if radius_mm <= 0 or not mask.any():
        return mask
    radius = ball_radius_voxels(spacing_kji, radius_mm)[::-1]  # SimpleITK wants (i, j, k)
    img = sitk.GetImageFromArray(mask.astype(np.uint8, copy=False))
    out = sitk.BinaryDilate(img, radius, sitk.sitkBall, 0, 1)
    return sitk.GetArrayViewFromImage(out).astype(np.uint8)


def dilated_gate(organs: np.ndarray, q_box: np.ndarray, spacing_kji, radius_mm: float) -> np.ndarray:
    """The tumor gate: ``organs`` (uint8, the gate organs' union on the probability map's box) dilated by
    ``radius_mm``, computed only where it can matter. ``tumor_labels`` keeps a voxel only if its stored
    probability is ≥ 1 (every threshold's level is), so the gate is dilated on the box of the map's non-zero
    voxels grown by the radius, which is exact on every non-zero voxel; elsewhere it is left 0. A map with no
    tumor probability (the usual case on a healthy organ) costs nothing, instead of a ball dilation of a whole
    liver (1.4 s on a 512×512×300 CT)."""
    nz = q_box > 0
    gate = np.zeros(organs.shape, np.uint8)
    if not nz.any():
        return gate
    if radius_mm <= 0:
        return organs.astype(np.uint8, copy=True)
    radius = ball_radius_voxels(spacing_kji, radius_mm)  # the kernel's reach: the crop must include it
    # The probability's box grown by the kernel's reach plus one voxel on each side (per axis: radii differ).
    sl = tuple(slice(max(b.start - r - 1, 0), min(b.stop + r + 1, n))
               for b, r, n in zip(bounding_slices(nz), radius, nz.shape))
    gate[sl] = dilate_mm(organs[sl], spacing_kji, radius_mm)
    return gate


def tumor_mask(q_box: np.ndarray, gate_box, *, threshold: float, voxel_mm3: float, min_mm3: float) -> np.ndarray:
    """Tumor mask from a stored probability box: kept where p ≥ threshold, inside the gate (if any), in
    components of at least ``min_mm3``. This single function is used by the pipeline and by every later
    threshold change, so a re-threshold at the original value reproduces the original mask exactly."""
    return tumor_labels(q_box, gate_box, threshold=threshold, voxel_mm3=voxel_mm3, min_mm3=min_mm3).mask


def tumor_labels(q_box: np.ndarray, gate_box, *, threshold: float, voxel_mm3: float, min_mm3: float) -> "Labelling":
    """``tumor_mask`` with its components from the same single labelling pass (the sensitivity slider needs
    both, and a second connected-components pass over the organ box would double its cost)."""
    mask = q_box >= threshold_level(threshold)
    if gate_box is not None:
        mask &= gate_box.astype(bool, copy=False)
    return ranked_components(mask, min_voxels=min_voxels_of(voxel_mm3, min_mm3))


def min_voxels_of(voxel_mm3: float, min_mm3: float) -> int:
    """The fewest voxels of ``voxel_mm3`` each that make at least ``min_mm3`` (0: no minimum)."""
    return int(math.ceil(min_mm3 / voxel_mm3 - 1e-9)) if min_mm3 > 0 else 0


@dataclass
class Labelling:
    """26-connected components of a mask. ``labels`` holds cc3d's own label values (not renumbered: a
    whole-array relabel costs more than the labelling itself); ``parts`` lists ``(label, slices, voxels)``
    by decreasing size, so a component's id is its position + 1."""
    mask: np.ndarray
    labels: np.ndarray
    parts: list


def ranked_components(mask: np.ndarray, *, min_voxels: int = 0) -> Labelling:
    """Components of a boolean/0-1 ``mask``, those under ``min_voxels`` dropped (ties in size keep cc3d's order)."""
    labels, n = cc3d.connected_components(mask, connectivity=26, return_N=True)
    if not n:
        return Labelling(np.zeros(mask.shape, np.uint8), labels, [])
    # The mask's nonzero voxels are the labelled ones; finding them in a bool array is ~10x faster than in the
    # uint32 labels.
    binary = mask if mask.dtype == bool else mask != 0
    flat = np.flatnonzero(binary) if labels.flags.c_contiguous else None
    if flat is not None and flat.size * 8 <= labels.size:
        parts = _parts_from_voxels(labels, flat)
    else:
        parts = _parts_from_boxes(labels)
    small = [p for p in parts if p[2] < min_voxels]
    parts = [p for p in parts if p[2] >= min_voxels]
    out_mask = binary.view(np.uint8).copy()
    for label, slc, _ in small:
        inside = labels[slc] == label
        labels[slc][inside] = 0
        out_mask[slc][inside] = 0
    parts.sort(key=lambda p: (-p[2], p[0]))
    return Labelling(out_mask, labels, parts)


def _parts_from_voxels(labels: np.ndarray, flat: np.ndarray) -> list:
    """``(label, slices, voxels)`` per label from the flat indices of the labelled voxels: for sparse masks
    (tumor candidates in an organ box) this touches only those voxels, where a box search reads the whole box."""
    values = labels.reshape(-1)[flat]
    order = np.argsort(values, kind="stable")
    values, flat = values[order], flat[order]
    starts = np.flatnonzero(np.concatenate([[True], values[1:] != values[:-1]]))
    counts = np.diff(np.concatenate([starts, [values.size]]))
    coords = np.unravel_index(flat, labels.shape)
    lo = [np.minimum.reduceat(c, starts) for c in coords]
    hi = [np.maximum.reduceat(c, starts) + 1 for c in coords]
    return [(int(values[s]), tuple(slice(int(lo[a][t]), int(hi[a][t])) for a in range(3)), int(counts[t]))
            for t, s in enumerate(starts)]


def _parts_from_boxes(labels: np.ndarray) -> list:
    """``(label, slices, voxels)`` per label by one box search (dense masks: organs)."""
    parts = []
    for label, slc in enumerate(ndimage.find_objects(labels), start=1):
        if slc is not None:
            parts.append((label, slc, int(np.count_nonzero(labels[slc] == label))))
    return parts


@dataclass(frozen=True)
class Component:
    id: int
    voxels: int
    volume_ml: float
    longest_axial_diameter_mm: float
    perpendicular_diameter_mm: float
    max_probability: float
    mean_probability: float
    centroid_lps: tuple
    centroid_ras: tuple
    bbox_ijk: tuple  # (start i, j, k), (stop i, j, k) in the full input grid

    def as_dict(self) -> dict:
        return {
            "id": self.id, "voxels": self.voxels, "volume_ml": round(self.volume_ml, 4),
            "longest_axial_diameter_mm": round(self.longest_axial_diameter_mm, 2),
            "perpendicular_diameter_mm": round(self.perpendicular_diameter_mm, 2),
            "max_probability": round(self.max_probability, 4), "mean_probability": round(self.mean_probability, 4),
            "centroid_lps": [round(v, 2) for v in self.centroid_lps],
            "centroid_ras": [round(v, 2) for v in self.centroid_ras],
            "bbox_ijk": [list(self.bbox_ijk[0]), list(self.bbox_ijk[1])],
        }


def components(mask_box: np.ndarray, box_grid: Grid, box_start_ijk, *, q_box=None) -> list:
    """Per 26-connected component of ``mask_box``: volume, axial diameters, probabilities, centroid, box.

    Components are numbered 1.. by decreasing volume."""
    if not mask_box.any():
        return []
    return labelled_components(ranked_components(mask_box.astype(bool, copy=False)), box_grid, box_start_ijk,
                               q_box=q_box)


def labelled_components(labelling: Labelling, box_grid: Grid, box_start_ijk, *, q_box=None) -> list:
    """``Component`` statistics of each part of a labelling, in its order (ids 1..)."""
    out = []
    axial = _axial_axis(box_grid)
    for rank, (label, slc, voxels) in enumerate(labelling.parts, start=1):
        sub = labelling.labels[slc] == label
        offset_kji = np.array([s.start for s in slc])
        centroid_ijk = (np.argwhere(sub).mean(0) + offset_kji)[::-1]
        lps = box_grid.index_to_physical(centroid_ijk)
        if q_box is not None:
            probs = q_box[slc][sub]
            pmax, pmean = float(probs.max()) / 255.0, float(probs.mean(dtype=np.float64)) / 255.0
        else:
            pmax = pmean = float("nan")
        longest, perp = axial_diameters(sub, box_grid, axial)
        start = np.asarray(box_start_ijk) + offset_kji[::-1]
        stop = start + np.array([s.stop - s.start for s in slc])[::-1]
        out.append(Component(rank, voxels, voxels * box_grid.voxel_volume_mm3 / 1000.0, longest, perp, pmax,
                             pmean, tuple(float(v) for v in lps), tuple(float(v) for v in LPS_TO_RAS @ lps),
                             (tuple(int(v) for v in start), tuple(int(v) for v in stop))))
    return out


def _axial_axis(grid: Grid) -> int:
    """The index axis (0=i, 1=j, 2=k) closest to the patient's superior-inferior axis."""
    d = np.asarray(grid.direction).reshape(3, 3)
    return int(np.argmax(np.abs(d[2, :])))


def axial_diameters(sub_kji: np.ndarray, grid: Grid, axial_axis: int) -> tuple:
    """Longest in-plane diameter over the axial slices of a component, and the longest extent perpendicular
    to it in that slice (both mm, measured on voxel corners, i.e. the voxelised object's outer extent).

    Slices are measured in decreasing order of their bounding rectangle's diagonal (an upper bound of their
    diameter) and the search stops once no remaining slice can beat the best: the live sensitivity slider
    measures every candidate on each move, and most slices of a large tumor never need a convex hull."""
    kji_axis = 2 - axial_axis
    inplane = [a for a in range(3) if a != axial_axis]  # ijk axes of the slice plane, in ijk order
    remaining_kji = [a for a in range(3) if a != kji_axis]  # the slice array's axes (kji order)
    # Isometric 2D coordinates of in-plane index offsets: QR of the in-plane columns of index→physical, so the
    # distances are physical for any (even non-orthogonal) directions.
    _, r2 = np.linalg.qr(grid.matrix[:, inplane])
    # slice array axis 0 is kji axis remaining_kji[0] = ijk axis 2 - remaining_kji[0]
    to_ijk = [inplane.index(2 - a) for a in remaining_kji]
    scale = np.abs(r2).sum(0)  # per in-plane axis, an upper bound of one index step's length (mm)
    order = []
    for s in range(sub_kji.shape[kji_axis]):
        sl = np.take(sub_kji, s, axis=kji_axis)
        rows = np.nonzero(sl.any(axis=1))[0]
        if rows.size == 0:
            continue
        cols = np.nonzero(sl.any(axis=0))[0]
        extent = np.zeros(2)
        extent[to_ijk[0]] = rows[-1] - rows[0] + 1
        extent[to_ijk[1]] = cols[-1] - cols[0] + 1
        order.append((-float(np.hypot(*(extent * scale))), s, sl, rows))
    order.sort(key=lambda t: (t[0], t[1]))
    best, best_s = (0.0, 0.0), None
    corners = np.array([[dx, dy] for dx in (-0.5, 0.5) for dy in (-0.5, 0.5)])
    for neg_bound, s, sl, r in order:
        if -neg_bound < best[0] - 1e-9:
            break
        # Only each row's first and last pixel can be hull vertices: keeps the cost linear in the slice height
        # instead of its area (a 24 M-voxel component took minutes with every pixel).
        first = np.argmax(sl[r], axis=1)
        last = sl.shape[1] - 1 - np.argmax(sl[r, ::-1], axis=1)
        idx = np.zeros((2 * r.size, 2))
        idx[:, to_ijk[0]] = np.concatenate([r, r])
        idx[:, to_ijk[1]] = np.concatenate([first, last])
        pts = (idx[:, None, :] + corners[None, :, :]).reshape(-1, 2) @ r2.T
        longest, perp = _feret(pts)
        # Equal diameters in two slices: the lower slice wins, whatever order they were measured in.
        if longest > best[0] or (longest == best[0] and best_s is not None and s < best_s):
            best, best_s = (longest, perp), s
    return best


def _feret(pts: np.ndarray) -> tuple:
    """Longest distance between 2D points (mm) and the points' width perpendicular to it."""
    try:
        hull = pts[ConvexHull(pts).vertices]
    except (QhullError, ValueError):  # collinear or too few points: all points are extreme enough
        hull = np.unique(pts, axis=0)
    diff = hull[:, None, :] - hull[None, :, :]
    dist = np.sqrt((diff ** 2).sum(-1))
    a, b = np.unravel_index(np.argmax(dist), dist.shape)
    longest = float(dist[a, b])
    if longest == 0:
        return 0.0, 0.0
    axis = (hull[b] - hull[a]) / longest
    normal = np.array([-axis[1], axis[0]])
    proj = (hull - hull[a]) @ normal
    return longest, float(proj.max() - proj.min())
