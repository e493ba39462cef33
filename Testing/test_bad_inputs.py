"""Every bad input gets exit code 2, a message saying what was wrong and what to do, and no output folder."""
from __future__ import annotations

import shutil
from collections import namedtuple

import numpy as np
import SimpleITK as sitk
import torch

from AtlasSegLib.cli import main
from models_for_tests import bone_model, small_segresnet


def _run(capsys, *args):
    code = main(list(args))
    return code, capsys.readouterr().err


def _ct_like(tmp_path, array, name="img.nii.gz", **kw):
    img = sitk.GetImageFromArray(array, **kw)
    path = tmp_path / name
    sitk.WriteImage(img, str(path))
    return path


def _expect_refusal(capsys, tmp_path, input_path, *extra, words=()):
    out = tmp_path / "out"
    card = bone_model(tmp_path)
    code, err = _run(capsys, "segment", str(input_path), "-o", str(out), "--model-card", str(card), "--quiet", *extra)
    assert code == 2, err
    for w in words:
        assert w.lower() in err.lower(), (w, err)
    assert not out.exists()
    assert not list(tmp_path.glob(".out.partial-*"))
    return err


def test_missing_file_is_refused(capsys, tmp_path):
    _expect_refusal(capsys, tmp_path, tmp_path / "nope.nii.gz", words=["does not exist"])


def test_corrupt_file_is_refused(capsys, tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b this is not a gzip stream")
    _expect_refusal(capsys, tmp_path, bad, words=["cannot read", "uncorrupted"])


def test_truncated_nifti_is_refused(capsys, tmp_path, small_ct):
    data = small_ct.read_bytes()
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(data[: len(data) // 2])
    _expect_refusal(capsys, tmp_path, bad, words=["cannot read"])


def test_2d_image_is_refused(capsys, tmp_path):
    path = _ct_like(tmp_path, np.full((64, 64), -1000, np.int16), "slice.nrrd")
    _expect_refusal(capsys, tmp_path, path, words=["2D", "3D CT"])


def test_rgb_image_is_refused(capsys, tmp_path):
    path = _ct_like(tmp_path, np.zeros((8, 32, 32, 3), np.uint8), "rgb.nrrd", isVector=True)
    _expect_refusal(capsys, tmp_path, path, words=["components per voxel"])


def test_4d_image_is_refused(capsys, tmp_path):
    import nibabel as nib

    path = tmp_path / "dyn.nii.gz"
    nib.save(nib.Nifti1Image(np.full((16, 16, 8, 2), -1000, np.int16), np.eye(4)), str(path))
    _expect_refusal(capsys, tmp_path, path, words=["4D", "extract one"])


def test_empty_dicom_folder_is_refused(capsys, tmp_path):
    folder = tmp_path / "dicom"
    folder.mkdir()
    (folder / "readme.txt").write_text("no images here")
    _expect_refusal(capsys, tmp_path, folder, words=["no DICOM image series"])


def test_dicom_folder_with_two_equal_series_names_both(capsys, tmp_path, ctdata):
    import pydicom

    src = ctdata / "dcmqi_ct3slice" / "ct-3slice"
    folder = tmp_path / "two"
    folder.mkdir()
    for k, f in enumerate(sorted(src.iterdir())):
        shutil.copy(f, folder / f"a{k}.dcm")
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.999"
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.999.{k}"
        ds.save_as(folder / f"b{k}.dcm")
    err = _expect_refusal(capsys, tmp_path, folder, words=["several DICOM series", "--series"])
    assert "1.2.826.0.1.3680043.8.498.999" in err


def test_mr_like_values_are_refused_unless_forced(capsys, tmp_path):
    rng = np.random.default_rng(0)
    path = _ct_like(tmp_path, rng.integers(0, 1500, (16, 48, 48)).astype(np.int16), "mr.nii.gz")
    _expect_refusal(capsys, tmp_path, path, words=["does not look like CT", "--force"])


def test_nan_voxels_are_refused(capsys, tmp_path, small_ct):
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(small_ct))).astype(np.float32)
    arr[3, 4, 5] = np.nan
    path = _ct_like(tmp_path, arr, "nan.mha")
    _expect_refusal(capsys, tmp_path, path, words=["NaN"])


def test_volume_too_large_for_memory_says_how_much_is_needed(capsys, tmp_path, small_ct, monkeypatch):
    import psutil

    fake = namedtuple("vm", "available total")(64 * 2**20, 128 * 2**20)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: fake)
    _expect_refusal(capsys, tmp_path, small_ct, words=["GB of memory", "available"])


def test_checkpoint_not_matching_card_names_first_key_and_shapes(capsys, tmp_path, small_ct):
    card, weights = small_segresnet(tmp_path)
    ckpt = torch.load(weights, weights_only=True)
    ckpt["net"]["module.convInit.conv.weight"] = torch.zeros(4, 1, 3, 3, 3)
    torch.save(ckpt, weights)
    out = tmp_path / "out"
    code, err = _run(capsys, "segment", str(small_ct), "-o", str(out), "--model-card", str(card), "--weights",
                     str(weights), "--quiet")
    assert code == 2 and "convInit.conv.weight" in err and "(4, 1, 3, 3, 3)" in err and "(8, 1, 3, 3, 3)" in err
    assert not out.exists()


def test_weights_that_are_not_a_checkpoint_are_refused(capsys, tmp_path, small_ct):
    card, _ = small_segresnet(tmp_path)
    junk = tmp_path / "weights.pth"
    junk.write_text("<html>Access denied</html>")
    out = tmp_path / "out"
    code, err = _run(capsys, "segment", str(small_ct), "-o", str(out), "--model-card", str(card), "--weights",
                     str(junk), "--quiet")
    assert code == 2 and "not a loadable PyTorch checkpoint" in err
    assert not out.exists()


def test_invalid_model_card_names_the_field(capsys, tmp_path, small_ct):
    bad = tmp_path / "card.json"
    bad.write_text('{"id": "x", "title": "x", "version": "1", "license": "x", "architecture": {"type": "monai"},'
                   ' "preprocessing": {"orientation": "RAS", "spacing_mm": [1, 1, -1], "hu_window": [0, 1]},'
                   ' "inference": {"roi_size": [96, 96, 96], "activation": "sigmoid"}, "classes": []}')
    out = tmp_path / "out"
    code, err = _run(capsys, "segment", str(small_ct), "-o", str(out), "--model-card", str(bad), "--quiet")
    assert code == 2 and "spacing_mm" in err
    assert not out.exists()


def test_existing_output_folder_is_not_overwritten_without_flag(capsys, tmp_path, small_ct):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    card = bone_model(tmp_path)
    code, err = _run(capsys, "segment", str(small_ct), "-o", str(out), "--model-card", str(card), "--quiet")
    assert code == 2 and "--overwrite" in err
    assert (out / "keep.txt").read_text() == "mine"
