"""Benchmark: the ``--quality`` presets against ``reference`` with a trained model, end to end (README "Which preset
on a CPU"). Prints one table: per case and preset, the windows, the seconds and the per-structure Dice of the final
masks against ``reference``'s.

The only trained weights here are the demo model's (a MONAI UNet trained on phantoms). Its card runs overlap 0.5
and has no coarse spacing, so the demo card is given SuPreM's published overlap (0.75) for this comparison:
``reference`` then runs overlap 0.75 fp32 with the published crop, ``balanced`` overlap 0.5, the body crop and
INT8 where INT8 passes its check on that CT (else what ``auto`` runs: bf16 on BF16 CPUs, else fp32), exactly the
two settings that differ for SuPreM. (``fast`` needs a coarse spacing: its Dice for SuPreM cannot be measured
without SuPreM's trained weights.) Cases: two phantoms (the model's own domain) and the two real abdominal CTs
in ../shared/ctdata (outside it: the model is unsure there, so this is a hard test of agreement).

    .venv/bin/python Testing/bench/bench_presets.py

Not a test: nothing is asserted. Same process, runs interleaved; 2 shared cores, so compare within one run.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import SimpleITK as sitk  # noqa: E402

from AtlasSegLib.card import builtin_card, card_from_dict  # noqa: E402
from AtlasSegLib.io import SourceInfo, read_image  # noqa: E402
from AtlasSegLib.masks import dice  # noqa: E402
from AtlasSegLib.networks import load_model  # noqa: E402
from AtlasSegLib.phantom import make_phantom  # noqa: E402
from AtlasSegLib.pipeline import SegmentOptions, Segmenter  # noqa: E402
from testdata import ct_data_dir  # noqa: E402


def masks(folder: Path) -> dict:
    return {f.name[:-7]: sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
            for f in sorted((folder / "segmentations").glob("*.nii.gz"))}


def main() -> int:
    raw = json.loads(json.dumps(builtin_card("atlasseg-demo").raw))
    raw["inference"]["overlap"] = 0.75  # SuPreM's published overlap: reference = 0.75, balanced = 0.5
    card = card_from_dict(raw, builtin_card("atlasseg-demo").path)
    model = load_model(card)
    data = ct_data_dir()
    cases = [("phantom 2024", make_phantom(2024, tumors=True).image, SourceInfo("phantom(2024)", "phantom")),
             ("phantom 7", make_phantom(7, tumors=True).image, SourceInfo("phantom(7)", "phantom")),
             ("real CT (abdomen_sm)",) + read_image(str(data / "totalseg_abdomen_sm" / "example_ct_sm.nii.gz")),
             ("real CT (DICOM, 500 mm FOV)",) + read_image(str(data / "totalseg_dicom_upper_abdomen" / "example_ct_dicom"))]
    work = Path(tempfile.mkdtemp(prefix="atlasseg-bench-presets-"))
    rows = []
    for name, image, source in cases:
        runs = {}
        for quality in ("reference", "balanced"):
            # --backend openvino: both presets on the same backend, so only the preset's settings differ
            seg = Segmenter(model, SegmentOptions(device="cpu", backend="openvino", quality=quality, overview=False))
            t = time.perf_counter()
            report = seg.run(image, source, work / f"{name}-{quality}")
            seconds = time.perf_counter() - t
            runs[quality] = (seconds, report, masks(work / f"{name}-{quality}"))
        ref = runs["reference"][2]
        for quality, (seconds, report, got) in runs.items():
            d = {k: dice(ref[k], got[k]) for k in ref if ref[k].any() or got[k].any()}
            w = report["settings"]["windows"]
            check = report["model"].get("int8_check") or {}
            rows.append((name, quality, w.get("windows_run", w.get("windows")), seconds,
                         f"{report['model']['backend']} {report['model']['precision']}",
                         check.get("min_dice"), min(d.values()), min(d, key=d.get), d))
            print(f"{name} {quality}: {rows[-1][2]} windows, {seconds:.1f} s, {rows[-1][4]}, INT8 check "
                  f"{check.get('min_dice')}, Dice vs reference {json.dumps({k: round(v, 4) for k, v in d.items()})}",
                  file=sys.stderr, flush=True)
    print("\n| case | preset | windows | s | ran | INT8 check (min Dice) | lowest Dice vs reference |")
    print("|---|---|---|---|---|---|---|")
    for name, quality, windows, seconds, ran, chk, low, which, _ in rows:
        print(f"| {name} | {quality} | {windows} | {seconds:.1f} | {ran} | {chk if chk is not None else '-'} | "
              f"{low:.4f} ({which}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
