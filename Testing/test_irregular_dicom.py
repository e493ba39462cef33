"""Irregular DICOM series (gantry tilt, uneven spacing, missing slices) are segmented where they were acquired.

ITK's series reader stacks any series on one grid (first slice's position, mean step, the slice normal), so with a
tilt or a gap every slice but the first lands millimetres away from where it was acquired. The series here are
made from the real sarcoma (uncompressed) and upper-abdomen (JPEG 2000) series by rewriting only their position
and orientation headers, as a tilted gantry or a lost file would leave them; the ground truth is DICOM's own
definition: pixel (c, r) of a slice lies at ImagePositionPatient + c·Δc·row + r·Δr·column.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from AtlasSegLib import export as ex
from AtlasSegLib.card import load_card
from AtlasSegLib.cli import main
from AtlasSegLib.errors import InputError
from AtlasSegLib.geometry import Grid, resample
from AtlasSegLib.io import SourceInfo, itk_messages_to_log, read_image
from AtlasSegLib.outputs import OutputWriter
from models_for_tests import BONE_HU, bone_model

SARCOMA = ("ibsi_sts008_sarcoma_tumor", "CT", "image")
ABDOMEN = ("totalseg_dicom_upper_abdomen", "example_ct_dicom")


def rewrite_series(src: Path, dst: Path, *, tilt_deg: float = 0.0, drop=(), shift_mm=None) -> Path:
    """A copy of the series in ``src`` with only position/orientation headers changed (pixel data untouched,
    compressed or not): the slice planes tilted by ``tilt_deg`` about the row axis while the positions stay on
    the table axis (gantry tilt), the slices at sorted indices ``drop`` left out, and slice n moved
    ``shift_mm(n)`` along the table."""
    dst.mkdir(parents=True)
    files = sorted(src.iterdir(), key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))
    t = np.deg2rad(tilt_deg)
    for n, f in enumerate(files):
        if n in drop:
            continue
        ds = pydicom.dcmread(f)
        position = [float(v) for v in ds.ImagePositionPatient]
        if shift_mm is not None:
            position[2] += shift_mm(n)
        ds.ImagePositionPatient = [round(v, 6) for v in position]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, round(np.cos(t), 6), round(np.sin(t), 6)]
        ds.save_as(dst / f.name)
    return dst


def source_slices(folder: Path):
    """Every slice of ``folder`` as (HU array (rows, columns), its own one-slice grid at its true position), in
    the order they lie along the slice normal (as the exports number them)."""
    out = []
    for f in folder.iterdir():
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        hu = sitk.GetArrayFromImage(sitk.ReadImage(str(f), sitk.sitkFloat32)).reshape(int(ds.Rows), int(ds.Columns))
        o = np.asarray(ds.ImageOrientationPatient, float)
        dy, dx = (float(v) for v in ds.PixelSpacing)
        direction = np.column_stack([o[:3], o[3:], np.cross(o[:3], o[3:])])
        out.append((hu, Grid((int(ds.Columns), int(ds.Rows), 1), (dx, dy, 1.0),
                             tuple(float(v) for v in ds.ImagePositionPatient), tuple(direction.reshape(-1)))))
    return sorted(out, key=lambda item: float(np.dot(item[1].origin, np.asarray(item[1].direction).reshape(3, 3)[:, 2])))


def hu_errors_at_true_positions(image: sitk.Image, folder: Path) -> np.ndarray:
    """|HU of each source pixel − the volume's HU at that pixel's physical position| (linear interpolation),
    over the body (source HU > −500); NaN where the volume does not reach the pixel."""
    errors = []
    for hu, grid in source_slices(folder):
        found = sitk.GetArrayFromImage(resample(image, grid, interpolator=sitk.sitkLinear,
                                                pixel_type=sitk.sitkFloat32, default=np.nan))[0]
        errors.append(np.abs(found - hu)[hu > -500])
    return np.concatenate(errors)


def itk_volume(folder: Path) -> sitk.Image:
    """The series as ITK's reader builds it, with no correction (what AtlasSeg segmented before)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    with itk_messages_to_log("reading the uncorrected series for comparison"):
        return reader.Execute()


CASES = {
    # name: (source series, rewrite arguments)
    "sarcoma gantry tilt 15°": (SARCOMA, {"tilt_deg": 15.0}),
    "sarcoma 3 slices missing": (SARCOMA, {"drop": (10, 11, 30)}),
    "sarcoma uneven steps, tilt 7°, a slice missing": (
        SARCOMA, {"tilt_deg": 7.0, "drop": (20,), "shift_mm": lambda n: 0.9 * np.sin(n / 3.0)}),
    "abdomen (JPEG 2000) gantry tilt 20°": (ABDOMEN, {"tilt_deg": 20.0}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_source_pixel_hu_is_found_at_its_true_position(case, tmp_path, ctdata):
    source, kwargs = CASES[case]
    series = rewrite_series(ctdata.joinpath(*source), tmp_path / "series", **kwargs)
    image, info = read_image(series)
    assert info.regularized is not None and info.warnings
    ours = hu_errors_at_true_positions(image, series)
    theirs = hu_errors_at_true_positions(itk_volume(series), series)
    # Regularized: every body pixel is inside the volume; slices lying on grid planes come back exactly, the others
    # (in-plane sub-pixel shifts, uneven steps) within linear interpolation (edges of bone blur by a few 10 HU).
    assert not np.isnan(ours).any()
    median, p99 = np.median(ours), np.percentile(ours, 99)
    assert median <= 10.0 and p99 <= 150.0, (median, p99)
    # ITK's grid: the same check fails (pixels off the volume count as failed).
    theirs = np.nan_to_num(theirs, nan=1e4)
    assert np.median(theirs) > 3 * max(median, 5.0) or np.mean(theirs > 150.0) > 0.05, np.median(theirs)
    print(f"\n{case}: |HU error| at true positions, median/p99: regularized {median:.1f}/{p99:.1f}, "
          f"ITK grid {np.median(theirs):.1f}/{np.percentile(theirs, 99):.1f}; "
          f"largest correction {info.regularized['max_correction_mm']} mm")


def test_regular_series_is_read_as_itk_reads_it(ctdata):
    image, info = read_image(ctdata.joinpath(*SARCOMA))
    assert info.regularized is None and info.warnings == ()
    assert Grid.of(image).differences(Grid.of(itk_volume(ctdata.joinpath(*SARCOMA)))) == []


def test_tilt_is_recorded_with_its_angle_and_no_raw_itk_warning_reaches_stderr(tmp_path, ctdata, capfd, caplog):
    series = rewrite_series(ctdata.joinpath(*SARCOMA), tmp_path / "series", tilt_deg=15.0, drop=(30,))
    capfd.readouterr()
    with caplog.at_level(logging.INFO, logger="AtlasSegLib"):  # .io (our words) and .itk (ITK's)
        image, info = read_image(series)
    err = capfd.readouterr().err
    assert "Non uniform sampling" not in err and "WARNING: In" not in err, err
    # ITK's own words go to the log (for diagnosis); ours say what was found and done.
    assert any("Non uniform sampling" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
    regularized = info.regularized
    assert abs(regularized["gantry_tilt_deg"] - 15.0) < 0.1
    assert regularized["missing_slices"] == 1 and regularized["source_slices"] == 50
    grid = Grid.of(image)
    # The regular grid is orthogonal: the slices' row and column, and their normal.
    assert np.allclose(np.asarray(grid.direction).reshape(3, 3).T @ np.asarray(grid.direction).reshape(3, 3),
                       np.eye(3), atol=1e-6)
    assert abs(grid.spacing[2] - 3.27 * np.cos(np.deg2rad(15.0))) < 0.01
    assert "gantry tilt 15.0°" in info.warnings[0] and "1 slice missing" in info.warnings[0]


@pytest.fixture(scope="module")
def tilted_run(tmp_path_factory, ctdata):
    """A real pipeline run (the bone-band test model, bone > 300 HU) on a tilted sarcoma series with a slice
    missing, through the CLI."""
    root = tmp_path_factory.mktemp("tilted_run")
    series = rewrite_series(ctdata.joinpath(*SARCOMA), root / "series", tilt_deg=12.0, drop=(25,))
    card = bone_model(root)
    return {"series": series, "card": card, "root": root, "out": root / "out"}


def segment(run: dict) -> int:
    return main(["segment", str(run["series"]), "-o", str(run["out"]), "--model-card", str(run["card"]), "--quiet"])


def test_segment_on_tilted_series_records_the_regularization_and_finds_bone_where_it_was_acquired(
        tilted_run, capfd):
    out = tilted_run["out"]
    capfd.readouterr()
    code = segment(tilted_run)
    err = capfd.readouterr().err
    assert code == 0, err
    assert "Non uniform sampling" not in err and "WARNING: In" not in err, err
    report = json.loads((out / "report.json").read_text())
    regularized = report["input"]["regularized"]
    assert abs(regularized["gantry_tilt_deg"] - 12.0) < 0.1 and regularized["missing_slices"] == 1
    assert any("gantry tilt 12.0°" in w and "resampled" in w for w in report["warnings"])
    mask_image = sitk.ReadImage(str(out / "segmentations" / "vertebrae.nii.gz"))
    assert Grid.of(mask_image).differences(Grid.from_dict(regularized["grid"])) == []
    # The bone mask, carried onto each acquired slice, matches that slice's own bone pixels.
    ref = ex.reference_for(ex.load_run_folder(out))
    on_slices = ref.on_slices(sitk.GetArrayFromImage(mask_image))
    bone = np.stack([hu > BONE_HU for hu, _ in source_slices(tilted_run["series"])])
    assert dice(on_slices, bone) > 0.9, dice(on_slices, bone)
    # The same mask paired with the slices as ITK stacks them (index k = slice k) misses much of the bone.
    itk_grid = Grid.of(itk_volume(tilted_run["series"]))
    resampled = sitk.GetArrayFromImage(resample(mask_image, itk_grid, interpolator=sitk.sitkNearestNeighbor))
    assert dice(resampled, bone) < dice(on_slices, bone) - 0.1, dice(resampled, bone)
    print(f"\nbone Dice on acquired slices: regularized {dice(on_slices, bone):.3f}, "
          f"on ITK's grid {dice(resampled, bone):.3f}")


def dice(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def test_dicom_exports_of_a_regularized_run_reference_the_acquired_slices(tilted_run):
    out = tilted_run["out"]
    if not out.is_dir():
        assert segment(tilted_run) == 0
    run = ex.load_run_folder(out)
    ref = ex.reference_for(run)
    assert ref.regularized
    mask = run.mask(run.structures[0])
    expected = ref.on_slices(mask)
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f
            for f in tilted_run["series"].iterdir()}

    # force: the tilted phantom is no abdomen (a coverage warning); the geometry is what is tested here
    seg_path = ex.export(out, "dicom-seg", force=True).path
    ds = pydicom.dcmread(seg_path)
    for frame in ds.PerFrameFunctionalGroupsSequence:
        source = frame.DerivationImageSequence[0].SourceImageSequence[0]
        acquired = pydicom.dcmread(uids[source.ReferencedSOPInstanceUID], stop_before_pixels=True)
        # The frame lies exactly on the acquired slice it names.
        assert np.allclose([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
                           [float(v) for v in acquired.ImagePositionPatient], atol=1e-3)
    segments = ex.read_dicom_seg(seg_path, ref)
    assert np.array_equal(segments[0]["mask"], expected)

    rt_path = ex.export(out, "rtstruct", force=True).path
    rt = pydicom.dcmread(rt_path)
    for contour in rt.ROIContourSequence[0].ContourSequence:
        acquired = pydicom.dcmread(uids[contour.ContourImageSequence[0].ReferencedSOPInstanceUID],
                                   stop_before_pixels=True)
        o = np.asarray(acquired.ImageOrientationPatient, float)
        points = np.asarray(contour.ContourData, float).reshape(-1, 3)
        distance = (points - np.asarray(acquired.ImagePositionPatient, float)) @ np.cross(o[:3], o[3:])
        assert np.abs(distance).max() < 0.01  # on the plane of the slice it references
    rois = ex.read_rtstruct(rt_path, ref)
    assert dice(rois[0]["mask"], expected) >= 0.95


def test_export_of_a_run_made_on_itks_grid_is_refused_as_misplaced(tilted_run, tmp_path):
    series = tilted_run["series"]
    image = itk_volume(series)
    card = load_card(tilted_run["card"])
    writer = OutputWriter(tmp_path / "old", image, SourceInfo(path=str(series), format="dicom"), card,
                          overview=False)
    cls = card.classes[0]
    writer.add_structure(cls, ((0, 0, 0), image.GetSize()),
                         (sitk.GetArrayFromImage(image) > BONE_HU).astype(np.uint8))
    writer.finish(settings={}, timings={})
    with pytest.raises(InputError, match=r"irregular \(gantry tilt 12.0°.*Segment the series again"):
        ex.export(tmp_path / "old", "dicom-seg")


def _refused(capsys, tmp_path, series, words):
    out = tmp_path / "out"
    card = bone_model(tmp_path)
    code = main(["segment", str(series), "-o", str(out), "--model-card", str(card), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    for w in words:
        assert w in err, (w, err)
    assert not out.exists()
    return err


def test_series_with_a_wide_gap_is_refused_naming_the_gap(tmp_path, ctdata, capsys):
    series = rewrite_series(ctdata.joinpath(*SARCOMA), tmp_path / "series", drop=range(20, 26))
    _refused(capsys, tmp_path, series, ["gap of 22.9 mm", "3.27 mm", "slices are missing", "Export the complete"])


def test_series_with_two_slices_at_one_place_is_refused(tmp_path, ctdata, capsys):
    series = rewrite_series(ctdata.joinpath(*SARCOMA), tmp_path / "series",
                            shift_mm=lambda n: -3.27 if n == 5 else 0.0)
    _refused(capsys, tmp_path, series, ["two slices at the same position", "separate them"])


def test_series_mixing_orientations_is_refused(tmp_path, ctdata, capsys):
    series = rewrite_series(ctdata.joinpath(*SARCOMA), tmp_path / "series")
    f = sorted(series.iterdir())[7]
    ds = pydicom.dcmread(f)
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]  # a coronal image among axial ones
    ds.save_as(f)
    _refused(capsys, tmp_path, series, ["different orientations", "--series"])
