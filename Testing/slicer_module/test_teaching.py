"""The Teaching section's logic against real Slicer classes: a synthetic tumor inserted at a clicked point into a
CT volume node (one undo step, bit-exact), its truth segmentation, reveal/hide, side-by-side views, the demo
phantom with the teaching controls, and the answers drawn (or not) by Slicer's own slice view."""
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from AtlasSegModule import AtlasSegBridge as bridge
from AtlasSegModule.AtlasSegTeaching import TeachingLogic, cropAround, pointToKji
from slicer_marks import requires_opengl

COARSE = {"size": (96, 80, 48), "spacing_mm": (4.0, 4.0, 5.0)}  # the phantom on 8x fewer voxels: fast
DIAMETER_MM, CONTRAST_HU, SEED = 20.0, -60.0, 5


@pytest.fixture
def scene(logic, slicer_app):
    """A coarse phantom CT (tumor-free) and a segmentation holding its liver, as a model's result would."""
    from AtlasSegLib.phantom import make_phantom

    phantom = make_phantom(3, tumors=False, **COARSE)
    volume = logic.addPhantomVolume(phantom, "Teaching CT")
    geometry = bridge.VolumeGeometry.fromVolumeNode(volume)
    liver = sitk.GetArrayFromImage(phantom.labels["liver"])
    result = slicer_app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "model result")
    result.CreateDefaultDisplayNodes()
    result.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segmentId = TeachingLogic.addTruthSegment(result, liver, geometry, "liver", (0.8, 0.4, 0.3))
    # The deepest liver voxel: a 20 mm tumor fits around it whatever the phantom's shape.
    depth = ndimage.distance_transform_edt(liver, sampling=geometry.spacing[::-1])
    centre = np.unravel_index(int(np.argmax(depth)), liver.shape)
    ras = tuple(float(v) for v in (geometry.ijkToRas() @ [centre[2], centre[1], centre[0], 1.0])[:3])
    return {"volume": volume, "result": result, "liverId": segmentId, "liver": liver, "geometry": geometry,
            "centre": centre, "ras": ras}


def test_insert_changes_only_voxels_near_the_point_and_undo_restores_them_bit_for_bit(scene):
    volume, geometry = scene["volume"], scene["geometry"]
    original = bridge.arrayFromVolumeNode(volume)
    teaching = TeachingLogic()
    assert pointToKji(volume, scene["ras"]) == scene["centre"]

    insertion = teaching.insertTumor(volume, scene["ras"], diameterMm=DIAMETER_MM, contrastHu=CONTRAST_HU,
                                     organSegmentation=scene["result"], organSegmentId=scene["liverId"],
                                     baseSeed=SEED)
    after = bridge.arrayFromVolumeNode(volume)
    changed = after != original
    assert after.dtype == original.dtype and changed.sum() > 20
    # Every changed voxel lies within the tumor's reach of the clicked point: radius (elastic deformation makes
    # it up to ~1.3x) plus the soft edge, two voxels.
    k, j, i = np.nonzero(changed)
    offset_mm = (np.stack([k, j, i], axis=1) - np.asarray(scene["centre"])) * np.asarray(geometry.spacing[::-1])
    assert np.linalg.norm(offset_mm, axis=1).max() <= 1.3 * DIAMETER_MM / 2 + 2 * max(geometry.spacing)
    # ... and inside the box the undo keeps.
    assert not changed[tuple(np.meshgrid(*[np.setdiff1d(np.arange(n), np.arange(s.start, s.stop))
                                          for n, s in zip(changed.shape, insertion.box)], indexing="ij"))].any()

    # The truth segment is the synthesizer's own mask for the same inputs (the box around the point it is
    # given) and seed: it is deterministic.
    from AtlasSegLib.synthesize import insert_tumors

    crop = cropAround(original.shape, scene["centre"], geometry.spacing[::-1], DIAMETER_MM)
    local = tuple(c - s.start for c, s in zip(scene["centre"], crop))
    expected = insert_tumors(original[crop], scene["liver"][crop].astype(bool), geometry.spacing[::-1],
                             organ_name="liver", count=1, diameter_mm=(DIAMETER_MM, DIAMETER_MM),
                             contrast_hu=CONTRAST_HU, centers_zyx=[local], seed=SEED)
    truth = TeachingLogic.truthNode(volume)
    assert truth is not None and truth.GetSegmentation().GetNumberOfSegments() == 1
    truthMask = bridge.arrayFromSegment(truth, insertion.segmentId, volume)
    np.testing.assert_array_equal(truthMask[crop], expected.mask.astype(np.uint8))
    assert truthMask.sum() == expected.mask.sum()
    np.testing.assert_array_equal(after[crop], expected.ct)
    # Darker than the liver by about the contrast asked for (the edge is soft, so the mean is a little less).
    delta = (after.astype(float) - original)[truthMask > 0].mean()
    assert CONTRAST_HU * 1.25 <= delta <= CONTRAST_HU * 0.5, delta

    assert teaching.canUndo(volume)
    teaching.undoInsert()
    np.testing.assert_array_equal(bridge.arrayFromVolumeNode(volume), original)
    assert truth.GetSegmentation().GetNumberOfSegments() == 0
    assert not teaching.canUndo(volume)
    with pytest.raises(ValueError, match="nothing|no inserted"):
        teaching.undoInsert()


def test_two_inserts_undo_last_first_back_to_the_original(scene):
    volume = scene["volume"]
    original = bridge.arrayFromVolumeNode(volume)
    teaching = TeachingLogic()
    first = teaching.insertTumor(volume, scene["ras"], diameterMm=12, contrastHu=-80, baseSeed=1)
    afterFirst = bridge.arrayFromVolumeNode(volume)
    # Second one overlapping the first, without an organ (contrast relative to the tissue around the point).
    teaching.insertTumor(volume, scene["ras"], diameterMm=16, contrastHu=40, baseSeed=1)
    assert TeachingLogic.truthNode(volume).GetSegmentation().GetNumberOfSegments() == 2
    teaching.undoInsert()
    np.testing.assert_array_equal(bridge.arrayFromVolumeNode(volume), afterFirst)
    assert TeachingLogic.truthNode(volume).GetSegmentation().GetSegment(first.segmentId) is not None
    teaching.undoInsert()
    np.testing.assert_array_equal(bridge.arrayFromVolumeNode(volume), original)


def test_a_point_outside_the_ct_or_the_organ_is_refused_and_nothing_changes(scene):
    from AtlasSegLib.errors import InputError

    volume = scene["volume"]
    original = bridge.arrayFromVolumeNode(volume)
    teaching = TeachingLogic()
    with pytest.raises(ValueError, match="outside"):
        teaching.insertTumor(volume, (5000.0, 0.0, 0.0))
    air = (scene["geometry"].ijkToRas() @ [1, 1, 1, 1.0])[:3]  # a corner voxel: air, outside the liver
    with pytest.raises(InputError, match="outside the liver"):
        teaching.insertTumor(volume, air, organSegmentation=scene["result"], organSegmentId=scene["liverId"])
    with pytest.raises(ValueError, match="diameter"):
        teaching.insertTumor(volume, scene["ras"], diameterMm=500)
    np.testing.assert_array_equal(bridge.arrayFromVolumeNode(volume), original)
    assert not teaching.canUndo() and TeachingLogic.truthNode(volume) is None


def test_answers_start_hidden_toggle_and_sit_beside_the_result(scene):
    volume = scene["volume"]
    TeachingLogic().insertTumor(volume, scene["ras"], diameterMm=DIAMETER_MM, contrastHu=CONTRAST_HU)
    truth = TeachingLogic.truthNode(volume)
    assert not TeachingLogic.answersVisible(volume)
    assert TeachingLogic.setAnswersVisible(volume, True) and TeachingLogic.answersVisible(volume)
    assert truth.GetDisplayNode().GetVisibility()
    TeachingLogic.setAnswersVisible(volume, False)
    assert not truth.GetDisplayNode().GetVisibility()

    TeachingLogic.showBeside(truth, scene["result"], ["vtkMRMLSliceNodeYellow"], ["vtkMRMLSliceNodeRed"])
    display = truth.GetDisplayNode()
    assert display.IsDisplayableInView("vtkMRMLSliceNodeYellow") and not display.IsDisplayableInView(
        "vtkMRMLSliceNodeRed")
    result = scene["result"].GetDisplayNode()
    assert result.IsDisplayableInView("vtkMRMLSliceNodeRed") and not result.IsDisplayableInView(
        "vtkMRMLSliceNodeYellow")


def test_truth_beside_result_gives_the_views_back_as_they_were(scene):
    """D11: the result was left shown in one slice view only (not in 3D or the other views), and saved so."""
    volume = scene["volume"]
    TeachingLogic().insertTumor(volume, scene["ras"], diameterMm=DIAMETER_MM, contrastHu=CONTRAST_HU)
    truth = TeachingLogic.truthNode(volume)
    result = scene["result"].GetDisplayNode()
    result.AddViewNodeID("vtkMRMLViewNode1")  # the user had limited the result to the 3D view and Green
    result.AddViewNodeID("vtkMRMLSliceNodeGreen")
    saved = TeachingLogic.showBeside(truth, scene["result"], ["vtkMRMLSliceNodeYellow"], ["vtkMRMLSliceNodeRed"])
    assert not result.IsDisplayableInView("vtkMRMLViewNode1")
    TeachingLogic.restoreViews(saved)
    assert [result.GetNthViewNodeID(i) for i in range(result.GetNumberOfViewNodeIDs())] == [
        "vtkMRMLViewNode1", "vtkMRMLSliceNodeGreen"]
    display = truth.GetDisplayNode()
    assert display.GetNumberOfViewNodeIDs() == 0  # shown in every view again, as before
    assert display.IsDisplayableInView("vtkMRMLSliceNodeRed") and display.IsDisplayableInView("vtkMRMLViewNode1")


def test_demo_phantom_with_teaching_controls_loads_the_chosen_truth_hidden(logic):
    volume, truth, phantom = TeachingLogic.loadPhantom(logic, seed=2024, tumorCount=2, diameterMm=(15, 20),
                                                       contrastHu=-50, structures=["liver", "liver_tumor"])
    names = sorted(truth.GetSegmentation().GetNthSegment(n).GetName()
                   for n in range(truth.GetSegmentation().GetNumberOfSegments()))
    assert names == ["liver", "liver_tumor"]
    assert not truth.GetDisplayNode().GetVisibility()
    assert len(phantom.tumors) == 2 and all(15 <= t["diameter_mm"] <= 20 for t in phantom.tumors)
    np.testing.assert_array_equal(bridge.arrayFromVolumeNode(volume), sitk.GetArrayFromImage(phantom.image))
    tumorId = truth.GetSegmentation().GetSegmentIdBySegmentName("liver_tumor")
    np.testing.assert_array_equal(bridge.arrayFromSegment(truth, tumorId, volume),
                                  sitk.GetArrayFromImage(phantom.labels["liver_tumor"]))


@requires_opengl
def test_revealed_answers_are_drawn_in_the_slice_view_and_hidden_ones_are_not(scene, slicer_app, tmp_path):
    from slicer_harness import SliceView

    volume = scene["volume"]
    TeachingLogic().insertTumor(volume, scene["ras"], diameterMm=24, contrastHu=-80)
    scene["result"].GetDisplayNode().SetVisibility(False)  # only the truth's yellow in the picture
    view = SliceView(slicer_app, "Red", "Axial", (320, 280))
    view.show(volume)
    view.setOffset(scene["ras"][2])
    yellow = np.array([255, 217, 0])

    def yellowPixels(rgb):
        return int((np.abs(rgb.astype(int) - yellow).max(axis=-1) <= 40).sum())

    hidden = view.render(tmp_path / "hidden.png")
    TeachingLogic.setAnswersVisible(volume, True)
    shown = view.render(tmp_path / "shown.png")
    assert yellowPixels(hidden) == 0
    assert yellowPixels(shown) > 20


@requires_opengl
def test_truth_beside_result_draws_each_in_its_own_view(scene, slicer_app, tmp_path):
    from slicer_harness import SliceView

    volume = scene["volume"]
    TeachingLogic().insertTumor(volume, scene["ras"], diameterMm=24, contrastHu=-80)
    truth = TeachingLogic.truthNode(volume)
    TeachingLogic.setAnswersVisible(volume, True)
    views = {}
    for name in ("Red", "Yellow"):
        views[name] = SliceView(slicer_app, name, "Axial", (320, 280))
        views[name].show(volume)
        views[name].setOffset(scene["ras"][2])
    TeachingLogic.showBeside(truth, scene["result"], [views["Yellow"].sliceNode.GetID()],
                             [views["Red"].sliceNode.GetID()])
    liver = np.array([204, 102, 76])  # the result's liver colour (0.8, 0.4, 0.3)
    yellow = np.array([255, 217, 0])

    def count(rgb, colour):
        return int((np.abs(rgb.astype(int) - colour).max(axis=-1) <= 30).sum())

    left, right = views["Red"].render(tmp_path / "result.png"), views["Yellow"].render(tmp_path / "truth.png")
    assert count(left, liver) > 100 and count(left, yellow) == 0
    assert count(right, yellow) > 20 and count(right, liver) == 0
