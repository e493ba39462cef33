"""Quick benchmark (``make bench-quick``, a few minutes on 2 cores): torch fp32 against the backend ``auto`` picks.

Same process, same inputs, runs interleaved, best of N. Ends with exactly one line::

    RESULT network_speedup=X pipeline_speedup=X min_dice=X nonnet_pct=X subset_window_fraction=X

- network_speedup: one 96³ window of SuPreM's SegResNet (32 outputs, seeded random weights; speed does not
  depend on the weights) on the real-CT parity window, torch fp32 time / chosen-backend time (best of 3 each).
- pipeline_speedup: end-to-end ``Segmenter.run`` of the trained demo model on a phantom (512 px-class input is
  too slow for a quick run with the demo's 80³ windows), torch fp32 / chosen backend (best of 2 each).
- min_dice: lowest per-structure Dice, chosen backend vs torch fp32, demo model on the phantom and on the real CT
  (``totalseg_abdomen_sm``), over structures non-empty in either run.
- nonnet_pct: non-network share of a ``--fast`` run with compact masks, on a 512×512×300 real CT (the small
  TotalSegmentator CT stretched to 0.8×0.8×1.5 mm). The masks come from a label "network" whose logits are the
  CT's reference labels (41 TotalSegmentator structures + an empty liver_tumor gated to the liver), so
  post-processing sees realistic masks; its non-network time is the run's total minus the label lookups. The
  network time is that run's window count × the chosen backend's SegResNet window time measured above.
  nonnet_pct = non-network / (non-network + network) × 100.
- subset_window_fraction: ``--structures liver,liver_tumor`` on that 512×512×300 CT at full resolution
  (1.5 mm): (windows of the coarse 3 mm pass + full-resolution windows the cascade runs on its box) / windows
  of a full run. The coarse pass is the pipeline's own (``Segmenter._coarse_box`` with the label network); the
  full-resolution windows are those of MONAI's placement over the crop ``inference.cover_crop`` gives, as
  ``infer`` runs them (a full-resolution 42-channel pass of 512×512×300 would need ~10 GB here).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402

from AtlasSegLib import backends  # noqa: E402
from AtlasSegLib.card import builtin_card, card_from_dict  # noqa: E402
from AtlasSegLib.inference import _padding_before, count_windows, cover_crop  # noqa: E402
from AtlasSegLib.io import SourceInfo, read_image  # noqa: E402
from AtlasSegLib.networks import LoadedModel, construct, load_model  # noqa: E402
from AtlasSegLib.pipeline import SegmentOptions, Segmenter, prepare  # noqa: E402
from AtlasSegLib.geometry import resample  # noqa: E402
from testdata import ct_data_dir  # noqa: E402

SHARED = HERE.parent.parent / "shared"


def dice(a, b) -> float:
    a, b = a > 0, b > 0
    n = int(a.sum()) + int(b.sum())
    return 1.0 if n == 0 else 2.0 * int((a & b).sum()) / n


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def best_of(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


# ------------------------------------------------------------------------------------------------- network
def network_times(repeats: int) -> tuple:
    card = builtin_card("suprem-segresnet")
    torch.manual_seed(0)
    net = construct(card).eval()
    roi = card.inference["roi_size"]
    parity = SHARED / "docs" / "suprem_parity" / "input_96.npy"
    x = torch.from_numpy(np.load(parity)).float()[None, None] if parity.is_file() else torch.rand(1, 1, *roi)
    t = time.perf_counter()
    new = backends.make_runner(net, roi, torch.device("cpu"), "auto", "auto")
    log(f"chosen backend: {new.info()} (conversion/cache lookup {time.perf_counter() - t:.1f} s)")
    ref = backends.TorchRunner(net, torch.device("cpu"), "fp32")
    with torch.inference_mode():
        ref(x), new(x)  # warm up
        t_ref, t_new = [], []
        for _ in range(repeats):  # interleaved so both see the same machine load
            t_ref.append(best_of(lambda: ref(x), 1))
            t_new.append(best_of(lambda: new(x), 1))
        diff = float((ref(x) - new(x)).abs().max())
    log(f"SegResNet 96³ window: torch fp32 {min(t_ref):.2f} s, {new.backend} {new.precision} {min(t_new):.2f} s "
        f"(best of {repeats}); max |Δlogit| {diff:.2g}")
    return min(t_ref), min(t_new), new.info()


# ------------------------------------------------------------------------------------------------ pipeline
def run_pair(model, image, source, work: Path, tag: str, repeats: int) -> tuple:
    # Convert (or find the cached conversion) first: 'auto' skips a first conversion for small runs like these.
    backends.converted(model.net, model.card.inference["roi_size"])
    times = {"torch": [], "auto": []}
    for r in range(repeats):
        for backend in ("torch", "auto"):
            out = work / f"{tag}-{backend}-{r}"
            opts = SegmentOptions(device="cpu", backend=backend, precision="fp32" if backend == "torch" else "auto",
                                  overview=False)
            seg = Segmenter(model, opts)
            t = time.perf_counter()
            seg.run(image, source, out)
            times[backend].append(time.perf_counter() - t)
    dices = {}
    for f in (work / f"{tag}-torch-0" / "segmentations").glob("*.nii.gz"):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(work / f"{tag}-auto-0" / "segmentations" / f.name)))
        if a.any() or b.any():
            dices[f.name[:-7]] = dice(a, b)
    log(f"{tag}: torch fp32 {min(times['torch']):.1f} s, auto {min(times['auto']):.1f} s end to end; "
        f"lowest Dice {min(dices.values()):.4f} over {len(dices)} structures")
    return min(times["torch"]), min(times["auto"]), dices


# --------------------------------------------------------------------------------------- label "network"
class LabelNetwork(backends.Runner):
    """Logits from reference labels: +10 in a class's voxels, -10 elsewhere, looked up by window position."""

    backend = "labels"

    def __init__(self, image, labels, card, fast_grids=(False, True)):
        self.card = card
        self.values = torch.tensor([c.label for c in sorted(card.classes, key=lambda c: c.channel)])
        self.by_shape = {}
        for fast in fast_grids:
            prep = prepare(image, card, fast=fast)
            lab = sitk.GetArrayFromImage(resample(labels, prep.grid, interpolator=sitk.sitkNearestNeighbor))
            lab = np.ascontiguousarray(lab.transpose(2, 1, 0))
            roi = card.inference["roi_size"]
            pad = [(p, max(r - n, 0) - p) for p, n, r in zip(_padding_before(lab.shape, roi), lab.shape, roi)]
            self.by_shape[prep.array.shape] = torch.from_numpy(np.pad(lab, pad).astype(np.int64))
        self.current = None
        self.seconds = 0.0

    def begin(self, shape) -> None:
        self.current = self.by_shape[tuple(shape)]

    def predict(self, x, coords):
        t = time.perf_counter()
        out = []
        for c in coords:
            lab = self.current[tuple(c[-3:])]
            out.append(torch.where(lab[None] == self.values[:, None, None, None], 10.0, -10.0))
        y = torch.stack(out).float()
        del out, lab  # freeing the per-window temporaries (148 MB) is the label network's cost, not the pipeline's
        self.seconds += time.perf_counter() - t
        return y

    def __call__(self, x):
        raise RuntimeError("the label network needs window positions")


def stretched(src: sitk.Image, size, spacing, interpolator, default, pixel) -> sitk.Image:
    in_extent = [n * s for n, s in zip(src.GetSize(), src.GetSpacing())]
    out_extent = [n * s for n, s in zip(size, spacing)]
    t = sitk.ScaleTransform(3, [a / b for a, b in zip(in_extent, out_extent)])
    t.SetCenter(src.GetOrigin())
    return sitk.Resample(src, [int(v) for v in size], t, interpolator, src.GetOrigin(), spacing, src.GetDirection(),
                         default, pixel)


def label_card(labels: sitk.Image):
    raw = json.loads(json.dumps(builtin_card("suprem-segresnet").raw))
    liver = next(c for c in raw["classes"] if c["name"] == "liver")
    tumor = next(c for c in raw["classes"] if c["name"] == "liver_tumor")
    ids = sorted(int(v) for v in np.unique(sitk.GetArrayViewFromImage(labels)) if v > 0)
    classes = []
    for n, v in enumerate(ids):
        entry = dict(liver) if v == 5 else {"name": f"totalseg_{v}", "kind": "organ"}  # TotalSegmentator v2: 5 = liver
        entry.update(channel=n, label=v)
        classes.append(entry)
    classes.append(dict(tumor, channel=len(ids), label=200))
    raw.update(id="totalseg-labels", classes=classes, class_tables=None)
    raw.pop("class_tables")
    raw["architecture"].pop("out_channels_from", None)
    return card_from_dict(raw)


def label_runs(work: Path, window_s: float) -> tuple:
    data = ct_data_dir() / "totalseg_abdomen_sm"
    size, spacing = (512, 512, 300), (0.8, 0.8, 1.5)
    ct = stretched(sitk.ReadImage(str(data / "example_ct_sm.nii.gz")), size, spacing, sitk.sitkLinear, -1024,
                   sitk.sitkInt16)
    labels = stretched(sitk.ReadImage(str(data / "example_seg.nii.gz")), size, spacing, sitk.sitkNearestNeighbor, 0,
                       sitk.sitkUInt8)
    card = label_card(labels)
    log(f"label network: {len(card.classes)} classes on a {size} CT")
    dummy = LoadedModel(torch.nn.Identity(), card, None)
    source = SourceInfo(path="stretched totalseg_abdomen_sm", format="nifti")

    # --fast run with compact masks: the non-network share.
    t = time.perf_counter()
    oracle = LabelNetwork(ct, labels, card, fast_grids=(True,))
    log(f"label lookup tables: {time.perf_counter() - t:.1f} s (not part of the run)")
    seg = Segmenter(dummy, SegmentOptions(device="cpu", backend="torch", fast=True, overview=True))
    seg.runner = oracle
    t = time.perf_counter()
    report = seg.run(ct, source, work / "labels-fast")
    total = time.perf_counter() - t
    windows = report["settings"]["windows"]["windows"]
    nonnet = total - oracle.seconds
    network = windows * window_s
    pct = 100.0 * nonnet / (nonnet + network)
    log(f"--fast run, {windows} windows: non-network {nonnet:.1f} s (timings {report['timings_s']}), "
        f"network {windows} × {window_s:.2f} s = {network:.1f} s -> non-network {pct:.1f} %")

    # Subset cascade: liver + liver_tumor at full resolution.
    sub = Segmenter(dummy, SegmentOptions(device="cpu", backend="torch", structures=("liver", "liver_tumor")))
    oracle = LabelNetwork(ct, labels, card, fast_grids=(True,))  # a network outputs all its channels
    sub.runner = oracle
    prep = prepare(ct, sub.card, fast=False)
    box = sub._coarse_box(ct, prep, backends_reporter())
    roi = sub.card.inference["roi_size"]
    overlap = sub.card.inference["overlap"]
    full = count_windows(prep.array.shape, roi, overlap)
    fine = windows_in_cover(prep.array.shape, roi, overlap, box)
    coarse = sub._windows["coarse_windows"]
    frac = (coarse + fine) / full
    log(f"subset liver,liver_tumor: coarse {coarse} + fine {fine} of {full} full-resolution windows "
        f"(box {box} in a {prep.array.shape} model grid) -> {frac:.3f}")
    return pct, frac


def backends_reporter():
    from AtlasSegLib.progress import Reporter

    return Reporter()


def windows_in_cover(shape, roi, overlap, box) -> int:
    """Windows ``infer`` runs for ``box``: MONAI's placement over the crop ``cover_crop`` gives."""
    if box is None:
        return count_windows(shape, roi, overlap)
    crop = cover_crop(shape, roi, overlap, box)
    return count_windows([b - a for a, b in crop], roi, overlap)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads; OpenVINO {backends.openvino_version()}, "
        f"CPU capabilities {backends.cpu_capabilities()}")
    work = Path(tempfile.mkdtemp(prefix="atlasseg-bench-quick-"))

    t_ref, t_new, info = network_times(args.repeats)

    demo = load_model(builtin_card("atlasseg-demo"))
    from AtlasSegLib.phantom import make_phantom

    phantom = make_phantom(2024, tumors=True)
    p_ref, p_new, dices = run_pair(demo, phantom.image, SourceInfo("phantom(seed=2024)", "phantom"), work,
                                   "phantom", 2)
    image, source = read_image(str(ct_data_dir() / "totalseg_abdomen_sm" / "example_ct_sm.nii.gz"))
    _, _, dices_ct = run_pair(demo, image, source, work, "realct", 1)
    min_dice = min(list(dices.values()) + list(dices_ct.values()))

    nonnet_pct, frac = label_runs(work, t_new)
    log(f"conditions: same process, interleaved, best of N; chosen backend {info}; machine shared with other jobs")
    print(f"RESULT network_speedup={t_ref / t_new:.2f} pipeline_speedup={p_ref / p_new:.2f} min_dice={min_dice:.4f} "
          f"nonnet_pct={nonnet_pct:.1f} subset_window_fraction={frac:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
