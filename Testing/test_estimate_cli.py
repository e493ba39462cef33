"""``atlasseg estimate``: the windows and time of each ``--quality`` preset for a CT, before a run. What the Slicer
panel shows before Apply comes from this command (run in the engine's Python), so it must say exactly what
``estimate.estimate`` says, on real CTs, and refuse bad input before torch is imported."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import pytest

from AtlasSegLib.backends import AUTO_MIN_WINDOWS
from AtlasSegLib.card import builtin_card
from AtlasSegLib.estimate import describe, duration_text, estimate
from AtlasSegLib.io import read_image
from AtlasSegLib.windowtimes import record_window_time
from testdata import REPO
from test_preflight import run_cli

def _estimate_cli(*args, home):
    env = {**os.environ, "PYTHONPATH": str(REPO), "ATLASSEG_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "AtlasSegLib", "estimate", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300)


@pytest.mark.parametrize("which", ["nifti_3mm", "dicom_512_wide_fov"])
def test_cli_estimate_on_a_real_ct_says_what_estimate_says(which, ctdata, tmp_path, monkeypatch):
    ct = (ctdata / "totalseg_abdomen_sm" / "example_ct_sm.nii.gz" if which == "nifti_3mm"
          else ctdata / "totalseg_dicom_upper_abdomen" / "example_ct_dicom")
    monkeypatch.setenv("ATLASSEG_HOME", str(tmp_path))
    expected = estimate(read_image(str(ct))[0], builtin_card("suprem-segresnet"), device="cpu")
    r = _estimate_cli(ct, "--model", "suprem-segresnet", "--device", "cpu", "--json", home=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)  # stdout is the one JSON object, nothing else
    assert out["presets"] == expected and out["model"] == "suprem-segresnet" and out["device"] == "cpu"
    assert list(out["presets"]) == ["reference", "balanced", "fast"]
    # The presets differ on a real CT (else the panel would offer three names for one run).
    assert out["presets"]["fast"]["windows"] < out["presets"]["balanced"]["windows"] <= \
        out["presets"]["reference"]["windows"]
    assert all(p["total_s"] is None and p["timing"] is None for p in out["presets"].values())  # fresh machine

    plain = _estimate_cli(ct, "--model", "suprem-segresnet", "--device", "cpu", home=tmp_path)
    assert plain.returncode == 0 and plain.stderr == "", plain.stderr
    rows = {line.split()[0]: line for line in plain.stdout.splitlines()[2:]}
    for quality, entry in expected.items():
        assert rows[quality].split()[1] == str(entry["windows"])
        assert "not timed yet on this machine" in rows[quality]


def test_once_this_machine_has_timed_the_model_the_cli_gives_seconds(small_ct, tmp_path, monkeypatch):
    monkeypatch.setenv("ATLASSEG_HOME", str(tmp_path))
    # As a finished run records it (Segmenter.run): 20 windows of OpenVINO fp32 in 60 s here.
    record_window_time("suprem-segresnet", "openvino", "fp32", 60.0, 20)
    r = _estimate_cli(small_ct, "--model", "suprem-segresnet", "--device", "cpu", "--json", home=tmp_path)
    assert r.returncode == 0, r.stderr
    presets = json.loads(r.stdout)["presets"]
    reference = presets["reference"]
    if reference["backend"] != "openvino":
        pytest.skip("OpenVINO is not installed: the fp32 OpenVINO time recorded here is not the one used")
    assert reference["timing"] == "measured" and reference["window_s"] == 3.0
    assert reference["network_s"] == pytest.approx(3.0 * reference["windows"])
    assert presets["balanced"]["timing"] in ("assumed", "measured")  # INT8 from fp32 until INT8 ran here
    plain = _estimate_cli(small_ct, "--model", "suprem-segresnet", "--device", "cpu", home=tmp_path)
    assert duration_text(reference["total_s"]) in plain.stdout and "measured here" in plain.stdout


def test_duration_text_rounds_like_an_estimate():
    assert duration_text(None) == "not timed yet on this machine"
    assert duration_text(3) == "~10 s" and duration_text(44) == "~40 s"
    assert duration_text(251) == "~4 min" and duration_text(89 * 60) == "~89 min"
    assert duration_text(5400) == "~1.5 h"
    assert describe({"windows": 150, "total_s": 240.0, "timing": "measured"}) == "150 windows, ~4 min"
    assert describe({"windows": 1, "total_s": None, "timing": None}) == "1 window, not timed yet on this machine"


@pytest.mark.parametrize("args, words", [
    (["{missing}", "--model", "suprem-segresnet"], "does not exist"),
    (["{ct}", "--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["{ct}", "--model", "suprem-segresnet", "--series", "1.2.3"], "--series applies to DICOM folders only"),
    (["{truncated}", "--model", "suprem-segresnet"], "truncated"),
])
def test_estimate_refuses_bad_input_with_exit_2_before_torch(args, words, small_ct, tmp_path):
    truncated = tmp_path / "cut.nii"
    truncated.write_bytes(gzip.decompress(small_ct.read_bytes())[:50_000])
    args = [a.format(missing=tmp_path / "none.nii.gz", ct=small_ct, truncated=truncated) for a in args]
    code, stderr, heavy = run_cli(tmp_path, "estimate", *args)
    assert code == 2 and words in stderr, stderr
    assert heavy == []


def test_a_small_runs_preset_is_estimated_with_what_it_runs_not_with_an_int8_it_skips(small_ct, tmp_path,
                                                                                      monkeypatch):
    """Runs under backends.AUTO_MIN_WINDOWS windows skip a preset's first quantization and run what auto runs
    (pipeline.Segmenter._make_runner): after such a run the estimate must use its time, not stay 'not timed'."""

    monkeypatch.setenv("ATLASSEG_HOME", str(tmp_path))
    image = read_image(str(small_ct))[0]
    card = builtin_card("atlasseg-demo")
    before = estimate(image, card, device="cpu")["balanced"]
    assert before["windows"] < AUTO_MIN_WINDOWS and before["total_s"] is None
    assert (before["backend"], before["precision"]) == ("torch", "fp32")  # what a fresh machine runs for so few
    record_window_time(card.id, "torch", "fp32", 2.0, 10)  # as the balanced run of the demo model records it
    after = estimate(image, card, device="cpu")["balanced"]
    assert (after["backend"], after["precision"], after["timing"]) == ("torch", "fp32", "measured")
    assert after["window_s"] == 0.2 and after["network_s"] == pytest.approx(0.2 * after["windows"])
