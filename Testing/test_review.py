"""The sensitivity / false-positive library: box-only re-thresholding equals the full map, component edits
change exactly one component and undo exactly, and review decisions survive threshold changes."""
from __future__ import annotations

import json
import shutil

import cc3d
import numpy as np
import pytest
import SimpleITK as sitk

from AtlasSegLib import review
from AtlasSegLib.errors import InputError
from AtlasSegLib.geometry import Grid
from AtlasSegLib.postprocess import components, quantize, tumor_mask


def _blob(shape, centre, radius):
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    d = ((k - centre[0]) / radius[0]) ** 2 + ((j - centre[1]) / radius[1]) ** 2 + ((i - centre[2]) / radius[2]) ** 2
    return d


def _probability_case(seed=0, shape=(40, 90, 100)):
    """A full-grid tumor probability map made of soft blobs of different strengths inside an organ."""
    rng = np.random.default_rng(seed)
    organ = (_blob(shape, (20, 45, 50), (16, 35, 40)) <= 1).astype(np.uint8)
    p = np.zeros(shape, np.float32)
    for _ in range(14):
        c = (rng.integers(8, 32), rng.integers(15, 75), rng.integers(15, 85))
        r = rng.uniform(1.5, 5.0, 3)
        p = np.maximum(p, rng.uniform(0.15, 0.98) * np.exp(-_blob(shape, c, r)))
    p += rng.uniform(0, 0.12, shape).astype(np.float32)  # speckle: many 1-voxel candidates at low thresholds
    return organ, quantize(np.clip(p, 0, 1))


def _real_grid(ctdata, shape):
    """The real CT's spacing/direction/origin for a synthetic box (anisotropic 3 mm voxels)."""
    img = sitk.ReadImage(str(ctdata / "totalseg_abdomen_sm" / "example_ct_sm.nii.gz"))
    g = Grid.of(img)
    return Grid(tuple(shape[::-1]), (0.8, 0.8, 2.5), g.origin, g.direction)


@pytest.fixture
def case(ctdata):
    organ, q_full = _probability_case()
    grid = _real_grid(ctdata, organ.shape)
    # The kept map covers the organ's box plus a margin, as the engine stores it; nothing outside.
    nz = np.nonzero(organ)
    lo = np.array([a.min() for a in nz]) - 2
    hi = np.array([a.max() + 1 for a in nz]) + 2
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    outside = np.ones(organ.shape, bool)
    outside[sl] = False
    q_full[outside] = 0
    start_ijk = tuple(int(v) for v in lo[::-1])
    pm = review.ProbabilityMap("liver_tumor", q_full[sl].copy(), start_ijk, grid.size, grid.sub(start_ijk, (hi - lo)[::-1]),
                               gate=organ[sl].copy(), min_mm3=10.0, organs={"liver": organ[sl].copy()})
    return {"pm": pm, "q": q_full, "gate": organ, "grid": grid, "sl": sl}


@pytest.mark.parametrize("threshold", [0.1, 0.3, 0.5, 0.8])
def test_box_threshold_and_candidates_equal_thresholding_the_full_map(case, threshold):
    pm, grid = case["pm"], case["grid"]
    full = tumor_mask(case["q"], case["gate"], threshold=threshold, voxel_mm3=grid.voxel_volume_mm3, min_mm3=10.0)
    lab = pm.labels(threshold)
    placed = np.zeros_like(full)
    placed[case["sl"]] = lab.mask
    assert np.array_equal(placed, full)
    _, cands = pm.candidates(lab.mask, labelling=lab)
    reference = components(full, grid, (0, 0, 0), q_box=case["q"])
    assert len(cands) == len(reference)
    for got, want in zip((c.component for c in cands), reference):
        # Same voxels and boxes exactly; physical measures up to rounding (the box origin is a sum of floats).
        assert (got.id, got.voxels, got.bbox_ijk) == (want.id, want.voxels, want.bbox_ijk)
        for key in ("volume_ml", "longest_axial_diameter_mm", "perpendicular_diameter_mm", "max_probability",
                    "mean_probability", "centroid_lps", "centroid_ras"):
            assert np.allclose(getattr(got, key), getattr(want, key), rtol=1e-9, atol=1e-9), key
    assert all(c.organ == "liver" for c in cands)
    for c in cands:  # the seed voxel lies in its own component
        i, j, k = c.seed_ijk
        assert lab.labels[k - pm.start_ijk[2], j - pm.start_ijk[1], i - pm.start_ijk[0]] == c.label


def test_lower_thresholds_give_more_candidates(case):
    n = [len(case["pm"].candidates(case["pm"].mask(t))[1]) for t in (0.8, 0.5, 0.3)]
    assert n[0] <= n[1] <= n[2] and n[2] > n[0]


def _two_blobs():
    mask = np.zeros((30, 60, 60), np.uint8)
    mask[5:10, 5:15, 5:15] = 1
    mask[20:25, 40:50, 40:50] = 1
    mask[20:22, 5:8, 50:52] = 1
    return mask


def test_remove_at_removes_only_that_component_and_undo_redo_are_exact():
    mask = _two_blobs()
    original = mask.copy()
    edit = review.remove_at(mask, (22, 45, 45))
    assert edit is not None and edit.changed_voxels == 5 * 10 * 10
    assert not mask[20:25, 40:50, 40:50].any()
    assert np.array_equal(mask[5:10, 5:15, 5:15], original[5:10, 5:15, 5:15])
    assert mask.sum() == original.sum() - 500
    after = mask.copy()
    edit.undo(mask)
    assert np.array_equal(mask, original)
    edit.redo(mask)
    assert np.array_equal(mask, after)


def test_clicking_background_changes_nothing():
    mask = _two_blobs()
    before = mask.copy()
    assert review.remove_at(mask, (0, 0, 0)) is None
    assert review.keep_only_at(mask, (29, 59, 59)) is None
    assert review.remove_at(mask, (100, 0, 0)) is None  # outside the volume
    assert np.array_equal(mask, before)


def test_component_larger_than_the_search_window_is_removed_whole():
    # A snake that leaves the first search window several times: the window must grow until it is whole.
    mask = np.zeros((60, 200, 200), np.uint8)
    mask[30, 100, 2:198] = 1
    mask[2:58, 100, 197] = 1
    mask[57, 2:198, 197] = 1
    mask[10, 10, 10] = 1  # another component that must stay
    edit = review.remove_at(mask, (30, 100, 100))
    assert edit.changed_voxels == 196 + 56 + 196 - 2
    assert mask.sum() == 1 and mask[10, 10, 10] == 1


def test_edits_in_a_shared_label_layer_touch_only_their_label():
    layer = np.zeros((20, 40, 40), np.uint8)
    layer[5:15, 5:20, 5:20] = 3  # one segment
    layer[5:15, 20:35, 5:20] = 7  # its neighbour, touching it
    edit = review.remove_at(layer, (10, 10, 10), label=3)
    assert (layer == 3).sum() == 0 and (layer == 7).sum() == 10 * 15 * 15
    edit.undo(layer)
    assert (layer == 3).sum() == 10 * 15 * 15


def test_keep_only_at_keeps_the_clicked_component():
    mask = _two_blobs()
    edit = review.keep_only_at(mask, (7, 10, 10))
    assert mask.sum() == 500 and mask[5:10, 5:15, 5:15].all()
    assert len(edit.removed) == 2


def test_batch_removals_by_volume_probability_and_rank():
    mask = _two_blobs()
    voxel_mm3 = 2.0
    edit = review.remove_smaller_than(mask, voxel_mm3, min_ml=0.5)  # 12 voxels = 0.024 ml go, 500 = 1 ml stay
    assert edit.changed_voxels == 12 and cc3d.connected_components(mask, connectivity=26).max() == 2
    q = np.zeros(mask.shape, np.uint8)
    q[5:10, 5:15, 5:15] = 250
    q[20:25, 40:50, 40:50] = 100
    edit = review.remove_below_probability(mask, q, 0.5)
    assert edit.changed_voxels == 500 and mask[5:10, 5:15, 5:15].all()
    mask = _two_blobs()
    mask[20:25, 40:50, 40:45] = 0  # make the second blob smaller than the first
    review.keep_largest(mask, 1)
    assert mask.sum() == 500
    with pytest.raises(InputError):
        review.keep_largest(mask, 0)


def test_operating_points_default_and_card_override():
    assert review.operating_points(None) == review.DEFAULT_OPERATING_POINTS
    custom = review.operating_points({"high_sensitivity": 0.25, "liver_tumor": {"maximum_sensitivity": 0.05},
                                      "kidney_tumor": {"maximum_sensitivity": 0.2}}, "liver_tumor")
    assert custom == {"balanced": 0.5, "high_sensitivity": 0.25, "maximum_sensitivity": 0.05}
    with pytest.raises(InputError, match="not a probability"):
        review.operating_points({"balanced": 1.5})


def test_review_decisions_follow_their_component_when_the_threshold_changes(case):
    pm = case["pm"]
    state = review.ReviewState()
    lab = pm.labels(0.5)
    mask = lab.mask
    _, cands = pm.candidates(mask, labelling=lab)
    state.decide("liver_tumor", cands[0], "kept")
    removed = cands[-1]
    state.decide("liver_tumor", removed, "removed")
    edit = review.remove_at(mask, removed.seed_ijk[::-1] - np.asarray(pm.start_ijk)[::-1])
    assert edit is not None
    state = review.ReviewState.from_json(state.to_json())  # survives a save/reload
    lab, cands = pm.candidates(mask)
    rows = state.rows("liver_tumor", lab.labels, pm.start_ijk, cands)
    assert rows[0]["status"] == "kept"
    assert rows[-1]["status"] == "removed" and rows[-1]["seed_ijk"] == list(removed.seed_ijk)
    assert review.counts(rows) == {"candidates": len(rows), "removed": 1, "kept": 1, "to_review": len(rows) - 2}
    # At a lower threshold the kept tumor grows and gets another number: still kept.
    low = pm.labels(0.2)
    _, low_cands = pm.candidates(low.mask, labelling=low)
    statuses = [state.status_of("liver_tumor", low.labels, pm.start_ijk, c.label) for c in low_cands]
    assert statuses.count("kept") == 1


def test_a_broken_review_file_is_refused_clearly(tmp_path):
    (tmp_path / "review.json").write_text("{not json")
    with pytest.raises(InputError, match="review state is not valid JSON"):
        review.load_review(tmp_path)
    (tmp_path / "review.json").write_text(json.dumps({"tumors": []}))
    with pytest.raises(InputError, match="version 1"):
        review.load_review(tmp_path)


@pytest.fixture(scope="module")
def demo_master(tmp_path_factory):
    """A run of the demo phantom written from its truth (testdata.phantom_run), not by the demo model: these tests
    need a run folder with tumor candidates and their probability maps, not the model's accuracy (test_demo_model
    covers that), and so stay in the quick tier. A coarser grid than the demo's (3 mm): half a second."""
    from testdata import phantom_run

    return phantom_run(tmp_path_factory.mktemp("demo") / "run", size=(128, 112, 64), spacing_mm=(3.0, 3.0, 3.75))


@pytest.fixture
def demo_run(demo_master, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(demo_master, out)
    return out


@pytest.fixture(scope="module")
def model_demo_master(tmp_path_factory):
    """The demo model's own run of the phantom: for a test that needs what the model got wrong (candidates outside
    the liver at a low threshold), which truth cannot stand in for."""
    from AtlasSegLib.demo import run_demo

    out = tmp_path_factory.mktemp("demo-model") / "run"
    run_demo(out, overwrite=True)
    return out


@pytest.fixture
def model_demo_run(model_demo_master, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(model_demo_master, out)
    return out


def test_review_rows_of_a_demo_run_list_its_tumor_candidates(demo_run):
    out = demo_run
    report = json.loads((out / "report.json").read_text())
    rows = review.review_rows(out)
    assert set(rows) == set(report["tumors"])
    for name, info in report["tumors"].items():
        assert [r["volume_ml"] for r in rows[name]] == [c["volume_ml"] for c in info["components"]]
        assert all(r["status"] == "to review" for r in rows[name])
    # A removal decision saved beside the run shows in the rows.
    name = next(n for n, r in rows.items() if r)
    state = review.ReviewState()
    state.decide(name, rows[name][0], "removed")
    review.save_review(out, state)
    assert review.review_rows(out)[name][0]["status"] == "removed"


def _mask(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_cli_review_removes_a_candidate_and_the_removal_survives_a_new_threshold(demo_run, capsys):
    from AtlasSegLib.cli import main

    out = demo_run
    rows = review.review_rows(out)["liver_tumor"]
    assert len(rows) >= 2, "the demo phantom has at least two liver tumors"
    before = _mask(out / "segmentations" / "liver_tumor.nii.gz")
    organs_before = _mask(out / "segmentations" / "liver.nii.gz")
    assert main(["review", str(out), "--structure", "liver_tumor", "--remove", "2", "--keep", "1"]) == 0
    after = _mask(out / "segmentations" / "liver_tumor.nii.gz")
    i, j, k = rows[1]["seed_ijk"]
    assert before[k, j, i] == 1 and after[k, j, i] == 0
    assert before.sum() - after.sum() == rows[1]["voxels"]
    assert np.array_equal(_mask(out / "segmentations" / "liver.nii.gz"), organs_before)
    card = json.loads((out / "card.json").read_text())
    tumor_label = next(c["label"] for c in card["classes"] if c["name"] == "liver_tumor")
    combined = _mask(out / "combined_labels.nii.gz")
    assert combined[k, j, i] != tumor_label and np.array_equal(combined == tumor_label, after == 1)
    statuses = [r["status"] for r in review.review_rows(out)["liver_tumor"]]
    assert statuses[0] == "kept" and "removed" in statuses
    report = json.loads((out / "report.json").read_text())
    assert report["tumors"]["liver_tumor"]["count"] == len(rows) - 1
    # A lower threshold grows every tumor, but the removed one does not come back.
    assert main(["threshold", str(out), "--set", "liver_tumor=0.2"]) == 0
    lowered = _mask(out / "segmentations" / "liver_tumor.nii.gz")
    assert lowered[k, j, i] == 0 and lowered.sum() >= after.sum()
    capsys.readouterr()
    assert main(["review", str(out)]) == 0
    assert "1 removed, 1 kept" in capsys.readouterr().out


def test_cli_review_refuses_unknown_candidates_and_organ_review(demo_run, capsys):
    from AtlasSegLib.cli import main

    before = (demo_run / "segmentations" / "liver_tumor.nii.gz").read_bytes()
    assert main(["review", str(demo_run), "--structure", "liver_tumor", "--remove", "99"]) == 2
    assert "no candidate 99" in capsys.readouterr().err
    assert main(["review", str(demo_run), "--structure", "liver", "--remove", "1"]) == 2
    assert "organ" in capsys.readouterr().err
    assert main(["review", str(demo_run), "--remove", "1"]) == 2
    assert (demo_run / "segmentations" / "liver_tumor.nii.gz").read_bytes() == before
    assert not (demo_run / "review.json").exists()


def test_cli_keep_largest_cleans_stray_organ_islands(demo_run):
    from AtlasSegLib.cli import main

    path = demo_run / "segmentations" / "spleen.nii.gz"
    image = sitk.ReadImage(str(path))
    spleen = sitk.GetArrayFromImage(image)
    spleen[0:2, 0:2, 0:2] = 1  # a stray island far from the spleen
    stray = sitk.GetImageFromArray(spleen)
    stray.CopyInformation(image)
    sitk.WriteImage(stray, str(path), useCompression=True)
    assert main(["review", str(demo_run), "--structure", "spleen", "--keep-largest", "1"]) == 0
    cleaned = _mask(path)
    assert cleaned[0:2, 0:2, 0:2].sum() == 0 and cleaned.sum() == spleen.sum() - 8


@pytest.mark.parametrize("args, message", [
    (["--remove-below-probability", "1.5"], "probability in \\(0, 1\\]"),
    (["--remove-smaller-than", "-1"], "above 0"),
    (["--keep-largest", "0"], "at least 1"),
])
def test_cli_review_refuses_out_of_range_batch_values_and_changes_nothing(demo_run, capsys, args, message):
    import re

    from AtlasSegLib.cli import main

    before = (demo_run / "segmentations" / "liver_tumor.nii.gz").read_bytes()
    assert main(["review", str(demo_run), "--structure", "liver_tumor", *args]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert (demo_run / "segmentations" / "liver_tumor.nii.gz").read_bytes() == before
    assert not (demo_run / "review.json").exists()


def _rows(out, name="liver_tumor"):
    return review.review_rows(out)[name]


def test_contradictory_review_actions_are_refused_and_change_nothing(demo_run, capsys):
    from AtlasSegLib.cli import main

    before = (demo_run / "segmentations" / "liver_tumor.nii.gz").read_bytes()
    report_before = (demo_run / "report.json").read_bytes()
    assert main(["review", str(demo_run), "--structure", "liver_tumor", "--remove", "1", "--keep", "1"]) == 2
    assert "both removed and kept" in capsys.readouterr().err
    assert (demo_run / "segmentations" / "liver_tumor.nii.gz").read_bytes() == before
    assert (demo_run / "report.json").read_bytes() == report_before
    assert not (demo_run / "review.json").exists()


def test_keep_largest_on_a_tumor_is_refused_with_a_message(demo_run, capsys):
    from AtlasSegLib.cli import main

    before = (demo_run / "segmentations" / "liver_tumor.nii.gz").read_bytes()
    assert main(["review", str(demo_run), "--structure", "liver_tumor", "--keep-largest", "1"]) == 2
    err = capsys.readouterr().err
    assert "--keep-largest is for organs" in err and "--remove" in err
    assert (demo_run / "segmentations" / "liver_tumor.nii.gz").read_bytes() == before


def _add_candidates(run, sizes=(6, 5, 4, 3), value=204):
    """Add cubes (p = value / 255, default 0.8) of these edge lengths (voxels) to the run's kept liver tumor probability map,
    inside the liver and apart from each other and from the tumors there: more candidates of distinct sizes,
    which the next 'atlasseg threshold' turns into mask components like any other."""
    path = run / "probabilities" / "liver_tumor.nii.gz"
    image = sitk.ReadImage(str(path))
    q = sitk.GetArrayFromImage(image)
    pm = review.ProbabilityMap.from_output(run, "liver_tumor")
    free = (pm.organs["liver"] > 0) & (q < 25)
    taken = np.zeros(q.shape, bool)
    for n in sizes:
        placed = False
        for k, j, i in zip(*np.nonzero(free)):
            lo = np.array([k, j, i]) - 2
            hi = np.array([k, j, i]) + n + 2
            if (lo < 0).any() or (hi > q.shape).any():
                continue
            sl = tuple(slice(a, b) for a, b in zip(lo, hi))
            if free[sl].all() and not taken[sl].any():
                inner = tuple(slice(a + 2, b - 2) for a, b in zip(lo, hi))
                q[inner] = value
                taken[sl] = True
                placed = True
                break
        assert placed, f"no room for a {n}-voxel cube in the liver"
    out = sitk.GetImageFromArray(q)
    out.CopyInformation(image)
    sitk.WriteImage(out, str(path), useCompression=True)


def test_candidate_ids_stay_the_same_after_removals_keeps_and_thresholds(demo_run, capsys):
    from AtlasSegLib.cli import main

    _add_candidates(demo_run)
    assert main(["threshold", str(demo_run), "--set", "liver_tumor=0.5"]) == 0
    first = {r["id"]: r for r in _rows(demo_run)}
    assert len(first) >= 5, "the demo's tumors and the added ones: at least five liver tumor candidates"
    assert sorted(first) == list(range(1, len(first) + 1))  # a fresh listing numbers by size
    assert main(["review", str(demo_run), "--structure", "liver_tumor", "--remove", "1", "2", "--keep", "4"]) == 0
    after = {r["id"]: r for r in _rows(demo_run)}
    assert set(after) == set(first)  # removed ones keep their number too
    assert after[4]["status"] == "kept" and after[4]["seed_ijk"] == first[4]["seed_ijk"]
    assert after[1]["status"] == after[2]["status"] == "removed" and not after[1]["present"]
    assert after[3]["status"] == "to review" and after[3]["seed_ijk"] == first[3]["seed_ijk"]
    # The next action by the same numbers hits the same lesions.
    assert main(["review", str(demo_run), "--structure", "liver_tumor", "--remove", "3"]) == 0
    mask = _mask(demo_run / "segmentations" / "liver_tumor.nii.gz")
    i, j, k = first[3]["seed_ijk"]
    assert mask[k, j, i] == 0
    i, j, k = first[4]["seed_ijk"]
    assert mask[k, j, i] == 1
    # A new threshold does not renumber: candidate 4 (kept) is still 4; removed numbers are not given again.
    assert main(["threshold", str(demo_run), "--set", "liver_tumor=0.2"]) == 0
    rows = _rows(demo_run)
    kept = [r for r in rows if r["status"] == "kept"]
    assert [r["id"] for r in kept] == [4]
    assert len({r["id"] for r in rows}) == len(rows)
    capsys.readouterr()
    assert main(["review", str(demo_run), "--structure", "liver_tumor", "--keep", "1"]) == 2
    assert "candidate 1 is no longer in the mask (removed)" in capsys.readouterr().err


def test_kept_candidate_below_a_higher_threshold_is_listed_and_warned(demo_run, capsys):
    from AtlasSegLib.cli import main

    _add_candidates(demo_run, sizes=(5,), value=140)  # a weak candidate, p 0.55
    assert main(["threshold", str(demo_run), "--set", "liver_tumor=0.5"]) == 0
    rows = _rows(demo_run)
    weakest = min((r for r in rows), key=lambda r: r["max_probability"])
    assert weakest["max_probability"] < 0.6
    assert main(["review", str(demo_run), "--structure", "liver_tumor", "--keep", str(weakest["id"])]) == 0
    above = 0.7
    capsys.readouterr()
    assert main(["threshold", str(demo_run), "--set", f"liver_tumor={above}"]) == 0
    assert "kept candidate" in capsys.readouterr().err  # said at once, on stderr
    listed = [r for r in _rows(demo_run) if r["id"] == weakest["id"]]
    assert len(listed) == 1 and listed[0]["status"] == "kept, below threshold" and listed[0]["below_threshold"]
    assert listed[0]["present"] is False
    report = json.loads((demo_run / "report.json").read_text())
    assert any(w.startswith(f"liver_tumor: kept candidate #{weakest['id']} ") for w in report["warnings"])
    capsys.readouterr()
    assert main(["review", str(demo_run)]) == 0
    out = capsys.readouterr().out
    assert "kept, below threshold" in out and "(1 below threshold)" in out
    assert "unreviewed" not in out  # one word in the CLI and the report: "to review"
    # Back down: the lesion is in the mask again, still kept, same id, and the warning is gone.
    assert main(["threshold", str(demo_run), "--set", "liver_tumor=0.5"]) == 0
    listed = [r for r in _rows(demo_run) if r["id"] == weakest["id"]]
    assert len(listed) == 1 and listed[0]["status"] == "kept" and listed[0]["present"]
    report = json.loads((demo_run / "report.json").read_text())
    assert not any("kept candidate" in w for w in report.get("warnings", []))


def test_batch_rules_never_remove_a_kept_candidate(demo_run, capsys):
    from AtlasSegLib.cli import main

    rows = _rows(demo_run)
    smallest = min(rows, key=lambda r: r["volume_ml"])
    assert main(["review", str(demo_run), "--structure", "liver_tumor", "--keep", str(smallest["id"])]) == 0
    capsys.readouterr()
    huge = max(r["volume_ml"] for r in rows) + 1.0
    assert main(["review", str(demo_run), "--structure", "liver_tumor", "--remove-smaller-than", str(huge)]) == 0
    assert "1 kept candidate(s) spared" in capsys.readouterr().out
    after = _rows(demo_run)
    present = [r for r in after if r["present"]]
    assert [r["id"] for r in present] == [smallest["id"]] and present[0]["status"] == "kept"


def test_the_run_folder_layer_imports_neither_review_nor_report():
    """outputs <- review <- report <- runedit: no module imports one above it, not even inside a function."""
    import ast
    from pathlib import Path

    import AtlasSegLib

    root = Path(AtlasSegLib.__file__).parent
    order = ["outputs", "review", "report", "runedit"]

    def imported(name):
        """AtlasSegLib modules ``name`` imports (a package: any of its modules; ``from ..x`` inside it is ``x``)."""
        package = root / name
        files = sorted(package.rglob("*.py")) if package.is_dir() else [root / f"{name}.py"]
        found = set()
        for path in files:
            top = 1 if path.parent == root else len(path.relative_to(root).parts)  # level of "from AtlasSegLib"
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level == top:
                    found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("AtlasSegLib."):
                    found.add(node.module.split(".")[1])
                elif isinstance(node, ast.Import):
                    found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("AtlasSegLib.")}
        return found

    for lower, name in enumerate(order):
        above = set(order[lower + 1:]) & imported(name)
        assert not above, f"{name} imports {above}"
    assert not {"review", "report"} & imported("outputs")


def test_a_review_edit_rechecks_the_tumor_flags_on_the_edited_mask(model_demo_run, capsys):
    """After 'atlasseg review --remove' the tumor's flags are those check_structures gives the edited mask (the
    run's would count the removed candidate), with the CT the demo keeps in its folder (ct.nii.gz)."""
    from AtlasSegLib.cli import main
    from AtlasSegLib.geometry import Grid
    from AtlasSegLib.plausibility import check_structures

    out = model_demo_run
    assert main(["threshold", str(out), "--set", "liver_tumor=0.02"]) == 0  # two candidates outside the liver
    before = next(e for e in json.loads((out / "report.json").read_text())["structures"]
                  if e["name"] == "liver_tumor")["flags"]
    assert before and "of 4 component(s)" in before[0]
    assert main(["review", str(out), "--structure", "liver_tumor", "--remove", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    flags = next(e for e in report["structures"] if e["name"] == "liver_tumor")["flags"]
    img = sitk.ReadImage(str(out / "segmentations" / "liver_tumor.nii.gz"))
    whole = ((0, 0, 0), img.GetSize())
    masks = {n: (whole, _mask(out / "segmentations" / f"{n}.nii.gz")) for n in ("liver_tumor", "liver")}
    # Named by the lesion ids the review lists (largest first), not by size ranks of the edited mask.
    ids = [r["id"] for r in review.review_rows(out)["liver_tumor"] if r["present"]]
    expected = check_structures([{"name": "liver_tumor", "kind": "tumor"}], masks, Grid.of(img),
                                _mask(out / "ct.nii.gz"), gates={"liver_tumor": ["liver"]},
                                lesion_ids={"liver_tumor": ids}).get("liver_tumor", [])
    assert ids[0] == 2  # candidate 1 was removed; the others kept their numbers
    assert flags == expected and flags != before
    assert [w for w in report["warnings"] if w.startswith("liver_tumor: ") and "kept candidate" not in w] == \
        [f"liver_tumor: {f}" for f in flags]
