"""``atlasseg demo``: a synthetic phantom, segmented by the committed demo model, scored against its truth."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .card import builtin_card
from .io import SourceInfo
from .networks import load_model
from .pipeline import SegmentOptions, Segmenter
from .progress import Reporter

DEMO_MODEL = "atlasseg-demo"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a = a > 0
    b = b > 0
    denom = int(a.sum()) + int(b.sum())
    return 1.0 if denom == 0 else 2.0 * int(np.logical_and(a, b).sum()) / denom


def run_demo(outdir, *, seed: int = 2024, tumors: bool = True, device: str = "auto", overwrite: bool = False,
             progress=None, cancel=None) -> dict:
    """Segment a fresh phantom with the demo model into ``outdir`` (with the phantom as ``ct.nii.gz`` and its
    truth under ``ground_truth/``); returns Dice per structure against the truth."""
    from .phantom import make_phantom

    t0 = time.perf_counter()
    phantom = make_phantom(seed, tumors=tumors)
    card = builtin_card(DEMO_MODEL)
    model = load_model(card)
    extra = {"ct.nii.gz": phantom.image}
    for name, lab in phantom.labels.items():
        extra[f"ground_truth/{name}.nii.gz"] = lab
    source = SourceInfo(path=f"phantom(seed={seed})", format="phantom")
    report = Segmenter(model, SegmentOptions(device=device, overwrite=overwrite)).run(
        phantom.image, source, outdir, reporter=Reporter(progress=progress, cancel=cancel), extra_files=extra)
    scores = {}
    voxel_ml = float(np.prod(phantom.image.GetSpacing())) / 1000.0
    for cls in model.card.classes:
        truth = phantom.labels.get(cls.name)
        if truth is None:
            continue
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(Path(outdir) / "segmentations" / f"{cls.name}.nii.gz")))
        t = sitk.GetArrayViewFromImage(truth)
        scores[cls.name] = {"dice": dice(pred, t), "truth_ml": float((t > 0).sum()) * voxel_ml,
                            "pred_ml": float((pred > 0).sum()) * voxel_ml}
    return {"model": card.id, "dice": scores, "report": report, "seconds": time.perf_counter() - t0}
