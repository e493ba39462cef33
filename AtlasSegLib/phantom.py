"""Synthetic abdominal CT phantom: a CT volume with exact organ and liver-tumor masks.

The phantom is defined in *physical* patient space (ITK/LPS: +x patient left, +y posterior, +z superior; the
volume centre is at the origin by default) and only then sampled on the requested voxel grid, so any
``direction``/``spacing``/``origin`` gives an anatomically correct image: the liver stays on the patient's
right whatever the array layout. Anatomy (sizes, positions, a smooth deformation, contrast) is drawn from the
seed alone, so two grids with the same seed show the same patient. Tumor placement (which picks liver voxels,
so it depends on the grid) and image noise use their own random streams, so ``tumors=False`` gives the same
patient without lesions.

Liver tumors follow the project's synthesis recipe: centres on axial slices inside the liver (eroded with a
5x5 in-plane kernel) within the 30-70 % band of the liver's height; elastically deformed ellipsoids with radii
0.75-1.25 x r (r = 4, 8 or 16 mm); a gaussian-smoothed, thresholded, re-smoothed texture; a 1-2 voxel
boundary blur; and a hypo-attenuating darkening of 65-145 HU.

Teaching controls (``tumor_count``, ``tumor_diameter_mm``, ``tumor_contrast_hu``) replace the random count, size
class and darkening; left at None, the phantom is exactly the one the seed always gave. With a requested size the
centres are also kept at least half a diameter (in mm) inside the liver, so the tumor is not cut by its surface.

Example:
    >>> from AtlasSegLib.phantom import make_phantom
    >>> ph = make_phantom(seed=3)
    >>> sorted(ph.labels)[:2]
    ['aorta', 'kidney_left']
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .errors import InputError
from .plausibility import mark_phantom

ORGANS = ("liver", "spleen", "kidney_right", "kidney_left", "pancreas", "aorta", "vertebrae")
TUMOR = "liver_tumor"
STRUCTURES = ORGANS + (TUMOR,)

# Structure ids in the painted ownership map (0 = not a labelled structure).
_ID = {name: i + 1 for i, name in enumerate(ORGANS)}

_AIR = -1000.0
_GAS = -950.0
_INF = 1e4  # "unbounded" extent of a box, in mm
_TUMOR_RADII_MM = (4.0, 8.0, 16.0)  # tiny, small, medium
_TUMOR_RADIUS_P = (0.15, 0.45, 0.40)  # mostly small/medium: tiny ones are barely visible at 2-3 mm

# Limits of the teaching controls: below 3 mm a tumor is a voxel or two of the 2-2.5 mm grid; above 80 mm it no
# longer fits the liver's band; beyond +-300 HU it is no tumor any CT shows.
TUMOR_COUNT_RANGE = (0, 10)
TUMOR_DIAMETER_RANGE_MM = (3.0, 80.0)
TUMOR_CONTRAST_RANGE_HU = (-300.0, 300.0)


@dataclass(frozen=True)
class Phantom:
    """A synthetic CT and its ground truth.

    Attributes:
        image: The CT in HU (int16).
        labels: Structure name -> uint8 0/1 mask on exactly the image's grid. Masks may overlap (the liver
            mask includes the liver tumors), as in the multi-label output of the models.
        seed: The seed the phantom was made from.
    """

    image: sitk.Image
    labels: dict = field(repr=False)
    seed: int
    tumors: tuple = ()  # per inserted tumor: centre_lps_mm, diameter_mm (equivalent sphere), contrast_hu, voxels


def check_tumor_options(count=None, diameter_mm=None, contrast_hu=None) -> None:
    """Raise ``InputError`` (saying what is allowed) for a tumor control out of its range."""
    lo, hi = TUMOR_COUNT_RANGE
    if count is not None and not (isinstance(count, (int, np.integer)) and lo <= count <= hi):
        raise InputError(f"tumor count {count} is out of range: give a whole number from {lo} to {hi}")
    if diameter_mm is not None:
        dlo, dhi = TUMOR_DIAMETER_RANGE_MM
        try:
            a, b = (float(v) for v in diameter_mm)
        except (TypeError, ValueError):
            raise InputError(f"tumor diameter {diameter_mm!r}: give a range MIN-MAX in mm, e.g. 10-20") from None
        if not (dlo <= a <= b <= dhi):
            raise InputError(f"tumor diameter {a:g}-{b:g} mm is out of range: give MIN-MAX with "
                             f"{dlo:g} <= MIN <= MAX <= {dhi:g} mm")
    if contrast_hu is not None:
        clo, chi = TUMOR_CONTRAST_RANGE_HU
        if not (np.isfinite(contrast_hu) and clo <= contrast_hu <= chi):
            raise InputError(f"tumor contrast {contrast_hu} HU is out of range: give {clo:g} to {chi:g} HU "
                             "relative to the liver (negative = darker, as most liver tumors)")


def check_structures(structures) -> tuple:
    """The structures to segment and show, in ``STRUCTURES`` order (all when ``structures`` is None);
    ``InputError`` naming the unknown ones and the choices."""
    if structures is None:
        return STRUCTURES
    wanted = [s.strip() for s in structures if s.strip()]
    unknown = [s for s in wanted if s not in STRUCTURES]
    if unknown or not wanted:
        raise InputError(f"unknown structure(s) for the demo: {', '.join(unknown) or '(none given)'}; choose "
                         f"from {','.join(STRUCTURES)}")
    return tuple(s for s in STRUCTURES if s in wanted)


def make_phantom(seed: int = 0, *, tumors: bool = True, size=(192, 160, 96), spacing_mm=(2.0, 2.0, 2.5),
                 direction=None, origin=None, tumor_count=None, tumor_diameter_mm=None,
                 tumor_contrast_hu=None) -> Phantom:
    """Make a synthetic abdominal CT phantom.

    Args:
        seed: Random seed; the same seed (and grid) always gives the same phantom.
        tumors: Add 1-4 hypo-attenuating liver tumors and a ``liver_tumor`` label.
        size: Grid size (i, j, k) in voxels.
        spacing_mm: Voxel spacing (i, j, k) in mm.
        direction: 3x3 direction cosines (row-major, 9 numbers or a 3x3 array); identity (LPS) if None.
        origin: Physical position of the first voxel centre; if None the grid is centred on the phantom.
        tumor_count: Number of liver tumors (0-10) instead of 1-4 at random.
        tumor_diameter_mm: (min, max) equivalent-sphere diameter in mm; each tumor's is drawn uniformly from it
            (instead of the 8/16/32 mm size classes).
        tumor_contrast_hu: Mean HU change inside each tumor relative to the liver around it (negative: darker)
            instead of -65..-145 HU at random.

    Returns:
        The phantom. ``labels`` holds every name in ``ORGANS``, plus ``liver_tumor`` when ``tumors`` is True
        (empty if the liver is outside the field of view).
    """
    check_tumor_options(tumor_count, tumor_diameter_mm, tumor_contrast_hu)
    anatomy_rng, tumor_rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    canvas = _Canvas(size, spacing_mm, direction, origin, anatomy_rng)
    hu = _draw_hu(anatomy_rng)
    _paint_anatomy(canvas, anatomy_rng, hu)
    inserted = []
    tumor = _add_tumors(canvas, tumor_rng, count=tumor_count, diameter_mm=tumor_diameter_mm,
                        contrast_hu=tumor_contrast_hu, record=inserted) if tumors else None

    # Partial volume: soften every edge a little before adding the (white) detector noise.
    ct = ndimage.gaussian_filter(canvas.hu, sigma=0.6)
    ct += noise_rng.uniform(10.0, 15.0) * noise_rng.standard_normal(ct.shape, dtype=np.float32)
    image = sitk.GetImageFromArray(np.clip(np.rint(ct), -1024, 3071).astype(np.int16))
    canvas.stamp(image)
    # Marked as a phantom (kept when saved as NIfTI/NRRD/MHA): the demo model warns on anything that is not one.
    mark_phantom(image, seed)

    masks = {name: canvas.owner == i for name, i in _ID.items()}
    if tumor is not None:
        masks[TUMOR] = tumor
    labels = {}
    for name, mask in masks.items():
        label = sitk.GetImageFromArray(mask.astype(np.uint8))
        label.CopyInformation(image)
        labels[name] = label
    return Phantom(image=image, labels=labels, seed=seed, tumors=tuple(inserted))


class _Field:
    """A smooth random scalar field: a sum of plane waves with random directions, wavelengths and phases,
    normalised to unit standard deviation. Defined in physical space, so it does not depend on the grid."""

    def __init__(self, rng, modes: int, wavelength_mm: tuple):
        directions = rng.normal(size=(modes, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        self.k = directions * (2 * np.pi / rng.uniform(*wavelength_mm, size=(modes, 1)))
        self.phase = rng.uniform(0, 2 * np.pi, size=modes)
        self.scale = np.float32(np.sqrt(2.0 / modes))
        self.bound = float(modes * self.scale)  # no point exceeds it

    def __call__(self, p) -> np.ndarray:
        """The field at points given as three coordinate arrays."""
        out = np.zeros(np.broadcast_shapes(*(c.shape for c in p)), np.float32)
        for (kx, ky, kz), phase in zip(self.k.astype(np.float32), self.phase.astype(np.float32)):
            out += np.sin(kx * p[0] + ky * p[1] + kz * p[2] + phase)
        return out * self.scale

    def on_grid(self, origin, steps, shape) -> np.ndarray:
        """The field at the voxel centres of a grid, in (k, j, i) array order.

        The phase of each wave is affine in the voxel index, so sin(a + b) = sin a cos b + cos a sin b splits
        it into an in-plane and a through-plane part: a few times faster than evaluating every voxel."""
        nk, nj, ni = shape
        i, j, k = (np.arange(n, dtype=np.float64) for n in (ni, nj, nk))
        out = np.zeros(shape, np.float32)
        for wave, phase in zip(self.k, self.phase):
            di, dj, dk = wave @ steps
            plane = (di * i[None, :] + dj * j[:, None]).astype(np.float32)
            depth = (dk * k + wave @ origin + phase)[:, None, None]
            out += np.sin(plane) * np.cos(depth).astype(np.float32) + np.cos(plane) * np.sin(depth).astype(np.float32)
        return out * self.scale


class _Canvas:
    """The voxel grid being painted.

    Holds, for every voxel centre, its *canonical* anatomical coordinates (physical position, smoothly
    deformed, shifted and scaled by the patient's random size), the HU being painted and the id of the
    labelled structure that owns the voxel. Arrays are in SimpleITK/numpy (k, j, i) order.
    """

    def __init__(self, size, spacing_mm, direction, origin, rng):
        self.size = tuple(int(n) for n in size)
        self.spacing = np.asarray(spacing_mm, float)
        self.direction = np.eye(3) if direction is None else np.asarray(direction, float).reshape(3, 3)
        # Columns: the physical step of one voxel along i, j, k.
        self.steps = self.direction * self.spacing
        centre = self.steps @ ((np.asarray(self.size) - 1) / 2)
        self.origin = -centre if origin is None else np.asarray(origin, float)
        self.shape = self.size[::-1]

        # Patient size, position in the field of view and a gentle smooth deformation (a few mm).
        self.scale = rng.uniform(0.9, 1.1)
        self.shift = rng.normal(0.0, 5.0, size=3)
        warp = [_Field(rng, 4, (150.0, 300.0)) for _ in range(3)]
        warp_mm = 4.0
        self.margin = warp_mm * max(w.bound for w in warp)  # bounds |displacement|
        phys = self.physical()
        self.p = [(phys[r] + warp_mm * self.field(warp[r]) - self.shift[r]) / self.scale for r in range(3)]
        del phys
        # Texture for tissue heterogeneity and fat/bowel blending, and bumps for organ surfaces.
        self.texture = self.field(_Field(rng, 8, (25.0, 70.0)))
        bumps = _Field(rng, 6, (50.0, 120.0))
        self.bumps = self.field(bumps)
        self.bumps_bound = bumps.bound
        self.hu = np.full(self.shape, _AIR, np.float32)
        self.owner = np.zeros(self.shape, np.uint8)

    def physical(self, box=None) -> list:
        """Physical (LPS, mm) coordinates of the voxel centres in ``box`` (all voxels if None)."""
        box = box or tuple(slice(0, n) for n in self.shape)
        k, j, i = (np.arange(s.start, s.stop, dtype=np.float32) for s in box)
        m = self.steps.astype(np.float32)
        return [self.origin[r] + m[r, 0] * i[None, None, :] + m[r, 1] * j[None, :, None] + m[r, 2] * k[:, None, None]
                for r in range(3)]

    def field(self, f: _Field) -> np.ndarray:
        """``f`` sampled at every voxel centre (its physical position)."""
        return f.on_grid(self.origin, self.steps, self.shape)

    def physical_box(self, lo, hi):
        """The smallest index box (numpy slices) holding the physical axis-aligned box [lo, hi], or None."""
        corners = np.array(list(itertools.product(*zip(lo, hi))))
        index = np.linalg.solve(self.steps, (corners - self.origin).T)
        first = np.clip(np.floor(index.min(axis=1)).astype(int), 0, self.size)
        last = np.clip(np.ceil(index.max(axis=1)).astype(int) + 1, 0, self.size)
        if np.any(last <= first):
            return None
        return tuple(slice(a, b) for a, b in zip(first[::-1], last[::-1]))

    def box(self, lo, hi):
        """The index box holding the canonical box [lo, hi] (None where it misses the grid)."""
        lo = np.clip(np.asarray(lo, float), -_INF, _INF) * self.scale + self.shift - self.margin
        hi = np.clip(np.asarray(hi, float), -_INF, _INF) * self.scale + self.shift + self.margin
        return self.physical_box(lo, hi)

    def coords(self, box) -> list:
        """Canonical anatomical coordinates (x, y, z arrays) of the voxels in ``box``."""
        return [c[box] for c in self.p]

    def paint(self, box, mask, hu, owner: int = 0) -> None:
        """Set HU (a number, or an array over ``box``) and the owning structure where ``mask`` is True."""
        view = self.hu[box]
        view[mask] = hu[mask] if isinstance(hu, np.ndarray) else hu
        self.owner[box][mask] = owner

    def stamp(self, image: sitk.Image) -> None:
        """Give ``image`` this grid's geometry."""
        image.SetSpacing(tuple(self.spacing))
        image.SetOrigin(tuple(self.origin))
        image.SetDirection(tuple(self.direction.ravel()))


def _draw_hu(rng) -> dict:
    """Tissue HU for one (portal-venous) scan: contrast uptake varies a little from patient to patient."""
    liver = rng.uniform(90, 112)
    cortex = rng.uniform(165, 200)
    aorta = rng.uniform(160, 210)
    return {
        "fat": rng.uniform(-110, -90), "muscle": rng.uniform(40, 60), "tissue": rng.uniform(20, 40),
        "liver": liver, "spleen": liver + rng.uniform(5, 20), "pancreas": rng.uniform(80, 100),
        "cortex": cortex, "medulla": cortex - rng.uniform(35, 60), "aorta": aorta,
        "ivc": aorta - rng.uniform(20, 50), "cancellous": rng.uniform(380, 460), "cortical": rng.uniform(600, 700),
        "arch": rng.uniform(480, 620), "disc": rng.uniform(70, 100), "csf": rng.uniform(5, 20),
        "lung": rng.uniform(-880, -820), "stomach": rng.uniform(5, 30),
    }


# --- shapes: approximate signed distances in mm (negative inside) ------------------------------------------

def _rotation(rng, max_deg) -> np.ndarray:
    """A random rotation of at most ``max_deg`` degrees about each axis (x, y, z in turn)."""
    ax, ay, az = np.radians(rng.uniform(-1, 1, size=3) * np.asarray(max_deg, float))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _norm(p, centre, radii, rot=None) -> np.ndarray:
    """Ellipsoidal radius |R^T (p - c) / radii| (1 on the surface)."""
    d = [p[r] - np.float32(centre[r]) for r in range(3)]
    rot = np.eye(3) if rot is None else rot
    total = 0
    for c in range(3):
        local = rot[0, c] * d[0] + rot[1, c] * d[1] + rot[2, c] * d[2]
        total = total + (local / np.float32(radii[c])) ** 2
    return np.sqrt(total)


def _ellipsoid(p, centre, radii, rot=None) -> np.ndarray:
    """Approximate signed distance to an ellipsoid (exact along its smallest axis)."""
    return (_norm(p, centre, radii, rot) - 1) * np.float32(min(radii))


def _cylinder(p, cx, cy, a, b) -> np.ndarray:
    """Elliptic cylinder along z; the centre (cx, cy) and semi-axes may vary with z (arrays)."""
    n = np.sqrt(((p[0] - cx) / a) ** 2 + ((p[1] - cy) / b) ** 2)
    return (n - 1) * np.minimum(a, b)


def _slab(v, lo, hi) -> np.ndarray:
    """Signed distance to the slab lo <= v <= hi along one coordinate."""
    return np.maximum(lo - v, v - hi)


def _smooth_union(a, b, k) -> np.ndarray:
    """Union of two shapes blended over ``k`` mm (polynomial smooth minimum), so lobes join without a crease."""
    h = np.maximum(k - np.abs(a - b), 0) / k
    return np.minimum(a, b) - h * h * k / 4


def _tube(p, points, radii) -> np.ndarray:
    """Union of spheres along a densely sampled curve: a tube of varying radius."""
    out = None
    for (x, y, z), r in zip(points, radii):
        d = np.sqrt((p[0] - x) ** 2 + (p[1] - y) ** 2 + (p[2] - z) ** 2) - r
        out = d if out is None else np.minimum(out, d)
    return out


def _bbox(centre, radii, grow_mm=0.0):
    """Box around an ellipsoid whose signed distance (``_ellipsoid``) is thresholded at up to ``grow_mm``:
    that distance is scaled by the smallest radius, so the surface moves up to ``grow_mm`` x max/min along
    the longest axis."""
    extent = max(radii) * (1 + grow_mm / min(radii))
    return np.asarray(centre) - extent, np.asarray(centre) + extent


# --- anatomy --------------------------------------------------------------------------------------------

def _paint_anatomy(c: _Canvas, rng, hu: dict) -> None:
    """Paint the patient from the skin inwards; later structures override earlier ones, and labelled organs
    first paint a thin fat capsule so neighbours stay apart as in a real scan.

    The rng is drawn in one fixed order (wall, upper abdomen, the other organs, spine): a seed always gives the
    same patient."""
    cavity, spine_y = _paint_wall_and_muscles(c, rng, hu)
    _paint_upper_abdomen(c, rng, hu, cavity, spine_y)
    _paint_organs(c, rng, hu, cavity, spine_y)
    _paint_spine(c, rng, hu, spine_y)


def _paint_wall_and_muscles(c: _Canvas, rng, hu: dict) -> tuple:
    """Body wall, abdominal cavity, back muscles and psoas; returns the cavity's signed distance and the spine's
    centre line ``spine_y(z)``, which the organs are placed by."""
    full = tuple(slice(0, n) for n in c.shape)
    p, tex, bumps = c.p, c.texture, c.bumps

    # Body: subcutaneous fat, abdominal wall muscle, and the cavity filled with bowel/mesentery, a blend of
    # soft tissue and fat.
    body_a, body_b, body_y = rng.uniform(138, 158), rng.uniform(105, 122), 5.0
    fat_mm, wall_mm = rng.uniform(12, 28), rng.uniform(8, 13)
    body = _cylinder(p, 0, body_y, body_a, body_b)
    c.paint(full, body < 0, hu["fat"] + 4 * tex)
    c.paint(full, _cylinder(p, 0, body_y, body_a - fat_mm, body_b - fat_mm) < 0, hu["muscle"] + 3 * tex)
    cav_a, cav_b = body_a - fat_mm - wall_mm, body_b - fat_mm - wall_mm
    cavity = _cylinder(p, 0, body_y, cav_a, cav_b)
    fatty = 1 / (1 + np.exp(-4 * (tex - rng.uniform(0.5, 0.9))))
    c.paint(full, cavity < 0, hu["tissue"] * (1 - fatty) + hu["fat"] * fatty + 4 * bumps)

    # Spine: vertebral body centre line, with a gentle lordosis.
    spine_y0, lordosis = rng.uniform(40, 50), rng.uniform(2e-4, 6e-4)

    def spine_y(z):
        return spine_y0 + lordosis * z * z

    # Back muscles (paraspinal) and psoas, which widens and moves laterally caudally.
    for side in (-1, 1):
        box = c.box((side * 33 - 26, -_INF, -_INF), (side * 33 + 26, _INF, _INF))
        if box is not None:
            q = c.coords(box)
            back = np.maximum(_cylinder(q, side * 33, spine_y(q[2]) + 48, 25, 20), body[box] + 6)
            c.paint(box, back < 0, hu["muscle"] + 3 * tex[box])
        box = c.box((side * 45 - 40, -_INF, -_INF), (side * 45 + 40, _INF, 30))
        if box is not None:
            q = c.coords(box)
            below = np.maximum(0, 20 - q[2])
            radius = np.minimum(6 + 0.1 * below, 19)
            psoas = np.maximum(_cylinder(q, side * (24 + 0.12 * below), spine_y(q[2]) + 2, radius, radius), q[2] - 30)
            c.paint(box, psoas < 0, hu["muscle"] + 3 * tex[box])
    return cavity, spine_y


def _paint_upper_abdomen(c: _Canvas, rng, hu: dict, cavity, spine_y) -> None:
    """Stomach, bowel gas, liver and inferior vena cava."""
    tex, bumps = c.texture, c.bumps

    # Stomach (left upper quadrant, anterior): wall, fluid, and gas rising anteriorly (patient supine).
    centre = np.array([55, -22, 35]) + rng.normal(0, 4, 3)
    radii = np.array([40, 36, 45]) * rng.uniform(0.85, 1.15, 3)
    box = c.box(*_bbox(centre, radii, 3 * c.bumps_bound))
    if box is not None:
        q = c.coords(box)
        d = _ellipsoid(q, centre, radii) + 3 * bumps[box]
        c.paint(box, d < 0, hu["muscle"])
        c.paint(box, d < -4, hu["stomach"])
        c.paint(box, (d < -4) & (q[1] < centre[1] - 0.4 * radii[1]), _GAS)

    # Bowel gas pockets in the anterior lower abdomen.
    for _ in range(rng.integers(3, 7)):
        centre = np.array([rng.uniform(-90, 90), rng.uniform(-80, -25), rng.uniform(-110, 0)])
        radii = rng.uniform(6, 16, 3)
        box = c.box(*_bbox(centre, radii))
        if box is not None:
            q = c.coords(box)
            c.paint(box, (_ellipsoid(q, centre, radii) < 0) & (cavity[box] < -3), _GAS)

    # Liver: right lobe and left lobe joined smoothly, filling the right upper quadrant up to the wall.
    right_c = np.array([-55, -5, 38]) + rng.normal(0, 4, 3)
    right_r = np.array([72, 80, 74]) * rng.uniform(0.88, 1.12, 3)
    left_c = np.array([5, -40, 60]) + rng.normal(0, 4, 3)
    left_r = np.array([55, 35, 33]) * rng.uniform(0.85, 1.15, 3)
    rot_r, rot_l = _rotation(rng, 8), _rotation(rng, 10)
    # Bumps, the fat margin and the smooth union (up to k/4) can push the surface out.
    grow = 4 * c.bumps_bound + 1.5 + 5.0
    lo = np.minimum(_bbox(right_c, right_r, grow)[0], _bbox(left_c, left_r, grow)[0])
    hi = np.maximum(_bbox(right_c, right_r, grow)[1], _bbox(left_c, left_r, grow)[1])
    box = c.box(lo, hi)
    if box is not None:
        q = c.coords(box)
        d = _smooth_union(_ellipsoid(q, right_c, right_r, rot_r), _ellipsoid(q, left_c, left_r, rot_l), 20.0)
        # The inferior surface rises medially: only the right lobe's tip reaches down towards the kidney.
        floor = -30 + 0.6 * (q[0] + 90) - q[2]
        d = np.maximum.reduce([d + 4 * bumps[box], cavity[box], floor])
        c.paint(box, d < 1.5, hu["fat"])
        c.paint(box, d < 0, hu["liver"] + 4 * tex[box], _ID["liver"])

    # Inferior vena cava: right of the aorta, behind the liver (it grooves the liver).
    ivc_x, ivc_r = -22 + rng.normal(0, 2), rng.uniform(0.85, 1.15)
    box = c.box((ivc_x - 20, -_INF, -_INF), (ivc_x + 20, _INF, _INF))
    if box is not None:
        q = c.coords(box)
        c.paint(box, _cylinder(q, ivc_x, spine_y(q[2]) - 22, 13 * ivc_r, 10 * ivc_r) < 0, hu["ivc"])


def _paint_organs(c: _Canvas, rng, hu: dict, cavity, spine_y) -> None:
    """Pancreas, spleen, lung bases, kidneys and aorta, in that order (later ones paint over earlier ones)."""
    tex, bumps = c.texture, c.bumps

    # Pancreas: a tube from the head (right, near the duodenum) across the midline in front of the aorta to
    # the tail at the splenic hilum.
    head = np.array([-32, -6, -18]) + rng.normal(0, 4, 3)
    neck = np.array([10, -22, -2]) + rng.normal(0, 4, 3)
    tail = np.array([72, 14, 22]) + rng.normal(0, 4, 3)
    thick = rng.uniform(0.85, 1.15)
    t = np.linspace(0, 1, 48)[:, None]
    points = (1 - t) ** 2 * head + 2 * (1 - t) * t * neck + t ** 2 * tail  # quadratic Bezier
    radii = thick * np.interp(t[:, 0], [0, 0.35, 1], [16, 12, 11])
    pad = radii.max() + 2 * c.bumps_bound + 2
    box = c.box(points.min(axis=0) - pad, points.max(axis=0) + pad)
    if box is not None:
        d = _tube(c.coords(box), points, radii) + 2 * bumps[box]
        c.paint(box, d < 2, hu["fat"])
        c.paint(box, d < 0, hu["pancreas"] + 8 * tex[box], _ID["pancreas"])

    # Spleen: left upper quadrant, posterolateral, long axis along the ribs.
    centre = np.array([88, 40, 52]) + rng.normal(0, 4, 3)
    radii = np.array([25, 52, 45]) * rng.uniform(0.87, 1.13, 3)
    rot = _rotation(rng, (10, 10, 10)) @ _rotation_z(-35)
    box = c.box(*_bbox(centre, radii, 3 * c.bumps_bound + 2))
    if box is not None:
        q = c.coords(box)
        d = np.maximum(_ellipsoid(q, centre, radii, rot) + 3 * bumps[box], cavity[box])
        c.paint(box, d < 2, hu["fat"])
        c.paint(box, d < 0, hu["spleen"] + 3 * tex[box], _ID["spleen"])

    # Lung bases above the diaphragm: they carve the liver and spleen domes.
    for side in (-1, 1):
        centre = np.array([side * 80, 25, 178]) + rng.normal(0, 5, 3)
        radii = np.array([60, 75, 85]) * rng.uniform(0.9, 1.1, 3)
        box = c.box(*_bbox(centre, radii, 6))
        if box is not None:
            q = c.coords(box)
            d = np.maximum(_ellipsoid(q, centre, radii), cavity[box])
            c.paint(box, d < 6, hu["muscle"])
            c.paint(box, d < 0, hu["lung"] + 10 * tex[box])

    # Kidneys: retroperitoneal beside the spine, the right one lower; brighter cortex around the medulla,
    # wrapped in perirenal fat.
    for name, side, z0 in (("kidney_right", -1, -45), ("kidney_left", 1, -30)):
        centre = np.array([side * 62, 0, z0]) + rng.normal(0, 4, 3)
        centre[1] += spine_y(centre[2]) + 6
        radii = np.array([27, 22, 52]) * rng.uniform(0.88, 1.12, 3)
        rot = _rotation(rng, 6) @ _rotation_y(side * 12) @ _rotation_z(side * -20)
        box = c.box(*_bbox(centre, radii, 2 * c.bumps_bound + 5))
        if box is not None:
            q = c.coords(box)
            n = _norm(q, centre, radii, rot)
            d = (n - 1) * min(radii) + 2 * bumps[box]
            c.paint(box, d < 5, hu["fat"])
            cortex = n > 0.72 + 0.06 * tex[box]
            c.paint(box, d < 0, np.where(cortex, hu["cortex"], hu["medulla"] + 5 * tex[box]), _ID[name])

    # Aorta: anterior-left of the vertebral bodies, in periaortic fat.
    radius = rng.uniform(9.5, 12.5)
    aorta_x, tilt = 14 + rng.normal(0, 2), rng.normal(0, 0.03)
    box = c.box((aorta_x - 40, -_INF, -_INF), (aorta_x + 40, _INF, _INF))
    if box is not None:
        q = c.coords(box)
        d = _cylinder(q, aorta_x + tilt * q[2], spine_y(q[2]) - 16 - radius - 4, radius, radius)
        c.paint(box, d < 3, hu["fat"])
        c.paint(box, d < 0, hu["aorta"], _ID["aorta"])


def _paint_spine(c: _Canvas, rng, hu: dict, spine_y) -> None:
    """Vertebrae: bodies (cancellous bone in a cortical rim) separated by discs, and the posterior arch
    (pedicles/laminae around the spinal canal, spinous and transverse processes)."""
    period, phase = rng.uniform(32, 38), rng.uniform(0, 40)
    disc = rng.uniform(6, 9)
    body_a, body_b = rng.uniform(19, 24), rng.uniform(14, 18)
    box = c.box((-70, -_INF, -_INF), (70, _INF, _INF))
    if box is None:
        return
    q = c.coords(box)
    x, y, z = q
    # Position within the vertebral level: 0 at the level's centre, +-period/2 at the discs' centres.
    level = np.mod(z - phase, period) - period / 2
    y0 = spine_y(z)
    body_xy = _cylinder(q, 0, y0, body_a, body_b)
    body = np.maximum(body_xy, np.abs(level) - (period - disc) / 2)
    c.paint(box, body_xy < 0, hu["disc"])
    c.paint(box, body < 0, hu["cortical"], _ID["vertebrae"])
    c.paint(box, body < -2.5, hu["cancellous"] + 20 * c.texture[box], _ID["vertebrae"])

    canal_y = y0 + body_b + 11
    arch_z = np.abs(level) - 10
    ring = np.maximum(_cylinder(q, 0, canal_y + 2, 18, 15), arch_z)
    spinous = np.maximum.reduce([np.abs(x) - 4, _slab(y, canal_y + 10, canal_y + 32), arch_z + 2])
    transverse = np.maximum.reduce([np.abs(np.abs(x) - 24) - 12, np.abs(y - canal_y + 2) - 5, arch_z + 3])
    arch = np.minimum.reduce([ring, spinous, transverse])
    c.paint(box, arch < 0, hu["arch"], _ID["vertebrae"])
    c.paint(box, _cylinder(q, 0, canal_y, 10, 8) < 0, hu["csf"])


def _rotation_y(deg) -> np.ndarray:
    a = np.radians(deg)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def _rotation_z(deg) -> np.ndarray:
    a = np.radians(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


# --- liver tumors ---------------------------------------------------------------------------------------

def _add_tumors(c: _Canvas, rng, *, count=None, diameter_mm=None, contrast_hu=None, record=None) -> np.ndarray:
    """Darken 1-4 synthetic tumors into the liver (or as the teaching controls say); returns the tumor mask
    (all False without a liver) and appends each tumor's facts to ``record``.

    The random draws of the default phantom come first and in the same order whatever the controls, and a
    control only replaces its own draw, so no control changes what the others give."""
    tumor = np.zeros(c.shape, bool)
    record = [] if record is None else record
    liver = c.owner == _ID["liver"]
    if not liver.any():
        if count:
            raise InputError("the phantom's liver is outside this grid's field of view: no tumor can be placed")
        return tumor
    # Axial slices: the array axis closest to the patient's superior direction.
    axial = 2 - int(np.argmax(np.abs(c.direction[2])))
    structure = np.ones([1 if a == axial else 5 for a in range(3)], bool)

    k, j, i = np.nonzero(liver)
    superior = c.origin[2] + c.steps[2, 0] * i + c.steps[2, 1] * j + c.steps[2, 2] * k
    low, height = superior.min(), np.ptp(superior)
    band = (superior >= low + 0.3 * height) & (superior <= low + 0.7 * height)
    eroded = ndimage.binary_erosion(liver, structure)[k, j, i]
    candidates = np.flatnonzero(band & eroded)
    if candidates.size == 0:
        candidates = np.flatnonzero(band)
    depth_mm = None
    if diameter_mm is not None:
        # Depth of each liver voxel below the liver's surface (mm): a tumor of diameter d is centred >= d/2 deep.
        depth_mm = ndimage.distance_transform_edt(liver, sampling=c.spacing[::-1])[k, j, i]
        if depth_mm[band].max(initial=0.0) < diameter_mm[0] / 2:
            raise InputError(f"the phantom's liver is too thin for tumors of {diameter_mm[0]:g} mm: its deepest "
                             f"point in the tumor band is {depth_mm[band].max(initial=0.0):.0f} mm below the "
                             "surface; ask for smaller tumors")

    n_drawn = rng.integers(1, 5)
    for _ in range(n_drawn if count is None else count):
        r = rng.choice(_TUMOR_RADII_MM, p=_TUMOR_RADIUS_P)
        radii = r * rng.uniform(0.75, 1.25, size=3)
        rot = _rotation(rng, 180)
        pick = candidates[rng.integers(candidates.size)]
        if diameter_mm is not None:
            # The same ellipsoid shape, rescaled so its equivalent-sphere diameter is the one drawn.
            d = rng.uniform(*diameter_mm)
            radii = radii * (d / 2) / np.cbrt(np.prod(radii))
            deep = np.flatnonzero(band & (depth_mm >= d / 2))
            pick = deep[rng.integers(deep.size)] if deep.size else candidates[rng.integers(candidates.size)]
        centre = c.origin + c.steps @ np.array([i[pick], j[pick], k[pick]], float)
        blur = rng.uniform(1.0, 2.0)
        extent = 1.4 * radii.max() + 4 * blur * c.spacing.max()  # wobble <= 0.24 radii; blur to 4 sigma
        box = c.physical_box(centre - extent, centre + extent)
        q = c.physical(box)

        # Elastic-ish deformation: displace the ellipsoid's normalised coordinates by smooth waves.
        d = [q[r_] - np.float32(centre[r_]) for r_ in range(3)]
        local = [(rot[0, a] * d[0] + rot[1, a] * d[1] + rot[2, a] * d[2]) / np.float32(radii[a]) for a in range(3)]
        wobble = [_Field(rng, 2, (1.5, 3.0)) for _ in range(3)]
        local = [local[a] + 0.12 * wobble[a](local) for a in range(3)]
        in_liver = liver[box]
        mask = (np.sqrt(local[0] ** 2 + local[1] ** 2 + local[2] ** 2) < 1) & in_liver
        if not mask.any():
            continue

        # Texture: smoothed noise, thresholded, smoothed again -> patchy necrotic/viable areas in [0, 1].
        noise = ndimage.gaussian_filter(rng.standard_normal(mask.shape).astype(np.float32), sigma=1.5)
        texture = ndimage.gaussian_filter((noise > np.quantile(noise, rng.uniform(0.2, 0.5))).astype(np.float32), 1.0)
        soft = ndimage.gaussian_filter(mask.astype(np.float32), sigma=blur) * in_liver
        darkening = rng.uniform(65, 145)
        profile = soft * (0.6 + 0.4 * texture)
        if contrast_hu is None:
            c.hu[box] -= darkening * profile
            mean_change = -darkening * float(profile[mask].mean())
        else:
            # Scaled so the mean change over the tumor's voxels is exactly the requested contrast.
            mean_change = float(contrast_hu)
            c.hu[box] += mean_change * profile / max(float(profile[mask].mean()), 1e-6)
        tumor[box] |= mask
        record.append({"centre_lps_mm": [round(float(v), 2) for v in centre],
                       "diameter_mm": round(float(2 * np.cbrt(np.prod(radii))), 2),
                       "contrast_hu": round(mean_change, 1), "voxels": int(mask.sum())})
    return tumor


FULL_LENGTH_SIZE = (512, 512, 300)
FULL_LENGTH_SPACING_MM = (0.8, 0.8, 1.5)


def make_full_length_phantom(seed: int = 2024, *, tumors: bool = True, size=FULL_LENGTH_SIZE,
                             spacing_mm=FULL_LENGTH_SPACING_MM, draw_step: int = 2) -> Phantom:
    """A full-length phantom on a clinical grid: by default 512×512×300 at 0.8×0.8×1.5 mm (410 mm across, 450 mm
    from the lower chest to the pelvis), where the organs take their natural share of the slices: the liver about
    a third (seed 2024: 96 of 300 slices), the aorta and spine all of them. For measuring what depends on where
    the structures lie along the body (e.g. ``--structures`` cascades), which a short scan cannot show.

    Drawn on a grid ``draw_step`` times coarser in-plane (``make_phantom``'s field evaluation at 512² takes
    minutes and gigabytes) and resampled onto ``size``: the CT linearly, the labels by nearest neighbour, so the
    labels stay exactly on the image's grid. The slices are drawn at full resolution."""
    size = tuple(int(n) for n in size)
    spacing_mm = tuple(float(s) for s in spacing_mm)
    coarse_size = (size[0] // draw_step, size[1] // draw_step, size[2])
    coarse_spacing = (spacing_mm[0] * size[0] / coarse_size[0], spacing_mm[1] * size[1] / coarse_size[1], spacing_mm[2])
    small = make_phantom(seed, tumors=tumors, size=coarse_size, spacing_mm=coarse_spacing)
    ref = sitk.Image(list(size), sitk.sitkInt16)
    ref.SetSpacing(spacing_mm)
    ref.SetDirection(small.image.GetDirection())
    # Same physical extent: the first voxel centre moves half a coarse voxel less half a fine one inwards.
    d = np.asarray(small.image.GetDirection()).reshape(3, 3)
    shift = (np.asarray(coarse_spacing) - np.asarray(spacing_mm)) / 2.0
    ref.SetOrigin(tuple(np.asarray(small.image.GetOrigin()) - d @ shift))

    def onto(img, interp, pixel):
        return sitk.Resample(img, ref, sitk.Transform(), interp, 0, pixel, True)  # extrapolate at the rim

    image = onto(small.image, sitk.sitkLinear, sitk.sitkInt16)
    for key in small.image.GetMetaDataKeys():
        image.SetMetaData(key, small.image.GetMetaData(key))
    labels = {n: onto(lab, sitk.sitkNearestNeighbor, sitk.sitkUInt8) for n, lab in small.labels.items()}
    return Phantom(image=image, labels=labels, seed=seed, tumors=small.tumors)
