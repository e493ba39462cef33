"""Logic pieces the panel shows or runs: model registry, device advice, Apply readiness, engine command."""
import sys

import numpy as np
import pytest
import SimpleITK as sitk

import slicer

from AtlasSegModule import AtlasSegBridge as bridge
from AtlasSegModule import AtlasSegLogic
from AtlasSegModule.AtlasSegLogic import (DeviceInfo, RunOptions, applyBlocker, describeVolume, engineCommand,
                                          formatDuration, orientationCode, progressText, qualityHint)

EYE = tuple(map(tuple, np.eye(3)))


@pytest.fixture
def volume(slicer_app):
    return bridge.volumeNodeFromArray(np.full((4, 5, 6), -500, np.int16),
                                      bridge.VolumeGeometry((6, 5, 4), (0.8, 0.8, 2.0), (1, 2, 3), EYE), "CT")


# ---------------------------------------------------------------------------------------------- models
def test_registry_lists_every_builtin_card_with_structures_and_license(logic):
    from AtlasSegLib.card import builtin_card_ids

    models = logic.models()
    assert {m.id for m in models} == set(builtin_card_ids())
    suprem = next(m for m in models if m.id == "suprem-segresnet")
    assert "liver" in suprem.organs and "liver_tumor" in suprem.tumors
    assert len(suprem.structures) == 32
    assert suprem.license.startswith("Apache-2.0")
    assert "ICLR 2024" in suprem.citation
    assert suprem.downloadable


def test_a_broken_card_does_not_empty_the_model_list(logic, monkeypatch):
    from AtlasSegLib import card as cards

    real = cards.builtin_card_ids()
    monkeypatch.setattr(cards, "builtin_card_ids", lambda: real + ["no-such-card"])
    assert {m.id for m in logic.models()} == set(real)


def test_model_search_matches_words_in_any_field(logic):
    suprem = logic.modelInfo("suprem-segresnet")
    assert suprem.matches("pancreas tumor") and suprem.matches("SegResNet") and suprem.matches("apache")
    assert not suprem.matches("prostate_cancer_mri")


def test_model_details_name_structures_license_and_citation(logic):
    html = AtlasSegLogic.modelDetailsHtml(logic.modelInfo("suprem-segresnet"))
    assert "liver_tumor" in html and "Apache-2.0" in html and "ICLR 2024" in html and "github.com/MrGiovanni" in html


def test_size_and_status_texts():
    model = AtlasSegLogic.ModelInfo(id="m", title="M", description="", structures=(), license="", citation="",
                                    homepage="", sizeBytes=251_000_000, weightsFilename="w.pth", downloaded=False,
                                    downloadable=False)
    assert model.sizeText() == "251 MB" and model.sizeColumnText() == "251 MB"
    assert AtlasSegLogic.ModelInfo(**{**model.__dict__, "sizeBytes": None}).sizeColumnText() == "?"
    assert model.statusText() == "weights file needed"


def test_license_is_shortened_for_the_table(logic):
    assert logic.modelInfo("suprem-segresnet").licenseShort() == "Apache-2.0"
    notStated = AtlasSegLogic.ModelInfo(**{**logic.modelInfo("suprem-segresnet").__dict__,
                                           "license": "Not stated for the weights: check the hub"})
    assert notStated.licenseShort() == "not stated"


# ---------------------------------------------------------------------------------------------- device
def test_device_probe_reports_this_torch(logic):
    import torch

    info = logic.deviceInfo()
    assert info.torchVersion == torch.__version__ and not info.error
    assert info.hasGpu == torch.cuda.is_available()
    assert "torch" in info.summary()


def test_cpu_without_fast_mode_is_advised_to_use_fast_mode():
    cpu = DeviceInfo(torchVersion="2.3", cudaBuild="")
    hint = qualityHint(cpu, "auto", fast=False)
    assert "Fast mode" in hint and "no CUDA support" in hint
    assert "Fast mode" not in qualityHint(DeviceInfo(torchVersion="2.3", cudaBuild="12.1", gpuName="A100",
                                                     gpuMemoryGiB=80.0), "auto", fast=False)


def test_small_gpu_is_warned_about_memory():
    small = DeviceInfo(torchVersion="2.3", cudaBuild="12.1", gpuName="RTX 3070", gpuMemoryGiB=7.6 - 1.0)
    assert "6.6 GiB" in qualityHint(small, "auto", fast=False)
    assert qualityHint(small, "auto", fast=True) == ""


def test_gpu_requested_without_gpu_is_flagged():
    assert "none is available" in qualityHint(DeviceInfo(torchVersion="2.3", cudaBuild="12.1"), "cuda", fast=True)


def test_missing_torch_is_explained():
    assert "PyTorch extension" in qualityHint(DeviceInfo(error="PyTorch is not installed"), "auto", fast=False)


# ----------------------------------------------------------------------------------------------- apply
def test_apply_blocker_says_what_is_missing_in_order(logic, volume):
    model = logic.modelInfo("suprem-segresnet")
    common = dict(model=model, structures=("liver",), overwrite=False, outputSegmentation=None)
    assert "Select an input CT" in applyBlocker(inputVolume=None, **common)
    assert applyBlocker(inputVolume=volume, **common) == ""
    assert "Tick at least one structure" in applyBlocker(inputVolume=volume, **{**common, "structures": ()})
    assert "Select a model" in applyBlocker(inputVolume=volume, **{**common, "model": None})
    assert "segmentation to overwrite" in applyBlocker(inputVolume=volume, **{**common, "overwrite": True})
    assert "pip failed" == applyBlocker(inputVolume=volume, dependenciesError="pip failed", **common)


def test_model_without_weights_or_url_blocks_apply_with_the_file_to_import(logic, volume):
    model = logic.modelInfo("suprem-segresnet")
    offline = AtlasSegLogic.ModelInfo(**{**model.__dict__, "downloaded": False, "downloadable": False})
    reason = applyBlocker(inputVolume=volume, model=offline, structures=("liver",), overwrite=False,
                          outputSegmentation=None)
    assert "Import weights file" in reason and model.weightsFilename in reason


# ------------------------------------------------------------------------------------------------- run
def test_engine_command_carries_every_option():
    options = RunOptions(modelId="suprem-segresnet", structures=("liver", "liver_tumor"), device="cpu", fast=True,
                         weightsPath="/w/model.pth")
    command = engineCommand("/py", "/t/in.mha", "/t/out", options)
    assert command[:7] == ["/py", "-m", "AtlasSegLib", "segment", "/t/in.mha", "-o", "/t/out"]
    joined = " ".join(command)
    assert "--model suprem-segresnet" in joined and "--weights /w/model.pth" in joined
    assert "--structures liver,liver_tumor" in joined and "--device cpu" in joined
    assert command[-2:] == ["--fast", "--progress-json"]
    own = engineCommand("/py", "in", "out", RunOptions(modelId="", modelCardPath="/cards/mine.json"))
    assert "--model-card" in own and "--model" not in own and "--structures" not in own and "--fast" not in own


def test_chosen_backend_and_precision_reach_the_engine_command_line():
    command = engineCommand("/py", "in", "out", RunOptions(modelId="atlasseg-demo", backend="openvino",
                                                           precision="fp32"))
    assert command[command.index("--backend") + 1] == "openvino"
    assert command[command.index("--precision") + 1] == "fp32"
    default = engineCommand("/py", "in", "out", RunOptions(modelId="atlasseg-demo"))
    assert default[default.index("--backend") + 1] == "auto" and default[default.index("--precision") + 1] == "auto"
    with pytest.raises(ValueError, match="backend must be one of auto, torch, openvino"):
        RunOptions(backend="onnx")
    # The panel offers exactly the engine's choices, and the engine's parser accepts what the panel sends.
    from AtlasSegLib import backends
    from AtlasSegLib.cli import build_parser

    assert (AtlasSegLogic.BACKENDS, AtlasSegLogic.PRECISIONS) == (backends.BACKENDS, backends.PRECISIONS)
    args = build_parser().parse_args(command[3:])
    assert (args.backend, args.precision) == ("openvino", "fp32")


def test_the_chosen_quality_reaches_the_engine_command_line_and_the_engine_accepts_it():
    from AtlasSegLib.cli import build_parser
    from AtlasSegLib.pipeline import QUALITIES

    assert tuple(QUALITIES) == AtlasSegLogic.QUALITIES  # the panel offers exactly the engine's presets
    for quality in QUALITIES:
        command = engineCommand("/py", "in", "out", RunOptions(modelId="atlasseg-demo", quality=quality))
        assert command[command.index("--quality") + 1] == quality and "--fast" not in command
        assert build_parser().parse_args(command[3:]).quality == quality
    # The engine refuses --fast with reference/balanced: so does RunOptions, before a process is started.
    with pytest.raises(ValueError, match="fast contradicts quality 'balanced'"):
        RunOptions(quality="balanced", fast=True)
    with pytest.raises(ValueError, match="quality must be one of reference, balanced, fast"):
        RunOptions(quality="best")


def test_the_estimate_command_is_the_engines_and_its_answer_or_refusal_is_read_back():
    from AtlasSegLib.cli import build_parser

    command = AtlasSegLogic.estimateCommand("/py", "/t/in.mha", "suprem-segresnet", device="cpu")
    args = build_parser().parse_args(command[3:])
    assert (args.command, args.input, args.model, args.device, args.json) == (
        "estimate", "/t/in.mha", "suprem-segresnet", "cpu", True)
    answer = AtlasSegLogic.parseEstimateOutput(
        'a warning line\n{"model": "m", "device": "cpu", "presets": {"balanced": {"windows": 150, "total_s": 250.0, '
        '"timing": "measured"}}}\n', 0)
    assert answer.error == "" and answer.text("balanced") == "150 windows, ~4 min" and answer.text("fast") == ""
    refused = AtlasSegLogic.parseEstimateOutput("atlasseg: error: no voxel is above -175 HU: the image holds no "
                                                "body to segment\n", 2)
    assert refused.error.startswith("no voxel is above -175 HU") and refused.presets == {}


def test_backend_in_use_is_read_from_the_runs_report(tmp_path):
    import json

    (tmp_path / "report.json").write_text(json.dumps({"structures": [], "model": {"backend": "torch", "precision": "fp32",
                                                                "backend_note": "12 windows: torch fp32 runs them"}}))
    assert AtlasSegLogic.readRunBackend(tmp_path) == "torch fp32 (12 windows: torch fp32 runs them)"
    (tmp_path / "report.json").write_text(json.dumps({"structures": [], "model": {"backend": "openvino", "precision": "bf16"}}))
    assert AtlasSegLogic.readRunBackend(tmp_path) == "openvino bf16"
    assert AtlasSegLogic.readRunBackend(tmp_path / "missing") == ""


def test_run_options_refuse_unknown_devices():
    with pytest.raises(ValueError, match="device must be one of auto, cpu, cuda"):
        RunOptions(device="mps")


def test_prepare_run_writes_the_input_and_points_the_engine_at_this_library(logic, volume):
    prepared = logic.prepareRun(volume, RunOptions(modelId="suprem-segresnet"), python=sys.executable)
    try:
        image = sitk.ReadImage(str(prepared.inputPath))
        assert bridge.VolumeGeometry.fromSitk(image) == bridge.VolumeGeometry.fromVolumeNode(volume)
        assert not prepared.outputDir.exists()  # the engine refuses an existing output folder
        assert prepared.command[0] == sys.executable
        assert prepared.cwd == str(AtlasSegLogic.LIBRARY_PARENT_DIR)
        assert (AtlasSegLogic.LIBRARY_PARENT_DIR / "AtlasSegLib" / "__init__.py").is_file()
        assert str(AtlasSegLogic.LIBRARY_PARENT_DIR) in prepared.env["PYTHONPATH"]
    finally:
        prepared.cleanup()
    assert not prepared.tempDir.exists()


def test_prepare_run_refuses_a_volume_without_voxels(logic, slicer_app):
    empty = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    with pytest.raises(ValueError, match="has voxels"):
        logic.prepareRun(empty, RunOptions())


# ------------------------------------------------------------------------------------------- text bits
def test_elapsed_time_is_shown_like_a_clock():
    assert formatDuration(75.4) == "1:15" and formatDuration(3725) == "1:02:05" and formatDuration(-1) == "0:00"


def test_progress_line_has_stage_percentage_and_elapsed_time():
    assert progressText("inference", 0.42, "window 12/30", 75) == \
        "Running the model (window 12/30) — 42% — 1:15 elapsed"


def test_orientation_code_names_axes_and_flags_oblique_grids():
    assert orientationCode(np.eye(3)) == "RAS"
    assert orientationCode(np.diag([-1, -1, 1])) == "LPS"
    tilted = np.array([[np.cos(0.2), -np.sin(0.2), 0], [np.sin(0.2), np.cos(0.2), 0], [0, 0, 1]])
    assert orientationCode(tilted) == "RAS*"


def test_input_description(volume):
    assert describeVolume(volume) == "6×5×4 voxels, 0.8×0.8×2 mm, RAS"
    assert describeVolume(None) == ""


def test_parameter_node_is_the_modules_singleton(logic):
    node = logic.getParameterNode()
    node.SetParameter("modelId", "suprem-unet")
    assert logic.getParameterNode().GetParameter("modelId") == "suprem-unet"
