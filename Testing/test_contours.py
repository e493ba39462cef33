"""The mask <-> polygon unit under RTSTRUCT (``AtlasSegLib.export.contours``), on small hand-made slices: what a
planning system gets back from the contours must be the mask, voxel for voxel, whichever way it fills them.

Fill rules a reader may apply to the contours of one slice: even-odd over all of them together
(``fill_polygons(rings)``), or OR of each contour filled on its own (plastimatch's default, several planning
systems). Keyhole contours must give the mask both ways; separate inner contours only with even-odd."""
from __future__ import annotations

import numpy as np
import pytest

from AtlasSegLib.export.contours import HOLES, fill_polygons, mask_contours


def or_fill(rings, shape) -> np.ndarray:
    """What a reader that ORs the contours of a slice draws: each polygon filled alone, then united."""
    out = np.zeros(shape, bool)
    for ring in rings:
        out |= fill_polygons([ring], shape)
    return out


def ring_with_hole() -> np.ndarray:
    mask = np.zeros((9, 10), bool)
    mask[1:8, 2:9] = True
    mask[3:6, 4:7] = False  # a 3x3 hole, like the vertebral canal in a vertebra
    return mask


@pytest.mark.parametrize("holes", HOLES)
def test_a_mask_with_a_hole_comes_back_voxel_for_voxel_with_even_odd(holes):
    mask = ring_with_hole()
    assert np.array_equal(fill_polygons(mask_contours(mask, holes), mask.shape), mask)


def test_keyhole_joins_the_hole_into_one_polygon_that_an_or_reader_fills_right():
    mask = ring_with_hole()
    rings = mask_contours(mask, "keyhole")
    assert len(rings) == 1  # the hole is part of the outline (a zero-width cut), not a contour of its own
    assert np.array_equal(or_fill(rings, mask.shape), mask)


def test_separate_holes_are_inner_contours_that_an_or_reader_fills_in():
    # Why keyholes are the default: ORing an outer and an inner contour paints the hole.
    mask = ring_with_hole()
    rings = mask_contours(mask, "separate")
    assert len(rings) == 2
    filled = or_fill(rings, mask.shape)
    assert filled[3:6, 4:7].all() and not np.array_equal(filled, mask)


@pytest.mark.parametrize("where", [(4, 5), (0, 0), (8, 9)], ids=["middle", "first-corner", "last-corner"])
def test_a_one_voxel_structure_is_one_small_polygon_around_that_voxel(where):
    mask = np.zeros((9, 10), bool)
    mask[where] = True
    rings = mask_contours(mask, "keyhole")
    assert len(rings) == 1 and len(rings[0]) == 4  # a diamond through the four pixel-edge midpoints
    j, i = where
    assert np.allclose(rings[0].mean(axis=0), (i, j))  # centred on the voxel, in (i, j) order
    assert np.array_equal(fill_polygons(rings, mask.shape), mask)


def test_holes_above_each_other_are_cut_through_to_the_outline_together():
    # The lower hole's cut runs up into the upper hole, which then travels on to the outline with it.
    mask = np.zeros((12, 9), bool)
    mask[1:11, 1:8] = True
    mask[2:4, 3:6] = False
    mask[6:9, 3:6] = False
    rings = mask_contours(mask, "keyhole")
    assert len(rings) == 1
    assert np.array_equal(fill_polygons(rings, mask.shape), mask)
    assert np.array_equal(or_fill(rings, mask.shape), mask)


def test_holes_side_by_side_and_an_island_inside_a_hole_keep_their_parts():
    mask = np.zeros((13, 16), bool)
    mask[1:12, 1:15] = True
    mask[3:10, 3:8] = False  # a hole with an island in it...
    mask[5:8, 5:6] = True
    mask[3:6, 10:13] = False  # ...and a second hole beside it
    rings = mask_contours(mask, "keyhole")
    assert len(rings) == 2  # the outline with both holes joined in; the island on its own
    assert np.array_equal(fill_polygons(rings, mask.shape), mask)
    assert np.array_equal(or_fill(rings, mask.shape), mask)


def test_random_masks_round_trip_with_either_hole_form_and_either_fill_rule():
    # Speckle at ~50 % fill: many holes, islands in holes and pixels meeting only at a corner.
    rng = np.random.default_rng(23)
    for _ in range(200):
        mask = rng.random((12, 14)) < 0.5
        keyhole = mask_contours(mask, "keyhole")
        assert np.array_equal(fill_polygons(keyhole, mask.shape), mask)
        assert np.array_equal(or_fill(keyhole, mask.shape), mask)
        assert np.array_equal(fill_polygons(mask_contours(mask, "separate"), mask.shape), mask)


def test_straight_runs_are_kept_as_their_two_ends():
    # Marching squares puts a vertex on every pixel edge; a 1x20 bar needs 4 corners plus its 2 rounded ends.
    mask = np.zeros((3, 22), bool)
    mask[1, 1:21] = True
    (ring,) = mask_contours(mask)
    assert len(ring) <= 6


def test_an_empty_slice_has_no_contours():
    assert mask_contours(np.zeros((5, 5), bool)) == []
    assert not fill_polygons([], (5, 5)).any()


def test_fill_polygons_takes_pixel_centres_and_applies_even_odd_to_overlaps():
    square = np.array([[0.5, 0.5], [3.5, 0.5], [3.5, 2.5], [0.5, 2.5]])  # (i, j): columns 1-3, rows 1-2
    expected = np.zeros((5, 6), bool)
    expected[1:3, 1:4] = True
    assert np.array_equal(fill_polygons([square], (5, 6)), expected)
    shifted = square + [1.0, 0.0]  # overlaps columns 2-3: counted twice, so outside (even-odd)
    xor = fill_polygons([square, shifted], (5, 6))
    assert xor[1:3, [1, 4]].all() and not xor[1:3, 2:4].any()
    # A polygon reaching past the slice is clipped to it, not wrapped around.
    beyond = np.array([[-3.5, -3.5], [1.5, -3.5], [1.5, 1.5], [-3.5, 1.5]])
    clipped = np.zeros((5, 6), bool)
    clipped[0:2, 0:2] = True
    assert np.array_equal(fill_polygons([beyond], (5, 6)), clipped)
