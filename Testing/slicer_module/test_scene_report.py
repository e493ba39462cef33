"""The report made from the scene ("Report" section): the segmentation as reviewed in Slicer, its probability maps
and review decisions go into a folder whose report lists each candidate with the status decided in the scene."""
import json

import numpy as np
import pytest

from AtlasSegModule import AtlasSegExport
from AtlasSegModule import AtlasSegReview
from AtlasSegLib.errors import InputError
from review_scene import libraryMask, makeEditor, makeReviewScene, segmentArray


@pytest.fixture
def reviewed(logic, slicer_app, tmp_path):
    scene = makeReviewScene(logic, tmp_path / "out")
    editor = makeEditor(slicer_app, scene.segmentationNode, scene.volume, "liver")
    session = AtlasSegReview.ReviewSession(scene.segmentationNode, saveStateForUndo=editor.SaveStateForUndo)
    session.controllers["liver_tumor"].preview(0.1)  # maximum sensitivity: the true tumor + two false positives
    session.applyThreshold("liver_tumor")
    seeds = {r["id"]: tuple(r["seed_ijk"]) for r in session.rows}
    session.select(0)
    session.keep()
    session.select(1)
    session.remove()
    return scene, session, seeds


def test_report_of_the_reviewed_scene_lists_kept_removed_and_open_candidates(reviewed, tmp_path):
    scene, session, seeds = reviewed
    result = AtlasSegExport.makeReport(scene.segmentationNode, tmp_path / "report")
    folder = tmp_path / "report"
    assert (folder / "report.html").is_file() and (folder / "report.csv").is_file()
    report = json.loads((folder / "report.json").read_text())
    rows = [r for r in report["report"]["tumor_components"] if r["structure"] == "liver_tumor"] \
        if "tumor_components" in report["report"] else None
    assert rows is not None, sorted(report["report"])
    statuses = sorted(r["status"] for r in rows)
    assert statuses == ["kept", "removed", "to review"]
    # The mask in the report folder is the scene's segment, voxel for voxel (after the removal).
    import SimpleITK as sitk

    written = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "segmentations" / "liver_tumor.nii.gz")))
    np.testing.assert_array_equal(written, segmentArray(scene, "liver_tumor"))
    assert written.sum() < libraryMask(scene.outdir, 0.1).sum()
    assert result.html_path == folder / "report.html"
    # Pictures from the scene's CT: the frontal overview and one axial slice per candidate, inlined in the page.
    html = (folder / "report.html").read_text()
    assert html.count("data:image/png;base64") >= 1 + len(rows) - 1
    assert (folder / "pictures" / "overview.png").is_file() and (folder / "pictures" / "3d.png").is_file()
    assert report["report"]["pictures"]["3d"] and report["input"]["path"] == str(folder / "ct.mha")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report.partial")]


def test_report_refuses_a_folder_with_other_files(reviewed, tmp_path):
    scene, _, _ = reviewed
    folder = tmp_path / "busy"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        AtlasSegExport.makeReport(scene.segmentationNode, folder, picture3D=False)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_anonymized_scene_report_names_no_case_or_file(reviewed, tmp_path):
    """The Report section's Anonymize box: a report that can leave the hospital."""
    scene = reviewed[0]
    plain = AtlasSegExport.makeReport(scene.segmentationNode, tmp_path / "plain", picture3D=False)
    anonymous = AtlasSegExport.makeReport(scene.segmentationNode, tmp_path / "anonymous", picture3D=False,
                                          anonymize=True)
    assert "<dd>anonymized:" not in plain.html_path.read_text()
    html = anonymous.html_path.read_text()
    assert "<dd>anonymized:" in html and "ct.mha" not in html
