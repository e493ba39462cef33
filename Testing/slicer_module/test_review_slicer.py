"""Sensitivity slider, candidate table, review state and batch operations on real Slicer classes, checked
against AtlasSegLib.review computing on the engine's output folder."""

import numpy as np
import pytest

import slicer

from AtlasSegModule import AtlasSegReview
from AtlasSegLib import review
from review_scene import (FP_HIGH_BOX_KJI, FP_MAX_BOX_KJI, LIVER_ISLAND_KJI, SHAPE, TRUE_TUMOR_BOX_KJI,
                          libraryMask, makeEditor, makeReviewScene, segmentArray)


@pytest.fixture
def scene(logic, slicer_app, tmp_path):
    scene = makeReviewScene(logic, tmp_path / "out")
    editor = makeEditor(slicer_app, scene.segmentationNode, scene.volume, "liver")
    return scene, editor


def _session(scene, editor):
    return AtlasSegReview.ReviewSession(scene.segmentationNode, saveStateForUndo=editor.SaveStateForUndo)


def test_slider_threshold_gives_the_library_mask_and_leaves_other_segments_alone(scene):
    scene, editor = scene
    controller = _session(scene, editor).controllers["liver_tumor"]
    liver, spleen = segmentArray(scene, "liver"), segmentArray(scene, "spleen")
    for threshold in (0.3, 0.1, 0.7, 0.5):
        voxels = controller.preview(threshold)
        expected = libraryMask(scene.outdir, threshold)
        tumor = segmentArray(scene, "liver_tumor")
        np.testing.assert_array_equal(tumor, expected)
        assert voxels == int(expected.sum())
    np.testing.assert_array_equal(segmentArray(scene, "liver"), liver)
    np.testing.assert_array_equal(segmentArray(scene, "spleen"), spleen)


def test_lower_thresholds_show_more_candidates(scene):
    scene, editor = scene
    controller = _session(scene, editor).controllers["liver_tumor"]
    counts = {}
    for threshold in (0.5, 0.3, 0.1):
        controller.preview(threshold)
        counts[threshold] = len(controller.candidates()[1])
    assert counts == {0.5: 1, 0.3: 2, 0.1: 3}  # the true tumor, then the 0.35 and the 0.2 false positives


def test_apply_is_one_undo_step_and_cancel_restores(scene):
    scene, editor = scene
    session = _session(scene, editor)
    controller = session.controllers["liver_tumor"]
    original = segmentArray(scene, "liver_tumor")

    controller.preview(0.1)
    assert controller.cancel()
    np.testing.assert_array_equal(segmentArray(scene, "liver_tumor"), original)
    assert not editor.CanUndo()  # a cancelled preview leaves no undo step

    controller.preview(0.1)
    controller.preview(0.3)
    assert session.applyThreshold("liver_tumor")
    at03 = libraryMask(scene.outdir, 0.3)
    np.testing.assert_array_equal(segmentArray(scene, "liver_tumor"), at03)
    assert controller.probabilityNode.GetAttribute("AtlasSeg.Threshold") == "0.3"
    editor.Undo()
    np.testing.assert_array_equal(segmentArray(scene, "liver_tumor"), original)
    assert not editor.CanUndo()  # two previews + apply = exactly one step
    editor.Redo()
    np.testing.assert_array_equal(segmentArray(scene, "liver_tumor"), at03)


def test_table_rows_equal_the_library_candidates(scene):
    scene, editor = scene
    session = _session(scene, editor)
    session.controllers["liver_tumor"].preview(0.1)
    session.applyThreshold("liver_tumor")
    pm = review.ProbabilityMap.from_output(scene.outdir, "liver_tumor")
    _, expected = pm.candidates(pm.mask(0.1))
    rows = session.rows
    assert [r["id"] for r in rows] == [c.id for c in expected]
    for row, candidate in zip(rows, expected):
        expectedRow = candidate.as_dict()
        assert {k: row[k] for k in expectedRow} == expectedRow
        assert row["organ"] == "liver" and row["status"] == "to review"
    assert session.counterText() == "3 candidates, 0 removed, 0 kept, 3 to review"


def test_keep_remove_next_previous_and_counter(scene):
    scene, editor = scene
    session = _session(scene, editor)
    session.controllers["liver_tumor"].preview(0.1)
    session.applyThreshold("liver_tumor")
    before = segmentArray(scene, "liver_tumor")

    seeds = [tuple(r["seed_ijk"]) for r in session.rows]  # a row's identity: ids are re-ranked after edits
    assert session.select(0)["id"] == 1
    session.keep()
    assert session.next()["id"] == 2
    message = session.remove()
    assert "Removed" in message
    assert session.previous()["id"] == 1
    assert session.counterText() == "3 candidates, 1 removed, 1 kept, 1 to review"
    statuses = {tuple(r["seed_ijk"]): r["status"] for r in session.rows}
    assert statuses == {seeds[0]: "kept", seeds[1]: "removed", seeds[2]: "to review"}

    after = segmentArray(scene, "liver_tumor")
    fp = tuple(np.asarray(scene.boxToFullKji(FP_HIGH_BOX_KJI)))
    assert before[fp] and not after[fp]
    assert int(before.sum() - after.sum()) == [r for r in session.rows if r["id"] == 2][0]["voxels"]
    # The removal is one editor undo step, decision included: after undo the component is back and to review
    # again; redo removes it and records it as removed again.
    editor.Undo()
    np.testing.assert_array_equal(segmentArray(scene, "liver_tumor"), before)
    session.refresh()
    assert {tuple(r["seed_ijk"]): r["status"] for r in session.rows} == {
        seeds[0]: "kept", seeds[1]: "to review", seeds[2]: "to review"}
    assert session.counterText() == "3 candidates, 0 removed, 1 kept, 2 to review"
    editor.Redo()
    np.testing.assert_array_equal(segmentArray(scene, "liver_tumor"), after)
    session.refresh()
    assert {tuple(r["seed_ijk"]): r["status"] for r in session.rows} == statuses
    # Undoing twice also forgets the keep (each decision is its own step).
    editor.Undo()
    editor.Undo()
    session.refresh()
    assert session.counterText() == "3 candidates, 0 removed, 0 kept, 3 to review"


def test_centre_on_moves_slice_views_to_the_candidate(scene):
    scene, editor = scene
    session = _session(scene, editor)
    red = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSliceNode")
    red.SetLayoutName("Red")
    red.SetOrientation("Axial")
    ras = session.centreOn(0, [red])
    seed = session.rows[0]["seed_ijk"]
    assert np.allclose(ras, scene.rasOfKji(seed[::-1]))
    sliceToRas = red.GetSliceToRAS()
    assert np.allclose([sliceToRas.GetElement(r, 3) for r in range(3)], ras)
    ras = session.centreOn(0)  # all slice views of the scene
    assert np.isclose(red.GetSliceToRAS().GetElement(2, 3), ras[2])


def test_batch_removals_are_single_undo_steps_and_recorded(scene):
    scene, editor = scene
    session = _session(scene, editor)
    session.controllers["liver_tumor"].preview(0.1)
    session.applyThreshold("liver_tumor")
    before = segmentArray(scene, "liver_tumor")

    result = session.removeBelowProbability("liver_tumor", 0.3)  # only the 0.2 false positive
    assert result.removedComponents == 1
    after = segmentArray(scene, "liver_tumor")
    assert not after[scene.boxToFullKji(FP_MAX_BOX_KJI)] and after[scene.boxToFullKji(FP_HIGH_BOX_KJI)]
    assert session.counts()["removed"] == 1

    result = session.removeSmallerThan("liver_tumor", 1.0)  # the 0.36 ml false positive; the tumor is ~7 ml
    assert result.removedComponents == 1
    assert segmentArray(scene, "liver_tumor")[scene.boxToFullKji(TRUE_TUMOR_BOX_KJI)]
    assert session.counterText() == "3 candidates, 2 removed, 0 kept, 1 to review"
    editor.Undo()
    editor.Undo()
    np.testing.assert_array_equal(segmentArray(scene, "liver_tumor"), before)
    assert "nothing" in session.removeBelowProbability("liver_tumor", 0.01).message


def test_keep_largest_per_organ_leaves_tumors_alone(scene):
    scene, editor = scene
    session = _session(scene, editor)
    session.controllers["liver_tumor"].preview(0.1)
    session.applyThreshold("liver_tumor")
    tumor, liver = segmentArray(scene, "liver_tumor"), segmentArray(scene, "liver")
    result = session.keepLargestPerOrgan(1)
    assert result.removedComponents == 1  # the liver's stray island
    assert not segmentArray(scene, "liver")[LIVER_ISLAND_KJI]
    assert int(liver.sum() - segmentArray(scene, "liver").sum()) == result.removedVoxels
    np.testing.assert_array_equal(segmentArray(scene, "liver_tumor"), tumor)  # 3 tumor components stay
    editor.Undo()
    np.testing.assert_array_equal(segmentArray(scene, "liver"), liver)


def test_review_state_survives_scene_save_and_reload(scene, slicer_app, tmp_path):
    scene, editor = scene
    session = _session(scene, editor)
    session.controllers["liver_tumor"].preview(0.1)
    session.applyThreshold("liver_tumor")
    session.keep(0)
    session.remove(1)
    rowsBefore = [(r["id"], r["status"], r["voxels"]) for r in session.rows]

    # Save the scene as Slicer does: each storable node writes its file, the MRML file keeps node attributes.
    folder = tmp_path / "saved"
    folder.mkdir()
    for node, name in ((scene.segmentationNode, "seg.seg.nrrd"), (scene.volume, "ct.nrrd"),
                       (session.controllers["liver_tumor"].probabilityNode, "prob.nrrd")):
        node.AddDefaultStorageNode()
        node.GetStorageNode().SetFileName(str(folder / name))
        assert node.GetStorageNode().WriteData(node)
    sceneFile = folder / "scene.mrml"
    slicer.mrmlScene.SetURL(str(sceneFile))
    assert slicer.mrmlScene.Commit()

    slicer.mrmlScene.Clear(0)
    slicer.mrmlScene.SetURL(str(sceneFile))
    assert slicer.mrmlScene.Import()
    reloaded = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
    assert AtlasSegReview.loadReviewState(reloaded).tumors["liver_tumor"]["threshold"] == 0.1
    again = AtlasSegReview.ReviewSession(reloaded)
    assert [(r["id"], r["status"], r["voxels"]) for r in again.rows] == rowsBefore
    assert again.counterText() == "3 candidates, 1 removed, 1 kept, 1 to review"


def test_review_json_export_is_what_the_library_reads(scene, tmp_path):
    scene, editor = scene
    session = _session(scene, editor)
    session.keep(0)
    path = session.exportReview(scene.outdir)
    assert path == scene.outdir / "review.json"
    state = review.load_review(scene.outdir)
    assert state.decisions("liver_tumor")[0]["status"] == "kept"
    assert state.to_json() == session.state.to_json()


def test_preview_on_a_layer_cropped_by_slicer_grows_it(scene):
    scene, editor = scene
    segmentation = scene.segmentationNode.GetSegmentation()
    AtlasSegReview.compactTumorLayers(scene.segmentationNode)
    image = AtlasSegReview.layerImage(segmentation, "liver_tumor")
    # Shrink the tumor layer to a few voxels, as Slicer's editor can leave it.
    small = slicer.vtkOrientedImageData()
    small.DeepCopy(image)
    extent = image.GetExtent()
    small.Crop([extent[0], extent[0] + 2, extent[2], extent[2] + 2, extent[4], extent[4] + 2])
    segmentation.GetSegment("liver_tumor").AddRepresentation(AtlasSegReview.REPRESENTATION, small)
    controller = AtlasSegReview.SensitivityController(scene.segmentationNode, "liver_tumor")
    controller.preview(0.3)
    np.testing.assert_array_equal(segmentArray(scene, "liver_tumor"), libraryMask(scene.outdir, 0.3))
    assert segmentArray(scene, "liver_tumor").shape == SHAPE


def test_preview_never_overwrites_another_segment_of_the_shared_tumor_layer(scene):
    scene, editor = scene
    node = scene.segmentationNode
    segmentation = node.GetSegmentation()
    session = _session(scene, editor)
    controller = session.controllers["liver_tumor"]
    # A second tumor segment in the same layer, exactly where the liver tumor appears at threshold 0.1.
    image = AtlasSegReview.layerImage(segmentation, "liver_tumor")
    array, low = AtlasSegReview.layerArray(image)
    spot = tuple(np.asarray(scene.boxToFullKji(FP_MAX_BOX_KJI)) - low)
    array[spot] = 7
    other = slicer.vtkSegment()
    other.SetName("other_tumor")
    other.SetLabelValue(7)
    other.AddRepresentation(AtlasSegReview.REPRESENTATION, image)
    segmentation.AddSegment(other, "other_tumor")
    original = segmentArray(scene, "liver_tumor")
    otherBefore = segmentArray(scene, "other_tumor")
    assert otherBefore.sum() == 1

    controller.preview(0.1)
    np.testing.assert_array_equal(segmentArray(scene, "liver_tumor"), libraryMask(scene.outdir, 0.1))
    np.testing.assert_array_equal(segmentArray(scene, "other_tumor"), otherBefore)
    assert AtlasSegReview.layerImage(segmentation, "liver_tumor") is not \
        AtlasSegReview.layerImage(segmentation, "other_tumor")  # the tumor moved to a layer of its own
    controller.cancel()
    np.testing.assert_array_equal(segmentArray(scene, "liver_tumor"), original)
    np.testing.assert_array_equal(segmentArray(scene, "other_tumor"), otherBefore)


def test_effect_clicks_on_a_candidate_are_recorded_as_removed(scene):
    from AtlasSegModule.RemoveFalsePositiveLogic import RemoveFalsePositiveLogic

    scene, editor = scene
    session = _session(scene, editor)
    session.controllers["liver_tumor"].preview(0.3)
    session.applyThreshold("liver_tumor")
    assert session.counterText() == "2 candidates, 0 removed, 0 kept, 2 to review"
    fp = scene.boxToFullKji(FP_HIGH_BOX_KJI)
    result = RemoveFalsePositiveLogic(scene.segmentationNode, editor.SaveStateForUndo).click(scene.rasOfKji(fp))
    session.recordClick(result)
    assert session.counterText() == "2 candidates, 1 removed, 0 kept, 1 to review"
    removed = [r for r in session.rows if r["status"] == "removed"]
    assert len(removed) == 1 and removed[0]["max_probability"] == pytest.approx(0.349, abs=0.002)


def test_a_removed_false_positive_stays_removed_when_the_slider_moves(scene):
    scene, editor = scene
    session = _session(scene, editor)
    controller = session.controllers["liver_tumor"]
    controller.preview(0.3)
    session.applyThreshold("liver_tumor")
    fp = tuple(np.asarray(scene.boxToFullKji(FP_HIGH_BOX_KJI)))
    index = next(i for i, r in enumerate(session.rows) if r["id"] == 2)
    session.select(index)
    session.remove()
    assert not segmentArray(scene, "liver_tumor")[fp]
    for threshold in (0.1, 0.2, 0.3):  # lower thresholds grow everything else, not the removed one
        controller.preview(threshold)
        tumor = segmentArray(scene, "liver_tumor")
        assert not tumor[fp]
        assert int(tumor.sum()) < int(libraryMask(scene.outdir, threshold).sum())
    controller.cancel()


def test_table_ids_follow_each_lesion_across_thresholds(scene):
    """The Slicer table numbers candidates by the library's lesion ids: the true tumor keeps its number at every
    threshold, a false positive that appears at a lower one gets a new number, and numbers are never reused."""
    scene, editor = scene
    session = _session(scene, editor)
    controller = session.controllers["liver_tumor"]
    seen, walk = {}, []
    for threshold in (0.5, 0.1, 0.3, 0.5, 0.1):
        controller.preview(threshold)
        rows = [r for r in session.refresh() if r["tumor"] == "liver_tumor" and "label" in r]
        for r in rows:
            seen.setdefault(r["id"], set()).add(tuple(r["seed_ijk"]))
        largest = max(rows, key=lambda r: r["voxels"])
        assert largest["id"] == 1, (threshold, [(r["id"], r["voxels"]) for r in rows])
        assert len({r["id"] for r in rows}) == len(rows)
        walk.append(sorted((r["id"], r["voxels"]) for r in rows))
    assert sorted(seen) == [1, 2, 3]  # three lesions over the walk, three numbers
    assert walk[0] == walk[3] and walk[1] == walk[4]  # back at a threshold: the same numbers on the same lesions


def test_the_reviewer_is_recorded_with_the_decisions_and_exported(scene, tmp_path):
    import json

    scene, editor = scene
    session = _session(scene, editor)
    session.reviewer = "Doe^Jane"  # the panel's Reviewer field
    session.select(0)
    session.keep()
    state = AtlasSegReview.loadReviewState(scene.segmentationNode)
    assert state.reviewer == "Doe^Jane" and state.reviewed_at
    doc = json.loads(session.exportReview(tmp_path).read_text())
    assert doc["reviewer"] == "Doe^Jane" and doc["reviewed_at"] == state.reviewed_at


def _trueTumorRow(session):
    centre = tuple(np.asarray(session.controllers["liver_tumor"].map.start_ijk) + np.asarray(TRUE_TUMOR_BOX_KJI)[::-1])
    labels = session._labels["liver_tumor"]
    kji = review.seed_kji(centre, session.controllers["liver_tumor"].map.start_ijk, labels.shape)
    return next(i for i, r in enumerate(session.rows) if r.get("label") == int(labels[kji]))


def test_resizing_one_lesion_changes_only_its_voxels_and_undo_restores_the_exact_labelmap(scene):
    scene, editor = scene
    session = _session(scene, editor)
    session.controllers["liver_tumor"].preview(0.1)
    session.applyThreshold("liver_tumor")
    before = {name: segmentArray(scene, name) for name in ("liver_tumor", "liver", "spleen")}
    index = _trueTumorRow(session)
    lesionId = session.rows[index]["id"]
    own = session._labels["liver_tumor"] == session.rows[index]["label"]
    ownFull = np.zeros(before["liver_tumor"].shape, bool)
    start = session.controllers["liver_tumor"].map.start_ijk
    ownFull[tuple(slice(s, s + n) for s, n in zip(start[::-1], own.shape))] = own
    ids = {r["id"]: r["voxels"] for r in session.rows}
    assert len(ids) == 3

    message = session.resizeLesion(index, 0.3)  # the true tumor (at 0.1 now) shrinks to its p >= 0.3 part
    assert "shrank" in message
    after = segmentArray(scene, "liver_tumor")
    changed = after != before["liver_tumor"]
    assert changed.any()
    # Only that lesion's voxels changed: every other voxel (the other two lesions included) is identical.
    assert not (changed & ~ownFull).any()
    np.testing.assert_array_equal(after[~ownFull], before["liver_tumor"][~ownFull])
    for name in ("liver", "spleen"):
        np.testing.assert_array_equal(segmentArray(scene, name), before[name])
    rows = {r["id"]: r for r in session.rows}
    assert rows[lesionId]["voxels"] < ids[lesionId]  # the same id, smaller
    assert {i: v for i, v in ids.items() if i != lesionId} == {i: rows[i]["voxels"] for i in ids if i != lesionId}
    decision = next(d for d in session.state.decisions("liver_tumor") if d.get("id") == lesionId)
    assert decision["threshold"] == 0.3 and decision["status"] == "kept"

    editor.Undo()  # one step: the exact labelmap, and the decision forgotten
    np.testing.assert_array_equal(segmentArray(scene, "liver_tumor"), before["liver_tumor"])
    session.refresh()
    assert not any(d.get("threshold") for d in session.state.decisions("liver_tumor"))


def test_resizing_a_lesion_never_merges_it_into_a_neighbour(scene):
    scene, editor = scene
    session = _session(scene, editor)
    session.controllers["liver_tumor"].preview(0.1)
    session.applyThreshold("liver_tumor")
    count = len(session.rows)
    index = _trueTumorRow(session)
    lesionId = session.rows[index]["id"]
    others = {r["id"]: r["voxels"] for r in session.rows if r["id"] != lesionId}
    grownFrom = session.rows[index]["voxels"]
    # The map gets a p 0.2 bridge from the true tumor to the 0.35 false positive: at p >= 0.1 the tumor's region
    # runs into its neighbour, and must stop a voxel short of it.
    q = session.controllers["liver_tumor"].map.q
    for t in np.linspace(0.0, 1.0, 64):
        k, j, i = np.rint(np.asarray(TRUE_TUMOR_BOX_KJI) * (1 - t) + np.asarray(FP_HIGH_BOX_KJI) * t).astype(int)
        view = q[k - 1:k + 2, j - 1:j + 2, i - 1:i + 2]
        np.maximum(view, 51, out=view)
    before = segmentArray(scene, "liver_tumor")
    fp = tuple(np.asarray(scene.boxToFullKji(FP_HIGH_BOX_KJI)))
    message = session.resizeLesion(index, 0.1)
    assert "grew" in message
    rows = {r["id"]: r for r in session.rows}
    assert len(rows) == count and rows[lesionId]["voxels"] > grownFrom
    assert {i: rows[i]["voxels"] for i in others} == others
    # Still two components: the neighbour keeps its id, and its voxels are untouched.
    labels = session._labels["liver_tumor"]
    fpLabel = labels[review.seed_kji(tuple(int(v) for v in np.asarray(fp)[::-1]),
                                     session.controllers["liver_tumor"].map.start_ijk, labels.shape)]
    assert fpLabel != rows[lesionId]["label"]
    after = segmentArray(scene, "liver_tumor")
    np.testing.assert_array_equal(after[labels_full(scene, session, fpLabel)], before[labels_full(scene, session,
                                                                                                  fpLabel)])


def labels_full(scene, session, label):
    labels = session._labels["liver_tumor"]
    full = np.zeros(segmentArray(scene, "liver_tumor").shape, bool)
    start = session.controllers["liver_tumor"].map.start_ijk
    full[tuple(slice(s, s + n) for s, n in zip(start[::-1], labels.shape))] = labels == label
    return full


def test_a_resized_lesions_threshold_is_exported_to_review_json(scene, tmp_path):
    scene, editor = scene
    session = _session(scene, editor)
    index = _trueTumorRow(session)
    lesionId = session.rows[index]["id"]
    session.resizeLesion(index, 0.7)  # shrinks
    assert [r for r in session.rows if r["id"] == lesionId][0]["status"] == "kept"
    session.exportReview(scene.outdir)
    state = review.load_review(scene.outdir)
    [decision] = [d for d in state.decisions("liver_tumor") if d.get("id") == lesionId]
    assert decision["threshold"] == 0.7


def test_after_a_resize_the_table_rows_are_what_a_fresh_refresh_makes(scene):
    scene, editor = scene
    session = _session(scene, editor)
    session.controllers["liver_tumor"].preview(0.1)
    session.applyThreshold("liver_tumor")
    session.resizeLesion(_trueTumorRow(session), 0.3)
    rows = [dict(r) for r in session.rows]
    session.refresh()
    assert rows == session.rows


def test_a_resized_lesion_keeps_its_own_threshold_when_the_tumor_slider_moves(scene):
    scene, editor = scene
    session = _session(scene, editor)
    controller = session.controllers["liver_tumor"]
    controller.preview(0.1)
    session.applyThreshold("liver_tumor")
    at01 = segmentArray(scene, "liver_tumor")
    session.resizeLesion(_trueTumorRow(session), 0.3)
    resized = segmentArray(scene, "liver_tumor")
    assert (resized != at01).any()
    controller.preview(0.3)
    controller.preview(0.1)  # back at the tumor's threshold: the other lesions at 0.1, this one still at 0.3
    np.testing.assert_array_equal(segmentArray(scene, "liver_tumor"), resized)
    controller.cancel()
    np.testing.assert_array_equal(segmentArray(scene, "liver_tumor"), resized)
