"""`atlasseg synthesize` / ``synthesize.insert_tumors``: synthetic tumors inserted into the real CT of
shared/ctdata (its TotalSegmentator liver, kidney and pancreas labels as organ masks) and into phantoms."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from AtlasSegLib import cli
from AtlasSegLib.errors import InputError
from AtlasSegLib.phantom import make_phantom
from AtlasSegLib.synthesize import insert_tumors, parse_range, recipe, size_class

# TotalSegmentator "total" ids in example_seg.nii.gz (ctdata/totalseg_labels_present.json).
LIVER, KIDNEY_RIGHT, KIDNEY_LEFT, PANCREAS = 5, 2, 3, 7


@pytest.fixture(scope="module")
def real():
    from testdata import ct_data_dir

    folder = ct_data_dir() / "totalseg_abdomen_sm"
    image = sitk.ReadImage(str(folder / "example_ct_sm.nii.gz"))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "example_seg.nii.gz")))
    return {"image": image, "ct": sitk.GetArrayFromImage(image), "labels": labels,
            "spacing": image.GetSpacing()[::-1], "folder": folder}


def _near(organ, spacing, mm):
    return ndimage.distance_transform_edt(~organ, sampling=spacing) <= mm


def test_only_voxels_in_or_near_the_liver_change_and_the_changed_box_holds_them(real):
    liver = real["labels"] == LIVER
    r = insert_tumors(real["ct"], liver, real["spacing"], count=3, diameter_mm=(10, 30), seed=4)
    changed = r.ct != real["ct"]
    assert changed.sum() > 100
    near_mm = recipe()["location"]["near_organ_mm"]
    assert not (changed & ~_near(liver, real["spacing"], near_mm)).any()
    assert not (r.mask & ~_near(liver, real["spacing"], near_mm)).any()
    inside = np.zeros_like(changed)
    inside[r.changed] = True
    assert changed.sum() == (changed & inside).sum()
    assert all((sl.stop - sl.start) < n for sl, n in zip(r.changed, changed.shape))  # a box, not the image


def test_requested_count_and_diameters_are_those_of_the_truth_components(real):
    liver = real["labels"] == LIVER
    r = insert_tumors(real["ct"], liver, real["spacing"], count=4, diameter_mm=(12, 24), seed=11)
    labelled, n = ndimage.label(r.mask)
    assert n == 4 == len(r.tumors)
    voxel_mm3 = float(np.prod(real["spacing"]))
    for t in r.tumors:
        assert 12 <= t["diameter_mm"] <= 24
        component = labelled == labelled[tuple(t["center_zyx"])]
        measured = 2 * (3 * component.sum() * voxel_mm3 / (4 * np.pi)) ** (1 / 3)
        # Volume-equivalent diameter of the truth on a 3 mm grid: within 20 % of the nominal diameter.
        assert measured == pytest.approx(t["diameter_mm"], rel=0.2)
        assert t["size_class"] == size_class(t["diameter_mm"])
        assert t["volume_ml"] == pytest.approx(component.sum() * voxel_mm3 / 1000, rel=1e-3)


def test_size_classes_follow_the_papers_radii():
    assert [size_class(d) for d in (6, 9.9, 10, 19.9, 20, 39.9, 40, 80)] == [
        "tiny", "tiny", "small", "small", "medium", "medium", "large", "large"]


def _shell(mask, organ, spacing, inner_mm, outer_mm):
    """The organ's voxels between inner_mm and outer_mm outside a tumor's truth."""
    distance = ndimage.distance_transform_edt(~mask, sampling=spacing)
    return organ & (distance > inner_mm) & (distance <= outer_mm)


@pytest.mark.parametrize("asked", [-50.0, 40.0])
def test_mean_hu_inside_the_tumor_differs_from_the_surrounding_liver_by_the_asked_contrast(real, asked):
    liver = real["labels"] == LIVER
    r = insert_tumors(real["ct"], liver, real["spacing"], count=2, diameter_mm=(24, 30), contrast_hu=asked, seed=2)
    labels, n = ndimage.label(r.mask)
    assert n == 2
    for t in r.tumors:
        own = labels == labels[tuple(t["center_zyx"])]
        # The reference is the liver around the tumor (before insertion), not the whole liver's mean.
        around = real["ct"][_shell(own, liver, real["spacing"], 0.0, 12.0)]
        assert t["reference_hu"] == pytest.approx(float(np.median(around)), abs=3)
        # The soft edge dilutes the contrast at the truth's rim; the core carries it fully.
        measured = r.ct[own].astype(float).mean() - t["reference_hu"]
        assert measured == pytest.approx(asked, rel=0.2)
        core = ndimage.binary_erosion(own)
        assert r.ct[core].astype(float).mean() - t["reference_hu"] == pytest.approx(asked, rel=0.12)
        assert t["contrast_hu"] == asked


def _two_halves_organ():
    """An organ whose two halves (along x) are 40 and 60 HU, with 10 HU of noise, in -100 HU surroundings."""
    rng = np.random.default_rng(0)
    ct = rng.normal(-100.0, 10.0, (40, 60, 120))
    organ = np.zeros(ct.shape, dtype=bool)
    organ[4:-4, 4:-4, 4:-4] = True
    ct[organ] = rng.normal(0.0, 10.0, int(organ.sum()))
    ct[:, :, :60][organ[:, :, :60]] += 40.0
    ct[:, :, 60:][organ[:, :, 60:]] += 60.0
    return np.rint(ct).astype(np.int16), organ


@pytest.mark.parametrize("half", ["darker", "brighter"])
def test_the_asked_contrast_holds_against_the_organ_tissue_around_the_tumor(half):
    # Against the whole organ's mean (50 HU) a -30 HU tumor would be only -20 HU below the darker half around it,
    # or -40 below the brighter one.
    spacing = (2.0, 2.0, 2.0)
    ct, organ = _two_halves_organ()
    centre = (20, 30, 30 if half == "darker" else 90)  # 60 mm from the halves' border: its 12 mm shell is all one half
    r = insert_tumors(ct, organ, spacing, centers_zyx=[centre], diameter_mm=20, contrast_hu=-30, seed=3)
    core = ndimage.binary_erosion(r.mask)
    # Measured on the output: the tumor's core against the organ 3-12 mm around it (past the soft edge).
    around = r.ct[_shell(r.mask, organ, spacing, 3.0, 12.0)]
    assert r.ct[core].mean() - np.median(around) == pytest.approx(-30, abs=4)
    assert r.tumors[0]["reference_hu"] == pytest.approx(40.0 if half == "darker" else 60.0, abs=2)


def test_too_few_organ_voxels_around_the_tumor_fall_back_to_the_organs_mean(monkeypatch):
    ct, organ = _two_halves_organ()
    monkeypatch.setitem(recipe()["reference"], "min_voxels", organ.size + 1)  # no shell can hold that many
    r = insert_tumors(ct, organ, (2.0, 2.0, 2.0), centers_zyx=[(20, 30, 30)], diameter_mm=20, contrast_hu=-30, seed=3)
    assert r.tumors[0]["reference_hu"] == pytest.approx(ct[ndimage.binary_erosion(organ)].mean(), abs=0.06)


def test_default_contrast_is_hypo_attenuating_within_the_organs_range(real):
    liver = real["labels"] == LIVER
    r = insert_tumors(real["ct"], liver, real["spacing"], count=2, seed=5)
    lo, hi = recipe()["organs"]["liver"]["contrast_hu"]
    for t in r.tumors:
        assert lo <= t["contrast_hu"] <= hi < 0
        assert t["mean_hu"] < t["reference_hu"]


def test_same_seed_gives_the_same_ct_and_another_seed_another(real):
    liver = real["labels"] == LIVER
    a = insert_tumors(real["ct"], liver, real["spacing"], count=2, seed=7)
    b = insert_tumors(real["ct"], liver, real["spacing"], count=2, seed=7)
    c = insert_tumors(real["ct"], liver, real["spacing"], count=2, seed=8)
    assert np.array_equal(a.ct, b.ct) and np.array_equal(a.mask, b.mask) and a.tumors == b.tumors
    assert not np.array_equal(a.ct, c.ct)


def test_tumors_avoid_bright_vessels_in_the_organ():
    # A liver-like block with a bright vessel (contrast-filled, +150 HU) through its middle: no tumor may cover it.
    ct = np.full((40, 60, 60), 60, np.int16)
    organ = np.zeros(ct.shape, bool)
    organ[4:36, 6:54, 6:54] = True
    ct[~organ] = -100
    ct[:, 28:32, 6:54] = 220
    vessel = np.zeros(ct.shape, bool)
    vessel[:, 28:32, 6:54] = True
    for seed in range(4):
        r = insert_tumors(ct, organ, (2.0, 2.0, 2.0), count=2, diameter_mm=(10, 14), seed=seed)
        assert not (r.mask & vessel).any()


def test_output_keeps_the_input_shape_and_dtype(real):
    liver = real["labels"] == LIVER
    for dtype in (np.int16, np.float32, np.uint16):
        ct = (real["ct"].astype(np.int32) + (1024 if dtype == np.uint16 else 0)).astype(dtype)
        r = insert_tumors(ct, liver, real["spacing"], count=1, diameter_mm=20, seed=1)
        assert r.ct.dtype == dtype and r.ct.shape == ct.shape and r.mask.dtype == bool
    assert np.array_equal(real["ct"], sitk.GetArrayFromImage(real["image"]))  # the input is not modified


def test_kidney_and_pancreas_tumors_lie_in_their_organ(real):
    for ids, name, diameter in (((KIDNEY_LEFT, KIDNEY_RIGHT), "kidney", (10, 18)), ((PANCREAS,), "pancreas", 8)):
        organ = np.isin(real["labels"], ids)
        r = insert_tumors(real["ct"], organ, real["spacing"], organ_name=name, count=1, diameter_mm=diameter, seed=3)
        fraction = (r.mask & organ).sum() / r.mask.sum()
        assert fraction >= recipe()["location"]["min_inside_fraction"] - 1e-9


def test_a_tumor_at_a_clicked_point_without_an_organ_mask_is_darker_than_the_local_tissue():
    phantom = make_phantom(seed=3, tumors=False, size=(96, 80, 48), spacing_mm=(4.0, 4.0, 5.0))
    ct = sitk.GetArrayFromImage(phantom.image)
    liver = sitk.GetArrayFromImage(phantom.labels["liver"]) > 0
    depth = ndimage.distance_transform_edt(liver, sampling=(5.0, 4.0, 4.0))
    point = tuple(int(v) for v in np.unravel_index(np.argmax(depth), depth.shape))
    r = insert_tumors(ct, None, (5.0, 4.0, 4.0), centers_zyx=[point], diameter_mm=20, contrast_hu=-40, seed=0)
    assert len(r.tumors) == 1 and r.tumors[0]["center_zyx"] == list(point) and r.mask[point]
    reference = r.tumors[0]["reference_hu"]  # the local soft tissue's mean: here the phantom's liver
    assert reference == pytest.approx(ct[ndimage.binary_erosion(liver)].mean(), abs=10)
    core = ndimage.binary_erosion(r.mask)
    assert r.ct[core].mean() - reference == pytest.approx(-40, abs=8)
    # On this coarse 4-5 mm grid the soft edge is a large share of the truth's voxels: it dilutes the mean.
    assert -40 <= r.ct[r.mask].mean() - reference <= -0.6 * 40
    # Without an organ only the tumor's own neighbourhood changes.
    changed = r.ct != ct
    assert not (changed & ~_near(r.mask, (5.0, 4.0, 4.0), 10.0)).any()


def test_phantom_liver_takes_the_requested_tumors():
    phantom = make_phantom(seed=5, tumors=False, size=(96, 80, 48), spacing_mm=(4.0, 4.0, 5.0))
    ct = sitk.GetArrayFromImage(phantom.image)
    liver = sitk.GetArrayFromImage(phantom.labels["liver"]) > 0
    r = insert_tumors(ct, liver, (5.0, 4.0, 4.0), count=3, diameter_mm=(15, 25), contrast_hu=-60, seed=1)
    assert ndimage.label(r.mask)[1] == 3
    assert (r.mask & liver).sum() >= 0.95 * r.mask.sum()


@pytest.mark.parametrize("kwargs, words", [
    (dict(organ="empty"), "absent"),
    (dict(organ="shape"), "grid"),
    (dict(organ_name="pancreas", diameter_mm=40), "too small"),
    (dict(diameter_mm=(30, 10)), "MIN <= MAX"),
    (dict(diameter_mm=1.0), "smaller than this CT's"),
    (dict(count=0), "count"),
    (dict(count=50, diameter_mm=30), "fewer tumors"),
    (dict(centers_zyx=[(0, 0, 0)]), "outside the liver"),
    (dict(centers_zyx=[(99, 0, 0)]), "outside the image"),
    (dict(organ_name="spleen"), "not supported"),
    (dict(organ=None), "organ mask is needed"),
])
def test_impossible_requests_are_refused_with_what_to_do(real, kwargs, words):
    organ_name = kwargs.get("organ_name", "liver")
    organ = real["labels"] == (PANCREAS if organ_name == "pancreas" else LIVER)
    which = kwargs.pop("organ", "ok")
    if which == "empty":
        organ = np.zeros_like(organ)
    elif which == "shape":
        organ = organ[:, :-1]
    elif which is None:
        organ = None
    with pytest.raises(InputError, match=words):
        insert_tumors(real["ct"], organ, real["spacing"], **kwargs)


def test_parse_range_reads_single_values_and_negative_ranges():
    assert parse_range("20", "--diameter") == (20.0, 20.0)
    assert parse_range("10-30", "--diameter") == (10.0, 30.0)
    assert parse_range("-60--20", "--contrast") == (-60.0, -20.0)
    assert parse_range("-40", "--contrast") == (-40.0, -40.0)
    with pytest.raises(InputError, match="MIN-MAX"):
        parse_range("big", "--diameter")


def test_cli_writes_ct_on_the_input_grid_truth_and_tumors_json(real, tmp_path, capsys):
    out = tmp_path / "synth"
    masks = tmp_path / "labels.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(real["folder"] / "example_seg.nii.gz")), str(masks))
    ct_path = real["folder"] / "example_ct_sm.nii.gz"
    code = cli.main(["synthesize", str(ct_path), "-o", str(out), "--organ", "liver", "--organ-mask", str(masks),
                     "--label", str(LIVER), "--count", "2", "--diameter", "12-20", "--contrast=-45", "--seed", "9"])
    assert code == 0
    assert "2 synthetic liver tumor(s)" in capsys.readouterr().out
    written = sitk.ReadImage(str(out / "ct.nii.gz"))
    truth = sitk.ReadImage(str(out / "segmentations" / "liver_tumor.nii.gz"))
    for image in (written, truth):
        assert image.GetSize() == real["image"].GetSize()
        assert np.allclose(image.GetSpacing(), real["image"].GetSpacing())
        assert np.allclose(image.GetOrigin(), real["image"].GetOrigin())
        assert np.allclose(image.GetDirection(), real["image"].GetDirection())
    assert written.GetPixelID() == real["image"].GetPixelID()
    info = json.loads((out / "tumors.json").read_text())
    assert info["count"] == 2 and [t["contrast_hu"] for t in info["tumors"]] == [-45.0, -45.0]
    again = insert_tumors(real["ct"], real["labels"] == LIVER, real["spacing"], count=2, diameter_mm=(12, 20),
                          contrast_hu=-45, seed=9)
    assert np.array_equal(sitk.GetArrayFromImage(written), again.ct)  # the CLI is the library, seeded alike
    assert np.array_equal(sitk.GetArrayFromImage(truth) > 0, again.mask)
    assert not list(tmp_path.glob(".synth*"))  # no staging folder left behind

    # An existing output folder is refused, and nothing in it changes.
    before = (out / "tumors.json").read_text()
    assert cli.main(["synthesize", str(ct_path), "-o", str(out), "--organ", "liver", "--organ-mask", str(masks),
                     "--label", str(LIVER)]) == 2
    assert (out / "tumors.json").read_text() == before


def test_cli_takes_both_kidneys_from_a_run_folder_and_refuses_an_organ_it_lacks(real, tmp_path, capsys):
    from testdata import make_run

    ct_path = real["folder"] / "example_ct_sm.nii.gz"
    run = make_run(tmp_path / "run", ct_path, {"kidney_left": (real["labels"] == KIDNEY_LEFT).astype(np.uint8),
                                               "kidney_right": (real["labels"] == KIDNEY_RIGHT).astype(np.uint8)})
    out = tmp_path / "out"
    assert cli.main(["synthesize", str(ct_path), "-o", str(out), "--organ", "kidney", "--run", str(run),
                     "--count", "2", "--diameter", "10-16", "--seed", "1", "--mass-effect", "2", "--capsule", "15"]) == 0
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "segmentations" / "kidney_tumor.nii.gz"))) > 0
    kidneys = np.isin(real["labels"], (KIDNEY_LEFT, KIDNEY_RIGHT))
    assert truth.any() and (truth & kidneys).sum() >= 0.95 * truth.sum()
    info = json.loads((out / "tumors.json").read_text())
    assert (info["organ"], info["mass_effect_mm"], info["capsule_hu"], info["count"]) == ("kidney", 2.0, 15.0, 2)

    # A run without the asked organ is refused with the masks it does have.
    assert cli.main(["synthesize", str(ct_path), "-o", str(tmp_path / "p"), "--organ", "pancreas", "--run",
                     str(run)]) == 2
    assert "has no pancreas mask (it has: kidney_left, kidney_right)" in capsys.readouterr().err


def test_cli_refuses_a_mask_off_the_ct_grid_an_absent_organ_and_no_mask(real, tmp_path, capsys):
    ct_path = real["folder"] / "example_ct_sm.nii.gz"
    shifted = sitk.ReadImage(str(real["folder"] / "example_seg.nii.gz"))
    shifted.SetOrigin(tuple(o + 5.0 for o in shifted.GetOrigin()))
    mask = tmp_path / "shifted.nii.gz"
    sitk.WriteImage(shifted, str(mask))
    assert cli.main(["synthesize", str(ct_path), "-o", str(tmp_path / "a"), "--organ", "liver",
                     "--organ-mask", str(mask), "--label", "5"]) == 2
    assert "not on the CT's grid" in capsys.readouterr().err
    assert cli.main(["synthesize", str(ct_path), "-o", str(tmp_path / "b"), "--organ", "pancreas",
                     "--organ-mask", str(real["folder"] / "example_seg.nii.gz"), "--label", "250"]) == 2
    assert "absent" in capsys.readouterr().err
    assert cli.main(["synthesize", str(ct_path), "-o", str(tmp_path / "c"), "--organ", "liver"]) == 2
    assert "--organ-mask" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_mass_effect_moves_tissue_around_the_tumor_but_only_near_the_organ(real):
    liver = real["labels"] == LIVER
    plain = insert_tumors(real["ct"], liver, real["spacing"], count=1, diameter_mm=24, seed=6)
    pushed = insert_tumors(real["ct"], liver, real["spacing"], count=1, diameter_mm=24, seed=6, mass_effect_mm=4)

    def changed_around(r):
        return int(((r.ct != real["ct"]) & ~ndimage.binary_dilation(r.mask, iterations=2)).sum())

    assert changed_around(pushed) > changed_around(plain) + 50
    near = _near(liver, real["spacing"], recipe()["location"]["near_organ_mm"])
    assert not ((pushed.ct != real["ct"]) & ~near).any()


def test_capsule_brightens_the_tumors_rim(real):
    liver = real["labels"] == LIVER
    plain = insert_tumors(real["ct"], liver, real["spacing"], count=1, diameter_mm=24, seed=6)
    capsule = insert_tumors(real["ct"], liver, real["spacing"], count=1, diameter_mm=24, seed=6, capsule_hu=40)
    assert np.array_equal(plain.mask, capsule.mask)  # same tumor, only its rim differs
    rim = plain.mask & ~ndimage.binary_erosion(plain.mask)
    gain = capsule.ct[rim].astype(float).mean() - plain.ct[rim].astype(float).mean()
    assert 10 < gain <= 40
    core = ndimage.binary_erosion(plain.mask, iterations=2)
    assert abs(capsule.ct[core].astype(float).mean() - plain.ct[core].astype(float).mean()) < 5


def test_a_phantom_with_synthetic_tumors_is_still_marked_a_phantom(tmp_path):
    # The demo model warns on anything but its phantoms; measuring it on synthetic tumors must not trigger that.
    from AtlasSegLib.plausibility import is_phantom
    from AtlasSegLib.synthesize import synthesize_file

    phantom = make_phantom(seed=5, tumors=False, size=(96, 80, 48), spacing_mm=(4.0, 4.0, 5.0))
    sitk.WriteImage(phantom.image, str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(phantom.labels["liver"], str(tmp_path / "liver.nii.gz"))
    info = synthesize_file(tmp_path / "ct.nii.gz", tmp_path / "out", organ_name="liver",
                           organ_mask=tmp_path / "liver.nii.gz", count=2, diameter_mm=(15, 25), seed=2)
    assert info["count"] == 2
    assert is_phantom(sitk.ReadImage(str(tmp_path / "out" / "ct.nii.gz")))


def test_a_multi_label_organ_mask_without_label_is_refused_naming_its_values(real, tmp_path, capsys):
    # A TotalSegmentator label map as --organ-mask without --label: every organ would count as the liver and a
    # "liver tumor" could land in the colon. The values are named so the user can pick one.
    ct_path = real["folder"] / "example_ct_sm.nii.gz"
    out = tmp_path / "synth"
    code = cli.main(["synthesize", str(ct_path), "-o", str(out), "--organ", "liver", "--organ-mask",
                     str(real["folder"] / "example_seg.nii.gz")])
    err = capsys.readouterr().err
    assert code == 2, err
    values = sorted(int(v) for v in np.unique(real["labels"]) if v)
    assert f"{len(values)} different non-zero values" in err and "--label" in err
    assert ", ".join(str(v) for v in values[:5]) in err
    assert not out.exists()
    # A plain 0/1 (or 0/255) mask needs no --label.
    binary = tmp_path / "liver.nii.gz"
    img = sitk.GetImageFromArray(((real["labels"] == LIVER) * 255).astype(np.uint8))
    img.CopyInformation(real["image"])
    sitk.WriteImage(img, str(binary))
    assert cli.main(["synthesize", str(ct_path), "-o", str(out), "--organ", "liver", "--organ-mask", str(binary),
                     "--diameter", "12"]) == 0
