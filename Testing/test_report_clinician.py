"""The report as a clinician sends it: a header naming the case from the DICOM input (or nothing with
--anonymize), no local path, pictures on which every structure can be checked (also without a tumor), a short
scan's projection that stays legible, lesion locations in a reader's words, and the demo's truth with Dice.

Output folders are written by the engine's OutputWriter from the real CT and the real DICOM series
(report_cases.py)."""
from __future__ import annotations

import csv
import io
import json
import re
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from AtlasSegLib.cli import main
from AtlasSegLib.geometry import Grid, oriented, reorient_array
from AtlasSegLib.overview import MAX_WIDTH_PX, MIN_HEIGHT_PX, Overview, short_scan_note
from AtlasSegLib.report import (StructureLayer, axial_structures_picture, build_report, choose_axial_levels,
                                choose_coronal_plane, coronal_structures_picture, lesion_location, structure_layer)
from report_cases import dicom_ct_output, real_ct_output

PATIENT = ("DOE^JANE", "PID-4711")


@pytest.fixture(scope="module")
def dicom_case(tmp_path_factory, ctdata):
    return dicom_ct_output(ctdata, tmp_path_factory.mktemp("dicom"), patient=PATIENT)


@pytest.fixture(scope="module")
def nifti_case(tmp_path_factory, ctdata):
    return real_ct_output(ctdata, tmp_path_factory.mktemp("nifti"))


def _copy(case, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(case, out)
    return out


def _page_text(path) -> str:
    """report.html without its inlined pictures (base64 can spell anything)."""
    return re.sub(r'src="data:image/png;base64,[^"]*"', 'src=""', path.read_text(encoding="utf-8"))


def _sent_texts(out) -> dict:
    """What leaves the building: the page, the table and report.json's report section."""
    doc = json.loads((out / "report.json").read_text())
    return {"report.html": _page_text(out / "report.html"), "report.csv": (out / "report.csv").read_text(),
            "report section": json.dumps(doc["report"])}


# ------------------------------------------------------------------------------------------- header
def test_header_names_patient_study_series_and_model_from_the_dicom_input(dicom_case, tmp_path):
    out = _copy(dicom_case, tmp_path)
    header = build_report(out).report["report"]["header"]
    first = pydicom.dcmread(str(sorted((dicom_case.parent / "DOE_series").iterdir())[0]), stop_before_pixels=True)
    assert header["patient_name"] == "DOE, JANE" and header["patient_id"] == "PID-4711"
    assert header["study_date"] == "2022-12-08" == f"{first.StudyDate[:4]}-{first.StudyDate[4:6]}-{first.StudyDate[6:]}"
    assert header["series_description"] == first.SeriesDescription == "CT Body 3.0"
    assert (header["model_id"], header["model_version"]) == ("suprem-segresnet", "2100")
    page = _page_text(out / "report.html")
    for text in ("DOE, JANE (ID PID-4711)", "2022-12-08", "CT Body 3.0", "SuPreM SegResNet", "version 2100"):
        assert text in page, text


def test_anonymize_leaves_every_identifier_out_and_rebuilds_stay_anonymized(dicom_case, tmp_path, capsys):
    out = _copy(dicom_case, tmp_path)
    doc = json.loads((out / "report.json").read_text())
    secrets = ("DOE", "JANE", "PID-4711", "2022-12-08", "20221208", "CT Body 3.0", doc["input"]["series_uid"],
               doc["input"]["study_uid"], "DOE_series", str(tmp_path))
    secrets = tuple(s for s in secrets if s)
    assert main(["report", str(out), "--anonymize"]) == 0
    for name, text in _sent_texts(out).items():
        assert not [s for s in secrets if s in text], name
    page = _page_text(out / "report.html")
    assert "anonymized" in page and "suprem-segresnet" in page and "version 2100" in page
    # The overview's and slices' titles name no case either: the pictures are sent too.
    assert json.loads((out / "report.json").read_text())["report"]["case"] == "anonymized case"
    # A threshold change rebuilds the report: still anonymized, without asking again.
    assert main(["threshold", str(out), "--set", "liver_tumor=0.3"]) == 0
    assert not [s for s in secrets if s in _page_text(out / "report.html")]
    assert main(["report", str(out), "--no-anonymize"]) == 0
    assert "DOE, JANE" in _page_text(out / "report.html")


def test_no_full_local_path_in_the_report_only_the_file_name(nifti_case, tmp_path):
    out = _copy(nifti_case, tmp_path)
    doc = json.loads((out / "report.json").read_text())
    folder = str(nifti_case.parent)
    # A warning that quotes the input's full path (as a reader's error might) is shown with its file name.
    doc["warnings"] = [f"check {doc['input']['path']}: example"]
    (out / "report.json").write_text(json.dumps(doc))
    build_report(out)
    texts = _sent_texts(out)
    for name, text in texts.items():
        assert folder not in text and str(tmp_path) not in text, name
    assert "ct_with_lesions.nii.gz" in texts["report.html"] and "check ct_with_lesions.nii.gz: example" in texts[
        "report.html"]
    # The run's own record keeps the absolute path: 'atlasseg report' and export find the CT with it.
    assert json.loads((out / "report.json").read_text())["input"]["path"] == doc["input"]["path"]


# -------------------------------------------------------------------------------------------- location
def test_lesion_location_gives_the_dicom_instance_and_the_patients_side(dicom_case, tmp_path):
    out = _copy(dicom_case, tmp_path)
    row = build_report(out).report["report"]["tumor_components"][0]
    loc = row["location"]
    # Independently: the file whose ImagePositionPatient z is nearest the centroid's S (an axial series).
    files = [pydicom.dcmread(str(p), stop_before_pixels=True) for p in (dicom_case.parent / "DOE_series").iterdir()]
    nearest = min(files, key=lambda ds: abs(float(ds.ImagePositionPatient[2]) - row["centroid_lps_mm"][2]))
    assert loc["slice"] == {"kind": "instance", "number": int(nearest.InstanceNumber), "of": 20,
                            "text": f"instance {int(nearest.InstanceNumber)}"}
    # The lesion sits deep in the liver, which lies on the patient's right (RAS x > 0 of the body's centre).
    assert loc["side"] == "right" and row["organ"] == "liver"
    assert "patient's right" in loc["text"] and f"instance {nearest.InstanceNumber}" in loc["text"]
    page = _page_text(out / "report.html")
    assert loc["text"].replace("'", "&#x27;") in page
    rows = list(csv.DictReader(io.StringIO((out / "report.csv").read_text())))
    comp = next(r for r in rows if r["section"] == "tumor_component")
    assert comp["image"] == f"instance {nearest.InstanceNumber}" and comp["side"] == "right"


def test_lesion_location_counts_slices_from_the_head_without_dicom(nifti_case, tmp_path, ctdata):
    out = _copy(nifti_case, tmp_path)
    rows = build_report(out).report["report"]["tumor_components"]
    image = sitk.ReadImage(str(nifti_case.parent / "ct_with_lesions.nii.gz"))
    n = image.GetSize()[2]
    for row in rows:
        # This CT's k runs from feet to head: slice 1 from the top is k = n - 1.
        k = image.TransformPhysicalPointToIndex(row["centroid_lps_mm"])[2]
        assert row["location"]["slice"]["number"] == n - k and row["location"]["slice"]["of"] == n
        assert row["location"]["slice"]["text"] == f"axial slice {n - k} of {n} (from the top)"
    # RAS x: lesion #1 lies 95 mm right, #2 40 mm left of the scanner's axis; the body's centre is near it.
    assert [r["location"]["side"] for r in rows] == ["right", "left"]


DIRECTIONS = {
    "LPS": (1, 0, 0, 0, 1, 0, 0, 0, 1),
    "RAS-stored": (-1, 0, 0, 0, -1, 0, 0, 0, 1),
    "i-j swapped, feet first": (0, 1, 0, 1, 0, 0, 0, 0, -1),
}


def _body(direction, size=(120, 100, 20), spacing=(2.0, 2.0, 5.0)):
    """A water cylinder (radius 80 mm) in air, centred at LPS x = 30 mm: the midline is not the scanner's axis."""
    image = sitk.Image(*size, sitk.sitkInt16)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    grid = Grid.of(image)
    centre = grid.index_to_physical((np.asarray(size) - 1) / 2.0)
    image.SetOrigin(tuple(np.asarray(image.GetOrigin()) - centre + [30.0, 0.0, 0.0]))
    grid = Grid.of(image)
    lps = grid.index_to_physical(np.indices(size).reshape(3, -1).T).reshape(*size, 3).transpose(2, 1, 0, 3)
    ct = np.where(np.hypot(lps[..., 0] - 30.0, lps[..., 1]) <= 80.0, 40, -1000).astype(np.int16)
    return grid, ct, lps


@pytest.mark.parametrize("direction", DIRECTIONS.values(), ids=DIRECTIONS.keys())
def test_lesion_side_is_taken_from_the_body_midline_in_any_storage_order(direction):
    grid, ct, _ = _body(direction)
    lgrid = oriented(grid, "LAS")
    ct_las = reorient_array(ct, grid, "LAS")
    # 20 mm to the patient's left of the scanner's axis is still 10 mm right of the body's midline (x = 30).
    loc = lesion_location([20.0, -25.0, 0.0], lgrid, ct_las=ct_las)
    assert loc["side"] == "right" and loc["from_midline_cm"] == pytest.approx(1.0, abs=0.21)
    assert loc["anterior_posterior"] == "anterior"  # LPS y < 0 is anterior
    loc = lesion_location([75.0, 30.0, 0.0], lgrid, ct_las=ct_las)
    assert (loc["side"], loc["anterior_posterior"]) == ("left", "posterior")
    assert loc["from_midline_cm"] == pytest.approx(4.5, abs=0.21)


def test_lesion_location_names_the_third_of_its_organ():
    lgrid = Grid((10, 10, 30), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1))
    organ = StructureLayer("liver", (1, 2, 3), "organ", (0, 0, 0), np.ones((10, 10, 30), bool), np.full(30, 100))
    texts = [lesion_location(lgrid.index_to_physical([5, 5, k]), lgrid, organ=organ)["organ_third"] for k in (2, 15, 28)]
    assert texts == ["caudal", "middle", "cranial"]


# -------------------------------------------------------------------------------------------- pictures
def _layers_of(out, colors=None):
    doc = json.loads((out / "report.json").read_text())
    layers = []
    grid = None
    for n, entry in enumerate(doc["structures"]):
        image = sitk.ReadImage(str(out / entry["file"]))
        grid = Grid.of(image)
        color = colors[n] if colors else entry["color"]
        layer = structure_layer(entry["name"], color, entry["kind"], sitk.GetArrayViewFromImage(image) != 0, grid)
        if layer is not None:
            layers.append(layer)
    return layers, grid


def test_axial_levels_show_every_structure_at_half_its_largest_area_or_more(nifti_case, dicom_case):
    for case in (nifti_case, dicom_case):
        doc = json.loads((case / "report.json").read_text())
        layers, grid = _layers_of(case)
        lgrid = oriented(grid, "LAS")
        levels = choose_axial_levels(layers, lgrid.size[2])
        assert 3 <= len(levels) <= 6 and levels == sorted(levels, reverse=True)
        for entry in doc["structures"]:
            if entry["kind"] == "tumor":
                continue
            # Independently of the layers: per-slice areas straight from the mask file.
            mask = sitk.GetArrayFromImage(sitk.ReadImage(str(case / entry["file"]))) != 0
            areas = reorient_array(mask, grid, "LAS").sum(axis=(0, 1))
            if areas.max() == 0:
                continue
            assert max(areas[k] for k in levels) >= 0.5 * areas.max(), entry["name"]


def test_structure_pictures_outline_every_structure_in_its_colour(nifti_case):
    # Distinct colours (the run's own give both kidneys one colour), so each outline can be found.
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255), (255, 128, 0),
              (128, 0, 255)]
    layers, grid = _layers_of(nifti_case, colors)
    lgrid = oriented(grid, "LAS")
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(nifti_case.parent / "ct_with_lesions.nii.gz")))
    ct_las = reorient_array(ct, grid, "LAS")
    levels = choose_axial_levels(layers, lgrid.size[2])
    axial = np.asarray(axial_structures_picture(ct_las, lgrid, layers, levels)).astype(int)
    panels = axial[:, : axial.shape[1] - 200]  # the legend holds every colour whatever the slices show
    for layer in layers:
        hits = (np.abs(panels - np.asarray(layer.color)).max(axis=-1) <= 2).sum()
        assert hits > 30, (layer.name, hits)
    j = choose_coronal_plane(layers, lgrid.size[1])
    cut = [l.name for l in layers if l.lo[1] <= j < l.lo[1] + l.crop.shape[1] and l.crop[:, j - l.lo[1], :].any()]
    coronal = np.asarray(coronal_structures_picture(ct_las, lgrid, layers, j, levels=levels)).astype(int)
    found = [l.name for l in layers if (np.abs(coronal[:, :-200] - np.asarray(l.color)).max(axis=-1) <= 2).sum() > 30]
    assert set(found) == set(cut) and {"liver", "spleen", "kidney_right", "kidney_left"} <= set(cut)


@pytest.mark.parametrize("direction", DIRECTIONS.values(), ids=DIRECTIONS.keys())
def test_structure_pictures_put_patient_right_left_anterior_and_head_up(direction):
    grid, ct, lps = _body(direction)
    lgrid = oriented(grid, "LAS")
    ct_las = reorient_array(ct, grid, "LAS")
    # A block on the patient's right (x < 30 - 40), anterior (y < -20), in the upper half (z > 0).
    block = (lps[..., 0] < -10) & (lps[..., 0] > -40) & (lps[..., 1] < -20) & (lps[..., 1] > -50) & (lps[..., 2] > 5)
    layer = structure_layer("block", (255, 0, 0), "organ", block, grid)
    axial = np.asarray(axial_structures_picture(ct_las, lgrid, [layer], [max(layer.k_range) - 1])).astype(int)
    red = np.argwhere((axial[..., 0] > 200) & (axial[..., 1] < 60) & (axial[..., 2] < 60))[:, :2]
    red = red[red[:, 1] < axial.shape[1] - 200]  # not the legend
    panel_h, panel_w = axial.shape[0] - 30, axial.shape[1] - 200
    assert red.size and red[:, 1].mean() < panel_w / 2 and red[:, 0].mean() - 30 < panel_h / 2
    coronal = np.asarray(coronal_structures_picture(ct_las, lgrid, [layer], layer.lo[1] + 2)).astype(int)
    red = np.argwhere((coronal[..., 0] > 200) & (coronal[..., 1] < 60) & (coronal[..., 2] < 60))[:, :2]
    red = red[red[:, 1] < coronal.shape[1] - 200]
    assert red.size and red[:, 1].mean() < (coronal.shape[1] - 200) / 2
    assert red[:, 0].mean() < 30 + (coronal.shape[0] - 30) / 2  # head up


def test_structure_pictures_are_made_when_there_is_no_tumor(nifti_case, tmp_path):
    out = _copy(nifti_case, tmp_path)
    assert main(["threshold", str(out), "--set", "liver_tumor=0.99"]) == 0
    sec = build_report(out).report["report"]
    assert sec["tumor_summary"]["liver_tumor"]["count"] == 0
    pictures = sec["pictures"]["structures"]
    assert (out / pictures["axial"]).is_file() and (out / pictures["coronal"]).is_file()
    shown = set().union(*(set(level["structures"]) for level in pictures["axial_levels"]))
    assert shown >= {o["structure"] for o in sec["organs"] if o["kind"] != "tumor" and o["volume_ml"] > 0}
    page = (out / "report.html").read_text()
    assert 'alt="axial slices with every structure outlined"' in page and 'alt="coronal slice' in page


def test_short_scan_projection_is_tall_enough_to_read_and_says_to_check_the_slices(nifti_case):
    # The real 30-slice CT: 9 cm head to foot, 36.6 cm wide.
    ct = sitk.ReadImage(str(nifti_case.parent / "ct_with_lesions.nii.gz"))
    picture = Overview(ct).render("t")
    body_h = picture.height - 30 - 24  # title band, note line
    # MIN_HEIGHT_PX tall unless that would be wider than MAX_WIDTH_PX: here the width rules (the old 2× gave 180).
    assert body_h == round(MAX_WIDTH_PX * 90 / 366) == 246 < MIN_HEIGHT_PX and picture.width - 210 == MAX_WIDTH_PX
    # Physical proportions kept: 366 mm × 90 mm.
    assert (picture.width - 210) / body_h == pytest.approx(366 / 90, rel=0.02)
    assert short_scan_note(Grid.of(ct)).startswith("short scan (9.0 cm, 30 slices)")
    # The note is drawn (amber text below the image).
    note = np.asarray(picture)[-24:, :600].astype(int)
    assert ((note[..., 0] > 200) & (note[..., 1] > 150) & (note[..., 2] < 140)).sum() > 100
    long_scan = sitk.Image(60, 60, 100, sitk.sitkInt16)
    long_scan.SetSpacing((3.0, 3.0, 2.0))
    assert short_scan_note(Grid.of(long_scan)) == ""
    assert Overview(long_scan).render("t").height == 30 + 200 * 3  # 512-pixel rule as before, no note


# ---------------------------------------------------------------------------------------------- truth
def test_truth_table_gives_dice_and_volumes_against_ground_truth(nifti_case, tmp_path):
    out = _copy(nifti_case, tmp_path)
    (out / "ground_truth").mkdir()
    expected = {}
    for name, shift in (("liver", 0), ("spleen", 2)):
        image = sitk.ReadImage(str(out / "segmentations" / f"{name}.nii.gz"))
        mask = sitk.GetArrayFromImage(image)
        truth = np.roll(mask, shift, axis=2)  # spleen's truth two voxels off
        t = sitk.GetImageFromArray(truth)
        t.CopyInformation(image)
        sitk.WriteImage(t, str(out / "ground_truth" / f"{name}.nii.gz"))
        a, b = mask > 0, truth > 0
        expected[name] = (round(2 * (a & b).sum() / (a.sum() + b.sum()), 3), round(b.sum() * 27 / 1000, 1))
    sec = build_report(out).report["report"]
    got = {r["structure"]: (r["dice"], r["truth_ml"]) for r in sec["truth"]}
    assert got == expected and expected["liver"][0] == 1.0 and expected["spleen"][0] < 0.95
    page = _page_text(out / "report.html")
    assert 'id="truth"' in page and f"{expected['spleen'][0]:.3f}" in page
    rows = [r for r in csv.DictReader(io.StringIO((out / "report.csv").read_text())) if r["section"] == "truth"]
    assert {r["structure"]: float(r["dice"]) for r in rows} == {k: v[0] for k, v in expected.items()}
