"""The run report (report.json/.csv/.html, pictures/): numbers in a radiologist's units, review status, the
label-review overview convention, radiological orientation of the tumor slices, and atomic, self-contained
files. Output folders are written by the engine's OutputWriter from the real CT (report_cases.py)."""
from __future__ import annotations

import base64
import csv
import io
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

import AtlasSegLib.report as report_module
from AtlasSegLib import review
from AtlasSegLib.cli import main
from AtlasSegLib.errors import InputError
from AtlasSegLib.geometry import Grid
from AtlasSegLib.io import atomic_write_image
from AtlasSegLib.overview import TINT_OPACITY, Overview
from AtlasSegLib.report import build_report, table_rows, tumor_slice_picture
from report_cases import real_ct_output


@pytest.fixture(scope="module")
def real_case(tmp_path_factory, ctdata):
    return real_ct_output(ctdata, tmp_path_factory.mktemp("real"))


@pytest.fixture
def case(real_case, tmp_path):
    """A private copy of the real-CT output folder (tests change it)."""
    out = tmp_path / "out"
    shutil.copytree(real_case, out)
    return out


def _arr(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_report_keeps_the_run_keys_and_gives_tumor_sizes_in_cm(case):
    before = json.loads((case / "report.json").read_text())
    result = build_report(case)
    after = json.loads((case / "report.json").read_text())
    # The Slicer loader reads structures[].voxels, `atlasseg threshold` reads tumors/summary: all still there.
    assert set(before) <= set(after) and "report" in after
    assert [s["name"] for s in after["structures"]] == [s["name"] for s in before["structures"]]
    assert all(a["voxels"] == b["voxels"] for a, b in zip(after["structures"], before["structures"]))
    sec = after["report"]
    run_components = before["tumors"]["liver_tumor"]["components"]
    rows = [r for r in sec["tumor_components"] if r["structure"] == "liver_tumor"]
    assert [r["component"] for r in rows] == [c["id"] for c in run_components] == [1, 2]
    for row, comp in zip(rows, run_components):
        # mm from the engine → cm with one decimal, ml with two.
        assert row["longest_axial_diameter_cm"] == round(comp["longest_axial_diameter_mm"] / 10, 1)
        assert row["perpendicular_diameter_cm"] == round(comp["perpendicular_diameter_mm"] / 10, 1)
        assert row["volume_ml"] == round(comp["volume_ml"], 2)
        assert row["organ"] == "liver" and row["status"] == "to review" and row["in_mask"]
        assert row["centroid_ras_mm"] == [round(v, 1) for v in comp["centroid_ras"]]
    assert after["tumors"]["liver_tumor"]["components"][0]["longest_axial_diameter_cm"] == rows[0][
        "longest_axial_diameter_cm"]
    summary = sec["tumor_summary"]["liver_tumor"]
    assert summary["count"] == 2 and summary["largest"]["component"] == 1
    assert summary["threshold"] == 0.5 and summary["operating_point"] == "balanced"
    assert summary["total_volume_ml"] == pytest.approx(rows[0]["volume_ml"] + rows[1]["volume_ml"], abs=0.011)
    assert sec["model"]["id"] == "suprem-segresnet" and sec["thresholds"] == {"liver_tumor": 0.5}
    # Organ volume and mean HU recomputed from the files, against an independent count on the CT.
    ct = _arr(after["input"]["path"])
    liver = _arr(case / "segmentations" / "liver.nii.gz") > 0
    organ = next(r for r in sec["organs"] if r["structure"] == "liver")
    assert organ["volume_ml"] == round(liver.sum() * 27 / 1000, 2)
    assert organ["mean_hu"] == int(round(float(ct[liver].mean())))
    assert result.pictures["overview"] == case / "pictures" / "overview.png"
    assert {p.name for p in (case / "pictures").iterdir()} == {"overview.png", "liver_tumor_1.png",
                                                               "liver_tumor_2.png", "structures_axial.png",
                                                               "structures_coronal.png"}


def test_report_csv_has_a_row_per_structure_component_and_tumor_type(case):
    build_report(case)
    sec = json.loads((case / "report.json").read_text())["report"]
    rows = list(csv.DictReader(io.StringIO((case / "report.csv").read_text())))
    by_section = {s: [r for r in rows if r["section"] == s] for s in ("structure", "tumor_component", "tumor_summary")}
    assert len(by_section["structure"]) == len(sec["organs"]) == 8
    assert len(by_section["tumor_component"]) == 2 and len(by_section["tumor_summary"]) == 1
    assert len(rows) == 11
    first = by_section["tumor_component"][0]
    assert float(first["longest_axial_diameter_cm"]) == sec["tumor_components"][0]["longest_axial_diameter_cm"]
    assert first["organ"] == "liver" and first["status"] == "to review" and first["model_id"] == "suprem-segresnet"
    assert first["case"] == "ct_with_lesions" and float(first["threshold"]) == 0.5
    assert int(by_section["tumor_summary"][0]["count"]) == 2


def test_report_html_is_self_contained_with_the_pictures_inlined(case):
    build_report(case)
    page = (case / "report.html").read_text()
    assert "<script" not in page.lower() and "http://" not in page and "https://" not in page
    sources = [part.split('"', 1)[0] for part in page.split('src="')[1:]]
    assert len(sources) == 5 and all(s.startswith("data:image/png;base64,") for s in sources)
    # Each inlined picture is the one written beside the page.
    written = {p.read_bytes() for p in (case / "pictures").iterdir()}
    assert {base64.b64decode(s.split(",", 1)[1]) for s in sources} == written
    overview = page.split('alt="frontal projection', 1)[1].split('src="', 1)[1].split('"', 1)[0]
    assert base64.b64decode(overview.split(",", 1)[1]) == (case / "pictures" / "overview.png").read_bytes()
    for text in ("Tumor type", "liver_tumor", "3.1 &times; 3.1", "to review", "Mean HU", "suprem-segresnet"):
        assert text in page


def test_review_decisions_give_status_and_removed_components_leave_the_totals(case):
    build_report(case)
    assert (case / "pictures" / "liver_tumor_2.png").is_file()
    # A reviewer keeps #1 and removes #2 (mask edited, decision stored), as the sensitivity workflow does.
    pm = review.ProbabilityMap.from_output(case, "liver_tumor")
    path = case / "segmentations" / "liver_tumor.nii.gz"
    image = sitk.ReadImage(str(path))
    mask = sitk.GetArrayFromImage(image)
    _, cands = pm.candidates(mask[pm.box_slices])
    state = review.ReviewState()
    state.decide("liver_tumor", cands[0], "kept")
    state.decide("liver_tumor", cands[1], "removed")
    assert review.remove_at(mask, tuple(cands[1].seed_ijk[::-1])) is not None
    edited = sitk.GetImageFromArray(mask)
    edited.CopyInformation(image)
    atomic_write_image(edited, path)
    review.save_review(case, state)

    sec = build_report(case).report["report"]
    statuses = [(r["component"], r["status"], r["in_mask"]) for r in sec["tumor_components"]]
    # The removed one has no number any more: numbers rank the components present now.
    assert statuses == [(1, "kept", True), (None, "removed", False)]
    summary = sec["tumor_summary"]["liver_tumor"]
    assert (summary["count"], summary["kept"], summary["to_review"], summary["removed"]) == (1, 1, 0, 1)
    assert summary["total_volume_ml"] == sec["tumor_components"][0]["volume_ml"]
    # The removed component's picture is gone with it; the page marks it removed.
    assert not (case / "pictures" / "liver_tumor_2.png").exists()
    assert 'class="status removed"' in (case / "report.html").read_text()
    assert [row[-1] for row in table_rows(json.loads((case / "report.json").read_text()))[:2]] == ["kept", "removed"]


def test_threshold_change_rebuilds_an_existing_report(case, capsys):
    build_report(case)
    # At 0.3 (the high-sensitivity point) the faint lesion (peak p 0.4) appears.
    assert main(["threshold", str(case), "--set", "liver_tumor=0.3"]) == 0
    after = json.loads((case / "report.json").read_text())
    sec = after["report"]
    assert sec["tumor_summary"]["liver_tumor"]["count"] == 3
    assert sec["tumor_summary"]["liver_tumor"]["operating_point"] == "high_sensitivity"
    assert after["history"][-1]["values"] == {"liver_tumor": 0.3}
    assert len([r for r in csv.DictReader(io.StringIO((case / "report.csv").read_text()))
                if r["section"] == "tumor_component"]) == 3
    assert (case / "pictures" / "liver_tumor_3.png").is_file()
    assert (case / "overview.png").read_bytes() == (case / "pictures" / "overview.png").read_bytes()


def test_report_without_the_ct_writes_the_tables_and_says_why(case):
    doc = json.loads((case / "report.json").read_text())
    doc["input"]["path"] = str(case / "moved_away.nii.gz")
    (case / "report.json").write_text(json.dumps(doc))
    result = build_report(case)
    assert any("CT was not found" in n for n in result.notes)
    assert not (case / "pictures").exists() and (case / "report.csv").is_file()
    liver = next(r for r in result.report["report"]["organs"] if r["structure"] == "liver")
    assert liver["mean_hu"] == round(next(s for s in doc["structures"] if s["name"] == "liver")["mean_hu"])


def test_report_refuses_a_ct_that_is_not_the_runs(case, ctdata, capsys):
    other = ctdata / "ibsi_sts008_sarcoma_tumor" / "nifti" / "CT_image.nii.gz"
    with pytest.raises(InputError, match="not the one this run segmented"):
        build_report(case, ct=other)
    assert main(["report", str(case), "--ct", str(other)]) == 2
    assert not (case / "report.html").exists()


def test_failed_report_leaves_the_previous_one_whole(case, monkeypatch):
    build_report(case)
    names = ("report.json", "report.csv", "report.html", "pictures/overview.png", "pictures/liver_tumor_1.png")
    before = {n: (case / n).read_bytes() for n in names}

    def broken_page(*args, **kwargs):
        raise RuntimeError("simulated failure while writing the page")

    # Fault injection after every picture and table exists in memory: nothing may have been replaced yet.
    monkeypatch.setattr(report_module, "report_html", broken_page)
    (case / "review.json").write_text(review.ReviewState().to_json())
    with pytest.raises(RuntimeError, match="simulated"):
        build_report(case)
    assert {n: (case / n).read_bytes() for n in names} == before
    assert not [p for p in case.rglob(".*") if p.name.startswith(".report") or p.name.startswith(".liver")]


def test_cli_report_prints_the_files_and_refuses_a_folder_that_is_no_run(case, tmp_path, capsys):
    assert main(["report", str(case)]) == 0
    out = capsys.readouterr().out
    assert str(case / "report.html") in out and "liver_tumor: 2 component(s) at threshold 0.5" in out
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "not an AtlasSeg output folder" in capsys.readouterr().err
    assert main(["report", str(case), "--no-pictures"]) == 0


# ---------------------------------------------------------------------------------------- pictures
def _volume(size_ijk, spacing, direction, fill=0):
    image = sitk.Image(*size_ijk, sitk.sitkInt16)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    image.SetOrigin((0.0, 0.0, 0.0))
    return image, np.full(tuple(size_ijk[::-1]), fill, np.int16)


DIRECTIONS = {
    "LPS": (1, 0, 0, 0, 1, 0, 0, 0, 1),
    "RAS-stored": (-1, 0, 0, 0, -1, 0, 0, 0, 1),  # the real CT's layout
    "i-j swapped, feet first": (0, 1, 0, 1, 0, 0, 0, 0, -1),
}


@pytest.mark.parametrize("direction", DIRECTIONS.values(), ids=DIRECTIONS.keys())
def test_tumor_slice_shows_patient_right_on_the_left_and_anterior_up(direction):
    image, ct = _volume((120, 120, 12), (1.0, 1.0, 2.5), direction)
    grid = Grid.of(image)
    centre = np.array([60, 60, 6])
    centre_lps = grid.index_to_physical(centre)
    # A bright block 30 mm to the patient's right (LPS x −) and 30 mm anterior (LPS y −) of the lesion.
    marker_lps = centre_lps + [-30.0, -30.0, 0.0]
    ijk = np.indices(grid.size).reshape(3, -1).T
    lps = grid.index_to_physical(ijk)
    near = (np.abs(lps[:, 0] - marker_lps[0]) <= 8) & (np.abs(lps[:, 1] - marker_lps[1]) <= 8) & (
        np.abs(lps[:, 2] - marker_lps[2]) <= 3)
    for i, j, k in ijk[near]:
        ct[k, j, i] = 1000
    lesion = (np.linalg.norm(lps - centre_lps, axis=1) <= 6).reshape(tuple(grid.size)).transpose(2, 1, 0)
    nz = np.argwhere(lesion)
    lo, hi = nz.min(0), nz.max(0) + 1
    comp = lesion[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    picture, s_mm = tumor_slice_picture(ct, grid, lo, comp, centre_lps, color=(255, 255, 0), title="t",
                                        size_text="s", longest_mm=12.0)
    rgb = np.asarray(picture).astype(int)
    h, w, _ = rgb.shape
    assert (w, h) == (360, 360) and s_mm == pytest.approx(centre_lps[2], abs=1.3)
    px_per_mm = 360 / 100.0
    x, y = int(w / 2 - 30 * px_per_mm), int(h / 2 - 30 * px_per_mm)
    assert rgb[y, x].min() > 240, "the marker (patient's right, anterior) must be top-left"
    assert rgb[y, w - 1 - x].max() < 140 and rgb[h - 1 - y, x].max() < 140
    # The lesion's outline is drawn in its colour around the centre, about 12 mm across.
    yellow = np.argwhere((rgb[..., 0] > 200) & (rgb[..., 1] > 200) & (rgb[..., 2] < 80))
    central = yellow[(np.abs(yellow[:, 0] - h / 2) < 40) & (np.abs(yellow[:, 1] - w / 2) < 40)]
    assert len(central) > 50
    assert np.ptp(central[:, 1]) / px_per_mm == pytest.approx(12.0, abs=3.5)


def test_overview_tints_thin_structures_and_puts_patient_right_on_the_left():
    # 200 mm wide (x), 100 mm deep (y), 120 mm tall (z); 2 mm voxels in x/y, 3 mm in z.
    image, ct = _volume((100, 50, 40), (2.0, 2.0, 3.0), DIRECTIONS["RAS-stored"], fill=40)
    image = sitk.GetImageFromArray(ct)
    image.SetSpacing((2.0, 2.0, 3.0))
    image.SetDirection(DIRECTIONS["RAS-stored"])  # i runs to the patient's right: the flip must be undone
    grid = Grid.of(image)
    overview = Overview(image)
    assert overview.ct.size == (200, 120)  # 1 mm pixels
    mask = np.zeros(ct.shape, np.uint8)
    ijk = np.indices(grid.size).reshape(3, -1).T
    lps = grid.index_to_physical(ijk).reshape(*grid.size, 3).transpose(2, 1, 0, 3)
    x0 = lps[..., 0].min()
    z0 = lps[..., 2].min()
    # One structure: thick (the whole 100 mm depth) at the patient's right, superior; a one-voxel-thin sheet
    # (2 mm deep, 1/50 of the thick part's sum) at the patient's left.
    mask[(lps[..., 0] < x0 + 60) & (lps[..., 2] > z0 + 80)] = 1
    mask[:, 25, :] |= (lps[:, 25, :, 0] > x0 + 140).astype(np.uint8)
    overview.add("organ", (255, 0, 0), mask)
    rgb = np.asarray(overview.render("t")).astype(int)
    scale = int(round(512 / 200))
    top = 30  # title band

    def redness(x_mm, z_from_top_mm):
        p = rgb[top + int(z_from_top_mm * scale), int(x_mm * scale)]
        return p[0] - p[1]

    # A uniform body projects to white; a red tint of opacity a takes 255·a off green and blue.
    # Radiological view: the patient's right (thick part) on the image's left, head (superior) up.
    assert redness(20, 10) >= 255 * TINT_OPACITY - 3
    assert redness(20, 110) <= 5 and redness(100, 60) <= 5
    # The thin part is tinted at half strength at least (MODELS.md §5: every covered pixel), not faded to
    # nothing by its small share of the normalised sum.
    assert redness(180, 60) >= 0.5 * 255 * TINT_OPACITY - 3


def test_report_finds_the_ct_kept_in_the_output_folder(case):
    # `atlasseg demo` keeps its phantom CT as OUTDIR/ct.nii.gz and records no real input path.
    doc = json.loads((case / "report.json").read_text())
    shutil.copy(doc["input"]["path"], case / "ct.nii.gz")
    doc["input"]["path"] = "phantom(seed=2024)"
    (case / "report.json").write_text(json.dumps(doc))
    result = build_report(case)
    assert result.notes == () and (case / "pictures" / "liver_tumor_1.png").is_file()
    assert result.report["report"]["case"] == "phantom(seed=2024)"


def test_slicer_report_panel_uses_only_existing_qt_free_report_functions(case):
    import ast

    from testdata import REPO

    import re

    # The panel imports the report module on first use (``_reportLib()``) and reads names off it.
    source = (REPO / "AtlasSeg" / "AtlasSegModule" / "AtlasSegReportPanel.py").read_text(encoding="utf-8")
    ast.parse(source)
    used = set(re.findall(r"(?:_reportLib\(\)|\blib)\.(\w+)", source))
    assert used >= {"build_report", "load_report", "table_rows", "TABLE_COLUMNS"}
    assert all(hasattr(report_module, name) for name in used), used
    # Every table row fills the panel's columns.
    rows = table_rows(build_report(case).report)
    assert rows and all(len(row) == len(report_module.TABLE_COLUMNS) for row in rows)
    assert rows[0][:3] == ["liver_tumor #1", "liver", "11.80"]

