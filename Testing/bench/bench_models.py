"""Benchmark: the built-in models on the CPU, one 96³ window each, and what SuPreM's universal head costs.

Per model (each in its own process, so peak memory does not mix): parameter count, the forward time of one
96³ window (median of --repeats after one warm-up; torch threads = --threads) and the process's peak RSS
(``ru_maxrss``: interpreter + torch + MONAI + model + activations of one window).

For the SuPreM U-Net and Swin UNETR the same backbone is also run with a plain output head, Conv3d(F, 32, 1) on
the full-resolution features (F = 64 U-Net, 48 Swin), i.e. what a conventional 32-class network would have.
Two comparisons: the whole window (universal vs plain, separate processes) and the head alone (both heads on
the same cached backbone output, interleaved in one process, so machine load affects both alike).

``--pipeline`` also runs the full pipeline (read → preprocess → network → invert/post-process/write) on a real
CT resampled to 512×512×300 at 0.8×0.8×1.5 mm (built as in Testing/bench/bench_pipeline.py) for suprem-segresnet in
the modes of --pipeline-modes: the quality presets reference (1.5 mm, overlap 0.75, fp32), balanced (1.5 mm,
overlap 0.5, body crop, INT8 where its check passes) and fast (3 mm, overlap 0.5, INT8 where it passes), or
the older full/fast (the card's overlap 0.75 at 1.5/3 mm, ``auto`` precision). Every model and preset gets a
table row with its window count; where not measured end to end, the network time is *estimated* as (windows)
× (measured time of one window in the precision the preset uses), and printed as an estimate.

The ``int8`` backend is OpenVINO INT8 (NNCF), quantized on foreground windows of the real CT; with random
weights its self-check is meaningless, so the window rows time it with the check's bound at 0; the pipeline
runs use the real bound (random weights usually fail it, and then fp32 runs: the row says which ran).

    python Testing/bench/bench_models.py [--models ID ...] [--backends torch openvino] [--threads 2] [--repeats 3]
                                   [--no-plain] [--pipeline [--pipeline-modes fast]]

Each model runs with each of --backends (OpenVINO: converted once into a temporary cache, conversion time shown;
its precision is what ``auto`` picks on this CPU).

Weights are seeded random (speed and memory do not depend on their values). Not a test: nothing is asserted.
"""
from __future__ import annotations

import argparse
import platform
import resource
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parents[1]  # Testing/ (this script lives one folder below it)
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

MODELS = ["suprem-segresnet", "suprem-unet", "suprem-swinunetr", "difftumor-liver-unet", "difftumor-liver-nnunet",
          "difftumor-pancreas-unet", "difftumor-pancreas-nnunet", "difftumor-kidney-unet", "difftumor-kidney-nnunet"]
UNIVERSAL = ("suprem-unet", "suprem-swinunetr")
ROI = 96
PLAIN_CLASSES = 32
PRESETS = ("reference", "balanced", "fast")


# --- child processes ------------------------------------------------------------------------------------------

def _build(model_id: str, variant: str, seed: int = 0):
    """The network of ``model_id`` with seeded random weights; ``variant='plain'``: backbone + Conv3d head."""
    # here: the heavy modules load in the child process that is measured (time, peak RSS), not in the parent
    from AtlasSegLib.card import builtin_card
    from AtlasSegLib.networks import construct

    card = builtin_card(model_id)
    torch.manual_seed(seed)
    classes = 32 if card.architecture.get("class_table_from") or card.architecture.get("out_channels_from") else None
    net = construct(card, classes)
    if model_id in UNIVERSAL:
        net.organ_embedding.normal_()
        if variant == "plain":
            net = PlainHead(net.backbone, PLAIN_CLASSES)
    return net.eval()


class PlainHead(torch.nn.Module):
    """A universal-head model's backbone with a conventional output layer: Conv3d(F, classes, 1) on the
    full-resolution features."""

    def __init__(self, backbone, classes: int):
        super().__init__()
        self.backbone = backbone
        self.out = torch.nn.Conv3d(backbone.feature_channels, classes, kernel_size=1)

    def forward(self, x):
        return self.out(self.backbone(x)[1])


def _timed(fn, repeats: int) -> list:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def child_window(args) -> dict:
    """One model variant: parameters, warm-up + ``repeats`` timed 96³ forwards, peak RSS; for universal
    models also both heads alone on one cached backbone output (interleaved)."""
    torch.set_num_threads(args.threads)
    net = _build(args.child, args.variant)
    params = sum(p.numel() for p in net.parameters())
    torch.manual_seed(1)
    x = torch.rand(1, 1, ROI, ROI, ROI)
    result = {"params": params, "backend": "torch", "precision": "fp32"}
    run = net
    if args.backend == "int8":  # converted and quantized once on real anatomy (timed)
        # here: the heavy modules load in the child process that is measured (time, peak RSS), not in the parent
        from AtlasSegLib import backends

        cal, chk = _real_ct_windows(args.child)
        t = time.perf_counter()
        run = backends.make_runner(net, (ROI,) * 3, torch.device("cpu"), "openvino", "int8", calibration=cal,
                                   calibration_source="real CT", check={"windows": chk, "bound": 0.0})
        result.update(backend="openvino", precision=run.precision, convert_s=time.perf_counter() - t)
    elif args.backend != "torch":  # converted once (timed: a first conversion is part of a first run's cost)
        # here: the heavy modules load in the child process that is measured (time, peak RSS), not in the parent
        from AtlasSegLib import backends

        t = time.perf_counter()
        run = backends.make_runner(net, (ROI,) * 3, torch.device("cpu"), args.backend, "auto")
        result.update(run.info(), convert_s=time.perf_counter() - t)
    with torch.inference_mode():
        y = run(x)  # warm-up
        result["out_channels"] = int(y.shape[1])
        del y
        result["window_s"] = _timed(lambda: run(x), args.repeats)
        if args.child in UNIVERSAL and args.variant == "universal" and args.backend == "torch":
            bottleneck, features = net.backbone(x)

            class Cached(torch.nn.Module):
                def forward(self, _):
                    return bottleneck, features

            backbone = net.backbone
            net.backbone = Cached()  # the universal model's forward now runs its head only
            plain = torch.nn.Conv3d(features.shape[1], PLAIN_CLASSES, kernel_size=1).eval()
            net(x), plain(features)  # warm-up
            uni, pla = [], []
            for _ in range(args.repeats):
                uni += _timed(lambda: net(x), 1)
                pla += _timed(lambda: plain(features), 1)
            net.backbone = backbone
            result["universal_head_s"], result["plain_head_s"] = uni, pla
            result["head_params"] = params - sum(p.numel() for p in backbone.parameters())
            result["plain_head_params"] = sum(p.numel() for p in plain.parameters())
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _real_ct_windows(model_id: str) -> tuple:
    """INT8 calibration and check windows: the real CT's foreground windows as ``model_id``'s pipeline sees it."""
    # here: the heavy modules load in the child process that is measured (time, peak RSS), not in the parent
    from AtlasSegLib import backends
    from AtlasSegLib.card import builtin_card
    from AtlasSegLib.inference import foreground_windows
    from AtlasSegLib.io import read_image
    from AtlasSegLib.pipeline import prepare
    from testdata import ct_data_dir

    card = builtin_card(model_id)
    image, _ = read_image(str(ct_data_dir() / "totalseg_abdomen_sm" / "example_ct_sm.nii.gz"))
    cal, chk = foreground_windows(prepare(image, card).array, (ROI,) * 3, 0.5, backends.CALIBRATION_WINDOWS)
    return cal, chk[:backends.INT8_CHECK_WINDOWS]


def child_pipeline(args) -> dict:
    """The whole pipeline on ``args.input`` for one model (the code path of ``atlasseg segment``)."""
    torch.set_num_threads(args.threads)
    # here: the heavy modules load in the child process that is measured (time, peak RSS), not in the parent
    from AtlasSegLib.card import builtin_card
    from AtlasSegLib.io import read_image
    from AtlasSegLib.networks import load_model
    from AtlasSegLib.pipeline import SegmentOptions, Segmenter

    t = time.perf_counter()
    image, source = read_image(args.input)
    read_s = time.perf_counter() - t
    model = load_model(builtin_card(args.child), args.weights)
    quality = args.quality or None
    backend = "openvino" if args.backend == "int8" else args.backend
    report = Segmenter(model, SegmentOptions(device="cpu", fast=args.fast, backend=backend, quality=quality)).run(
        image, source, args.out)
    result = dict(report["timings_s"])
    result["read"] = read_s
    result["total"] = read_s + report["timings_s"]["total"]
    result["model_grid"] = report["settings"]["crop_size_ijk"]
    result["backend"] = f"{report['model']['backend']} {report['model']['precision']}"
    result["windows"] = report["settings"]["windows"].get("windows_run")
    if report["model"].get("int8_check"):
        result["int8_check_min_dice"] = report["model"]["int8_check"].get("min_dice")
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def run_child(extra: list, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--threads", str(threads)] + extra
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[7:])
            r["process_wall_s"] = time.perf_counter() - t
            return r
    return {"error": f"exit {proc.returncode}" + (" (killed: out of memory?)" if proc.returncode < 0 else ""),
            "stderr": proc.stderr[-800:]}


# --- parent ---------------------------------------------------------------------------------------------------

def _med(values) -> float:
    return statistics.median(values)


def window_tables(models, threads: int, repeats: int, backends=("torch",), plain: bool = True) -> dict:
    results = {}
    for model_id in models:
        common = ["--repeats", str(repeats), "--child", model_id]
        for backend in backends:
            key = model_id if backend == "torch" else f"{model_id}@{backend}"
            results[key] = run_child(common + ["--variant", "universal", "--backend", backend], threads)
            print(f"  measured {model_id} {backend}", file=sys.stderr, flush=True)
        if model_id in UNIVERSAL and plain:
            results[model_id + "+plain"] = run_child(common + ["--variant", "plain"], threads)

    print(f"\nOne 96³ window, CPU, torch threads {threads}, median of {repeats} after one warm-up "
          "(each model in its own process)\n")
    hdr = (f"{'model':<28}{'backend':<16}{'params M':>10}{'out ch':>8}{'window s':>10}{'min-max s':>14}"
           f"{'peak RSS MiB':>14}{'convert s':>11}")
    print(hdr)
    print("-" * len(hdr))
    for model_id in models:
        rows = [(model_id if b == "torch" else f"{model_id}@{b}", model_id) for b in backends]
        for key, label in rows + [(model_id + "+plain", "  same backbone, Conv3d head")]:
            r = results.get(key)
            if r is None:
                continue
            if "error" in r:
                print(f"{label:<28} failed: {r['error']} {r.get('stderr', '')}")
                continue
            w = r["window_s"]
            conv = f"{r['convert_s']:>11.0f}" if "convert_s" in r else f"{'':>11}"
            print(f"{label:<28}{r['backend'] + ' ' + r['precision']:<16}{r['params'] / 1e6:>10.2f}{r['out_channels']:>8}"
                  f"{_med(w):>10.2f}{f'{min(w):.2f}-{max(w):.2f}':>14}{r['peak_rss_mib']:>14.0f}{conv}")

    uni = [m for m in models if m in UNIVERSAL and "error" not in results[m]
           and "error" not in results.get(m + "+plain", {"error": 1})]
    if uni:
        print(f"\nSuPreM universal head vs a plain Conv3d(F, {PLAIN_CLASSES}, 1) head, same backbone, 32 classes\n")
        hdr = (f"{'model':<20}{'window univ s':>14}{'window plain s':>15}{'ratio':>7}{'head univ s':>13}"
               f"{'head plain s':>13}{'head extra s':>13}{'extra/window':>13}{'head params':>13}")
        print(hdr)
        print("-" * len(hdr))
        for m in uni:
            u, p = results[m], results[m + "+plain"]
            wu, wp = _med(u["window_s"]), _med(p["window_s"])
            hu, hp = _med(u["universal_head_s"]), _med(u["plain_head_s"])
            print(f"{m:<20}{wu:>14.2f}{wp:>15.2f}{wu / wp:>7.2f}{hu:>13.3f}{hp:>13.3f}{hu - hp:>13.3f}"
                  f"{100 * (hu - hp) / wu:>12.1f}%{u['head_params'] / 1e3:>12.0f}k")
        print("window: whole forward (separate processes); head: both heads on one cached backbone output, "
              "interleaved in one process; extra/window = (head univ - head plain) / window univ")
    return results


def pipeline_tables(windows: dict, models, threads: int, modes, backends=("torch",)) -> None:
    # here: the parent needs these only for the pipeline tables, after the measured children have run
    from monai.networks.nets import SegResNet

    from AtlasSegLib.card import builtin_card
    from AtlasSegLib.inference import count_windows
    from AtlasSegLib.io import read_image
    from AtlasSegLib.pipeline import prepare, resolve_quality
    from bench_pipeline import make_input
    from testdata import ct_data_dir

    src = ct_data_dir() / "totalseg_abdomen_sm" / "example_ct_sm.nii.gz"
    work = Path(tempfile.mkdtemp(prefix="atlasseg-bench-models-"))
    big = work / "ct_512.nii.gz"
    make_input(src, (512, 512, 300), (0.8, 0.8, 1.5), big)
    card = builtin_card("suprem-segresnet")
    torch.manual_seed(0)
    net = SegResNet(**card.architecture["kwargs"])
    weights = work / "segresnet.pth"
    torch.save({"net": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 0}, weights)

    # Windows per model and mode on this input (the model grid after orientation, resampling, foreground crop).
    image, _ = read_image(big)
    grids = {}
    plan = []
    use_presets = "full" not in modes  # else the older full/fast modes at the card's settings
    presets = list(PRESETS) if use_presets else ["full", "fast"]
    for model_id in models:
        c = builtin_card(model_id)
        for mode in presets:
            q = resolve_quality(mode if use_presets else None, c, fast=mode == "fast")
            fast, body = q.fast, use_presets and mode != "reference"
            pre = c.preprocessing
            spacing = tuple(pre["fast_spacing_mm"] if fast and pre.get("fast_spacing_mm") else pre["spacing_mm"])
            if (spacing, body) not in grids:
                grids[spacing, body] = prepare(image, c, fast=fast, body_crop=body).array.shape
            shape = grids[spacing, body]
            n = count_windows(shape, c.inference["roi_size"], q.overlap)
            for backend in backends:
                if use_presets and (backend == "int8") != (q.precision == "int8"):
                    continue  # a preset's row in the precision it uses: reference fp32, balanced/fast INT8
                w = windows.get(model_id if backend == "torch" else f"{model_id}@{backend}", {})
                est = n * _med(w["window_s"]) if "window_s" in w else None
                label = f"{w['backend']} {w['precision']}" if "backend" in w else backend
                plan.append((model_id, mode, spacing, shape, n, est, backend, label))
    del image

    measured = {}
    for mode in modes:
        for backend in backends:
            if use_presets and (backend == "int8") != (mode != "reference"):
                continue
            preset = ["--quality", mode] if use_presets else (["--fast"] if mode == "fast" else [])
            measured[mode, backend] = run_child(
                ["--child", "suprem-segresnet", "--pipeline-run", "--input", str(big), "--weights", str(weights),
                 "--out", str(work / f"out_{mode}_{backend}"), "--backend", backend] + preset, threads)
            print(f"  pipeline suprem-segresnet {mode} {backend} done", file=sys.stderr, flush=True)

    print(f"\nFull pipeline on a real CT resampled to 512x512x300 (0.8x0.8x1.5 mm), CPU, torch threads {threads}, "
          f"modes {', '.join(presets)} (presets: see the docstring)\n")
    hdr = (f"{'model':<26}{'backend':<16}{'mode':<9}{'spacing':>6}{'model grid':>16}{'windows':>9}{'network s':>11}"
           f"{'total s':>10}{'peak RSS MiB':>14}  source")
    print(hdr)
    print("-" * len(hdr))
    for model_id, mode, spacing, shape, n, est, backend, label in plan:
        grid = "x".join(map(str, shape))
        r = measured.get((mode, backend)) if model_id == "suprem-segresnet" else None
        if r is not None and "error" not in r:
            note = (f"; INT8 check min Dice {r['int8_check_min_dice']}" if r.get("int8_check_min_dice") is not None
                    else "")
            print(f"{model_id:<26}{r['backend']:<16}{mode:<9}{spacing[0]:>6.1f}{grid:>16}{n:>9}{r['inference']:>11.0f}"
                  f"{r['total']:>10.0f}{r['peak_rss_mib']:>14.0f}  measured end to end{note}")
        elif r is not None:
            print(f"{model_id:<26}{backend:<16}{mode:<9} failed: {r['error']} {r.get('stderr', '')}")
        else:
            e = f"{est:>11.0f}" if est is not None else f"{'?':>11}"
            print(f"{model_id:<26}{label:<16}{mode:<9}{spacing[0]:>6.1f}{grid:>16}{n:>9}{e}{'':>10}{'':>14}  "
                  "ESTIMATE: windows x one-window time (network only)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed windows after the warm-up (default 3)")
    p.add_argument("--pipeline", action="store_true", help="also run the full pipeline on a 512x512x300 CT")
    p.add_argument("--pipeline-modes", default="full,fast",
                   help="comma-separated: the presets reference, balanced, fast (reference: about an hour for "
                   "SegResNet on 2 cores), or full (1.5 mm) / fast (3 mm) at the card's settings")
    # child-process options
    p.add_argument("--backends", nargs="+", default=["torch", "openvino"], choices=["torch", "openvino", "int8"],
                   help="inference backends to measure (default both; OpenVINO conversions go to a temporary cache)")
    p.add_argument("--no-plain", action="store_true", help="skip the universal vs plain head comparison")
    p.add_argument("--backend", default="torch", help=argparse.SUPPRESS)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--variant", default="universal", choices=["universal", "plain"], help=argparse.SUPPRESS)
    p.add_argument("--pipeline-run", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--fast", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--quality", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        result = child_pipeline(args) if args.pipeline_run else child_window(args)
        print("RESULT " + json.dumps(result), flush=True)
        return
    print(f"atlasseg bench_models: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible; "
          f"load average before start {os.getloadavg()[0]:.1f} (other jobs on the machine make timings noisy)",
          flush=True)
    if {"openvino", "int8"} & set(args.backends) and "ATLASSEG_HOME" not in os.environ:
        # Conversions of these seeded random weights would otherwise fill the user's cache (1.4 GB for all models).
        os.environ["ATLASSEG_HOME"] = tempfile.mkdtemp(prefix="atlasseg-bench-home-")
    windows = window_tables(args.models, args.threads, args.repeats, tuple(args.backends), plain=not args.no_plain)
    if args.pipeline:
        modes = [m.strip() for m in args.pipeline_modes.split(",") if m.strip()]
        bad = [m for m in modes if m not in ("full", "fast") + PRESETS]
        if bad:
            p.error(f"--pipeline-modes: unknown mode(s) {bad}; use reference, balanced, fast (presets) or full")
        pipeline_tables(windows, args.models, args.threads, modes, tuple(args.backends))


if __name__ == "__main__":
    main()
