"""The "Remove false positive" effect logic on real Slicer classes: a click removes the component under the
cursor from the segment under the cursor, as one undo step of the real Segment Editor logic."""
import numpy as np
import pytest
import vtk

import slicer

from review_scene import (FP_HIGH_BOX_KJI, LIVER_ISLAND_KJI, TRUE_TUMOR_BOX_KJI, makeEditor, makeReviewScene,
                          segmentArray)
from slicer_marks import requires_opengl
from AtlasSegModule.RemoveFalsePositiveLogic import (SEARCH_RADIUS_3D_VOXELS, RemoveFalsePositiveLogic, layerImage,
                                                     pickSurfacePoint, segmentIdsTopmostFirst)

ALL = ("liver", "spleen", "liver_tumor")


@pytest.fixture
def scene(logic, slicer_app, tmp_path):
    scene = makeReviewScene(logic, tmp_path / "out")
    # The selected segment is the spleen on purpose: clicks must act on the segment under the cursor instead.
    editor = makeEditor(slicer_app, scene.segmentationNode, scene.volume, "spleen")
    return scene, editor


def _arrays(scene):
    return {name: segmentArray(scene, name) for name in ALL}


def _component(mask, kji):
    import cc3d

    labels = cc3d.connected_components(mask, connectivity=26)
    return labels == labels[tuple(kji)]


def test_click_removes_the_component_from_the_segment_under_the_cursor_only(scene):
    scene, editor = scene
    before = _arrays(scene)
    kji = scene.boxToFullKji(TRUE_TUMOR_BOX_KJI)
    assert before["liver_tumor"][kji] and before["liver"][kji]  # tumor drawn over the liver: the tumor is on top

    result = RemoveFalsePositiveLogic(scene.segmentationNode, editor.SaveStateForUndo).click(scene.rasOfKji(kji))

    after = _arrays(scene)
    gone = _component(before["liver_tumor"], kji)
    assert result.segmentId == "liver_tumor" and result.changedVoxels == int(gone.sum()) > 0
    assert not after["liver_tumor"][gone].any()
    np.testing.assert_array_equal(after["liver_tumor"][~gone], before["liver_tumor"][~gone])
    np.testing.assert_array_equal(after["liver"], before["liver"])
    np.testing.assert_array_equal(after["spleen"], before["spleen"])
    assert "liver_tumor" in result.message


def test_click_on_an_organ_island_removes_it_from_that_organ(scene):
    scene, editor = scene
    before = _arrays(scene)
    result = RemoveFalsePositiveLogic(scene.segmentationNode, editor.SaveStateForUndo).click(
        scene.rasOfKji(LIVER_ISLAND_KJI))
    after = _arrays(scene)
    island = _component(before["liver"], LIVER_ISLAND_KJI)
    assert result.segmentId == "liver"
    assert not after["liver"][island].any()
    np.testing.assert_array_equal(after["liver"][~island], before["liver"][~island])
    np.testing.assert_array_equal(after["liver_tumor"], before["liver_tumor"])


def test_each_click_is_one_undo_step_and_undo_redo_restore_exactly(scene):
    scene, editor = scene
    logic = RemoveFalsePositiveLogic(scene.segmentationNode, editor.SaveStateForUndo)
    original = _arrays(scene)
    logic.click(scene.rasOfKji(scene.boxToFullKji(TRUE_TUMOR_BOX_KJI)))
    afterFirst = _arrays(scene)
    logic.click(scene.rasOfKji(LIVER_ISLAND_KJI))
    afterSecond = _arrays(scene)

    editor.Undo()
    for name in ALL:
        np.testing.assert_array_equal(segmentArray(scene, name), afterFirst[name])
    editor.Undo()
    for name in ALL:
        np.testing.assert_array_equal(segmentArray(scene, name), original[name])
    assert not editor.CanUndo()
    editor.Redo()
    editor.Redo()
    for name in ALL:
        np.testing.assert_array_equal(segmentArray(scene, name), afterSecond[name])


def test_background_click_changes_nothing_and_says_so(scene):
    scene, editor = scene
    before = _arrays(scene)
    result = RemoveFalsePositiveLogic(scene.segmentationNode, editor.SaveStateForUndo).click(
        scene.rasOfKji((2, 2, 2)))
    assert not result.changed and "background" in result.message
    assert not editor.CanUndo()  # no undo step for a click that did nothing
    for name in ALL:
        np.testing.assert_array_equal(segmentArray(scene, name), before[name])


def test_shift_click_keeps_only_the_clicked_component(scene):
    scene, editor = scene
    session_logic = RemoveFalsePositiveLogic(scene.segmentationNode, editor.SaveStateForUndo)
    # Two tumor components: lower the threshold first (the 0.35 false positive appears at 0.3).
    from AtlasSegModule.AtlasSegReview import SensitivityController

    controller = SensitivityController(scene.segmentationNode, "liver_tumor", saveStateForUndo=editor.SaveStateForUndo)
    controller.preview(0.3)
    controller.apply()
    before = _arrays(scene)
    fp = scene.boxToFullKji(FP_HIGH_BOX_KJI)
    assert before["liver_tumor"][fp]

    result = session_logic.click(scene.rasOfKji(fp), keepOnly=True)

    after = _arrays(scene)
    kept = _component(before["liver_tumor"], fp)
    np.testing.assert_array_equal(after["liver_tumor"], kept.astype(np.uint8))
    assert result.keepOnly and len(result.removedSeedsIjk) == 1
    seedKji = tuple(result.removedSeedsIjk[0][::-1])  # a voxel of the removed component, full-grid (i, j, k)
    assert before["liver_tumor"][seedKji] and not after["liver_tumor"][seedKji]
    np.testing.assert_array_equal(after["liver"], before["liver"])


def test_hidden_segments_are_skipped_and_layers_are_tried_topmost_first(scene):
    scene, editor = scene
    node = scene.segmentationNode
    assert segmentIdsTopmostFirst(node)[0] == "liver_tumor"  # the tumor layer is drawn last, on top
    node.GetDisplayNode().SetSegmentVisibility("liver_tumor", False)
    kji = scene.boxToFullKji(TRUE_TUMOR_BOX_KJI)
    before = _arrays(scene)
    result = RemoveFalsePositiveLogic(node, editor.SaveStateForUndo).click(scene.rasOfKji(kji))
    # With the tumor hidden the liver is what is under the cursor (its whole main body goes).
    assert result.segmentId == "liver"
    np.testing.assert_array_equal(segmentArray(scene, "liver_tumor"), before["liver_tumor"])


def test_a_3d_surface_pick_just_outside_the_voxels_finds_the_component(scene):
    scene, editor = scene
    tumor = segmentArray(scene, "liver_tumor")
    k, j, i = scene.boxToFullKji(TRUE_TUMOR_BOX_KJI)
    edge = i
    while tumor[k, j, edge + 1]:
        edge += 1
    outside = (k, j, edge + 1)  # first voxel past the tumor's surface along i
    logic = RemoveFalsePositiveLogic(scene.segmentationNode, editor.SaveStateForUndo)
    assert logic.click(scene.rasOfKji(outside), segmentIds=["liver_tumor"]).changedVoxels == 0
    assert logic.click(scene.rasOfKji(outside), segmentIds=["liver_tumor"], searchRadiusVoxels=2).segmentId == \
        "liver_tumor"
    assert not segmentArray(scene, "liver_tumor").any()


def test_click_respects_the_segmentation_parent_transform(scene):
    scene, editor = scene
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 30.0)  # 30 mm to the patient's left
    transform.SetMatrixTransformToParent(matrix)
    scene.segmentationNode.SetAndObserveTransformNodeID(transform.GetID())
    kji = scene.boxToFullKji(TRUE_TUMOR_BOX_KJI)
    r, a, s = scene.rasOfKji(kji)
    result = RemoveFalsePositiveLogic(scene.segmentationNode, editor.SaveStateForUndo).click((r + 30.0, a, s))
    assert result.segmentId == "liver_tumor" and result.changed


def test_edits_write_into_the_shared_layer_in_place(scene):
    scene, editor = scene
    segmentation = scene.segmentationNode.GetSegmentation()
    layerBefore = layerImage(segmentation, "liver_tumor")
    RemoveFalsePositiveLogic(scene.segmentationNode, editor.SaveStateForUndo).click(
        scene.rasOfKji(LIVER_ISLAND_KJI))
    # The organ layer object is edited, not replaced; organs still share one layer.
    assert layerImage(segmentation, "liver") is layerImage(segmentation, "spleen")
    assert layerImage(segmentation, "liver_tumor") is layerBefore


@requires_opengl
def test_a_click_on_a_3d_surface_removes_that_component(scene, slicer_app):
    """The effect's 3D path: pick the surface under the cursor in an offscreen 3D view with Slicer's own 3D
    segmentation displayable manager, then remove the component there."""
    scene, editor = scene
    node = scene.segmentationNode
    for name in ("liver", "spleen"):  # the tumor sits inside the liver: show it alone, as a user would
        node.GetDisplayNode().SetSegmentVisibility(name, False)
    node.CreateClosedSurfaceRepresentation()
    view = _ThreeDView(slicer_app)
    view.render()
    kji = scene.boxToFullKji(TRUE_TUMOR_BOX_KJI)
    renderer = view.renderer
    renderer.SetWorldPoint(*scene.rasOfKji(kji), 1.0)
    renderer.WorldToDisplay()
    x, y, _ = renderer.GetDisplayPoint()

    ras = pickSurfacePoint(renderer, x, y)
    assert ras is not None
    before = segmentArray(scene, "liver_tumor")
    result = RemoveFalsePositiveLogic(node, editor.SaveStateForUndo).click(
        ras, searchRadiusVoxels=SEARCH_RADIUS_3D_VOXELS)
    assert result.segmentId == "liver_tumor"
    assert result.changedVoxels == int(_component(before, kji).sum())
    assert pickSurfacePoint(renderer, 2, 2) is None  # a corner of the view: nothing there


class _ThreeDView:
    """An offscreen 3D view (qMRMLThreeDView without Qt) with Slicer's 3D segmentation displayable manager."""

    def __init__(self, app, size=(400, 400)):
        import vtk

        self.renderer = vtk.vtkRenderer()
        self.window = vtk.vtkRenderWindow()
        self.window.SetOffScreenRendering(1)
        self.window.SetSize(*size)
        self.window.SetMultiSamples(0)
        self.window.SetAlphaBitPlanes(1)
        self.window.AddRenderer(self.renderer)
        self.interactor = vtk.vtkGenericRenderWindowInteractor()
        self.interactor.SetRenderWindow(self.window)
        self.interactor.Initialize()
        factory = slicer.vtkMRMLThreeDViewDisplayableManagerFactory.GetInstance()
        factory.SetMRMLApplicationLogic(app.appLogic)
        for manager in ("vtkMRMLCameraDisplayableManager", "vtkMRMLViewDisplayableManager",
                        "vtkMRMLSegmentationsDisplayableManager3D"):
            if not factory.IsDisplayableManagerRegistered(manager):
                factory.RegisterDisplayableManager(manager)
        self.group = slicer.vtkMRMLDisplayableManagerGroup()
        self.group.Initialize(factory, self.renderer)
        self.logic = slicer.vtkMRMLViewLogic()
        self.logic.SetMRMLApplicationLogic(app.appLogic)
        app.appLogic.GetViewLogics().AddItem(self.logic)
        self.logic.SetMRMLScene(app.scene)
        self.group.SetMRMLDisplayableNode(self.logic.AddViewNode("1"))

    def render(self):
        self.renderer.ResetCamera()
        self.renderer.ResetCameraClippingRange()
        self.window.Render()


# ----------------------------------------------------------------------------------------- add a missed tumor
MISSED_KJI = (12, 30, 24)  # full grid, in the liver, where the model's map is 0 (away from every blob)


def _insertMissedTumor(scene, radius=3):
    """A -45 HU ball in the CT's liver where the probability map holds nothing: a tumor the model missed."""
    from review_scene import SHAPE, ball

    ct = slicer.util.arrayFromVolume(scene.volume)
    inside = ball(SHAPE, MISSED_KJI, radius)
    ct[inside] -= 45
    slicer.util.arrayFromVolumeModified(scene.volume)
    return inside


def test_add_mode_adds_a_missed_tumor_from_the_image_and_undo_restores_the_exact_labelmap(scene):
    scene, editor = scene
    truth = _insertMissedTumor(scene)
    before = _arrays(scene)
    assert not before["liver_tumor"][MISSED_KJI]
    logic = RemoveFalsePositiveLogic(scene.segmentationNode, editor.SaveStateForUndo)

    result = logic.addAt(scene.rasOfKji(MISSED_KJI))

    after = _arrays(scene)
    added = after["liver_tumor"].astype(bool) & ~before["liver_tumor"].astype(bool)
    assert result.changed and result.addedOrigin == "added: image", result.message
    assert result.changedVoxels == int(added.sum()) and added[MISSED_KJI]
    dice = 2 * (added & truth).sum() / (added.sum() + truth.sum())
    assert dice > 0.6, dice
    assert after["liver_tumor"][tuple(result.addedSeedIjk[::-1])]
    # Only new voxels: every other segment and every earlier tumor voxel as it was.
    np.testing.assert_array_equal(after["liver_tumor"][~added], before["liver_tumor"][~added])
    np.testing.assert_array_equal(after["liver"], before["liver"])
    np.testing.assert_array_equal(after["spleen"], before["spleen"])

    editor.Undo()  # one undo step: the exact labelmap of before
    for name in ALL:
        np.testing.assert_array_equal(segmentArray(scene, name), before[name])
    assert not editor.CanUndo()


def test_add_mode_click_inside_an_existing_tumor_selects_it_and_takes_no_undo_step(scene):
    scene, editor = scene
    before = _arrays(scene)
    result = RemoveFalsePositiveLogic(scene.segmentationNode, editor.SaveStateForUndo).addAt(
        scene.rasOfKji(scene.boxToFullKji(TRUE_TUMOR_BOX_KJI)))
    assert not result.changed and "inside an existing" in result.message
    assert not editor.CanUndo()
    for name in ALL:
        np.testing.assert_array_equal(segmentArray(scene, name), before[name])


def test_an_added_tumor_is_recorded_by_the_review_session_as_kept_with_its_origin(scene):
    from AtlasSegModule.AtlasSegReview import ReviewSession, loadReviewState

    scene, editor = scene
    _insertMissedTumor(scene)
    session = ReviewSession(scene.segmentationNode, saveStateForUndo=editor.SaveStateForUndo)
    before = {r["id"] for r in session.rows}
    result = RemoveFalsePositiveLogic(scene.segmentationNode, editor.SaveStateForUndo).addAt(
        scene.rasOfKji(MISSED_KJI))
    session.recordClick(result)
    new = [r for r in session.rows if r["id"] not in before]
    assert len(new) == 1 and new[0]["status"] == "kept" and new[0]["origin"] == "added: image"
    stored = loadReviewState(scene.segmentationNode).decisions("liver_tumor")
    assert [d["origin"] for d in stored if d["id"] == new[0]["id"]] == ["added: image"]


def test_an_added_tumor_stays_when_the_sensitivity_slider_moves(scene):
    from AtlasSegModule.AtlasSegReview import ReviewSession

    scene, editor = scene
    _insertMissedTumor(scene)
    session = ReviewSession(scene.segmentationNode, saveStateForUndo=editor.SaveStateForUndo)
    result = RemoveFalsePositiveLogic(scene.segmentationNode, editor.SaveStateForUndo).addAt(
        scene.rasOfKji(MISSED_KJI))
    session.recordClick(result)
    added = segmentArray(scene, "liver_tumor").astype(bool)
    addedId = next(r["id"] for r in session.rows if r.get("origin") == "added: image")
    controller = session.controllers["liver_tumor"]
    for threshold in (0.8, 0.3, 0.5):  # the map holds nothing there: without the paste it would vanish
        controller.preview(threshold)
        now = segmentArray(scene, "liver_tumor").astype(bool)
        lesion = _component(added, MISSED_KJI)
        assert np.array_equal(now & lesion, lesion), threshold
    session.applyThreshold("liver_tumor")
    assert any(r["id"] == addedId and r["present"] for r in session.rows)


def test_the_review_session_prepares_the_add_so_the_first_click_builds_no_probability_map(scene, monkeypatch):
    # The first add of a session used to rebuild the tumor's map and its dilated gate on the click (a second on a
    # 512×512×300 CT): the session builds it once, the controllers and the add share it.
    from AtlasSegModule import AtlasSegReview
    from AtlasSegModule.AtlasSegReview import ReviewSession

    scene, editor = scene
    truth = _insertMissedTumor(scene)
    ReviewSession(scene.segmentationNode, saveStateForUndo=editor.SaveStateForUndo)
    builds = []
    original = AtlasSegReview.probabilityMapFor
    monkeypatch.setattr(AtlasSegReview, "probabilityMapFor", lambda *a, **k: builds.append(a) or original(*a, **k))
    result = RemoveFalsePositiveLogic(scene.segmentationNode, editor.SaveStateForUndo).addAt(
        scene.rasOfKji(MISSED_KJI))
    assert result.changed and result.addedOrigin == "added: image", result.message
    assert builds == []
    added = segmentArray(scene, "liver_tumor").astype(bool) & truth.astype(bool)
    assert added.any()


def test_the_add_toggle_prepares_the_map_and_a_changed_probability_volume_is_rebuilt(scene, monkeypatch):
    from AtlasSegModule import AtlasSegReview

    scene, editor = scene
    logic = RemoveFalsePositiveLogic(scene.segmentationNode, editor.SaveStateForUndo)
    assert logic.prepareAdd()
    builds = []
    original = AtlasSegReview.probabilityMapFor
    monkeypatch.setattr(AtlasSegReview, "probabilityMapFor", lambda *a, **k: builds.append(a) or original(*a, **k))
    logic.prepareAdd()
    assert builds == []  # cached: nothing changed
    probability = AtlasSegReview.probabilityVolume(scene.segmentationNode, "liver_tumor")
    slicer.util.arrayFromVolume(probability)[:] = 0
    slicer.util.arrayFromVolumeModified(probability)
    logic.prepareAdd()
    assert len(builds) == 1  # the volume changed: the map is built again, not served stale
