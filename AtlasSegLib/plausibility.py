"""Plausibility flags: warnings when a run's input or labels cannot be right. Flags never change a mask.

Three kinds of check, all pure functions of the image, the masks and the reference table
``data/plausibility.json`` (every range there has its source; README "Plausibility flags"):

* ``check_model_fit(card_id, image)``: the demo model on anything but an AtlasSeg phantom.
* ``check_coverage(image)`` / ``body_profile(image)``: the field of view does not hold an abdomen (a head, a limb,
  three slices), decided from the image alone: its length along the patient's axis and the size of the body's
  cross-section per slice (an adult abdomen is a single cross-section some 250-400 mm wide; a head or a thigh is
  half that). Runs on a strided view of the CT (about 2 mm pixels), never a full-resolution pass.
* ``check_structures(entries, masks, grid, ct_kji, ...)``: per structure, from the report entries' volume and
  mean HU (computed once by the writer) and from each mask inside its own box: volume or mean HU outside the
  reference bounds, organ cut by the scan's first/last slice, left/right organs on the wrong side, tumor
  components outside their organ or at fat/gas attenuation.

Geometry follows the project's convention (``geometry.py``): physical coordinates are ITK LPS, so the patient's
left is +x and superior is +z.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

import fill_voids
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .geometry import Grid, oriented, reorient_array
from .masks import bounding_slices
from .postprocess import ranked_components

TABLE_PATH = Path(__file__).resolve().parent / "data" / "plausibility.json"
DEMO_MODEL_ID = "atlasseg-demo"
# Written by ``phantom.make_phantom`` into the image's notes (NIfTI ``descrip``; NRRD/MHA keep it as a key), so a
# phantom saved by ``atlasseg demo`` and segmented again is still recognised.
PHANTOM_MARK = "AtlasSeg phantom"
PHANTOM_KEY = "ITK_FileNotes"
_SIDE_MARGIN_MM = 10.0  # a single left/right organ must lie this far on the wrong side of the midline to be flagged


@lru_cache(maxsize=1)
def reference_table() -> dict:
    """``data/plausibility.json``: flag bounds per structure, the coverage thresholds and their sources."""
    return json.loads(TABLE_PATH.read_text())


# --------------------------------------------------------------------------------------------- model fit
def mark_phantom(image: sitk.Image, seed: int) -> None:
    """Stamp ``image`` as an AtlasSeg phantom (kept in the file when written as NIfTI, NRRD or MetaImage)."""
    image.SetMetaData(PHANTOM_KEY, f"{PHANTOM_MARK} (seed {int(seed)})")


def is_phantom(image: sitk.Image) -> bool:
    """Whether ``image`` carries the phantom generator's stamp (NIfTI files return it as ``descrip``)."""
    for key in (PHANTOM_KEY, "descrip"):
        if image.HasMetaDataKey(key) and image.GetMetaData(key).startswith(PHANTOM_MARK):
            return True
    return False


def check_model_fit(card_id: str, image: sitk.Image) -> list:
    """A warning when the demo model (trained on synthetic phantoms only) runs on anything else."""
    if card_id != DEMO_MODEL_ID or is_phantom(image):
        return []
    return [f"model: {DEMO_MODEL_ID} was trained on synthetic AtlasSeg phantoms only and this input is not one: its "
            "labels on a real CT are meaningless (on real scans it labelled fat as liver tumor and found a 'liver' in "
            "a thigh). Use a real model: see 'atlasseg models list', then 'atlasseg models fetch suprem-unet' (or 'atlasseg models "
            "import ID FILE') and run with --model ID."]


# ---------------------------------------------------------------------------------------------- coverage
@dataclass(frozen=True)
class BodyProfile:
    """The body's cross-section per axial slice (of a strided view of the CT)."""

    slices: int  # slices of the image along its superior-inferior axis
    extent_mm: float  # slices × slice spacing
    slice_spacing_mm: float
    fov_mm: tuple  # in-plane field of view (left-right, anterior-posterior), mm
    width_mm: np.ndarray  # per analysed slice: left-right extent of the largest body cross-section
    area_cm2: np.ndarray  # per analysed slice: its area, holes (lungs, bowel gas) filled
    touches_fov: np.ndarray  # per analysed slice: that cross-section reaches the in-plane edge
    parts: np.ndarray  # per analysed slice: body cross-sections of at least 40 cm2
    centre_x_mm: np.ndarray  # per analysed slice: LPS x of the largest cross-section's centroid
    step_mm: float  # distance between analysed slices
    # Per analysed slice, measured on trunk-sized ones only (NaN elsewhere): the share of the cross-section at fat
    # attenuation, and the share of directions from its centre with bone in its outer rim (a skull: all of them).
    fat_fraction: Optional[np.ndarray] = None
    bone_ring: Optional[np.ndarray] = None

    def sized(self, table: Optional[dict] = None) -> np.ndarray:
        """Slices whose largest cross-section is as wide and large as a trunk (a head in its holder can be)."""
        cov = (table or reference_table())["coverage"]
        return (self.width_mm >= cov["trunk_min_width_mm"]) & (self.area_cm2 >= cov["trunk_min_area_cm2"])

    def head_like(self, table: Optional[dict] = None) -> np.ndarray:
        """Trunk-sized slices that show a head instead: a closed bone ring (skull) AND almost no fat. Two cues
        together: an abdomen has fat inside and ribs cover only part of its rim; neither alone decides."""
        cov = (table or reference_table())["coverage"]
        if self.fat_fraction is None or self.bone_ring is None:
            return np.zeros(self.width_mm.shape, bool)
        with np.errstate(invalid="ignore"):
            return (self.sized(table) & (self.bone_ring >= cov["head_min_bone_ring"])
                    & (self.fat_fraction < cov["head_max_fat_fraction"]))

    def trunk(self, table: Optional[dict] = None) -> np.ndarray:
        return self.sized(table) & ~self.head_like(table)

    @property
    def midline_x_mm(self) -> Optional[float]:
        """LPS x of the body's midline (median centre of the trunk-sized, else all, cross-sections)."""
        keep = self.trunk()
        values = self.centre_x_mm[keep] if keep.any() else self.centre_x_mm[self.area_cm2 > 0]
        return float(np.median(values)) if values.size else None


def open_cross(mask: np.ndarray) -> np.ndarray:
    """``ndimage.binary_opening(mask, generate_binary_structure(2, 1))`` of a 2-D boolean mask (4-neighbour
    erosion then dilation, outside the image counts as background), by array shifts: 7× faster than SciPy's
    general structuring-element code, which was most of ``body_profile`` (tested equal)."""
    m = np.asarray(mask, bool)
    e = m.copy()
    e[1:, :] &= m[:-1, :]
    e[:-1, :] &= m[1:, :]
    e[:, 1:] &= m[:, :-1]
    e[:, :-1] &= m[:, 1:]
    e[0, :] = e[-1, :] = False
    e[:, 0] = e[:, -1] = False
    d = e.copy()
    d[1:, :] |= e[:-1, :]
    d[:-1, :] |= e[1:, :]
    d[:, 1:] |= e[:, :-1]
    d[:, :-1] |= e[:, 1:]
    return d


def body_profile(image: sitk.Image, *, pixel_mm: float = 2.0, max_slices: int = 160) -> BodyProfile:
    """Per axial slice: the largest body cross-section (voxels above the table's ``body_hu``, lungs and gas
    filled in), its width, area and whether the field of view cuts it. Reads a strided view (about
    ``pixel_mm`` pixels, at most ``max_slices`` slices): no full-resolution pass."""
    cov = reference_table()["coverage"]
    grid = Grid.of(image)
    lps = oriented(grid, "LPS")  # index axes permuted/flipped to i -> left, j -> posterior, k -> superior
    arr = reorient_array(sitk.GetArrayViewFromImage(image), grid, "LPS")  # (i, j, k) view
    sx, sy, sz = lps.spacing
    step_i, step_j = max(1, int(round(pixel_mm / sx))), max(1, int(round(pixel_mm / sy)))
    step_k = max(1, int(np.ceil(arr.shape[2] / max_slices)))
    px, py = sx * step_i, sy * step_j
    ks = range(0, arr.shape[2], step_k)
    n = len(ks)
    width, area, edge, parts, centre = (np.zeros(n), np.zeros(n), np.zeros(n, bool), np.zeros(n, int), np.zeros(n))
    fat, ring = np.full(n, np.nan), np.full(n, np.nan)
    min_part_px = 40.0 * 100.0 / (px * py)
    for t, k in enumerate(ks):
        values = np.asarray(arr[::step_i, ::step_j, k])  # read once: the body and, on trunk slices, the head cues
        body = values > cov["body_hu"]
        # An opening drops the thin table top and blankets, and parts cross-sections touching by a pixel.
        body = open_cross(body)
        labels, count = ndimage.label(body)
        if not count:
            continue
        sizes = np.bincount(labels.ravel())[1:]
        parts[t] = int(np.count_nonzero(sizes >= min_part_px))
        biggest = int(np.argmax(sizes)) + 1
        own = labels == biggest
        box = bounding_slices(own)  # = find_objects' box of that label, from its mask (4x faster)
        filled = fill_voids.fill(own[box], in_place=False)  # = binary_fill_holes, 8× faster (on a view: 4× more)
        area[t] = filled.sum() * px * py / 100.0
        width[t] = (box[0].stop - box[0].start) * px
        edge[t] = (box[0].start == 0 or box[1].start == 0 or box[0].stop == body.shape[0]
                   or box[1].stop == body.shape[1])
        fi, fj = np.nonzero(filled)  # once: the centre here and the head cues' centre
        ci = (box[0].start + float(fi.mean())) * step_i  # area centroid: arms weigh little
        centre[t] = float(lps.index_to_physical([ci, 0.0, float(k)])[0])
        if width[t] >= cov["trunk_min_width_mm"] and area[t] >= cov["trunk_min_area_cm2"]:
            fat[t], ring[t] = _head_cues(values[box], filled, px, py, cov, centroid=(fi.mean(), fj.mean()))
    return BodyProfile(slices=int(arr.shape[2]), extent_mm=float(arr.shape[2] * sz), slice_spacing_mm=float(sz),
                       fov_mm=(float(arr.shape[0] * sx), float(arr.shape[1] * sy)), width_mm=width, area_cm2=area,
                       touches_fov=edge, parts=parts, centre_x_mm=centre, step_mm=float(sz * step_k),
                       fat_fraction=fat, bone_ring=ring)


RING_SECTORS = 36  # 10° directions around a cross-section's centre


def _head_cues(values: np.ndarray, filled: np.ndarray, px: float, py: float, cov: dict, *, centroid=None) -> tuple:
    """(fat fraction, bone ring) of one cross-section: ``values`` the slice's HU in the body's box, ``filled`` the
    body there (holes filled). Bone ring: the share of RING_SECTORS directions from the centre with bone
    (> ``head_bone_hu``) within ``head_rim_mm`` of the body's outline."""
    inside = values[filled]
    lo, hi = cov["fat_hu"]
    fat = float(np.count_nonzero((inside >= lo) & (inside <= hi))) / max(1, inside.size)
    depth = ndimage.distance_transform_cdt(filled, metric="taxicab") * min(px, py)  # a rim: approximate is enough
    bi, bj = np.nonzero((depth > 0) & (depth <= cov["head_rim_mm"]) & (values > cov["head_bone_hu"]))
    if not bi.size:
        return fat, 0.0
    ci, cj = centroid if centroid is not None else (v.mean() for v in np.nonzero(filled))
    angle = np.arctan2((bj - cj) * py, (bi - ci) * px)
    hit = np.bincount(((angle + np.pi) / (2 * np.pi) * RING_SECTORS).astype(int) % RING_SECTORS,
                      minlength=RING_SECTORS)
    return fat, int(np.count_nonzero(hit)) / RING_SECTORS


def check_coverage(image_or_profile) -> list:
    """Warnings when the image cannot hold the abdomen the models segment: too few slices or too short, or no
    trunk-sized body cross-section (head, neck, limbs, a tight field of view)."""
    profile = image_or_profile if isinstance(image_or_profile, BodyProfile) else body_profile(image_or_profile)
    cov = reference_table()["coverage"]
    if profile.slices < cov["min_slices"] or profile.extent_mm < cov["min_extent_mm"]:
        return [f"coverage: the scan is {profile.slices} slice{'s' if profile.slices != 1 else ''} "
                f"({profile.extent_mm:.0f} mm) long; an abdomen needs a volume of at least "
                f"{cov['min_extent_mm']:.0f} mm and {cov['min_slices']} slices (an abdominal CT covers 200-400 mm): "
                "no organ can be segmented whole from this, and the labels are unreliable."]
    trunk = profile.trunk()
    trunk_mm = float(np.count_nonzero(trunk)) * profile.step_mm
    if trunk_mm >= cov["min_trunk_extent_mm"]:
        return []
    head = profile.head_like()
    if head.any():
        return [f"coverage: the trunk-sized cross-sections of this scan (widest {float(profile.width_mm.max()):.0f} "
                f"mm, largest {float(profile.area_cm2.max()):.0f} cm2) show a head: a closed bone ring (skull) in "
                f"{float(np.nanmedian(profile.bone_ring[head])) * 100:.0f} % of directions and almost no fat "
                f"({float(np.nanmedian(profile.fat_fraction[head])) * 100:.1f} % of the cross-section; an abdomen "
                "has 10-50 %). Not the abdomen the model segments: its labels here are meaningless."]
    widest = float(profile.width_mm.max()) if profile.width_mm.size else 0.0
    largest = float(profile.area_cm2.max()) if profile.area_cm2.size else 0.0
    what = "no slice shows" if not trunk.any() else f"only {trunk_mm:.0f} mm of the scan shows"
    shape = ""
    has_body = profile.area_cm2 > 0
    if has_body.any() and np.mean(profile.parts[has_body] >= 2) > 0.5:
        shape = " Most slices show two or more separate body cross-sections (legs or arms?)."
    elif has_body.any() and np.mean(profile.touches_fov[has_body]) > 0.5:
        shape = (f" The body is cut by the {profile.fov_mm[0]:.0f} x {profile.fov_mm[1]:.0f} mm field of view "
                 "in most slices.")
    return [f"coverage: {what} a trunk-sized body cross-section (widest {widest:.0f} mm, largest "
            f"{largest:.0f} cm2; an adult abdomen is about 250-400 mm wide and over 300 cm2).{shape} This looks "
            "like a head, neck or limb scan (or a tight reconstruction), not the abdomen the model segments: "
            "its labels here are meaningless."]


# -------------------------------------------------------------------------------------------- structures
def _box_slices(box):
    (s, z) = box
    return (slice(s[2], s[2] + z[2]), slice(s[1], s[1] + z[1]), slice(s[0], s[0] + z[0]))


def _extent(mask: np.ndarray, box):
    """The mask's own index box (start i, j, k; stop i, j, k) on the full grid, or None when empty."""
    # Two reductions (over k, then the small (j, i) plane) instead of find_objects: 15× faster on an organ box.
    m = np.asarray(mask).astype(bool, copy=False)
    if m.size == 0:
        return None
    ks = np.flatnonzero(m.reshape(m.shape[0], -1).any(axis=1))
    if not ks.size:
        return None
    plane = m.any(axis=0)  # (j, i)
    js, is_ = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    start = np.asarray(box[0]) + np.array([is_[0], js[0], ks[0]])
    stop = np.asarray(box[0]) + np.array([is_[-1] + 1, js[-1] + 1, ks[-1] + 1])
    return start, stop


_FACES = {(2, +1): "top (superior)", (2, -1): "bottom (inferior)", (0, +1): "left", (0, -1): "right",
          (1, +1): "back (posterior)", (1, -1): "front (anterior)"}


def _edge_faces(grid: Grid, start, stop) -> list:
    """Names of the scan ends the index box [start, stop) reaches along the superior-inferior index axis."""
    d = np.asarray(grid.direction).reshape(3, 3)
    axis = int(np.argmax(np.abs(d[2, :])))  # the index axis closest to superior-inferior
    sign = np.sign(d[2, axis])
    faces = []
    if start[axis] <= 0:
        faces.append(_FACES[(2, -int(sign))] + " slice")
    if stop[axis] >= grid.size[axis]:
        faces.append(_FACES[(2, int(sign))] + " slice")
    return faces


def _ml(value) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def _fmt_range(lo, hi, unit) -> str:
    return f"{lo:g}-{hi:g} {unit}" if lo >= 0 else f"{lo:g} to {hi:g} {unit}"


def check_structures(entries: list, masks: dict, grid: Grid, ct_kji: np.ndarray, *, gates: Optional[dict] = None,
                     midline_x_mm: Optional[float] = None, lesion_ids: Optional[dict] = None,
                     lesions: Optional[dict] = None) -> dict:
    """Flags per structure: ``{name: [sentence, ...]}`` (only structures with flags).

    Args:
        entries: report.json "structures" entries (name, kind, volume_ml, mean_hu).
        masks: name -> ((start ijk, size ijk), mask (k, j, i) over that box of ``grid``) for non-empty structures.
        grid: the input grid; ``ct_kji`` the CT on it (only read inside the masks' boxes).
        gates: tumor name -> organ names it must lie in (default: the table's ``organs``).
        midline_x_mm: LPS x of the body's midline (default: the middle of the grid).
        lesion_ids: tumor name -> the lesion id of each component, largest first (``lesions.IdMap``; default:
            1, 2, ... by size, the ids of a fresh run). Flags name lesions by these ids.
        lesions: filled with tumor name -> per component, largest first, ``{"id", "inside_organ_pct",
            "mean_hu", "flags"}``: the per-lesion checks each row of every output shows.
    """
    table = reference_table()
    ref = table["structures"]
    flags: dict = {}

    def flag(name, text):
        flags.setdefault(name, []).append(text)

    extents = {}
    for entry in entries:
        name = entry["name"]
        if name not in masks:
            continue
        box, mask = masks[name]
        ext = _extent(mask, box)
        if ext is None:
            continue
        extents[name] = ext
        r = ref.get(name, {})
        is_tumor = entry.get("kind") == "tumor"
        faces = _edge_faces(grid, *ext) if r.get("edge") and not is_tumor else []
        if faces:
            flag(name, f"cut by the scan's edge: it touches the {' and '.join(faces)}, so it is incomplete "
                       f"(its {_ml(entry['volume_ml'])} ml are only the part inside the scan)")
        bounds = r.get("volume_ml")
        if bounds and not is_tumor:
            lo, hi = bounds
            v = float(entry["volume_ml"])
            if v > hi or (v < lo and not faces):
                flag(name, f"volume {_ml(v)} ml is far outside the plausible {_fmt_range(lo, hi, 'ml')} for an adult "
                           f"(typical: {r.get('typical', '?')}): check the label")
        hu = r.get("mean_hu")
        if hu and not is_tumor and entry.get("mean_hu") is not None:
            lo, hi = hu
            m = float(entry["mean_hu"])
            if not lo <= m <= hi:
                what = " (fat or gas)" if m < table["tumor_fat_hu"] else ""
                flag(name, f"mean attenuation {m:.0f} HU{what} is implausible for {name.replace('_', ' ')} "
                           f"(expected {_fmt_range(lo, hi, 'HU')}): this label is probably not that organ")

    _check_sides(extents, grid, midline_x_mm, flag)

    for entry in entries:
        if entry.get("kind") != "tumor" or entry["name"] not in masks:
            continue
        name = entry["name"]
        organs = (gates or {}).get(name) or ref.get(name, {}).get("organs") or []
        per = _check_tumor(name, masks[name], [o for o in organs if o in masks], organs, masks, ct_kji,
                           ref.get(name, {}), table, flag, ids=(lesion_ids or {}).get(name))
        if lesions is not None:
            lesions[name] = per
    return flags


def recheck_tumor(name: str, box, mask: np.ndarray, organs: dict, grid: Grid, ct_kji: Optional[np.ndarray], *,
                  gate=None, lesion_ids: Optional[list] = None, lesions: Optional[list] = None) -> list:
    """The flags ``check_structures`` gives tumor ``name`` whose mask changed after the run (a new threshold, a
    review edit): its components are numbered anew, so the run's flags would name the wrong ones. ``mask`` and
    each of ``organs`` (gate organ name -> mask) lie on the same ``box`` of ``grid``; ``ct_kji`` is the CT on
    ``grid``, or None when it cannot be read (then attenuation is not checked). ``lesion_ids``: the components'
    lesion ids, largest first; ``lesions``: a list filled with the per-lesion checks (``check_structures``)."""
    masks = {o: (box, m) for o, m in organs.items() if m is not None and np.any(m)}
    if not np.any(mask):
        return []
    masks[name] = (box, mask)
    entry = {"name": name, "kind": "tumor"}
    per = {}
    flags = check_structures([entry], masks, grid, ct_kji, gates={name: list(gate)} if gate else None,
                             lesion_ids={name: lesion_ids} if lesion_ids is not None else None, lesions=per)
    if lesions is not None:
        lesions.extend(per.get(name, []))
    return flags.get(name, [])


def _check_sides(extents: dict, grid: Grid, midline_x_mm, flag) -> None:
    """Left/right organs: each pair compared with each other, a lone one with the midline; liver vs spleen."""
    def centre_x(name):
        start, stop = extents[name]
        return float(grid.index_to_physical((np.asarray(start) + np.asarray(stop) - 1) / 2.0)[0])

    midline = midline_x_mm
    if midline is None:
        midline = float(grid.index_to_physical(np.asarray(grid.size) / 2.0 - 0.5)[0])
    done = set()
    for name in extents:
        for side, other in (("_left", "_right"), ("_right", "_left")):
            if not name.endswith(side):
                continue
            base = name[: -len(side)]
            left, right = base + "_left", base + "_right"
            if left in extents and right in extents:
                if base in done:
                    continue
                done.add(base)
                xl, xr = centre_x(left), centre_x(right)
                if xl <= xr:
                    text = (f"{left} lies to the patient's right of {right} (LPS x {xl:.0f} vs {xr:.0f} mm): left and "
                            "right are swapped; check the image's orientation (direction cosines) or the labels")
                    flag(left, text)
                    flag(right, text)
            else:
                x = centre_x(name)
                wrong = x < midline - _SIDE_MARGIN_MM if side == "_left" else x > midline + _SIDE_MARGIN_MM
                if wrong:
                    flag(name, f"lies on the patient's {'right' if side == '_left' else 'left'} ({abs(x - midline):.0f} "
                               f"mm from the midline, LPS x {x:.0f} mm): a {side[1:]} organ on the wrong side; check "
                               "the image's orientation or the label")
    if "liver" in extents and "spleen" in extents:
        xl, xs = centre_x("liver"), centre_x("spleen")
        if xl >= xs:
            text = (f"the liver lies to the patient's left of the spleen (LPS x {xl:.0f} vs {xs:.0f} mm): the image's "
                    "left-right orientation is wrong, or the patient has situs inversus")
            flag("liver", text)
            flag("spleen", text)


def _check_tumor(name, tumor, present_organs, organs, masks, ct_kji, r, table, flag, *, ids=None) -> list:
    """Per tumor component: mean HU (fat or gas is not tumor tissue) and the share of it inside its organ.
    Returns the per-lesion checks, largest first; the run-level flags name lesions by ``ids`` (largest first;
    default 1, 2, ... by size)."""
    box, mask = tumor
    sl = _box_slices(box)
    ct_box = ct_kji[sl] if ct_kji is not None else None  # None: the CT is not at hand, no attenuation check
    organ = None
    if organs:
        organ = np.zeros(mask.shape, bool)
        start, size = np.asarray(box[0]), np.asarray(box[1])
        for o in present_organs:
            (ostart, osize), omask = masks[o]
            lo = np.maximum(start, ostart)
            hi = np.minimum(start + size, np.asarray(ostart) + np.asarray(osize))
            if np.any(hi <= lo):
                continue
            a = tuple(slice(int(lo[d] - start[d]), int(hi[d] - start[d])) for d in (2, 1, 0))
            b = tuple(slice(int(lo[d] - ostart[d]), int(hi[d] - ostart[d])) for d in (2, 1, 0))
            organ[a] |= omask[b] > 0
    labelling = ranked_components(mask > 0)
    if ids is None or len(ids) != len(labelling.parts):
        ids = list(range(1, len(labelling.parts) + 1))
    hu_lo, hu_hi = r.get("mean_hu") or (None, None)
    where = "/".join(organs[:2]) if present_organs else "/".join(organs[:2]) + " (not found)"
    bad_hu, outside, per = [], [], []
    for rid, (label, slc, _voxels) in zip(ids, labelling.parts):
        sub = labelling.labels[slc] == label
        row = {"id": int(rid), "inside_organ_pct": None, "mean_hu": None, "flags": []}
        if organ is not None:
            inside = float(organ[slc][sub].mean())
            row["inside_organ_pct"] = round(100.0 * inside, 1)
            if inside < table["tumor_min_inside_fraction"]:
                outside.append((rid, inside))
                row["flags"].append(f"outside the {where} ({100 * inside:.0f} % inside)")
        if ct_box is not None:
            mean_hu = float(ct_box[slc][sub].mean(dtype=np.float64))
            row["mean_hu"] = round(mean_hu, 1)
            if hu_lo is not None and not hu_lo <= mean_hu <= hu_hi:
                bad_hu.append((rid, mean_hu))
                what = "fat or gas" if mean_hu < table["tumor_fat_hu"] else f"expected {_fmt_range(hu_lo, hu_hi, 'HU')}"
                row["flags"].append(f"mean {mean_hu:.0f} HU: {what}")
        per.append(row)
    total = len(labelling.parts)
    if bad_hu:
        values = [v for _, v in bad_hu]
        named = ", ".join(f"#{i}" for i, _ in bad_hu[:12]) + (" ..." if len(bad_hu) > 12 else "")
        fat = min(values) < table["tumor_fat_hu"]
        flag(name, f"{len(bad_hu)} of {total} component(s) ({named}) have a mean of {min(values):.0f} to "
                   f"{max(values):.0f} HU (expected {_fmt_range(hu_lo, hu_hi, 'HU')})"
                   f"{'; below ' + format(table['tumor_fat_hu'], 'g') + ' HU is fat or gas, not tumor tissue' if fat else ''}"
                   ": likely false positives")
    if organ is not None and outside:
        named = ", ".join(f"#{i}" for i, _ in outside[:12]) + (" ..." if len(outside) > 12 else "")
        pct = ", ".join(f"{100 * f:.0f} %" for _, f in outside[:12])
        flag(name, f"{named} lie{'s' if len(outside) == 1 else ''} outside the {where} ({pct} inside; "
                   f"{len(outside)} of {total} component(s))")
    return per
