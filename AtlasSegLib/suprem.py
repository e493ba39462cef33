"""SuPreM universal-head networks (U-Net and Swin UNETR backbones), written from the published facts.

The released SuPreM U-Net and Swin UNETR checkpoints share a text-conditioned "universal" head: every class
has a fixed 512-d text embedding (the ``organ_embedding`` buffer, one row per class); a small controller
turns [global image feature, class embedding] into the 153 weights and biases of a per-class dynamic head
(three 1×1×1 convolutions 8→8→8→1) that runs on 8-channel full-resolution features.

The modules here reproduce the published parameter/buffer names, shapes and dtypes exactly, so a released
checkpoint loads with ``load_state_dict(strict=True)`` once the ``module.`` prefix (DistributedDataParallel)
is stripped, and their outputs match the published implementation (checked against the parity oracle in
``shared/tools/suprem_parity.py``; see ``Testing/test_suprem_networks.py``).

Example:
    >>> net = build_network("suprem_unet", num_classes=32)
    >>> logits = net(torch.zeros(1, 1, 96, 96, 96))   # (1, 32, 96, 96, 96); apply a sigmoid per class

The number of classes of a released checkpoint is the first dimension of its ``organ_embedding``
(32, 25 or 9); :func:`num_classes_from_state_dict` reads it.
"""
from __future__ import annotations

import inspect
import logging
import math
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError

__all__ = [
    "NETWORK_NAMES",
    "SupremUniversalModel",
    "UNet3DBackbone",
    "SwinUNETRBackbone",
    "build_network",
    "num_classes_from_state_dict",
]

logger = logging.getLogger(__name__)

TEXT_EMBEDDING_DIM = 512
"""Width of one class's text embedding (a row of ``organ_embedding``)."""
HEAD_CHANNELS = 8
"""Channels of the features the per-class dynamic head runs on (output of ``precls_conv``)."""
_TASK_DIM = 256
# The dynamic head is 1x1x1 convolutions 8 -> 8 -> 8 -> 1: its weights and biases, in the order the
# controller emits them (all weights first, then all biases; each weight matrix row-major out x in).
_HEAD_WEIGHT_SHAPES = ((HEAD_CHANNELS, HEAD_CHANNELS), (HEAD_CHANNELS, HEAD_CHANNELS), (1, HEAD_CHANNELS))
_HEAD_BIAS_SIZES = (HEAD_CHANNELS, HEAD_CHANNELS, 1)
NUM_DYNAMIC_PARAMS = sum(o * i for o, i in _HEAD_WEIGHT_SHAPES) + sum(_HEAD_BIAS_SIZES)  # 153


class BatchStatBatchNorm3d(nn.BatchNorm3d):
    """BatchNorm3d that always normalises with the statistics of the batch it is given, in eval mode too.

    The published SuPreM U-Net (Models Genesis style) was trained and is run this way; normalising with the
    running statistics instead changes the outputs completely. ``running_mean``, ``running_var`` and
    ``num_batches_tracked`` remain as buffers so released checkpoints load strictly, but they are never
    read nor updated (inference must not mutate the loaded weights). A consequence worth knowing: each
    batch is normalised as a whole, so sliding-window inference should use ``sw_batch_size`` 1 to match the
    published results (every 96³ window normalised on its own).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


class _LUConv(nn.Module):
    """3×3×3 convolution → batch-statistics batch norm → ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1)
        self.bn1 = BatchStatBatchNorm3d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(x)))


class _DownTransition(nn.Module):
    """Two LUConvs (``in → 32·2^depth → 64·2^depth``), then 2× max-pooling except at the bottleneck."""

    def __init__(self, in_channels: int, depth: int, pool: bool):
        super().__init__()
        mid = 32 * 2 ** depth
        self.ops = nn.Sequential(_LUConv(in_channels, mid), _LUConv(mid, 2 * mid))
        self.pool = pool

    def forward(self, x: torch.Tensor):
        """Return (output for the next level, features for the skip connection)."""
        skip = self.ops(x)
        return (F.max_pool3d(skip, 2) if self.pool else skip), skip


class _UpTransition(nn.Module):
    """2× transposed convolution, concatenation with the skip features, then two LUConvs."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.up_conv = nn.ConvTranspose3d(in_channels, in_channels, kernel_size=2, stride=2)
        self.ops = nn.Sequential(_LUConv(in_channels + in_channels // 2, out_channels),
                                 _LUConv(out_channels, out_channels))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.ops(torch.cat((self.up_conv(x), skip), dim=1))


class UNet3DBackbone(nn.Module):
    """Models Genesis style 3D U-Net: encoder 64/128/256/512, transposed-convolution decoder.

    ``forward(x)`` with ``x`` (B, 1, D, H, W), D, H, W divisible by 8, returns
    ``(bottleneck (B, 512, D/8, H/8, W/8), features (B, 64, D, H, W))``.
    """

    bottleneck_channels = 512
    feature_channels = 64

    def __init__(self, in_channels: int = 1):
        super().__init__()
        self.down_tr64 = _DownTransition(in_channels, 0, pool=True)
        self.down_tr128 = _DownTransition(64, 1, pool=True)
        self.down_tr256 = _DownTransition(128, 2, pool=True)
        self.down_tr512 = _DownTransition(256, 3, pool=False)
        self.up_tr256 = _UpTransition(512, 256)
        self.up_tr128 = _UpTransition(256, 128)
        self.up_tr64 = _UpTransition(128, 64)

    def forward(self, x: torch.Tensor):
        if x.ndim != 5 or any(s % 8 for s in x.shape[2:]):
            raise InputError(f"SuPreM U-Net needs a (B, C, D, H, W) input with D, H, W divisible by 8; "
                             f"got shape {tuple(x.shape)} (use a roi_size such as 96)")
        x, skip64 = self.down_tr64(x)
        x, skip128 = self.down_tr128(x)
        x, skip256 = self.down_tr256(x)
        bottleneck, _ = self.down_tr512(x)
        x = self.up_tr256(bottleneck, skip256)
        x = self.up_tr128(x, skip128)
        return bottleneck, self.up_tr64(x, skip64)


class SwinUNETRBackbone(nn.Module):
    """MONAI ``SwinUNETR(in_channels=1, feature_size=48)`` without its output layer.

    Built by composition so the parameter names are exactly MONAI's (``swinViT.*``, ``encoder1..4``,
    ``encoder10``, ``decoder5..1``) under whatever prefix the owner gives it.
    ``forward(x)`` with ``x`` (B, 1, D, H, W), D, H, W divisible by 32, returns
    ``(bottleneck (B, 768, D/32, H/32, W/32), features (B, 48, D, H, W))``.

    The transformer stages are run by :meth:`_swin_hidden_states` instead of ``SwinTransformer.forward``
    because MONAI's forward needs the optional ``einops`` package for what are plain axis permutations;
    this way the model runs in environments (such as Slicer's) that do not have it.
    """

    def __init__(self, in_channels: int = 1, feature_size: int = 48):
        super().__init__()
        from monai.networks.nets import SwinUNETR  # imported here: only this backbone needs it

        kwargs = {}
        if "img_size" in inspect.signature(SwinUNETR.__init__).parameters:
            # MONAI < 1.5 still requires the (deprecated, unused) img_size argument.
            kwargs["img_size"] = (96, 96, 96)
        # out_channels is irrelevant: the output layer is dropped (the universal head replaces it).
        net = SwinUNETR(in_channels=in_channels, out_channels=1, feature_size=feature_size, **kwargs)
        self.normalize = net.normalize
        self.patch_size = getattr(net, "patch_size", 2)
        for name in ("swinViT", "encoder1", "encoder2", "encoder3", "encoder4", "encoder10",
                     "decoder5", "decoder4", "decoder3", "decoder2", "decoder1"):
            self.add_module(name, getattr(net, name))
        self.bottleneck_channels = 16 * feature_size
        self.feature_channels = feature_size

    def forward(self, x: torch.Tensor):
        divisor = self.patch_size ** 5
        if x.ndim != 5 or any(s % divisor for s in x.shape[2:]):
            raise InputError(f"Swin UNETR needs a (B, C, D, H, W) input with D, H, W divisible by {divisor}; "
                             f"got shape {tuple(x.shape)} (use a roi_size such as 96)")
        hidden = self._swin_hidden_states(x)
        enc0 = self.encoder1(x)
        enc1 = self.encoder2(hidden[0])
        enc2 = self.encoder3(hidden[1])
        enc3 = self.encoder4(hidden[2])
        dec4 = self.encoder10(hidden[4])
        dec3 = self.decoder5(dec4, hidden[3])
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        dec0 = self.decoder2(dec1, enc1)
        return dec4, self.decoder1(dec0, enc0)

    def _swin_hidden_states(self, x: torch.Tensor) -> list:
        """The five hidden states of ``SwinTransformer.forward`` (MONAI 1.4-1.6, ``use_v2=False``)."""
        vit = self.swinViT
        h = vit.pos_drop(vit.patch_embed(x))
        states = [self._channel_layer_norm(h)]
        for stage in (vit.layers1, vit.layers2, vit.layers3, vit.layers4):
            h = _basic_layer_forward(stage[0], h.contiguous())
            states.append(self._channel_layer_norm(h))
        return states

    def _channel_layer_norm(self, x: torch.Tensor) -> torch.Tensor:
        """Parameter-free layer norm over the channel axis of (B, C, D, H, W) when ``normalize`` is set."""
        if not self.normalize:
            return x
        return F.layer_norm(x.permute(0, 2, 3, 4, 1), [x.shape[1]]).permute(0, 4, 1, 2, 3)


def _basic_layer_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``monai.networks.nets.swin_unetr.BasicLayer.forward`` for 3D inputs, without ``einops``."""
    # imported here, as in SwinBackbone: only the Swin UNETR needs MONAI
    from monai.networks.nets.swin_unetr import compute_mask, get_window_size

    b, _, d, h, w = x.shape
    window_size, shift_size = get_window_size((d, h, w), layer.window_size, layer.shift_size)
    x = x.permute(0, 2, 3, 4, 1)
    padded = [int(math.ceil(s / ws)) * ws for s, ws in zip((d, h, w), window_size)]
    attn_mask = compute_mask(padded, window_size, shift_size, x.device)
    for block in layer.blocks:
        x = block(x, attn_mask)
    x = x.view(b, d, h, w, -1)
    if layer.downsample is not None:
        x = _patch_merging_v090(layer.downsample, x)
    return x.permute(0, 4, 1, 2, 3)


# Sub-voxel offsets (d, h, w) that patch merging concatenates, in order, as in MONAI <= 1.4's "merging"
# (the v0.9.0 layer the SuPreM Swin UNETR was trained with). Two offsets repeat and two never appear
# (MONAI issues #4757, #8284); MONAI 1.5 changed the order, which breaks released weights, so the
# trained order is kept here independently of the installed MONAI.
_MERGING_OFFSETS_V090 = ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 0), (0, 0, 1), (1, 1, 1))


def _patch_merging_v090(merging: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Patch merging of (B, D, H, W, C) channels-last features with the trained slice order.

    Uses ``merging.norm`` and ``merging.reduction`` (MONAI ``PatchMerging`` parameters) and returns
    (B, ceil(D/2), ceil(H/2), ceil(W/2), 2C).
    """
    d, h, w = x.shape[1:4]
    if d % 2 or h % 2 or w % 2:
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2, 0, d % 2))
    x = torch.cat([x[:, i::2, j::2, k::2, :] for i, j, k in _MERGING_OFFSETS_V090], dim=-1)
    return merging.reduction(merging.norm(x))


class SupremUniversalModel(nn.Module):
    """A backbone plus the SuPreM text-conditioned universal head.

    Args:
        backbone: module whose forward returns ``(bottleneck, features)`` and that has the attributes
            ``bottleneck_channels`` (B) and ``feature_channels`` (F).
        num_classes: rows of ``organ_embedding`` (one output channel per row).

    ``forward(x)`` with ``x`` (N, 1, D, H, W) returns logits (N, num_classes, D, H, W); the model was
    trained with a sigmoid per class (multi-label, masks may overlap).
    """

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise InputError(f"num_classes must be a positive integer, got {num_classes!r}")
        bottleneck, features = backbone.bottleneck_channels, backbone.feature_channels
        # Registration order fixes the state_dict order; it follows the published model (buffer first).
        self.register_buffer("organ_embedding", torch.zeros(num_classes, TEXT_EMBEDDING_DIM))
        self.backbone = backbone
        self.precls_conv = nn.Sequential(
            nn.GroupNorm(16, features), nn.ReLU(inplace=True), nn.Conv3d(features, HEAD_CHANNELS, kernel_size=1))
        self.GAP = nn.Sequential(
            nn.GroupNorm(16, bottleneck), nn.ReLU(inplace=True), nn.AdaptiveAvgPool3d(1),
            nn.Conv3d(bottleneck, _TASK_DIM, kernel_size=1))
        self.controller = nn.Conv3d(2 * _TASK_DIM, NUM_DYNAMIC_PARAMS, kernel_size=1)
        self.text_to_vision = nn.Linear(TEXT_EMBEDDING_DIM, _TASK_DIM)

    @property
    def num_classes(self) -> int:
        return self.organ_embedding.shape[0]

    def dynamic_params(self, bottleneck: torch.Tensor) -> torch.Tensor:
        """Per-sample, per-class parameters of the dynamic head: (N, C, 153)."""
        n, c = bottleneck.shape[0], self.num_classes
        image_feature = self.GAP(bottleneck).flatten(1)  # (N, 256)
        task = F.relu(self.text_to_vision(self.organ_embedding))  # (C, 256)
        # Image feature first, class encoding second: the order the controller was trained with.
        cond = torch.cat((image_feature[:, None, :].expand(n, c, _TASK_DIM),
                          task[None, :, :].expand(n, c, _TASK_DIM)), dim=2)
        params = self.controller(cond.reshape(n * c, 2 * _TASK_DIM, 1, 1, 1))
        return params.reshape(n, c, NUM_DYNAMIC_PARAMS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bottleneck, features = self.backbone(x)
        params = self.dynamic_params(bottleneck)  # (N, C, 153)
        head_in = self.precls_conv(features)  # (N, 8, D, H, W)
        weights, biases = _split_params(params)
        n, c = params.shape[:2]
        voxels = head_in.flatten(2)  # (N, 8, V)
        out = voxels.new_empty((n, c, voxels.shape[2]))
        last = len(weights) - 1
        # One sample and class at a time: running all classes at once would hold C x 8 full-resolution
        # channels (about 0.9 GB for 32 classes at 96^3) for no speed gain on these memory-bound 8x8 products.
        for i in range(n):
            for k in range(c):
                h = voxels[i]
                for layer, (w, b) in enumerate(zip(weights, biases)):
                    h = torch.addmm(b[i, k, :, None], w[i, k], h)
                    if layer < last:
                        h = h.relu_()
                out[i, k] = h[0]
        return out.reshape((n, c) + tuple(head_in.shape[2:]))


def _split_params(params: torch.Tensor):
    """Split (N, C, 153) controller outputs into the dynamic head's weights and biases.

    Returns two lists of three tensors: weights (N, C, out, in) and biases (N, C, out).
    """
    n, c = params.shape[:2]
    sizes = [o * i for o, i in _HEAD_WEIGHT_SHAPES] + list(_HEAD_BIAS_SIZES)
    chunks = torch.split(params, sizes, dim=2)
    weights = [chunk.reshape(n, c, o, i) for chunk, (o, i) in zip(chunks[:3], _HEAD_WEIGHT_SHAPES)]
    return weights, list(chunks[3:])


NETWORK_NAMES = ("suprem_unet", "suprem_swinunetr")


def build_network(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a SuPreM universal-head network by name.

    Args:
        name: ``"suprem_unet"`` or ``"suprem_swinunetr"``.
        num_classes: number of classes, i.e. rows of the checkpoint's ``organ_embedding``
            (see :func:`num_classes_from_state_dict`).
        **kwargs: ``in_channels`` (default 1) for both; ``feature_size`` (default 48) for Swin UNETR.

    Returns:
        An untrained ``SupremUniversalModel``; load a (``module.``-stripped) checkpoint with
        ``load_state_dict(state, strict=True)``.

    Raises:
        InputError: unknown name, unexpected keyword, or an invalid class count.
    """
    builders = {"suprem_unet": (UNet3DBackbone, {"in_channels"}),
                "suprem_swinunetr": (SwinUNETRBackbone, {"in_channels", "feature_size"})}
    if name not in builders:
        raise InputError(f"unknown SuPreM network '{name}'; known: {', '.join(NETWORK_NAMES)}")
    backbone_cls, allowed = builders[name]
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise InputError(f"network {name} does not take {', '.join(unknown)}; "
                         f"accepted keyword arguments: {', '.join(sorted(allowed))}")
    model = SupremUniversalModel(backbone_cls(**kwargs), num_classes)
    logger.debug("built %s with %d classes", name, num_classes)
    return model


def num_classes_from_state_dict(state: Mapping[str, torch.Tensor]) -> int:
    """Number of classes of a SuPreM universal-head state dict: the rows of ``organ_embedding``.

    Args:
        state: the state dict, with or without the ``module.`` prefix.

    Raises:
        InputError: no ``organ_embedding`` or one of an unexpected shape.
    """
    for key in ("organ_embedding", "module.organ_embedding"):
        if key in state:
            emb = state[key]
            if emb.ndim != 2 or emb.shape[1] != TEXT_EMBEDDING_DIM:
                raise InputError(f"checkpoint '{key}' has shape {tuple(emb.shape)}; expected "
                                 f"(classes, {TEXT_EMBEDDING_DIM}) for a SuPreM universal-head model")
            return int(emb.shape[0])
    raise InputError("checkpoint has no 'organ_embedding'; it is not a SuPreM U-Net / Swin UNETR "
                     "universal-head checkpoint (SegResNet checkpoints use a plain MONAI SegResNet)")
