"""Exports say who made each structure, as the DICOM standard does: a structure a person edited in review is
SEMIAUTOMATIC (SEG Segment Algorithm Type, RTSTRUCT ROI Generation Algorithm), an untouched one AUTOMATIC; with
``--approve --reviewer NAME`` an RTSTRUCT is APPROVED with ReviewerName, ReviewDate and ReviewTime (default
UNAPPROVED, without them). On the real sarcoma DICOM series of ../shared/ctdata, checked with dciodvfy."""
from __future__ import annotations


import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from AtlasSegLib import cli
from AtlasSegLib import export as ex
from AtlasSegLib.review import review_rows
from AtlasSegLib.run import Run
from AtlasSegLib.runedit import edit_run
from test_export_outside_tools import dciodvfy_errors, needs_dciodvfy
from testdata import make_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory, ctdata):
    """Two runs on the thigh series: the clinical tumor plus a small second component as liver_tumor, and a 'liver'
    (a block, only to have an untouched structure). ``edited``: candidate 2 removed by 'atlasseg review'."""
    root = tmp_path_factory.mktemp("provenance")
    case = ctdata / "ibsi_sts008_sarcoma_tumor"
    tumor = (sitk.GetArrayFromImage(sitk.ReadImage(str(case / "nifti" / "CT_mask.nii.gz"))) > 0).astype(np.uint8)
    k = int(np.flatnonzero(tumor.any(axis=(1, 2)))[len(np.flatnonzero(tumor.any(axis=(1, 2)))) // 2])
    tumor[k - 1:k + 2, 5:9, 5:9] = 1  # a small false positive far from the tumor
    liver = np.zeros(tumor.shape, np.uint8)
    liver[10:20, 40:80, 40:80] = 1
    masks = {"liver": liver, "liver_tumor": tumor}
    series = case / "CT" / "image"
    plain = make_run(root / "plain", series, masks)
    edited = make_run(root / "edited", series, masks)
    result = edit_run(edited, "liver_tumor", remove_ids=(2,))
    assert result["removed"] == 1
    # ``added``: candidate 2 recorded as a lesion a reviewer added by a click (its decision's origin), and the
    # reviewer recorded in review.json, as 'atlasseg review --add-at ... --reviewer NAME' records them.
    added = make_run(root / "added", series, masks)
    run = Run(added)
    state = run.read_review()
    row = next(r for r in review_rows(added)["liver_tumor"] if r["id"] == 2)
    state.decide("liver_tumor", row, "kept", key=2, origin="added: image")
    state.touch("Roe^Rick")
    run.write_review(state)
    return {"root": root, "plain": plain, "edited": edited, "added": added, "series": series}


def _seg_types(path) -> dict:
    ds = pydicom.dcmread(path)
    return {s.SegmentLabel: s.SegmentAlgorithmType for s in ds.SegmentSequence}


def _rt_types(path) -> dict:
    ds = pydicom.dcmread(path)
    return {r.ROIName: r.ROIGenerationAlgorithm for r in ds.StructureSetROISequence}


def test_review_provenance_names_the_structures_a_person_edited(runs):
    edited, reviewer, reviewed_at = ex.review_provenance(runs["edited"])
    # Every review action records when (review.json reviewed_at); who only with --reviewer.
    assert edited == {"liver_tumor"} and reviewer is None and reviewed_at is not None
    assert ex.review_provenance(runs["plain"])[0] == frozenset()


@needs_dciodvfy
def test_an_untouched_run_exports_automatic_and_unapproved(runs):
    root = runs["root"]
    seg = ex.export(runs["plain"], "dicom-seg", root / "plain-seg.dcm").path
    rt = ex.export(runs["plain"], "rtstruct", root / "plain-rt.dcm").path
    assert set(_seg_types(seg).values()) == {"AUTOMATIC"} and set(_rt_types(rt).values()) == {"AUTOMATIC"}
    ds = pydicom.dcmread(rt)
    assert ds.ApprovalStatus == "UNAPPROVED" and "ReviewerName" not in ds and "ReviewDate" not in ds
    assert dciodvfy_errors(seg) == [] and dciodvfy_errors(rt) == []


@needs_dciodvfy
def test_an_edited_tumor_is_semiautomatic_in_seg_and_rtstruct_and_both_pass_dciodvfy(runs):
    root = runs["root"]
    seg = ex.export(runs["edited"], "dicom-seg", root / "edited-seg.dcm", reviewer="Doe^Jane")
    rt = ex.export(runs["edited"], "rtstruct", root / "edited-rt.dcm")
    assert _seg_types(seg.path) == {"liver": "AUTOMATIC", "liver_tumor": "SEMIAUTOMATIC"}
    assert _rt_types(rt.path) == {"liver": "AUTOMATIC", "liver_tumor": "SEMIAUTOMATIC"}
    assert seg.notes["semiautomatic"] == ["liver_tumor"]
    assert str(pydicom.dcmread(seg.path).ContentCreatorName) == "Doe^Jane"
    assert pydicom.dcmread(rt.path).ApprovalStatus == "UNAPPROVED"
    assert dciodvfy_errors(seg.path) == [] and dciodvfy_errors(rt.path) == []


@needs_dciodvfy
def test_approve_with_a_reviewer_makes_an_approved_rtstruct_with_name_date_and_time(runs, capsys):
    dest = runs["root"] / "approved-rt.dcm"
    assert cli.main(["export", str(runs["edited"]), "--format", "rtstruct", "-o", str(dest), "--approve",
                     "--reviewer", "Doe^Jane"]) == 0
    assert "approved_by Doe^Jane" in capsys.readouterr().out
    ds = pydicom.dcmread(dest)
    assert ds.ApprovalStatus == "APPROVED" and str(ds.ReviewerName) == "Doe^Jane"
    assert len(ds.ReviewDate) == 8 and len(ds.ReviewTime) >= 6
    assert dciodvfy_errors(dest) == []


def test_approve_without_a_reviewer_or_on_a_seg_is_refused_before_anything_is_written(runs, capsys):
    dest = runs["root"] / "refused.dcm"
    assert cli.main(["export", str(runs["edited"]), "--format", "rtstruct", "-o", str(dest), "--approve"]) == 2
    assert "--reviewer NAME" in capsys.readouterr().err
    assert cli.main(["export", str(runs["edited"]), "--format", "dicom-seg", "-o", str(dest), "--approve",
                     "--reviewer", "Doe^Jane"]) == 2
    assert "no approval" in capsys.readouterr().err
    assert not dest.exists()


@needs_dciodvfy
def test_a_run_with_an_added_lesion_is_semiautomatic_by_its_recorded_reviewer_and_passes_dciodvfy(runs, capsys):
    edited, reviewer, reviewed_at = ex.review_provenance(runs["added"])
    assert edited == {"liver_tumor"} and reviewer == "Roe^Rick" and reviewed_at
    root = runs["root"]
    seg = ex.export(runs["added"], "dicom-seg", root / "added-seg.dcm")
    assert _seg_types(seg.path) == {"liver": "AUTOMATIC", "liver_tumor": "SEMIAUTOMATIC"}
    assert str(pydicom.dcmread(seg.path).ContentCreatorName) == "Roe^Rick", "the reviewer review.json records"
    dest = root / "added-rt.dcm"
    # --approve needs no --reviewer when review.json records one.
    assert cli.main(["export", str(runs["added"]), "--format", "rtstruct", "-o", str(dest), "--approve"]) == 0
    ds = pydicom.dcmread(dest)
    assert _rt_types(dest) == {"liver": "AUTOMATIC", "liver_tumor": "SEMIAUTOMATIC"}
    assert ds.ApprovalStatus == "APPROVED" and str(ds.ReviewerName) == "Roe^Rick"
    # The added lesion's id and origin: in the tumor's ROI and segment descriptions, nowhere else.
    text = "lesion #2 (added: image) added by a reviewer"
    assert {str(r.ROIName): r.get("ROIDescription") for r in ds.StructureSetROISequence}["liver_tumor"] == text
    assert [s.get("SegmentDescription") for s in pydicom.dcmread(seg.path).SegmentSequence] == [None, text]
    assert dciodvfy_errors(seg.path) == [] and dciodvfy_errors(dest) == []
