"""Rules every export follows, on the real upper-abdomen DICOM series: an empty structure is kept (as an empty segment
or an ROI without contours) in every format; classes without a SNOMED code use one private coding scheme,
``99ATLASSEG``, declared in the DICOM objects, and a custom tumor class is a morphologically altered structure;
exported files are as readable as the run's other files; combined_labels.nii.gz shows every structure; a grid
mismatch names the numbers that differ.
"""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import slicerio

from AtlasSegLib import export as ex
from AtlasSegLib.card import builtin_card, card_from_dict
from AtlasSegLib.geometry import Grid, resample
from AtlasSegLib.io import read_image
from test_export_dicom import copy_series_with_uids
from test_export_outside_tools import DCIODVFY, dciodvfy_errors
from testdata import make_run

MORPHOLOGICALLY_ALTERED = "49755003"


@pytest.fixture(scope="module")
def series(tmp_path_factory, ctdata):
    root = tmp_path_factory.mktemp("export_rules")
    series = copy_series_with_uids(ctdata / "totalseg_dicom_upper_abdomen" / "example_ct_dicom", root / "series")
    image, _ = read_image(series)
    labels = sitk.GetArrayFromImage(resample(sitk.ReadImage(
        str(ctdata / "totalseg_dicom_upper_abdomen" / "example_seg_dicom.nii.gz")), Grid.of(image),
        interpolator=sitk.sitkNearestNeighbor))
    return {"root": root, "series": series, "labels": labels}


def custom_run(outdir, series, masks: dict):
    """A run of a bring-your-own model whose classes have no SNOMED code (written by the pipeline's OutputWriter)."""
    raw = json.loads(builtin_card("atlasseg-demo").path.read_text())
    raw.update(id="my-model", title="My model", weights={"file": "my.pt"})
    raw["architecture"]["kwargs"]["out_channels"] = len(masks)
    raw["classes"] = [{"channel": i, "name": name} for i, name in enumerate(masks)]
    return make_run(outdir, series, masks, card=card_from_dict(raw))


# ----------------------------------------------------------------------------------------- empty structures
def test_an_empty_structure_is_kept_in_every_format(series):
    labels = series["labels"]
    masks = {"liver": (labels == 5).astype(np.uint8), "kidney_left": np.zeros(labels.shape, np.uint8)}
    run = make_run(series["root"] / "empty_run", series["series"], masks)
    ref = ex.reference_for(ex.load_run_folder(run))
    seg = ex.export(run, "dicom-seg")
    segments = {s["name"]: s["mask"] for s in ex.read_dicom_seg(seg.path, ref)}
    assert sorted(segments) == ["kidney_left", "liver"] and not segments["kidney_left"].any()
    assert seg.notes["empty"] == ["kidney_left"]
    rt = ex.export(run, "rtstruct")
    ds = pydicom.dcmread(rt.path)
    names = [r.ROIName for r in ds.StructureSetROISequence]
    assert sorted(names) == ["kidney_left", "liver"]
    kidney = ds.ROIContourSequence[names.index("kidney_left")]
    assert "ContourSequence" not in kidney and rt.notes["empty"] == ["kidney_left"]
    nrrd = ex.export(run, "seg-nrrd")
    assert sorted(s["name"] for s in slicerio.read_segmentation(str(nrrd.path), skip_voxels=True)["segments"]) == \
        ["kidney_left", "liver"]


# ------------------------------------------------------------------------------------------- private codes
def test_bring_your_own_classes_use_one_declared_private_scheme_and_tumors_are_altered_structures(series):
    labels = series["labels"]
    masks = {"liver": (labels == 5).astype(np.uint8), "gland_nodule_tumor": (labels == 8).astype(np.uint8)}
    run = custom_run(series["root"] / "byom_run", series["series"], masks)
    ref = ex.reference_for(ex.load_run_folder(run))

    seg_path = ex.export(run, "dicom-seg").path
    tumor = next(s for s in ex.read_dicom_seg(seg_path, ref) if s["name"] == "gland_nodule_tumor")
    assert tumor["category"]["code"] == MORPHOLOGICALLY_ALTERED
    assert tumor["type"]["scheme"] == ex.PRIVATE_SCHEME and tumor["type"]["code"] == "gland_nodule_tumor"
    seg = pydicom.dcmread(seg_path)
    assert [i.CodingSchemeDesignator for i in seg.CodingSchemeIdentificationSequence] == [ex.PRIVATE_SCHEME]

    rt = pydicom.dcmread(ex.export(run, "rtstruct").path)
    assert [i.CodingSchemeDesignator for i in rt.CodingSchemeIdentificationSequence] == [ex.PRIVATE_SCHEME]
    names = [r.ROIName for r in rt.StructureSetROISequence]
    code = rt.RTROIObservationsSequence[names.index("gland_nodule_tumor")].RTROIIdentificationCodeSequence[0]
    assert code.CodingSchemeDesignator == ex.PRIVATE_SCHEME
    assert code.LongCodeValue == "gland_nodule_tumor"  # 18 characters: longer than Code Value's SH allows
    if DCIODVFY:
        for path in (seg_path, run / "export" / "rtstruct.dcm"):
            assert dciodvfy_errors(path) == [], path

    segments = slicerio.read_segmentation(str(ex.export(run, "seg-nrrd").path), skip_voxels=True)["segments"]
    terminology = next(s for s in segments if s["name"] == "gland_nodule_tumor")["terminology"]
    assert terminology["category"][:2] == ["SCT", MORPHOLOGICALLY_ALTERED]  # [scheme, code, meaning]
    assert terminology["type"][:2] == [ex.PRIVATE_SCHEME, "gland_nodule_tumor"]

    # A run folder from before (its card.json says "AtlasSeg") is exported with the same designator.
    card = json.loads((run / "card.json").read_text())
    for entry in card["classes"]:
        if entry["type"]["scheme"] == ex.PRIVATE_SCHEME:
            entry["type"]["scheme"] = "AtlasSeg"
    (run / "card.json").write_text(json.dumps(card))
    old = pydicom.dcmread(ex.export(run, "dicom-seg", series["root"] / "old.dcm").path)
    assert {item.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator for item in old.SegmentSequence} == \
        {"SCT", ex.PRIVATE_SCHEME}


# --------------------------------------------------------------------------------------------- file modes
def test_exported_files_are_readable_by_others_like_the_rest_of_the_run(series):
    labels = series["labels"]
    run = make_run(series["root"] / "mode_run", series["series"], {"liver": (labels == 5).astype(np.uint8)})
    old = os.umask(0o022)
    try:
        paths = [ex.export(run, fmt).path for fmt in ("dicom-seg", "rtstruct", "seg-nrrd")]
    finally:
        os.umask(old)
    for path in paths:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


# ---------------------------------------------------------------------------------------- combined labels
def test_a_small_structure_stays_visible_in_combined_labels(series):
    labels = series["labels"]
    stomach = labels == 6
    # A 49-voxel structure lying inside a larger one that comes later in the card (spleen before stomach).
    k, j, i = (int(np.median(a)) for a in np.nonzero(stomach))
    small = np.zeros(labels.shape, np.uint8)
    small[k, j - 3:j + 4, i - 3:i + 4] = 1
    stomach |= small.astype(bool)
    run = make_run(series["root"] / "combined_run", series["series"],
                   {"spleen": small, "stomach": stomach.astype(np.uint8)})
    card = builtin_card("suprem-segresnet")
    label = {c.name: c.label for c in card.classes}
    combined = sitk.GetArrayFromImage(sitk.ReadImage(str(run / "combined_labels.nii.gz")))
    assert np.count_nonzero(combined == label["spleen"]) == 49
    assert np.count_nonzero(combined == label["stomach"]) == np.count_nonzero(stomach) - 49
    case = ex.export(run, "abdomenatlas").path
    combined = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "combined_labels.nii.gz")))
    assert np.count_nonzero(combined == label["spleen"]) == 49


def test_a_structure_covered_by_smaller_ones_is_named_in_the_warnings(series):
    shape = series["labels"].shape
    big, left, right = (np.zeros(shape, np.uint8) for _ in range(3))
    big[10, 200:210, 200:210] = 1  # 100 voxels, covered by two structures of 60
    left[10, 200:210, 200:206] = 1
    right[10, 200:210, 204:210] = 1
    run = make_run(series["root"] / "hidden_run", series["series"], {"spleen": big, "liver": left, "stomach": right})
    report = json.loads((run / "report.json").read_text())
    assert any("spleen does not show in combined_labels.nii.gz" in w for w in report["warnings"])


# -------------------------------------------------------------------------------------------- grid message
def test_grid_mismatch_names_the_numbers_that_differ():
    a = Grid((512, 512, 20), (0.9765625, 0.9765625, 2.0), (-249.51171875, -437.51171875, -804.5), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    b = Grid((512, 512, 20), (0.9765625, 0.9765625, 2.0), (-249.51171875, -437.51171875, -804.52), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    problems = ex.grid_differences(a, b)
    assert problems == ["origin z -804.5 vs -804.52 (differs by 0.02) mm (LPS)"]
    assert "-437" not in problems[0]  # the coordinates that agree are not listed
