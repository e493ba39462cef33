"""Synthetic tumors inserted into real CT, after the recipe of SyntheticTumors (Hu et al., CVPR 2023).

The paper's description, implemented here from scratch (no code of theirs is used):

1. *Location*: a point inside the organ, far enough from its edge that the tumor stays (almost) inside, and where
   the tumor does not collide with vessels (bright voxels of the smoothed CT inside the organ).
2. *Shape*: an ellipsoid with random axes and orientation, distorted by an elastic deformation (a smooth random
   displacement field), then blurred: the blurred shape is the blending weight, which gives the soft edge.
3. *Texture*: Gaussian noise on a coarse grid, scaled up to the CT's grid by cubic interpolation (grains of a few
   mm) and smoothed by a Gaussian filter.
4. *Blending*: inside the weight, the CT's low-frequency content is replaced by the tumor's mean HU plus the
   texture; the scanner's own fine noise is kept, so the tumor has the grain of its surroundings. The mean is the
   requested contrast relative to the surrounding organ tissue: the median HU of the organ's voxels in a shell
   around the tumor (vessels left out, measured on the CT before any tumor went in), because a tumor's
   conspicuity is relative to the parenchyma around it and an organ's attenuation varies (a real liver is 31-37
   HU in places and 47 HU on average); the organ's mean only where that shell holds too few organ voxels.

Every number (size classes, margins, grain, default contrast per organ) is in ``data/synthesis.json`` with its
source. Arrays are numpy (z, y, x) as SimpleITK's ``GetArrayFromImage`` gives them; spacing is (z, y, x) in mm.
"""
from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np
from scipy import ndimage

from . import __version__
from .errors import InputError
from .masks import bounding_slices

log = logging.getLogger(__name__)

PARAMS_PATH = Path(__file__).resolve().parent / "data" / "synthesis.json"
ORGANS = ("liver", "pancreas", "kidney")
MAX_COUNT = 50


@lru_cache(maxsize=1)
def recipe() -> dict:
    """``data/synthesis.json``: the recipe's parameters and their sources."""
    return json.loads(PARAMS_PATH.read_text(encoding="utf-8"))


@dataclass
class SynthesisResult:
    """What ``insert_tumors`` made.

    Attributes:
        ct: Same shape and dtype as the input array (z, y, x), tumors inserted.
        mask: bool (z, y, x): the tumors (the truth).
        tumors: One dict per tumor: ``id``, ``center_zyx`` (voxel), ``diameter_mm`` (nominal), ``contrast_hu``
            (tumor mean minus reference HU, as asked or drawn), ``size_class``, ``volume_ml`` (of its truth
            voxels), and ``reference_hu`` (what the contrast is relative to: the median of the surrounding organ
            tissue, the organ's mean where too little of it surrounds the tumor, or without an organ mask the
            local soft tissue's mean), ``mean_hu`` (measured inside its
            truth after insertion), ``equivalent_diameter_mm`` (of a sphere of its volume), ``axes_mm`` (the
            ellipsoid's three diameters before the elastic deformation).
        changed: Tuple of slices: the box that holds every changed voxel (empty slices when nothing changed).
    """

    ct: np.ndarray
    mask: np.ndarray
    tumors: list
    changed: tuple


def size_class(diameter_mm: float) -> str:
    """The paper's size class of a tumor of this nominal diameter: tiny, small, medium or large
    (``evaluate.size_class``: one rule, the bounds of ``data/synthesis.json``, for inserted and evaluated tumors)."""
    # here, not at the top: evaluate brings review, outputs and scipy.spatial, which inserting a tumor never needs
    from .evaluate import size_class as evaluated_size_class

    return evaluated_size_class(diameter_mm)


def _range(value, what: str, unit: str) -> tuple:
    """A (lo, hi) pair from a number or a pair."""
    if value is None:
        return None
    if np.isscalar(value):
        lo = hi = float(value)
    else:
        vals = [float(v) for v in value]
        if len(vals) != 2:
            raise InputError(f"{what} must be one number or a range MIN-MAX, got {value!r}")
        lo, hi = vals
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
        raise InputError(f"{what} range {lo:g}-{hi:g} {unit} is empty or not finite; give MIN-MAX with MIN <= MAX")
    return lo, hi


def _check_options(ct: np.ndarray, spacing_zyx, organ_name: str, diameter_mm, contrast_hu, mass_effect_mm,
                   capsule_hu) -> tuple:
    """``insert_tumors``' options checked: ``(spacing, recipe, (min, max) diameter, (min, max) contrast)``."""
    if ct.ndim != 3:
        raise InputError(f"the CT must be a 3D array (z, y, x), got shape {ct.shape}")
    spacing = np.asarray(spacing_zyx, dtype=float)
    if spacing.shape != (3,) or not np.all(spacing > 0):
        raise InputError(f"spacing must be three positive numbers (z, y, x) in mm, got {spacing_zyx!r}")
    if organ_name not in recipe()["organs"]:
        raise InputError(f"organ '{organ_name}' is not supported; choose one of {', '.join(ORGANS)}")
    params = recipe()
    diam = _range(diameter_mm, "diameter", "mm")
    if diam[0] <= 0:
        raise InputError(f"diameter must be positive, got {diam[0]:g} mm")
    if diam[0] < spacing.max():
        raise InputError(f"a {diam[0]:g} mm tumor is smaller than this CT's {spacing.max():g} mm voxels and could "
                         f"not be seen; ask for a diameter of at least {spacing.max():g} mm")
    contrast = _range(contrast_hu, "contrast", "HU") or tuple(params["organs"][organ_name]["contrast_hu"])
    if not 0 <= float(mass_effect_mm) <= 10:
        raise InputError(f"mass effect must be 0-10 mm, got {mass_effect_mm:g}")
    if not -200 <= float(capsule_hu) <= 200:
        raise InputError(f"capsule must be -200..200 HU, got {capsule_hu:g}")
    return spacing, params, diam, contrast


def _check_places(ct: np.ndarray, organ, organ_name: str, count: int, centers_zyx) -> tuple:
    """Where ``insert_tumors`` may put tumors, checked: ``(organ mask as bool or None, centres or None, n)``."""
    if organ is not None:
        organ = np.asarray(organ)
        if organ.shape != ct.shape:
            raise InputError(f"the {organ_name} mask has shape {organ.shape} (z, y, x) but the CT has {ct.shape}; "
                             "give a mask made on the CT's own grid")
        organ = organ > 0
        if not organ.any():
            raise InputError(f"the {organ_name} mask is empty: the organ is absent from this CT (or the mask is for "
                             "another scan); give a mask that contains it")
    if centers_zyx is None:
        if organ is None:
            raise InputError("without points (centers_zyx) an organ mask is needed to place the tumors")
        if not 1 <= int(count) <= MAX_COUNT:
            raise InputError(f"count must be 1-{MAX_COUNT}, got {count}")
        centers = None
        n = int(count)
    else:
        centers = [tuple(int(round(float(c))) for c in p) for p in centers_zyx]
        for p in centers:
            if len(p) != 3 or any(not 0 <= c < s for c, s in zip(p, ct.shape)):
                raise InputError(f"point {p} (z, y, x) is outside the image {ct.shape}; click inside the CT")
            if organ is not None and not organ[p]:
                raise InputError(f"point {p} (z, y, x) is outside the {organ_name} mask; click inside the organ")
        n = len(centers)
        if n == 0:
            raise InputError("centers_zyx is empty: give at least one point")
    return organ, centers, n


def insert_tumors(ct: np.ndarray, organ: Optional[np.ndarray], spacing_zyx, *, organ_name: str = "liver",
                  count: int = 1, diameter_mm=(10.0, 30.0), contrast_hu=None, centers_zyx=None,
                  seed: int = 0, mass_effect_mm: float = 0.0, capsule_hu: float = 0.0) -> SynthesisResult:
    """Insert synthetic tumors into a CT array.

    Args:
        ct: CT in HU, (z, y, x), any numeric dtype; not modified.
        organ: bool/0-1 mask of the organ on the same grid, or None (only with ``centers_zyx``).
        spacing_zyx: voxel spacing (z, y, x) in mm.
        organ_name: liver, pancreas or kidney: chooses the default contrast range.
        count: number of tumors placed at random inside the organ (ignored with ``centers_zyx``).
        diameter_mm: nominal diameter, one number or a (min, max) range drawn uniformly per tumor.
        contrast_hu: tumor mean minus the HU of the surrounding organ tissue (negative: hypo-attenuating): the
            median of the organ's voxels within ``reference.shell_mm`` of the tumor's truth, vessels left out, on
            the CT before insertion (the organ's mean when fewer than ``reference.min_voxels`` of them; see
            ``data/synthesis.json``); one number or a range; None: the organ's default range.
        centers_zyx: one tumor at each of these voxels (e.g. a clicked point). ``organ`` may then be None:
            the contrast is relative to the local soft tissue's mean HU.
        seed: the same seed (and inputs) gives the same CT; another seed gives other tumors.
        mass_effect_mm: the paper's optional mass effect: how far the tumor pushes the tissue at its edge
            outwards (fading to nothing at about twice its radius); 0 = off.
        capsule_hu: the paper's optional capsule: HU added along the tumor's edge (a brighter rim); 0 = off.

    Returns:
        A ``SynthesisResult``.

    Raises:
        InputError: the organ is absent or off the grid, too small for the sizes, a point lies outside it or
            the image, or an option is out of range.
    """
    ct = np.asarray(ct)
    spacing, params, diam, contrast = _check_options(ct, spacing_zyx, organ_name, diameter_mm, contrast_hu,
                                                     mass_effect_mm, capsule_hu)
    organ, centers, n = _check_places(ct, organ, organ_name, count, centers_zyx)

    rng = np.random.default_rng(np.random.SeedSequence(int(seed)))
    out = ct.copy()
    truth = np.zeros(ct.shape, dtype=bool)
    # The organ's box must hold every tumor's box (_tumor_shape's reach; twice the radius with a mass effect).
    margin = diam[1] * (1.5 if mass_effect_mm else 0.75) + 2 * params["location"]["near_organ_mm"] + 10.0
    placer = _Placer(ct, organ, spacing, params, margin) if organ is not None else None
    tumors, boxes, insides = [], [], []
    for k in range(n):
        d = float(rng.uniform(*diam))
        c_hu = float(rng.uniform(*contrast))
        shape_w, axes = _tumor_shape(rng, d / 2.0, spacing, params, mass_effect_mm)
        if centers is not None:
            centre = np.asarray(centers[k])
        else:
            centre = placer.place(rng, shape_w, d, organ_name, k, n)
        box, sub = _clip_box(centre, shape_w.shape, ct.shape)
        weight = shape_w[sub].astype(np.float32)
        if placer is not None:
            weight *= placer.near_weight(box)
        if centers is None:
            placer.occupy(box, weight >= 0.5)
        weight[weight < 0.01] = 0.0  # the blur's far tail would change voxels by a fraction of an HU
        inside = weight >= 0.5
        if not inside.any():  # a tumor smaller than a voxel's reach: its centre voxel still marks it
            inside[tuple(int(c - b.start) for c, b in zip(centre, box))] = True
        reference = placer.reference(box, inside, k) if placer is not None else _local_mean(ct[box], weight)
        texture = _texture(rng, weight.shape, spacing, params)
        if capsule_hu:
            # A thin rim centred on the truth's edge (weight 0.5), about a voxel wide either side of it.
            texture += capsule_hu * np.exp(-(((weight - 0.5) / 0.3) ** 2)) / np.maximum(weight, 0.05)
        if mass_effect_mm:
            allowed = placer.near_weight(box) if placer is not None else np.ones(weight.shape, np.float32)
            _push(out, box, centre, d / 2.0, mass_effect_mm, spacing, allowed)
        _blend(out, box, weight, reference + c_hu, texture, spacing)
        truth[box] |= inside
        boxes.append(box)
        insides.append(inside)
        tumors.append({"id": k + 1, "center_zyx": [int(c) for c in centre], "diameter_mm": round(d, 1),
                       "contrast_hu": round(c_hu, 1), "size_class": size_class(d), "reference_hu": round(reference, 1),
                       "axes_mm": [round(float(a), 1) for a in 2 * axes]})
    voxel_ml = float(np.prod(spacing)) / 1000.0
    for t, box, own in zip(tumors, boxes, insides):
        t["volume_ml"] = round(float(own.sum()) * voxel_ml, 3)
        t["mean_hu"] = round(float(out[box][own].mean()), 1)
        t["equivalent_diameter_mm"] = round(float(2.0 * (3.0 * own.sum() * np.prod(spacing) / (4.0 * np.pi)) ** (1 / 3)), 1)
    return SynthesisResult(ct=out, mask=truth, tumors=tumors, changed=_changed_box(ct, out, boxes))


class _Placer:
    """Random locations inside an organ: away from its edge, off its vessels, apart from each other."""

    def __init__(self, ct: np.ndarray, organ: np.ndarray, spacing: np.ndarray, params: dict, margin_mm: float):
        loc = params["location"]
        self.spacing = spacing
        self.loc = loc
        self.shape = ct.shape
        # Everything is computed on the organ's box (plus the tumors' reach): a full 512x512x500 CT would cost
        # gigabytes of float distance maps for a liver that fills a tenth of it.
        box = bounding_slices(organ)  # never None: insert_tumors refuses an empty organ
        pad = np.ceil(margin_mm / spacing).astype(int)
        lo = np.maximum(np.array([b.start for b in box]) - pad, 0)
        hi = np.minimum(np.array([b.stop for b in box]) + pad, ct.shape)
        self.crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        self.offset = lo
        organ = organ[self.crop]
        ct = ct[self.crop]
        self.organ = organ
        self.ct = ct  # the CT before any tumor: the reference tissue around a tumor never holds another one
        self.ref_params = params["reference"]
        self.depth = ndimage.distance_transform_edt(organ, sampling=spacing)  # mm to the organ's edge
        interior = ndimage.binary_erosion(organ) if organ.sum() > 50 else organ
        values = ct[interior if interior.any() else organ].astype(np.float64)
        self.organ_mean = float(values.mean())
        # Vessels: bright voxels of the slightly smoothed CT inside the organ (contrast-filled vessels, calcifications).
        smooth = ndimage.gaussian_filter(ct.astype(np.float32), sigma=loc["vessel_smoothing_mm"] / spacing)
        self.vessels = organ & (smooth > self.organ_mean + loc["vessel_hu_above_organ"])
        # Only voxels in or near the organ may change: the soft edge may spill this far out, no further.
        self.near = ndimage.distance_transform_edt(~organ, sampling=spacing) <= loc["near_organ_mm"]
        self.occupied = np.zeros(organ.shape, dtype=bool)

    def local(self, box) -> tuple:
        """A box of the image as a box of the crop (the caller's boxes lie inside the crop)."""
        return tuple(slice(b.start - o, b.stop - o) for b, o in zip(box, self.offset))

    def near_weight(self, box) -> np.ndarray:
        """1 where a voxel of the image box is in or near the organ, else 0 (also outside the crop)."""
        out = np.zeros(tuple(b.stop - b.start for b in box), dtype=np.float32)
        inner = tuple(slice(max(b.start, c.start), min(b.stop, c.stop)) for b, c in zip(box, self.crop))
        if all(s.stop > s.start for s in inner):
            dst = tuple(slice(i.start - b.start, i.stop - b.start) for i, b in zip(inner, box))
            out[dst] = self.near[self.local(inner)]
        return out

    def reference(self, box, inside: np.ndarray, k: int) -> float:
        """The HU a tumor's contrast is relative to: the median of the organ's voxels within ``shell_mm`` outside
        its truth (``inside``, on the image box ``box``), vessels left out, on the CT before insertion; the organ's
        mean where that shell holds fewer than ``min_voxels`` organ voxels."""
        shell_mm = float(self.ref_params["shell_mm"])
        pad = np.ceil(shell_mm / self.spacing).astype(int) + 1
        # The tumor's box grown by the shell, as a box of the crop (the organ lies wholly inside the crop).
        lo = [max(b.start - o - p, 0) for b, o, p in zip(box, self.offset, pad)]
        hi = [min(b.stop - o + p, s) for b, o, p, s in zip(box, self.offset, pad, self.organ.shape)]
        if any(h <= a for a, h in zip(lo, hi)):
            return self.organ_mean
        ext = tuple(slice(a, h) for a, h in zip(lo, hi))
        tumor = np.zeros(tuple(h - a for a, h in zip(lo, hi)), dtype=bool)
        src, dst = [], []
        for b, o, a, h in zip(box, self.offset, lo, hi):
            s0, s1 = max(b.start - o, a), min(b.stop - o, h)
            if s1 <= s0:
                return self.organ_mean
            src.append(slice(s0 - (b.start - o), s1 - (b.start - o)))
            dst.append(slice(s0 - a, s1 - a))
        tumor[tuple(dst)] = inside[tuple(src)]
        if not tumor.any():  # a clicked tumor wholly beyond the organ's crop: no organ tissue around it either
            return self.organ_mean
        distance = ndimage.distance_transform_edt(~tumor, sampling=self.spacing)
        shell = (distance > 0) & (distance <= shell_mm) & self.organ[ext] & ~self.vessels[ext]
        values = self.ct[ext][shell]
        if values.size < int(self.ref_params["min_voxels"]):
            log.info("tumor %d: only %d organ voxels within %g mm around it; its contrast is relative to the organ's "
                     "mean (%.1f HU)", k + 1, values.size, shell_mm, self.organ_mean)
            return self.organ_mean
        return float(np.median(values))

    def occupy(self, box, inside) -> None:
        gap = self.loc["gap_between_tumors_mm"]
        grown = ndimage.binary_dilation(np.pad(inside, 2), iterations=max(1, int(round(gap / self.spacing.min()))))
        self.occupied[self.local(box)] |= grown[2:-2, 2:-2, 2:-2]

    def place(self, rng, shape_w: np.ndarray, diameter: float, organ_name: str, k: int, n: int) -> np.ndarray:
        inside = shape_w >= 0.5
        # Centres deep enough that most of the tumor can lie inside; the exact test below decides.
        need = 0.5 * diameter * 0.8
        candidates = np.argwhere((self.depth >= need) & ~self.occupied)
        if len(candidates) == 0:
            deepest = 2.0 * float(self.depth.max())
            if self.occupied.any() and deepest >= 2 * need:
                raise InputError(f"no room for tumor {k + 1} of {n} ({diameter:.0f} mm) in the {organ_name} beside the "
                                 "others; ask for fewer or smaller tumors (--count, --diameter)")
            raise InputError(f"the {organ_name} is too small for a {diameter:.0f} mm tumor (its thickest part holds a "
                             f"sphere of {deepest:.0f} mm); ask for a smaller --diameter")
        best, best_score = None, None
        min_inside = self.loc["min_inside_fraction"]
        total = max(1, int(inside.sum()))
        for _ in range(int(self.loc["attempts"])):
            centre = candidates[rng.integers(len(candidates))] + self.offset
            img_box, sub = _clip_box(centre, shape_w.shape, self.shape)
            mask = inside[sub]
            if mask.sum() < total:  # cut by the image's border
                continue
            box = self.local(img_box)
            if any(b.start < 0 or b.stop > s for b, s in zip(box, self.organ.shape)):
                continue
            if (mask & self.occupied[box]).any():
                continue
            fraction_in = float((mask & self.organ[box]).sum()) / total
            if fraction_in < min_inside:
                continue
            vessel_voxels = int((mask & self.vessels[box]).sum())
            if vessel_voxels == 0:
                return centre
            if best_score is None or vessel_voxels < best_score:
                best, best_score = centre, vessel_voxels
        if best is not None:
            log.info("tumor %d: every tried location touches a vessel; using the one touching least (%d voxels)",
                     k + 1, best_score)
            return best
        raise InputError(f"could not fit tumor {k + 1} of {n} ({diameter:.0f} mm) inside the {organ_name} "
                         f"({int(self.loc['attempts'])} tries): the organ is too thin or too full for this size; "
                         "ask for a smaller --diameter or fewer tumors")


def _tumor_shape(rng, radius_mm: float, spacing: np.ndarray, params: dict, mass_effect_mm: float = 0.0) -> tuple:
    """Soft-edged blending weight (float32 in [0, 1]) of one tumor on a box centred on the tumor, and its three
    semi-axes in mm. With a mass effect the box also holds the pushed tissue around it (twice the radius).

    An ellipsoid of random axes (their geometric mean is the nominal radius, so its volume is that of the nominal
    sphere) and random orientation, sampled through a smooth random displacement field (elastic deformation),
    then blurred (the soft edge)."""
    shape_p = params["shape"]
    lo, hi = shape_p["axis_ratio"]
    ratios = rng.uniform(lo, hi, 3)
    axes = radius_mm * ratios / np.prod(ratios) ** (1.0 / 3.0)
    rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    amplitude = shape_p["elastic_amplitude_fraction"] * radius_mm
    edge = shape_p["edge_sigma_mm"]
    reach = axes.max() + 2.0 * amplitude + 3.0 * edge + spacing
    if mass_effect_mm:
        reach = np.maximum(reach, 2.0 * axes.max() + spacing)
    half = np.ceil(reach / spacing).astype(int)
    size = tuple(2 * half + 1)
    grid = np.stack(np.meshgrid(*[(np.arange(s) - h) * sp for s, h, sp in zip(size, half, spacing)], indexing="ij"))
    smooth = np.maximum(shape_p["elastic_smoothness_mm"] / spacing, 0.5)
    for axis in range(3):
        field = ndimage.gaussian_filter(rng.standard_normal(size).astype(np.float32), sigma=smooth, mode="wrap")
        field *= amplitude / max(float(field.std()), 1e-6)
        grid[axis] += field
    local = np.tensordot(rotation.T, grid, axes=1) / axes[:, None, None, None]
    solid = (local ** 2).sum(axis=0) <= 1.0
    if not solid.any():
        solid[tuple(half)] = True
    # At least half a voxel of blur: on a 3 mm grid 0.8 mm would leave a hard, stair-stepped edge.
    return ndimage.gaussian_filter(solid.astype(np.float32), sigma=np.maximum(edge / spacing, 0.5)), axes


def _texture(rng, shape: tuple, spacing: np.ndarray, params: dict) -> np.ndarray:
    """Zero-mean texture in HU: Gaussian noise on a coarse grid, scaled up by cubic interpolation, smoothed."""
    tex = params["texture"]
    grain = rng.uniform(*tex["grain_mm"])
    step = grain / spacing  # coarse cells per voxel
    coarse = rng.standard_normal(tuple(int(np.ceil(s / st)) + 4 for s, st in zip(shape, step)))
    coords = np.stack(np.meshgrid(*[np.arange(s) / st + 1.5 for s, st in zip(shape, step)], indexing="ij"))
    fine = ndimage.map_coordinates(coarse, coords, order=3, mode="mirror").astype(np.float32)
    fine = ndimage.gaussian_filter(fine, sigma=tex["blur_mm"] / spacing)
    fine -= fine.mean()
    fine *= rng.uniform(*tex["std_hu"]) / max(float(fine.std()), 1e-6)
    return fine


def _push(out: np.ndarray, box: tuple, centre, radius_mm: float, push_mm: float, spacing: np.ndarray,
          allowed: np.ndarray) -> None:
    """Mass effect, in place: the tissue around the tumor moves radially outwards, by ``push_mm`` at the tumor's
    edge, fading linearly to nothing at twice its radius; only where ``allowed`` (in or near the organ)."""
    region = out[box].astype(np.float32)
    offsets = [np.arange(b.start, b.stop) - c for b, c in zip(box, centre)]
    grid = np.stack(np.meshgrid(*[o * sp for o, sp in zip(offsets, spacing)], indexing="ij"))
    rho = np.sqrt((grid ** 2).sum(axis=0))
    fade = np.clip((2.0 * radius_mm - rho) / radius_mm, 0.0, 1.0) * np.minimum(rho / radius_mm, 1.0)
    # Each voxel shows the tissue that was push_mm nearer the centre before the tumor grew.
    shift = push_mm * fade / np.maximum(rho, 1e-6)
    source = np.stack([(g * (1.0 - shift)) / sp + (c - b.start)
                       for g, sp, c, b in zip(grid, spacing, centre, box)])
    pushed = ndimage.map_coordinates(region, source, order=1, mode="nearest")
    moved = (allowed > 0) & (fade > 0)
    mixed = np.where(moved, pushed, region)
    if np.issubdtype(out.dtype, np.integer):
        info = np.iinfo(out.dtype)
        mixed = np.clip(np.rint(mixed), info.min, info.max)
    region_out = out[box]
    region_out[moved] = mixed[moved].astype(out.dtype)


def _blend(out: np.ndarray, box: tuple, weight: np.ndarray, mean_hu: float, texture: np.ndarray,
           spacing: np.ndarray) -> None:
    """Replace the CT's low-frequency content under ``weight`` by the tumor's mean + texture, in place.

    The fine part (CT minus its 1 mm-smoothed self: the scanner's noise) is kept, so the tumor is as grainy as
    the tissue around it."""
    region = out[box].astype(np.float32)
    low = ndimage.gaussian_filter(region, sigma=1.0 / spacing)
    mixed = region + weight * (mean_hu + texture - low)
    if np.issubdtype(out.dtype, np.integer):
        info = np.iinfo(out.dtype)
        mixed = np.clip(np.rint(mixed), info.min, info.max)
    changed = weight > 0
    region_out = out[box]
    region_out[changed] = mixed[changed].astype(out.dtype)


def _local_mean(region: np.ndarray, weight: np.ndarray) -> float:
    """Mean HU of the soft tissue (-100..250 HU) around and under a tumor placed without an organ mask."""
    values = region[(weight > 0) & (region > -100) & (region < 250)]
    if values.size == 0:
        values = region[(region > -100) & (region < 250)]
    if values.size == 0:
        raise InputError("the point is not in soft tissue (no voxels between -100 and 250 HU around it); "
                         "click inside an organ")
    return float(values.mean())


def _clip_box(centre, box_shape, image_shape):
    """The image slices of a box of ``box_shape`` centred on ``centre``, and the matching slices of the box."""
    img, sub = [], []
    for c, b, s in zip(centre, box_shape, image_shape):
        start = int(c) - b // 2
        lo, hi = max(start, 0), min(start + b, s)
        img.append(slice(lo, hi))
        sub.append(slice(lo - start, hi - start))
    return tuple(img), tuple(sub)


def _changed_box(before: np.ndarray, after: np.ndarray, boxes: list) -> tuple:
    if not boxes:
        return (slice(0, 0),) * 3
    lo = np.min([[b.start for b in box] for box in boxes], axis=0)
    hi = np.max([[b.stop for b in box] for box in boxes], axis=0)
    outer = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    inner = bounding_slices(before[outer] != after[outer])
    if inner is None:
        return (slice(0, 0),) * 3
    return tuple(slice(int(i.start + o.start), int(i.stop + o.start)) for i, o in zip(inner, outer))


# ---------------------------------------------------------------------------------------------------------------
# Files: `atlasseg synthesize`

def parse_range(text: str, what: str) -> tuple:
    """'20', '10-30', '-40', '-60--20', '-60,-20' or '-60..-20' -> (lo, hi)."""
    number = r"\s*(-?\d+(?:\.\d*)?|-?\.\d+)\s*"
    m = re.fullmatch(number, text or "")
    if m:
        return float(m.group(1)), float(m.group(1))
    m = re.fullmatch(number + r"(?:-|,|\.\.|:)" + number, text or "")
    if not m:
        raise InputError(f"{what} must be a number or a range MIN-MAX (e.g. 10-30), got '{text}'")
    return _range((float(m.group(1)), float(m.group(2))), what, "")


def _organ_masks(organ_name: str) -> list:
    return list(recipe()["organs"][organ_name]["masks"])


def load_organ_mask(image, organ_name: str, *, organ_mask=None, run=None, labels=None) -> np.ndarray:
    """The organ's mask (z, y, x bool) on ``image``'s grid, from a mask file or an atlasseg run folder.

    Raises InputError when it is missing, off the CT's grid or empty."""
    # here, not at the top: insert_tumors works on arrays (the Slicer teaching panel imports it) and needs neither
    # SimpleITK nor geometry; only the file functions below read images
    import SimpleITK as sitk
    from .geometry import Grid  # here: as SimpleITK above (geometry imports SimpleITK and nibabel)

    if (organ_mask is None) == (run is None):
        raise InputError("give the organ's mask with --organ-mask FILE or take it from a finished run with --run "
                         "FOLDER (exactly one of them)")
    grid = Grid.of(image)
    if organ_mask is not None:
        path = Path(organ_mask)
        if not path.is_file():
            raise InputError(f"organ mask {path} does not exist; give a mask file (.nii.gz, .nrrd) on the CT's grid")
        paths = [path]
    else:
        folder = Path(run)
        seg = folder / "segmentations"
        if not seg.is_dir():
            raise InputError(f"{folder} is not an atlasseg run folder (no segmentations/); give the -o folder of "
                             "'atlasseg segment' or use --organ-mask")
        names = _organ_masks(organ_name)
        paths = [seg / f"{n}.nii.gz" for n in names if (seg / f"{n}.nii.gz").is_file()]
        if organ_name == "kidney" and not paths and (seg / "kidney.nii.gz").is_file():
            paths = [seg / "kidney.nii.gz"]
        if not paths:
            have = sorted(p.name[:-7] for p in seg.glob("*.nii.gz"))
            raise InputError(f"the run {folder} has no {' or '.join(names)} mask (it has: {', '.join(have) or 'none'}); "
                             "segment with a model that has the organ, or use --organ-mask")
    mask = np.zeros(grid.size[::-1], dtype=bool)
    for path in paths:
        try:
            m_img = sitk.ReadImage(str(path))
        except RuntimeError:
            raise InputError(f"cannot read the organ mask {path}; is it a complete .nii.gz/.nrrd file?") from None
        problems = Grid.of(m_img).differences(grid)
        if problems:
            raise InputError(f"the organ mask {path} is not on the CT's grid ({'; '.join(problems)}); give a mask made "
                             "on this CT (for example by 'atlasseg segment' of it), or resample it onto the CT first")
        values = sitk.GetArrayFromImage(m_img)
        if organ_mask is not None and not labels:
            _refuse_label_map(values, path, organ_name)
        mask |= np.isin(values, list(labels)) if labels else values > 0
    if not mask.any():
        which = f" (label {', '.join(str(v) for v in labels)})" if labels else ""
        raise InputError(f"the {organ_name} mask{which} is empty: the organ is absent from this CT; choose another "
                         "organ or CT")
    return mask


def _refuse_label_map(values: np.ndarray, path, organ_name: str) -> None:
    """A mask with several non-zero values is a label map (TotalSegmentator, AbdomenAtlas combined labels): without
    --label every organ in it would count as ``organ_name``. Refused, naming the values."""
    found = np.unique(values)
    found = found[found != 0]
    if found.size > 1:
        shown = ", ".join(str(v.item()) for v in found[:20]) + (", ..." if found.size > 20 else "")
        raise InputError(f"the organ mask {path} holds {found.size} different non-zero values ({shown}): a label "
                         f"map, not one organ's mask. Say which value is the {organ_name} with --label (e.g. --label "
                         f"{found[0].item()}, or several: --label 2,3)")


def synthesize_file(ct_path, outdir, *, organ_name: str = "liver", organ_mask=None, run=None, labels=None,
                    count: int = 1, diameter_mm=(10.0, 30.0), contrast_hu=None, seed: int = 0,
                    mass_effect_mm: float = 0.0, capsule_hu: float = 0.0, overwrite: bool = False) -> dict:
    """Write OUTDIR/ct.nii.gz (the input's grid and pixel type, tumors inserted),
    OUTDIR/segmentations/<organ>_tumor.nii.gz (uint8 0/1, the truth) and OUTDIR/tumors.json; all or nothing.

    Returns the content of tumors.json."""
    # here, not at the top: the file side (SimpleITK, io, plausibility) stays out of insert_tumors' import, which
    # the Slicer teaching panel uses on arrays
    import SimpleITK as sitk
    from .io import StagingDir, read_image  # here: as SimpleITK above
    from .plausibility import PHANTOM_KEY, is_phantom  # here: as SimpleITK above

    if organ_name not in ORGANS:
        raise InputError(f"--organ must be one of {', '.join(ORGANS)}, got '{organ_name}'")
    staging = StagingDir(outdir, overwrite=overwrite)  # refuses an existing folder before any work
    image, source = read_image(ct_path)
    organ = load_organ_mask(image, organ_name, organ_mask=organ_mask, run=run, labels=labels)
    ct = sitk.GetArrayFromImage(image)
    t0 = time.perf_counter()
    result = insert_tumors(ct, organ, image.GetSpacing()[::-1], organ_name=organ_name, count=count,
                           diameter_mm=diameter_mm, contrast_hu=contrast_hu, seed=seed,
                           mass_effect_mm=mass_effect_mm, capsule_hu=capsule_hu)
    seconds = time.perf_counter() - t0
    out_img = sitk.GetImageFromArray(result.ct)
    out_img.CopyInformation(image)
    if is_phantom(image):  # the demo model only accepts its phantoms without a warning; a tumor keeps it one
        out_img.SetMetaData(PHANTOM_KEY, image.GetMetaData(PHANTOM_KEY) if image.HasMetaDataKey(PHANTOM_KEY)
                            else image.GetMetaData("descrip"))
    truth = sitk.GetImageFromArray(result.mask.astype(np.uint8))
    truth.CopyInformation(image)
    spacing_zyx = image.GetSpacing()[::-1]
    for t in result.tumors:
        t["center_lps_mm"] = [round(float(v), 2) for v in image.TransformIndexToPhysicalPoint(
            [int(c) for c in t["center_zyx"][::-1]])]
    info = {
        "atlasseg_version": __version__,
        "input": str(Path(ct_path).resolve()),
        "organ": organ_name,
        "organ_mask": str(Path(organ_mask).resolve()) if organ_mask else None,
        "run": str(Path(run).resolve()) if run else None,
        "count": len(result.tumors),
        "diameter_mm": list(diameter_mm) if not np.isscalar(diameter_mm) else [diameter_mm, diameter_mm],
        "contrast_hu": None if contrast_hu is None else (
            list(contrast_hu) if not np.isscalar(contrast_hu) else [contrast_hu, contrast_hu]),
        "seed": int(seed),
        "mass_effect_mm": float(mass_effect_mm),
        "capsule_hu": float(capsule_hu),
        "spacing_zyx_mm": [float(s) for s in spacing_zyx],
        "truth": f"segmentations/{organ_name}_tumor.nii.gz",
        "changed_box_zyx": [[s.start, s.stop] for s in result.changed],
        "seconds": round(seconds, 3),
        "recipe": "SyntheticTumors (Hu et al., CVPR 2023) as described in the paper; parameters: "
                  "AtlasSegLib/data/synthesis.json",
        "tumors": result.tumors,
    }
    with staging as stage:
        sitk.WriteImage(out_img, str(stage / "ct.nii.gz"), useCompression=True)
        (stage / "segmentations").mkdir()
        sitk.WriteImage(truth, str(stage / "segmentations" / f"{organ_name}_tumor.nii.gz"), useCompression=True)
        (stage / "tumors.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
        staging.commit()
    return info
