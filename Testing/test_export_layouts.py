"""Research exports of a run: Slicer's .seg.nrrd (read back with slicerio, without Slicer) and the AbdomenAtlas
case layout (exported, then imported again). Both must round-trip names, colours, codes and every voxel,
including empty structures and a tumor overlapping its organ."""
from __future__ import annotations

import json
import time

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from AtlasSegLib import cli
from AtlasSegLib import export as ex
from AtlasSegLib.errors import InputError
from AtlasSegLib.geometry import Grid
from testdata import make_run

# TotalSegmentator ids in example_seg.nii.gz -> AbdomenAtlas names
TOTALSEG_IDS = {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "gall_bladder": 4, "liver": 5, "stomach": 6,
                "pancreas": 7}


@pytest.fixture(scope="module")
def nifti_run(tmp_path_factory, ctdata):
    root = tmp_path_factory.mktemp("layout_export")
    ct = ctdata / "totalseg_abdomen_sm" / "example_ct_sm.nii.gz"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(ctdata / "totalseg_abdomen_sm" / "example_seg.nii.gz")))
    masks = {name: (labels == value).astype(np.uint8) for name, value in TOTALSEG_IDS.items()}
    k, j, i = (int(np.median(a)) for a in np.nonzero(masks["liver"]))
    tumor = np.zeros_like(labels, np.uint8)
    tumor[k - 2:k + 3, j - 4:j + 4, i - 4:i + 4] = 1
    masks["liver_tumor"] = tumor  # overlaps the liver: needs its own layer in a .seg.nrrd
    masks["kidney_tumor"] = np.zeros_like(tumor)  # an empty structure must survive the round trip too
    make_run(root / "run", ct, masks)
    return {"run": root / "run", "root": root, "masks": masks, "ct": ct}


def test_seg_nrrd_round_trips_names_colours_terminology_and_voxels(nifti_run):
    t0 = time.perf_counter()
    result = ex.export(nifti_run["run"], "seg-nrrd")
    seconds = time.perf_counter() - t0
    run = ex.load_run_folder(nifti_run["run"])
    seg = slicerio.read_segmentation(str(result.path))
    by_name = {s["name"]: s for s in seg["segments"]}
    assert set(by_name) == set(nifti_run["masks"])
    # slicerio holds voxels (i, j, k) with an IJK-to-LPS matrix: the grid must be the run's.
    assert np.allclose(seg["ijkToLPS"][:3, :3], run.grid.matrix) and np.allclose(seg["ijkToLPS"][:3, 3], run.grid.origin)
    header = nrrd.read_header(str(result.path))
    for index, structure in enumerate(sorted(run.structures, key=lambda s: (s.is_tumor, s.label))):
        segment = by_name[structure.name]
        mask = slicerio.segment_mask(seg, segment).transpose(2, 1, 0)
        assert np.array_equal(mask, nifti_run["masks"][structure.name] > 0), structure.name
        assert np.allclose(np.asarray(segment["color"]) * 255, structure.color, atol=0.01)
        assert segment["tags"]["AtlasSeg.Kind"] == structure.kind
        # The raw tag is exactly Slicer's serialisation (what AtlasSegLogic.terminologyEntry writes).
        assert f"TerminologyEntry:{ex.terminology_entry(structure.entry)}|" in header[f"Segment{index}_Tags"]
        assert ex.entry_from_terminology(ex.terminology_entry(structure.entry)) == {
            k: structure.entry[k] for k in ("category", "type", "type_modifier", "region") if structure.entry.get(k)}
    assert by_name["liver_tumor"]["layer"] != by_name["liver"]["layer"]
    print(f"\n.seg.nrrd: {result.bytes / 1e3:.1f} kB, {result.notes['layers']} layers, {seconds:.2f} s")


def test_abdomenatlas_export_then_import_is_exact(nifti_run):
    t0 = time.perf_counter()
    result = ex.export(nifti_run["run"], "abdomenatlas")
    seconds = time.perf_counter() - t0
    assert result.path.name == "example_ct_sm"  # the case is named after the input
    case = ex.read_abdomenatlas_case(result.path)
    run = ex.load_run_folder(nifti_run["run"])
    entries = {s.name: s for s in run.structures}
    assert {s["name"] for s in case.structures} == set(nifti_run["masks"])
    for structure in case.structures:
        source = entries[structure["name"]]
        mask = sitk.GetArrayFromImage(sitk.ReadImage(structure["file"]))
        assert mask.dtype == np.uint8 and np.array_equal(mask, nifti_run["masks"][structure["name"]])
        assert tuple(structure["color"]) == source.color and structure["label"] == source.label
        assert structure["kind"] == source.kind
        for key in ("category", "type", "type_modifier", "region"):
            assert structure.get(key) == source.entry.get(key)
    ct_in = sitk.ReadImage(str(nifti_run["ct"]))
    ct_out = sitk.ReadImage(str(case.ct_path))
    assert np.array_equal(sitk.GetArrayFromImage(ct_out), sitk.GetArrayFromImage(ct_in))
    assert ex.grid_differences(Grid.of(ct_out), Grid.of(ct_in)) == []
    combined = sitk.GetArrayFromImage(sitk.ReadImage(str(result.path / "combined_labels.nii.gz")))
    # Tumors are drawn over their organ in the combined labels.
    assert np.all(combined[nifti_run["masks"]["liver_tumor"] > 0] == entries["liver_tumor"].label)
    print(f"\nAbdomenAtlas: {result.bytes / 1e3:.1f} kB, {seconds:.2f} s")


def test_abdomenatlas_case_without_labels_json_takes_colours_and_codes_from_the_structure_table(nifti_run):
    dest = nifti_run["root"] / "plain_case"
    ex.export(nifti_run["run"], "abdomenatlas", dest)
    (dest / "labels.json").unlink()  # as AbdomenAtlas itself ships cases: ct.nii.gz + segmentations/ only
    case = ex.read_abdomenatlas_case(dest)
    liver = next(s for s in case.structures if s["name"] == "liver")
    assert liver["type"]["code"] == "10200004" and tuple(liver["color"]) == (221, 130, 101)
    tumor = next(s for s in case.structures if s["name"] == "liver_tumor")
    assert tumor["kind"] == "tumor" and tumor["region"]["meaning"] == "Liver"
    assert len({s["label"] for s in case.structures}) == len(case.structures)


def test_folder_that_is_not_a_case_is_refused(tmp_path):
    (tmp_path / "segmentations").mkdir()
    with pytest.raises(InputError, match="ct.nii.gz"):
        ex.read_abdomenatlas_case(tmp_path)


def test_abdomenatlas_export_says_how_to_give_the_ct_when_the_input_moved(nifti_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(nifti_run["run"], run, ignore=shutil.ignore_patterns("export"))
    report = json.loads((run / "report.json").read_text())
    report["input"]["path"] = str(tmp_path / "moved" / "ct.nii.gz")
    (run / "report.json").write_text(json.dumps(report))
    with pytest.raises(InputError, match="--ct"):
        ex.export(run, "abdomenatlas")
    assert not (run / "export" / "abdomenatlas").exists()
    result = ex.export(run, "abdomenatlas", ct=nifti_run["ct"])
    assert (result.path / "ct.nii.gz").is_file()


def test_export_of_a_folder_that_is_not_a_run_is_refused(tmp_path, capsys):
    assert cli.main(["export", str(tmp_path), "--format", "seg-nrrd"]) == 2
    assert "not an AtlasSeg output folder" in capsys.readouterr().err
    with pytest.raises(InputError, match="unknown export format"):
        ex.export(tmp_path, "stl")
