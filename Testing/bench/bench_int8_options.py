"""Benchmark: which INT8 quantization keeps the trained demo model's masks (README "INT8, checked on your CT").

For each NNCF post-training-quantization option, the per-class Dice of the thresholded sliding-window output
(model grid, every window, gaussian blending as the pipeline runs it) of INT8 against fp32 OpenVINO on the real
CT (``totalseg_abdomen_sm``) and on a phantom, and one window's time INT8 / fp32. For scale, the same Dice for
things that are not INT8: torch fp32, OpenVINO bf16 (on CPUs with BF16) and fp32 on the CT plus 1 HU.

    .venv/bin/python Testing/bench/bench_int8_options.py

Not a test: nothing is asserted. About 3 minutes on 2 cores; times are from a shared machine (compare within a run).
"""
from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import nncf  # noqa: E402
import numpy as np  # noqa: E402
import openvino as ov  # noqa: E402
import torch  # noqa: E402

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

OUTER = [r".*model\.0\..*", r".*model\.2\..*"]  # the UNet's full-resolution level: first block and output block


def strip_fq(model, pred) -> int:
    """Remove the FakeQuantize nodes ``pred`` selects (their input goes straight on): keeps those tensors fp32."""
    n = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() == "FakeQuantize" and pred(op):
            op.output(0).replace(op.input_value(0))
            n += 1
    model.validate_nodes_and_infer_types()
    return n


def before_norm(op) -> bool:
    return all(t.get_node().get_type_name() == "MVN" for t in op.output(0).get_target_inputs())


def main() -> int:
    nncf.set_log_level(logging.ERROR)
    card = builtin_card("atlasseg-demo")
    net = load_model(card).net.eval()
    roi, inf = card.inference["roi_size"], card.inference
    names = [c.name for c in sorted(card.classes, key=lambda c: c.channel)]
    xml32, _ = backends.converted(net, roi)
    ct, _ = read_image(str(ct_data_dir() / "totalseg_abdomen_sm" / "example_ct_sm.nii.gz"))
    cases = {"real CT": prepare(ct, card).array, "phantom": prepare(make_phantom(2024, tumors=True).image, card).array}
    cal_ct, _ = foreground_windows(cases["real CT"], roi, inf["overlap"], backends.CALIBRATION_WINDOWS)
    cal_ph, _ = foreground_windows(cases["phantom"], roi, inf["overlap"], backends.CALIBRATION_WINDOWS)

    def logits(runner, arr):
        return infer(runner, arr, inf, device=torch.device("cpu"), reporter=Reporter()).numpy()

    fp32 = backends.OpenVINORunner(xml32, "fp32")
    ref = {k: logits(fp32, a) >= 0 for k, a in cases.items()}  # sigmoid ≥ 0.5, the card's threshold
    x = torch.from_numpy(cal_ct[0])

    def window_s(runner) -> float:
        runner(x)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            runner(x)
            times.append(time.perf_counter() - t)
        return min(times)

    rows = []

    def measure(label, runner, inputs=None):
        per = {}
        for k, a in cases.items():
            got = logits(runner, (inputs or {}).get(k, a)) >= 0
            d = {names[c]: dice(ref[k][c], got[c]) for c in range(len(names)) if ref[k][c].any() or got[c].any()}
            per[k] = d
        ratio = window_s(fp32) / window_s(runner)
        low = min(per["real CT"], key=per["real CT"].get)
        rows.append((label, min(per["real CT"].values()), low, min(per["phantom"].values()), ratio))
        print(f"{label}: real CT {({k: round(v, 4) for k, v in per['real CT'].items()})}; phantom min "
              f"{min(per['phantom'].values()):.4f}; fp32 window / this window {ratio:.2f}", file=sys.stderr, flush=True)

    measure("torch fp32 (not INT8)", backends.TorchRunner(net, torch.device("cpu")))
    if "BF16" in backends.cpu_capabilities():
        measure("OpenVINO bf16 (not INT8)", backends.OpenVINORunner(xml32, "bf16"))
    plus1 = {k: a + np.float32(1.0 / (inf_hu := card.preprocessing["hu_window"][1] - card.preprocessing["hu_window"][0]))
             for k, a in cases.items()}
    measure(f"fp32 on the CT + 1 HU (not INT8; 1/{inf_hu} after scaling)", fp32, plus1)

    variants = [
        ("PTQ default (performance preset), calibrated on the real CT", cal_ct, {}, None),
        ("PTQ default, calibrated on the phantom", cal_ph, {}, None),
        ("PTQ default, calibrated on both", cal_ct + cal_ph, {}, None),
        ("preset MIXED (asymmetric activations)", cal_ct, dict(preset=nncf.QuantizationPreset.MIXED), None),
        ("fast_bias_correction=False", cal_ct, dict(fast_bias_correction=False), None),
        ("first and last convolutions fp32 (ignored_scope)", cal_ct, dict(ignored_scope=nncf.IgnoredScope(
            patterns=[r".*model\.0\.conv\.unit0.*", r".*model\.0\.residual.*", r".*model\.2\..*"])), None),
        ("decoder fp32 (ignored_scope)", cal_ct, dict(ignored_scope=nncf.IgnoredScope(
            patterns=[r".*model\.2\..*", r".*submodule\.2\..*"])), None),
        ("activations before instance norm fp32", cal_ct, {}, before_norm),
        ("MIXED + full-resolution level fp32 + activations before norm fp32", cal_ct,
         dict(preset=nncf.QuantizationPreset.MIXED, ignored_scope=nncf.IgnoredScope(patterns=OUTER)), before_norm),
        ("INT8 weights only (every activation FakeQuantize removed)", cal_ct, {}, lambda op: True),
    ]
    for label, cal, kw, strip in variants:
        model = nncf.quantize(ov.Core().read_model(str(xml32)), nncf.Dataset(cal), subset_size=len(cal), **kw)
        if strip is not None:
            strip_fq(model, strip)
        folder = tempfile.mkdtemp(prefix="atlasseg-int8-")
        ov.save_model(model, f"{folder}/model.xml", compress_to_fp16=False)
        measure(label, backends.OpenVINORunner(f"{folder}/model.xml", "int8"))

    print("\n| variant | real CT: lowest Dice vs fp32 (structure) | phantom: lowest | fp32 window / its window |")
    print("|---|---|---|---|")
    for label, low, which, ph, ratio in rows:
        print(f"| {label} | {low:.4f} ({which}) | {ph:.4f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
