"""The overview picture: a frontal projection of the CT with each structure as a coloured tint.

Label-review convention (MODELS.md §5): reoriented to LAS, HU window −150…250, *summed* along the
anterior-posterior axis (an X-ray-like view, not a MIP), normalised, 1 mm pixels, head up, patient's right on
the image's left (radiological view) with R/L markers. Each mask's projection (its sum, normalised) is a tint in
the structure's colour over every pixel it covers; a covered pixel is tinted at least half strength, so thin or
shallow parts of a structure (a tumor's rim, a vessel seen edge-on) stay visible next to thick ones.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw, ImageFont

from .geometry import Grid, orientation_transform, oriented, reorient_array

WINDOW_HU = (-150.0, 250.0)
# Opacity of a structure's tint where its projection is thickest (half of it at the thinnest covered pixel):
# enough to tell the colours apart, little enough to see the bones and gas through them.
TINT_OPACITY = 0.7
MIN_HEIGHT_PX = 300  # a short scan's projection is drawn at least this tall (physical aspect kept) …
MAX_WIDTH_PX = 1000  # … unless it would be wider than this
SHORT_SCAN_MM = 150.0  # shorter head to foot: the picture says to check the structures on slices


def project(array_kji: np.ndarray, grid: Grid, *, window=None) -> np.ndarray:
    """Sum along anterior-posterior of the LAS-reoriented array → (i, k) float32 (i: right→left, k: up)."""
    arr = reorient_array(array_kji, grid, "LAS")
    if window is None:
        return arr.sum(axis=1, dtype=np.float32)
    lo, hi = window
    # Sum of the clipped values, normalised once: sum((v - lo) / (hi - lo)) = (sum(v) - n lo) / (hi - lo).
    # An integer CT is clipped in its own type and summed exactly in int32 in the array's memory order
    # (_clipped_sums: 6x faster than through the LAS view); anything else in float32, 16 slices at a time.
    exact = (np.issubdtype(arr.dtype, np.integer) and arr.dtype.itemsize <= 2 and float(lo).is_integer()
             and float(hi).is_integer() and np.iinfo(arr.dtype).min <= lo and hi <= np.iinfo(arr.dtype).max)
    if exact:
        out = _clipped_sums(np.asarray(array_kji), grid, arr.dtype.type(lo), arr.dtype.type(hi))
    else:
        out = np.zeros((arr.shape[0], arr.shape[2]), np.float32)
        for k in range(0, arr.shape[2], 16):
            slab = arr[:, :, k:k + 16]
            out[:, k:k + 16] = np.clip(slab.astype(np.float32), lo, hi).sum(axis=1, dtype=np.float32)
    out -= arr.shape[1] * lo
    out /= hi - lo
    return out


def _clipped_sums(array_kji: np.ndarray, grid: Grid, lo, hi) -> np.ndarray:
    """``project``'s sums of the values clipped to [lo, hi] (integers, summed exactly in int32) along
    anterior-posterior, as (i, k) float32 in LAS: clipped into one reused buffer 16 planes of the outermost
    other axis at a time and summed in memory order, then only the small 2-D result is flipped/transposed (the
    LAS view's flipped, transposed strides made the same sums 6x slower)."""
    ornt = _las(grid)[0]
    ap = next(a for a in range(3) if int(ornt[a, 0]) == 1)  # the index axis that becomes anterior-posterior
    rest = [a for a in range(3) if a != ap]
    ap_kji = 2 - ap
    step_axis = 0 if ap_kji != 0 else 1  # chunks along the outermost axis that is not summed
    sums = np.empty([n for d, n in enumerate(array_kji.shape) if d != ap_kji], np.int32)
    buf = None
    for c in range(0, array_kji.shape[step_axis], 16):
        part = array_kji[(slice(None),) * step_axis + (slice(c, c + 16),)]
        if buf is None or buf.shape != part.shape:
            buf = np.empty(part.shape, array_kji.dtype)
        np.clip(part, lo, hi, out=buf)
        at = step_axis - (ap_kji < step_axis)  # that axis's place among the summed array's two
        sums[(slice(None),) * at + (slice(c, c + 16),)] = buf.sum(axis=ap_kji, dtype=np.int32)
    out = sums.T.astype(np.float32)  # index axes (rest[0], rest[1]), ascending
    for n, a in enumerate(rest):
        if ornt[a, 1] < 0:
            out = np.flip(out, n)
    out = out.T if int(ornt[rest[0], 0]) > int(ornt[rest[1], 0]) else out
    return np.ascontiguousarray(out)


@lru_cache(maxsize=8)
def _las(grid: Grid) -> tuple:
    """(``orientation_transform``, ``oriented``) of ``grid`` to LAS, once per grid: a run's 42 structures asked
    for them three times each (nibabel's io_orientation, an SVD, every time)."""
    ornt = orientation_transform(grid, "LAS")
    ornt.flags.writeable = False
    return ornt, oriented(grid, "LAS")


def project_box(mask_box_kji: np.ndarray, start_ijk, grid: Grid) -> np.ndarray:
    """``project`` of a mask that is zero outside a box: ``mask_box_kji`` is the box's content and ``start_ijk``
    its first voxel on ``grid``. Reads the box only (a full-grid pass per structure was the slow part)."""
    ornt = _las(grid)[0]
    ap = next(a for a in range(3) if int(ornt[a, 0]) == 1)  # the index axis that becomes anterior-posterior
    rest = [a for a in range(3) if a != ap]
    m = np.asarray(mask_box_kji)
    # Summed in integers, then converted: the same float32 values (every sum is an integer below 2**24, exact in
    # both) at half the cost of summing in float32; uint16 where no column can exceed 65535.
    top = 1 if m.dtype == bool else (255 if m.dtype == np.uint8 else None)
    if top is not None and m.shape[2 - ap] * top <= 65535:
        part = m.transpose(2, 1, 0).sum(axis=ap, dtype=np.uint16).astype(np.float32)
    else:
        part = m.transpose(2, 1, 0).sum(axis=ap, dtype=np.float32)
    out = np.zeros((grid.size[rest[0]], grid.size[rest[1]]), np.float32)
    s0, s1 = int(start_ijk[rest[0]]), int(start_ijk[rest[1]])
    out[s0:s0 + part.shape[0], s1:s1 + part.shape[1]] = part
    for n, a in enumerate(rest):
        if ornt[a, 1] < 0:
            out = np.flip(out, n)
    return out.T if int(ornt[rest[0], 0]) > int(ornt[rest[1], 0]) else out


def _to_display(proj_ik: np.ndarray, grid: Grid, *, resample=Image.BILINEAR) -> Image.Image:
    """(i, k) projection → PIL image with 1 mm pixels, head up, patient's right on the left."""
    g = _las(grid)[1]
    img = np.flipud(proj_ik.T)  # rows: superior first
    width = max(1, int(round(g.size[0] * g.spacing[0])))
    height = max(1, int(round(g.size[2] * g.spacing[2])))
    pil = Image.fromarray(img.astype(np.float32), mode="F")
    return pil.resize((width, height), resample)


class Overview:
    """Accumulates structure projections while a run writes its masks, then renders the PNG."""

    def __init__(self, image: sitk.Image):
        self.grid = Grid.of(image)
        ct = project(sitk.GetArrayViewFromImage(image), self.grid, window=WINDOW_HU)
        ct /= max(float(ct.max()), 1e-6)
        self.ct = _to_display(ct, self.grid)
        self.layers = []  # (name, colour, mask projection as PIL "F")

    def add(self, name: str, color, mask_kji: np.ndarray, start_ijk=None) -> None:
        """``mask_kji`` on the whole grid, or (with ``start_ijk``) the content of a box starting there."""
        proj = project(mask_kji, self.grid) if start_ijk is None else project_box(mask_kji, start_ijk, self.grid)
        if proj.max() <= 0:
            return
        # Coverage is resampled on its own: the bilinear 1 mm resampling of the normalised sum would fade the
        # edges of a thick structure below any fixed cut-off and make it look smaller than it is.
        coverage = _to_display((proj > 0).astype(np.float32), self.grid)
        self.layers.append((name, tuple(color), _to_display(proj / proj.max(), self.grid), coverage))

    def render(self, title: str = "") -> Image.Image:
        base = np.asarray(self.ct, dtype=np.float32)
        rgb = np.repeat((np.clip(base, 0, 1) * 255)[..., None], 3, axis=2)
        for _, color, layer, coverage in self.layers:
            covered = np.asarray(coverage, dtype=np.float32) >= 0.5
            rows, cols = np.flatnonzero(covered.any(axis=1)), np.flatnonzero(covered.any(axis=0))
            if not rows.size:
                continue
            # Only the covered pixels' box changes (alpha is 0 elsewhere): 42 structures on a 1 mm picture.
            box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
            strength = np.clip(np.asarray(layer, dtype=np.float32)[box], 0, 1)
            alpha = np.where(covered[box], TINT_OPACITY * np.maximum(strength, 0.5), 0.0)[..., None]
            rgb[box] = rgb[box] * (1 - alpha) + np.asarray(color, np.float32)[None, None, :] * alpha
        # At least 512 pixels along the longer side and MIN_HEIGHT_PX tall (a short scan, a few cm of z, is
        # otherwise a thin strip), at most MAX_WIDTH_PX wide; the physical aspect ratio is kept.
        height, width = rgb.shape[:2]
        scale = max(1, math.ceil(512 / max(height, width)))
        if height * scale < MIN_HEIGHT_PX:
            scale = max(scale, min(MIN_HEIGHT_PX / height, MAX_WIDTH_PX / width))
        img = Image.fromarray(rgb.astype(np.uint8), "RGB")
        if scale > 1:
            img = img.resize((int(round(width * scale)), int(round(height * scale))), Image.BILINEAR)
        return self._decorate(img, title, short_scan_note(self.grid))

    def _decorate(self, img: Image.Image, title: str, note: str = "") -> Image.Image:
        font = text_font(16)
        small = text_font(13)
        legend_w = 210
        below = 24 if note else 0
        canvas = Image.new("RGB", (img.width + legend_w, max(img.height + 30 + below, 40 + 20 * len(self.layers))),
                           "black")
        canvas.paste(img, (0, 30))
        d = ImageDraw.Draw(canvas)
        d.text((6, 6), title, fill="white", font=font)
        if note:
            d.text((6, img.height + 34), note, fill=(255, 210, 80), font=small)
        d.text((6, 36), "R", fill="yellow", font=font)
        d.text((img.width - 18, 36), "L", fill="yellow", font=font)
        y = 36
        for name, color, *_ in self.layers:
            d.rectangle([img.width + 10, y + 2, img.width + 24, y + 14], fill=color)
            d.text((img.width + 30, y), name, fill="white", font=small)
            y += 20
        return canvas


def short_scan_note(grid: Grid) -> str:
    """A warning for scans shorter than SHORT_SCAN_MM head to foot: their frontal projection piles every organ
    of a few cm onto one strip, so it cannot show whether each one is right (empty for longer scans)."""
    g = oriented(grid, "LAS")
    length = g.size[2] * g.spacing[2]
    if length >= SHORT_SCAN_MM:
        return ""
    return (f"short scan ({length / 10:.1f} cm, {g.size[2]} slices): structures overlap in this projection; "
            "check them on axial and coronal slices")


def text_font(size: int):
    """Pillow's default font at ``size`` px (the one font of every picture AtlasSeg draws)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()
