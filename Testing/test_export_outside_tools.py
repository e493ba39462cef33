"""DICOM SEG and RTSTRUCT exports checked by the tools a hospital, a planning physicist or a reviewer would use, on the
real DICOM series in ../shared/ctdata:

* dicom3tools' ``dciodvfy`` (Debian ``dicom3tools``): no errors, for SEG and RTSTRUCT, on three real series (one has
  a 17-character Study ID, which is made valid and logged);
* ``plastimatch convert`` (Debian ``plastimatch``), which rasterises RTSTRUCT contours as a planning system does:
  ORing the contours of a slice (its default) or XORing them (``--xor-contours``). Keyhole contours (the default)
  must give the mask both ways; separate inner contours only with XOR;
* dcmqi's ``segimage2itkimage`` (PyPI ``dcmqi``, in the test extra): reads the SEG without warnings, same masks.

``make test`` installs the Debian tools where it may (root with apt-get); elsewhere the tests needing them skip and
say why. A run where every structure is empty ("no finding") exports as valid objects too.
"""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from AtlasSegLib import export as ex
from AtlasSegLib.geometry import resample
from test_export_dicom import abdomen_series_and_labels, dice, hollow_tumor_in
from testdata import make_run

DCIODVFY = shutil.which("dciodvfy")
PLASTIMATCH = shutil.which("plastimatch")
SEGIMAGE2ITK = shutil.which("segimage2itkimage") or next(
    (str(p) for p in [Path(sys.executable).parent / "segimage2itkimage"] if p.is_file()), None)

needs_dciodvfy = pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy is not installed (Debian package dicom3tools: "
                                    "`make dicom-tools` installs it as root with apt-get)")
needs_plastimatch = pytest.mark.skipif(PLASTIMATCH is None, reason="plastimatch is not installed (Debian package "
                                       "plastimatch: `make dicom-tools` installs it as root with apt-get)")
needs_dcmqi = pytest.mark.skipif(SEGIMAGE2ITK is None, reason="dcmqi's segimage2itkimage is not installed (pip install "
                                 "dcmqi; part of the test extra, pip install -e '.[test]')")

ML_MIN = 1.0  # the Dice bar applies to every structure of at least 1 ml
DICE_MIN = 0.98


def dciodvfy_errors(path: Path) -> list:
    out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture(scope="module")
def abdomen(tmp_path_factory, ctdata):
    """The upper-abdomen series (UIDs added) with structures that have holes on their slices: the vertebrae (the
    spinal canal), a hollow liver tumor (a shell) and the real liver; kidney_left stays empty (not in this scan)."""
    root = tmp_path_factory.mktemp("outside_tools")
    series, grid, labels = abdomen_series_and_labels(root, ctdata)
    # TotalSegmentator v2 ids: spleen 1, liver 5, pancreas 7, aorta 52, vertebrae 26-50.
    masks = {"liver": labels == 5, "spleen": labels == 1, "pancreas": labels == 7, "aorta": labels == 52,
             "vertebrae": (labels >= 26) & (labels <= 50), "kidney_left": np.zeros(labels.shape, bool)}
    masks = {name: m.astype(np.uint8) for name, m in masks.items()}
    masks["liver_tumor"] = hollow_tumor_in(masks["liver"], grid)
    run = make_run(root / "run", series, masks, card_id="atlasseg-demo")
    return {"root": root, "series": series, "run": run, "masks": masks, "grid": grid}


@pytest.fixture(scope="module")
def sarcoma(tmp_path_factory, ctdata):
    """The thigh series as it is: full UIDs, uncompressed, and a Study ID of 17 characters (SH allows 16)."""
    root = tmp_path_factory.mktemp("sarcoma_tools")
    case = ctdata / "ibsi_sts008_sarcoma_tumor"
    mask = (sitk.GetArrayFromImage(sitk.ReadImage(str(case / "nifti" / "CT_mask.nii.gz"))) > 0).astype(np.uint8)
    return {"run": make_run(root / "run", case / "CT" / "image", {"liver_tumor": mask}), "root": root}


@pytest.fixture(scope="module")
def three_slice(tmp_path_factory, ctdata):
    """dcmqi's 3-slice series: empty Specific Character Set, single-component patient name."""
    root = tmp_path_factory.mktemp("ct3_tools")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(ctdata / "dcmqi_ct3slice" / "liver_spine_seg.nrrd")))
    return {"run": make_run(root / "run", ctdata / "dcmqi_ct3slice" / "ct-3slice", {"liver": (labels == 1).astype(np.uint8)}),
            "root": root}


# ------------------------------------------------------------------------------------------------- dciodvfy
@needs_dciodvfy
@pytest.mark.parametrize("case", ["abdomen", "sarcoma", "three_slice"])
@pytest.mark.parametrize("fmt", ["dicom-seg", "rtstruct"])
def test_dciodvfy_finds_no_errors_in_seg_and_rtstruct_on_real_series(case, fmt, request):
    data = request.getfixturevalue(case)
    result = ex.export(data["run"], fmt, data["root"] / f"dciodvfy-{fmt}.dcm", overwrite=True)
    errors = dciodvfy_errors(result.path)
    assert errors == [], f"{case} {fmt}: " + "\n".join(errors)


@pytest.mark.quick_representative  # make test-quick's one outside tool: dciodvfy on one export
@needs_dciodvfy
def test_source_values_invalid_for_their_vr_are_made_valid_and_logged(sarcoma, caplog, ctdata):
    source = pydicom.dcmread(next((ctdata / "ibsi_sts008_sarcoma_tumor" / "CT" / "image").iterdir()),
                             stop_before_pixels=True)
    assert len(source.StudyID) == 17  # the source breaks SH's 16 characters
    for fmt in ("dicom-seg", "rtstruct"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="AtlasSegLib.export"):
            result = ex.export(sarcoma["run"], fmt, sarcoma["root"] / f"vr-{fmt}.dcm", overwrite=True)
        ds = pydicom.dcmread(result.path)
        assert ds.StudyID == source.StudyID[:16]
        assert any("StudyID" in r.getMessage() and source.StudyID in r.getMessage() for r in caplog.records), fmt
        assert any("StudyID" in change for change in result.notes["values_made_valid"])
        assert dciodvfy_errors(result.path) == []


def test_seg_has_content_creator_name_and_rtstruct_operator_and_position_reference(abdomen):
    seg = pydicom.dcmread(ex.export(abdomen["run"], "dicom-seg", abdomen["root"] / "type2.dcm", overwrite=True).path)
    rt = pydicom.dcmread(ex.export(abdomen["run"], "rtstruct", abdomen["root"] / "type2-rt.dcm", overwrite=True).path)
    assert "ContentCreatorName" in seg  # Type 2: present, empty (no person made the content)
    assert "OperatorsName" in rt and "PositionReferenceIndicator" in rt


# ---------------------------------------------------------------------------------------------- plastimatch
def plastimatch_masks(rtstruct: Path, series: Path, grid_file: Path, out: Path, *, xor: bool) -> dict:
    """ROI name -> (k, j, i) mask as plastimatch rasterises the structure set on the run's grid."""
    cmd = [PLASTIMATCH, "convert", "--input", str(rtstruct), "--referenced-ct", str(series), "--fixed", str(grid_file),
           "--output-prefix", str(out), "--prefix-format", "nii.gz"] + (["--xor-contours"] if xor else [])
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return {p.name[: -len(".nii.gz")]: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) > 0 for p in out.glob("*.nii.gz")}


@needs_plastimatch
def test_plastimatch_gives_the_masks_from_keyhole_contours_whether_it_ors_or_xors(abdomen):
    grid_file = abdomen["run"] / "segmentations" / "liver.nii.gz"
    voxel_ml = float(np.prod(abdomen["grid"].spacing)) / 1000.0
    scores, lines = {}, []
    for holes in ("keyhole", "separate"):
        rt = ex.export(abdomen["run"], "rtstruct", abdomen["root"] / f"pm-{holes}.dcm", holes=holes, overwrite=True)
        for xor in (False, True):
            mode = "xor" if xor else "or"
            got = plastimatch_masks(rt.path, abdomen["series"], grid_file, abdomen["root"] / f"pm-{holes}-{mode}", xor=xor)
            for name, mask in abdomen["masks"].items():
                if mask.sum() * voxel_ml < ML_MIN:
                    continue
                scores[holes, mode, name] = dice(got[name], mask)
                lines.append(f"{holes:8s} {mode:3s} {name:12s} {mask.sum() * voxel_ml:7.1f} ml  Dice "
                             f"{scores[holes, mode, name]:.4f}  {(got[name].sum() - mask.sum()) * voxel_ml:+7.2f} ml")
    print("\nplastimatch convert vs the masks:\n" + "\n".join(lines))
    keyhole = {k: v for k, v in scores.items() if k[0] == "keyhole"}
    assert min(keyhole.values()) >= DICE_MIN, keyhole
    assert min(v for k, v in scores.items() if k[:2] == ("separate", "xor")) >= DICE_MIN
    # What keyholes are for: ORing separate inner contours fills the holes (vertebral canal, the tumor shell's core).
    assert scores["separate", "or", "vertebrae"] < DICE_MIN
    assert scores["separate", "or", "liver_tumor"] < DICE_MIN


def test_keyhole_contours_enclose_exactly_the_mask_with_either_fill_rule(abdomen):
    """Without plastimatch: each keyhole polygon, filled on its own and ORed, gives the mask on every slice."""
    for name in ("vertebrae", "liver_tumor", "liver"):
        mask = abdomen["masks"][name]
        for k in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)):
            rings = ex.mask_contours(mask[k], "keyhole")
            ored = np.zeros(mask.shape[1:], bool)
            for ring in rings:
                ored |= ex.fill_polygons([ring], mask.shape[1:])
            assert np.array_equal(ored, ex.fill_polygons(rings, mask.shape[1:])), (name, k)
            assert np.array_equal(ored, ex.fill_polygons(ex.mask_contours(mask[k], "separate"), mask.shape[1:]))
            assert dice(ored, mask[k]) >= 0.99, (name, k)


# -------------------------------------------------------------------------------------------------- dcmqi
@needs_dcmqi
def test_dcmqi_reads_the_seg_without_warnings_and_gets_the_masks(abdomen):
    seg = ex.export(abdomen["run"], "dicom-seg", abdomen["root"] / "dcmqi.dcm", overwrite=True)
    out = abdomen["root"] / "dcmqi"
    out.mkdir(exist_ok=True)
    done = subprocess.run([SEGIMAGE2ITK, "--inputDICOM", str(seg.path), "--outputDirectory", str(out), "-t", "nii"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    warnings = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith(("W:", "E:"))]
    assert warnings == []
    meta = json.loads((out / "meta.json").read_text())
    labels = {item[0]["labelID"]: item[0]["SegmentLabel"] for item in meta["segmentAttributes"]}
    assert "ContentCreatorName" in meta
    grid = abdomen["grid"]
    for label, name in labels.items():
        path = out / f"{label}.nii.gz"
        if not abdomen["masks"][name].any():
            continue  # an empty segment has no frames: dcmqi may leave its file out
        got = sitk.GetArrayFromImage(resample(sitk.ReadImage(str(path)), grid, interpolator=sitk.sitkNearestNeighbor))
        assert np.array_equal(got > 0, abdomen["masks"][name] > 0), name


# ------------------------------------------------------------------------------------------ no finding
@pytest.fixture(scope="module")
def no_finding(tmp_path_factory, abdomen):
    root = tmp_path_factory.mktemp("no_finding")
    empty = {name: np.zeros_like(mask) for name, mask in abdomen["masks"].items()}
    return {"run": make_run(root / "run", abdomen["series"], empty, card_id="atlasseg-demo"), "root": root,
            "names": list(empty)}


def test_a_run_without_any_finding_exports_as_seg_and_rtstruct_with_every_structure_empty(no_finding):
    run = ex.load_run_folder(no_finding["run"])
    ref = ex.reference_for(run)
    seg = ex.export(no_finding["run"], "dicom-seg", no_finding["root"] / "seg.dcm")
    segments = ex.read_dicom_seg(seg.path, ref)
    assert sorted(s["name"] for s in segments) == sorted(no_finding["names"])
    assert all(not s["mask"].any() for s in segments)
    assert sorted(seg.notes["empty"]) == sorted(no_finding["names"])
    rt = ex.export(no_finding["run"], "rtstruct", no_finding["root"] / "rt.dcm")
    ds = pydicom.dcmread(rt.path)
    assert len(ds.StructureSetROISequence) == len(no_finding["names"])
    assert all("ContourSequence" not in item for item in ds.ROIContourSequence)  # ROIs without contours
    assert all(not r["mask"].any() for r in ex.read_rtstruct(rt.path, ref.grid))
    if DCIODVFY:
        assert dciodvfy_errors(seg.path) == [] and dciodvfy_errors(rt.path) == []


@needs_plastimatch
def test_plastimatch_reads_the_no_finding_rtstruct(no_finding, abdomen):
    rt = ex.export(no_finding["run"], "rtstruct", no_finding["root"] / "rt-pm.dcm")
    got = plastimatch_masks(rt.path, abdomen["series"], abdomen["run"] / "segmentations" / "liver.nii.gz",
                            no_finding["root"] / "pm", xor=False)
    assert not any(mask.any() for mask in got.values())
