"""The overview's per-structure projection reads only the structure's box and equals the full-grid projection."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from AtlasSegLib.geometry import Grid
from AtlasSegLib.overview import project, project_box


def _grids():
    sizes = (23, 17, 11)
    for perm in itertools.permutations(range(3)):
        for signs in ((1, 1, 1), (-1, 1, 1), (1, -1, -1), (-1, -1, 1)):
            d = np.zeros((3, 3))
            for col, (row, sign) in enumerate(zip(perm, signs)):
                d[row, col] = sign
            yield Grid(sizes, (0.8, 1.1, 2.5), (10.0, -4.0, 3.0), tuple(d.reshape(-1)))


@pytest.mark.parametrize("grid", list(_grids()), ids=lambda g: str(g.direction))
def test_box_projection_equals_full_grid_projection(grid):
    rng = np.random.default_rng(0)
    start = (3, 5, 2)
    box_size = (9, 7, 6)  # i, j, k
    box = (rng.random(box_size[::-1]) > 0.4).astype(np.uint8)  # k, j, i
    full = np.zeros(grid.size[::-1], np.uint8)
    full[start[2]:start[2] + 6, start[1]:start[1] + 7, start[0]:start[0] + 9] = box
    expected = project(full, grid)
    got = project_box(box, start, grid)
    assert got.shape == expected.shape
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint16, np.int8])
def test_windowed_ct_projection_is_the_sum_of_clipped_normalised_values_for_every_pixel_type(dtype):
    """overview.project with a HU window (integer CTs clipped and summed exactly in int32, others in float)
    equals sum over anterior-posterior of (clip(v, lo, hi) - lo) / (hi - lo), computed in float64."""
    from AtlasSegLib.geometry import Grid, reorient_array
    from AtlasSegLib.overview import project

    rng = np.random.default_rng(1)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    lo_v, hi_v = (max(-1024, info.min), min(1500, info.max)) if info else (-1024, 1500)
    ct = rng.integers(lo_v, hi_v, (37, 41, 43)).astype(dtype)
    grid = Grid((43, 41, 37), (0.8, 0.9, 2.0), (0.0, 0.0, 0.0), (-1.0, 0, 0, 0, 0, 1.0, 0, -1.0, 0))
    arr = reorient_array(ct, grid, "LAS").astype(np.float64)
    expected = ((np.clip(arr, -150, 250) + 150) / 400).sum(axis=1)
    got = project(ct, grid, window=(-150.0, 250.0))
    assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-4
