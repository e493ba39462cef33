"""Plausibility flags: coverage decided from the real CTs, organ checks on synthetic masks with known faults."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from AtlasSegLib.geometry import Grid
from AtlasSegLib.io import read_image
from AtlasSegLib.phantom import make_phantom
from AtlasSegLib.plausibility import TABLE_PATH, body_profile, check_coverage, check_structures, reference_table

# ------------------------------------------------------------------------------------------------ coverage


@pytest.mark.parametrize("case", ["totalseg_abdomen_sm/example_ct_sm.nii.gz", "totalseg_dicom_upper_abdomen/example_ct_dicom"])
def test_real_abdomen_ct_has_no_coverage_warning(ctdata, case):
    image, _ = read_image(ctdata / case)
    assert check_coverage(image) == []


@pytest.mark.parametrize("case", ["ibsi_sts008_sarcoma_tumor/CT/image", "ibsi_sts008_sarcoma_tumor/nifti/CT_image.nii.gz"])
def test_thigh_ct_gets_a_coverage_warning(ctdata, case):
    image, _ = read_image(ctdata / case)
    warnings = check_coverage(image)
    assert len(warnings) == 1 and "no slice shows a trunk-sized body cross-section" in warnings[0], warnings


def test_three_slice_series_gets_a_coverage_warning(ctdata):
    image, _ = read_image(ctdata / "dcmqi_ct3slice" / "ct-3slice")
    warnings = check_coverage(image)
    assert len(warnings) == 1 and "3 slices" in warnings[0], warnings


def test_coverage_does_not_depend_on_the_array_layout(ctdata):
    """The thigh stored with its axes permuted and flipped is still a thigh; the abdomen is still an abdomen."""
    for case, flagged in (("ibsi_sts008_sarcoma_tumor/nifti/CT_image.nii.gz", True),
                          ("totalseg_abdomen_sm/example_ct_sm.nii.gz", False)):
        image, _ = read_image(ctdata / case)
        permuted = sitk.PermuteAxes(sitk.Flip(image, [True, False, True]), [2, 0, 1])
        assert bool(check_coverage(permuted)) is flagged, case


def test_a_head_sized_cross_section_is_flagged_and_the_phantom_abdomen_is_not():
    phantom = make_phantom(5, tumors=False).image
    assert check_coverage(phantom) == []
    # A 150 mm wide, 190 mm long ellipse of soft tissue with a bone rim, 120 mm tall: head-like.
    k, j, i = np.mgrid[0:60, 0:120, 0:120]
    r = ((i - 60) / 37.5) ** 2 + ((j - 60) / 47.5) ** 2
    ct = np.full((60, 120, 120), -1000, np.int16)
    ct[r <= 1.0] = 800
    ct[r <= 0.85] = 35
    head = sitk.GetImageFromArray(ct)
    head.SetSpacing((2.0, 2.0, 2.0))
    warnings = check_coverage(head)
    assert len(warnings) == 1 and "widest 150 mm" in warnings[0], warnings


def adult_head_in_a_holder(seed: int = 0) -> sitk.Image:
    """An adult head as a head CT shows it, 1 x 1 x 2.5 mm: scalp, a 7 mm skull, brain (35 HU), and the curved
    head holder it lies in. With the holder it is 195 mm wide and about 300 cm2: trunk-sized by width and area
    alone (a real head CT measured 189-197 mm and 267-289 cm2 and passed the old test)."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = 40, 260, 240
    k, j, i = np.mgrid[0:nz, 0:ny, 0:nx].astype(np.float32)
    x, y = i - nx / 2, j - ny / 2 + 5
    a, b = 93.0, 113.0  # semi-axes (mm): 186 x 226 mm head
    r = np.sqrt((x / a) ** 2 + (y / b) ** 2)
    ct = np.full((nz, ny, nx), -1000.0, np.float32)
    ct[r <= 1.0] = 40  # scalp
    ct[r <= 1 - 5 / a] = 1300  # skull
    ct[r <= 1 - 12 / a] = 35  # brain
    ct += rng.normal(0, 8, ct.shape)
    holder = np.sqrt((x / (a + 6)) ** 2 + (y / (b + 6)) ** 2)
    ct[(holder > 1.0) & (holder < 1.0 + 6 / a) & (y > 0.3 * b)] = 150  # the cradle behind the head
    image = sitk.GetImageFromArray(ct.astype(np.int16))
    image.SetSpacing((1.0, 1.0, 2.5))
    return image


def test_a_head_ct_in_its_holder_is_not_taken_for_an_abdomen(ctdata):
    head = adult_head_in_a_holder()
    profile = body_profile(head)
    assert profile.width_mm.min() >= 180 and profile.area_cm2.min() >= 250  # trunk-sized by the old test alone
    warnings = check_coverage(head)
    assert len(warnings) == 1 and warnings[0].startswith("coverage: ") and "head" in warnings[0], warnings
    assert "skull" in warnings[0] and "fat" in warnings[0] and "meaningless" in warnings[0]
    # The cues that tell it apart leave every real abdomen and the phantoms alone.
    for case in ("totalseg_abdomen_sm/example_ct_sm.nii.gz", "totalseg_dicom_upper_abdomen/example_ct_dicom"):
        image, _ = read_image(ctdata / case)
        assert check_coverage(image) == [], case
        assert body_profile(image).trunk().all(), case
    for seed in (0, 5, 9):
        assert check_coverage(make_phantom(seed, tumors=False).image) == [], seed


def test_one_cue_alone_does_not_make_a_head():
    """A fat-free trunk-sized body without a bone ring (or a ring in a fatty body) is not called a head."""
    head = sitk.GetArrayFromImage(adult_head_in_a_holder())
    no_skull = head.copy()
    no_skull[no_skull > 1000] = 40
    fatty = head.copy()
    fatty[(fatty > 20) & (fatty < 60)] = -100  # the brain as fat: the skull ring remains
    for array in (no_skull, fatty):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((1.0, 1.0, 2.5))
        assert check_coverage(image) == []


def test_every_slice_of_the_abdomen_shows_a_trunk_and_the_midline_is_near_the_spine(ctdata):
    image, _ = read_image(ctdata / "totalseg_dicom_upper_abdomen" / "example_ct_dicom")
    profile = body_profile(image)
    assert profile.width_mm.size == image.GetSize()[2]
    assert profile.trunk().all()
    assert profile.width_mm.min() >= 250  # (arms lying against the body may widen a slice)
    # The vertebral body's centre (the spine is the midline) from TotalSegmentator's T12 label, by position.
    seg = sitk.ReadImage(str(ctdata / "totalseg_dicom_upper_abdomen" / "example_seg_dicom.nii.gz"))
    labels = sitk.GetArrayFromImage(sitk.Resample(seg, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    t12 = json.loads((ctdata / "totalseg_labels_present.json").read_text())
    value = next(int(v) for v, info in t12["totalseg_dicom_upper_abdomen/example_seg_dicom.nii.gz"].items()
                 if info["name"] == "vertebrae_T12")
    ijk = np.argwhere(labels == value).mean(0)[::-1]
    spine_x = Grid.of(image).index_to_physical(ijk)[0]
    assert abs(profile.midline_x_mm - spine_x) < 20, (profile.midline_x_mm, spine_x)


# ------------------------------------------------------------------------------------------------ structures
SPACING = (4.0, 4.0, 4.0)
SIZE = (100, 80, 60)  # i (patient's left), j (posterior), k (superior): 400 x 320 x 240 mm


def synthetic_ct():
    """LPS-aligned soft-tissue body (40 HU) with a fat region (-100 HU) on the patient's right."""
    ct = np.full(SIZE[::-1], -1000, np.int16)
    ct[:, 10:70, 10:90] = 40
    ct[:, 50:65, 15:30] = -100  # fat, posterior right
    grid = Grid(SIZE, SPACING, (-198.0, -158.0, -118.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    return ct, grid


def box_mask(grid, lo_ijk, hi_ijk):
    """(box, mask) for an index box filled completely (box = the mask's extent)."""
    size = tuple(h - lo for lo, h in zip(lo_ijk, hi_ijk))
    return (tuple(lo_ijk), size), np.ones(size[::-1], np.uint8)


def entries_for(masks, ct, grid, kinds=None):
    out = []
    for name, ((start, size), mask) in masks.items():
        sl = tuple(slice(s, s + z) for s, z in zip(start[::-1], size[::-1]))
        out.append({"name": name, "kind": (kinds or {}).get(name, "organ"),
                    "volume_ml": float(mask.sum()) * grid.voxel_volume_mm3 / 1000.0,
                    "mean_hu": float(ct[sl][mask > 0].mean())})
    return out


def plausible_masks(grid):
    # Liver on the right (low i = patient's right in LPS), spleen and left kidney on the left, mid-volume in z.
    return {
        "liver": box_mask(grid, (15, 15, 20), (40, 40, 40)),          # 25x25x20 voxels x 64 mm3 = 800 ml
        "spleen": box_mask(grid, (70, 30, 25), (78, 40, 35)),         # 51 ml
        "kidney_right": box_mask(grid, (28, 45, 22), (36, 53, 32)),   # 41 ml
        "kidney_left": box_mask(grid, (64, 45, 22), (72, 53, 32)),
        "liver_tumor": box_mask(grid, (20, 20, 25), (24, 24, 29)),    # inside the liver, at 40 HU
    }


def flags_of(masks, ct, grid, **kw):
    kinds = {n: "tumor" for n in masks if n.endswith("_tumor")}
    return check_structures(entries_for(masks, ct, grid, kinds), masks, grid, ct, **kw)


def test_plausible_structures_get_no_flags():
    ct, grid = synthetic_ct()
    assert flags_of(plausible_masks(grid), ct, grid) == {}


def test_tumor_at_fat_attenuation_is_flagged():
    ct, grid = synthetic_ct()
    masks = {"liver": box_mask(grid, (12, 40, 20), (40, 70, 40)),
             "liver_tumor": box_mask(grid, (18, 52, 25), (26, 60, 30))}  # inside the liver, in the -100 HU fat
    flags = flags_of(masks, ct, grid)
    assert list(flags) == ["liver_tumor"]
    assert "1 of 1 component(s) (#1) have a mean of -100 to -100 HU" in flags["liver_tumor"][0]
    assert "fat or gas" in flags["liver_tumor"][0]


def test_kidneys_on_the_wrong_sides_are_flagged():
    ct, grid = synthetic_ct()
    masks = plausible_masks(grid)
    masks["kidney_right"], masks["kidney_left"] = masks["kidney_left"], masks["kidney_right"]
    flags = flags_of(masks, ct, grid)
    assert any("left and right are swapped" in f for f in flags["kidney_left"]), flags
    assert any("left and right are swapped" in f for f in flags["kidney_right"]), flags


def test_a_lone_left_kidney_on_the_right_of_the_midline_is_flagged():
    ct, grid = synthetic_ct()
    masks = {"kidney_left": box_mask(grid, (28, 45, 22), (36, 53, 32))}
    flags = flags_of(masks, ct, grid, midline_x_mm=2.0)
    assert "on the patient's right" in flags["kidney_left"][0], flags
    assert flags_of({"kidney_left": box_mask(grid, (64, 45, 22), (72, 53, 32))}, ct, grid, midline_x_mm=2.0) == {}


def test_liver_left_of_the_spleen_is_flagged():
    ct, grid = synthetic_ct()
    masks = {"liver": box_mask(grid, (60, 15, 20), (85, 40, 40)), "spleen": box_mask(grid, (20, 30, 25), (28, 40, 35))}
    flags = flags_of(masks, ct, grid)
    assert "situs inversus" in flags["liver"][0] and "situs inversus" in flags["spleen"][0]


@pytest.mark.parametrize("k_range, end", [((40, 60), "top (superior) slice"), ((0, 20), "bottom (inferior) slice")])
def test_organ_touching_the_first_or_last_slice_is_flagged(k_range, end):
    ct, grid = synthetic_ct()
    masks = {"liver": box_mask(grid, (15, 15, k_range[0]), (40, 40, k_range[1]))}
    flags = flags_of(masks, ct, grid)
    assert len(flags["liver"]) == 1 and f"touches the {end}" in flags["liver"][0], flags


def test_organ_touching_the_last_slice_of_a_flipped_grid_names_the_right_end():
    """k decreasing towards the feet: index 0 is the top slice."""
    ct, grid = synthetic_ct()
    flipped = Grid(grid.size, grid.spacing, (grid.origin[0], grid.origin[1], 118.0), (1, 0, 0, 0, 1, 0, 0, 0, -1))
    masks = {"liver": box_mask(flipped, (15, 15, 0), (40, 40, 20))}
    assert "touches the top (superior) slice" in flags_of(masks, ct, flipped)["liver"][0]


def test_structures_that_always_leave_an_abdominal_scan_are_not_edge_flagged():
    ct, grid = synthetic_ct()
    masks = {"aorta": box_mask(grid, (48, 40, 0), (52, 44, 60))}  # the whole z range, blood-like HU
    assert flags_of(masks, ct, grid) == {}


def test_tumor_outside_its_organ_is_flagged():
    ct, grid = synthetic_ct()
    masks = plausible_masks(grid)
    masks["liver_tumor"] = box_mask(grid, (60, 20, 25), (64, 24, 29))  # soft tissue, but in the left abdomen
    flags = flags_of(masks, ct, grid)
    assert list(flags) == ["liver_tumor"], flags
    assert "#1 lies outside the liver (0 % inside; 1 of 1 component(s))" in flags["liver_tumor"][0]


def test_5000_ml_liver_is_flagged_and_a_tiny_one_too():
    ct, grid = synthetic_ct()
    big = {"liver": box_mask(grid, (12, 12, 5), (62, 62, 45))}  # 50 x 50 x 40 x 64 mm3 = 6400 ml
    assert 5000 < entries_for(big, ct, grid)[0]["volume_ml"]
    flags = flags_of(big, ct, grid)
    assert "is far outside the plausible 500-4000 ml" in flags["liver"][0], flags
    tiny = {"liver": box_mask(grid, (15, 15, 20), (18, 18, 23))}  # 1.7 ml, not cut by an edge
    assert "is far outside the plausible" in flags_of(tiny, ct, grid)["liver"][0]


def test_organ_at_fat_attenuation_is_flagged():
    ct, grid = synthetic_ct()
    masks = {"pancreas": box_mask(grid, (16, 51, 20), (29, 64, 25))}  # inside the fat region
    flags = flags_of(masks, ct, grid)
    assert "mean attenuation -100 HU (fat or gas) is implausible for pancreas" in flags["pancreas"][0], flags


def test_real_predicted_organs_of_the_abdomen_ct_get_no_side_or_attenuation_flags(ctdata):
    """TotalSegmentator's predictions on the real CT, moved onto it by physical position: only edge flags
    (the 30-slice crop cuts liver, spleen and kidneys), no volume, attenuation or side flags."""
    image, _ = read_image(ctdata / "totalseg_abdomen_sm" / "example_ct_sm.nii.gz")
    grid = Grid.of(image)
    ct = sitk.GetArrayViewFromImage(image)
    labels = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(str(ctdata / "totalseg_abdomen_sm" / "example_seg.nii.gz")),
                                                  image, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    present = json.loads((ctdata / "totalseg_labels_present.json").read_text())["totalseg_abdomen_sm/example_seg.nii.gz"]
    rename = {"gallbladder": "gall_bladder", "inferior_vena_cava": "postcava"}
    masks = {}
    for value, info in present.items():
        name = rename.get(info["name"], info["name"])
        if name in reference_table()["structures"]:
            masks[name] = (((0, 0, 0), grid.size), (labels == int(value)).astype(np.uint8))
    assert {"liver", "spleen", "kidney_left", "kidney_right", "pancreas", "aorta"} <= set(masks)
    flags = check_structures(entries_for(masks, ct, grid), masks, grid, ct, midline_x_mm=body_profile(image).midline_x_mm)
    for name, texts in flags.items():
        assert all("cut by the scan's edge" in t for t in texts), (name, texts)
    assert "liver" in flags  # the crop cuts it


def test_every_reference_range_names_a_known_source():
    table = json.loads(TABLE_PATH.read_text())
    sources = table["sources"]
    for name, entry in table["structures"].items():
        assert entry.get("source"), name
        for key in entry["source"].split("; "):
            assert key in sources, (name, key)
        for field in ("volume_ml", "mean_hu"):
            if entry.get(field):
                lo, hi = entry[field]
                assert lo < hi, (name, field)
    assert table["coverage"]["source"] in sources


def test_body_outline_opening_and_hole_filling_equal_scipys(ctdata):
    """The body profile's fast morphology (``open_cross``: array shifts; holes by fill_voids) gives SciPy's
    binary_opening (4-neighbour cross) and binary_fill_holes exactly: on random masks and on every slice of the
    real CTs' body outline at the profile's strides."""
    import fill_voids
    from scipy import ndimage

    from AtlasSegLib.plausibility import open_cross

    cross = ndimage.generate_binary_structure(2, 1)
    rng = np.random.default_rng(0)
    masks = [rng.random(shape) > p for shape, p in (((40, 50), 0.3), ((1, 9), 0.2), ((7, 1), 0.2), ((3, 3), 0.1))]
    for name in ("totalseg_abdomen_sm/example_ct_sm.nii.gz", "totalseg_dicom_upper_abdomen/example_ct_dicom"):
        ct = sitk.GetArrayFromImage(read_image(ctdata / name)[0])
        masks += [ct[k, ::2, ::2] > reference_table()["coverage"]["body_hu"] for k in range(ct.shape[0])]
    for mask in masks:
        opened = open_cross(mask)
        assert np.array_equal(opened, ndimage.binary_opening(mask, cross))
        assert np.array_equal(fill_voids.fill(opened, in_place=False), ndimage.binary_fill_holes(opened))
