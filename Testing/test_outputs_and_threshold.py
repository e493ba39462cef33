"""A run's output folder (AbdomenAtlas layout) and changing tumor thresholds afterwards without re-running."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from AtlasSegLib.card import load_card
from AtlasSegLib.cli import main
from AtlasSegLib.errors import Cancelled
from AtlasSegLib.runedit import rethreshold
from AtlasSegLib.pipeline import SegmentOptions, segment
from AtlasSegLib.postprocess import threshold_level
from models_for_tests import small_segresnet


@pytest.fixture(scope="module")
def run(tmp_path_factory, ctdata):
    tmp = tmp_path_factory.mktemp("run")
    card_path, weights = small_segresnet(tmp, seed=1)
    out = tmp / "out"
    ct = ctdata / "totalseg_abdomen_sm" / "example_ct_sm.nii.gz"
    report = segment(ct, out, card=load_card(card_path), weights=weights, options=SegmentOptions(device="cpu"))
    return {"out": out, "report": report, "ct": ct, "card": card_path, "weights": weights, "tmp": tmp}


def _arr(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_output_folder_has_the_abdomenatlas_layout_on_the_input_grid(run):
    out, ct = run["out"], sitk.ReadImage(str(run["ct"]))
    card = json.loads((out / "card.json").read_text())
    for cls in card["classes"]:
        img = sitk.ReadImage(str(out / "segmentations" / f"{cls['name']}.nii.gz"))
        assert img.GetSize() == ct.GetSize() and img.GetPixelID() == sitk.sitkUInt8
        assert np.allclose(img.GetOrigin(), ct.GetOrigin()) and np.allclose(img.GetDirection(), ct.GetDirection())
    combined = _arr(out / "combined_labels.nii.gz")
    assert set(np.unique(combined)) <= {0} | {c["label"] for c in card["classes"]}
    assert (out / "overview.png").stat().st_size > 1000
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["id"] == "suprem-segresnet" and report["input"]["grid"]["size"] == list(ct.GetSize())
    liver = next(s for s in report["structures"] if s["name"] == "liver")
    assert liver["volume_ml"] == pytest.approx(liver["voxels"] * 27 / 1000, rel=1e-6)
    assert not list(out.parent.glob(".out.partial-*"))


def test_tumor_probabilities_are_kept_as_uint8_in_the_organ_box(run):
    out = run["out"]
    report = json.loads((out / "report.json").read_text())
    info = report["tumors"]["liver_tumor"]
    assert info["gate"] == ["liver"]
    meta = json.loads((out / "probabilities" / "liver_tumor.json").read_text())
    prob = sitk.ReadImage(str(out / "probabilities" / "liver_tumor.nii.gz"))
    assert prob.GetPixelID() == sitk.sitkUInt8 and list(prob.GetSize()) == meta["box_size_ijk"]
    ct = sitk.ReadImage(str(run["ct"]))
    assert np.allclose(prob.GetOrigin(), ct.TransformIndexToPhysicalPoint(meta["box_start_ijk"]))
    # The tumor mask lies inside the box and inside p ≥ threshold.
    mask = _arr(out / "segmentations" / "liver_tumor.nii.gz")
    s, z = meta["box_start_ijk"], meta["box_size_ijk"]
    box = mask[s[2]:s[2] + z[2], s[1]:s[1] + z[1], s[0]:s[0] + z[0]]
    assert box.sum() == mask.sum()
    assert np.all(sitk.GetArrayViewFromImage(prob)[box > 0] >= threshold_level(0.5))


def test_rethreshold_at_the_same_value_reproduces_the_run_exactly(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run["out"], copy)
    rethreshold(copy, {"liver_tumor": 0.5, "kidney_tumor": 0.5})
    for name in ("liver_tumor", "kidney_tumor"):
        assert np.array_equal(_arr(copy / "segmentations" / f"{name}.nii.gz"),
                              _arr(run["out"] / "segmentations" / f"{name}.nii.gz"))
    assert np.array_equal(_arr(copy / "combined_labels.nii.gz"), _arr(run["out"] / "combined_labels.nii.gz"))


def test_threshold_command_grows_tumors_and_updates_report(run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run["out"], copy)
    before = _arr(copy / "segmentations" / "liver_tumor.nii.gz")
    assert main(["threshold", str(copy), "--set", "liver_tumor=0.2"]) == 0
    after = _arr(copy / "segmentations" / "liver_tumor.nii.gz")
    assert after.sum() >= before.sum() and np.all(after[before > 0])
    report = json.loads((copy / "report.json").read_text())
    assert report["tumors"]["liver_tumor"]["threshold"] == 0.2
    entry = next(s for s in report["structures"] if s["name"] == "liver_tumor")
    assert entry["voxels"] == int(after.sum())
    assert sum(c["voxels"] for c in report["tumors"]["liver_tumor"]["components"]) == int(after.sum())
    assert report["history"][-1]["values"] == {"liver_tumor": 0.2}
    # Other structures untouched.
    assert np.array_equal(_arr(copy / "segmentations" / "liver.nii.gz"), _arr(run["out"] / "segmentations" / "liver.nii.gz"))


def test_threshold_command_refuses_unknown_structure_and_bad_value(run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run["out"], copy)
    assert main(["threshold", str(copy), "--set", "liver=0.3"]) == 2
    assert "not a tumor structure" in capsys.readouterr().err
    assert main(["threshold", str(copy), "--set", "liver_tumor=1.5"]) == 2
    assert "between 0 and 1" in capsys.readouterr().err
    assert main(["threshold", str(tmp_path), "--set", "liver_tumor=0.3"]) == 2


def test_segment_time_threshold_override_matches_later_rethreshold(run, tmp_path):
    out = tmp_path / "low"
    segment(run["ct"], out, card=load_card(run["card"]), weights=run["weights"],
            options=SegmentOptions(device="cpu", thresholds={"liver_tumor": 0.3}, overview=False))
    copy = tmp_path / "copy"
    shutil.copytree(run["out"], copy)
    rethreshold(copy, {"liver_tumor": 0.3})
    assert np.array_equal(_arr(out / "segmentations" / "liver_tumor.nii.gz"),
                          _arr(copy / "segmentations" / "liver_tumor.nii.gz"))


def test_structure_subset_produces_only_those_plus_gate_organs(run, tmp_path):
    out = tmp_path / "subset"
    segment(run["ct"], out, card=load_card(run["card"]), weights=run["weights"],
            options=SegmentOptions(device="cpu", structures=("spleen", "liver_tumor"), overview=False))
    names = sorted(p.name for p in (out / "segmentations").iterdir())
    assert names == ["liver.nii.gz", "liver_tumor.nii.gz", "spleen.nii.gz"]


def test_cancel_stops_the_run_and_writes_nothing(run, tmp_path):
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 5

    out = tmp_path / "cancelled"
    with pytest.raises(Cancelled):
        segment(run["ct"], out, card=load_card(run["card"]), weights=run["weights"],
                options=SegmentOptions(device="cpu"), cancel=cancel)
    assert not out.exists() and not list(tmp_path.glob(".cancelled.partial-*"))


def test_progress_reports_stages_in_order_with_rising_fractions(run, tmp_path):
    seen = []
    segment(run["ct"], tmp_path / "p", card=load_card(run["card"]), weights=run["weights"],
            options=SegmentOptions(device="cpu", overview=False), progress=lambda s, f, m: seen.append((s, f)))
    stages = [s for s, _ in seen]
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    order = ["read", "preprocess", "inference", "postprocess", "write"]
    assert [s for s in order if s in stages] == order
    assert sum(1 for s in stages if s == "inference") > 3


def test_streamed_mask_files_hold_exactly_the_bytes_itks_nifti_writer_writes(tmp_path):
    """outputs.write_mask_nifti (ITK's header once, the volume streamed slice by slice from the box through a
    fast gzip) decompresses to the bytes ITK's own writer produces for the whole-grid mask: same header,
    geometry and voxels, for an oblique-free permuted grid, a box at the grid's corners and an empty mask."""
    import gzip

    import SimpleITK as sitk

    from AtlasSegLib.geometry import Grid
    from AtlasSegLib.outputs import nifti_header, write_mask_nifti

    grid = Grid((123, 97, 41), (0.7, 0.8, 2.5), (10.5, -3.25, 100.0), (-1.0, 0, 0, 0, 0, 1.0, 0, -1.0, 0))
    header = nifti_header(grid, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the probe file is gone
    rng = np.random.default_rng(0)
    for n, box in enumerate([((5, 7, 9), (40, 30, 20)), ((0, 0, 0), (123, 97, 41)), ((100, 90, 38), (23, 7, 3)),
                             None]):
        full = np.zeros(grid.size[::-1], np.uint8)
        mask = None
        if box is not None:
            start, size = box
            mask = (rng.random(size[::-1]) > 0.5).astype(np.uint8)
            full[start[2]:start[2] + size[2], start[1]:start[1] + size[1], start[0]:start[0] + size[0]] = mask
        write_mask_nifti(tmp_path / f"ours{n}.nii.gz", header, grid.size, box, mask)
        sitk.WriteImage(grid.image_from_kji(full), str(tmp_path / f"itk{n}.nii.gz"), useCompression=True)
        assert gzip.open(tmp_path / f"ours{n}.nii.gz").read() == gzip.open(tmp_path / f"itk{n}.nii.gz").read()
        back = sitk.ReadImage(str(tmp_path / f"ours{n}.nii.gz"))
        assert np.array_equal(sitk.GetArrayFromImage(back), full)
        assert Grid.of(back) == Grid.of(sitk.ReadImage(str(tmp_path / f"itk{n}.nii.gz")))  # float32 in NIfTI
    # The header comes from a 2-slice probe with the slice count patched in: ITK's whole-grid header exactly.
    from AtlasSegLib.outputs import _nifti_header_whole

    for size in [(512, 512, 300), (7, 5, 1), (7, 5, 2), (64, 33, 3)]:
        g = Grid(size, grid.spacing, grid.origin, grid.direction)
        assert nifti_header(g, tmp_path) == _nifti_header_whole(g, tmp_path / "whole.nii"), size


def _tumor_flags_from_files(out, ct_kji):
    """check_structures on the run's files as they are now (the independent way to the tumor's flags)."""
    from AtlasSegLib.geometry import Grid
    from AtlasSegLib.plausibility import check_structures

    img = sitk.ReadImage(str(out / "segmentations" / "liver_tumor.nii.gz"))
    grid = Grid.of(img)
    whole = ((0, 0, 0), grid.size)
    masks = {n: (whole, _arr(out / "segmentations" / f"{n}.nii.gz")) for n in ("liver_tumor", "liver")}
    masks = {n: m for n, m in masks.items() if m[1].any()}
    return check_structures([{"name": "liver_tumor", "kind": "tumor"}], masks, grid, ct_kji,
                            gates={"liver_tumor": ["liver"]}).get("liver_tumor", [])


def test_a_new_threshold_rechecks_the_tumor_flags_instead_of_keeping_the_runs(run, tmp_path):
    """After 'atlasseg threshold' the tumor's plausibility flags (report entry and warnings) are those of the new
    mask, as check_structures gives them on the files: the run's flags numbered components that are gone. With
    the CT no longer readable, the organ check still runs and the flags say attenuation was not rechecked."""
    from AtlasSegLib.runedit import NOT_RECHECKED

    out = tmp_path / "out"
    shutil.copytree(run["out"], out)
    ct = _arr(run["ct"])
    seen = []
    for t in (0.05, 0.3):
        report = rethreshold(out, {"liver_tumor": t})
        entry = next(e for e in report["structures"] if e["name"] == "liver_tumor")
        expected = _tumor_flags_from_files(out, ct)
        assert entry["flags"] == expected
        lines = [w for w in report["warnings"] if w.startswith("liver_tumor: ") and "kept candidate" not in w]
        assert lines == [f"liver_tumor: {f}" for f in expected]  # old ones gone, none twice
        seen += expected
    assert seen, "the test needs a threshold at which the tumor is flagged"
    # The CT moved away: no attenuation check, said so; the inside-the-organ check still done.
    report = json.loads((out / "report.json").read_text())
    report["input"]["path"] = str(tmp_path / "moved.nii.gz")
    (out / "report.json").write_text(json.dumps(report))
    report = rethreshold(out, {"liver_tumor": 0.05})
    flags = next(e for e in report["structures"] if e["name"] == "liver_tumor")["flags"]
    assert flags[-1].startswith(NOT_RECHECKED) and "moved.nii.gz" in flags[-1]
    assert flags[:-1] == [f for f in _tumor_flags_from_files(out, None)]
    assert not any("HU" in f for f in flags[:-1])



def test_combined_labels_paint_small_over_large_from_packed_boxes_and_name_the_hidden():
    # The one painter of combined_labels.nii.gz (a run's writer, edits of a finished run, the AbdomenAtlas export).
    from AtlasSegLib.outputs import combined_labels, packed_box

    shape = (4, 10, 12)
    organ, tumor, empty = (np.zeros(shape, bool) for _ in range(3))
    organ[1:3, 2:8, 2:10] = True  # 96 voxels
    tumor[2, 4:6, 5:7] = True  # 4 voxels inside the organ, listed after it: drawn over it all the same
    assert packed_box(organ)[0] == (slice(1, 3), slice(2, 8), slice(2, 10)) and packed_box(organ)[2] == (2, 6, 8)
    assert packed_box(empty)[2] == (0, 0, 0)
    items = [(int(np.count_nonzero(m)), is_tumor, label, name, *packed_box(m))
             for m, is_tumor, label, name in ((tumor, True, 2, "liver_tumor"), (organ, False, 1, "liver"),
                                              (empty, False, 3, "spleen"))]
    combined, hidden = combined_labels(shape, items)
    assert combined.dtype == np.uint8 and combined.shape == shape
    assert np.array_equal(combined == 2, tumor)
    assert np.array_equal(combined == 1, organ & ~tumor)
    assert hidden == []  # an empty structure draws nothing and is not "hidden"
    # A structure all of whose voxels lie under smaller ones drawn after it is named (its own file stays complete).
    halves = [np.zeros(shape, bool) for _ in range(2)]
    halves[0][2, 4:6, 5] = True
    halves[1][2, 4:6, 6] = True
    items += [(2, False, 5 + n, f"part{n}", *packed_box(h)) for n, h in enumerate(halves)]
    combined, hidden = combined_labels(shape, items)
    assert hidden == ["liver_tumor"]
    assert not (combined == 2).any() and (combined == 5).sum() == 2 and (combined == 6).sum() == 2
