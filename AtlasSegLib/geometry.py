"""Voxel grids in physical (ITK LPS) space and the resampling between them.

A ``Grid`` is the geometry of an image without its voxels. Index order is ITK's (i, j, k); numpy arrays made
by SimpleITK are (k, j, i). Arrays handed to the network are (i, j, k), as MONAI and nibabel hold them.
"""
from __future__ import annotations

from dataclasses import dataclass
import itertools
import math

import numpy as np
import SimpleITK as sitk
from nibabel.orientations import axcodes2ornt, io_orientation

# LPS (ITK) to RAS (nibabel/MONAI) world coordinates.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Grid:
    size: tuple  # (i, j, k) voxels
    spacing: tuple  # mm along i, j, k
    origin: tuple  # LPS position of voxel (0, 0, 0)'s centre
    direction: tuple  # 9 numbers, row-major; column a = direction of index axis a

    @classmethod
    def of(cls, image: sitk.Image) -> "Grid":
        return cls(tuple(int(s) for s in image.GetSize()), tuple(float(s) for s in image.GetSpacing()),
                   tuple(float(o) for o in image.GetOrigin()), tuple(float(d) for d in image.GetDirection()))

    @property
    def matrix(self) -> np.ndarray:
        """3×3 index-to-physical matrix (direction × spacing)."""
        return np.asarray(self.direction).reshape(3, 3) @ np.diag(self.spacing)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    @property
    def n_voxels(self) -> int:
        return int(np.prod(self.size))

    def index_to_physical(self, ijk) -> np.ndarray:
        """LPS positions (…, 3) of continuous indices (…, 3) in (i, j, k) order."""
        return np.asarray(ijk, dtype=float) @ self.matrix.T + np.asarray(self.origin)

    def physical_to_index(self, lps) -> np.ndarray:
        return (np.asarray(lps, dtype=float) - np.asarray(self.origin)) @ np.linalg.inv(self.matrix).T

    def sub(self, start, size) -> "Grid":
        """The grid of the box ``start`` (i, j, k) + ``size`` of this grid."""
        origin = self.index_to_physical(np.asarray(start, dtype=float))
        return Grid(tuple(int(s) for s in size), self.spacing, tuple(float(o) for o in origin), self.direction)

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def image_from_ijk(self, array_ijk: np.ndarray) -> sitk.Image:
        """A SimpleITK image on this grid from an (i, j, k) array (copied)."""
        if tuple(array_ijk.shape) != self.size:
            raise ValueError(f"array shape {array_ijk.shape} does not match grid size {self.size}")
        return self.apply_to(sitk.GetImageFromArray(np.ascontiguousarray(array_ijk.transpose(2, 1, 0))))

    def image_from_kji(self, array_kji: np.ndarray) -> sitk.Image:
        if tuple(array_kji.shape[::-1]) != self.size:
            raise ValueError(f"array shape {array_kji.shape} does not match grid size {self.size} (k, j, i)")
        return self.apply_to(sitk.GetImageFromArray(array_kji))

    def as_dict(self) -> dict:
        return {"size": list(self.size), "spacing": list(self.spacing), "origin": list(self.origin),
                "direction": list(self.direction)}

    @classmethod
    def from_dict(cls, d: dict) -> "Grid":
        return cls(tuple(int(v) for v in d["size"]), tuple(float(v) for v in d["spacing"]),
                   tuple(float(v) for v in d["origin"]), tuple(float(v) for v in d["direction"]))

    def differences(self, other: "Grid", tolerance_mm: float = 1e-3) -> list:
        """Human-readable differences to ``other`` (empty when the grids match within ``tolerance_mm``).

        Directions are compared by how far the far corner would move, so their tolerance is in mm too."""
        problems = []
        if tuple(self.size) != tuple(other.size):
            problems.append(f"size {list(self.size)} vs {list(other.size)}")
        if not np.allclose(self.spacing, other.spacing, rtol=0, atol=tolerance_mm):
            problems.append(f"spacing {_fmt_differing(self.spacing, other.spacing, tolerance_mm, 'ijk')} mm")
        if not np.allclose(self.origin, other.origin, rtol=0, atol=tolerance_mm):
            problems.append(f"origin {_fmt_differing(self.origin, other.origin, tolerance_mm, 'xyz')} mm (LPS)")
        extent = np.asarray(self.size, float) * np.asarray(self.spacing)
        a, b = np.asarray(self.direction).reshape(3, 3), np.asarray(other.direction).reshape(3, 3)
        shift = float(np.abs((a - b) * extent).max())
        if shift > tolerance_mm:
            problems.append(f"directions {_fmt(self.direction)} vs {_fmt(other.direction)} "
                            f"(far corner moves {shift:.3g} mm)")
        return problems


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def _fmt_differing(a, b, tolerance: float, axes: str) -> str:
    """The components of ``a`` and ``b`` that differ by more than ``tolerance``, with as many decimals as it takes
    to see the difference: "z -804.5 vs -804.52 (differs by 0.02)" rather than "(…, -804.5) vs (…, -804.5)"."""
    parts = []
    for axis, x, y in zip(axes, a, b):
        delta = abs(float(x) - float(y))
        if delta <= tolerance:
            continue
        decimals = min(9, max(1, 1 - math.floor(math.log10(delta))))
        fmt = lambda v: f"{float(v):.{decimals}f}".rstrip("0").rstrip(".")  # noqa: E731
        parts.append(f"{axis} {fmt(x)} vs {fmt(y)} (differs by {fmt(delta)})")
    return ", ".join(parts)


def orientation_transform(grid: Grid, orientation: str) -> np.ndarray:
    """For each index axis of ``grid``: (output axis, +1/-1 flip) that brings the axes closest to
    ``orientation`` (three letters saying where increasing i, j, k point, e.g. "RAS" or "LAS").

    The rule is nibabel's ``io_orientation`` (what MONAI's ``Orientation`` uses): an oblique scan keeps its
    obliquity, the axes are only permuted and flipped."""
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ grid.matrix
    affine[:3, 3] = LPS_TO_RAS @ np.asarray(grid.origin)
    ornt = io_orientation(affine).copy()  # relative to RAS
    target = axcodes2ornt(tuple(orientation))  # relative to RAS as well: flips where the code differs
    for axis in range(3):
        ornt[axis, 1] *= target[int(ornt[axis, 0]), 1]
    return ornt


def oriented(grid: Grid, orientation: str) -> Grid:
    """The same voxels with index axes permuted/flipped as ``orientation_transform`` says (no interpolation);
    "native" returns ``grid`` unchanged."""
    if orientation == "native":
        return grid
    ornt = orientation_transform(grid, orientation)
    size = [0, 0, 0]
    spacing = [0.0, 0.0, 0.0]
    direction = np.zeros((3, 3))
    first = np.zeros(3)
    d = np.asarray(grid.direction).reshape(3, 3)
    for axis, (out_axis, flip) in enumerate(ornt):
        out_axis = int(out_axis)
        size[out_axis] = grid.size[axis]
        spacing[out_axis] = grid.spacing[axis]
        direction[:, out_axis] = d[:, axis] * flip
        if flip < 0:
            first[axis] = grid.size[axis] - 1
    origin = grid.index_to_physical(first)
    return Grid(tuple(size), tuple(spacing), tuple(float(o) for o in origin), tuple(float(v) + 0.0 for v in direction.reshape(-1)))


def reorient_array(array_kji: np.ndarray, grid: Grid, orientation: str) -> np.ndarray:
    """``array_kji`` (SimpleITK order on ``grid``) as an (i, j, k) array on ``oriented(grid, orientation)``
    (a view where possible)."""
    ornt = orientation_transform(grid, orientation)
    arr = array_kji.transpose(2, 1, 0)
    for axis, (_, flip) in enumerate(ornt):
        if flip < 0:
            arr = np.flip(arr, axis)
    return arr.transpose(np.argsort(ornt[:, 0].astype(int)))


def respaced(grid: Grid, spacing) -> Grid:
    """The grid resampled to ``spacing`` keeping voxel 0's centre and the directions, sized as MONAI's
    ``Spacing`` does (round((n - 1) · old / new) + 1 voxels per axis)."""
    spacing = tuple(float(s) for s in spacing)
    size = tuple(int(round((n - 1) * old / new)) + 1 for n, old, new in zip(grid.size, grid.spacing, spacing))
    return Grid(size, spacing, grid.origin, grid.direction)


def resample(image: sitk.Image, grid: Grid, *, interpolator=sitk.sitkLinear, pixel_type=None,
             default=0.0, extrapolate: bool = False) -> sitk.Image:
    """Resample ``image`` onto ``grid`` in physical space (identity transform)."""
    f = sitk.ResampleImageFilter()
    f.SetSize(grid.size)
    f.SetOutputSpacing(grid.spacing)
    f.SetOutputOrigin(grid.origin)
    f.SetOutputDirection(grid.direction)
    f.SetInterpolator(interpolator)
    f.SetDefaultPixelValue(default)
    f.SetOutputPixelType(image.GetPixelID() if pixel_type is None else pixel_type)
    f.SetUseNearestNeighborExtrapolator(extrapolate)
    return f.Execute(image)


def covering_box(target: Grid, source: Grid, start, stop, *, margin: int = 1):
    """The box of ``target`` indices (start, size) covering the ``source`` index box [start, stop).

    Used to resample a structure only where it can be non-zero; ``margin`` voxels are added so nearest-
    neighbour rounding at the edges is never cut off. Returns None when the box misses ``target``."""
    lo = np.asarray(start, dtype=float) - 0.5
    hi = np.asarray(stop, dtype=float) - 0.5
    corners = np.array(list(itertools.product(*zip(lo, hi))))
    idx = target.physical_to_index(source.index_to_physical(corners))
    first = np.floor(idx.min(axis=0)).astype(int) - margin
    last = np.ceil(idx.max(axis=0)).astype(int) + margin
    first = np.maximum(first, 0)
    last = np.minimum(last, np.asarray(target.size) - 1)
    if np.any(last < first):
        return None
    return tuple(int(v) for v in first), tuple(int(v) for v in last - first + 1)
