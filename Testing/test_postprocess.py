"""Post-processing and measurements: units are mm³ and mm, checked against independent computations."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import SimpleITK as sitk

from AtlasSegLib.geometry import Grid
from AtlasSegLib.postprocess import (components, largest_component, largest_per_side, quantize, remove_small,
                                     threshold_level, tumor_mask)


def _grid(shape_kji, spacing=(1.0, 1.0, 1.0)):
    return Grid(tuple(shape_kji[::-1]), spacing, (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def test_min_component_size_is_mm3_not_voxels():
    mask = np.zeros((10, 20, 20), np.uint8)
    mask[1:3, 1:3, 1:3] = 1  # 8 voxels
    mask[5:8, 10:13, 10:13] = 1  # 27 voxels
    # 2 mm isotropic voxels: 8 mm³ each → 64 mm³ and 216 mm³.
    kept = remove_small(mask, voxel_mm3=8.0, min_mm3=100.0)
    assert kept[1:3, 1:3, 1:3].sum() == 0 and kept[5:8, 10:13, 10:13].sum() == 27
    # Boundary rule: kept if volume ≥ min.
    assert remove_small(mask, voxel_mm3=8.0, min_mm3=64.0).sum() == 35


def test_largest_component_uses_26_connectivity():
    mask = np.zeros((5, 5, 5), np.uint8)
    mask[1, 1, 1] = mask[2, 2, 2] = mask[3, 3, 3] = 1  # diagonal chain: one 26-connected component
    mask[0, 4, 4] = 1
    out = largest_component(mask)
    assert out.sum() == 3 and out[0, 4, 4] == 0


def test_paired_organ_keeps_the_largest_component_on_each_side():
    mask = np.zeros((10, 10, 40), np.uint8)
    mask[2:8, 2:8, 2:10] = 1  # left of midline (x < 20): large
    mask[2:4, 2:4, 12:14] = 1  # left, small false positive
    mask[2:7, 2:7, 28:36] = 1  # right side
    grid = _grid(mask.shape)
    out = largest_per_side(mask, grid, midline_lps_x=19.5)
    assert out[2:8, 2:8, 2:10].all() and out[2:7, 2:7, 28:36].all() and out[2:4, 2:4, 12:14].sum() == 0


def test_threshold_levels_keep_p_at_or_above_threshold():
    assert threshold_level(0.5) == 128
    q = quantize(np.array([0.499, 0.5, 0.502, 1.0, 0.0]))
    assert list(q >= threshold_level(0.5)) == [False, True, True, True, False]
    with pytest.raises(ValueError):
        threshold_level(1.0)


def test_tumor_mask_is_gated_and_dusted():
    q = np.zeros((10, 30, 30), np.uint8)
    q[2:6, 2:8, 2:8] = 200  # inside the gate
    q[2:6, 20:26, 20:26] = 200  # outside the gate
    q[8, 10, 10] = 250  # a single voxel, below min volume
    gate = np.zeros_like(q)
    gate[:, :15, :15] = 1
    m = tumor_mask(q, gate, threshold=0.5, voxel_mm3=1.0, min_mm3=10.0)
    assert m[2:6, 2:8, 2:8].all() and m[2:6, 20:26, 20:26].sum() == 0 and m[8, 10, 10] == 0
    # Lower threshold grows the region; higher shrinks it.
    q[2:6, 8, 2:8] = 100
    assert tumor_mask(q, gate, threshold=0.3, voxel_mm3=1.0, min_mm3=10.0).sum() > m.sum()


def test_component_diameters_of_a_disc_in_mm():
    # A 20 mm diameter cylinder, 5 slices, 0.5 mm pixels: longest axial diameter ≈ 20 mm (voxel edges), both axes.
    spacing = (0.5, 0.5, 2.0)
    yy, xx = np.mgrid[0:60, 0:60]
    disc = ((xx - 30) * 0.5) ** 2 + ((yy - 30) * 0.5) ** 2 <= 10.0 ** 2
    mask = np.zeros((7, 60, 60), np.uint8)
    mask[1:6] = disc
    grid = _grid(mask.shape, spacing)
    (comp,) = components(mask, grid, (0, 0, 0), q_box=mask * 255)
    assert abs(comp.longest_axial_diameter_mm - 20.5) < 1.0
    assert abs(comp.perpendicular_diameter_mm - 20.5) < 1.0
    assert abs(comp.volume_ml - mask.sum() * 0.5 / 1000) < 1e-9
    assert comp.max_probability == 1.0


def test_component_ellipse_long_and_short_axes():
    yy, xx = np.mgrid[0:80, 0:80]
    ell = ((xx - 40) / 30.0) ** 2 + ((yy - 40) / 10.0) ** 2 <= 1.0  # 60 × 20 voxels at 1 mm
    mask = np.zeros((3, 80, 80), np.uint8)
    mask[1] = ell
    (comp,) = components(mask, _grid(mask.shape), (0, 0, 0))
    assert 59 <= comp.longest_axial_diameter_mm <= 62
    assert 19 <= comp.perpendicular_diameter_mm <= 22


def test_components_are_ranked_by_volume_and_report_their_box():
    mask = np.zeros((10, 20, 20), np.uint8)
    mask[1:3, 1:3, 1:3] = 1
    mask[4:9, 10:15, 10:15] = 1
    comps = components(mask, _grid(mask.shape), (100, 200, 300))
    assert [c.voxels for c in comps] == [125, 8]
    assert comps[0].bbox_ijk == ((110, 210, 304), (115, 215, 309))
    labels, n = ndi.label(mask, structure=np.ones((3, 3, 3)))
    assert n == len(comps)


def test_fast_nearest_resampling_gives_itks_masks_on_flipped_permuted_and_respaced_grids():
    """pipeline.nearest_onto (per-axis index gathering) equals ITK's nearest-neighbour resampling voxel for voxel,
    on whole grids and boxes (also boxes reaching outside the model grid), for input directions with
    flips/permutations and model spacings with and without exact half-voxel ties (every other 1.5 mm slice on a
    3 mm grid; a model grid shifted by half a voxel), where ITK's rounding follows the last bit of its index."""
    from AtlasSegLib.geometry import Grid, oriented, resample, respaced
    from AtlasSegLib.pipeline import nearest_onto

    rng = np.random.default_rng(0)
    for case in range(60):
        perm, signs = rng.permutation(3), rng.choice([-1, 1], 3)
        direction = np.zeros((3, 3))
        direction[np.arange(3), perm] = signs
        spacings = [0.6, 0.7421875, 0.8, 0.977, 1.5, 2.5, 5.0] if case < 30 else [0.75, 1.5, 1.0]
        spacing = tuple(float(v) for v in rng.choice(spacings, 3))
        target = Grid(tuple(int(v) for v in rng.integers(20, 50, 3)), spacing,
                      tuple(float(v) for v in rng.uniform(-200, 200, 3)), tuple(direction.reshape(-1).tolist()))
        model = respaced(oriented(target, "RAS" if case % 2 else "LPS"),
                         tuple(float(v) for v in rng.choice([0.8, 1.5, 2.0, 3.0], 3)))
        if case >= 50:  # same spacing, voxel centres halfway between the target's: every voxel is a tie
            model = Grid(target.size, target.spacing, tuple(np.asarray(target.origin) + 0.5 * target.matrix.sum(1)),
                         target.direction)
        arr = rng.integers(1, 250, model.size).astype(np.uint8)
        box = target.sub(tuple(int(v) for v in rng.integers(-3, 10, 3)), tuple(int(v) for v in rng.integers(1, 20, 3)))
        for g in (target, box):
            ref = sitk.GetArrayFromImage(resample(model.image_from_ijk(arr), g, interpolator=sitk.sitkNearestNeighbor))
            got = nearest_onto(arr, model, g)
            assert got.shape == ref.shape and np.array_equal(got, ref), (case, spacing, model.spacing)


def test_tumor_gate_dilated_only_where_the_map_is_nonzero_gives_the_same_tumor_masks():
    """postprocess.dilated_gate (the organ union dilated only around the map's non-zero voxels) equals the
    whole-box dilation on every voxel a threshold can keep, so tumor masks and components are unchanged; a map
    with no probability gives an all-zero gate."""
    from AtlasSegLib.postprocess import dilate_mm, dilated_gate, tumor_labels

    rng = np.random.default_rng(3)
    spacing_kji = (2.5, 0.8, 0.8)
    organ = np.zeros((40, 90, 100), np.uint8)
    organ[10:30, 20:70, 30:80] = 1
    full = dilate_mm(organ, spacing_kji, 5.0)
    for trial in range(6):
        q = np.zeros(organ.shape, np.uint8)
        for _ in range(trial + 1):  # blobs inside, at the rim and outside the organ
            c = rng.integers([0, 0, 0], organ.shape)
            sl = tuple(slice(max(int(v) - 4, 0), int(v) + 4) for v in c)
            q[sl] = rng.integers(0, 256, q[sl].shape)
        gate = dilated_gate(organ, q, spacing_kji, 5.0)
        assert np.array_equal(gate[q > 0], full[q > 0])
        for threshold in (0.01, 0.3, 0.5):
            a = tumor_labels(q, gate, threshold=threshold, voxel_mm3=1.6, min_mm3=5.0)
            b = tumor_labels(q, full, threshold=threshold, voxel_mm3=1.6, min_mm3=5.0)
            assert np.array_equal(a.mask, b.mask) and len(a.parts) == len(b.parts)
    assert not dilated_gate(organ, np.zeros_like(organ), spacing_kji, 5.0).any()


def test_largest_component_chosen_on_the_model_grid_is_the_largest_on_the_input_grid():
    """pipeline.largest_on_model_grid picks, on the model grid, the component whose nearest-neighbour image is
    the largest on the input grid: the resampled result equals resampling everything and keeping the largest
    26-connected component on the input grid (cc3d), on flipped/permuted grids with uneven run lengths (0.8 mm
    onto 3 mm, 1.5 mm slice ties); where the input grid is coarser than the model grid it declines (None)."""
    import cc3d

    from AtlasSegLib.geometry import Grid, oriented, respaced
    from AtlasSegLib.pipeline import Segmenter

    rng = np.random.default_rng(5)
    declined = chosen = 0
    for case in range(40):
        perm, signs = rng.permutation(3), rng.choice([-1, 1], 3)
        direction = np.zeros((3, 3))
        direction[np.arange(3), perm] = signs
        spacing = tuple(float(v) for v in rng.choice([0.7, 0.8, 1.5, 5.0] if case % 4 == 3 else [0.7, 0.8, 1.5], 3))
        target = Grid(tuple(int(v) for v in rng.integers(30, 70, 3)), spacing,
                      tuple(float(v) for v in rng.uniform(-100, 100, 3)), tuple(direction.reshape(-1).tolist()))
        model = respaced(oriented(target, "RAS"), tuple(float(v) for v in rng.choice([1.5, 2.2, 3.0], 3)))
        # Several blobs of similar size: which is largest depends on the input grid's run lengths.
        arr = np.zeros(model.size, np.uint8)
        for _ in range(4):
            c = [int(rng.integers(2, n - 2)) for n in model.size]
            r = [int(rng.integers(1, 4)) for _ in range(3)]
            arr[tuple(slice(max(ci - ri, 0), ci + ri) for ci, ri in zip(c, r))] = 1
        box, mask, done = Segmenter._to_input_grid(arr, model, target, largest=True)
        _, everything, _ = Segmenter._to_input_grid(arr, model, target)
        expected = cc3d.largest_k(everything, k=1, connectivity=26).astype(np.uint8)
        if done:
            chosen += 1
            assert np.array_equal(mask, expected), case
        else:
            declined += 1
            assert np.array_equal(mask, everything)  # left to the caller
            assert any(s > min(model.spacing) for s in target.spacing)
    assert chosen >= 25 and declined >= 3, (chosen, declined)
