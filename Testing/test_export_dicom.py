"""DICOM SEG and RTSTRUCT export on real CT series: what a viewer or planning system reads back must be what the
run produced (SEG exactly; RTSTRUCT contours within Dice 0.95), carry the CT's patient/study identifiers, and
refuse clearly when there is no usable DICOM reference.

The run folders are made from provided predictions (no model is run): the upper-abdomen TotalSegmentator labels
resampled onto the DICOM series, plus a hollow liver tumor whose slices have holes (overlapping its organ).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from AtlasSegLib import cli
from AtlasSegLib import export as ex
from AtlasSegLib.errors import InputError
from AtlasSegLib.geometry import Grid, resample
from AtlasSegLib.io import read_image
from testdata import make_run

# TotalSegmentator v2 label ids of example_seg_dicom.nii.gz -> AbdomenAtlas names of the SuPreM card.
TOTALSEG_IDS = {"spleen": 1, "liver": 5, "stomach": 6, "pancreas": 7, "adrenal_gland_right": 8, "colon": 20,
                "aorta": 52, "postcava": 63, "portal_vein_and_splenic_vein": 64}


def dice(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def copy_series_with_uids(src: Path, dst: Path) -> Path:
    """The anonymised example series has no Study/Series/SOP UIDs: give a copy consistent ones (pixel data kept
    compressed as it is; nothing is decoded)."""
    dst.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    for f in sorted(src.iterdir()):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID, ds.SOPClassUID = generate_uid(), "1.2.840.10008.5.1.4.1.1.2"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.PatientID, ds.PatientName, ds.StudyID = "ATLASSEG-TEST-1", "Test^Export", "42"
        ds.save_as(dst / f.name)
    return dst


def abdomen_series_and_labels(root: Path, ctdata: Path) -> tuple:
    """``(series, grid, labels)``: the upper-abdomen series copied with UIDs into ``root/series``, its grid, and the
    TotalSegmentator labels resampled onto it. The labels are stored with the y axis flipped: matching them by
    physical position is the point."""
    series = copy_series_with_uids(ctdata / "totalseg_dicom_upper_abdomen" / "example_ct_dicom", root / "series")
    image, _ = read_image(series)
    grid = Grid.of(image)
    labels = sitk.GetArrayFromImage(resample(sitk.ReadImage(
        str(ctdata / "totalseg_dicom_upper_abdomen" / "example_seg_dicom.nii.gz")), grid,
        interpolator=sitk.sitkNearestNeighbor))
    return series, grid, labels


def hollow_tumor_in(liver: np.ndarray, grid) -> np.ndarray:
    """A shell (8–18 mm from the liver's median voxel): its middle slices have holes."""
    k, j, i = (int(np.median(a)) for a in np.nonzero(liver))
    zz, yy, xx = np.indices(liver.shape)
    r = np.sqrt(((xx - i) * grid.spacing[0]) ** 2 + ((yy - j) * grid.spacing[1]) ** 2 + ((zz - k) * grid.spacing[2]) ** 2)
    return ((r < 18) & (r > 8)).astype(np.uint8)


@pytest.fixture(scope="module")
def abdomen_run(tmp_path_factory, ctdata):
    root = tmp_path_factory.mktemp("dicom_export")
    series, grid, labels = abdomen_series_and_labels(root, ctdata)
    masks = {name: (labels == value).astype(np.uint8) for name, value in TOTALSEG_IDS.items()}
    masks["liver_tumor"] = hollow_tumor_in(masks["liver"], grid)
    run = make_run(root / "run", series, masks)
    return {"run": run, "series": series, "masks": masks, "root": root}


def test_dicom_seg_reads_back_with_same_segments_codes_colours_and_masks(abdomen_run):
    t0 = time.perf_counter()
    result = ex.export(abdomen_run["run"], "dicom-seg")
    seconds = time.perf_counter() - t0
    run = ex.load_run_folder(abdomen_run["run"])
    segments = ex.read_dicom_seg(result.path, ex.reference_for(run))
    entries = {s.name: s.entry for s in run.structures}
    assert [s["name"] for s in segments] == [s.name for s in run.structures]
    for segment in segments:
        entry = entries[segment["name"]]
        assert np.array_equal(segment["mask"], abdomen_run["masks"][segment["name"]]), segment["name"]
        for key in ("category", "type", "type_modifier", "region"):
            assert segment.get(key) == entry.get(key), (segment["name"], key)
        # CIELab is stored as 16-bit integers: the RGB colour comes back within one step.
        assert np.abs(np.subtract(segment["color"], entry["color"])).max() <= 1, segment["name"]
    ds = pydicom.dcmread(result.path)
    item = ds.SegmentSequence[0]
    assert item.SegmentAlgorithmType == "AUTOMATIC" and item.SegmentAlgorithmName == "suprem-segresnet"
    # Each frame names the CT slice it lies on (viewers use this to pair them).
    ref = ex.reference_for(run)
    for frame in ds.PerFrameFunctionalGroupsSequence:
        k = int(round(ref.grid.physical_to_index(frame.PlanePositionSequence[0].ImagePositionPatient)[2]))
        source = frame.DerivationImageSequence[0].SourceImageSequence[0]
        assert source.ReferencedSOPInstanceUID == ref.sop_instance_uids[k]
    # Explicit VR Little Endian, the transfer syntax every reader takes; empty frames are left out.
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert int(ds.NumberOfFrames) < len(segments) * 20
    print(f"\nDICOM SEG: {result.bytes / 1e3:.1f} kB, {int(ds.NumberOfFrames)} frames, {seconds:.2f} s")


def test_dicom_exports_carry_the_source_patient_and_study(abdomen_run):
    source = pydicom.dcmread(next(abdomen_run["series"].iterdir()), stop_before_pixels=True)
    for fmt in ("dicom-seg", "rtstruct"):
        path = ex.export(abdomen_run["run"], fmt, abdomen_run["root"] / f"ids-{fmt}.dcm").path
        ds = pydicom.dcmread(path)
        for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "StudyID", "FrameOfReferenceUID"):
            assert ds.get(keyword) == source.get(keyword), (fmt, keyword)
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID  # a new series beside the CT


def test_deflated_dicom_seg_on_request_holds_the_same_segments(abdomen_run):
    run = ex.load_run_folder(abdomen_run["run"])
    t0 = time.perf_counter()
    plain = ex.export(abdomen_run["run"], "dicom-seg", abdomen_run["root"] / "plain.dcm")
    t1 = time.perf_counter()
    packed = ex.export(abdomen_run["run"], "dicom-seg", abdomen_run["root"] / "deflated.dcm", compress=True)
    t2 = time.perf_counter()
    assert pydicom.dcmread(plain.path).file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert pydicom.dcmread(packed.path).file_meta.TransferSyntaxUID == pydicom.uid.DeflatedExplicitVRLittleEndian
    for path in (plain.path, packed.path):
        for segment in ex.read_dicom_seg(path, ex.reference_for(run)):
            assert np.array_equal(segment["mask"], abdomen_run["masks"][segment["name"]])
    assert packed.bytes < plain.bytes / 10
    # The command line: --compress asks for it, the default is uncompressed.
    out = abdomen_run["root"] / "cli-deflated.dcm"
    assert cli.main(["export", str(abdomen_run["run"]), "--format", "dicom-seg", "--compress", "-o", str(out)]) == 0
    assert pydicom.dcmread(out).file_meta.TransferSyntaxUID == pydicom.uid.DeflatedExplicitVRLittleEndian
    print(f"\nDICOM SEG: Explicit VR LE {plain.bytes / 1e3:.1f} kB in {t1 - t0:.2f} s, Deflated "
          f"{packed.bytes / 1e3:.1f} kB in {t2 - t1:.2f} s")


def test_rtstruct_contours_convert_back_to_the_masks(abdomen_run):
    t0 = time.perf_counter()
    result = ex.export(abdomen_run["run"], "rtstruct")
    seconds = time.perf_counter() - t0
    run = ex.load_run_folder(abdomen_run["run"])
    ref = ex.reference_for(run)
    rois = ex.read_rtstruct(result.path, ref.grid)
    colours = {s.name: s.color for s in run.structures}
    assert [r["name"] for r in rois] == [s.name for s in run.structures]
    scores = {}
    for roi in rois:
        scores[roi["name"]] = dice(roi["mask"], abdomen_run["masks"][roi["name"]])
        assert roi["color"] == colours[roi["name"]]
    assert min(scores.values()) >= 0.95, scores
    ds = pydicom.dcmread(result.path)
    slice_uids = ref.sop_instance_uids
    tumor = next(i for i, r in enumerate(ds.StructureSetROISequence) if r.ROIName == "liver_tumor")
    per_slice = {}
    for contour in ds.ROIContourSequence[tumor].ContourSequence:
        # Every contour lies on the slice it references, in patient coordinates.
        uid = contour.ContourImageSequence[0].ReferencedSOPInstanceUID
        k = slice_uids.index(uid)
        z = np.asarray(contour.ContourData, float).reshape(-1, 3)
        assert np.allclose(ref.grid.physical_to_index(z)[:, 2], k, atol=1e-3)
        assert contour.ContourGeometricType == "CLOSED_PLANAR"
        per_slice[k] = per_slice.get(k, 0) + 1
    # The shell's middle slices have a hole: by default one keyhole contour per slice (the hole joined to the outline
    # by a zero-width cut), with holes="separate" an outer contour and an inner one.
    assert max(per_slice.values()) == 1
    separate = pydicom.dcmread(ex.export(abdomen_run["run"], "rtstruct", abdomen_run["root"] / "separate.dcm",
                                         holes="separate").path)
    assert max(np.unique([c.ContourImageSequence[0].ReferencedSOPInstanceUID for c in
                          separate.ROIContourSequence[tumor].ContourSequence], return_counts=True)[1]) >= 2
    print(f"\nRTSTRUCT: {result.bytes / 1e3:.1f} kB, {result.notes['contours']} contours, {seconds:.2f} s, Dice "
          + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))


def test_provided_dcmqi_liver_seg_reads_in_through_the_same_path(ctdata):
    ref = ex.read_reference_series(ctdata / "dcmqi_ct3slice" / "ct-3slice")
    segments = ex.read_dicom_seg(ctdata / "dcmqi_ct3slice" / "liver.dcm", ref)
    assert len(segments) == 1 and segments[0]["type"]["meaning"] == "Liver"
    # The same hand-drawn liver, as dcmqi's NRRD (label 1), on the same grid.
    nrrd = sitk.ReadImage(str(ctdata / "dcmqi_ct3slice" / "liver_spine_seg.nrrd"))
    assert ex.grid_differences(Grid.of(nrrd), ref.grid) == []
    assert np.array_equal(segments[0]["mask"], (sitk.GetArrayFromImage(nrrd) == 1).astype(np.uint8))


def test_dicom_seg_on_the_dcmqi_series_matches_dcmqis_own_seg(tmp_path, ctdata):
    # This series has an empty Specific Character Set (0008,0005), which highdicom refuses as such.
    series = ctdata / "dcmqi_ct3slice" / "ct-3slice"
    liver = (sitk.GetArrayFromImage(sitk.ReadImage(str(ctdata / "dcmqi_ct3slice" / "liver_spine_seg.nrrd"))) == 1)
    run = make_run(tmp_path / "run", series, {"liver": liver.astype(np.uint8)})
    ref = ex.read_reference_series(series)
    ours = ex.read_dicom_seg(ex.export(run, "dicom-seg").path, ref)
    theirs = ex.read_dicom_seg(ctdata / "dcmqi_ct3slice" / "liver.dcm", ref)
    assert np.array_equal(ours[0]["mask"], theirs[0]["mask"])
    assert ours[0]["type"]["code"] == "10200004"  # SNOMED CT; dcmqi's file still uses the retired SRT code


def test_provided_sarcoma_rtstruct_matches_the_clinical_mask(ctdata):
    case = ctdata / "ibsi_sts008_sarcoma_tumor"
    ref = ex.read_reference_series(case / "CT" / "image")
    rois = ex.read_rtstruct(case / "CT" / "mask" / "RS.dcm", ref.grid)
    mask = sitk.ReadImage(str(case / "nifti" / "CT_mask.nii.gz"))
    assert ex.grid_differences(Grid.of(mask), ref.grid) == []
    gtv = next(r for r in rois if r["name"] == "GTV_Mass_CT")
    score = dice(gtv["mask"], sitk.GetArrayFromImage(mask))
    assert score >= 0.9, score
    print(f"\nsarcoma RS.dcm vs CT_mask.nii.gz: Dice {score:.4f}")


def test_sarcoma_tumor_rtstruct_round_trips_on_its_own_series(tmp_path, ctdata):
    # A clinical tumor shape on an uncompressed series with full UIDs: what a planner would import.
    case = ctdata / "ibsi_sts008_sarcoma_tumor"
    mask = (sitk.GetArrayFromImage(sitk.ReadImage(str(case / "nifti" / "CT_mask.nii.gz"))) > 0).astype(np.uint8)
    run = make_run(tmp_path / "run", case / "CT" / "image", {"liver_tumor": mask})
    result = ex.export(run, "rtstruct")
    rois = ex.read_rtstruct(result.path, ex.load_run_folder(run).grid)
    assert dice(rois[0]["mask"], mask) >= 0.95
    assert pydicom.dcmread(result.path).PatientID == "STS_008"


def test_non_dicom_input_says_dicom_export_needs_a_reference(tmp_path, capsys, small_ct):
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(small_ct.parent / "example_seg.nii.gz")))
    run = make_run(tmp_path / "run", small_ct, {"liver": (labels == 5).astype(np.uint8)})
    for fmt in ("dicom-seg", "rtstruct"):
        with pytest.raises(InputError, match="--reference-dicom"):
            ex.export(run, fmt)
        assert cli.main(["export", str(run), "--format", fmt]) == 2
        assert "needs the CT as a DICOM series" in capsys.readouterr().err
    assert not (run / "export").exists()


def test_reference_series_on_another_grid_is_refused_naming_the_difference(abdomen_run, ctdata):
    with pytest.raises(InputError, match=r"does not lie on the segmentation's grid.*size"):
        ex.export(abdomen_run["run"], "dicom-seg", abdomen_run["root"] / "x.dcm",
                  reference_dicom=ctdata / "ibsi_sts008_sarcoma_tumor" / "CT" / "image")


def test_series_without_uids_is_refused_saying_which_are_missing(abdomen_run, ctdata):
    with pytest.raises(InputError, match="StudyInstanceUID.*SOPInstanceUID"):
        ex.export(abdomen_run["run"], "rtstruct", abdomen_run["root"] / "y.dcm",
                  reference_dicom=ctdata / "totalseg_dicom_upper_abdomen" / "example_ct_dicom")
    assert not (abdomen_run["root"] / "y.dcm").exists()


def test_cli_export_writes_once_and_refuses_to_overwrite_silently(abdomen_run, capsys):
    out = abdomen_run["root"] / "cli" / "rt.dcm"
    args = ["export", str(abdomen_run["run"]), "--format", "rtstruct", "-o", str(out)]
    assert cli.main(args) == 0
    assert "rtstruct" in capsys.readouterr().out and out.is_file()
    assert cli.main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli.main(args + ["--overwrite"]) == 0
