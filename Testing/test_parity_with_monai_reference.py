"""Our pipeline gives the same masks as the plain MONAI pipeline for the same SegResNet weights."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from AtlasSegLib.card import load_card
from AtlasSegLib.networks import load_model
from AtlasSegLib.pipeline import SegmentOptions, segment
from models_for_tests import small_segresnet
from reference_pipeline import reference_masks


def test_masks_match_plain_monai_pipeline_per_class(small_ct, tmp_path):
    card_path, weights = small_segresnet(tmp_path, seed=3)
    card = load_card(card_path)
    model = load_model(card, weights)
    reference = reference_masks(str(small_ct), model.net, model.card)  # (C, i, j, k)
    out = tmp_path / "out"
    segment(small_ct, out, card=card, weights=weights,
            options=SegmentOptions(device="cpu", postprocess=False, overview=False))
    checked = 0
    for cls in model.card.classes:
        ours = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "segmentations" / f"{cls.name}.nii.gz"))).transpose(2, 1, 0)
        ref = reference[cls.channel]
        if ref.sum() == 0 and ours.sum() == 0:
            continue
        dice = 2 * np.logical_and(ours, ref).sum() / (ours.sum() + ref.sum())
        assert dice >= 0.99, (cls.name, dice)
        checked += 1
    assert checked >= 10
