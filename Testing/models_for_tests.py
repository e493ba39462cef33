"""Small real models for tests: an intensity-band TorchScript model and a seeded SegResNet checkpoint."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from AtlasSegLib.card import CARDS_DIR

BONE_HU = 300.0
WINDOW = (-1000.0, 1000.0)


class BoneBand(torch.nn.Module):
    """Marks voxels above 300 HU: a steep logit around the window-scaled threshold, so the pipeline's output
    can be compared with direct thresholding of the input."""

    def __init__(self, level: float):
        super().__init__()
        self.level = level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.level) * 2000.0


def bone_model(tmp_path: Path, *, spacing=(1.0, 1.0, 1.0)) -> Path:
    """Writes a TorchScript bone model and its card; returns the card path."""
    level = (BONE_HU - WINDOW[0]) / (WINDOW[1] - WINDOW[0])
    torch.jit.script(BoneBand(level)).save(str(tmp_path / "bone.pt"))
    card = {
        "id": "test-bone-band", "title": "Bone > 300 HU (test)", "version": "1", "license": "Apache-2.0",
        "architecture": {"type": "torchscript", "file": "bone.pt"},
        "preprocessing": {"orientation": "RAS", "spacing_mm": list(spacing), "hu_window": list(WINDOW)},
        "inference": {"roi_size": [64, 64, 64], "overlap": 0.0, "activation": "sigmoid", "mode": "constant"},
        "postprocessing": {"largest_component": False},
        "classes": [{"channel": 0, "name": "vertebrae"}],
    }
    path = tmp_path / "bone_card.json"
    path.write_text(json.dumps(card))
    return path


def small_segresnet(tmp_path: Path, *, seed: int = 0, init_filters: int = 8, roi: int = 64) -> tuple:
    """A seeded random SegResNet in SuPreM's published layout ('net', 'module.' prefix, 32 outputs), and a copy
    of the suprem-segresnet card made small enough for CPU tests. Returns (card path, weights path)."""
    from monai.networks.nets import SegResNet

    card = json.loads((CARDS_DIR / "suprem-segresnet.json").read_text())
    card = copy.deepcopy(card)
    card["architecture"]["kwargs"]["init_filters"] = init_filters
    card["inference"]["roi_size"] = [roi, roi, roi]
    card["inference"]["overlap"] = 0.25
    torch.manual_seed(seed)
    net = SegResNet(**card["architecture"]["kwargs"])
    weights = tmp_path / "segresnet.pth"
    torch.save({"net": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 1}, weights)
    path = tmp_path / "segresnet_card.json"
    path.write_text(json.dumps(card))
    return path, weights
