"""Quality of one-click adds (``addlesion.add_lesion``) on synthetic tumors in a real CT's liver (a benchmark, not a
test: it prints a table and asserts nothing).

    .venv/bin/python Testing/bench/bench_add_quality.py [--cases 6] [--count 4] [--seed 1] [--threshold 0.9]
        [--ct real|phantom] [--gate liver|run] [--png out.png] [--json rows.json]

Per case (seed): ``atlasseg synthesize`` inserts ``--count`` liver tumors (10-40 mm, -20 to -60 HU) into the real
CT ../shared/ctdata/totalseg_abdomen_sm (its TotalSegmentator liver as the organ mask); ``atlasseg segment`` runs the
shipped demo model over it with the tumor threshold ``--threshold`` (high, so tumors are missed); every inserted
tumor the run's mask does not touch is "missed" (each tumor's own truth: touching tumors are split by a watershed
from their centres), and its centre (the ``center_zyx`` synthesize reports) is clicked
with ``add_lesion`` on the run's kept probability map and mask, as the review CLI will do; the gate is the CT's own
liver dilated 5 mm (``--gate liver``, default: the demo model's liver on a real CT is meaningless) or the run's
(``--gate run``). ``--ct phantom``: AtlasSeg phantoms without tumors instead of the real CT. Printed:
one row per click (diameter, contrast asked, *local* contrast: the tumor's mean minus the median of the organ 3-12 mm
around it, which is what a reader sees where the organ's attenuation varies; path taken, Dice of the added lesion
against the tumor's own truth), then the median Dice, the worst Dice of tumors of 15 mm and more, and per path (model;
image where the model gave nothing; image where the model's region held only part of the lesion, under half of the
image path's region; nothing) the count and median Dice. ``--threshold`` near 1 (e.g. 0.999 on the phantoms) leaves tumors
the model did see (probability above the model path's floor) unmarked: clicks that take the model path.
``--seed``: the first case's seed (cases are seeds ``seed`` .. ``seed + cases - 1``): another set of tumors.
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

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from scipy import ndimage  # noqa: E402

from AtlasSegLib import cli  # noqa: E402
from AtlasSegLib.addlesion import add_lesion  # noqa: E402
from AtlasSegLib.masks import bounding_slices, dice  # noqa: E402
from AtlasSegLib.postprocess import dilate_mm  # noqa: E402
from AtlasSegLib.review import ProbabilityMap  # noqa: E402
from testdata import ct_data_dir  # noqa: E402


def liver_label() -> int:
    present = json.loads((ct_data_dir() / "totalseg_labels_present.json").read_text())
    key = next(k for k in present if k.startswith("totalseg_abdomen_sm"))
    return next(int(i) for i, v in present[key].items() if v["name"] == "liver")


def sphere(shape, centre, diameter_mm, spacing) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing))
    return d2 <= (diameter_mm / 2.0) ** 2


def case_input(tmp: Path, seed: int, args) -> tuple:
    """(CT file, organ mask file, its liver label values) of a case: the real CT, or a phantom without tumors."""
    if args.ct == "real":
        source = ct_data_dir() / "totalseg_abdomen_sm"
        return source / "example_ct_sm.nii.gz", source / "example_seg.nii.gz", [liver_label()]
    from AtlasSegLib.phantom import make_phantom  # here: only the phantom cases need it

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
    labels_box = run_mask[box].view(np.uint8)  # a 0/1 mask, as the review CLI and the Slicer effect give it
    truth_lab = split_truth(truth_all, [tuple(t["center_zyx"]) for t in info["tumors"]])
    liver = np.isin(sitk.GetArrayFromImage(sitk.ReadImage(str(organ_path))), liver_values)
    gate = pm.gate
    if args.gate == "liver":
        # The CT's own (TotalSegmentator) liver, as a run of a model that finds the liver would gate with.
        gate = dilate_mm(liver[box].astype(np.uint8), spacing, 5.0)
    rows = []
    for t in info["tumors"]:
        c = tuple(t["center_zyx"])
        value = truth_lab[c]
        own = truth_lab == value if value else np.zeros(truth_all.shape, bool)
        local_hu = local_contrast(ct, own, liver, spacing)
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
        if path == "added: image" and added.model_voxels:
            path = "image (model: part)"  # the model's region held under half of the visible lesion
        base = sphere(truth_all.shape, c, t["diameter_mm"], spacing)
        rows.append({"seed": seed, "id": t["id"], "d": t["diameter_mm"], "hu": t["contrast_hu"], "missed": True,
                     "local_hu": local_hu, "path": path, "dice": dice(mask, own), "sphere": dice(base, own), "ms": ms,
                     "thr": added.threshold if added is not None else None,
                     "hu_range": added.hu_range if added is not None else None,
                     "vox": int(mask.sum()), "truth_vox": int(own.sum())})
        rows[-1]["tiles"] = tiles(ct, own, mask, c) if args.png else None
    return rows


def split_truth(truth: np.ndarray, centres: list) -> np.ndarray:
    """Each tumor's own truth as a label (its index + 1): touching tumors make one component of the truth mask, so
    the component is split by a watershed of its distance map from the tumors' centres (SimpleITK)."""
    markers = np.zeros(truth.shape, np.uint16)
    for n, c in enumerate(centres, 1):
        if truth[c]:
            markers[c] = n
    depth = ndimage.distance_transform_edt(truth).astype(np.float32)
    lab = sitk.GetArrayFromImage(sitk.MorphologicalWatershedFromMarkers(
        sitk.GetImageFromArray(-depth), sitk.GetImageFromArray(markers), markWatershedLine=False, fullyConnected=True))
    lab[~truth] = 0
    return lab


def local_contrast(ct: np.ndarray, own: np.ndarray, organ: np.ndarray, spacing) -> float:
    """The tumor's mean HU minus the median of the organ 3-12 mm around it: the contrast a reader sees there."""
    box = bounding_slices(own, margin=int(np.ceil(12.0 / min(spacing))) + 1)
    if box is None:
        return float("nan")
    away = ndimage.distance_transform_edt(~own[box], sampling=spacing)
    shell = (away > 3.0) & (away <= 12.0) & organ[box]
    if not shell.any():
        return float("nan")
    return float(ct[box][own[box]].mean() - np.median(ct[box][shell]))


def tiles(ct, truth, mask, c) -> np.ndarray:
    """Three axial slices (centre and ±1) around the click, 41×41 voxels: CT (window −60..140 HU), truth contour
    (green), added lesion (red), both (yellow)."""
    half = 20
    out = []
    for dk in (-1, 0, 1):
        k = int(np.clip(c[0] + dk, 0, ct.shape[0] - 1))
        tile = np.zeros((2 * half + 1, 2 * half + 1, 3), np.uint8)
        j0, i0 = c[1] - half, c[2] - half
        sl = (k, slice(max(j0, 0), c[1] + half + 1), slice(max(i0, 0), c[2] + half + 1))
        img = np.clip((ct[sl].astype(float) + 60.0) / 200.0 * 255.0, 0, 255).astype(np.uint8)
        rgb = np.stack([img] * 3, -1)
        t_edge = truth[sl] & ~ndimage.binary_erosion(truth[sl])
        m_edge = mask[sl] & ~ndimage.binary_erosion(mask[sl])
        rgb[t_edge] = (0, 255, 0)
        rgb[m_edge] = (255, 0, 0)
        rgb[t_edge & m_edge] = (255, 255, 0)
        tile[max(-j0, 0):max(-j0, 0) + rgb.shape[0], max(-i0, 0):max(-i0, 0) + rgb.shape[1]] = rgb
        out += [tile, np.full((tile.shape[0], 2, 3), 255, np.uint8)]
    return np.concatenate(out, 1)


def picture(path, rows, worst: int = 6) -> None:
    """The ``worst`` clicks of tumors ≥ 15 mm (lowest Dice first), one row of three slices each, enlarged 4×."""
    from PIL import Image, ImageDraw  # here: only --png needs Pillow

    picked = sorted((r for r in rows if r.get("missed") and r["d"] >= 15), key=lambda r: r["dice"])[:worst]
    if not picked:
        return
    strips = []
    for r in picked:
        strip = Image.fromarray(r["tiles"]).resize((r["tiles"].shape[1] * 4, r["tiles"].shape[0] * 4), Image.NEAREST)
        ImageDraw.Draw(strip).text((4, 4), f"seed {r['seed']} #{r['id']}: {r['d']:.0f} mm, local {r['local_hu']:+.0f} HU,"
                                   f" {r['path']}, Dice {r['dice']:.2f}", fill=(255, 255, 0))
        strips.append(strip)
    canvas = Image.new("RGB", (max(s.width for s in strips), sum(s.height + 4 for s in strips)), (255, 255, 255))
    y = 0
    for strip in strips:
        canvas.paste(strip, (0, y))
        y += strip.height + 4
    canvas.save(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=6)
    ap.add_argument("--count", type=int, default=4)
    ap.add_argument("--seed", "--first-seed", dest="first_seed", type=int, default=1,
                    help="the first case's seed (default 1); e.g. --seed 101 for another set of tumors")
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
    if args.png:
        picture(args.png, rows)
    for r in rows:
        r.pop("tiles", None)
    print(f"{args.ct} CT, seeds {args.first_seed}-{args.first_seed + args.cases - 1}; {len(rows)} inserted tumors, {len(rows) - len(missed)} found by the demo model at threshold "
          f"{args.threshold}, {len(missed)} missed and clicked")
    print(f"{'seed':>4} {'id':>3} {'diam mm':>8} {'HU':>6} {'local':>6} {'path':<20} {'Dice':>6} {'sphere':>7} "
          f"{'ms':>6}  detail")
    for r in missed:
        detail = f"p≥{r['thr']}" if r["thr"] is not None else (f"HU {r['hu_range']}" if r["hu_range"] else "")
        print(f"{r['seed']:>4} {r['id']:>3} {r['d']:>8.1f} {r['hu']:>6.0f} {r['local_hu']:>6.0f} {r['path']:<20} "
              f"{r['dice']:>6.3f} {r['sphere']:>7.3f} {r['ms']:>6.0f}  {detail} ({r['vox']} vs {r['truth_vox']} voxels)")
    if missed:
        big = [r for r in missed if r["d"] >= 15]
        worst = min(big, key=lambda r: r["dice"]) if big else None
        print(f"median Dice {statistics.median(r['dice'] for r in missed):.3f} (sphere baseline "
              f"{statistics.median(r['sphere'] for r in missed):.3f}); worst Dice of tumors ≥ 15 mm: "
              + (f"{worst['dice']:.3f} (seed {worst['seed']} #{worst['id']}, {worst['d']:.0f} mm, local "
                 f"{worst['local_hu']:+.0f} HU; {len(big)} tumors, {sum(r['dice'] < 0.6 for r in big)} under 0.6)"
                 if worst else "none")
              + f"; median click {statistics.median(r['ms'] for r in missed):.0f} ms")
        print(f"{'path':<20} {'clicks':>6} {'median Dice':>12} {'worst ≥ 15 mm':>14}")
        for p in sorted({r["path"] for r in missed}):
            on = [r for r in missed if r["path"] == p]
            big_on = [r["dice"] for r in on if r["d"] >= 15]
            print(f"{p:<20} {len(on):>6} {statistics.median(r['dice'] for r in on):>12.3f} "
                  f"{min(big_on) if big_on else float('nan'):>14.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
