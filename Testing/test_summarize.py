"""``atlasseg summarize``: summary.csv, gallery.html, review marks and the export of accepted cases.

The dataset is a real batch: three synthetic phantoms (coarse 4 mm grid, so the demo model takes seconds) and
one corrupt file, segmented once per module by ``run_batch`` with the demo model. Ranking rules are checked on
hand-made report.json values, where the expected order is known.
"""
from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from AtlasSegLib import cli
from AtlasSegLib.summarize import (FIELDS, MARKS_JSON, Z_LIMIT, labels_stamp, marks_document, modified_z_scores,
                                   summarize)

COARSE = {"size": (96, 80, 48), "spacing_mm": (4.0, 4.0, 5.0)}
SEEDS = (1, 2, 3)


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """RESULTS of 'atlasseg batch' over three phantoms and one corrupt file (a failed case)."""
    from AtlasSegLib.batch import run_batch
    from AtlasSegLib.card import builtin_card
    from AtlasSegLib.phantom import make_phantom
    from AtlasSegLib.pipeline import SegmentOptions

    root = tmp_path_factory.mktemp("summarize")
    data = root / "dataset"
    for seed in SEEDS:
        (data / f"case{seed}").mkdir(parents=True)
        sitk.WriteImage(make_phantom(seed, tumors=seed != 2, **COARSE).image, str(data / f"case{seed}" / "ct.nii.gz"))
    (data / "broken.nii.gz").write_bytes(b"not a NIfTI file")
    rows = run_batch(data, root / "results", card=builtin_card("atlasseg-demo"), options=SegmentOptions(device="cpu"))
    assert [r["status"] for r in rows] == ["failed", "done", "done", "done"]
    return root / "results"


def _results_copy(batch, tmp_path) -> Path:
    """A private copy of the batch results (tests that write marks or rerun must not change the others')."""
    return Path(shutil.copytree(batch, tmp_path / "results"))


def _read_csv(path) -> list:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _main(capsys, *argv):
    code = cli.main(["summarize", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_summary_csv_has_one_row_per_case_and_structure_with_the_runs_numbers(batch, tmp_path, capsys):
    results = _results_copy(batch, tmp_path)
    code, out, err = _main(capsys, results)
    assert code == 0, err
    rows = _read_csv(results / "summary.csv")
    assert list(rows[0]) == list(FIELDS)
    # The failed case comes first (most likely needs attention), as one row without a structure.
    assert rows[0]["case"] == "broken" and rows[0]["status"] == "failed" and rows[0]["structure"] == ""
    batch_row = next(r for r in _read_csv(results / "batch_summary.csv") if r["case"] == "broken")
    assert rows[0]["case_warnings"] == batch_row["message"] != ""
    for seed in SEEDS:
        report = json.loads((results / f"case{seed}" / "report.json").read_text())
        mine = {r["structure"]: r for r in rows if r["case"] == f"case{seed}"}
        assert list(mine) == [s["name"] for s in report["structures"]]
        for s in report["structures"]:
            row = mine[s["name"]]
            assert float(row["volume_ml"]) == s["volume_ml"] and float(row["mean_hu"]) == s["mean_hu"]
            assert row["warnings"] == " | ".join(s.get("flags") or [])
            assert row["model"] == "atlasseg-demo" and row["status"] == "done" and row["review"] == "unreviewed"
        # Organs after post-processing: one 26-connected component each (counted in the mask files).
        assert all(mine[n]["components"] == "1" for n in ("liver", "spleen", "pancreas", "aorta"))
        tumor = report["tumors"]["liver_tumor"]
        comps = tumor["components"]
        assert int(mine["liver_tumor"]["tumor_count"]) == len(comps) == int(mine["liver_tumor"]["components"])
        largest = max((c["longest_axial_diameter_mm"] for c in comps), default=0.0)
        assert float(mine["liver_tumor"]["largest_lesion_cm"]) == pytest.approx(largest / 10, abs=0.006)
        assert mine["liver"]["tumor_count"] == ""  # tumor columns only on tumor rows
    assert len(rows) == 1 + sum(len(json.loads((results / f"case{s}" / "report.json").read_text())["structures"])
                                for s in SEEDS)
    # Three cases: too few to call a volume an outlier, so no scores are made up.
    assert all(r["volume_z"] == "" for r in rows)
    assert "3 unreviewed" in out and "1 failed" in out and "warnings:" in out


def test_organ_components_are_counted_in_the_mask_not_assumed(batch, tmp_path, capsys):
    results = _results_copy(batch, tmp_path)
    assert _main(capsys, results)[0] == 0  # fills the component cache
    # A second, separate piece of spleen (a review edit, or a run without post-processing): counted again,
    # because the mask file changed.
    path = results / "case1" / "segmentations" / "spleen.nii.gz"
    image = sitk.ReadImage(str(path))
    mask = sitk.GetArrayFromImage(image)
    mask[0:2, 0:2, 0:2] = 1
    island = sitk.GetImageFromArray(mask)
    island.CopyInformation(image)
    sitk.WriteImage(island, str(path), useCompression=True)
    assert _main(capsys, results)[0] == 0
    spleen = next(r for r in _read_csv(results / "summary.csv") if r["case"] == "case1" and r["structure"] == "spleen")
    assert spleen["components"] == "2"


def test_gallery_is_one_offline_page_with_a_thumbnail_and_report_link_per_case(batch, tmp_path, capsys):
    results = _results_copy(batch, tmp_path)
    (results / "case3" / "report.html").write_text("<html>report</html>")  # as 'atlasseg report' leaves it
    assert _main(capsys, results)[0] == 0
    page = (results / "gallery.html").read_text()
    # Self-contained: no file, script or style is fetched from anywhere (only links to the cases' reports).
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert not re.search(r"<(link|script)[^>]+src", page)
    images = re.findall(r"<img src='data:image/jpeg;base64,", page)
    assert len(images) == len(SEEDS)
    assert "href='case3/report.html'" in page and "href='case1/report.json'" in page  # no report.html yet
    # The failed case is on the page, first, without marks.
    first = page.index("data-case='broken'")
    assert first < min(page.index(f"data-case='case{s}'") for s in SEEDS)
    assert "modified z-score" in page and str(Z_LIMIT) in page  # the ranking rule is said on the page


def test_gallery_size_per_case_stays_small_for_a_thousand_cases(batch, tmp_path, capsys):
    results = _results_copy(batch, tmp_path)
    assert _main(capsys, results)[0] == 0
    three = (results / "gallery.html").stat().st_size
    shutil.rmtree(results / "case2")
    shutil.rmtree(results / "case3")
    assert _main(capsys, results)[0] == 0
    one = (results / "gallery.html").stat().st_size
    per_case = (three - one) / 2
    # ~7 kB a case (a 220 px JPEG thumbnail and the structure list): 1000 cases make a page of ~7 MB.
    assert 2_000 < per_case < 20_000, per_case


def _report(name, volumes, warnings=(), flags=None):
    structures = [{"name": s, "kind": "organ", "volume_ml": v, "mean_hu": 60.0, "voxels": int(v * 10),
                   "flags": (flags or {}).get(s, [])} for s, v in volumes.items()]
    return {"created": f"2026-01-01T00:00:{name[-1]}0", "warnings": list(warnings), "structures": structures,
            "tumors": {}, "model": {"id": "suprem-unet"},
            "input": {"grid": {"size": [10, 10, 10], "spacing": [1, 1, 1], "origin": [0, 0, 0],
                               "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}}}


def _hand_made(root: Path, reports: dict) -> Path:
    for name, report in reports.items():
        (root / name).mkdir(parents=True)
        (root / name / "report.json").write_text(json.dumps(report))
    return root


def test_cases_with_warnings_then_outlier_volumes_come_first(tmp_path):
    normal = {"liver": 1500.0, "spleen": 200.0}
    reports = {f"c{i}": _report(f"c{i}", {"liver": 1500.0 + 20 * i, "spleen": 200.0 + 3 * i}) for i in range(6)}
    reports["big"] = _report("bigX", {"liver": 4200.0, "spleen": 205.0})  # liver far outside the dataset's spread
    reports["two_outliers"] = _report("twoX", {"liver": 300.0, "spleen": 900.0})
    reports["warned"] = _report("warnX", normal, warnings=["coverage: the scan is 3 slices long"])
    reports["warned_twice"] = _report("w2X", normal, warnings=["liver: cut by the scan's edge", "spleen: volume"],
                                      flags={"liver": ["cut by the scan's edge"], "spleen": ["volume"]})
    results = _hand_made(tmp_path / "results", reports)
    result = summarize(results)
    order = [c.name for c in result.cases]
    assert order[:4] == ["warned_twice", "warned", "two_outliers", "big"]
    assert sorted(order[4:]) == [f"c{i}" for i in range(6)]
    by_name = {c.name: c for c in result.cases}
    assert by_name["big"].outliers == ["liver"] and by_name["two_outliers"].outliers == ["liver", "spleen"]
    assert not any(by_name[f"c{i}"].outliers for i in range(6))
    rows = _read_csv(results / "summary.csv")
    big_liver = next(r for r in rows if r["case"] == "big" and r["structure"] == "liver")
    assert float(big_liver["volume_z"]) > Z_LIMIT and big_liver["outlier"] == "1"
    # Per-structure flags stay on their rows; the case-level sentence goes to case_warnings.
    warned = [r for r in rows if r["case"] == "warned"]
    assert all(r["case_warnings"] == "coverage: the scan is 3 slices long" and r["warnings"] == "" for r in warned)
    liver2 = next(r for r in rows if r["case"] == "warned_twice" and r["structure"] == "liver")
    assert liver2["warnings"] == "cut by the scan's edge" and liver2["case_warnings"] == ""
    page = (results / "gallery.html").read_text()
    assert [m for m in re.findall(r"data-case='([^']+)'", page)][:4] == order[:4]


def test_modified_z_score_flags_the_far_value_only():
    z = modified_z_scores({"a": 1000, "b": 1100, "c": 1050, "d": 980, "e": 3000})
    assert z["e"] > 20 and all(abs(z[k]) < 1.5 for k in "abcd")
    # More than half the values equal (MAD 0): the mean absolute deviation stands in, no division by zero.
    z = modified_z_scores({"a": 10, "b": 10, "c": 10, "d": 10, "e": 50})
    assert z["e"] > Z_LIMIT and z["a"] == 0
    assert modified_z_scores({"a": 5, "b": 5}) == {"a": 0.0, "b": 0.0}


def test_marks_round_trip_counts_revise_notes_and_stale_marks(batch, tmp_path, capsys):
    results = _results_copy(batch, tmp_path)
    stamps = {f"case{s}": labels_stamp(json.loads((results / f"case{s}" / "report.json").read_text())) for s in SEEDS}
    marks = {"case1": {"mark": "accept", "note": "", "at": "2026-01-01T10:00:00Z", "labels": stamps["case1"]},
             "case2": {"mark": "revise", "note": "tumor outside the liver", "at": "2026-01-01T10:01:00Z",
                       "labels": stamps["case2"]},
             "gone": {"mark": "accept", "note": "", "at": "2026-01-01T10:02:00Z", "labels": "x"}}
    (results / MARKS_JSON).write_text(json.dumps(marks_document(marks, results)))
    code, out, err = _main(capsys, results)
    assert code == 0, err
    assert "1 accepted, 1 to revise, 1 unreviewed" in out
    assert "revise case2: tumor outside the liver" in out
    assert "1 mark(s) for cases not in" in err and "gone" in err
    rows = {(r["case"], r["structure"]): r for r in _read_csv(results / "summary.csv")}
    assert rows[("case2", "liver")]["review"] == "revise" and rows[("case2", "liver")]["review_note"] == \
        "tumor outside the liver"
    # The page carries the file's marks, so another computer's browser shows them too.
    page = (results / "gallery.html").read_text()
    assert '"tumor outside the liver"' in page
    # A new threshold changes case1's labels: its acceptance was given to other labels and no longer counts.
    from AtlasSegLib.runedit import rethreshold

    rethreshold(results / "case1", {"liver_tumor": 0.97})
    code, out, err = _main(capsys, results)
    assert "0 accepted, 1 to revise, 1 unreviewed, 1 marked before their labels changed" in out
    # --marks FILE reads marks from anywhere.
    elsewhere = tmp_path / "downloads" / "review_marks (1).json"
    elsewhere.parent.mkdir()
    elsewhere.write_text(json.dumps(marks_document({"case3": {"mark": "accept", "at": "t",
                                                              "labels": stamps["case3"]}}, results)))
    code, out, err = _main(capsys, results, "--marks", elsewhere)
    assert code == 0 and "1 accepted, 0 to revise, 2 unreviewed" in out


def test_accepted_cases_export_together_as_an_abdomenatlas_dataset(batch, tmp_path, capsys):
    from AtlasSegLib.export import read_abdomenatlas_case

    results = _results_copy(batch, tmp_path)
    stamps = {f"case{s}": labels_stamp(json.loads((results / f"case{s}" / "report.json").read_text())) for s in SEEDS}
    marks = {"case1": {"mark": "accept", "labels": stamps["case1"], "at": "1"},
             "case3": {"mark": "accept", "labels": stamps["case3"], "at": "1"},
             "case2": {"mark": "revise", "labels": stamps["case2"], "at": "1"}}
    (results / MARKS_JSON).write_text(json.dumps(marks_document(marks, results)))
    dest = tmp_path / "accepted"
    code, out, err = _main(capsys, results, "--export-accepted", dest)
    assert code == 0, err
    assert "exported 2 accepted case(s)" in out
    assert sorted(p.name for p in dest.iterdir() if p.is_dir()) == ["case1", "case3"]
    for name in ("case1", "case3"):
        case = read_abdomenatlas_case(dest / name)
        assert sitk.GetArrayFromImage(sitk.ReadImage(str(case.ct_path))).shape == (48, 80, 96)
        for entry in case.structures:
            exported = sitk.GetArrayFromImage(sitk.ReadImage(entry["file"]))
            original = sitk.GetArrayFromImage(sitk.ReadImage(str(results / name / "segmentations" /
                                                                 f"{entry['name']}.nii.gz")))
            assert np.array_equal(exported > 0, original > 0), (name, entry["name"])
    assert {r["case"] for r in _read_csv(dest / "summary.csv")} == {"case1", "case3"}
    assert set(json.loads((dest / MARKS_JSON).read_text())["marks"]) == {"case1", "case3"}
    assert not list(tmp_path.glob(".accepted.partial-*"))
    # An existing dataset is not replaced without --overwrite, and nothing is touched.
    code, out, err = _main(capsys, results, "--export-accepted", dest)
    assert code == 2 and "already exists" in err


def test_one_segment_output_folder_is_a_dataset_of_one_case(batch, tmp_path, capsys):
    case = Path(shutil.copytree(batch / "case3", tmp_path / "out"))
    code, out, err = _main(capsys, case)
    assert code == 0, err
    assert "1 case(s): 0 accepted, 0 to revise, 1 unreviewed" in out
    page = (case / "gallery.html").read_text()
    assert "href='report.json'" in page and page.count("<img src='data:image/jpeg") == 1
    assert {r["case"] for r in _read_csv(case / "summary.csv")} == {"out"}
    # --reports makes the missing report page, and the card links to it.
    code, out, err = _main(capsys, case, "--reports")
    assert code == 0, err
    assert (case / "report.html").is_file() and "href='report.html'" in (case / "gallery.html").read_text()


def test_bad_inputs_exit_2_with_a_message_that_says_what_to_do(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = _main(capsys, empty)
    assert code == 2 and "not an AtlasSeg results folder" in err and "atlasseg batch" in err
    assert not (empty / "summary.csv").exists() and not (empty / "gallery.html").exists()
    code, out, err = _main(capsys, tmp_path / "missing")
    assert code == 2 and "is not a folder" in err
    results = _hand_made(tmp_path / "results", {"a": _report("a1", {"liver": 1500.0})})
    (results / MARKS_JSON).write_text("{not json")
    code, out, err = _main(capsys, results)
    assert code == 2 and "cannot read the marks file" in err
    (results / MARKS_JSON).write_text(json.dumps({"marks": {"a": "yes"}}))
    code, out, err = _main(capsys, results)
    assert code == 2 and "is not a review marks file" in err
    code, out, err = _main(capsys, results, "--marks", tmp_path / "nowhere.json")
    assert code == 2 and "does not exist" in err
    (results / MARKS_JSON).unlink()
    code, out, err = _main(capsys, results, "--export-accepted", tmp_path / "acc")
    assert code == 2 and "no accepted case to export" in err
    (results / "a" / "report.json").write_text("{}")
    code, out, err = _main(capsys, results)
    assert code == 2 and "not an AtlasSeg report.json" in err
