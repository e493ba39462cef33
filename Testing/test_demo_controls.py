"""Teaching controls of the phantom and of ``atlasseg demo``: tumor count, diameters, contrast, structures shown;
the defaults stay the phantom each seed always gave; controls out of range are refused with exit code 2."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from AtlasSegLib.cli import main
from AtlasSegLib.errors import InputError
from AtlasSegLib.phantom import make_phantom

COARSE = {"size": (96, 80, 48), "spacing_mm": (4.0, 4.0, 5.0)}  # 8x fewer voxels than the default grid


def arr(image):
    return sitk.GetArrayFromImage(image)


def test_contrast_control_changes_only_the_tumor_voxels_of_the_default_phantom():
    # The controls replace their own random draws and no others: with only the contrast set, the tumors are
    # where and as large as in the plain phantom of the seed, and nothing away from them changes.
    plain = make_phantom(8, **COARSE)
    contrast = make_phantom(8, tumor_contrast_hu=-40, **COARSE)
    for name, label in plain.labels.items():
        np.testing.assert_array_equal(arr(label), arr(contrast.labels[name]), err_msg=name)
    tumor = arr(plain.labels["liver_tumor"]) > 0
    from scipy import ndimage

    # The soft edge is the mask blurred by up to 2 voxels (to 4 sigma), then the whole CT by 0.6 voxel.
    near = ndimage.binary_dilation(tumor, iterations=10)
    a, b = arr(plain.image), arr(contrast.image)
    assert (a != b)[tumor].any()
    np.testing.assert_array_equal(a[~near], b[~near])
    assert [t["contrast_hu"] for t in contrast.tumors] == [-40.0] * len(plain.tumors)


@pytest.mark.parametrize("contrast", [-60.0, 45.0])
def test_requested_count_sizes_and_contrast(contrast):
    ph = make_phantom(5, tumor_count=3, tumor_diameter_mm=(16, 24), tumor_contrast_hu=contrast, **COARSE)
    without = make_phantom(5, tumors=False, **COARSE)
    assert len(ph.tumors) == 3
    voxel_mm3 = float(np.prod(COARSE["spacing_mm"]))
    for t in ph.tumors:
        assert 16 <= t["diameter_mm"] <= 24
        # The painted mask's equivalent diameter (coarse 4-5 mm voxels: within a voxel) matches the request.
        measured = 2 * np.cbrt(3 * t["voxels"] * voxel_mm3 / (4 * np.pi))
        assert abs(measured - t["diameter_mm"]) <= 5, (measured, t)
    # Same patient and noise without tumors: the difference inside the masks is the tumors' contrast. The
    # phantom's final partial-volume blur moves a little of it outwards on this coarse grid.
    mask = arr(ph.labels["liver_tumor"]) > 0
    delta = (arr(ph.image).astype(float) - arr(without.image))[mask].mean()
    assert abs(delta - contrast) <= 0.2 * abs(contrast), delta
    # All inside the liver, and deep enough not to be cut by its surface (centre >= d/2 inside).
    assert not (mask & (arr(ph.labels["liver"]) == 0)).any()


def test_zero_tumors_gives_an_empty_tumor_label():
    ph = make_phantom(4, tumor_count=0, **COARSE)
    assert ph.tumors == () and not arr(ph.labels["liver_tumor"]).any()


def test_same_seed_and_controls_give_the_same_phantom():
    kw = dict(tumor_count=2, tumor_diameter_mm=(10, 30), tumor_contrast_hu=-70, **COARSE)
    a, b = make_phantom(21, **kw), make_phantom(21, **kw)
    np.testing.assert_array_equal(arr(a.image), arr(b.image))
    assert a.tumors == b.tumors


@pytest.mark.parametrize("kw, message", [
    ({"tumor_count": 11}, "0 to 10"),
    ({"tumor_count": -1}, "0 to 10"),
    ({"tumor_diameter_mm": (30, 10)}, "MIN <= MAX"),
    ({"tumor_diameter_mm": (1, 5)}, "3 <= MIN"),
    ({"tumor_contrast_hu": 500}, "-300 to 300"),
    ({"tumor_count": 2, "origin": (1000.0, 1000.0, 1000.0)}, "liver is outside"),  # a grid off the body
])
def test_impossible_controls_are_refused(kw, message):
    with pytest.raises(InputError, match=message):
        make_phantom(1, **{**COARSE, **kw})


@pytest.mark.parametrize("args, message", [
    (["--tumor-count", "12"], "tumor count 12"),
    (["--tumor-diameter", "big"], "--tumor-diameter 'big'"),
    (["--tumor-diameter", "40-20"], "tumor diameter 40-20 mm"),
    (["--tumor-contrast", "-900"], "tumor contrast -900"),
    (["--organs", "liver,heart"], "unknown structure(s) for the demo: heart"),
    (["--no-tumors", "--tumor-count", "2"], "given together with --no-tumors"),
])
def test_demo_command_refuses_controls_out_of_range_with_exit_2(args, message, tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path / "out"), "--quiet", "--device", "cpu", *args]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.quick_representative  # make test-quick's one engine run: the demo model, in-process, a few seconds
def test_demo_command_with_controls_segments_and_shows_only_the_chosen_structures(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--seed", "9004", "--quiet", "--device", "cpu", "--tumor-count", "2",
                 "--tumor-diameter", "18-24", "--tumor-contrast", "-70", "--organs", "liver,liver_tumor"]) == 0
    printed = capsys.readouterr().out
    assert "tumors inserted (truth): " in printed and printed.count("-70 HU") == 2
    report = json.loads((out / "report.json").read_text())
    assert sorted(s["name"] for s in report["structures"]) == ["liver", "liver_tumor"]
    assert sorted(p.name for p in (out / "ground_truth").iterdir()) == ["liver.nii.gz", "liver_tumor.nii.gz",
                                                                        "tumors.json"]
    tumors = json.loads((out / "ground_truth" / "tumors.json").read_text())["tumors"]
    assert len(tumors) == 2 and all(18 <= t["diameter_mm"] <= 24 for t in tumors)
    truth = {r["structure"]: r for r in report["report"]["truth"]}
    assert set(truth) == {"liver", "liver_tumor"} and truth["liver"]["dice"] > 0.9
