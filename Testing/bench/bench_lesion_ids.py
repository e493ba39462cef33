"""Benchmark: what matching lesion ids by overlap (``lesions.IdMap.assign``) adds to a threshold change, against
the labelling every threshold change already pays (``postprocess.ranked_components`` via
``ProbabilityMap.labels``), in the same run.

Input: a synthetic tumor probability box the size of a real liver box at 0.8×0.8×1.5 mm (default 256×224×120 =
6.9 M voxels) with ``--lesions`` smooth blobs (p up to 1) and low noise, thresholded at 0.3, 0.8, 0.5 in turn
(the id map remembering each). Reported: median wall time over ``--repeats`` per step.

    python Testing/bench/bench_lesion_ids.py [--size 256 224 120] [--lesions 60] [--repeats 5]

Not a test: nothing is asserted.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from AtlasSegLib.lesions import IdMap  # noqa: E402
from AtlasSegLib.postprocess import tumor_labels  # noqa: E402


def probability_box(size_ijk, n, rng) -> np.ndarray:
    shape = tuple(size_ijk[::-1])
    field = np.zeros(shape, np.float32)
    for _ in range(n):
        c = [rng.integers(8, s - 8) for s in shape]
        field[tuple(c)] = rng.uniform(0.5, 1.0)
    field = ndimage.gaussian_filter(field, sigma=(2.0, 4.0, 4.0))
    field /= field.max()
    field += rng.normal(0, 0.02, shape).astype(np.float32)
    return (np.clip(field, 0, 1) * 255).astype(np.uint8)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, nargs=3, default=[256, 224, 120])
    ap.add_argument("--lesions", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    q = probability_box(args.size, args.lesions, np.random.default_rng(0))
    rows = {"labelling (ranked_components, the baseline)": [], "IdMap.assign (listing, read-only)": [],
            "IdMap.assign (update: remember)": []}
    counts = []
    for _ in range(args.repeats):
        idmap = IdMap(np.zeros(q.shape, np.uint32))
        for t in (0.3, 0.8, 0.5):
            t0 = time.perf_counter()
            lab = tumor_labels(q, None, threshold=t, voxel_mm3=0.96, min_mm3=0.0)
            rows["labelling (ranked_components, the baseline)"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            idmap.assign(lab)
            rows["IdMap.assign (listing, read-only)"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            idmap.assign(lab, update=True)
            rows["IdMap.assign (update: remember)"].append(time.perf_counter() - t0)
            counts.append(len(lab.parts))
    print(f"box {args.size[0]}×{args.size[1]}×{args.size[2]} = {np.prod(args.size) / 1e6:.1f} M voxels, "
          f"{min(counts)}-{max(counts)} components per threshold, thresholds 0.3 → 0.8 → 0.5, {args.repeats} repeats")
    print(f"{'step':48s} {'median ms':>10s} {'min':>8s} {'max':>8s}")
    base = statistics.median(rows["labelling (ranked_components, the baseline)"])
    for name, values in rows.items():
        print(f"{name:48s} {1000 * statistics.median(values):10.1f} {1000 * min(values):8.1f} "
              f"{1000 * max(values):8.1f}   {statistics.median(values) / base:5.2f}× baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
