"""A plain MONAI reference pipeline (the textbook way), used by the parity test and the benchmark.

LoadImaged → EnsureChannelFirstd → Orientationd(RAS) → Spacingd → ScaleIntensityRanged → CropForegroundd →
sliding_window_inference → sigmoid ≥ threshold → Invertd (nearest) back to the input grid. It holds every class
at full input resolution at once, which is what AtlasSeg's pipeline avoids.
"""
from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import (Compose, CropForegroundd, EnsureChannelFirstd, Invertd, LoadImaged, Orientationd,
                              ScaleIntensityRanged, Spacingd)


def reference_masks(path: str, net: torch.nn.Module, card) -> np.ndarray:
    """(C, i, j, k) uint8 masks on the input's voxel grid, in channel order."""
    pre, inf = card.preprocessing, card.inference
    lo, hi = pre["hu_window"]
    a, b = pre["scale"]
    transform = Compose([
        LoadImaged(keys="image"),
        EnsureChannelFirstd(keys="image"),
        Orientationd(keys="image", axcodes="RAS"),
        Spacingd(keys="image", pixdim=pre["spacing_mm"], mode="bilinear"),
        ScaleIntensityRanged(keys="image", a_min=lo, a_max=hi, b_min=a, b_max=b, clip=True),
        CropForegroundd(keys="image", source_key="image"),
    ])
    data = transform({"image": path})
    with torch.inference_mode():
        logits = sliding_window_inference(data["image"][None].float(), inf["roi_size"], inf["sw_batch_size"], net,
                                          overlap=inf["overlap"], mode=inf["mode"])
    pred = (torch.sigmoid(logits[0]) >= inf["threshold"]).float()
    data["pred"] = MetaTensor(pred, meta=data["image"].meta, applied_operations=data["image"].applied_operations)
    out = Invertd(keys="pred", transform=transform, orig_keys="image", nearest_interp=True)(data)["pred"]
    return np.asarray(out).astype(np.uint8)
