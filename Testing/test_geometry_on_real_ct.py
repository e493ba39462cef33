"""Masks land voxel-for-voxel on the input grid, whatever the orientation, spacing or dtype."""
from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from AtlasSegLib.card import load_card
from AtlasSegLib.io import SourceInfo
from AtlasSegLib.networks import load_model
from AtlasSegLib.pipeline import SegmentOptions, Segmenter
from models_for_tests import BONE_HU, bone_model


def _dice(a, b):
    a, b = a > 0, b > 0
    return 2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


def _rotated(image: sitk.Image, degrees: float, axis: int) -> sitk.Image:
    """The same voxels with their directions rotated: a genuinely oblique scan."""
    out = sitk.Image(image)
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    r = {2: np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]), 0: np.array([[1, 0, 0], [0, c, -s], [0, s, c]])}[axis]
    out.SetDirection(tuple((r @ np.asarray(image.GetDirection()).reshape(3, 3)).ravel()))
    return out


def _variants(image: sitk.Image):
    yield "original", image
    yield "flipped_x_y", sitk.Flip(image, [True, True, False])
    yield "flipped_z", sitk.Flip(image, [False, False, True])
    yield "permuted_axes", sitk.PermuteAxes(image, [2, 0, 1])
    yield "oblique_20deg", _rotated(image, 20, 2)
    yield "oblique_30deg_tilt", _rotated(image, 30, 0)
    yield "int32", sitk.Cast(image, sitk.sitkInt32)
    yield "float32", sitk.Cast(image, sitk.sitkFloat32)
    aniso = sitk.Resample(image, [int(image.GetSize()[0] * 1.5), int(image.GetSize()[1] * 1.2), int(image.GetSize()[2] * 0.75)],
                          sitk.Transform(), sitk.sitkLinear, image.GetOrigin(),
                          (image.GetSpacing()[0] / 1.5, image.GetSpacing()[1] / 1.2, image.GetSpacing()[2] / 0.75),
                          image.GetDirection(), -1024, sitk.sitkInt16)
    yield "anisotropic_2x2.5x4mm", aniso


@pytest.mark.parametrize("variant", ["original", "flipped_x_y", "flipped_z", "permuted_axes", "oblique_20deg",
                                     "oblique_30deg_tilt", "int32", "float32", "anisotropic_2x2.5x4mm"])
def test_bone_masks_match_direct_threshold_on_input_grid(variant, small_ct, tmp_path):
    image = dict(_variants(sitk.ReadImage(str(small_ct))))[variant]
    model = load_model(load_card(bone_model(tmp_path)))
    out = tmp_path / "out"
    Segmenter(model, SegmentOptions(device="cpu", overview=False)).run(image, SourceInfo(str(small_ct), "nifti"), out)
    mask = sitk.ReadImage(str(out / "segmentations" / "vertebrae.nii.gz"))
    for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert np.allclose(getattr(mask, get)(), getattr(image, get)(), atol=1e-6), get
    truth = sitk.GetArrayFromImage(image) > BONE_HU
    assert truth.sum() > 1000
    assert _dice(sitk.GetArrayFromImage(mask), truth) >= 0.95


def test_dicom_series_bone_mask_lands_on_the_dicom_grid(ctdata, tmp_path):
    from AtlasSegLib.io import read_image

    image, source = read_image(ctdata / "totalseg_dicom_upper_abdomen" / "example_ct_dicom")
    # The model grid at the series' own spacing puts every DICOM voxel centre on a model voxel centre, so any
    # orientation or origin error (the series is stored posterior-to-anterior flipped vs RAS) shows at once.
    model = load_model(load_card(bone_model(tmp_path, spacing=image.GetSpacing())))
    Segmenter(model, SegmentOptions(device="cpu", overview=False)).run(image, source, tmp_path / "out")
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "segmentations" / "vertebrae.nii.gz")))
    assert mask.shape == sitk.GetArrayViewFromImage(image).shape
    assert _dice(mask, sitk.GetArrayViewFromImage(image) > BONE_HU) >= 0.99
