"""What the user sees: a false positive removed with one click disappears from the slice view's overlay and
comes back on undo. Renders with Slicer's real slice displayable managers (offscreen) and writes
review_before.png, review_after_removal.png and review_after_undo.png into the test's own folder; ``make
screenshots`` writes them into Resources/Screenshots for the README (the ``screenshot_dir`` fixture)."""
import numpy as np

import slicer_harness
from review_scene import FP_HIGH_BOX_KJI, makeEditor, makeReviewScene
from slicer_marks import requires_opengl
from AtlasSegModule.AtlasSegReview import ReviewSession
from AtlasSegModule.RemoveFalsePositiveLogic import RemoveFalsePositiveLogic

def _colourPixels(rgb, colour, tolerance=40):
    return (np.abs(rgb.astype(int) - np.asarray(colour)[None, None, :]) <= tolerance).all(axis=-1)


@requires_opengl
def test_removed_false_positive_leaves_the_overlay_and_undo_brings_it_back(logic, slicer_app, tmp_path,
                                                                          screenshot_dir):
    scene = makeReviewScene(logic, tmp_path / "out")
    editor = makeEditor(slicer_app, scene.segmentationNode, scene.volume, "liver")
    session = ReviewSession(scene.segmentationNode, saveStateForUndo=editor.SaveStateForUndo)
    session.controllers["liver_tumor"].preview(0.3)  # high sensitivity: the 0.35 false positive appears
    session.applyThreshold("liver_tumor")

    view = slicer_harness.SliceView(slicer_app, "Red", "Axial", (480, 420))
    view.show(scene.volume)
    display = scene.segmentationNode.GetDisplayNode()
    display.SetOpacity2DFill(0.5)
    display.SetOpacity2DOutline(1.0)
    fp = scene.boxToFullKji(FP_HIGH_BOX_KJI)
    view.setOffset(scene.rasOfKji(fp)[2])
    before = view.render(screenshot_dir / "review_before.png")

    result = RemoveFalsePositiveLogic(scene.segmentationNode, editor.SaveStateForUndo).click(scene.rasOfKji(fp))
    assert result.segmentId == "liver_tumor" and result.changed
    after = view.render(screenshot_dir / "review_after_removal.png")
    editor.Undo()
    undone = view.render(screenshot_dir / "review_after_undo.png")

    tumorColour = np.round(np.array(scene.segmentationNode.GetSegmentation().GetSegment("liver_tumor").GetColor())
                           * 255)
    changed = np.abs(before.astype(int) - after.astype(int)).sum(axis=-1) > 30
    assert changed.sum() > 50, "the removal did not change the picture"
    assert _colourPixels(before, tumorColour)[changed].sum() > 10, "the false positive was not drawn before"
    assert _colourPixels(after, tumorColour)[changed].sum() == 0, "the false positive is still drawn"
    np.testing.assert_array_equal(undone, before)  # undo restores the picture exactly
