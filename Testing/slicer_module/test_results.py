"""Engine output folder -> segmentation node and probability volumes (AtlasSegLogic.loadResults)."""
import json

import numpy as np
import pytest

import slicer

from AtlasSegModule import AtlasSegBridge as bridge
from AtlasSegModule import AtlasSegLogic
from fake_engine import ball, classTable, writeOutputFolder

GEOMETRY = bridge.VolumeGeometry(
    size=(40, 36, 24), spacing=(1.5, 1.25, 2.0), origin=(80.0, -40.5, 12.25),
    directions=((-0.8, 0.6, 0.0), (0.0, 0.0, -1.0), (-0.6, -0.8, 0.0)))  # oblique and left-handed
SHAPE = GEOMETRY.shapeKji()
NAMES = ["spleen", "kidney_right", "liver", "liver_tumor", "kidney_tumor"]

LIVER_TERMINOLOGY = ("Segmentation category and type - AtlasSeg~SCT^123037004^Anatomical "
                     "Structure~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^")
LIVER_TUMOR_TERMINOLOGY = ("Segmentation category and type - AtlasSeg~SCT^49755003^"
                           "Morphologically Altered Structure~SCT^108369006^Neoplasm~^^~Anatomic codes - DICOM "
                           "master list~SCT^10200004^Liver~^^")


def _masks():
    liver = ball(SHAPE, (12, 18, 14), 8).astype(np.uint8)
    tumor = ball(SHAPE, (12, 18, 16), 3).astype(np.uint8)  # inside the liver: overlaps it
    spleen = ball(SHAPE, (12, 18, 32), 5).astype(np.uint8)
    return {"spleen": spleen, "kidney_right": np.zeros(SHAPE, np.uint8), "liver": liver, "liver_tumor": tumor,
            "kidney_tumor": np.zeros(SHAPE, np.uint8)}


def _probabilities():
    liverProbability = np.zeros((8, 10, 12), np.uint8)  # k, j, i
    liverProbability[2:6, 3:8, 4:9] = 200
    kidneyProbability = np.full((3, 3, 3), 40, np.uint8)  # below threshold everywhere: empty segment
    return {"liver_tumor": (liverProbability, (9, 12, 8), ["liver"], 0.5),
            "kidney_tumor": (kidneyProbability, (30, 5, 2), ["kidney_right", "kidney_left", "kidney"], 0.5)}


@pytest.fixture
def scene(slicer_app, tmp_path):
    """An input volume in a patient/study, and the engine output folder made for it."""
    ct = np.full(SHAPE, -100, np.int16)
    volume = bridge.volumeNodeFromArray(ct, GEOMETRY, "Abdomen CT")
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient"), "Study")
    sh.CreateItem(study, volume)
    outdir = writeOutputFolder(tmp_path / "out", GEOMETRY, _masks(), _probabilities(), classTable(NAMES))
    return volume, outdir, study


def test_one_segment_per_structure_with_card_names_and_colours(logic, scene):
    volume, outdir, _ = scene
    results = logic.loadResults(outdir, volume)
    segmentation = results.segmentationNode.GetSegmentation()

    # The empty organ is left out; the empty tumor stays because its probability map can fill it later.
    assert sorted(results.segmentIds) == ["kidney_tumor", "liver", "liver_tumor", "spleen"]
    assert set(results.emptyStructures) == {"kidney_right", "kidney_tumor"}
    for structure in classTable(NAMES):
        segment = segmentation.GetSegment(structure["name"])
        if segment is None:
            continue
        assert segment.GetName() == structure["name"]
        np.testing.assert_allclose(segment.GetColor(), np.array(structure["color"]) / 255.0, atol=1e-6)
    assert results.segmentationNode.GetName() == "Abdomen CT AtlasSeg"


def test_segments_carry_slicer_terminology_strings(logic, scene):
    volume, outdir, _ = scene
    segmentation = logic.loadResults(outdir, volume).segmentationNode.GetSegmentation()
    assert segmentation.GetSegment("liver").GetTerminology() == LIVER_TERMINOLOGY
    assert segmentation.GetSegment("liver_tumor").GetTerminology() == LIVER_TUMOR_TERMINOLOGY
    # Right kidney-type structures keep their laterality as type modifier.
    assert AtlasSegLogic.terminologyEntry(classTable(["kidney_right"])[0]).endswith(
        "SCT^64033007^Kidney~SCT^24028007^Right~Anatomic codes - DICOM master list~^^~^^")


def test_segment_arrays_equal_the_engine_masks_including_overlaps(logic, scene):
    volume, outdir, _ = scene
    results = logic.loadResults(outdir, volume)
    masks = _masks()
    for name in ("liver", "liver_tumor", "spleen", "kidney_tumor"):
        got = bridge.arrayFromSegment(results.segmentationNode, name, volume)
        np.testing.assert_array_equal(got, masks[name], err_msg=name)
    segmentation = results.segmentationNode.GetSegmentation()
    # Disjoint organs share one labelmap layer; tumors get their own (drawn on top of their organ).
    assert segmentation.GetNumberOfLayers() == 2
    assert segmentation.GetLayerIndex("spleen") == segmentation.GetLayerIndex("liver")
    assert segmentation.GetLayerIndex("liver") != segmentation.GetLayerIndex("liver_tumor")


def test_segment_list_has_organs_first_then_tumors(logic, scene):
    volume, outdir, _ = scene
    segmentation = logic.loadResults(outdir, volume).segmentationNode.GetSegmentation()
    order = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert order == ["spleen", "liver", "kidney_tumor", "liver_tumor"]


def test_masks_are_read_one_by_one_when_the_report_is_missing(logic, scene):
    volume, outdir, _ = scene
    (outdir / "report.json").unlink()
    results = logic.loadResults(outdir, volume)
    masks = _masks()
    for name in ("liver", "liver_tumor", "spleen"):
        np.testing.assert_array_equal(bridge.arrayFromSegment(results.segmentationNode, name, volume), masks[name])
    segmentation = results.segmentationNode.GetSegmentation()
    assert segmentation.GetNumberOfLayers() == 2  # still packed: organs together, tumors apart
    assert segmentation.GetLayerIndex("liver") == segmentation.GetLayerIndex("spleen")


def test_a_report_that_disagrees_with_the_combined_labels_falls_back_to_the_mask_files(logic, scene):
    volume, outdir, _ = scene
    report = json.loads((outdir / "report.json").read_text())
    for entry in report["structures"]:
        entry["voxels"] += 1  # e.g. a report from another threshold
    (outdir / "report.json").write_text(json.dumps(report))
    results = logic.loadResults(outdir, volume)
    spleen = bridge.arrayFromSegment(results.segmentationNode, "spleen", volume)
    np.testing.assert_array_equal(spleen, _masks()["spleen"])


def test_reference_geometry_is_the_input_volume(logic, scene):
    volume, outdir, _ = scene
    segmentationNode = logic.loadResults(outdir, volume).segmentationNode
    expected = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    expected.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    assert segmentationNode.GetSegmentation().GetConversionParameter(name) == \
        expected.GetSegmentation().GetConversionParameter(name)
    assert segmentationNode.GetNodeReference(AtlasSegLogic.INPUT_VOLUME_ROLE) is volume


def test_probability_maps_are_hidden_volumes_on_their_box_linked_to_the_segmentation(logic, scene):
    volume, outdir, _ = scene
    results = logic.loadResults(outdir, volume)
    node = results.probabilityNodes["liver_tumor"]
    array, start, _, _ = _probabilities()["liver_tumor"]

    assert node.GetName() == "Abdomen CT AtlasSeg liver_tumor probability"
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), array)
    boxGeometry = bridge.VolumeGeometry.fromVolumeNode(node)
    assert boxGeometry.size == (12, 10, 8)
    # Voxel (0, 0, 0) of the box is voxel `start` of the input volume.
    np.testing.assert_allclose(boxGeometry.ijkToRas() @ [0, 0, 0, 1], GEOMETRY.ijkToRas() @ [*start, 1], atol=1e-9)
    assert boxGeometry.directions == GEOMETRY.directions and boxGeometry.spacing == GEOMETRY.spacing
    assert logic.probabilityVolume(results.segmentationNode, "liver_tumor") is node
    assert node.GetNodeReference(AtlasSegLogic.SEGMENTATION_ROLE) is results.segmentationNode
    assert node.GetAttribute("AtlasSeg.ProbabilityScale") == "255"
    assert node.GetAttribute("AtlasSeg.Threshold") == "0.5"
    assert node.GetAttribute("AtlasSeg.Gate") == "liver"
    # Hidden: no slice view shows it.
    for composite in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode"):
        assert node.GetID() not in (composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID())


def test_results_are_placed_under_the_input_volumes_study(logic, scene):
    volume, outdir, study = scene
    results = logic.loadResults(outdir, volume)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    assert sh.GetItemParent(sh.GetItemByDataNode(results.segmentationNode)) == study
    assert sh.GetItemParent(sh.GetItemByDataNode(results.probabilityNodes["liver_tumor"])) == study


def test_results_follow_the_input_volumes_transform(logic, scene):
    volume, outdir, _ = scene
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    results = logic.loadResults(outdir, volume)
    assert results.segmentationNode.GetTransformNodeID() == transform.GetID()
    assert results.probabilityNodes["liver_tumor"].GetTransformNodeID() == transform.GetID()


def test_structure_subset_loads_only_those(logic, scene):
    volume, outdir, _ = scene
    results = logic.loadResults(outdir, volume, structures=("liver",))
    assert results.segmentIds == ("liver",) and results.probabilityNodes == {}


def test_volumes_are_reported_in_ml(logic, scene):
    volume, outdir, _ = scene
    results = logic.loadResults(outdir, volume)
    voxelMl = 1.5 * 1.25 * 2.0 / 1000.0
    assert results.volumesMl["liver"] == pytest.approx(_masks()["liver"].sum() * voxelMl)


def test_mask_on_another_grid_is_refused_and_the_scene_is_unchanged(logic, scene, tmp_path):
    volume, _, _ = scene
    other = bridge.VolumeGeometry(GEOMETRY.size, GEOMETRY.spacing, (0.0, 0.0, 0.0), GEOMETRY.directions)
    outdir = writeOutputFolder(tmp_path / "other", other, {"liver": _masks()["liver"]}, {}, classTable(["liver"]))
    before = slicer.mrmlScene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="not on the input volume's grid"):
        logic.loadResults(outdir, volume)
    assert slicer.mrmlScene.GetNumberOfNodes() == before


def test_probability_box_outside_the_grid_is_refused(logic, scene):
    volume, outdir, _ = scene
    meta_path = outdir / "probabilities" / "liver_tumor.json"
    meta = json.loads(meta_path.read_text())
    meta["box_start_ijk"] = [35, 0, 0]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="leaves the input grid"):
        logic.loadResults(outdir, volume)


def test_overwrite_replaces_same_named_segments_keeps_others_and_can_be_undone(logic, scene, tmp_path):
    volume, outdir, _ = scene
    first = logic.loadResults(outdir, volume).segmentationNode
    userId = first.GetSegmentation().AddEmptySegment("my notes", "my notes", [0.1, 0.2, 0.3])
    oldLiver = bridge.arrayFromSegment(first, "liver", volume)
    oldProbability = slicer.util.arrayFromVolume(logic.probabilityVolume(first, "liver_tumor")).copy()

    smaller = _masks()
    smaller["liver"] = ball(SHAPE, (12, 18, 14), 5).astype(np.uint8)
    probabilities = _probabilities()
    probabilities["liver_tumor"] = (np.full((4, 4, 4), 255, np.uint8), (10, 10, 10), ["liver"], 0.3)
    second = writeOutputFolder(tmp_path / "second", GEOMETRY, smaller, probabilities, classTable(NAMES))
    nodesBefore = slicer.mrmlScene.GetNumberOfNodes()

    results = logic.loadResults(second, volume, segmentationNode=first)

    assert results.segmentationNode is first
    assert slicer.mrmlScene.GetNumberOfNodes() == nodesBefore  # probability volumes updated in place
    segmentation = first.GetSegmentation()
    assert segmentation.GetSegment(userId) is not None
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names.count("liver") == 1
    np.testing.assert_array_equal(bridge.arrayFromSegment(first, "liver", volume), smaller["liver"])
    assert slicer.util.arrayFromVolume(logic.probabilityVolume(first, "liver_tumor")).shape == (4, 4, 4)
    assert logic.canUndo(first)

    logic.undoLastRun(first)

    np.testing.assert_array_equal(bridge.arrayFromSegment(first, "liver", volume), oldLiver)
    assert segmentation.GetSegment(userId) is not None
    probability = logic.probabilityVolume(first, "liver_tumor")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(probability), oldProbability)
    assert probability.GetAttribute("AtlasSeg.Threshold") == "0.5"
    assert not logic.canUndo(first)


def test_undo_removes_probability_volumes_the_run_created(logic, scene):
    volume, outdir, _ = scene
    target = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "manual")
    target.GetSegmentation().AddEmptySegment("manual", "manual")
    results = logic.loadResults(outdir, volume, segmentationNode=target)
    created = results.probabilityNodes["liver_tumor"].GetID()

    logic.undoLastRun(target)

    assert slicer.mrmlScene.GetNodeByID(created) is None
    segmentation = target.GetSegmentation()
    assert [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())] == ["manual"]
    assert target.GetNumberOfNodeReferences(AtlasSegLogic.PROBABILITY_ROLE) == 0


def test_saved_segmentation_keeps_names_colours_and_terminology(logic, scene, tmp_path):
    volume, outdir, _ = scene
    segmentationNode = logic.loadResults(outdir, volume).segmentationNode
    path = tmp_path / "result.seg.nrrd"
    assert slicer.util.saveNode(segmentationNode, str(path))
    reloaded = slicer.util.loadSegmentation(str(path)).GetSegmentation()
    segmentId = reloaded.GetSegmentIdBySegmentName("liver_tumor")
    assert reloaded.GetSegment(segmentId).GetTerminology() == LIVER_TUMOR_TERMINOLOGY
    np.testing.assert_allclose(reloaded.GetSegment(segmentId).GetColor(),
                               np.array(classTable(["liver_tumor"])[0]["color"]) / 255.0, atol=1e-6)


def test_show_in_3d_builds_closed_surfaces(logic, scene):
    volume, outdir, _ = scene
    segmentationNode = logic.loadResults(outdir, volume).segmentationNode
    logic.showIn3D(segmentationNode)
    name = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
    assert segmentationNode.GetSegmentation().ContainsRepresentation(name)
    logic.showIn3D(segmentationNode, show=False)
    assert not segmentationNode.GetSegmentation().ContainsRepresentation(name)


def test_short_class_entries_in_card_json_are_completed_from_the_structure_table(logic, scene):
    volume, outdir, _ = scene
    card = json.loads((outdir / "card.json").read_text())
    card["classes"] = [{"channel": c["channel"], "label": c["label"], "name": c["name"]} for c in card["classes"]]
    (outdir / "card.json").write_text(json.dumps(card))
    segmentation = logic.loadResults(outdir, volume).segmentationNode.GetSegmentation()
    assert segmentation.GetSegment("liver_tumor").GetTerminology() == LIVER_TUMOR_TERMINOLOGY
    np.testing.assert_allclose(segmentation.GetSegment("liver").GetColor(),
                               np.array(classTable(["liver"])[0]["color"]) / 255.0, atol=1e-6)


def test_a_folder_without_card_json_is_refused(logic, scene):
    volume, outdir, _ = scene
    (outdir / "card.json").unlink()
    with pytest.raises(ValueError, match="card.json is missing"):
        logic.loadResults(outdir, volume)


def test_run_warnings_from_report_json_come_with_the_results(logic, scene):
    """The panel shows report.json's "warnings" after a run (demo model on a real CT, implausible labels…)."""
    volume, outdir, _ = scene
    assert logic.loadResults(outdir, volume).warnings == ()
    report = json.loads((outdir / "report.json").read_text())
    report["warnings"] = ["liver: volume 5000 ml is far outside the adult range", "demo model on a real CT"]
    (outdir / "report.json").write_text(json.dumps(report))
    assert logic.loadResults(outdir, volume).warnings == tuple(report["warnings"])
