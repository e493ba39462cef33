"""Quality of one-click adds (``addlesion.add_lesion``) on synthetic tumors in a real CT's liver (a benchmark, not a
test: it prints a table and asserts nothing).

    .venv/bin/python Testing/bench/bench_add_quality.py [--cases 6] [--count 4] [--threshold 0.9] [--ct real|phantom]
        [--gate liver|run] [--png out.png] [--json rows.json]

Per case (seed): ``atlasseg synthesize`` inserts ``--count`` liver tumors (10-40 mm, -20 to -60 HU) into the real
CT ../shared/ctdata/totalseg_abdomen_sm (its TotalSegmentator liver as the organ mask); ``atlasseg segment`` runs the
shipped demo model over it with the tumor threshold ``--threshold`` (high, so tumors are missed); every inserted
tumor the run's mask does not touch is "missed", and its centre (the ``center_zyx`` synthesize reports) is clicked
with ``add_lesion`` on the run's kept probability map and mask, as the review CLI will do; the gate is the CT's own
liver dilated 5 mm (``--gate liver``, default: the demo model's liver on a real CT is meaningless) or the run's
(``--gate run``). ``--ct phantom``: AtlasSeg phantoms without tumors instead of the real CT. Printed:
one row per click (diameter, contrast, path taken, Dice of the added lesion against the tumor's own truth), then
the median Dice, the worst Dice of tumors of 15 mm and more, and how many clicks took the model / image path.
A plain baseline in the same run: a sphere of the nominal diameter at the click (what a reader who knew the size
would draw with one stamp).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]  # Testing/ (this script lives one folder below it)
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import cc3d  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from AtlasSegLib import cli  # noqa: E402
from AtlasSegLib.addlesion import add_lesion  # noqa: E402
from AtlasSegLib.review import ProbabilityMap  # noqa: E402
from testdata import ct_data_dir  # noqa: E402


def liver_label() -> int:
    present = json.loads((ct_data_dir() / "totalseg_labels_present.json").read_text())
    key = next(k for k in present if k.startswith("totalseg_abdomen_sm"))
    return next(int(i) for i, v in present[key].items() if v["name"] == "liver")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.count_nonzero(a & b)) / s if s else 1.0


def sphere(shape, centre, diameter_mm, spacing) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing))
    return d2 <= (diameter_mm / 2.0) ** 2


def case_input(tmp: Path, seed: int, args) -> tuple:
    """(CT file, organ mask file, its liver label values) of a case: the real CT, or a phantom without tumors."""
    if args.ct == "real":
        source = ct_data_dir() / "totalseg_abdomen_sm"
        return source / "example_ct_sm.nii.gz", source / "example_seg.nii.gz", [liver_label()]
    from AtlasSegLib.phantom import make_phantom

    ph = make_phantom(seed, tumors=False)
    ct, liver = tmp / f"phantom{seed}.nii.gz", tmp / f"phantom{seed}_liver.nii.gz"
    sitk.WriteImage(ph.image, str(ct), useCompression=True)
    sitk.WriteImage(ph.labels["liver"], str(liver), useCompression=True)
    return ct, liver, [1]


def run_case(tmp: Path, seed: int, args) -> list:
    ct_path, organ_path, liver_values = case_input(tmp, seed, args)
    synth = tmp / f"synth{seed}"
    with open("/dev/null", "w") as devnull:
        old, sys.stdout = sys.stdout, devnull
        try:
            code = cli.main(["synthesize", str(ct_path), "-o", str(synth), "--organ", "liver",
                             "--organ-mask", str(organ_path), "--label", ",".join(map(str, liver_values)),
                             "--count", str(args.count), "--diameter", "10-40", "--contrast=-60--20",
                             "--seed", str(seed)])
            if code:
                raise SystemExit(f"synthesize failed ({code})")
            run = tmp / f"run{seed}"
            code = cli.main(["segment", str(synth / "ct.nii.gz"), "-o", str(run), "--model", "atlasseg-demo",
                             "--structures", "liver,liver_tumor", "--threshold", f"liver_tumor={args.threshold}",
                             "--force", "--quiet", "--device", "cpu"])
            if code:
                raise SystemExit(f"segment failed ({code})")
        finally:
            sys.stdout = old
    info = json.loads((synth / "tumors.json").read_text())
    truth_all = sitk.GetArrayFromImage(sitk.ReadImage(str(synth / "segmentations" / "liver_tumor.nii.gz"))) > 0
    ct_img = sitk.ReadImage(str(synth / "ct.nii.gz"))
    ct = sitk.GetArrayFromImage(ct_img)
    spacing = np.asarray(ct_img.GetSpacing()[::-1])
    run_mask = sitk.GetArrayFromImage(sitk.ReadImage(str(run / "segmentations" / "liver_tumor.nii.gz"))) > 0
    pm = ProbabilityMap.from_output(run, "liver_tumor")
    box = pm.box_slices
    labels_box = cc3d.connected_components(run_mask[box], connectivity=26)
    truth_lab = cc3d.connected_components(truth_all, connectivity=26)
    gate = pm.gate
    if args.gate == "liver":
        # The CT's own (TotalSegmentator) liver, as a run of a model that finds the liver would gate with.
        liver = np.isin(sitk.GetArrayFromImage(sitk.ReadImage(str(organ_path))), liver_values)
        from AtlasSegLib.postprocess import dilate_mm
        gate = dilate_mm(liver[box].astype(np.uint8), spacing, 5.0)
    rows = []
    for t in info["tumors"]:
        c = tuple(t["center_zyx"])
        value = truth_lab[c]
        own = truth_lab == value if value else np.zeros(truth_all.shape, bool)
        if (own & run_mask).any():
            rows.append({"seed": seed, "id": t["id"], "d": t["diameter_mm"], "hu": t["contrast_hu"], "missed": False})
            continue
        local = tuple(int(a - s.start) for a, s in zip(c, box))
        inside = all(0 <= v < n for v, n in zip(local, pm.q.shape))
        t0 = time.perf_counter()
        added = add_lesion(ct[box], spacing, pm.q, labels_box, local, gate=gate) if inside else None
        ms = (time.perf_counter() - t0) * 1000
        mask = np.zeros(truth_all.shape, bool)
        if added is not None and added.action == "added":
            region = tuple(slice(s.start + r.start, s.start + r.stop) for s, r in zip(box, added.region))
            mask[region] = added.mask
        path = added.origin if added is not None and added.action == "added" else (
            added.action if added is not None else "outside box")
        base = sphere(truth_all.shape, c, t["diameter_mm"], spacing)
        rows.append({"seed": seed, "id": t["id"], "d": t["diameter_mm"], "hu": t["contrast_hu"], "missed": True,
                     "path": path, "dice": dice(mask, own), "sphere": dice(base, own), "ms": ms,
                     "thr": added.threshold if added is not None else None,
                     "hu_range": added.hu_range if added is not None else None,
                     "vox": int(mask.sum()), "truth_vox": int(own.sum())})
        if args.png and len([r for r in rows if r.get("missed")]) == 1 and seed == args.first_seed:
            picture(args.png, ct, own, mask, c)
    return rows


def picture(path, ct, truth, mask, c) -> None:
    """Axial slice through the click: CT, truth contour (green), added lesion (red)."""
    from PIL import Image
    from scipy import ndimage

    k = c[0]
    img = np.clip((ct[k].astype(float) + 100) / 300 * 255, 0, 255).astype(np.uint8)
    rgb = np.stack([img] * 3, -1)
    for m, colour in ((truth[k], (0, 255, 0)), (mask[k], (255, 0, 0))):
        edge = m & ~ndimage.binary_erosion(m)
        rgb[edge] = colour
    Image.fromarray(rgb).resize((rgb.shape[1] * 4, rgb.shape[0] * 4), Image.NEAREST).save(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=6)
    ap.add_argument("--count", type=int, default=4)
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--gate", choices=("run", "liver"), default="liver",
                    help="liver (default): the CT's TotalSegmentator liver dilated 5 mm, as a run of a real model gates; run: the demo run's own gate (its liver on a real CT is meaningless, as its warning says)")
    ap.add_argument("--ct", choices=("real", "phantom"), default="real",
                    help="real (default): the 3 mm CT of ctdata/totalseg_abdomen_sm; phantom: AtlasSeg phantoms "
                    "without tumors (make_phantom(seed, tumors=False)), where the demo model does see tumors")
    ap.add_argument("--png")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_add_") as tmp:
        for seed in range(args.first_seed, args.first_seed + args.cases):
            rows += run_case(Path(tmp), seed, args)
    missed = [r for r in rows if r["missed"]]
    print(f"{args.ct} CT; {len(rows)} inserted tumors, {len(rows) - len(missed)} found by the demo model at threshold "
          f"{args.threshold}, {len(missed)} missed and clicked")
    print(f"{'seed':>4} {'id':>3} {'diam mm':>8} {'HU':>6} {'path':<20} {'Dice':>6} {'sphere':>7} {'ms':>6}  detail")
    for r in missed:
        detail = f"p≥{r['thr']}" if r["thr"] is not None else (f"HU {r['hu_range']}" if r["hu_range"] else "")
        print(f"{r['seed']:>4} {r['id']:>3} {r['d']:>8.1f} {r['hu']:>6.0f} {r['path']:<20} {r['dice']:>6.3f} "
              f"{r['sphere']:>7.3f} {r['ms']:>6.0f}  {detail} ({r['vox']} vs {r['truth_vox']} voxels)")
    if missed:
        big = [r["dice"] for r in missed if r["d"] >= 15]
        paths = {p: sum(1 for r in missed if r["path"] == p) for p in sorted({r["path"] for r in missed})}
        print(f"median Dice {statistics.median(r['dice'] for r in missed):.3f} (sphere baseline "
              f"{statistics.median(r['sphere'] for r in missed):.3f}); worst Dice of tumors ≥ 15 mm: "
              f"{min(big) if big else float('nan'):.3f} ({len(big)} tumors); paths: "
              + ", ".join(f"{k} {v}" for k, v in paths.items())
              + f"; median click {statistics.median(r['ms'] for r in missed):.0f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
