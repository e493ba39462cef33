"""Add a missed lesion by one click, and resize one lesion on its probability map (host-independent, no file I/O).

The other half of the review workflow (``review`` removes false positives): a click inside a tumor the model
missed makes a lesion of it in a fraction of a second on a CPU.

* ``add_lesion``: a click inside an existing candidate selects that candidate (never a duplicate). Elsewhere the
  model's own probability map is used first: the connected region around the click at the highest threshold that
  still gives the lesion its extent (the half maximum of the local peak, raised until the region has a plausible
  size). Where the model gave (nearly) nothing, or only part of the lesion (its region under half of the
  image path's), the CT itself: the region of similar attenuation around the click,
  from the statistics of a small ball at the click and of the organ around it, grown by SimpleITK's
  ConnectedThreshold on a lightly smoothed window, bounded by the organ (gate) mask and a maximum diameter,
  opened to cut thin leaks into vessels or neighbouring tissue.
* ``resize_lesion``: one lesion's own threshold on the probability map: it grows or shrinks that lesion alone and
  never takes (or touches) another lesion's voxels, so it never merges into a neighbour.
* ``ras_to_ijk`` / ``parse_point``: ``--add-at R,A,S`` (millimetres, RAS as Slicer shows them) to a voxel.

Arrays are numpy (k, j, i) like the rest of AtlasSegLib, all in one frame (typically the tumor probability map's
box: ``ProbabilityMap.box_slices`` of the CT and of the gate); points are (k, j, i) indices in that frame unless
named ``ijk``. Every search works in a window around the click or the lesion (the plausible size bounds it), never
on the whole volume.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import cc3d
import edt
import fill_voids
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .errors import InputError
from .geometry import LPS_TO_RAS, Grid
from .masks import bounding_slices

ORIGIN_MODEL = "model"
ORIGIN_PROBABILITY = "added: probability"
ORIGIN_IMAGE = "added: image"

# The model "gave (nearly) nothing" where its local peak stays below this probability: its map holds no
# lesion shape there, so the CT's attenuation makes the region instead.
MODEL_FLOOR_P = 0.05
# The largest lesion one click makes (diameter of the search window, mm): liver metastases of 10-40 mm fit with
# room; a region that reaches the window's border is not a plausible lesion and is tightened first.
MAX_DIAMETER_MM = 80.0
# The model's region is not used when it covers less than this fraction of the image path's region: the model saw
# part of the lesion the reader clicked, not its extent. Two regions whose volumes differ by more than 2x cannot agree
# better than Dice 2r/(1+r) = 0.67; the demo model's half-maximum regions of the tumors it missed are 2-30 % of the
# visible tumor (quality bench, phantoms at threshold 0.999), where a quarter let a 29 %-region through at Dice 0.42.
SPECK_FRACTION = 0.5
# The statistics ball at the click (image path), mm; at least one voxel either side on every axis.
BALL_RADIUS_MM = 3.0
# Gaussian smoothing before the image path's threshold: at least SMOOTH_MM, at least SMOOTH_VOXELS of a voxel on each
# axis. CT noise of 10-20 HU otherwise leaves the region full of holes and its edge frayed; 1 mm (half a 3 mm voxel)
# keeps 10 mm lesions.
SMOOTH_MM = 1.0
SMOOTH_VOXELS = 0.5
# The image path's region is opened by a ball of this fraction of the lesion's inscribed radius at the click: leaks
# into vessels or along the organ's edge (thinner than the lesion) are cut, the lesion itself keeps its shape.
OPEN_FRACTION = 0.6


@dataclass
class Added:
    """What one click did.

    ``action``: "select" (the click is inside candidate ``label`` of the labels given), "added" (``mask``, a bool
    array of the new lesion at ``offset_kji`` in the frame given) or "none" (nothing plausible there: outside the
    gate, or no region; ``reason`` says why). ``origin``: ``ORIGIN_PROBABILITY`` or ``ORIGIN_IMAGE``;
    ``threshold``: the probability threshold used (model path) or None; ``hu_range``: the attenuation interval
    (image path) or None; ``model_voxels``: the size of the model's region at the click (0 where the model gave
    nothing), so a caller can tell "the model saw only part of it" from "the model saw nothing"."""
    action: str
    label: int = 0
    mask: Optional[np.ndarray] = None
    offset_kji: tuple = (0, 0, 0)
    origin: Optional[str] = None
    threshold: Optional[float] = None
    hu_range: Optional[tuple] = None
    reason: str = ""
    model_voxels: int = 0  # the model's own region at the click (0: none), also when the image path was taken

    @property
    def voxels(self) -> int:
        return int(np.count_nonzero(self.mask)) if self.mask is not None else 0

    @property
    def region(self) -> tuple:
        """The mask's place in the frame: (k, j, i) slices."""
        return tuple(slice(o, o + n) for o, n in zip(self.offset_kji, self.mask.shape)) if self.mask is not None \
            else ()

    def paste(self, labels: np.ndarray, value: int) -> None:
        """Write the lesion into a label (or 0/1 mask) array of the frame with ``value``."""
        if self.action == "added":
            labels[self.region][self.mask] = value


@dataclass
class Resized:
    """One lesion at its own threshold: its new mask ``mask`` (bool, at ``offset_kji``, covering the lesion's old
    and new voxels) and the old one ``before`` on the same window; apply with ``apply``."""
    label: int
    threshold: float
    offset_kji: tuple
    before: np.ndarray
    mask: np.ndarray

    @property
    def region(self) -> tuple:
        return tuple(slice(o, o + n) for o, n in zip(self.offset_kji, self.mask.shape))

    @property
    def voxels(self) -> int:
        return int(np.count_nonzero(self.mask))

    @property
    def changed_voxels(self) -> int:
        return int(np.count_nonzero(self.before != self.mask))

    @property
    def bounds(self) -> Optional[tuple]:
        """The lesion's new bounding box in the frame ((k, j, i) slices; None when empty): the ``bounds`` of the
        next resize, which then never scans the whole frame."""
        box = bounding_slices(self.mask)
        if box is None:
            return None
        return tuple(slice(o + b.start, o + b.stop) for o, b in zip(self.offset_kji, box))

    def apply(self, labels: np.ndarray, value: Optional[int] = None) -> None:
        """Rewrite the lesion in ``labels`` (the label array it was computed on, or a 0/1 mask of the same frame):
        its old voxels become 0, its new ones ``value`` (default its label)."""
        window = labels[self.region]
        window[self.before & ~self.mask] = 0
        window[self.mask] = self.label if value is None else value


# ----------------------------------------------------------------------------------------------- helpers
def _window(center_kji, half_kji, shape) -> tuple:
    lo = np.maximum(np.asarray(center_kji) - half_kji, 0)
    hi = np.minimum(np.asarray(center_kji) + half_kji + 1, shape)
    return lo, hi


def _slices(lo, hi) -> tuple:
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _half_window(spacing_kji, max_diameter_mm: float) -> np.ndarray:
    return np.maximum(np.ceil(max_diameter_mm / 2.0 / np.asarray(spacing_kji, float)).astype(int), 2)


def _touches_border(comp: np.ndarray, lo, hi, shape) -> bool:
    """Whether a component of a window reaches a window face that is not the frame's own face: it may go on
    beyond the window, i.e. it is larger than the window allows."""
    for axis in range(3):
        ax = np.moveaxis(comp, axis, 0)
        if lo[axis] > 0 and ax[0].any():
            return True
        if hi[axis] < shape[axis] and ax[-1].any():
            return True
    return False


def _forbidden(labels_win: np.ndarray, keep_label: int = 0) -> np.ndarray:
    """Voxels a new or resized lesion may not take: every other lesion and a one-voxel rim around it (26-connected),
    so the lesions stay separate components and never merge."""
    others = labels_win != 0
    if keep_label:
        others &= labels_win != keep_label
    if not others.any():
        return others
    # maximum_filter is separable: several times faster than binary_dilation with a 3×3×3 cube.
    return ndimage.maximum_filter(others.view(np.uint8), size=3).view(bool)


def _component_at(mask: np.ndarray, kji) -> np.ndarray:
    labels = cc3d.connected_components(mask, connectivity=26)
    value = labels[tuple(kji)]
    return labels == value if value else np.zeros(mask.shape, bool)


def _crop(mask: np.ndarray, offset) -> tuple:
    box = bounding_slices(mask)
    return tuple(int(o) + b.start for o, b in zip(offset, box)), mask[box].copy()


def _level(p: float) -> int:
    """uint8 level of probability ``p`` (as ``postprocess.threshold_level``: p ≥ t ⇔ q ≥ level)."""
    return int(np.clip(np.ceil(p * 255.0 - 1e-6), 1, 255))


# ----------------------------------------------------------------------------------------------- add
def add_lesion(ct: np.ndarray, spacing_kji, q: Optional[np.ndarray], labels: np.ndarray, click_kji, *,
               gate: Optional[np.ndarray] = None, max_diameter_mm: float = MAX_DIAMETER_MM,
               model_floor_p: float = MODEL_FLOOR_P, ball_radius_mm: float = BALL_RADIUS_MM,
               smooth_mm: float = SMOOTH_MM) -> Added:
    """One click at ``click_kji``: select the candidate under it, or add the lesion around it.

    Args:
        ct: the CT in HU (k, j, i), any numeric dtype; the frame of every other array.
        spacing_kji: voxel spacing (k, j, i) in mm.
        q: the tumor probability map, uint8 p×255 as AtlasSeg keeps it (``probabilities/<tumor>.nii.gz``), or None
            (no map kept: the image path only).
        labels: the current candidates: a label array (each candidate its own value) or a 0/1 mask (then
            "select" returns 1 and the caller finds the component itself, e.g. with ``review.component_at``).
        click_kji: the clicked voxel.
        gate: the organ (gate) mask the tumor must lie in (``ProbabilityMap.gate``), or None.
        max_diameter_mm: the largest lesion one click makes.
        model_floor_p: below this local peak probability the model "gave nothing" there: image path.
    """
    shape = np.asarray(ct.shape)
    click = tuple(int(v) for v in click_kji)
    if len(click) != 3 or any(not 0 <= c < n for c, n in zip(click, shape)):
        return Added("none", reason=f"voxel {click[::-1]} (i, j, k) is outside the image {tuple(shape[::-1])}")
    for name, array in (("probability map", q), ("labels", labels), ("gate", gate)):
        if array is not None and array.shape != ct.shape:
            raise ValueError(f"{name} has shape {array.shape}, the CT {ct.shape}: give them on one frame")
    if labels[click]:
        return Added("select", label=int(labels[click]), reason="the click is inside an existing candidate")
    if gate is not None and not gate[click]:
        return Added("none", reason="the click is outside the organ the tumor must lie in (gate)")
    spacing = np.asarray(spacing_kji, float)
    half = _half_window(spacing, max_diameter_mm)
    lo, hi = _window(click, half, shape)
    win = _slices(lo, hi)
    local = tuple(np.asarray(click) - lo)
    allowed = ~_forbidden(labels[win])
    if gate is not None:
        allowed &= gate[win].astype(bool, copy=False)
    model = _probability_region(q[win], allowed, local, lo, hi, shape, spacing, model_floor_p) \
        if q is not None else None
    found = _image_region(ct[win], allowed, local, lo, hi, shape, spacing, ball_radius_mm, smooth_mm)
    model_voxels = 0
    if model is not None:
        comp, threshold = model
        model_voxels = int(np.count_nonzero(comp))
        # The model first, unless its lesion is part of the visible one (under half of the region of similar
        # attenuation): it did not see this lesion's extent.
        if found is None or model_voxels >= SPECK_FRACTION * np.count_nonzero(found[0]):
            offset, mask = _crop(comp, lo)
            return Added("added", mask=mask, offset_kji=offset, origin=ORIGIN_PROBABILITY, threshold=threshold,
                         model_voxels=model_voxels)
    if found is None:
        return Added("none", reason="no region of similar attenuation around the click")
    comp, hu_range = found
    offset, mask = _crop(comp, lo)
    return Added("added", mask=mask, offset_kji=offset, origin=ORIGIN_IMAGE, hu_range=hu_range,
                 model_voxels=model_voxels)


def _probability_region(q_win, allowed, local, lo, hi, shape, spacing, floor_p) -> Optional[tuple]:
    """The model path: ``(component, threshold)`` or None where the model gave (nearly) nothing.

    The local peak is the highest probability reachable from the click through voxels at least as probable as
    the floor; the lesion is its region at half that peak (its half-maximum edge, where a probability map's
    lesion boundary lies), or at the click's own probability if the click is on the rim. A region that reaches
    the window's border is too large: the threshold rises a level at a time until it fits."""
    floor = _level(floor_p)
    if q_win[local] < floor:
        # The click may sit just outside a weak blob's floor; a voxel above the floor within the statistics ball
        # is not enough evidence of a shape, so no model region.
        return None
    reach = _component_at((q_win >= floor) & allowed, local)
    if not reach.any():
        return None
    peak = int(q_win[reach].max())
    level = max(floor, min(int(q_win[local]), (peak + 1) // 2))
    while level <= int(q_win[local]):
        comp = _component_at((q_win >= level) & allowed, local)
        if not _touches_border(comp, lo, hi, shape):
            return comp, round(level / 255.0, 4)
        level += max(1, (peak - level) // 8)
    return None


def _ball(spacing, radius_mm: float) -> np.ndarray:
    r = np.maximum(np.ceil(radius_mm / spacing).astype(int), 1)
    grid = np.ogrid[tuple(slice(-n, n + 1) for n in r)]
    d2 = sum((g * s) ** 2 for g, s in zip(grid, spacing))
    ball = d2 <= max(radius_mm, float(spacing.max())) ** 2
    return ball


def _image_region(ct_win, allowed, local, lo, hi, shape, spacing, ball_radius_mm, smooth_mm) -> Optional[tuple]:
    """The image path: ``(component, (lower HU, upper HU))`` or None.

    The CT is smoothed by a Gaussian of ``smooth_mm`` or half a voxel, whichever is larger (on 3 mm voxels a 1 mm
    filter leaves the 15-20 HU noise as it is). The lesion's attenuation is the median of a small ball at the click,
    its spread the ball's robust standard deviation; the organ's is the *mode* of the allowed voxels of the window
    (a median is pulled towards the lesion itself, vessels and the partial-volume rim of a dilated gate). The
    interval reaches halfway towards the organ's attenuation (the half-contrast edge), and as far on the other
    side; with no contrast to the organ, ±2.5 spreads. Its 6-connected region around the ball is opened by a ball
    of ``OPEN_FRACTION`` of the lesion's own inscribed radius at the click (leaks thinner than the lesion into
    vessels or along the organ's edge are cut, the lesion keeps its shape) and given back its one-voxel rim. A
    region reaching the window's border is too large: the interval narrows towards the lesion's median until it
    fits."""
    image = sitk.GetImageFromArray(ct_win.astype(np.float32))
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    sigma = np.maximum(smooth_mm, SMOOTH_VOXELS * spacing)
    if sigma.max() > 0:
        image = sitk.SmoothingRecursiveGaussian(image, [float(v) for v in sigma[::-1]])
    smooth = sitk.GetArrayViewFromImage(image)
    ball = _ball(spacing, ball_radius_mm)
    r = np.asarray(ball.shape) // 2
    blo = np.asarray(local) - r
    sub = tuple(slice(max(0, a), a + n) for a, n in zip(blo, ball.shape))
    bsub = tuple(slice(s.start - a, s.stop - a) for s, a in zip(sub, blo))
    inball = ball[bsub] & allowed[sub]
    values = smooth[sub][inball]
    if values.size == 0:
        return None
    centre = float(np.median(values))
    spread = max(1.4826 * float(np.median(np.abs(values - centre))), 3.0)
    organ_hu = _mode_hu(smooth[allowed], centre)
    contrast = organ_hu - centre
    has_contrast = abs(contrast) > 2.0 * spread
    reach = abs(contrast) / 2.0 if has_contrast else 2.5 * spread  # the half-contrast edge, towards the organ
    far = max(reach, 2.5 * spread)  # away from the organ's attenuation: as wide (fat, air, bone stay out)
    seeds = np.zeros(allowed.shape, bool)
    seeds[sub] = inball
    for scale in (1.0, 0.75, 0.5, 0.35, 0.25):
        if not has_contrast:
            lower, upper = centre - reach * scale, centre + reach * scale
        elif contrast > 0:  # hypo-attenuating lesion, brighter organ
            lower, upper = centre - far, centre + reach * scale
        else:  # hyper-attenuating: mirrored
            lower, upper = centre - reach * scale, centre + far
        comp = _opened_region((smooth >= lower) & (smooth <= upper) & allowed, seeds, spacing)
        if comp is None or _touches_border(comp, lo, hi, shape):
            continue
        box = bounding_slices(comp)
        comp[box] = fill_voids.fill(comp[box], in_place=False) & allowed[box]
        return comp, (round(float(lower), 1), round(float(upper), 1))
    return None


def _mode_hu(values: np.ndarray, centre: float) -> float:
    """The most frequent attenuation (2 HU bins, smoothed over ±2 bins) of soft tissue within 200 HU of the
    lesion's: the organ's parenchyma, not its vessels, its rim or the lesion."""
    values = values[np.abs(values - centre) < 200.0]  # soft tissue around the lesion (no air, bone, fat)
    if values.size == 0:
        return centre
    # bincount of 2 HU bins from centre - 200 (no sort, unlike np.histogram with explicit edges)
    hist = np.bincount(((values - (centre - 200.0)) * 0.5).astype(np.intp), minlength=201)
    hist = ndimage.gaussian_filter1d(hist.astype(float), 2.0)
    return float(centre - 200.0 + 2.0 * int(np.argmax(hist)) + 1.0)


def _opened_region(candidate: np.ndarray, seeds: np.ndarray, spacing) -> Optional[np.ndarray]:
    """The 6-connected components of ``candidate`` that hold a seed voxel, opened by a ball of ``OPEN_FRACTION``
    of the region's inscribed radius at the seeds, erosion and dilation by Euclidean distance transforms (``edt``:
    round in millimetres on any voxel spacing), the dilation going one voxel of the finest axis further (the rim
    the opening shaved off the lesion comes back): a leak narrower than the lesion is cut at its neck."""
    hits = candidate & seeds
    if not hits.any():
        return None
    cc = cc3d.connected_components(candidate, connectivity=6)
    ids = np.unique(cc[hits])
    comp = np.isin(cc, ids[ids != 0])
    box = bounding_slices(comp, margin=1)
    part = comp[box]
    anisotropy = tuple(float(v) for v in spacing)
    inside = edt.edt(part, anisotropy=anisotropy, black_border=False)
    near = np.where(seeds[box], inside, 0.0)
    rho = OPEN_FRACTION * float(near.max())
    core = cc3d.connected_components(inside > rho, connectivity=26)
    pick = core[np.unravel_index(int(np.argmax(near)), near.shape)]
    if rho > 0 and pick:
        to_core = edt.edt(core != pick, anisotropy=anisotropy, black_border=False)
        comp[box] = part & (to_core <= rho + float(min(spacing)) + 1e-6)
    return comp


# ----------------------------------------------------------------------------------------------- resize
def resize_lesion(q: np.ndarray, labels: np.ndarray, label: int, threshold: float, *,
                  gate: Optional[np.ndarray] = None, seed_kji=None, bounds: Optional[tuple] = None) -> Resized:
    """Lesion ``label`` of ``labels`` at its own probability ``threshold``: the components of the probability map
    at ``threshold`` (within the gate) that overlap the lesion's core, without any voxel of another lesion or the
    one-voxel rim around it (so it never merges into a neighbour). The core: the lesion's voxels still above the
    threshold, else its most probable voxel (``seed_kji`` when given and inside it). A threshold above all of the
    lesion's probabilities gives an empty mask (the caller may keep the lesion as "below threshold").

    Works in a window around the lesion that grows only while the new region reaches its border.
    ``q``: uint8 p×255; ``labels``: label array (each lesion its own value) on the same frame. ``bounds``: the
    lesion's bounding box ((k, j, i) slices, e.g. from ``Labelling.parts`` or the last ``Resized.bounds``), so the
    lesion is not searched for over the whole frame."""
    if not 0.0 < float(threshold) < 1.0:
        raise InputError(f"a lesion threshold must be a probability in (0, 1), got {threshold}")
    if q.shape != labels.shape or (gate is not None and gate.shape != labels.shape):
        raise ValueError("q, labels and gate must be on one frame")
    shape = np.asarray(labels.shape)
    if bounds is not None:
        olo = np.array([b.start for b in bounds])
        ohi = np.array([b.stop for b in bounds])
        inside = labels[_slices(olo, ohi)] == label
    else:
        olo, ohi, inside = np.zeros(3, int), shape, labels == label
    own_box = bounding_slices(inside)
    if own_box is None:
        raise InputError(f"there is no lesion {label} to resize")
    olo, ohi = olo + [b.start for b in own_box], olo + [b.stop for b in own_box]
    level = _level(threshold)
    margin = np.maximum((ohi - olo) // 2, 8)
    while True:
        lo = np.maximum(olo - margin, 0)
        hi = np.minimum(ohi + margin, shape)
        win = _slices(lo, hi)
        lab_win = labels[win]
        own_win = lab_win == label
        allowed = (q[win] >= level) & ~_forbidden(lab_win, keep_label=label)
        if gate is not None:
            allowed &= gate[win].astype(bool, copy=False)
        core = own_win & allowed
        if not core.any():
            if seed_kji is not None and labels[tuple(seed_kji)] == label:
                pick = tuple(np.asarray(seed_kji) - lo)
            else:
                qi = np.where(own_win, q[win], 0)
                pick = np.unravel_index(int(np.argmax(qi)), qi.shape)
            if allowed[pick]:
                core = np.zeros(own_win.shape, bool)
                core[pick] = True
        if core.any():
            cc = cc3d.connected_components(allowed, connectivity=26)
            keep = np.unique(cc[core])
            grown = np.isin(cc, keep[keep != 0])
        else:
            grown = np.zeros(own_win.shape, bool)
        if not _touches_border(grown, lo, hi, shape) or np.all(lo == 0) and np.all(hi == shape):
            return Resized(int(label), float(threshold), tuple(int(v) for v in lo), own_win.copy(), grown)
        margin = margin * 2


# ----------------------------------------------------------------------------------------------- points
def parse_point(text: str, what: str = "--add-at") -> tuple:
    """Three numbers "A,B,C" (commas or spaces)."""
    parts = [p for p in str(text).replace(",", " ").split() if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or not all(np.isfinite(values)):
        raise InputError(f"{what} takes three numbers like 12.5,-40,103 (got '{text}')")
    return values


def ras_to_ijk(ras, grid: Grid) -> tuple:
    """The voxel (i, j, k) holding a point given in RAS millimetres (as Slicer shows coordinates); ITK grids are
    LPS, so R and A change sign. Raises InputError outside the grid."""
    lps = LPS_TO_RAS @ np.asarray(ras, float)  # the same diagonal flips RAS to LPS
    ijk = np.rint(grid.physical_to_index(lps)).astype(int)
    if np.any(ijk < 0) or np.any(ijk >= np.asarray(grid.size)):
        raise InputError(f"point R,A,S = {', '.join(f'{v:g}' for v in ras)} mm lies outside the image (voxel "
                         f"{tuple(int(v) for v in ijk)}, image size {tuple(grid.size)}); give RAS coordinates as "
                         "Slicer shows them for a point inside the CT")
    return tuple(int(v) for v in ijk)


def voxel_to_ijk(text_or_values, grid: Grid, what: str = "--add-at-voxel") -> tuple:
    """``--add-at-voxel I,J,K`` checked against the grid."""
    values = parse_point(text_or_values, what) if isinstance(text_or_values, str) else tuple(text_or_values)
    if any(float(v) != int(v) for v in values):
        raise InputError(f"{what} takes whole voxel indices I,J,K (got {values})")
    ijk = tuple(int(v) for v in values)
    if any(not 0 <= v < n for v, n in zip(ijk, grid.size)):
        raise InputError(f"{what} {ijk} lies outside the image (size {tuple(grid.size)})")
    return ijk
