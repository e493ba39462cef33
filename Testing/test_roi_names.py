"""ROI names (model / AAPM TG-263 / the user's mapping file), left/right colours and the RT ROI type of tumors, as a
planning system or viewer reads them back from the written RTSTRUCT, DICOM SEG and .seg.nrrd.

The DICOM exports are made on the real upper-abdomen DICOM series (a copy with UIDs): liver, spleen and right
adrenal gland are the provided predictions; that series shows no kidneys or left adrenal gland, so the paired
structures are boxes on the patient's right and left (the point here is the names, colours and types, not the
anatomy), with a kidney cyst in the left one and a hollow tumor in the liver.
"""
from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import slicerio

from AtlasSegLib import cli
from AtlasSegLib import export as ex
from AtlasSegLib import roinames
from AtlasSegLib.card import builtin_card, builtin_card_ids, structures
from AtlasSegLib.errors import InputError
from AtlasSegLib.geometry import Grid, resample
from AtlasSegLib.io import read_image
from test_export_dicom import copy_series_with_uids
from testdata import make_run

PAIRS = [("kidney_right", "kidney_left"), ("adrenal_gland_right", "adrenal_gland_left"),
         ("lung_right", "lung_left"), ("femur_right", "femur_left")]


def cie76(rgb_a, rgb_b) -> float:
    """CIE76 colour difference (ΔE*ab) of two sRGB colours (D65)."""
    def lab(rgb):
        c = np.asarray(rgb, float) / 255
        c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
        xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ c
        f = np.cbrt(xyz / np.array([0.95047, 1.0, 1.08883]))
        return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])
    return float(np.linalg.norm(lab(rgb_a) - lab(rgb_b)))


def card_tables():
    """Every class table of every built-in card: (card id, [completed class entries])."""
    for card_id in builtin_card_ids():
        raw = builtin_card(card_id).to_json()
        yield card_id, raw["classes"]
        for size, table in (raw.get("class_tables") or {}).items():
            yield f"{card_id}[{size}]", table


# ------------------------------------------------------------------------------------------- the tables
def test_tg263_table_names_every_known_structure_within_16_characters_once():
    table = roinames.tg263_table()
    known = set(structures()) | {c["name"] for _, classes in card_tables() for c in classes}
    assert known - set(table) == set(), "structures without a TG-263 name"
    names = [e["name"] for e in table.values()]
    assert len({n.casefold() for n in names}) == len(names)
    for structure, entry in table.items():
        assert 0 < len(entry["name"]) <= roinames.TG263_MAX, structure
        assert entry["name"].replace("_", "").isalnum() and entry["name"][0].isupper(), structure
        assert entry["match"] in ("exact", "closest", "syntax", "target"), structure
        assert entry["match"] == "exact" or entry.get("note") or entry["match"] == "target", \
            f"{structure}: a name that is not TG-263's own says why"


def test_tg263_names_carry_the_side_of_the_structure_and_tumors_are_named_as_targets():
    table = roinames.tg263_table()
    for structure, entry in structures().items():
        name = table[structure]["name"]
        side = (entry.get("type_modifier") or {}).get("meaning")
        assert name.endswith("_R") == (side == "Right") and name.endswith("_L") == (side == "Left"), structure
        if entry["kind"] == "tumor" and entry["type"]["meaning"] == "Neoplasm":
            assert name.startswith("GTV_") and table[structure]["match"] == "target", structure
        else:
            assert not name.startswith(("GTV", "CTV", "PTV")), structure
    assert [table[n]["name"] for n in ("liver", "kidney_right", "kidney_left", "aorta", "postcava", "intestine")] \
        == ["Liver", "Kidney_R", "Kidney_L", "A_Aorta", "V_Venacava_I", "Bowel_Small"]


def test_left_and_right_structures_of_every_card_have_clearly_different_colours():
    seen = 0
    for card_id, classes in card_tables():
        by_name = {c["name"]: c for c in classes}
        for right, left in PAIRS:
            if right in by_name and left in by_name:
                seen += 1
                a, b = by_name[right]["color"], by_name[left]["color"]
                assert list(a) != list(b), (card_id, right, left)
                assert cie76(a, b) >= 20, (card_id, right, left, a, b)
    assert seen >= 4 * 3  # the SuPreM cards hold all four pairs; the demo card the kidneys
    # The right one keeps the lab's published colour (MODELS.md §7).
    assert structures()["kidney_right"]["color"] == [185, 102, 83]


def test_run_folder_report_and_exports_take_the_pair_colours_from_the_structure_table(tmp_path, small_ct):
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(small_ct.parent / "example_seg.nii.gz")))
    run = make_run(tmp_path / "run", small_ct, {"kidney_right": (labels == 2).astype(np.uint8),
                                                "kidney_left": (labels == 3).astype(np.uint8)})
    table = structures()
    report = {e["name"]: e for e in json.loads((run / "report.json").read_text())["structures"]}
    for name in ("kidney_right", "kidney_left"):
        assert report[name]["color"] == table[name]["color"]  # what the report and its pictures draw with
    seg = slicerio.read_segmentation(str(ex.export(run, "seg-nrrd").path))
    colours = {s["name"]: [round(v * 255) for v in s["color"]] for s in seg["segments"]}
    assert colours == {n: table[n]["color"] for n in ("kidney_right", "kidney_left")}


# ---------------------------------------------------------------------------------- real DICOM series
@pytest.fixture(scope="module")
def paired_run(tmp_path_factory, ctdata):
    root = tmp_path_factory.mktemp("roi_names")
    source = ctdata / "totalseg_dicom_upper_abdomen"
    series = copy_series_with_uids(source / "example_ct_dicom", root / "series")
    image, _ = read_image(series)
    grid = Grid.of(image)
    labels = sitk.GetArrayFromImage(resample(sitk.ReadImage(str(source / "example_seg_dicom.nii.gz")), grid,
                                             interpolator=sitk.sitkNearestNeighbor))
    masks = {"liver": labels == 5, "spleen": labels == 1, "adrenal_gland_right": labels == 8}
    shape = labels.shape
    # Patient's right = smaller LPS x; the series' rows run along +x, so the right side has the smaller i.
    assert np.asarray(grid.direction).reshape(3, 3)[0, 0] > 0
    for side, i0 in (("right", 120), ("left", 330)):
        box = np.zeros(shape, bool)
        box[4:16, 300:380, i0:i0 + 60] = True
        masks[f"kidney_{side}"] = box
    masks["adrenal_gland_left"] = np.zeros(shape, bool)
    masks["adrenal_gland_left"][12:16, 280:300, 340:360] = True
    masks["kidney_cyst"] = np.zeros(shape, bool)
    masks["kidney_cyst"][8:12, 320:340, 350:370] = True
    k, j, i = (int(np.median(a)) for a in np.nonzero(masks["liver"]))
    zz, yy, xx = np.indices(shape)
    r = np.sqrt(((xx - i) * grid.spacing[0]) ** 2 + ((yy - j) * grid.spacing[1]) ** 2
                + ((zz - k) * grid.spacing[2]) ** 2)
    masks["liver_tumor"] = (r < 18) & (r > 8)
    masks = {n: m.astype(np.uint8) for n, m in masks.items()}
    return {"run": make_run(root / "run", series, masks), "root": root, "masks": masks}


EXPECTED_TG263 = {"liver": "Liver", "spleen": "Spleen", "adrenal_gland_right": "Glnd_Adrenal_R",
                  "adrenal_gland_left": "Glnd_Adrenal_L", "kidney_right": "Kidney_R", "kidney_left": "Kidney_L",
                  "kidney_cyst": "Kidney_Cyst", "liver_tumor": "GTV_Liver"}


def test_tg263_rtstruct_has_standard_names_distinct_side_colours_and_the_chosen_tumor_type(paired_run):
    result = ex.export(paired_run["run"], "rtstruct", paired_run["root"] / "tg263.dcm", names="tg263",
                       tumor_roi_type="GTV")
    ds = pydicom.dcmread(result.path)
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    assert sorted(names.values()) == sorted(EXPECTED_TG263.values())
    colours = {names[int(c.ReferencedROINumber)]: [int(v) for v in c.ROIDisplayColor] for c in ds.ROIContourSequence}
    table = structures()
    for structure, name in EXPECTED_TG263.items():
        assert colours[name] == table[structure]["color"], name
    assert colours["Kidney_L"] != colours["Kidney_R"] and colours["Glnd_Adrenal_L"] != colours["Glnd_Adrenal_R"]
    types = {names[int(o.ReferencedROINumber)]: str(o.RTROIInterpretedType) for o in ds.RTROIObservationsSequence}
    labels = {names[int(o.ReferencedROINumber)]: str(o.ROIObservationLabel) for o in ds.RTROIObservationsSequence}
    assert types["GTV_Liver"] == "GTV"
    assert types["Kidney_Cyst"] == ""  # a cyst is never a GTV
    assert {types[n] for n in names.values() if n not in ("GTV_Liver", "Kidney_Cyst")} == {"ORGAN"}
    assert labels == {n: n for n in names.values()}
    # The contours are unchanged by the names: they still give back the masks.
    rois = ex.read_rtstruct(result.path, ex.load_run_folder(paired_run["run"]).grid)
    inverse = {v: k for k, v in EXPECTED_TG263.items()}
    for roi in rois:
        assert np.array_equal(roi["mask"], paired_run["masks"][inverse[roi["name"]]]), roi["name"]
    assert result.notes["names"] == "tg263"


def test_rtstruct_tumor_type_is_left_unset_by_default_and_organs_are_organs(paired_run):
    ds = pydicom.dcmread(ex.export(paired_run["run"], "rtstruct", paired_run["root"] / "default.dcm").path)
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    types = {names[int(o.ReferencedROINumber)]: str(o.RTROIInterpretedType) for o in ds.RTROIObservationsSequence}
    assert set(names.values()) == set(EXPECTED_TG263)  # model names by default
    assert types.pop("liver_tumor") == "" and types.pop("kidney_cyst") == ""
    assert set(types.values()) == {"ORGAN"}
    for choice in ("AVOIDANCE", "CONTROL", "ORGAN"):
        ds = pydicom.dcmread(ex.export(paired_run["run"], "rtstruct", paired_run["root"] / f"{choice}.dcm",
                                       tumor_roi_type=choice).path)
        tumor = next(int(r.ROINumber) for r in ds.StructureSetROISequence if r.ROIName == "liver_tumor")
        assert next(o.RTROIInterpretedType for o in ds.RTROIObservationsSequence
                    if int(o.ReferencedROINumber) == tumor) == choice


def test_dicom_seg_and_seg_nrrd_carry_the_same_names_and_colours(paired_run):
    run = ex.load_run_folder(paired_run["run"])
    path = ex.export(paired_run["run"], "dicom-seg", paired_run["root"] / "tg263-seg.dcm", names="tg263").path
    segments = {s["name"]: s for s in ex.read_dicom_seg(path, ex.reference_for(run))}
    assert set(segments) == set(EXPECTED_TG263.values())
    table = structures()
    for structure, name in EXPECTED_TG263.items():
        # RecommendedDisplayCIELabValue is 16-bit CIELab: the RGB colour comes back within one step.
        assert np.abs(np.subtract(segments[name]["color"], table[structure]["color"])).max() <= 1, name
        assert np.array_equal(segments[name]["mask"], paired_run["masks"][structure]), name
    assert cie76(segments["Kidney_L"]["color"], segments["Kidney_R"]["color"]) >= 20
    # The codes still say what the structure is, whatever its name.
    assert segments["Kidney_L"]["type_modifier"]["meaning"] == "Left"
    nrrd = ex.export(paired_run["run"], "seg-nrrd", paired_run["root"] / "tg263.seg.nrrd", names="tg263").path
    seg = slicerio.read_segmentation(str(nrrd))
    by_id = {s["id"]: s for s in seg["segments"]}
    assert {k: v["name"] for k, v in by_id.items()} == EXPECTED_TG263  # ids stay the model names
    assert [round(v * 255) for v in by_id["kidney_left"]["color"]] == table["kidney_left"]["color"]


# ------------------------------------------------------------------------------------------ mapping files
def test_mapping_file_renames_over_tg263_in_json_and_csv(paired_run):
    root = paired_run["root"]
    (root / "map.json").write_text(json.dumps({"names": {"liver_tumor": "GTVp_Liver", "kidney_cyst": "zCyst_L"}}))
    (root / "map.csv").write_text("structure,name\nliver_tumor, GTVp_Liver\n\nkidney_cyst,zCyst_L\n")
    for name in ("map.json", "map.csv"):
        ds = pydicom.dcmread(ex.export(paired_run["run"], "rtstruct", root / f"{name}.dcm", names="tg263",
                                       name_map=root / name).path)
        got = sorted(str(r.ROIName) for r in ds.StructureSetROISequence)
        expected = {**EXPECTED_TG263, "liver_tumor": "GTVp_Liver", "kidney_cyst": "zCyst_L"}
        assert got == sorted(expected.values()), name
    # Over model names, structures the file leaves out keep their model names.
    path = ex.export(paired_run["run"], "seg-nrrd", root / "map.seg.nrrd", name_map=root / "map.csv").path
    assert {s["id"]: s["name"] for s in slicerio.read_segmentation(str(path))["segments"]}["liver"] == "liver"


@pytest.mark.parametrize("content, suffix, message", [
    ('{"livr": "Liver"}', ".json", r"bad.json: unknown structure\(s\) livr; this export has .*liver"),
    ('{"liver": "Organ", "spleen": "ORGAN"}', ".json", r"unique.*spleen -> 'ORGAN' and liver -> 'Organ'"),
    ("liver,Leber\nspleen,liver\n", ".csv", None),  # fine: "liver" is nobody else's name any more
    ("liver,Spleen\n", ".csv", r"unique.*spleen -> 'spleen' and liver -> 'Spleen'"),
    ('{"liver": "%s"}' % ("L" * 65), ".json", "65 characters; DICOM allows 64"),
    ('{"liver": "Liver\\\\1"}', ".json", "backslash"),
    ('{"liver": ""}', ".json", "empty"),
    ('{"liver": 3}', ".json", "must be a string"),
    ('{"liver": "A", "liver": "B"}', ".json", "liver given more than once"),
    ("liver,Liver\nliver,Leber\n", ".csv", r"given twice \(lines 1 and 2\)"),
    ("liver;Liver\n", ".csv", "line 1: expected two columns"),
    ("[1, 2]", ".json", "expected a JSON object"),
    ("{not json", ".json", "not valid JSON"),
])
def test_mapping_file_mistakes_are_refused_before_anything_is_written(paired_run, content, suffix, message):
    root = paired_run["root"]
    path = root / f"bad{suffix}"
    path.write_text(content)
    dest = root / "bad-out.dcm"
    if message is None:
        ex.export(paired_run["run"], "rtstruct", dest, name_map=path, overwrite=True)
        dest.unlink()
        return
    with pytest.raises(InputError, match=message):
        ex.export(paired_run["run"], "rtstruct", dest, name_map=path)
    assert not dest.exists()


def test_names_longer_than_tg263_allows_are_written_with_a_warning(paired_run):
    root = paired_run["root"]
    (root / "long.json").write_text(json.dumps({"liver_tumor": "GTV_Liver_Candidate"}))
    result = ex.export(paired_run["run"], "dicom-seg", root / "long.dcm", names="tg263", name_map=root / "long.json")
    assert result.notes["names_over_16_characters"] == ["GTV_Liver_Candidate (19)"]
    assert "GTV_Liver_Candidate (19)" in result.summary()
    assert "GTV_Liver_Candidate" in {str(s.SegmentLabel) for s in pydicom.dcmread(result.path).SegmentSequence}


def test_custom_class_without_a_tg263_entry_keeps_its_model_name_and_is_listed():
    naming = roinames.roi_names(["liver", "bone_lesion"], names="tg263")
    assert naming.names == {"liver": "Liver", "bone_lesion": "bone_lesion"}
    assert naming.notes()["no_tg263_name"] == ["bone_lesion"]
    mapped = roinames.roi_names(["liver", "bone_lesion"], names="tg263", name_map={"bone_lesion": "GTV_Bone"})
    assert mapped.names["bone_lesion"] == "GTV_Bone" and "no_tg263_name" not in mapped.notes()


def test_cli_export_options_and_their_errors(paired_run, capsys):
    run, root = str(paired_run["run"]), paired_run["root"]
    out = root / "cli" / "rt.dcm"
    assert cli.main(["export", run, "--format", "rtstruct", "-o", str(out), "--names", "tg263",
                     "--tumor-roi-type", "GTV"]) == 0
    assert "names tg263" in capsys.readouterr().out
    assert "GTV_Liver" in {str(r.ROIName) for r in pydicom.dcmread(out).StructureSetROISequence}
    (root / "cli" / "bad.json").write_text('{"livr": "Liver"}')
    assert cli.main(["export", run, "--format", "rtstruct", "-o", str(root / "cli" / "x.dcm"),
                     "--name-map", str(root / "cli" / "bad.json")]) == 2
    assert "unknown structure(s) livr" in capsys.readouterr().err
    assert cli.main(["export", run, "--format", "dicom-seg", "-o", str(root / "cli" / "y.dcm"),
                     "--tumor-roi-type", "GTV"]) == 2
    assert "RTSTRUCT setting" in capsys.readouterr().err
    assert cli.main(["export", run, "--format", "abdomenatlas", "-o", str(root / "cli" / "case"),
                     "--names", "tg263"]) == 2
    assert "AbdomenAtlas structure names" in capsys.readouterr().err
    assert not any((root / "cli" / n).exists() for n in ("x.dcm", "y.dcm", "case"))
    with pytest.raises(SystemExit):
        cli.main(["export", run, "--format", "rtstruct", "--tumor-roi-type", "PTV"])  # not offered
    capsys.readouterr()
