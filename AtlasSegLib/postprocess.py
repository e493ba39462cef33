"""Post-processing and measurements on masks held as (k, j, i) numpy arrays inside a box of a grid.

Volumes are in mm³ and diameters in mm, computed from the grid's spacing and directions, never voxel counts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cc3d
import numpy as np
import SimpleITK as sitk
from scipy.spatial import ConvexHull, QhullError

from .geometry import LPS_TO_RAS, Grid


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
    min_voxels = int(math.ceil(min_mm3 / voxel_mm3 - 1e-9))
    return cc3d.dust(mask, threshold=min_voxels, connectivity=26, in_place=False).astype(np.uint8, copy=False)


def dilate_mm(mask: np.ndarray, spacing_kji, radius_mm: float) -> np.ndarray:
    """Binary dilation by a ball of ``radius_mm`` (per-axis radius in voxels from the spacing)."""
    if radius_mm <= 0 or not mask.any():
        return mask
    radius = [max(1, int(round(radius_mm / s))) for s in spacing_kji[::-1]]  # SimpleITK wants (i, j, k)
    img = sitk.GetImageFromArray(mask.astype(np.uint8, copy=False))
    out = sitk.BinaryDilate(img, radius, sitk.sitkBall, 0, 1)
    return sitk.GetArrayViewFromImage(out).astype(np.uint8)


def tumor_mask(q_box: np.ndarray, gate_box, *, threshold: float, voxel_mm3: float, min_mm3: float) -> np.ndarray:
    """Tumor mask from a stored probability box: kept where p ≥ threshold, inside the gate (if any), in
    components of at least ``min_mm3``. This single function is used by the pipeline and by every later
    threshold change, so a re-threshold at the original value reproduces the original mask exactly."""
    mask = (q_box >= threshold_level(threshold)).astype(np.uint8)
    if gate_box is not None:
        mask &= gate_box
    return remove_small(mask, voxel_mm3, min_mm3)


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
    labels, n = cc3d.connected_components(mask_box, connectivity=26, return_N=True)
    stats = cc3d.statistics(labels)
    order = np.argsort(-stats["voxel_counts"][1:], kind="stable") + 1
    out = []
    axial = _axial_axis(box_grid)
    for rank, label in enumerate(order, start=1):
        slc = stats["bounding_boxes"][label]
        sub = labels[slc] == label
        voxels = int(stats["voxel_counts"][label])
        offset_kji = np.array([s.start for s in slc])
        centroid_ijk = stats["centroids"][label][::-1]
        lps = box_grid.index_to_physical(centroid_ijk)
        if q_box is not None:
            probs = q_box[slc][sub].astype(np.float32) / 255.0
            pmax, pmean = float(probs.max()), float(probs.mean())
        else:
            pmax = pmean = float("nan")
        longest, perp = axial_diameters(sub, offset_kji, box_grid, axial)
        start = np.asarray(box_start_ijk) + offset_kji[::-1]
        stop = start + np.array([s.stop - s.start for s in slc])[::-1]
        out.append(Component(rank, voxels, voxels * box_grid.voxel_volume_mm3 / 1000.0, longest, perp, pmax, pmean,
                             tuple(float(v) for v in lps), tuple(float(v) for v in LPS_TO_RAS @ lps),
                             (tuple(int(v) for v in start), tuple(int(v) for v in stop))))
    return out


def _axial_axis(grid: Grid) -> int:
    """The index axis (0=i, 1=j, 2=k) closest to the patient's superior-inferior axis."""
    d = np.asarray(grid.direction).reshape(3, 3)
    return int(np.argmax(np.abs(d[2, :])))


def axial_diameters(sub_kji: np.ndarray, offset_kji, grid: Grid, axial_axis: int) -> tuple:
    """Longest in-plane diameter over the axial slices of a component, and the longest extent perpendicular
    to it in that slice (both mm, measured on voxel corners, i.e. the voxelised object's outer extent)."""
    kji_axis = 2 - axial_axis
    best = (0.0, 0.0)
    m = grid.matrix
    inplane = [a for a in range(3) if a != axial_axis]
    corners = np.array([[dx, dy] for dx in (-0.5, 0.5) for dy in (-0.5, 0.5)])
    for s in range(sub_kji.shape[kji_axis]):
        sl = np.take(sub_kji, s, axis=kji_axis)
        if not sl.any():
            continue
        # Only each row's first and last pixel can be hull vertices: keeps the cost linear in the slice height
        # instead of its area (a 24 M-voxel component took minutes with every pixel).
        has = sl.any(axis=1)
        r = np.nonzero(has)[0]
        first = np.argmax(sl[r], axis=1)
        last = sl.shape[1] - 1 - np.argmax(sl[r, ::-1], axis=1)
        rows = np.concatenate([r, r])
        cols = np.concatenate([first, last])
        # sl axes are the remaining kji axes in order; map them to ijk in-plane axes.
        remaining_kji = [a for a in range(3) if a != kji_axis]
        idx = np.zeros((rows.size, 2))
        coord = {remaining_kji[0]: rows, remaining_kji[1]: cols}
        for t, a in enumerate(inplane):
            idx[:, t] = coord[2 - a] + offset_kji[2 - a]
        pts = (idx[:, None, :] + corners[None, :, :]).reshape(-1, 2)
        xyz = pts @ m[:, inplane].T  # physical offsets of in-plane corners (mm)
        longest, perp = _feret(xyz)
        if longest > best[0]:
            best = (longest, perp)
    return best


def _feret(xyz: np.ndarray) -> tuple:
    pts = np.unique(np.round(xyz, 6), axis=0)
    try:
        hull = pts[ConvexHull(_planar(pts)).vertices]
    except (QhullError, ValueError):
        hull = pts
    diff = hull[:, None, :] - hull[None, :, :]
    dist = np.sqrt((diff ** 2).sum(-1))
    a, b = np.unravel_index(np.argmax(dist), dist.shape)
    longest = float(dist[a, b])
    if longest == 0:
        return 0.0, 0.0
    axis = (hull[b] - hull[a]) / longest
    rel = hull - hull[a]
    perp_vec = rel - np.outer(rel @ axis, axis)
    # Width perpendicular to the long axis: the spread of the hull along the in-plane normal of that axis.
    normal = np.cross(axis, np.cross(perp_vec[np.argmax((perp_vec ** 2).sum(1))], axis)) if np.any(perp_vec) else None
    if normal is None or not np.any(normal):
        return longest, 0.0
    normal = normal / np.linalg.norm(normal)
    proj = rel @ normal
    return longest, float(proj.max() - proj.min())


def _planar(pts: np.ndarray) -> np.ndarray:
    """2D coordinates of coplanar 3D points in their own plane (for the convex hull)."""
    centred = pts - pts.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T
