"""One-click add of a missed lesion and the per-lesion resize (``AtlasSegLib.addlesion``), on the real CT of
../shared/ctdata (a synthetic tumor inserted into its liver, truth known) and on small phantoms whose answer is
known by construction; RAS clicks against SimpleITK's own index conversion."""
from __future__ import annotations

import json

import cc3d
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from AtlasSegLib.addlesion import (ORIGIN_IMAGE, ORIGIN_PROBABILITY, add_lesion, parse_point, ras_to_ijk,
                                   resize_lesion, voxel_to_ijk)
from AtlasSegLib.errors import InputError
from AtlasSegLib.geometry import Grid
from AtlasSegLib.masks import dice
from AtlasSegLib.postprocess import dilate_mm
from AtlasSegLib.synthesize import insert_tumors


def _liver_label(ctdata) -> int:
    present = json.loads((ctdata / "totalseg_labels_present.json").read_text())
    key = next(k for k in present if k.startswith("totalseg_abdomen_sm"))
    return next(int(i) for i, v in present[key].items() if v["name"] == "liver")


def _real_ct_and_liver(ctdata):
    """The real 3 mm CT (k, j, i), its reference liver mask and its (k, j, i) spacing."""
    src = ctdata / "totalseg_abdomen_sm"
    image = sitk.ReadImage(str(src / "example_ct_sm.nii.gz"))
    liver = sitk.GetArrayFromImage(sitk.ReadImage(str(src / "example_seg.nii.gz"))) == _liver_label(ctdata)
    return sitk.GetArrayFromImage(image), liver, np.asarray(image.GetSpacing()[::-1])


@pytest.fixture(scope="module")
def real_tumor(ctdata):
    """The real 3 mm CT with one 25 mm, -50 HU synthetic tumor in its liver; the liver dilated 5 mm as the gate."""
    ct, liver, spacing = _real_ct_and_liver(ctdata)
    r = insert_tumors(ct, liver, spacing, count=1, diameter_mm=25, contrast_hu=-50, seed=3)
    centre = tuple(r.tumors[0]["center_zyx"])
    return {"ct": r.ct, "truth": r.mask, "centre": centre, "spacing": spacing,
            "gate": dilate_mm(liver.astype(np.uint8), spacing, 5.0), "liver": liver}


def _full(added, shape) -> np.ndarray:
    out = np.zeros(shape, bool)
    added.paste(out, True)
    return out


def test_an_add_on_a_blank_probability_map_grows_the_tumor_from_the_ct(real_tumor):
    t = real_tumor
    blank = np.zeros(t["ct"].shape, np.uint8)
    added = add_lesion(t["ct"], t["spacing"], blank, np.zeros(t["ct"].shape, np.uint8), t["centre"], gate=t["gate"])
    assert added.action == "added" and added.origin == ORIGIN_IMAGE and added.threshold is None
    assert dice(_full(added, t["ct"].shape), t["truth"]) >= 0.75


def test_an_add_without_any_probability_map_uses_the_image_path_too(real_tumor):
    t = real_tumor
    added = add_lesion(t["ct"], t["spacing"], None, np.zeros(t["ct"].shape, np.uint8), t["centre"], gate=t["gate"])
    assert added.origin == ORIGIN_IMAGE and dice(_full(added, t["ct"].shape), t["truth"]) >= 0.75


def test_a_speck_of_probability_in_a_visible_tumor_gives_way_to_the_image_path(real_tumor):
    # The model gave a high but tiny peak (a few voxels) inside a 25 mm tumor: it did not see the lesion's extent.
    t = real_tumor
    q = np.zeros(t["ct"].shape, np.uint8)
    k, j, i = t["centre"]
    q[k, j - 1:j + 1, i - 1:i + 1] = 230
    added = add_lesion(t["ct"], t["spacing"], q, np.zeros(t["ct"].shape, np.uint8), t["centre"], gate=t["gate"])
    assert added.origin == ORIGIN_IMAGE and dice(_full(added, t["ct"].shape), t["truth"]) >= 0.75


def test_a_probability_blob_the_size_of_the_tumor_takes_the_model_path_on_the_real_ct(real_tumor):
    t = real_tumor
    q = (t["truth"] * 200).astype(np.uint8)  # the model saw exactly the tumor, at 0.78
    added = add_lesion(t["ct"], t["spacing"], q, np.zeros(t["ct"].shape, np.uint8), t["centre"], gate=t["gate"])
    assert added.origin == ORIGIN_PROBABILITY and np.array_equal(_full(added, t["ct"].shape), t["truth"])


def test_the_image_path_stays_inside_the_gate(real_tumor):
    t = real_tumor
    # A gate that cuts the tumor in half along z: nothing may be added beyond it.
    gate = t["gate"].copy()
    gate[t["centre"][0] + 1:] = 0
    added = add_lesion(t["ct"], t["spacing"], None, np.zeros(t["ct"].shape, np.uint8), t["centre"], gate=gate)
    full = _full(added, t["ct"].shape)
    assert full.any() and not (full & ~gate.astype(bool)).any()


def test_a_click_outside_the_gate_adds_nothing_and_says_why(real_tumor):
    t = real_tumor
    outside = tuple(int(v) for v in np.argwhere(t["gate"] == 0)[0])
    added = add_lesion(t["ct"], t["spacing"], None, np.zeros(t["ct"].shape, np.uint8), outside, gate=t["gate"])
    assert added.action == "none" and "gate" in added.reason and added.mask is None


def test_an_add_inside_an_existing_candidate_selects_it_and_changes_nothing(real_tumor):
    t = real_tumor
    labels = np.zeros(t["ct"].shape, np.uint8)
    labels[t["truth"]] = 7
    before = labels.copy()
    added = add_lesion(t["ct"], t["spacing"], None, labels, t["centre"], gate=t["gate"])
    assert added.action == "select" and added.label == 7 and added.mask is None
    assert np.array_equal(labels, before)


def test_an_added_lesion_never_takes_or_touches_a_neighbouring_candidate(real_tumor):
    t = real_tumor
    # An existing candidate covering the tumor's far half (z above the centre): the add takes the rest only, and
    # keeps a voxel's gap so the two stay separate components.
    labels = np.zeros(t["ct"].shape, np.uint8)
    half = t["truth"].copy()
    half[: t["centre"][0] + 2] = False
    labels[half] = 3
    added = add_lesion(t["ct"], t["spacing"], None, labels, t["centre"], gate=t["gate"])
    full = _full(added, t["ct"].shape)
    assert added.action == "added" and full.any()
    assert not (full & (labels != 0)).any()
    merged = cc3d.connected_components((labels != 0) | full, connectivity=26)
    assert len(np.unique(merged[full])) == 1 and merged[full][0] != merged[half][0]


def _blob(shape, centre, sigma_vox, peak) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    d2 = sum((g - c) ** 2 for g, c in zip(grid, centre))
    return peak * np.exp(-d2 / (2.0 * sigma_vox ** 2))


def test_where_the_model_saw_the_tumor_the_add_is_its_half_maximum_region():
    shape = (40, 60, 60)
    p = _blob(shape, (20, 30, 30), 4.0, 0.4)  # a tumor the model saw at 0.4, under a 0.5 threshold: missed
    q = np.rint(p * 255).astype(np.uint8)
    ct = np.full(shape, 60, np.int16)
    ct[_blob(shape, (20, 30, 30), 4.0, 1.0) > 0.5] = 20  # the tumor in the CT too, of the blob's size
    added = add_lesion(ct, (2.0, 1.0, 1.0), q, np.zeros(shape, np.uint8), (20, 31, 29))
    assert added.action == "added" and added.origin == ORIGIN_PROBABILITY
    assert added.threshold == pytest.approx(0.2, abs=0.01)
    expected = cc3d.connected_components(q >= np.ceil(added.threshold * 255 - 1e-6)) == 1
    assert np.array_equal(_full(added, shape), expected)


def test_a_probability_region_larger_than_a_lesion_is_tightened_to_a_plausible_size():
    shape = (60, 200, 200)
    # A broad plateau (0.3 everywhere, wider than 80 mm) with a small 0.6 peak: the half maximum (0.3) would be the
    # whole plateau; the threshold rises until the region fits the window.
    p = np.full(shape, 0.3) + _blob(shape, (30, 100, 100), 3.0, 0.3)
    q = np.rint(p * 255).astype(np.uint8)
    added = add_lesion(np.zeros(shape, np.int16), (1.0, 1.0, 1.0), q, np.zeros(shape, np.uint8), (30, 100, 100))
    assert added.origin == ORIGIN_PROBABILITY and added.threshold > 0.3
    assert max(added.mask.shape) <= 81


def _two_lesions():
    shape = (30, 80, 80)
    p = np.maximum(_blob(shape, (15, 40, 28), 4.0, 0.9), _blob(shape, (15, 40, 52), 4.0, 0.9))
    q = np.rint(p * 255).astype(np.uint8)
    labels = cc3d.connected_components(q >= 128, connectivity=26).astype(np.uint8)
    assert labels.max() == 2
    return q, labels


def test_a_resize_grows_one_lesion_but_never_changes_another_lesions_voxels():
    q, labels = _two_lesions()
    other = labels == 2
    # At 0.05 the two blobs join in the probability map: the lesion may grow, never into lesion 2 or next to it.
    res = resize_lesion(q, labels, 1, 0.05)
    out = labels.copy()
    res.apply(out)
    assert np.array_equal(out == 2, other)
    assert (out == 1).sum() > (labels == 1).sum()
    merged = cc3d.connected_components(out != 0, connectivity=26)
    assert merged[out == 1].min() == merged[out == 1].max() != merged[other].min()


def test_a_resize_shrinks_a_lesion_and_back_gives_its_first_voxels():
    q, labels = _two_lesions()
    small = labels.copy()
    resize_lesion(q, labels, 1, 0.8).apply(small)
    assert 0 < (small == 1).sum() < (labels == 1).sum() and np.array_equal(small == 2, labels == 2)
    back = small.copy()
    resize_lesion(q, small, 1, 128 / 255.0).apply(back)
    assert np.array_equal(back, labels)


def test_a_resize_given_the_lesions_bounds_gives_the_same_mask_as_without():
    q, labels = _two_lesions()
    bounds = ndimage.find_objects(labels)[0]
    for thr in (0.05, 0.3, 0.8):
        a, b = resize_lesion(q, labels, 1, thr), resize_lesion(q, labels, 1, thr, bounds=bounds)
        assert a.offset_kji == b.offset_kji and np.array_equal(a.mask, b.mask)
        out = labels.copy()
        a.apply(out)
        assert a.bounds == ndimage.find_objects((out == 1).astype(np.uint8))[0]


def test_a_resize_above_every_probability_of_the_lesion_empties_it():
    q, labels = _two_lesions()
    res = resize_lesion(q, labels, 2, 0.99)
    assert res.voxels == 0 and res.changed_voxels == (labels == 2).sum()


def test_resize_refuses_a_threshold_that_is_not_a_probability_and_a_missing_lesion():
    q, labels = _two_lesions()
    with pytest.raises(InputError, match="probability"):
        resize_lesion(q, labels, 1, 1.5)
    with pytest.raises(InputError, match="no lesion 9"):
        resize_lesion(q, labels, 9, 0.5)


@pytest.mark.parametrize("direction", [
    (1, 0, 0, 0, 1, 0, 0, 0, 1),
    (-1, 0, 0, 0, -1, 0, 0, 0, 1),  # flipped (as Slicer's RAS-stored volumes come in)
    (1, 0, 0, 0, -1, 0, 0, 0, 1),  # the y-flipped labels of the DICOM test data
])
def test_ras_clicks_land_on_the_voxel_simpleitk_finds_for_the_lps_point(direction):
    _check_ras(direction)


def test_ras_clicks_on_an_oblique_flipped_grid_land_on_simpleitks_voxel():
    rot = sitk.VersorTransform((0.2, -0.3, 0.1), 0.4).GetMatrix()
    m = np.asarray(rot).reshape(3, 3) @ np.diag([1, -1, -1])
    _check_ras(tuple(m.ravel()))


def _check_ras(direction):
    image = sitk.Image(64, 48, 30, sitk.sitkUInt8)
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((-120.0, 35.5, -410.0))
    image.SetDirection(direction)
    grid = Grid.of(image)
    rng = np.random.default_rng(0)
    for ijk in rng.integers(0, [64, 48, 30], size=(50, 3)):
        lps = np.asarray(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in ijk + rng.uniform(-0.4, 0.4, 3)]))
        ras = (-lps[0], -lps[1], lps[2])
        assert ras_to_ijk(ras, grid) == tuple(image.TransformPhysicalPointToIndex(tuple(lps)))


def test_ras_outside_the_image_and_bad_points_are_refused_with_what_to_do():
    grid = Grid((10, 10, 10), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    with pytest.raises(InputError, match="outside the image"):
        ras_to_ijk((500.0, 0.0, 0.0), grid)
    with pytest.raises(InputError, match="three numbers"):
        parse_point("1,2")
    with pytest.raises(InputError, match="whole voxel"):
        voxel_to_ijk("1.5,2,3", grid)
    with pytest.raises(InputError, match="outside the image"):
        voxel_to_ijk("1,2,30", grid)
    assert parse_point("-1.5, 2 3") == (-1.5, 2.0, 3.0) and voxel_to_ijk("1,2,3", grid) == (1, 2, 3)


def test_a_low_contrast_tumor_at_the_livers_edge_does_not_leak_along_the_dilated_gate(ctdata):
    # The quality bench's worst click before the image path took the organ's mode and opened its region: tumor 1 of
    # seed 1 (25 mm, asked -22 HU, only ~7 HU below the liver around it) leaked along the 5 mm rim of the gate, where
    # the liver's partial-volume edge has the tumor's attenuation (Dice 0.38).
    ct, liver, spacing = _real_ct_and_liver(ctdata)
    r = insert_tumors(ct, liver, spacing, count=4, diameter_mm=(10, 40), contrast_hu=(-60, -20), seed=1)
    t = r.tumors[0]
    assert round(t["diameter_mm"]) == 25 and round(t["contrast_hu"]) == -22  # the bench's case
    centre = tuple(t["center_zyx"])
    truth = cc3d.connected_components(r.mask, connectivity=26)
    truth = truth == truth[centre]
    gate = dilate_mm(liver.astype(np.uint8), spacing, 5.0)
    added = add_lesion(r.ct, spacing, None, np.zeros(ct.shape, np.uint8), centre, gate=gate)
    assert added.origin == ORIGIN_IMAGE
    assert dice(_full(added, ct.shape), truth) >= 0.6
    assert added.voxels < 1.5 * truth.sum()  # no leak


def test_the_image_path_cuts_a_thin_leak_into_a_vessel_of_the_lesions_attenuation():
    # A 20 mm lesion at 20 HU in an organ at 60 HU, joined by a 5 mm tube of the same 20 HU to a long vessel: a
    # threshold region takes the vessel too; the opening by a ball of 0.6 of the lesion's own radius cuts it at the
    # tube.
    rng = np.random.default_rng(0)
    shape, spacing = (60, 120, 120), np.array([1.0, 1.0, 1.0])
    ct = rng.normal(60.0, 8.0, shape).astype(np.float32)
    kk, jj, ii = np.ogrid[:60, :120, :120]
    lesion = (kk - 30) ** 2 + (jj - 60) ** 2 + (ii - 40) ** 2 <= 10 ** 2
    tube = ((kk - 30) ** 2 + (jj - 60) ** 2 <= 2.5 ** 2) & (ii >= 40) & (ii <= 70)
    vessel = ((kk - 30) ** 2 + (ii - 72) ** 2 <= 3 ** 2) & np.ones((1, 120, 1), bool)
    ct[lesion | tube | vessel] = rng.normal(20.0, 8.0, int((lesion | tube | vessel).sum()))
    added = add_lesion(ct, spacing, None, np.zeros(shape, np.uint8), (30, 60, 40))
    got = _full(added, shape)
    assert added.origin == ORIGIN_IMAGE
    assert dice(got, lesion) >= 0.85
    assert not (got & vessel).any()
