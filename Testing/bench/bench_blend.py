"""Benchmark: could the sliding-window blend be cheaper? MONAI's ``sliding_window_inference`` (what
``inference.infer`` runs) against a candidate, ``fused_sliding_window`` below: the same windows, padding, weights,
count map and division, but one fused multiply-add per window (``out[region].addcmul_(p, w)``) instead of MONAI's
two passes (``p *= w``, then ``out[region] += p``). Same process, runs interleaved, best of N (median too).

Verdict when it was written (2 cores shared with five other sessions, AVX-512, 2026-12): not switched. The
fused add is not bit-exact on this CPU (addcmul uses FMA: one rounding where MONAI has two; max |Δ logit| ≈ 1.7e-7
of the largest; on the real CT and a tumor phantom with the demo model every mask and stored probability level was
still MONAI's, ``--masks``), and it saved less than the quarter of the blend asked for: 42 channels 21-24 % (best of
5, 2 threads; 17 % in CPU time on 1 thread), 8 channels 1-18 %, and in bench_quick's --fast run (``--pipeline``)
2 % in two runs, 25 % in a third. Both passes are bound by memory bandwidth on the (C, *roi) window region, which
the fused add still reads and writes; it only drops MONAI's in-place ``p *= w`` pass over the window's logits.

Cases (grids through ``pipeline.prepare`` on the 512×512×300 CT: the small TotalSegmentator CT stretched to
0.8×0.8×1.5 mm, as ``bench_quick.label_runs``):

- ``--fast`` with 42 structures (bench_quick's label card: SuPreM's 96³ windows, overlap 0.75, 1 per batch);
- the demo model's card (8 channels, 80³ windows, overlap 0.5, 2 per batch).

Default table: only blending is timed: the predictor copies fixed random logits into a buffer it reuses (MONAI
multiplies its output in place) and its own time is subtracted. Reported: blend seconds (all windows, the count
map, the division), the share saved, max |Δ logit| against MONAI, how many voxels' masks (logit ≥ 0, i.e.
p ≥ 0.5) differ and how many lie within that difference of 0 (random logits put far more voxels there than a
trained network), and each blend's peak memory over what was held before it (a fresh process each: VmHWM after
less VmRSS before).

``--pipeline``: the ``--fast`` run of bench_quick (label network, 42 structures, compact masks, overview) with
each blend in ``infer``: its blend seconds (the sliding window less the label lookups) and non-network seconds,
best of N, and whether every output file is the same (report.json: apart from times).

``--masks``: the demo model on the real CT and a tumor phantom, windows run once and replayed to both blends:
max |Δ logit| and whether every mask and every stored probability level (uint8, as the pipeline writes them) is
the same.

    python Testing/bench/bench_blend.py [--repeats 5] [--threads N] [--no-memory] [--pipeline] [--masks]

Not a test: nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]  # Testing/
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "bench"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from monai.data.utils import compute_importance_map, dense_patch_slices  # noqa: E402
from monai.inferers import sliding_window_inference  # noqa: E402

from AtlasSegLib import inference  # noqa: E402
from AtlasSegLib.inference import _padding_before, count_windows  # noqa: E402

CPU = torch.device("cpu")
METHODS = ("MONAI sliding_window_inference", "fused_sliding_window")

BLEND_ROUNDING = 2.0 ** -23
"""Most the fused blend moves a logit from MONAI's, per window over the voxel, as a fraction of the largest
|logit|: (n + 1) × 2 × 2^-24 for n windows, the two roundings of recursive summation."""


def scan_interval(shape, roi, overlap: float) -> tuple:
    """MONAI's step between window starts per axis (its ``_get_scan_interval``): int(r × (1 - overlap)), at least
    1, and a whole window on an axis exactly one window long."""
    return tuple(int(r) if r == n else max(int(r * (1 - overlap)), 1) for n, r in zip(shape, roi))


def fused_sliding_window(x: torch.Tensor, roi, batch: int, predictor, *, overlap: float, mode: str,
                         sw_device=CPU, device=CPU) -> torch.Tensor:
    """The candidate: MONAI's ``sliding_window_inference(x, roi, batch, predictor, overlap, mode,
    sw_device=sw_device, device=device, with_coord=True)`` for one image ``x`` (1, 1, *spatial), blending each
    window with one ``addcmul_``. The same windows in the same order (``dense_patch_slices`` at MONAI's scan
    interval), zero padding of axes shorter than the window, ``compute_importance_map`` weights, predictor calls
    (coords: per window [slice(0, 1), slice(None), *its slices]), count map and division; the predictor's tensor
    is left alone. Logits within (n + 1) × ``BLEND_ROUNDING`` × max |logit| of MONAI's (n windows over a voxel);
    equal for ``mode="constant"`` (weight 1: the product is exact)."""
    spatial = tuple(x.shape[2:])
    before = _padding_before(spatial, roi)
    if any(r > n for n, r in zip(spatial, roi)):
        pad = []  # F.pad lists the last axis first, (before, after) each
        for b, n, r in reversed(list(zip(before, spatial, roi))):
            pad += [b, max(r - n, 0) - b]
        x = F.pad(x, pad, mode="constant", value=0.0)
    size = tuple(x.shape[2:])
    slices = dense_patch_slices(size, roi, scan_interval(size, roi, overlap))
    weight = compute_importance_map(tuple(roi), mode=mode, sigma_scale=0.125, device=sw_device,
                                    dtype=x.dtype).to(device)
    count = torch.zeros((1, 1) + size, dtype=x.dtype, device=device)
    for s in slices:
        count[(0, 0) + s] += weight
    out = None
    for first in range(0, len(slices), batch):
        coords = [[slice(0, 1), slice(None)] + list(s) for s in slices[first:first + batch]]
        if len(coords) > 1:
            windows = torch.cat([x[tuple(c)] for c in coords]).to(sw_device)
        else:
            windows = x[tuple(coords[0])].to(sw_device)
        logits = predictor(windows, coords).to(device)
        if out is None:
            out = torch.zeros((1, logits.shape[1]) + size, dtype=x.dtype, device=device)
        for c, p in zip(coords, logits):
            out[(0, slice(None)) + tuple(c[2:])].addcmul_(p, weight)
        del logits, windows
    out /= count
    return out[(slice(None), slice(None)) + tuple(slice(b, b + n) for b, n in zip(before, spatial))]


def stretched_ct() -> tuple:
    """(CT, labels, label card) of bench_quick's 512×512×300 CT."""
    # here: SimpleITK, the CT data and bench_quick's helpers are only for working out the cases
    import SimpleITK as sitk
    import bench_quick as bq
    from testdata import ct_data_dir

    data = ct_data_dir() / "totalseg_abdomen_sm"
    size, spacing = (512, 512, 300), (0.8, 0.8, 1.5)
    ct = bq.stretched(sitk.ReadImage(str(data / "example_ct_sm.nii.gz")), size, spacing, sitk.sitkLinear, -1024,
                      sitk.sitkInt16)
    labels = bq.stretched(sitk.ReadImage(str(data / "example_seg.nii.gz")), size, spacing,
                          sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return ct, labels, bq.label_card(labels)


def case_shapes(ct, label_card) -> list:
    """[(name, channels, grid, inference)] from pipeline.prepare on the stretched 512×512×300 CT."""
    # here: the pipeline is only for working out the grids
    from AtlasSegLib.card import builtin_card
    from AtlasSegLib.pipeline import prepare

    demo = builtin_card("atlasseg-demo")
    return [(f"--fast, {len(label_card.classes)} structures", len(label_card.classes),
             prepare(ct, label_card, fast=True).array.shape, dict(label_card.inference)),
            ("demo model", len(demo.classes), prepare(ct, demo).array.shape, dict(demo.inference))]


class FixedLogits:
    """Predictor: fixed random logits (N(0, 4)) copied into a reused buffer; counts its own time."""

    def __init__(self, channels: int, inference: dict):
        roi, batch = tuple(inference["roi_size"]), int(inference["sw_batch_size"])
        self.base = torch.randn((batch, channels) + roi, generator=torch.Generator().manual_seed(0)) * 4
        self.buffer = self.base.clone()  # touched now: its pages are not the blend's
        self.seconds = 0.0

    def __call__(self, x, coords):
        t = time.perf_counter()
        out = self.buffer[:x.shape[0]]
        out.copy_(self.base[:x.shape[0]])
        self.seconds += time.perf_counter() - t
        return out


def blend(method: str, x, predictor, inference: dict) -> torch.Tensor:
    roi, batch = tuple(inference["roi_size"]), int(inference["sw_batch_size"])
    with torch.inference_mode():
        if method == METHODS[0]:
            return sliding_window_inference(x, roi, batch, predictor, overlap=inference["overlap"],
                                            mode=inference["mode"], with_coord=True)
        return fused_sliding_window(x, roi, batch, predictor, overlap=inference["overlap"], mode=inference["mode"])


def time_case(channels, grid, inference, repeats: int) -> dict:
    x = torch.rand((1, 1) + tuple(grid), generator=torch.Generator().manual_seed(1))
    predictor = FixedLogits(channels, inference)
    outputs = {m: blend(m, x, predictor, inference) for m in METHODS}  # warm-up, and the outputs compared
    ref, ours = outputs[METHODS[0]], outputs[METHODS[1]]
    diff = float((ours - ref).abs().max())
    flipped = int(((ref >= 0) != (ours >= 0)).sum())  # voxels whose mask (logit ≥ 0, p ≥ 0.5) differs
    near = int((ref.abs() <= diff).sum())  # voxels within that difference of the threshold: where it could
    ref_numel = ref.numel()
    del outputs, ref, ours
    times = {m: [] for m in METHODS}
    for _ in range(repeats):
        for m in METHODS:
            predictor.seconds = 0.0
            t = time.perf_counter()
            out = blend(m, x, predictor, inference)
            times[m].append(time.perf_counter() - t - predictor.seconds)
            del out
    return {"times": times, "max_diff": diff, "flipped": flipped, "near": near, "voxels": ref_numel}


def peak_mb(method: str, channels, grid, inference) -> float:
    """Peak resident memory a blend adds (MB), in a fresh process."""
    args = json.dumps({"method": method, "channels": channels, "grid": list(grid), "inference": inference})
    out = subprocess.run([sys.executable, __file__, "--peak-child", args], capture_output=True, text=True,
                         check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_child(args: dict) -> None:
    """Prints the peak resident MB one blend adds: VmHWM after it less VmRSS before it (ru_maxrss would not do: it
    keeps the parent's peak across fork and exec)."""
    x = torch.rand((1, 1) + tuple(args["grid"]))
    predictor = FixedLogits(args["channels"], args["inference"])
    before = _status_kb("VmRSS")
    out = blend(args["method"], x, predictor, args["inference"])
    print(f"{(_status_kb('VmHWM') - before) / 1024:.0f}")
    del out


def _same_outputs(a: Path, b: Path) -> list:
    """Files of run folder ``a`` that differ in ``b`` (report.json: apart from its time stamp and timings)."""
    differ = []
    for f in sorted(p for p in a.rglob("*") if p.is_file()):
        g = b / f.relative_to(a)
        if f.name == "report.json":
            ra, rb = (json.loads(x.read_text()) for x in (f, g))
            for r in (ra, rb):
                r.pop("created", None), r.pop("timings_s", None)
            same = ra == rb
        else:
            same = g.is_file() and f.read_bytes() == g.read_bytes()
        if not same:
            differ.append(str(f.relative_to(a)))
    return differ


def pipeline_runs(ct, labels, card, repeats: int) -> list:
    """bench_quick's --fast label-network run with each blend in ``infer``: table rows."""
    # here: the pipeline and bench_quick's label network are only for --pipeline
    import tempfile
    import bench_quick as bq
    from AtlasSegLib.io import SourceInfo
    from AtlasSegLib.networks import LoadedModel
    from AtlasSegLib.pipeline import SegmentOptions, Segmenter

    oracle = bq.LabelNetwork(ct, labels, card, fast_grids=(True,))
    dummy = LoadedModel(torch.nn.Identity(), card, None)
    monai = inference.sliding_window_inference
    blend_s, nonnet_s = {m: [] for m in METHODS}, {m: [] for m in METHODS}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            for m in METHODS:
                spent = [0.0]

                def timed(x, roi, batch, predictor, *, overlap, mode, sw_device, device, with_coord, m=m):
                    t, looked = time.perf_counter(), oracle.seconds
                    if m == METHODS[0]:
                        y = monai(x, roi, batch, predictor, overlap=overlap, mode=mode, sw_device=sw_device,
                                  device=device, with_coord=with_coord)
                    else:
                        y = fused_sliding_window(x, roi, batch, predictor, overlap=overlap, mode=mode,
                                                 sw_device=sw_device, device=device)
                    spent[0] += time.perf_counter() - t - (oracle.seconds - looked)
                    return y

                inference.sliding_window_inference = timed
                try:
                    seg = Segmenter(dummy, SegmentOptions(device="cpu", backend="torch", fast=True, overview=True))
                    seg.runner = oracle
                    oracle.seconds = 0.0
                    t = time.perf_counter()
                    seg.run(ct, SourceInfo(path="stretched totalseg_abdomen_sm", format="nifti"),
                            Path(tmp) / f"{i}-{METHODS.index(m)}")
                    nonnet_s[m].append(time.perf_counter() - t - oracle.seconds)
                    blend_s[m].append(spent[0])
                finally:
                    inference.sliding_window_inference = monai
        differ = _same_outputs(Path(tmp) / "0-0", Path(tmp) / "0-1")
    return [f"| {m} | {min(blend_s[m]):.3f} ({statistics.median(blend_s[m]):.3f}) | {min(nonnet_s[m]):.2f} "
            f"({statistics.median(nonnet_s[m]):.2f}) | {'-' if m == METHODS[0] else differ or 'none'} |"
            for m in METHODS]


def mask_checks() -> list:
    """The demo model on the real CT and a tumor phantom, each window run once, replayed to the fused blend."""
    # here: SimpleITK, the demo model and the phantom are only for --masks
    import numpy as np
    import SimpleITK as sitk
    from AtlasSegLib.card import builtin_card
    from AtlasSegLib.networks import load_model
    from AtlasSegLib.phantom import make_phantom
    from AtlasSegLib.pipeline import prepare
    from AtlasSegLib.postprocess import quantize
    from testdata import ct_data_dir

    model = load_model(builtin_card("atlasseg-demo"))
    inf = model.card.inference
    images = {"real CT (example_ct_sm)": sitk.ReadImage(str(ct_data_dir() / "totalseg_abdomen_sm" /
                                                             "example_ct_sm.nii.gz")),
              "tumor phantom (seed 7)": make_phantom(7, tumors=True).image}
    rows = []
    for name, image in images.items():
        arr = prepare(image, model.card).array
        seen = {}

        def record(x, coords):
            y = model.net(x).float()
            for c, p in zip(coords, y):
                seen[tuple((s.start, s.stop) for s in c[2:])] = p.clone()
            return y

        def replay(x, coords):
            return torch.stack([seen[tuple((s.start, s.stop) for s in c[2:])] for c in coords])

        x = torch.from_numpy(arr)[None, None]
        with torch.inference_mode():
            ref = sliding_window_inference(x, inf["roi_size"], inf["sw_batch_size"], record, overlap=inf["overlap"],
                                           mode=inf["mode"], with_coord=True)[0]
            ours = fused_sliding_window(x, inf["roi_size"], inf["sw_batch_size"], replay, overlap=inf["overlap"],
                                        mode=inf["mode"])[0]
        pa, pb = torch.sigmoid(ref).numpy(), torch.sigmoid(ours).numpy()
        diff = float((ours - ref).abs().max())
        rows.append(f"| {name} | {tuple(arr.shape)} | {len(seen)} | {diff:.2g} ({diff / float(ref.abs().max()):.1e}) "
                    f"| {int((ours != ref).sum()):,} of {ref.numel():,} | "
                    f"{np.array_equal(pa >= inf['threshold'], pb >= inf['threshold'])} | "
                    f"{np.array_equal(quantize(pa), quantize(pb))} |")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    ap.add_argument("--shapes-only", action="store_true", help="print the cases' grids and stop")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    ap.add_argument("--pipeline", action="store_true", help="also bench_quick's --fast run with each blend")
    ap.add_argument("--masks", action="store_true", help="also the demo model's masks on the real CT and a phantom")
    ap.add_argument("--peak-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peak_child:
        peak_child(json.loads(args.peak_child))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    ct, labels, label_card = stretched_ct()
    cases = case_shapes(ct, label_card)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; best of {args.repeats} interleaved (median in brackets)")
    for name, channels, grid, inf in cases:
        print(f"  {name}: {channels} channels, grid {tuple(grid)}, {tuple(inf['roi_size'])} windows, overlap "
              f"{inf['overlap']}, {inf['sw_batch_size']} per batch: "
              f"{count_windows(grid, inf['roi_size'], inf['overlap'])} windows")
    if args.shapes_only:
        return 0
    header = (f"| case | {METHODS[0]} s | {METHODS[1]} s | saved | max abs diff | mask voxels differing (within max diff of 0) | "
              f"peak MB (MONAI / ours) |")
    rows = [header, "|---" * (header.count("|") - 1) + "|"]
    for name, channels, grid, inf in cases:
        r = time_case(channels, grid, inf, args.repeats)
        best = {m: min(v) for m, v in r["times"].items()}
        med = {m: statistics.median(v) for m, v in r["times"].items()}
        saved = 1.0 - best[METHODS[1]] / best[METHODS[0]]
        mem = "-" if args.no_memory else " / ".join(f"{peak_mb(m, channels, grid, inf):.0f}" for m in METHODS)
        rows.append(f"| {name} | {best[METHODS[0]]:.3f} ({med[METHODS[0]]:.3f}) | {best[METHODS[1]]:.3f} "
                    f"({med[METHODS[1]]:.3f}) | {100 * saved:.0f} % | {r['max_diff']:.2g} | {r['flipped']} ({r['near']}) of "
                    f"{r['voxels']:,} | "
                    f"{mem} |")
        print(rows[-1], file=sys.stderr, flush=True)
    print("\n".join(rows))
    if args.pipeline:
        print(f"\nbench_quick's --fast run (label network, {len(label_card.classes)} structures), best of "
              f"{args.repeats} (median):")
        print("| blend in infer | blend s | non-network s | output files differing |\n|---|---|---|---|")
        print("\n".join(pipeline_runs(ct, labels, label_card, args.repeats)))
    if args.masks:
        print("\ndemo model, the fused blend against MONAI's on the same windows:")
        print("| image | grid | windows | max abs diff (of max logit) | voxels not bit-equal | same masks | "
              "same stored probability levels |\n|---|---|---|---|---|---|---|")
        print("\n".join(mask_checks()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
