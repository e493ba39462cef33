"""Export of segmentation nodes from the scene and import of AbdomenAtlas cases (AtlasSegExport), with real
Slicer classes: what lands in the scene or in the file must equal the masks voxel for voxel and keep names,
colours and Slicer terminology."""
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

import slicer

from AtlasSegModule import AtlasSegBridge as bridge
from AtlasSegModule import AtlasSegExport
from AtlasSegModule import AtlasSegLogic
from AtlasSegLib import export as libexport
from AtlasSegLib.errors import InputError
from AtlasSegLib.io import read_image
from testdata import ct_data_dir, make_run

TOTALSEG_IDS = {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 5, "stomach": 6}




@pytest.fixture
def atlasCase(tmp_path):
    """An AbdomenAtlas case (CT + masks + labels.json) of the small real abdomen CT, with a tumor in the liver."""
    data = ct_data_dir() / "totalseg_abdomen_sm"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(data / "example_seg.nii.gz")))
    masks = {name: (labels == value).astype(np.uint8) for name, value in TOTALSEG_IDS.items()}
    k, j, i = (int(np.median(a)) for a in np.nonzero(masks["liver"]))
    masks["liver_tumor"] = np.zeros_like(labels, np.uint8)
    masks["liver_tumor"][k - 2:k + 3, j - 4:j + 4, i - 4:i + 4] = 1
    run = make_run(tmp_path / "run", data / "example_ct_sm.nii.gz", masks)
    case = libexport.export(run, "abdomenatlas", tmp_path / "BDMAP_TEST").path
    return case, masks


def test_abdomenatlas_case_imports_with_names_colours_terminology_and_exact_voxels(logic, atlasCase):
    case, masks = atlasCase
    imported = AtlasSegExport.importAbdomenAtlasCase(logic, case)
    segmentationNode = imported.results.segmentationNode
    segmentation = segmentationNode.GetSegmentation()
    labels = {e["name"]: e for e in json.loads((case / "labels.json").read_text())["labels"]}
    assert sorted(imported.results.segmentIds) == sorted(masks)
    assert imported.volumeNode.GetName() == "BDMAP_TEST"
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "ct.nii.gz")))
    np.testing.assert_array_equal(bridge.arrayFromVolumeNode(imported.volumeNode), ct)
    for name, entry in labels.items():
        segment = segmentation.GetSegment(name)
        np.testing.assert_allclose(segment.GetColor(), np.array(entry["color"]) / 255.0, atol=1e-6)
        # Slicer's own serialisation of the codes, identical to what the library writes into .seg.nrrd.
        assert segment.GetTerminology() == AtlasSegLogic.terminologyEntry(entry) == libexport.terminology_entry(entry)
        fileMask = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "segmentations" / f"{name}.nii.gz")))
        np.testing.assert_array_equal(bridge.arrayFromSegment(segmentationNode, name, imported.volumeNode), fileMask,
                                      err_msg=name)
    assert AtlasSegExport.segmentTag(segmentation.GetSegment("liver_tumor"), AtlasSegExport.KIND_TAG) == "tumor"


def test_case_without_labels_json_takes_colours_from_the_structure_table(logic, atlasCase):
    case, _ = atlasCase
    (case / "labels.json").unlink()  # AbdomenAtlas ships cases as ct.nii.gz + segmentations/ only
    segmentation = AtlasSegExport.importAbdomenAtlasCase(logic, case).results.segmentationNode.GetSegmentation()
    liver = segmentation.GetSegment("liver")
    np.testing.assert_allclose(liver.GetColor(), np.array([221, 130, 101]) / 255.0, atol=1e-6)
    assert "SCT^10200004^Liver" in liver.GetTerminology()


def test_segmentation_node_exports_to_seg_nrrd_readable_without_slicer(logic, atlasCase, tmp_path):
    case, masks = atlasCase
    imported = AtlasSegExport.importAbdomenAtlasCase(logic, case)
    outcome = AtlasSegExport.exportSegmentation(imported.results.segmentationNode, "seg-nrrd", tmp_path / "a.seg.nrrd")
    assert outcome.path.is_file() and "Wrote" in outcome.message()
    seg = slicerio.read_segmentation(str(outcome.path))
    segmentation = imported.results.segmentationNode.GetSegmentation()
    assert sorted(s["name"] for s in seg["segments"]) == sorted(masks)
    for item in seg["segments"]:
        segment = segmentation.GetSegment(item["name"])
        np.testing.assert_array_equal(slicerio.segment_mask(seg, item).transpose(2, 1, 0), masks[item["name"]] > 0)
        np.testing.assert_allclose(item["color"], segment.GetColor(), atol=1e-3)
        assert slicerio.segmentation.terminology_entry_to_string(item["terminology"]) == segment.GetTerminology()


def test_segmentation_on_a_dicom_ct_exports_to_dicom_seg_and_rtstruct(logic, tmp_path):
    series = ct_data_dir() / "ibsi_sts008_sarcoma_tumor" / "CT" / "image"
    tumor = (sitk.GetArrayFromImage(sitk.ReadImage(
        str(ct_data_dir() / "ibsi_sts008_sarcoma_tumor" / "nifti" / "CT_mask.nii.gz"))) > 0).astype(np.uint8)
    run = make_run(tmp_path / "run", series, {"liver_tumor": tumor})
    image, _ = read_image(series)
    volume = bridge.volumeNodeFromSitk(image, "STS_008 CT")
    segmentationNode = logic.loadResults(run, volume).segmentationNode
    ref = libexport.read_reference_series(series)

    # Without a DICOM reference (a volume loaded from files, not from the DICOM database) it says what to choose.
    with pytest.raises(InputError, match="DICOM folder"):
        AtlasSegExport.exportSegmentation(segmentationNode, "dicom-seg", tmp_path / "none.dcm")
    assert not (tmp_path / "none.dcm").exists()

    seg = AtlasSegExport.exportSegmentation(segmentationNode, "dicom-seg", tmp_path / "seg.dcm", referenceDicom=series)
    segments = libexport.read_dicom_seg(seg.path, ref)
    assert [s["name"] for s in segments] == ["liver_tumor"]
    assert segments[0]["type"]["meaning"] == "Neoplasm" and segments[0]["region"]["meaning"] == "Liver"
    np.testing.assert_array_equal(segments[0]["mask"], bridge.arrayFromSegment(segmentationNode, "liver_tumor", volume))

    rt = AtlasSegExport.exportSegmentation(segmentationNode, "rtstruct", tmp_path / "rt.dcm", referenceDicom=series)
    rois = libexport.read_rtstruct(rt.path, ref.grid)
    overlap = 2 * np.count_nonzero(rois[0]["mask"] & tumor) / (rois[0]["mask"].sum() + tumor.sum())
    assert overlap >= 0.95


def test_export_refuses_to_replace_a_file_unless_asked(logic, atlasCase, tmp_path):
    case, _ = atlasCase
    segmentationNode = AtlasSegExport.importAbdomenAtlasCase(logic, case).results.segmentationNode
    dest = tmp_path / "again"
    AtlasSegExport.exportSegmentation(segmentationNode, "abdomenatlas", dest)
    with pytest.raises(InputError, match="already exists"):
        AtlasSegExport.exportSegmentation(segmentationNode, "abdomenatlas", dest)
    AtlasSegExport.exportSegmentation(segmentationNode, "abdomenatlas", dest, overwrite=True)
    reimported = libexport.read_abdomenatlas_case(dest)
    assert {s["name"] for s in reimported.structures} >= {"liver", "liver_tumor"}
    shutil.rmtree(dest)


def test_seg_nrrd_written_by_the_library_loads_into_slicer_with_layers_terminology_and_voxels(slicer_app, atlasCase,
                                                                                           tmp_path):
    # The file is packed by the library (organs and tumors in separate layers): Slicer itself must read it back.
    case, masks = atlasCase
    run = case.parent / "run"
    path = libexport.export(run, "seg-nrrd", tmp_path / "lib.seg.nrrd").path
    volume = bridge.volumeNodeFromSitk(sitk.ReadImage(str(case / "ct.nii.gz")), "CT")
    node = slicer.util.loadSegmentation(str(path))
    segmentation = node.GetSegmentation()
    labels = {e["name"]: e for e in json.loads((case / "labels.json").read_text())["labels"]}
    assert sorted(segmentation.GetSegmentIDs()) == sorted(masks)
    assert segmentation.GetLayerIndex("liver") != segmentation.GetLayerIndex("liver_tumor")
    for name, mask in masks.items():
        segment = segmentation.GetSegment(name)
        assert segment.GetTerminology() == AtlasSegLogic.terminologyEntry(labels[name])
        np.testing.assert_allclose(segment.GetColor(), np.array(labels[name]["color"]) / 255.0, atol=1e-5)
        np.testing.assert_array_equal(bridge.arrayFromSegment(node, name, volume), mask, err_msg=name)


def test_panel_choices_are_the_librarys_name_schemes_and_tumor_roi_types():
    from AtlasSegLib import roinames

    assert [k for k, _ in AtlasSegLogic.EXPORT_ROI_NAMES] == list(roinames.NAME_SCHEMES) + ["file"]
    assert [k for k, _ in AtlasSegLogic.EXPORT_TUMOR_ROI_TYPES] == list(roinames.TUMOR_ROI_TYPES)


def test_export_options_pass_each_choice_only_to_the_formats_that_have_it():
    assert AtlasSegExport.exportOptions("rtstruct", "tg263", "/ignored.json", "GTV") == {
        "names": "tg263", "nameMap": None, "tumorRoiType": "GTV"}
    assert AtlasSegExport.exportOptions("seg-nrrd", "file", "/maps/roi.csv", "GTV") == {
        "names": "model", "nameMap": "/maps/roi.csv", "tumorRoiType": "none"}
    assert AtlasSegExport.exportOptions("abdomenatlas", "tg263", None, "GTV") == {
        "names": "model", "nameMap": None, "tumorRoiType": "none"}
    with pytest.raises(InputError, match="choose the ROI name mapping file"):
        AtlasSegExport.exportOptions("dicom-seg", "file", None)


def test_segmentation_exports_with_tg263_names_distinct_side_colours_and_a_mapping_file(logic, atlasCase, tmp_path):
    case, masks = atlasCase
    node = AtlasSegExport.importAbdomenAtlasCase(logic, case).results.segmentationNode
    options = AtlasSegExport.exportOptions("seg-nrrd", "tg263")
    outcome = AtlasSegExport.exportSegmentation(node, "seg-nrrd", tmp_path / "tg263.seg.nrrd", **options)
    segments = {s["id"]: s for s in slicerio.read_segmentation(str(outcome.path))["segments"]}
    assert {k: s["name"] for k, s in segments.items()} == {
        "spleen": "Spleen", "kidney_right": "Kidney_R", "kidney_left": "Kidney_L", "liver": "Liver",
        "stomach": "Stomach", "liver_tumor": "GTV_Liver"}
    assert segments["kidney_right"]["color"] != segments["kidney_left"]["color"]
    # The user's file over the model names; a structure the segmentation does not have is named in the error.
    (tmp_path / "map.csv").write_text("structure,name\nliver_tumor,GTVp_Liver\n")
    options = AtlasSegExport.exportOptions("seg-nrrd", "file", str(tmp_path / "map.csv"))
    outcome = AtlasSegExport.exportSegmentation(node, "seg-nrrd", tmp_path / "map.seg.nrrd", **options)
    names = {s["id"]: s["name"] for s in slicerio.read_segmentation(str(outcome.path))["segments"]}
    assert names["liver_tumor"] == "GTVp_Liver" and names["kidney_left"] == "kidney_left"
    (tmp_path / "bad.csv").write_text("tumour,GTV\n")
    with pytest.raises(InputError, match="unknown structure.*tumour"):
        AtlasSegExport.exportSegmentation(node, "seg-nrrd", tmp_path / "bad.seg.nrrd",
                                          **AtlasSegExport.exportOptions("seg-nrrd", "file", str(tmp_path / "bad.csv")))
    assert not (tmp_path / "bad.seg.nrrd").exists()


def test_rtstruct_from_the_scene_has_the_tumor_roi_type_chosen_in_the_panel(logic, tmp_path):
    import pydicom

    series = ct_data_dir() / "ibsi_sts008_sarcoma_tumor" / "CT" / "image"
    tumor = (sitk.GetArrayFromImage(sitk.ReadImage(
        str(ct_data_dir() / "ibsi_sts008_sarcoma_tumor" / "nifti" / "CT_mask.nii.gz"))) > 0).astype(np.uint8)
    run = make_run(tmp_path / "run", series, {"liver_tumor": tumor})
    image, _ = read_image(series)
    node = logic.loadResults(run, bridge.volumeNodeFromSitk(image, "STS_008 CT")).segmentationNode
    for choice, expected in (("none", ""), ("GTV", "GTV")):
        options = AtlasSegExport.exportOptions("rtstruct", "tg263", None, choice)
        rt = AtlasSegExport.exportSegmentation(node, "rtstruct", tmp_path / f"{choice}.dcm", referenceDicom=series,
                                               **options)
        ds = pydicom.dcmread(rt.path)
        assert [str(r.ROIName) for r in ds.StructureSetROISequence] == ["GTV_Liver"]
        assert ds.RTROIObservationsSequence[0].RTROIInterpretedType == expected
