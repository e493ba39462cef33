"""The right model, said plainly: no silent demo default, and a loud warning when the demo model meets a real CT."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from AtlasSegLib import download
from AtlasSegLib.cli import main
from AtlasSegLib.demo import run_demo
from AtlasSegLib.plausibility import is_phantom


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("ATLASSEG_HOME", str(cache))
    return cache


def _assert_names_the_ways_to_get_a_model(err: str):
    for words in ("--model", "atlasseg models list", "atlasseg models fetch", "atlasseg models import"):
        assert words in err, (words, err)


def test_segment_without_model_and_no_cached_real_model_exits_2_naming_list_fetch_import(empty_cache, small_ct,
                                                                                         tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["segment", str(small_ct), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    _assert_names_the_ways_to_get_a_model(err)
    assert "no real model" in err and "atlasseg-demo" in err  # says the demo exists, but must be asked for
    assert not out.exists()


def test_batch_without_model_and_no_cached_real_model_exits_2(empty_cache, small_ct, tmp_path, capsys):
    root = tmp_path / "dataset"
    root.mkdir()
    (root / "case1.nii.gz").symlink_to(small_ct)
    assert main(["batch", str(root), "-o", str(tmp_path / "results"), "--quiet"]) == 2
    _assert_names_the_ways_to_get_a_model(capsys.readouterr().err)
    assert not (tmp_path / "results").exists()


def test_weights_without_model_is_refused(empty_cache, small_ct, tmp_path, capsys):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    assert main(["segment", str(small_ct), "-o", str(tmp_path / "o"), "--weights", str(weights), "--quiet"]) == 2
    assert "--weights needs --model" in capsys.readouterr().err


def test_without_model_the_best_cached_real_model_is_used_and_named(empty_cache, tmp_path, capsys):
    # suprem-segresnet publishes no sha256: a file is adopted on first import (trust on first use) once it loads as
    # the card's network (its keys and shapes; random values here).
    import torch

    from AtlasSegLib.card import builtin_card
    from AtlasSegLib.networks import construct

    file = tmp_path / "supervised_suprem_segresnet_2100.pth"
    state = construct(builtin_card("suprem-segresnet")).state_dict()
    torch.save({"net": {f"module.{k}": v for k, v in state.items()}}, file)
    download.import_file("suprem-segresnet", file)
    from AtlasSegLib.cli import default_model

    assert default_model() == "suprem-segresnet"
    # The choice is announced before anything else happens (here the input is missing: exit 2 after it).
    assert main(["segment", str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no --model given: using suprem-segresnet" in err
    assert "does not exist" in err


def test_phantom_mark_survives_nifti_nrrd_and_mha(tmp_path):
    from AtlasSegLib.phantom import make_phantom

    image = make_phantom(3, tumors=False, size=(24, 20, 12)).image
    assert is_phantom(image)
    for suffix in (".nii.gz", ".nrrd", ".mha"):
        path = tmp_path / f"ph{suffix}"
        sitk.WriteImage(image, str(path))
        assert is_phantom(sitk.ReadImage(str(path))), suffix
    plain = sitk.GetImageFromArray(sitk.GetArrayFromImage(image))  # same voxels, no mark
    assert not is_phantom(plain)


@pytest.mark.slow
def test_demo_model_on_a_real_abdomen_ct_warns_and_flags_the_fat_tumors(small_ct, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["segment", str(small_ct), "-o", str(out), "--model", "atlasseg-demo", "--device", "cpu",
                 "--quiet"]) == 0
    err = capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    warnings = report["warnings"]
    assert warnings[0].startswith("model: atlasseg-demo was trained on synthetic AtlasSeg phantoms only")
    assert "atlasseg: warning: model: atlasseg-demo" in err
    # The 15 "liver tumors" at about -100 HU (fat) are flagged, per structure and in the list.
    tumor = next(s for s in report["structures"] if s["name"] == "liver_tumor")
    assert any("fat or gas" in f for f in tumor["flags"]), tumor["flags"]
    assert any(w.startswith("liver_tumor: ") and "fat or gas" in w for w in warnings)
    # An abdomen: no coverage warning.
    assert not any(w.startswith("coverage:") for w in warnings), warnings
    # Every structure carries its flags list.
    assert all(isinstance(s["flags"], list) for s in report["structures"])
    # The report page shows the warnings first, the review listing too.
    assert main(["report", str(out), "--no-pictures"]) == 0
    html = (out / "report.html").read_text()
    assert 'class="warnings"' in html and html.index('class="warnings"') < html.index("<h2>Tumors</h2>")
    assert "trained on synthetic AtlasSeg phantoms only" in html
    capsys.readouterr()
    assert main(["review", str(out)]) == 0
    assert "atlasseg: warning: model: atlasseg-demo" in capsys.readouterr().err  # stdout: the table alone


@pytest.mark.slow
def test_demo_model_on_a_thigh_warns_about_model_and_coverage(ctdata, tmp_path):
    out = tmp_path / "out"
    thigh = ctdata / "ibsi_sts008_sarcoma_tumor" / "CT" / "image"
    assert main(["segment", str(thigh), "-o", str(out), "--model", "atlasseg-demo", "--device", "cpu",
                 "--quiet"]) == 0
    warnings = json.loads((out / "report.json").read_text())["warnings"]
    assert warnings[0].startswith("model: atlasseg-demo")
    assert any(w.startswith("coverage: no slice shows a trunk-sized body cross-section") for w in warnings), warnings


@pytest.mark.slow
def test_demo_on_its_phantom_has_no_model_warning_and_its_saved_phantom_neither(tmp_path):
    result = run_demo(tmp_path / "demo", seed=9004, device="cpu")
    assert result["report"]["warnings"] == [], result["report"]["warnings"]
    saved = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert saved["warnings"] == []
    # The phantom written by the demo, segmented again from the file, is still known as a phantom.
    assert main(["segment", str(tmp_path / "demo" / "ct.nii.gz"), "-o", str(tmp_path / "again"), "--model",
                 "atlasseg-demo", "--device", "cpu", "--quiet"]) == 0
    again = json.loads((tmp_path / "again" / "report.json").read_text())["warnings"]
    assert not any(w.startswith("model:") for w in again), again
    assert np.isfinite(result["dice"]["liver"]["dice"])
