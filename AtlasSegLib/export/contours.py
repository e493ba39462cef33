"""Mask <-> polygon, the geometry under RTSTRUCT: ``mask_contours`` traces the closed polygons around a 2D mask
(marching squares; holes ``separate`` or joined to their outer boundary by a zero-width keyhole cut), and
``fill_polygons`` rasterises polygons back (even-odd rule at pixel centres), which ``read_rtstruct`` and the tests
use. Pure numpy plus contourpy; pixel coordinates (i = column, j = row), nothing about DICOM."""
from __future__ import annotations

from typing import Optional

import contourpy
import numpy as np

from ..masks import bounding_slices

HOLES = ("keyhole", "separate")


def mask_contours(mask_2d: np.ndarray, holes: str = "separate") -> list:
    """Closed polygons (``(n, 2)`` arrays of (i, j) pixel coordinates) around a 2D mask, traced at the half-way
    level between in and out (marching squares, contourpy).

    ``holes="separate"``: every outer boundary and every hole is its own polygon; filled together with the
    even-odd rule at pixel centres they give back the mask (up to pixels touching only at a corner), but a reader
    that ORs the polygons fills the holes. ``holes="keyhole"``: one polygon per outer boundary, each of its holes
    joined to it by a zero-width cut, so every polygon encloses exactly its part of the mask: even-odd, nonzero
    winding and OR of the polygons all give the same mask."""
    box = bounding_slices(mask_2d)
    if box is None:
        return []
    # Trace only the mask's bounding box (plus a margin of background so every boundary closes).
    r0, c0 = box[0].start, box[1].start
    padded = np.pad(mask_2d[box].astype(np.float64), 1)
    generator = contourpy.contour_generator(z=padded, fill_type=contourpy.FillType.OuterOffset)
    polygons, offsets = generator.filled(0.5, 1.5)
    shift = np.array([c0 - 1.0, r0 - 1.0])
    out = []
    for points, offset in zip(polygons, offsets):
        rings = []  # the outer boundary first, then its holes (FillType.OuterOffset)
        for start, stop in zip(offset[:-1], offset[1:]):
            ring = points[start:stop - 1] + shift  # drop the repeated closing point, back to slice coordinates
            ring = _drop_collinear(ring)
            if len(ring) >= 3:
                rings.append(ring)
        if holes == "keyhole" and len(rings) > 1:
            rings = [_bridge_holes(rings[0], rings[1:])]
        out.extend(rings)
    return out


def _bridge_holes(outer: np.ndarray, holes: list) -> np.ndarray:
    """One closed polygon from an outer ring and its holes, each hole joined by a zero-width cut (a keyhole).

    The cut runs straight up (towards smaller j) from a hole's topmost crossing with a vertical line a quarter pixel
    right of its topmost vertex, to the first boundary above: the outer ring or another hole (then the two holes
    travel on together). Vertices lie on pixel-edge midpoints (one coordinate whole, the other half), so that line
    meets no vertex, no vertical edge and no pixel centre; between its ends it runs inside the mask."""
    rings = [np.asarray(outer, float)] + [np.asarray(h, float) for h in holes]
    pending = list(range(1, len(rings)))
    while pending:
        r = pending.pop()
        ring = rings[r]
        x = float(ring[np.argmin(ring[:, 1]), 0]) + 0.25
        start, y0 = _vertical_crossing(ring, x)
        best = None
        for t in [0] + pending:
            edge, y = _vertical_crossing(rings[t], x, above=y0)
            if edge is not None and (best is None or y > best[2]):
                best = (t, edge, y)
        if start is None or best is None:  # cannot happen for a hole inside its outer ring
            raise RuntimeError(f"no boundary above a hole at x={x}")
        t, edge, y = best
        v, p = np.array([[x, y0]]), np.array([[x, y]])
        loop = np.vstack([v, ring[start + 1:], ring[:start + 1], v])  # around the hole, back to where it began
        target = rings[t]
        rings[t] = np.vstack([target[:edge + 1], p, loop, p, target[edge + 1:]])
        rings[r] = None
    return rings[0]


def _vertical_crossing(ring: np.ndarray, x: float, above: Optional[float] = None):
    """(edge index, j) where ``ring`` crosses the vertical line ``x``: its topmost crossing, or (``above``) the
    nearest crossing above j = ``above``; (None, None) when there is none. Edges count half-open in x, so a
    crossing at a shared vertex counts once and vertical edges (earlier cuts) never."""
    a, b = ring, np.roll(ring, -1, axis=0)
    hit = np.flatnonzero((a[:, 0] <= x) != (b[:, 0] <= x))
    if not len(hit):
        return None, None
    y = a[hit, 1] + (x - a[hit, 0]) / (b[hit, 0] - a[hit, 0]) * (b[hit, 1] - a[hit, 1])
    if above is None:
        k = int(np.argmin(y))
    else:
        ok = np.flatnonzero(y < above)
        if not len(ok):
            return None, None
        k = int(ok[np.argmax(y[ok])])
    return int(hit[k]), float(y[k])


def _drop_collinear(ring: np.ndarray) -> np.ndarray:
    """The ring without vertices lying on the straight line through their neighbours (exact: same polygon).

    Marching squares puts a vertex on every pixel edge; straight and 45° runs need only their ends."""
    before = ring - np.roll(ring, 1, axis=0)
    after = np.roll(ring, -1, axis=0) - ring
    cross = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    return ring[np.abs(cross) > 1e-9]


def fill_polygons(polygons, shape) -> np.ndarray:
    """Rasterise closed polygons ((x=i, y=j) pixel coordinates) on a (rows, columns) grid: a pixel is inside when
    its centre is, counting all polygons together with the even-odd rule (holes and XOR of overlaps)."""
    rows, cols = shape
    all_rows, all_x = [], []
    for poly in polygons:
        poly = np.asarray(poly, float)
        x0, y0 = poly[:, 0], poly[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
        first = np.ceil(lo).astype(int)  # rows r with lo <= r < hi: each crossing counted once at vertices
        count = np.maximum(np.ceil(hi).astype(int) - first, 0)
        if not count.any():
            continue
        edge = np.repeat(np.arange(len(poly)), count)
        r = np.repeat(first, count) + (np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count))
        t = (r - y0[edge]) / (y1[edge] - y0[edge])
        all_rows.append(r)
        all_x.append(x0[edge] + t * (x1[edge] - x0[edge]))
    out = np.zeros(shape, bool)
    if not all_rows:
        return out
    r = np.concatenate(all_rows)
    x = np.concatenate(all_x)
    keep = (r >= 0) & (r < rows)
    r, x = r[keep], x[keep]
    order = np.lexsort((x, r))
    r, x = r[order], x[order]
    diff = np.zeros((rows, cols + 1), np.int32)
    starts, stops = np.ceil(x[0::2]).astype(int), np.ceil(x[1::2]).astype(int)  # centres c with xa <= c < xb
    np.add.at(diff, (r[0::2], np.clip(starts, 0, cols)), 1)
    np.add.at(diff, (r[1::2], np.clip(stops, 0, cols)), -1)
    return np.cumsum(diff, axis=1)[:, :cols] > 0
