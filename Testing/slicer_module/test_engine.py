"""End to end through the real engine CLI (``python -m AtlasSegLib``) in a separate process, as inside Slicer."""
import json
import os
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk

import slicer

from AtlasSegModule import AtlasSegBridge as bridge
from AtlasSegModule import AtlasSegLogic
from AtlasSegModule.AtlasSegLogic import DEMO_MODEL_ID, RunOptions
from AtlasSegModule.AtlasSegRunner import RunState
from slicer_harness import REPO_ROOT
from slicer_marks import requires_engine

pytestmark = requires_engine

# The demo model scores 0.95-0.98 on organs of phantoms it was not trained on (AtlasSeg.py's self-test uses the same
# bounds); tumors vary too much between phantoms to bound.
MINIMUM_DICE = {"liver": 0.9, "spleen": 0.85, "kidney_right": 0.85, "kidney_left": 0.85, "pancreas": 0.8,
                "aorta": 0.8}


def _demoWeightsShipped() -> bool:
    card = REPO_ROOT / "AtlasSegLib" / "cards" / f"{DEMO_MODEL_ID}.json"
    return card.is_file() and any((REPO_ROOT / "AtlasSegLib" / "data").glob(f"{DEMO_MODEL_ID}*.pt"))


requires_demo = pytest.mark.skipif(not _demoWeightsShipped(),
                                   reason="the demo model's weights are not in AtlasSegLib/data")


def _dice(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2.0 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


def _tinyModel(folder):
    """A model card and random weights of a tiny MONAI U-Net (3 classes): real engine, seconds per run."""
    import torch
    from monai.networks.nets import UNet

    kwargs = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8], "strides": [2],
              "num_res_units": 0}
    card = {
        "id": "tiny-random", "title": "Tiny random U-Net", "version": "0", "license": "Apache-2.0",
        "architecture": {"type": "monai", "name": "UNet", "kwargs": kwargs},
        "preprocessing": {"orientation": "RAS", "spacing_mm": [4.0, 4.0, 4.0], "hu_window": [-175, 250],
                          "scale": [0, 1], "crop_foreground": False},
        "inference": {"roi_size": [32, 32, 32], "overlap": 0.25, "mode": "gaussian", "sw_batch_size": 1,
                      "activation": "sigmoid", "threshold": 0.5},
        "classes": [{"channel": 0, "label": 1, "name": "liver"}, {"channel": 1, "label": 2, "name": "spleen"},
                    {"channel": 2, "label": 3, "name": "liver_tumor"}],
    }
    torch.manual_seed(0)
    network = UNet(**kwargs)
    # Biases pushed up so every channel is "present" somewhere: the output has real masks to load.
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            if name.endswith("bias"):
                parameter.add_(0.5)
    cardPath, weightsPath = folder / "tiny.json", folder / "tiny.pt"
    cardPath.write_text(json.dumps(card))
    torch.save({"net": network.state_dict()}, weightsPath)
    return cardPath, weightsPath


def test_real_engine_output_becomes_segments_equal_to_its_mask_files(logic, slicer_app, tmp_path):
    """Whatever the model finds, the segments must be exactly the engine's files on the input's grid."""
    cardPath, weightsPath = _tinyModel(tmp_path)
    rng = np.random.default_rng(3)
    ct = rng.normal(40, 300, (24, 40, 48)).astype(np.int16)
    ct[:, :4, :] = -1000  # some air, so the input looks like CT to the engine's sanity check
    geometry = bridge.VolumeGeometry((48, 40, 24), (2.0, 2.0, 3.0), (-50.0, 30.0, 10.0),
                                     ((0.0, 1.0, 0.0), (-1.0, 0.0, 0.0), (0.0, 0.0, 1.0)))
    volume = bridge.volumeNodeFromArray(ct, geometry, "CT")
    options = RunOptions(modelId="", modelCardPath=str(cardPath), weightsPath=str(weightsPath), device="cpu")
    prepared = logic.prepareRun(volume, options, python=sys.executable)
    events = []
    try:
        result = logic.startRun(prepared).wait(timeout=300, onEvent=events.append)
        assert result.state is RunState.SUCCEEDED, result.errorMessage
        results = logic.loadResults(result.outdir, volume)
        for segmentId in results.segmentIds:
            expected = sitk.GetArrayFromImage(
                sitk.ReadImage(str(prepared.outputDir / "segmentations" / f"{segmentId}.nii.gz")))
            np.testing.assert_array_equal(bridge.arrayFromSegment(results.segmentationNode, segmentId, volume),
                                          expected, err_msg=segmentId)
    finally:
        prepared.cleanup()
    assert [e.kind for e in events][-2:] == ["done", "finished"]
    assert any(e.kind == "progress" and e.stage == "inference" for e in events)
    assert results.segmentIds, "the tiny model found nothing at all; the test no longer checks loading"
    segmentation = results.segmentationNode.GetSegmentation()
    assert {segmentation.GetSegment(s).GetName() for s in results.segmentIds} <= {"liver", "spleen", "liver_tumor"}


def test_engine_error_on_a_nonexistent_input_reaches_the_user(logic, slicer_app, tmp_path):
    geometry = bridge.VolumeGeometry((4, 4, 4), (1, 1, 1), (0, 0, 0), tuple(map(tuple, np.eye(3))))
    volume = bridge.volumeNodeFromArray(np.zeros((4, 4, 4), np.int16), geometry, "ct")
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"")  # never read: the engine stops at the input
    prepared = logic.prepareRun(volume, RunOptions(modelId="suprem-segresnet", weightsPath=str(weights)),
                                python=sys.executable)
    prepared.inputPath.unlink()  # as if the file vanished: the engine must say so, in words
    nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
    try:
        result = logic.startRun(prepared).wait(timeout=180)
    finally:
        prepared.cleanup()
    assert result.state is RunState.FAILED
    assert result.returnCode == 2
    assert "does not exist" in result.errorMessage and "input.mha" in result.errorMessage
    assert slicer.mrmlScene.GetNumberOfNodes() == nodesBefore


@requires_demo
@pytest.mark.slow
def test_demo_model_on_the_phantom_gives_named_segments_with_good_dice(logic, slicer_app):
    from AtlasSegLib.phantom import make_phantom

    volume = logic.loadDemoPhantom()  # a phantom the demo model was not trained on
    prepared = logic.prepareRun(volume, RunOptions(modelId=DEMO_MODEL_ID, device="cpu"), python=sys.executable)
    events = []
    try:
        result = logic.startRun(prepared).wait(timeout=600, onEvent=events.append)
        assert result.state is RunState.SUCCEEDED, result.errorMessage
        results = logic.loadResults(result.outdir, volume)
    finally:
        prepared.cleanup()

    progress = [e for e in events if e.kind == "progress"]
    assert progress and {"inference"} <= {e.stage for e in progress}
    fractions = [e.fraction for e in progress]
    assert fractions == sorted(fractions) and fractions[-1] > 0.9
    segmentation = results.segmentationNode.GetSegmentation()
    names = {segmentation.GetSegment(s).GetName() for s in results.segmentIds}
    assert set(MINIMUM_DICE) <= names
    truth = make_phantom(seed=AtlasSegLogic.DEMO_PHANTOM_SEED, tumors=True).labels
    for name, minimum in MINIMUM_DICE.items():
        predicted = bridge.arrayFromSegment(results.segmentationNode, name, volume)
        dice = _dice(predicted, sitk.GetArrayViewFromImage(truth[name]))
        assert dice > minimum, f"{name}: Dice {dice:.3f}"
    assert segmentation.GetSegment("liver").GetTerminology().startswith(AtlasSegLogic.TERMINOLOGY_CONTEXT)
    assert "liver_tumor" in names
    node = results.probabilityNodes["liver_tumor"]
    assert node.GetNodeReference(AtlasSegLogic.SEGMENTATION_ROLE) is results.segmentationNode
    assert node.GetName() == f"{results.segmentationNode.GetName()} liver_tumor probability"
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    assert sh.GetItemParent(sh.GetItemByDataNode(results.segmentationNode)) == \
        sh.GetItemParent(sh.GetItemByDataNode(volume))


def test_cancelling_the_real_engine_kills_it_and_changes_nothing(logic, slicer_app, tmp_path):
    cardPath, weightsPath = _tinyModel(tmp_path)
    geometry = bridge.VolumeGeometry((48, 40, 24), (2.0, 2.0, 3.0), (0.0, 0.0, 0.0), tuple(map(tuple, np.eye(3))))
    volume = bridge.volumeNodeFromArray(np.full((24, 40, 48), -1000, np.int16), geometry, "CT")
    nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
    options = RunOptions(modelId="", modelCardPath=str(cardPath), weightsPath=str(weightsPath), device="cpu")
    prepared = logic.prepareRun(volume, options, python=sys.executable)
    runner = logic.startRun(prepared)
    try:
        deadline = time.monotonic() + 120
        while runner.lastProgress is None and runner.running and time.monotonic() < deadline:
            runner.poll()
            time.sleep(0.05)
        assert runner.lastProgress is not None, "the engine reported no progress"
        runner.cancel()
        result = runner.wait(timeout=60)
    finally:
        prepared.cleanup()
    assert result.state is RunState.CANCELLED
    # No process of the engine's group is left. Killed with SIGKILL, a member can still be in the process table for
    # a few milliseconds until it is reaped (seen on 2 cores: gone by the time 'ps' looked), so allow 5 s.
    deadline = time.monotonic() + 5
    with pytest.raises(ProcessLookupError):
        while True:
            os.killpg(runner.pid, 0)
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
    assert slicer.mrmlScene.GetNumberOfNodes() == nodesBefore
    assert not prepared.tempDir.exists()


@requires_demo
@pytest.mark.slow
def test_the_modules_own_self_test_passes(slicer_app, monkeypatch):
    """Runs AtlasSegTest (what Reload and Test runs in Slicer) with the Qt-only names stubbed out.

    AtlasSeg.py imports qt, ctk and Slicer's widget base classes at the top but uses them only inside the widget;
    the self-test itself needs nothing but the logic, so empty stand-ins are enough to run it here.
    """
    import importlib
    import types
    import unittest

    monkeypatch.setitem(sys.modules, "qt", types.ModuleType("qt"))
    monkeypatch.setitem(sys.modules, "ctk", types.ModuleType("ctk"))
    scripted = sys.modules["slicer.ScriptedLoadableModule"]

    class _Base:
        def __init__(self, *args, **kwargs):
            pass

    class _Test(unittest.TestCase):
        def delayDisplay(self, message, msec=None):
            print(message)

    for name, base in (("ScriptedLoadableModule", _Base), ("ScriptedLoadableModuleWidget", _Base),
                       ("ScriptedLoadableModuleTest", _Test)):
        monkeypatch.setattr(scripted, name, base, raising=False)
    monkeypatch.delitem(sys.modules, "AtlasSeg", raising=False)
    module = importlib.import_module("AtlasSeg")  # the engine runs on this Python: there is no PythonSlicer here
    try:
        test = module.AtlasSegTest("test_DemoModelOnPhantom")
        result = unittest.TestResult()
        test.run(result)
    finally:
        sys.modules.pop("AtlasSeg", None)
    assert result.wasSuccessful(), result.errors + result.failures

