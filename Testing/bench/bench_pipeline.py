"""Benchmark: AtlasSeg's pipeline against the plain MONAI reference pipeline, same network, same input.

Prints a table of per-stage wall time and peak RSS (each pipeline runs in its own process so peaks don't mix).
Input: a real CT (../shared/ctdata totalseg_abdomen_sm) resampled to 512×512×300 voxels at 0.8×0.8×1.5 mm (its
anatomy stretched to fill the field, so the HU content is real CT), plus the original small CT.
Network: SuPreM's SegResNet (32 classes, seeded random weights; speed does not depend on the weights).

    python Testing/bench/bench_pipeline.py [--size 512 512 300] [--fast] [--overlap 0.5] [--skip-reference]

Not a test: nothing is asserted; the numbers go into the closing notes.
"""
from __future__ import annotations

import argparse
import resource
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]  # Testing/ (this script lives one folder below it)
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))


def make_input(src: Path, size, spacing, out: Path) -> None:
    # here: only making the input needs SimpleITK; the parent that starts the measured children stays light
    import SimpleITK as sitk

    img = sitk.ReadImage(str(src))
    in_extent = [n * s for n, s in zip(img.GetSize(), img.GetSpacing())]
    out_extent = [n * s for n, s in zip(size, spacing)]
    scale = [a / b for a, b in zip(in_extent, out_extent)]
    # Physical stretch about the input's first voxel: output point p maps to input origin + (p - origin) * scale.
    t = sitk.ScaleTransform(3, scale)
    t.SetCenter(img.GetOrigin())
    res = sitk.Resample(img, [int(v) for v in size], t, sitk.sitkLinear, img.GetOrigin(), spacing, img.GetDirection(),
                        -1024, sitk.sitkInt16)
    sitk.WriteImage(res, str(out), useCompression=True)


def child(args) -> None:
    """Runs one pipeline in this process and prints its JSON result."""
    # here: the heavy modules load in the child process that is measured (time, peak RSS), not in the parent
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    from AtlasSegLib.card import load_card
    from AtlasSegLib.networks import load_model

    card = load_card(args.card)
    t0 = time.perf_counter()
    model = load_model(card, args.weights)
    load_s = time.perf_counter() - t0
    result = {"load_model": load_s}
    if args.child == "atlasseg":

        # here: the heavy modules load in the child process that is measured (time, peak RSS), not in the parent
        from AtlasSegLib.io import read_image
        from AtlasSegLib.pipeline import SegmentOptions, Segmenter

        t = time.perf_counter()
        image, source = read_image(args.input)
        result["read"] = time.perf_counter() - t
        report = Segmenter(model, SegmentOptions(device="cpu", fast=args.fast, overview=True)).run(
            image, source, args.out)
        result.update(report["timings_s"])
        result["total"] = result["read"] + report["timings_s"]["total"]
    else:
        # here: the heavy modules load in the child process that is measured (time, peak RSS), not in the parent
        from reference_pipeline import reference_masks

        t = time.perf_counter()
        masks = reference_masks(args.input, model.net, model.card)
        result["total"] = time.perf_counter() - t
        del masks
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("RESULT " + json.dumps(result), flush=True)


def run_child(kind, input_path, card, weights, out, fast) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--input", str(input_path), "--card", str(card), "--weights",
           str(weights), "--out", str(out)] + (["--fast"] if fast else [])
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[7:])
            r["process_wall"] = wall
            return r
    return {"error": f"exit {proc.returncode}" + (" (killed: out of memory?)" if proc.returncode < 0 else ""),
            "stderr": proc.stderr[-500:], "process_wall": wall}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--child")
    p.add_argument("--input")
    p.add_argument("--card")
    p.add_argument("--weights")
    p.add_argument("--out")
    p.add_argument("--fast", action="store_true", help="the card's fast spacing (3 mm)")
    p.add_argument("--size", type=int, nargs=3, default=[512, 512, 300])
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (card: 0.75)")
    p.add_argument("--skip-reference", action="store_true")
    args = p.parse_args()
    if args.child:
        return child(args)

    # here: as in make_input, the parent loads torch only to build the shared test network
    import torch
    from monai.networks.nets import SegResNet

    from AtlasSegLib.card import CARDS_DIR
    from testdata import ct_data_dir

    src = ct_data_dir() / "totalseg_abdomen_sm" / "example_ct_sm.nii.gz"
    work = Path(tempfile.mkdtemp(prefix="atlasseg-bench-"))
    big = work / "ct_512.nii.gz"
    make_input(src, args.size, (0.8, 0.8, 1.5), big)
    card = json.loads((CARDS_DIR / "suprem-segresnet.json").read_text())
    card["inference"]["overlap"] = args.overlap
    if args.fast:
        card["preprocessing"]["spacing_mm"] = card["preprocessing"]["fast_spacing_mm"]
    card_path = work / "card.json"
    card_path.write_text(json.dumps(card))
    torch.manual_seed(0)
    net = SegResNet(**card["architecture"]["kwargs"])
    weights = work / "segresnet.pth"
    torch.save({"net": {f"module.{k}": v for k, v in net.state_dict().items()}}, weights)

    rows = []
    for label, path in ((f"real CT {src.name} (122x101x30)", src), (f"real CT resampled {'x'.join(map(str, args.size))}", big)):
        ours = run_child("atlasseg", path, card_path, weights, work / f"out_{len(rows)}", False)
        ref = {"skipped": True} if args.skip_reference else run_child("reference", path, card_path, weights, None, False)
        rows.append((label, ours, ref))

    print(f"\nSegResNet 32 classes, roi 96, overlap {args.overlap}, spacing {card['preprocessing']['spacing_mm']} mm, "
          f"CPU threads {os.cpu_count()}\n")
    hdr = f"{'input':<40}{'pipeline':<12}{'read':>7}{'prep':>7}{'network':>9}{'invert+post+write':>19}{'total s':>9}{'non-net %':>10}{'peak GB':>9}"
    print(hdr)
    print("-" * len(hdr))
    for label, ours, ref in rows:
        if "error" in ours:
            print(f"{label:<40}{'atlasseg':<12} failed: {ours['error']} {ours.get('stderr', '')}")
        else:
            non = 100 * (ours["total"] - ours["inference"]) / ours["total"]
            print(f"{label:<40}{'atlasseg':<12}{ours['read']:>7.1f}{ours['preprocess']:>7.1f}{ours['inference']:>9.1f}"
                  f"{ours['invert_postprocess_write']:>19.1f}{ours['total']:>9.1f}{non:>10.1f}{ours['peak_rss_gb']:>9.2f}")
        if ref.get("skipped"):
            continue
        if "error" in ref:
            print(f"{'':<40}{'MONAI ref':<12} failed: {ref['error']}")
        else:
            print(f"{'':<40}{'MONAI ref':<12}{'':>7}{'':>7}{'':>9}{'':>19}{ref['total']:>9.1f}{'':>10}{ref['peak_rss_gb']:>9.2f}")
            if "error" not in ours:
                print(f"{'':<40}{'ratio':<12}{'':>42}{ours['total'] / ref['total']:>9.2f}{'':>10}"
                      f"{ours['peak_rss_gb'] / ref['peak_rss_gb']:>9.2f}")


if __name__ == "__main__":
    main()
