"""SuPreM universal-head networks: exact checkpoint layout and parity with the published implementation.

The reference data (key manifest, parity oracle, expected logits) live in the shared folder: ``$ATLASSEG_SHARED``
or ``<repo>/../shared``. Missing reference data is a test failure, not a skip: without it nothing proves
that released checkpoints load and give the published outputs.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from AtlasSegLib.errors import InputError
from AtlasSegLib.suprem import BatchStatBatchNorm3d, build_network, num_classes_from_state_dict

REPO = Path(__file__).resolve().parents[1]
ARCHS = {"unet": "suprem_unet", "swinunetr": "suprem_swinunetr"}


def shared_dir() -> Path:
    """The shared reference folder; fails (never skips) when it or a needed file is missing."""
    root = Path(os.environ.get("ATLASSEG_SHARED", REPO.parent / "shared"))
    needed = [root / "docs" / "suprem_checkpoint_keys.json", root / "tools" / "suprem_parity.py",
              root / "docs" / "suprem_parity" / "input_96.npy"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        pytest.fail(f"SuPreM reference data missing: {', '.join(missing)}; set ATLASSEG_SHARED to the shared "
                    "folder (with docs/ and tools/)")
    return root


def manifest(arch: str) -> list:
    data = json.loads((shared_dir() / "docs" / "suprem_checkpoint_keys.json").read_text())
    return [[name, list(shape), dtype] for name, shape, dtype in data[arch]]


def strip_module(state: dict) -> dict:
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


# parity_checkpoints (the oracle's checkpoints, built once per machine) is a session fixture in conftest.py.


def load_released_layout(arch: str, path: Path) -> torch.nn.Module:
    """Load a checkpoint saved like the released files: checkpoint['net'], keys prefixed 'module.'."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = strip_module(checkpoint["net"])
    net = build_network(ARCHS[arch], num_classes_from_state_dict(state))
    net.load_state_dict(state, strict=True)
    return net.eval()


def parity_error(arch: str, logits: np.ndarray) -> float:
    """Max abs error of (32, 96, 96, 96) logits at the reference samples, via the oracle's own check."""
    sys.path.insert(0, str(shared_dir() / "tools"))
    try:
        import suprem_parity
    finally:
        sys.path.pop(0)
    err, _ = suprem_parity.check(arch, logits)
    return err


def forward_window(net: torch.nn.Module) -> np.ndarray:
    x = np.load(shared_dir() / "docs" / "suprem_parity" / "input_96.npy")
    with torch.inference_mode():
        return net(torch.from_numpy(x)[None, None].float())[0].numpy()


@pytest.mark.parametrize("arch", list(ARCHS))
def test_state_dict_matches_released_names_shapes_and_dtypes(arch):
    net = build_network(ARCHS[arch], 32)
    got = [[name, list(t.shape), str(t.dtype)] for name, t in net.state_dict().items()]
    assert got == manifest(arch)


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(ARCHS))
def test_logits_match_published_implementation_within_1e3(arch, parity_checkpoints):
    net = load_released_layout(arch, parity_checkpoints[arch])
    logits = forward_window(net)
    assert logits.shape == (32, 96, 96, 96)
    err = parity_error(arch, logits)
    assert err <= 1e-3, f"{arch}: max abs error {err:.3g} against the published implementation"


@pytest.mark.slow
def test_oracle_rejects_unet_with_running_statistics_batch_norm(parity_checkpoints, monkeypatch):
    # The usual port mistake: eval-mode BatchNorm (running statistics). The oracle must catch it.
    def running_stats_forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)

    net = load_released_layout("unet", parity_checkpoints["unet"])
    monkeypatch.setattr(BatchStatBatchNorm3d, "forward", running_stats_forward)
    assert parity_error("unet", forward_window(net)) > 1e-1


def test_unet_batch_norm_uses_batch_statistics_in_eval_mode_and_keeps_buffers():
    torch.manual_seed(0)
    net = build_network("suprem_unet", 2).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.rand(1, 1, 16, 16, 16) * 5 + 3
    with torch.no_grad():
        out_eval = net(x)
        net.train()
        out_train = net(x)
    torch.testing.assert_close(out_eval, out_train)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed during inference"


# slow, by hand (its cost is one Swin UNETR forward, which no reference shows): 14 s measured on the loaded 2 cores.
@pytest.mark.parametrize("arch", ["unet", pytest.param("swinunetr", marks=pytest.mark.slow)])
@pytest.mark.parametrize("rows", [25, 9])
def test_checkpoint_class_count_comes_from_organ_embedding(arch, rows):
    torch.manual_seed(1)
    donor = build_network(ARCHS[arch], 32).state_dict()
    donor["organ_embedding"] = torch.randn(rows, 512)
    released = {"net": {"module." + k: v for k, v in donor.items()}, "epoch": 0}
    state = strip_module(released["net"])
    assert num_classes_from_state_dict(state) == rows
    net = build_network(ARCHS[arch], num_classes_from_state_dict(state))
    net.load_state_dict(state, strict=True)
    if arch == "swinunetr" and rows != 9:
        return  # one Swin forward is enough to show the class count reaches the output (~10 s on CPU)
    side = 64 if arch == "swinunetr" else 32  # Swin's bottleneck is 1/32 of the input; instance norm needs > 1 voxel
    with torch.inference_mode():
        out = net.eval()(torch.rand(1, 1, side, side, side))
    assert out.shape == (1, rows, side, side, side)
    assert torch.isfinite(out).all()


def test_num_classes_rejects_state_dict_without_organ_embedding():
    with pytest.raises(InputError, match="organ_embedding"):
        num_classes_from_state_dict({"conv_final.2.conv.weight": torch.zeros(32, 16, 1, 1, 1)})


def test_build_network_rejects_unknown_name_and_keyword():
    with pytest.raises(InputError, match="suprem_unet"):
        build_network("suprem_segresnet", 32)
    with pytest.raises(InputError, match="feature_size"):
        build_network("suprem_unet", 32, feature_size=48)


def test_swin_rejects_window_not_divisible_by_32():
    net = build_network("suprem_swinunetr", 2)
    with pytest.raises(InputError, match="divisible by 32"):
        net(torch.zeros(1, 1, 48, 48, 48))


def test_builtin_cards_choose_class_table_from_checkpoint_rows():
    from AtlasSegLib.card import builtin_card

    for model_id in ("suprem-unet", "suprem-swinunetr"):
        card = builtin_card(model_id)
        assert card.architecture["class_table_from"] == "organ_embedding"
        assert [c.name for c in card.with_class_table(32).classes][27] == "pancreas_tumor"
        atlas11 = card.with_class_table(25).classes
        assert [(c.channel, c.label, c.name) for c in atlas11[:3]] == [
            (0, 1, "aorta"), (1, 2, "gall_bladder"), (2, 3, "kidney_left")]
        assert [c.name for c in card.with_class_table(9).classes] == [c.name for c in atlas11[:9]]
        with pytest.raises(InputError, match="12 classes"):
            card.with_class_table(12)


def test_head_treats_each_sample_of_a_batch_independently():
    from AtlasSegLib.suprem import SupremUniversalModel

    class StubBackbone(torch.nn.Module):
        bottleneck_channels, feature_channels = 32, 16

        def forward(self, x):
            return x.mean(1, keepdim=True).repeat(1, 32, 1, 1, 1)[..., ::4, ::4, ::4] * 3, x.repeat(1, 16, 1, 1, 1)

    torch.manual_seed(2)
    net = SupremUniversalModel(StubBackbone(), 5).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
        net.organ_embedding.normal_()
        x = torch.rand(2, 1, 8, 8, 8)
        both = net(x)
        one_by_one = torch.cat([net(x[:1]), net(x[1:])])
    assert both.shape == (2, 5, 8, 8, 8)
    torch.testing.assert_close(both, one_by_one, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(both[0], both[1])
