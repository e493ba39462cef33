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
    return {"root": root, "plain": plain, "edited": edited, "series": series}


def _seg_types(path) -> dict:
    ds = pydicom.dcmread(path)
    return {s.SegmentLabel: s.SegmentAlgorithmType for s in ds.SegmentSequence}


def _rt_types(path) -> dict:
    ds = pydicom.dcmread(path)
    return {r.ROIName: r.ROIGenerationAlgorithm for r in ds.StructureSetROISequence}


def test_review_provenance_names_the_structures_a_person_edited(runs):
    edited, reviewer, reviewed_at = ex.review_provenance(runs["edited"])
    assert edited == {"liver_tumor"} and reviewer is None and reviewed_at is None
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
