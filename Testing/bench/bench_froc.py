"""The demo model's FROC on synthetic liver tumors in phantoms (the closing-note numbers of issue 15).

    .venv/bin/python Testing/bench/bench_froc.py [--seeds 8] [--count 4] [--diameter 5-45] [--work /tmp/bench_froc]

Per seed: a phantom without its own tumors (``make_phantom(tumors=False)``), ``count`` tumors inserted into its
liver by ``atlasseg synthesize`` (its truth, tumors.json), the dataset segmented by ``atlasseg batch`` with the
shipped demo model, then ``atlasseg evaluate``. Prints how long each stage took and the evaluation's summary; the
FROC picture is WORK/results/evaluation/froc.png. As a plain baseline in the same run, the lesion counts at the
run's threshold are recounted from the saved masks alone (scipy.ndimage.label, any overlap): they must agree
with evaluate's "run threshold" line wherever nobody edited the masks.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from AtlasSegLib.batch import run_batch  # noqa: E402
from AtlasSegLib.card import builtin_card  # noqa: E402
from AtlasSegLib.evaluate import evaluate, summary_lines  # noqa: E402
from AtlasSegLib.phantom import make_phantom  # noqa: E402
from AtlasSegLib.pipeline import SegmentOptions  # noqa: E402
from AtlasSegLib.synthesize import synthesize_file  # noqa: E402


def baseline_counts(results: Path, truth: Path, structure: str = "liver_tumor") -> tuple:
    """(detected, lesions, false positives) at the saved masks, by scipy's 26-connected labelling."""
    det = total = fp = 0
    for case in sorted(p for p in truth.iterdir() if p.is_dir()):
        t = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "segmentations" / f"{structure}.nii.gz"))) != 0
        pth = results / case.name / "segmentations" / f"{structure}.nii.gz"
        if not pth.is_file():
            continue
        p = sitk.GetArrayFromImage(sitk.ReadImage(str(pth))) != 0
        tl, nt = ndimage.label(t, np.ones((3, 3, 3)))
        pl, npred = ndimage.label(p, np.ones((3, 3, 3)))
        both = (tl > 0) & (pl > 0)
        total += nt
        det += len(np.unique(tl[both]))
        fp += npred - len(np.unique(pl[both]))
    return det, total, fp


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--count", type=int, default=4)
    ap.add_argument("--diameter", default="5-45", help="nominal diameters drawn per tumor, mm")
    ap.add_argument("--work", default="/tmp/bench_froc")
    args = ap.parse_args(argv)
    lo, hi = (float(v) for v in args.diameter.split("-"))
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    truth, results = work / "truth", work / "results"
    (work / "phantoms").mkdir(parents=True)

    t0 = time.perf_counter()
    insert_s = []
    for seed in range(1, args.seeds + 1):
        ph = make_phantom(seed, tumors=False)
        ct = work / "phantoms" / f"phantom{seed:02d}.nii.gz"
        liver = work / "phantoms" / f"phantom{seed:02d}_liver.nii.gz"
        sitk.WriteImage(ph.image, str(ct), useCompression=True)
        sitk.WriteImage(ph.labels["liver"], str(liver), useCompression=True)
        t = time.perf_counter()
        synthesize_file(ct, truth / f"phantom{seed:02d}", organ_name="liver", organ_mask=liver,
                        count=args.count, diameter_mm=(lo, hi), seed=seed)
        insert_s.append(time.perf_counter() - t)
    t_make = time.perf_counter() - t0

    t = time.perf_counter()
    rows = run_batch(truth, results, card=builtin_card("atlasseg-demo"), options=SegmentOptions(device="cpu"))
    t_seg = time.perf_counter() - t
    failed = [r for r in rows if r["status"] != "done"]
    if failed:
        print("segmentation failed:", failed)
        return 1

    ev = evaluate(results, truth)
    base = baseline_counts(results, truth)
    print(f"phantoms + insertion: {t_make:.1f} s ({args.seeds} phantoms; insertion alone "
          f"{np.mean(insert_s):.2f} s per CT of {args.count} tumors, {args.diameter} mm)")
    print(f"segmentation (demo model, batch): {t_seg:.1f} s")
    print("\n".join(summary_lines(ev)))
    run_row = next(m for m in ev.tumors["liver_tumor"]["marks"] if m["name"] == "run threshold")
    row = next(r for r in ev.tumors["liver_tumor"]["rows"] if r["threshold"] == run_row["threshold"])
    print(f"baseline (scipy labels of the saved masks): {base[0]}/{base[1]} found, {base[2]} FP; evaluate at the "
          f"run threshold: {row['detected']}/{row['lesions']} found, {row['false_positives']} FP")
    print(f"RESULT evaluate_seconds={ev.seconds:.1f} cases={len(ev.cases)} cpm={ev.tumors['liver_tumor']['cpm']} "
          f"png={ev.files['froc.png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
