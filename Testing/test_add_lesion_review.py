"""The other half of the review: one click adds a missed tumor, one option resizes one lesion, and both outlive
every later threshold change with their ids (``atlasseg review --add-at / --add-at-voxel / --lesion-threshold``).

The case: ``atlasseg synthesize`` puts one 25 mm, -50 HU tumor into the real CT's liver (../shared/ctdata); the demo
model runs once per module. The demo model's own 'liver' on a real CT is meaningless (it was trained on phantoms),
so each run folder here gets the CT's TotalSegmentator liver as its liver mask: the tumor's gate is then the real
liver, as with a real model. "Blank" runs have their kept probability map zeroed: the model gave nothing there, so a
click must grow the lesion from the CT (the image path).
"""
from __future__ import annotations

import csv
import json
import shutil

import cc3d
import numpy as np
import pytest
import SimpleITK as sitk

from AtlasSegLib import cli
from AtlasSegLib import export as ex
from AtlasSegLib.errors import InputError
from AtlasSegLib.geometry import LPS_TO_RAS, Grid
from AtlasSegLib.review import ReviewState
from AtlasSegLib.run import Run
from AtlasSegLib.runedit import add_lesion_at, resize_lesions

TUMOR = "liver_tumor"


@pytest.fixture(scope="module")
def master(tmp_path_factory, ctdata):
    root = tmp_path_factory.mktemp("addlesion")
    src = ctdata / "totalseg_abdomen_sm"
    synth = root / "synth"
    assert cli.main(["synthesize", str(src / "example_ct_sm.nii.gz"), "-o", str(synth), "--organ", "liver",
                     "--organ-mask", str(src / "example_seg.nii.gz"), "--label", "5", "--count", "1",
                     "--diameter", "25-25", "--contrast=-45--45", "--seed", "3"]) == 0
    out = root / "run"
    # --quality reference: the card's own settings in fp32, so the demo model's speck of the tumor (what the resize
    # test grows) does not depend on this CPU's bf16/INT8 or on the CPU default preset.
    assert cli.main(["segment", str(synth / "ct.nii.gz"), "-o", str(out), "--model", "atlasseg-demo", "--quiet",
                     "--device", "cpu", "--quality", "reference"]) == 0
    # The CT's own liver as the run's liver (see the module's docstring).
    seg = sitk.ReadImage(str(src / "example_seg.nii.gz"))
    liver = sitk.Cast(sitk.BinaryThreshold(seg, 5, 5, 1, 0), sitk.sitkUInt8)
    liver.CopyInformation(sitk.ReadImage(str(out / "segmentations" / "liver.nii.gz")))
    sitk.WriteImage(liver, str(out / "segmentations" / "liver.nii.gz"), True)
    tumor = json.loads((synth / "tumors.json").read_text())["tumors"][0]
    return {"run": out, "centre_ijk": tuple(tumor["center_zyx"][::-1]),
            "truth": sitk.GetArrayFromImage(sitk.ReadImage(str(synth / "segmentations" / "liver_tumor.nii.gz"))) > 0}


def _copy(master, tmp_path, *, blank: bool) -> object:
    out = tmp_path / "run"
    shutil.copytree(master["run"], out)
    if blank:
        path = out / "probabilities" / f"{TUMOR}.nii.gz"
        p = sitk.ReadImage(str(path))
        zero = sitk.Image(p.GetSize(), p.GetPixelID())
        zero.CopyInformation(p)
        sitk.WriteImage(zero, str(path), True)
        assert cli.main(["threshold", str(out), "--set", f"{TUMOR}=0.5"]) == 0  # the mask from the blank map: empty
    return out


@pytest.fixture
def blank(master, tmp_path):
    return _copy(master, tmp_path, blank=True)


@pytest.fixture
def run(master, tmp_path):
    return _copy(master, tmp_path, blank=False)


def rows(out, capsys) -> list:
    capsys.readouterr()
    assert cli.main(["review", str(out), "--json"]) == 0
    return json.loads(capsys.readouterr().out)[TUMOR]


def mask(out) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(out / "segmentations" / f"{TUMOR}.nii.gz"))) > 0


def ids_mask(out, rid, capsys) -> np.ndarray:
    """The voxels of lesion ``rid`` now: the component of the mask holding its review row's seed voxel."""

    row = next(r for r in rows(out, capsys) if r["id"] == rid and r["present"])
    labels = cc3d.connected_components(mask(out), connectivity=26)
    return labels == labels[tuple(row["seed_ijk"][::-1])]


def ras_of(out, ijk) -> tuple:
    grid = Grid.of(sitk.ReadImage(str(out / "segmentations" / f"{TUMOR}.nii.gz")))
    return tuple(LPS_TO_RAS @ np.asarray(grid.index_to_physical(np.asarray(ijk, float))))


def test_an_add_on_a_blank_probability_map_grows_from_the_image_with_a_new_id_kept(master, blank, capsys):
    before = [r["id"] for r in rows(blank, capsys)]
    capsys.readouterr()
    i, j, k = master["centre_ijk"]
    assert cli.main(["review", str(blank), "--structure", TUMOR, "--add-at-voxel", f"{i},{j},{k}",
                     "--reviewer", "Doe^Jane"]) == 0
    printed = capsys.readouterr().out
    assert "added lesion" in printed and "added: image" in printed
    after = rows(blank, capsys)
    new = [r for r in after if r["id"] not in before]
    assert len(new) == 1 and new[0]["status"] == "kept" and new[0]["origin"] == "added: image"
    # A new id: above every id this run ever gave (the run numbered 17 candidates before the map was blanked).
    assert new[0]["id"] > 17
    # The lesion it grew is the inserted tumor (Dice against the synthesized truth).
    got = mask(blank)
    dice = 2 * np.count_nonzero(got & master["truth"]) / (got.sum() + master["truth"].sum())
    assert dice > 0.6, dice
    review = json.loads((blank / "review.json").read_text())
    assert review["reviewer"] == "Doe^Jane" and review["reviewed_at"]
    d = next(d for d in review["tumors"][TUMOR]["decisions"] if d["id"] == new[0]["id"])
    assert d["origin"] == "added: image" and d["status"] == "kept"
    report = json.loads((blank / "report.json").read_text())
    comp = next(c for c in report["tumors"][TUMOR]["components"] if c["id"] == new[0]["id"])
    assert comp["origin"] == "added: image"
    # The report's table and CSV say it too (a column in the CSV, next to the status on the page).
    assert cli.main(["report", str(blank)]) == 0

    line = next(r for r in csv.DictReader((blank / "report.csv").open()) if r["component"] == str(new[0]["id"]))
    assert line["origin"] == "added: image" and line["status"] == "kept"
    assert "kept (added: image)" in (blank / "report.html").read_text()
    edited, reviewer, reviewed_at = ex.review_provenance(blank)
    assert TUMOR in edited and reviewer == "Doe^Jane" and reviewed_at == review["reviewed_at"]


def test_an_added_lesion_survives_threshold_changes_with_its_id(master, blank, capsys):
    result = add_lesion_at(blank, TUMOR, master["centre_ijk"])
    rid, added = result["id"], mask(blank)
    for t in ("0.8", "0.3", "0.5"):
        assert cli.main(["threshold", str(blank), "--set", f"{TUMOR}={t}"]) == 0
        present = {r["id"]: r for r in rows(blank, capsys) if r["present"]}
        assert rid in present and present[rid]["origin"] == "added: image", (t, present.keys())
        assert np.array_equal(mask(blank), added), f"the added lesion's voxels at threshold {t}"


def test_a_click_inside_an_existing_candidate_selects_it_and_changes_nothing(run, capsys):
    first = next(r for r in rows(run, capsys) if r["present"])
    files = {p: p.read_bytes() for p in (run / "segmentations" / f"{TUMOR}.nii.gz", run / "report.json")}
    capsys.readouterr()
    i, j, k = first["seed_ijk"]
    assert cli.main(["review", str(run), "--structure", TUMOR, "--add-at-voxel", f"{i},{j},{k}"]) == 0
    assert f"inside candidate {first['id']}" in capsys.readouterr().out
    assert all(p.read_bytes() == b for p, b in files.items())
    assert not (run / "review.json").exists()


def test_add_at_ras_lands_on_the_same_voxel_as_add_at_voxel(master, tmp_path, capsys):
    a = _copy(master, tmp_path / "a", blank=True)
    b = _copy(master, tmp_path / "b", blank=True)
    i, j, k = master["centre_ijk"]
    r, a_, s = ras_of(a, (i, j, k))
    assert cli.main(["review", str(a), "--structure", TUMOR, "--add-at", f"{r:.3f},{a_:.3f},{s:.3f}"]) == 0
    assert cli.main(["review", str(b), "--structure", TUMOR, "--add-at-voxel", f"{i},{j},{k}"]) == 0
    assert np.array_equal(mask(a), mask(b)) and mask(a).any()
    da = json.loads((a / "review.json").read_text())["tumors"][TUMOR]["decisions"]
    db = json.loads((b / "review.json").read_text())["tumors"][TUMOR]["decisions"]
    assert [d["id"] for d in da] == [d["id"] for d in db]


def test_bad_points_are_refused_with_exit_2_and_change_nothing(blank, capsys):
    size = Run(blank).read_report()["input"]["grid"]["size"]
    before = (blank / "segmentations" / f"{TUMOR}.nii.gz").read_bytes()
    for argv in (["--add-at-voxel", f"{size[0]},0,0"], ["--add-at", "1,2"], ["--add-at-voxel", "0,0,0"],
                 ["--lesion-threshold", "1=1.5"], ["--lesion-threshold", "x"]):
        capsys.readouterr()
        assert cli.main(["review", str(blank), "--structure", TUMOR, *argv]) == 2, argv
        assert "atlasseg: error:" in capsys.readouterr().err
    assert (blank / "segmentations" / f"{TUMOR}.nii.gz").read_bytes() == before


def test_a_resize_changes_only_its_own_lesion_and_outlives_threshold_changes(master, run, capsys):

    present = [r for r in rows(run, capsys) if r["present"]]
    # The model saw a speck (0.24 ml) of the inserted tumor: that lesion, at a lower threshold of its own, grows.
    labels = cc3d.connected_components(mask(run), connectivity=26)
    near = np.argwhere(labels)[np.argmin(np.abs(np.argwhere(labels) - master["centre_ijk"][::-1]).sum(axis=1))]
    target = next(r["id"] for r in present if labels[tuple(r["seed_ijk"][::-1])] == labels[tuple(near)])
    others_before = {r["id"]: ids_mask(run, r["id"], capsys) for r in present if r["id"] != target}
    before = ids_mask(run, target, capsys)
    capsys.readouterr()
    assert cli.main(["review", str(run), "--structure", TUMOR, "--lesion-threshold", f"{target}=0.1",
                     "--reviewer", "Roe^Rick"]) == 0
    assert f"lesion {target} at its own threshold 0.1" in capsys.readouterr().out
    grown = ids_mask(run, target, capsys)
    assert grown.sum() > 2 * before.sum() and (grown & before).sum() == before.sum()
    for rid, m in others_before.items():  # never another lesion's voxels
        assert np.array_equal(ids_mask(run, rid, capsys), m), rid
        assert not (grown & m).any()
    d = {d["id"]: d for d in json.loads((run / "review.json").read_text())["tumors"][TUMOR]["decisions"]}[target]
    assert d["threshold"] == 0.1 and d["status"] == "kept"
    # A new global threshold keeps the lesion at its own threshold.
    assert cli.main(["threshold", str(run), "--set", f"{TUMOR}=0.8"]) == 0
    assert np.array_equal(ids_mask(run, target, capsys), grown)
    assert cli.main(["threshold", str(run), "--set", f"{TUMOR}=0.5"]) == 0
    assert np.array_equal(ids_mask(run, target, capsys), grown)
    with pytest.raises(InputError, match="no lesion 999"):
        resize_lesions(run, TUMOR, {999: 0.3})


def test_old_review_files_without_the_new_fields_still_read(tmp_path):
    old = {"version": 2, "tumors": {TUMOR: {"threshold": None, "decisions": [
        {"id": 3, "seed_ijk": [1, 2, 3], "status": "removed", "component": {}, "at": "2026-01-01T00:00:00+00:00"}]}}}
    (tmp_path / "review.json").write_text(json.dumps(old))
    state = Run(tmp_path, check=False).read_review()
    assert state.reviewer is None and state.reviewed_at is None
    assert json.loads(state.to_json()) == old, "an old file writes back as it was"
    state.decide(TUMOR, {"seed_ijk": [1, 2, 3], "id": 3}, "kept")
    assert "origin" not in state.decisions(TUMOR)[0], "a model lesion's decision says nothing of its origin"
    # A keep or remove after an add does not forget that the lesion was added.
    state.decide(TUMOR, {"seed_ijk": [5, 5, 5], "id": 9}, "kept", origin="added: image")
    state.decide(TUMOR, {"seed_ijk": [5, 5, 5], "id": 9}, "removed")
    assert state.decisions(TUMOR)[-1]["origin"] == "added: image"
    assert ReviewState.from_json(state.to_json()).decisions(TUMOR)[-1]["origin"] == "added: image"
