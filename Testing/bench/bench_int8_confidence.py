"""Diagnostic (README "Why INT8 misses its check on the real CT"): does INT8 agree with fp32 where the model is
sure of itself?

The shipped demo model is trained on phantoms; on real anatomy many of its voxels sit near the threshold, and
INT8's rounding flips them. This script fine-tunes a COPY of it (the shipped weights are not touched) on real
anatomy, then measures, for the shipped model and the copy, INT8 (NNCF's default post-training quantization,
calibrated on the CT's own foreground windows as the pipeline does it) against OpenVINO fp32: per-structure Dice
of the thresholded whole sliding-window output on the model grid, and the share of voxels with |logit| < 1.

    .venv/bin/python Testing/bench/bench_int8_confidence.py --train dicom --steps 300  # held-out: the small CT
    .venv/bin/python Testing/bench/bench_int8_confidence.py --train sm --steps 400     # sure on the small CT too

Training data: the real CTs' TotalSegmentator labels (predictions, see ../shared/ctdata/README.md) mapped to the
demo model's channels, crops from them 60 % of the time and from 8 phantoms otherwise, with the training script's
brightness/contrast jitter plus noise; Adam 5e-4. This is a measurement of a mechanism, not a better demo model:
with ``--train sm`` the model has seen the CT it is measured on. About 10 minutes (300 steps) on 2 idle cores.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]  # Testing/
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "tools"))

import nncf  # noqa: E402
import numpy as np  # noqa: E402
import openvino as ov  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402
from monai.losses import DiceLoss  # noqa: E402

import train_demo_model as training  # noqa: E402
from AtlasSegLib import backends  # noqa: E402
from AtlasSegLib.card import builtin_card  # noqa: E402
from AtlasSegLib.inference import foreground_windows, infer  # noqa: E402
from AtlasSegLib.io import read_image  # noqa: E402
from AtlasSegLib.masks import dice  # noqa: E402
from AtlasSegLib.networks import load_model  # noqa: E402
from AtlasSegLib.phantom import make_phantom  # noqa: E402
from AtlasSegLib.pipeline import prepare  # noqa: E402
from AtlasSegLib.progress import Reporter  # noqa: E402
from testdata import ct_data_dir  # noqa: E402

# TotalSegmentator v2 "total" ids of the demo model's structures (26-50: the vertebrae S1..C1).
TS_IDS = {"liver": [5], "spleen": [1], "kidney_right": [2], "kidney_left": [3], "pancreas": [7], "aorta": [52],
          "vertebrae": list(range(26, 51))}


def real_case(image: sitk.Image, seg: sitk.Image):
    """The CT and its labels as the training script's {name: mask image} (resampled later by position)."""
    a = sitk.GetArrayFromImage(seg)
    labels = {}
    for name, ids in TS_IDS.items():
        m = sitk.GetImageFromArray(np.isin(a, ids).astype(np.uint8))
        m.CopyInformation(seg)
        labels[name] = m
    return image, labels


def fine_tune(net, card: dict, real: list, phantoms: list, steps: int):
    net.train()
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr=5e-4)
    dice_loss = DiceLoss(sigmoid=True, smooth_nr=1e-4, smooth_dr=1e-4)
    bce = torch.nn.BCEWithLogitsLoss()
    roi = card["inference"]["roi_size"]
    t0 = time.time()
    for step in range(steps):
        pool = real if rng.random() < 0.6 else phantoms
        x, y = training.random_crop(rng, *pool[rng.integers(len(pool))], roi)
        x = x * rng.uniform(0.95, 1.05) + rng.uniform(-0.02, 0.02) + rng.normal(0, 0.01, x.shape)
        loss = training.train_step(net, opt, x, y, dice_loss, bce)
        if (step + 1) % 50 == 0:
            print(f"step {step + 1} loss {loss:.3f} {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    return net.eval()


def measure(net, cases: dict) -> dict:
    """{case: ({structure: Dice INT8 vs fp32}, share of voxels with |logit| < 1)}."""
    card = builtin_card("atlasseg-demo")
    inf, roi = card.inference, card.inference["roi_size"]
    names = [c.name for c in sorted(card.classes, key=lambda c: c.channel)]
    xml32, _ = backends.converted(net, roi)
    fp32 = backends.OpenVINORunner(xml32, "fp32")
    out = {}
    for case, image in cases.items():
        arr = prepare(image, card).array
        cal, _ = foreground_windows(arr, roi, inf["overlap"], backends.CALIBRATION_WINDOWS)
        model = nncf.quantize(ov.Core().read_model(str(xml32)), nncf.Dataset(cal), subset_size=len(cal))
        folder = tempfile.mkdtemp(prefix="atlasseg-int8-")
        ov.save_model(model, f"{folder}/model.xml", compress_to_fp16=False)
        int8 = backends.OpenVINORunner(f"{folder}/model.xml", "int8")
        a = infer(fp32, arr, inf, device=torch.device("cpu"), reporter=Reporter()).numpy()
        b = infer(int8, arr, inf, device=torch.device("cpu"), reporter=Reporter()).numpy()
        d = {names[k]: dice(a[k] >= 0, b[k] >= 0) for k in range(len(names)) if (a[k] >= 0).any() or (b[k] >= 0).any()}
        out[case] = (d, float(np.mean(np.abs(a[:7]) < 1.0)))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", choices=("dicom", "sm"), default="dicom",
                   help="dicom: the DICOM CT only (the small CT held out); sm: both real CTs")
    p.add_argument("--steps", type=int, default=300)
    args = p.parse_args()
    nncf.set_log_level(logging.ERROR)
    torch.set_num_threads(2)
    data = ct_data_dir()
    sm_image, _ = read_image(str(data / "totalseg_abdomen_sm" / "example_ct_sm.nii.gz"))
    sm = real_case(sm_image, sitk.ReadImage(str(data / "totalseg_abdomen_sm" / "example_seg.nii.gz")))
    dc_image, _ = read_image(str(data / "totalseg_dicom_upper_abdomen" / "example_ct_dicom"))
    dc = real_case(dc_image, sitk.ReadImage(str(data / "totalseg_dicom_upper_abdomen" / "example_seg_dicom.nii.gz")))
    card = training.load_card()
    real = [training.prepare(*dc, card)[:2]] + ([training.prepare(*sm, card)[:2]] if args.train == "sm" else [])
    phantoms = [training.training_case(s) for s in range(8)]
    cases = {"small CT": sm_image, "DICOM CT": dc_image, "phantom 2024": make_phantom(2024, tumors=True).image}
    shipped = measure(load_model(builtin_card("atlasseg-demo")).net.eval(), cases)
    tuned = measure(fine_tune(load_model(builtin_card("atlasseg-demo")).net, card, real, phantoms, args.steps), cases)
    print(f"\nINT8 vs fp32, per structure Dice (model grid); fine-tuned copy: --train {args.train} --steps {args.steps}")
    print("| case | model | lowest | per structure | voxels with abs(logit) < 1 |")
    print("|---|---|---|---|---|")
    for case in cases:
        for label, res in (("shipped", shipped), ("fine-tuned copy", tuned)):
            d, near = res[case]
            per = ", ".join(f"{k} {v:.3f}" for k, v in d.items())
            print(f"| {case} | {label} | {min(d.values()):.3f} | {per} | {100 * near:.1f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
