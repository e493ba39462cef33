"""INT8 backend (NNCF post-training quantization, checked against fp32 on the run's CT), quality presets and the
full-length phantom. The INT8 runs use the trained demo model on a phantom: a first quantization takes ~10 s."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install openvino)")
pytest.importorskip("nncf", reason="NNCF is not installed (pip install nncf)")

import nncf  # noqa: E402

from AtlasSegLib import backends  # noqa: E402
from AtlasSegLib.card import builtin_card  # noqa: E402
from AtlasSegLib.cli import main  # noqa: E402
from AtlasSegLib.errors import InputError  # noqa: E402
from AtlasSegLib.estimate import estimate  # noqa: E402
from AtlasSegLib.inference import count_windows, foreground_windows  # noqa: E402
from AtlasSegLib.io import SourceInfo, read_image  # noqa: E402
from AtlasSegLib.networks import load_model  # noqa: E402
from AtlasSegLib.phantom import FULL_LENGTH_SIZE, make_full_length_phantom, make_phantom  # noqa: E402
from AtlasSegLib.pipeline import (CPU_QUALITY, SegmentOptions, Segmenter, default_quality, prepare,  # noqa: E402
                                  resolve_quality)

@pytest.fixture(scope="module")
def demo_model():
    return load_model(builtin_card("atlasseg-demo"))


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(7, tumors=True)


def _int8_run(model, phantom, out, **kw):
    opts = SegmentOptions(device="cpu", backend="openvino", precision="int8", overview=False, **kw)
    return Segmenter(model, opts).run(phantom.image, SourceInfo("phantom(seed=7)", "phantom"), out)


def test_int8_runs_when_it_agrees_with_fp32_on_the_ct_and_is_quantized_once(demo_model, phantom, tmp_path,
                                                                            monkeypatch):
    monkeypatch.setenv("ATLASSEG_HOME", str(tmp_path / "home"))
    # The demo model's small liver_tumor sits near the default bound on phantoms (0.976-0.983 measured, by
    # calibration), which another CPU's INT8 kernels could tip: this test is about the path taken when the
    # check passes, so it uses a bound the phantom clears by a margin.
    monkeypatch.setattr(backends, "INT8_DICE_BOUND", 0.95)
    report = _int8_run(demo_model, phantom, tmp_path / "a")
    model = report["model"]
    check = model["int8_check"]
    assert model["backend"] == "openvino" and model["precision"] == "int8", model.get("backend_note")
    assert check["ok"] and check["min_dice"] >= 0.95 and check["bound"] == 0.95
    assert len(check["dice"]) >= 5 and check["windows"] == backends.INT8_CHECK_WINDOWS
    assert "phantom(seed=7)" in check["quantization"]["calibration_source"]
    entry = next((tmp_path / "home" / "openvino").glob("int8-*"))
    stamp = (entry / "model.xml").stat().st_mtime_ns
    # A second run (a new Segmenter, as a new process would make) reuses the quantization: NNCF is not called.

    monkeypatch.setattr(nncf, "quantize", lambda *a, **k: pytest.fail("quantized again"))
    again = _int8_run(demo_model, phantom, tmp_path / "b")
    assert again["model"]["precision"] == "int8" and again["model"]["int8_check"]["ok"]
    assert (entry / "model.xml").stat().st_mtime_ns == stamp
    assert again["model"]["int8_check"]["quantization"] == check["quantization"]
    # Same masks as the first run (same INT8 model), and the cache holds no temporary folder.
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a" / "segmentations" / "liver.nii.gz")))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "b" / "segmentations" / "liver.nii.gz")))
    assert np.array_equal(a, b)
    assert not [p for p in (tmp_path / "home" / "openvino").iterdir() if p.name.startswith(".")]


def test_int8_that_misses_its_bound_falls_back_to_fp32_and_report_says_why(demo_model, phantom, tmp_path,
                                                                          monkeypatch):
    # A bound no quantized model can reach (Dice ≤ 1): the real check runs on the real INT8 model and fails.
    monkeypatch.setenv("ATLASSEG_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(backends, "INT8_DICE_BOUND", 1.01)
    report = _int8_run(demo_model, phantom, tmp_path / "out")
    model = report["model"]
    assert model["backend"] == "openvino" and model["precision"] == "fp32"
    assert model["int8_check"]["ok"] is False and model["int8_check"]["bound"] == 1.01
    assert 0.9 < model["int8_check"]["min_dice"] < 1.01
    assert "INT8 vs fp32 Dice" in model["backend_note"] and "fp32 runs" in model["backend_note"]
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["model"]["precision"] == "fp32" and saved["settings"]["precision"] == "fp32"


def test_int8_check_fails_for_a_badly_calibrated_model(demo_model, phantom, tmp_path, monkeypatch):
    """Calibrated on air only (every activation range collapsed), the INT8 model disagrees with fp32 on anatomy:
    the default bound catches it."""
    monkeypatch.setenv("ATLASSEG_HOME", str(tmp_path / "home"))

    card = demo_model.card
    roi = card.inference["roi_size"]
    air = [np.zeros((1, 1) + tuple(roi), np.float32)] * 2
    prep = prepare(phantom.image, card)
    _, check = foreground_windows(prep.array, roi, card.inference["overlap"], 3)
    names = {c.channel: c.name for c in card.classes}
    runner = backends.make_runner(demo_model.net, roi, torch.device("cpu"), "openvino", "int8", calibration=air,
                                  calibration_source="air", check={"windows": check, "names": names,
                                                                   "activation": card.inference["activation"],
                                                                   "threshold": card.inference["threshold"]})
    assert runner.precision == "fp32" and runner.int8_check["ok"] is False
    assert runner.int8_check["min_dice"] < backends.INT8_DICE_BOUND


def test_foreground_windows_sample_tissue_and_keep_check_and_calibration_apart(phantom):
    card = builtin_card("atlasseg-demo")
    roi = card.inference["roi_size"]
    prep = prepare(phantom.image, card)
    cal, chk = foreground_windows(prep.array, roi, 0.5, 3)
    assert len(cal) == 3 and len(chk) == 3
    assert all(w.shape == (1, 1) + tuple(roi) for w in cal + chk)
    assert all((w > 0).mean() > 0.3 for w in cal + chk)  # windows of the body, not of air
    assert not any(np.array_equal(a, b) for a in cal for b in chk)


def test_quality_presets_resolve_to_the_published_and_reduced_settings():
    card = builtin_card("suprem-segresnet")
    ref = resolve_quality("reference", card)
    bal = resolve_quality("balanced", card)
    fast = resolve_quality("fast", card)
    assert (ref.fast, ref.overlap, ref.precision) == (False, 0.75, "fp32")
    assert (bal.fast, bal.overlap, bal.precision) == (False, 0.5, "int8")
    assert (fast.fast, fast.overlap, fast.precision) == (True, 0.5, "int8")
    assert resolve_quality("balanced", card, precision="fp32").precision == "fp32"  # an explicit precision wins
    assert resolve_quality(None, card) == resolve_quality(None, card, fast=False)
    with pytest.raises(InputError, match="contradicts"):
        resolve_quality("reference", card, fast=True)
    with pytest.raises(InputError, match="--quality must be"):
        resolve_quality("best", card)
    # balanced runs ≤ 0.3 of reference's windows on a 512×512×300 CT's model grid (1.5 mm: 273×273×300 voxels).
    shape, roi = (273, 273, 300), card.inference["roi_size"]
    assert count_windows(shape, roi, bal.overlap) / count_windows(shape, roi, ref.overlap) <= 0.3


def test_auto_quality_is_balanced_on_a_cpu_and_the_cards_settings_on_a_gpu_or_with_fast():
    assert CPU_QUALITY == "balanced"  # the README's "Which preset on a CPU" argues this choice
    assert default_quality("auto", torch.device("cpu")) == "balanced"
    assert default_quality("auto", torch.device("cuda")) is None  # the published settings: minutes on a GPU
    assert default_quality("auto", torch.device("cpu"), fast=True) is None  # --fast keeps its meaning
    for explicit in (None, "reference", "balanced", "fast"):
        assert default_quality(explicit, torch.device("cpu")) == explicit


def test_the_cli_runs_balanced_on_a_cpu_when_no_quality_is_given(demo_model, small_ct, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["segment", str(small_ct), "-o", str(out), "--model", "atlasseg-demo", "--device", "cpu",
                 "--backend", "torch"])
    assert code == 0, capsys.readouterr().err
    settings = json.loads((out / "report.json").read_text())["settings"]
    assert settings["quality"] == "balanced" and settings["quality_asked"] == "auto"
    assert settings["inference"]["overlap"] == 0.5


def test_a_first_quantization_writes_nothing_to_stdout(demo_model, phantom, tmp_path, monkeypatch, capfd):
    # stdout carries the CLI's data (--json, --progress-json lines); NNCF logs INFO lines and draws progress
    # bars there unless kept off it.
    monkeypatch.setenv("ATLASSEG_HOME", str(tmp_path / "cache"))  # a fresh cache: the quantization really runs

    card = builtin_card("atlasseg-demo")
    roi = card.inference["roi_size"]
    cal, _ = foreground_windows(prepare(phantom.image, card).array, roi, card.inference["overlap"], 2)
    capfd.readouterr()
    xml, info = backends.quantized(demo_model.net, roi, cal)
    out = capfd.readouterr().out
    assert xml is not None and "calibration_windows" in info
    assert out == ""


def test_int8_needs_openvino_on_the_cpu():
    with pytest.raises(InputError, match="int8 runs with OpenVINO"):
        backends.choose("torch", "int8", torch.device("cpu"))
    with pytest.raises(InputError, match="int8 runs with OpenVINO"):
        backends.choose("auto", "int8", torch.device("cuda"))
    assert backends.choose("auto", "int8", torch.device("cpu")) == backends.Choice("openvino", "int8")


def test_quality_preset_settings_land_in_report_json(demo_model, small_ct, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["segment", str(small_ct), "-o", str(out), "--model", "atlasseg-demo", "--quality", "reference",
                 "--device", "cpu", "--backend", "torch"])
    assert code == 0, capsys.readouterr().err
    settings = json.loads((out / "report.json").read_text())["settings"]
    assert settings["quality"] == "reference" and settings["fast"] is False and settings["precision"] == "fp32"
    assert settings["inference"]["overlap"] == builtin_card("atlasseg-demo").inference["overlap"]


def test_full_length_phantom_has_the_liver_on_about_a_third_of_its_slices():
    # The slices (and so the liver's extent along the body) are the full-size phantom's; in-plane coarser here.
    ph = make_full_length_phantom(2024, size=(128, 128, FULL_LENGTH_SIZE[2]), spacing_mm=(3.2, 3.2, 1.5))
    assert ph.image.GetSize() == (128, 128, 300)
    assert ph.labels["liver"].GetSize() == ph.image.GetSize()
    assert np.allclose(ph.labels["liver"].GetOrigin(), ph.image.GetOrigin())

    def slices(name):
        return int(sitk.GetArrayViewFromImage(ph.labels[name]).any(axis=(1, 2)).sum())

    assert 0.25 <= slices("liver") / 300 <= 0.4
    assert slices("aorta") == 300  # the body runs the whole length: a subset cascade can cut along z
    ct = sitk.GetArrayViewFromImage(ph.image)
    assert ct[:, 64, 64].max() > -200  # body in the middle of every slice range


def test_body_crop_cuts_the_table_on_a_wide_field_of_view_ct(ctdata):
    """The 500 mm field of view DICOM (table shells behind the patient, arms beside): the body crop drops the
    table's rows but keeps every voxel of the trunk and arms (tissue components of ≥ 4 cm² in the projection)."""


    image, _ = read_image(str(ctdata / "totalseg_dicom_upper_abdomen" / "example_ct_dicom"))
    card = builtin_card("suprem-segresnet")
    plain = prepare(image, card)
    body = prepare(image, card, body_crop=True)
    assert body.grid.size[1] <= 0.85 * plain.grid.size[1]  # the table's ~40 rows (60 mm) are gone
    assert body.grid.size[0] >= plain.grid.size[0] - 2 and body.grid.size[2] == plain.grid.size[2]  # arms kept
    # Every large tissue component of the plain crop (body, arms) lies inside the body crop.
    proj = (plain.array > 0).any(axis=2)  # (i, j)
    labels, n = ndimage.label(proj)
    sizes = np.bincount(labels.ravel())[1:]
    offset = np.subtract(body.crop_start, plain.crop_start)[:2]
    for lab in np.nonzero(sizes >= 2000)[0] + 1:
        ii, jj = np.nonzero(labels == lab)
        assert ii.min() >= offset[0] and jj.min() >= offset[1] - 1
        assert ii.max() < offset[0] + body.grid.size[0] and jj.max() < offset[1] + body.grid.size[1]


def test_estimate_counts_each_presets_windows_and_times_them_after_a_run(demo_model, small_ct, tmp_path,
                                                                         monkeypatch):
    monkeypatch.setenv("ATLASSEG_HOME", str(tmp_path / "home"))
    image, source = read_image(str(small_ct))
    card = builtin_card("suprem-segresnet")
    est = estimate(image, card)
    assert set(est) == {"reference", "balanced", "fast"}
    assert est["balanced"]["windows"] <= 0.3 * est["reference"]["windows"]
    assert est["fast"]["windows"] <= est["balanced"]["windows"]
    assert est["reference"]["network_s"] is None and est["reference"]["timing"] is None  # not timed here yet
    # The windows are the run's own: a reference run of the demo model places as many as estimated.
    demo = estimate(image, demo_model.card, qualities=["reference"])["reference"]
    report = Segmenter(demo_model, SegmentOptions(device="cpu", quality="reference",
                                                  overview=False)).run(image, source, tmp_path / "out")
    assert report["settings"]["windows"]["windows"] == demo["windows"]
    timed = estimate(image, demo_model.card, qualities=["reference"])["reference"]
    assert timed["timing"] == "measured" and timed["precision"] == "fp32" and timed["backend"] == "torch"
    assert timed["network_s"] == pytest.approx(report["timings_s"]["inference"], rel=0.5)


def test_a_presets_int8_that_misses_its_bound_falls_back_to_what_auto_picks(demo_model, phantom, tmp_path,
                                                                           monkeypatch):
    monkeypatch.setenv("ATLASSEG_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(backends, "INT8_DICE_BOUND", 1.01)
    opts = SegmentOptions(device="cpu", backend="openvino", quality="balanced", overview=False)
    report = Segmenter(demo_model, opts).run(phantom.image, SourceInfo("phantom(seed=7)", "phantom"), tmp_path / "o")
    auto = backends.choose("auto", "auto", torch.device("cpu")).precision  # bf16 on CPUs with BF16, else fp32
    assert report["model"]["precision"] == auto and report["model"]["int8_check"]["ok"] is False
    assert f"OpenVINO {auto} runs" in report["model"]["backend_note"]
    assert report["settings"]["quality"] == "balanced" and report["settings"]["inference"]["overlap"] == 0.5
