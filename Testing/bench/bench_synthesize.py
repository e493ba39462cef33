"""How long ``synthesize.insert_tumors`` takes on the real CTs of shared/ctdata (a benchmark, not a test).

    .venv/bin/python Testing/bench/bench_synthesize.py [--repeat 3] [--png out.png]

For each CT (the 122×101×30 NIfTI at 3 mm; the 512×512×20 JPEG 2000 DICOM series at 0.98×0.98×2 mm, its liver
label resampled onto the series by physical position) and tumor count: best of N of ``insert_tumors`` (liver
mask given, positions drawn), beside a plain baseline in the same run: pasting hard-edged spheres of the same
diameters at the same centres into a copy of the CT (no shape noise, texture, blur or vessel search). Reading
the CT and the mask is not timed. ``--png`` writes an axial before/after picture of the DICOM case with the
truth's contour, to look at.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]  # Testing/ (this script lives one folder below it)
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from AtlasSegLib.io import read_image  # noqa: E402
from AtlasSegLib.synthesize import insert_tumors  # noqa: E402
from testdata import ct_data_dir  # noqa: E402


def _cases():
    root = ct_data_dir()
    present = json.loads((root / "totalseg_labels_present.json").read_text())
    small, _ = read_image(root / "totalseg_abdomen_sm" / "example_ct_sm.nii.gz")
    labels = sitk.ReadImage(str(root / "totalseg_abdomen_sm" / "example_seg.nii.gz"))
    yield "nifti 122x101x30 3mm", small, labels, _liver_id(present, "totalseg_abdomen_sm")
    dicom, _ = read_image(root / "totalseg_dicom_upper_abdomen" / "example_ct_dicom")
    seg = sitk.ReadImage(str(root / "totalseg_dicom_upper_abdomen" / "example_seg_dicom.nii.gz"))
    # The labels are stored y-flipped over the same physical extent: pair them by position, not by index.
    seg = sitk.Resample(seg, dicom, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    yield "dicom 512x512x20 0.98mm", dicom, seg, _liver_id(present, "totalseg_dicom_upper_abdomen")


def _liver_id(present: dict, folder: str) -> int:
    key = next(k for k in present if k.startswith(folder))
    return next(int(i) for i, v in present[key].items() if v["name"] == "liver")


def _spheres(ct, tumors, spacing):
    out = ct.copy()
    for t in tumors:
        r = t["diameter_mm"] / 2
        half = np.ceil(r / np.asarray(spacing)).astype(int)
        c = np.asarray(t["center_zyx"])
        lo, hi = np.maximum(c - half, 0), np.minimum(c + half + 1, ct.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        grid = np.meshgrid(*[(np.arange(a, b) - cc) * s for a, b, cc, s in zip(lo, hi, c, spacing)], indexing="ij")
        inside = sum(g ** 2 for g in grid) <= r * r
        out[box][inside] = out[box][inside] + t["contrast_hu"]
    return out


def _best(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return min(times), value


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--png")
    args = ap.parse_args(argv)
    print(f"{'CT':<26}{'tumors':>7}{'insert_tumors s':>17}{'spheres s':>11}{'ratio':>8}")
    for name, image, labels, liver_id in _cases():
        ct = sitk.GetArrayFromImage(image)
        liver = sitk.GetArrayFromImage(labels) == liver_id
        spacing = image.GetSpacing()[::-1]
        for count in (1, 5):
            seconds, result = _best(lambda: insert_tumors(ct, liver, spacing, count=count, diameter_mm=(10, 30),
                                                          seed=1), args.repeat)
            base, _ = _best(lambda: _spheres(ct, result.tumors, spacing), args.repeat)
            print(f"{name:<26}{count:>7}{seconds:>17.3f}{base:>11.4f}{seconds / base:>8.0f}")
        if args.png and name.startswith("dicom"):
            _picture(ct, result, args.png)
    return 0


def _picture(ct, result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = max(result.tumors, key=lambda t: t["diameter_mm"])
    z, y, x = t["center_zyx"]
    h = 70
    view = (slice(max(y - h, 0), y + h), slice(max(x - h, 0), x + h))
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    for ax, arr, title in zip(axes, (ct, result.ct), ("before", f"after: {t['diameter_mm']:.0f} mm, "
                                                                f"{t['contrast_hu']:.0f} HU; truth in green")):
        ax.imshow(arr[z][view], cmap="gray", vmin=-100, vmax=250)
        ax.set_title(title)
        ax.axis("off")
    axes[1].contour(result.mask[z][view], [0.5], colors="lime", linewidths=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


if __name__ == "__main__":
    sys.exit(main())
