"""The cheaper non-network steps of a run (issue 24) compute exactly what the plain steps computed: each fast path
against the straightforward expression it replaced, on inputs chosen to reach its edge cases."""
from __future__ import annotations

import math

import numpy as np
import torch

from AtlasSegLib.geometry import Grid
from AtlasSegLib.outputs import _structure_entry, combined_labels, packed_box
from AtlasSegLib.overview import project, project_box
from AtlasSegLib.pipeline import sigmoid_mask
from AtlasSegLib.plausibility import _head_cues, reference_table


def test_sigmoid_mask_is_the_thresholded_sigmoid_also_next_to_the_threshold():
    """pipeline.sigmoid_mask equals ``torch.sigmoid(x) >= t`` for logits far from, near (just outside its band)
    and inside the band around the threshold's logit (there it computes the sigmoid), for thresholds from 0.01 to
    0.99 and outside that range, on sizes that reach torch's scalar tail and with 1 or 2 threads."""
    rng = np.random.default_rng(0)
    threads = torch.get_num_threads()
    try:
        for t in (0.5, 0.3, 0.95, 0.01, 0.99, 0.001):
            centre = math.log(t / (1 - t))
            band = 2.0 ** -18 / (t * (1 - t))
            for n_threads in (1, 2):
                torch.set_num_threads(n_threads)
                for size in (7, 40_001):
                    for scale in (band * 1.001, band * 10, 1e-2, 10.0, band * 0.5):
                        x = centre + np.sign(rng.standard_normal(size)) * scale * (1 + rng.random(size))
                        if scale < band:  # inside the band: the sigmoid decides
                            x = centre + rng.uniform(-band, band, size)
                        xt = torch.from_numpy(x.astype(np.float32))
                        expected = (torch.sigmoid(xt).numpy() >= t).view(np.uint8)
                        got = sigmoid_mask(xt, t)
                        assert got.dtype == np.uint8 and np.array_equal(got, expected), (t, size, scale)
    finally:
        torch.set_num_threads(threads)


def test_sigmoid_mask_band_holds_every_float32_just_outside_it():
    """Every float32 logit from the band's edge outwards (the first 20000 on each side) has its sigmoid on the
    side of the threshold the band says, through torch's vectorised kernel and its scalar tail (lengths 1-9)."""
    for t in (0.5, 0.3, 0.05, 0.99):
        centre = math.log(t / (1 - t))
        t32 = float(np.float32(t))
        band = 2.0 ** -18 / (t * (1 - t)) + abs(math.log(t32 / (1 - t32)) - centre)
        for side in (1.0, -1.0):
            x = np.empty(20_000, np.float32)
            x[0] = np.float32(centre + side * band)
            for n in range(1, x.size):
                x[n] = np.nextafter(x[n - 1], np.float32(side * np.inf))
            x = x[(x >= centre + band) if side > 0 else (x <= centre - band)]
            xt = torch.from_numpy(x)
            for length in (1, 7, 9, x.size):
                p = torch.sigmoid(xt[:length]).numpy()
                assert ((p >= t) == (side > 0)).all(), (t, side, length)


def test_structure_entry_mean_hu_from_the_integer_sum_is_numpys_mean():
    """outputs._structure_entry's mean HU (exact integer sum / count for int16 CTs) is numpy's mean of the masked
    voxels, rounded the same; also for a float CT, a mask with values above 1, and the caller's own inside/count."""
    rng = np.random.default_rng(1)
    grid = Grid((40, 30, 20), (0.8, 0.8, 1.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))

    class Cls:
        name, label, kind, color = "x", 1, "organ", (1, 2, 3)

    for trial in range(30):
        ct = rng.integers(-1024, 3000, (20, 30, 40)).astype(np.int16 if trial % 3 else np.float32)
        if trial % 3 == 0:
            ct += rng.random(ct.shape).astype(np.float32)
        box = ((5, 3, 2), (20, 15, 10))
        mask = (rng.random((10, 15, 20)) < rng.random()).astype(np.uint8) * rng.integers(1, 3)
        sl = (slice(2, 12), slice(3, 18), slice(5, 25))
        inside = mask > 0
        expected = round(float(ct[sl][inside].mean()), 1) if inside.any() else None
        entry = _structure_entry(Cls, mask, grid, ct, box)
        assert entry["mean_hu"] == expected and entry["voxels"] == int(inside.sum())
        assert _structure_entry(Cls, mask, grid, ct, box, inside=inside, voxels=int(inside.sum())) == entry


def test_box_projection_in_integers_is_the_float_projection():
    """overview.project_box (integer sums, uint16 where no column can overflow) equals ``project`` of the whole
    grid for bool, 0/1 and 0-255 uint8 masks, with a box deeper than 257 voxels along anterior-posterior."""
    rng = np.random.default_rng(2)
    for size, values in (((30, 300, 12), 255), ((30, 40, 12), 1), ((30, 40, 12), 255), ((20, 270, 9), 1)):
        grid = Grid(size, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        full = np.zeros(size[::-1], np.uint8)
        start = (3, 1, 2)
        box = rng.integers(0, values + 1, (size[2] - 4, size[1] - 2, size[0] - 5)).astype(np.uint8)
        full[2:2 + box.shape[0], 1:1 + box.shape[1], 3:3 + box.shape[2]] = box
        for m, f in ((box, full), (box > 0, full > 0)):
            got = project_box(m, start, grid)
            assert got.dtype == np.float32 and np.array_equal(got, project(f.astype(np.float32), grid))


def test_combined_labels_painted_in_place_keep_order_and_hidden_names():
    """outputs.combined_labels (copyto on each box view) paints largest first, so a small structure inside a
    larger one shows, and names the structure no voxel of which is left visible."""
    shape = (10, 12, 14)
    big = np.zeros(shape, bool)
    big[1:9, 1:11, 1:13] = True
    small = np.zeros(shape, bool)
    small[3:5, 3:5, 3:5] = True
    covered = small.copy()  # same voxels as `small`, painted before it (equal size, lower label first)
    drawn = [(int(m.sum()), False, label, name, *packed_box(m))
             for m, label, name in ((big, 1, "big"), (small, 3, "small"), (covered, 2, "covered"))]
    out, hidden = combined_labels(shape, drawn)
    expected = np.zeros(shape, np.uint8)
    expected[big] = 1
    expected[covered] = 2
    expected[small] = 3
    assert np.array_equal(out, expected) and hidden == ["covered"]


def test_head_cues_with_the_callers_centroid_are_the_same():
    """plausibility._head_cues given the filled cross-section's centroid (body_profile has it) returns what it
    computes on its own, on ring-shaped bone around random bodies."""
    cov = reference_table()["coverage"]
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[:80, :90]
    for _ in range(10):
        r = rng.uniform(20, 38)
        filled = (yy - 40) ** 2 + (xx - 45) ** 2 <= r * r
        values = rng.integers(-200, 100, filled.shape)
        rim = filled & ((yy - 40) ** 2 + (xx - 45) ** 2 >= (r - 4) ** 2) & (rng.random(filled.shape) < 0.5)
        values[rim] = 900
        fi, fj = np.nonzero(filled)
        assert _head_cues(values, filled, 2.0, 2.0, cov, centroid=(fi.mean(), fj.mean())) == \
            _head_cues(values, filled, 2.0, 2.0, cov)


def test_bounding_slices_two_passes_give_the_per_axis_projection_box():
    """masks.bounding_slices (the first axis from its rows, the others from that slab's plane) gives the box of
    plain per-axis projections for sparse, dense, one-voxel, empty, bool and uint8 masks, for non-contiguous
    views, 1-D and 4-D arrays, with and without a margin."""
    from AtlasSegLib.masks import bounding_slices

    def per_axis(m, margin):
        box = []
        for axis in range(m.ndim):
            idx = np.flatnonzero(m.any(axis=tuple(a for a in range(m.ndim) if a != axis)))
            if idx.size == 0:
                return None
            box.append(slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, m.shape[axis])))
        return tuple(box)

    rng = np.random.default_rng(6)
    for trial in range(60):
        ndim = (3, 3, 1, 4)[trial % 4] if trial >= 40 else 3
        shape = tuple(int(v) for v in rng.integers(1, 30 if ndim < 4 else 8, ndim))
        mask = rng.random(shape) < [0.0, 0.001, 0.05, 0.9][trial % 4]
        if trial % 5 == 0:
            mask = mask.astype(np.uint8)
        for m in (mask, mask[..., ::-1], np.asfortranarray(mask)):
            for margin in (0, 2):
                assert bounding_slices(m, margin) == per_axis(m, margin), trial


def test_windowed_ct_projection_in_memory_order_is_the_las_view_sum():
    """overview.project with a window (an integer CT summed in its memory order, then only the 2-D result
    flipped/transposed to LAS) equals the clipped sum along anterior-posterior of the LAS view, normalised the same,
    for flipped/permuted directions (anterior-posterior along any index axis) and 8/16-bit CTs."""
    from AtlasSegLib.geometry import reorient_array

    rng = np.random.default_rng(7)
    lo, hi = -150.0, 250.0
    for case in range(36):
        perm, signs = rng.permutation(3), rng.choice([-1, 1], 3)
        direction = np.zeros((3, 3))
        direction[np.arange(3), perm] = signs
        size = tuple(int(v) for v in rng.integers(1, 40, 3))
        grid = Grid(size, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), tuple(direction.reshape(-1).tolist()))
        dtype = (np.int16, np.uint16, np.int8)[case % 3]
        info = np.iinfo(dtype)
        ct = rng.integers(max(info.min, -1024), min(info.max, 3000), size[::-1]).astype(dtype)
        las = reorient_array(ct, grid, "LAS")
        expected = np.clip(las.astype(np.int64), lo, hi).sum(axis=1).astype(np.float32)
        expected -= las.shape[1] * lo
        expected /= hi - lo
        got = project(ct, grid, window=(lo, hi))
        assert got.dtype == np.float32 and np.array_equal(got, expected), case


def test_hole_filling_of_a_box_view_is_scipys():
    """body_profile fills the largest cross-section's holes on a view of its box (fill_voids takes another, faster
    route for a non-contiguous array): the result is SciPy's binary_fill_holes of that box, on random bodies
    with lungs, gas and holes touching the box's edge."""
    import fill_voids
    from scipy import ndimage

    from AtlasSegLib.masks import bounding_slices

    rng = np.random.default_rng(8)
    yy, xx = np.mgrid[:120, :140]
    for _ in range(40):
        body = ((yy - 60) / rng.uniform(20, 58)) ** 2 + ((xx - 70) / rng.uniform(20, 68)) ** 2 <= 1
        for _ in range(int(rng.integers(0, 8))):
            cy, cx, r = rng.integers(0, 120), rng.integers(0, 140), rng.integers(2, 15)
            body &= (yy - cy) ** 2 + (xx - cx) ** 2 > r * r
        body &= rng.random(body.shape) > 0.02
        if not body.any():
            continue
        box = bounding_slices(body)
        got = fill_voids.fill(body[box], in_place=False)
        assert np.array_equal(got, ndimage.binary_fill_holes(body[box]))
