"""Train the AtlasSeg demo model (``atlasseg-demo``) on synthetic abdominal CT phantoms.

Reproducible and CPU-only: the phantoms come from fixed seeds (``AtlasSegLib.phantom``), torch and numpy are
seeded, torch uses 2 threads and deterministic algorithms, so the same torch/MONAI versions regenerate the
same weights (other thread counts or CPUs may differ in the last float bits).

The network input is prepared exactly as the AtlasSeg engine prepares it for the card
``AtlasSegLib/cards/atlasseg-demo.json``: reorient to the closest RAS axes, linear resampling (nearest-
neighbour extrapolation at the rim) to the card's isotropic spacing keeping voxel 0's centre with
round((n - 1) * old / new) + 1 voxels per axis, clip to the HU window, scale to [0, 1], crop to the voxels
> 0, and hand the (i, j, k) array to MONAI's sliding-window inference. Labels go through the same grid with
nearest-neighbour interpolation.

The model is a multi-label sigmoid network with 8 output channels (see ``CHANNELS``), trained with
Dice + BCE on random crops of the window size; no flips, since left and right kidney differ only by side.
At the end it prints the per-structure Dice on phantoms it never saw, both on the model grid and after
nearest-neighbour resampling back to the phantom's grid.

Usage:
    .venv/bin/python Testing/tools/train_demo_model.py --out AtlasSegLib/data/atlasseg-demo.pt

Runtime: about 17 minutes on 2 idle CPU cores (1 minute of phantoms, 1400 steps at about 0.65 s, under a
minute of evaluation); the committed weights took 52 minutes because the 2 cores were shared with other jobs.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceLoss
from monai.networks.nets import UNet

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from AtlasSegLib.phantom import make_phantom  # noqa: E402

CARD_PATH = Path(__file__).resolve().parents[2] / "AtlasSegLib" / "cards" / "atlasseg-demo.json"
CHANNELS = ("liver", "spleen", "kidney_right", "kidney_left", "pancreas", "aorta", "vertebrae", "liver_tumor")
EVAL_SEEDS = (1000, 1001, 1002, 1003, 1004)


def load_card() -> dict:
    """The demo card: network, preprocessing and inference settings all come from it."""
    return json.loads(CARD_PATH.read_text())


def build_net(card: dict) -> torch.nn.Module:
    arch = card["architecture"]
    if arch["name"] != "UNet":
        raise SystemExit(f"this script trains a MONAI UNet, the card asks for {arch['name']}")
    return UNet(**arch["kwargs"])


def phantom_geometry(seed: int) -> dict:
    """Grid of training phantom ``seed``: mostly the default grid, every few a different spacing, field of
    view, flipped or oblique axes, so the model sees the interpolation and cropping other scans give."""
    variant = seed % 8
    if variant == 5:
        return {"size": (256, 214, 80), "spacing_mm": (1.5, 1.5, 3.0)}
    if variant == 6:  # stored RAS (flipped x/y) with a field of view that cuts into the body
        return {"size": (170, 140, 88), "spacing_mm": (2.0, 2.0, 2.5), "direction": (-1, 0, 0, 0, -1, 0, 0, 0, 1)}
    if variant == 7:  # oblique: rotated about z and slightly about x
        az, ax = np.radians(8.0 if seed % 16 == 7 else -8.0), np.radians(5.0)
        rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
        rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
        return {"size": (160, 136, 100), "spacing_mm": (2.4, 2.4, 2.4), "direction": tuple((rz @ rx).ravel())}
    return {}


def model_grid(image: sitk.Image, spacing) -> sitk.Image:
    """An empty image on the model grid of ``image``: closest RAS axes, ``spacing``, voxel 0 kept."""
    ras = sitk.DICOMOrient(image, "RAS")
    size = [int(round((n - 1) * old / new)) + 1 for n, old, new in zip(ras.GetSize(), ras.GetSpacing(), spacing)]
    ref = sitk.Image(size, sitk.sitkUInt8)
    ref.SetOrigin(ras.GetOrigin())
    ref.SetDirection(ras.GetDirection())
    ref.SetSpacing(tuple(float(s) for s in spacing))
    return ref


def resample(image: sitk.Image, ref: sitk.Image, interpolator, pixel_type) -> sitk.Image:
    f = sitk.ResampleImageFilter()
    f.SetReferenceImage(ref)
    f.SetInterpolator(interpolator)
    f.SetOutputPixelType(pixel_type)
    f.SetDefaultPixelValue(0)
    # The last model voxel may lie up to half a voxel past the scan: repeat the border as MONAI does.
    f.SetUseNearestNeighborExtrapolator(True)
    return f.Execute(image)


def prepare(image: sitk.Image, labels: dict, card: dict):
    """The engine's preprocessing for image and labels.

    Returns:
        (x, y, ref, start): x the (I, J, K) float32 network input, y the (C, I, J, K) uint8 targets (both
        cropped to the foreground), ref the uncropped model grid, start the crop's (i, j, k) offset.
    """
    pre = card["preprocessing"]
    ref = model_grid(image, pre["spacing_mm"])
    arr = sitk.GetArrayFromImage(resample(image, ref, sitk.sitkLinear, sitk.sitkFloat32)).transpose(2, 1, 0)
    lo, hi = pre["hu_window"]
    a, b = pre["scale"]
    arr = (np.clip(arr, lo, hi) - lo) * ((b - a) / (hi - lo)) + a
    fg = arr > 0
    box = []
    for axis in range(3):
        nz = np.nonzero(fg.any(axis=tuple(x for x in range(3) if x != axis)))[0]
        box.append(slice(int(nz[0]), int(nz[-1]) + 1))
    box = tuple(box)
    y = np.zeros((len(CHANNELS),) + arr[box].shape, np.uint8)
    for c, name in enumerate(CHANNELS):
        if name in labels:
            lab = resample(labels[name], ref, sitk.sitkNearestNeighbor, sitk.sitkUInt8)
            y[c] = sitk.GetArrayFromImage(lab).transpose(2, 1, 0)[box]
    return np.ascontiguousarray(arr[box], np.float32), y, ref, tuple(s.start for s in box)


def training_case(seed: int):
    """Phantom ``seed`` (tumors on even seeds) on its grid, prepared for the network."""
    ph = make_phantom(seed, tumors=seed % 2 == 0, **phantom_geometry(seed))
    x, y, _, _ = prepare(ph.image, ph.labels, load_card())
    return x, y


def random_crop(rng, x: np.ndarray, y: np.ndarray, roi):
    """A random ``roi`` window; volumes smaller than it are zero-padded as sliding-window inference pads."""
    pad = [(0, max(r - n, 0)) for n, r in zip(x.shape, roi)]
    if any(p[1] for p in pad):
        x = np.pad(x, pad)
        y = np.pad(y, [(0, 0)] + pad)
    start = [int(rng.integers(0, n - r + 1)) for n, r in zip(x.shape, roi)]
    box = tuple(slice(s, s + r) for s, r in zip(start, roi))
    return x[box], y[(slice(None),) + box]


def train_step(net: torch.nn.Module, opt, x: np.ndarray, y: np.ndarray, dice, bce) -> float:
    """One optimiser step on window ``x`` (I, J, K) with targets ``y`` (C, I, J, K), Dice + BCE; returns the loss."""
    xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))[None, None]
    yt = torch.from_numpy(np.ascontiguousarray(y)).float()[None]
    logits = net(xt)
    loss = dice(logits, yt) + bce(logits, yt)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def train(card: dict, cases: list, steps: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = build_net(card)
    roi = card["inference"]["roi_size"]
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    warmup = 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps)))
    dice = DiceLoss(sigmoid=True, smooth_nr=1e-4, smooth_dr=1e-4)
    bce = torch.nn.BCEWithLogitsLoss()
    net.train()
    t0 = time.perf_counter()
    running = 0.0
    for step in range(steps):
        x, y = random_crop(rng, *cases[rng.integers(len(cases))], roi)
        # Mild contrast/brightness jitter (other scanners, other contrast timing) on top of the phantoms' own.
        x = x * rng.uniform(0.95, 1.05) + rng.uniform(-0.02, 0.02)
        loss = train_step(net, opt, x, y, dice, bce)
        sched.step()
        running = 0.95 * running + 0.05 * loss if step else loss
        if (step + 1) % 25 == 0:
            print(f"step {step + 1:5d}/{steps}  loss {running:.4f}  lr {sched.get_last_lr()[0]:.2e}  "
                  f"{time.perf_counter() - t0:6.0f} s", flush=True)
    return net


def dice_score(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return float("nan") if total == 0 else 2.0 * (a & b).sum() / total


def evaluate(net: torch.nn.Module, card: dict, seeds) -> dict:
    """Per-structure Dice on fresh phantoms: {"model": {name: [..]}, "input": {name: [..]}}."""
    inf = card["inference"]
    net.eval()
    scores = {"model": {n: [] for n in CHANNELS}, "input": {n: [] for n in CHANNELS}}
    for seed in seeds:
        ph = make_phantom(seed, tumors=True)
        x, y, ref, start = prepare(ph.image, ph.labels, card)
        with torch.inference_mode():
            logits = sliding_window_inference(torch.from_numpy(x)[None, None], inf["roi_size"], inf["sw_batch_size"],
                                              net, overlap=inf["overlap"], mode=inf["mode"])[0]
        pred = (torch.sigmoid(logits) >= inf["threshold"]).numpy().astype(np.uint8)
        for c, name in enumerate(CHANNELS):
            scores["model"][name].append(dice_score(pred[c], y[c]))
            full = np.zeros(ref.GetSize(), np.uint8)
            full[tuple(slice(s, s + n) for s, n in zip(start, pred[c].shape))] = pred[c]
            on_model = sitk.GetImageFromArray(full.transpose(2, 1, 0))
            on_model.CopyInformation(ref)
            back = sitk.Resample(on_model, ph.image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
            scores["input"][name].append(dice_score(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(ph.labels[name])))
    return scores


def print_table(scores: dict, seeds) -> None:
    for grid, title in (("model", "model grid"), ("input", "phantom grid (nearest-neighbour back)")):
        print(f"\nDice on fresh phantoms, {title}")
        print(f"{'structure':14s}" + "".join(f"{s:>8d}" for s in seeds) + f"{'mean':>8s}{'min':>8s}")
        for name, values in scores[grid].items():
            v = np.asarray(values, float)
            print(f"{name:14s}" + "".join(f"{s:8.3f}" for s in v) + f"{np.nanmean(v):8.3f}{np.nanmin(v):8.3f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("AtlasSegLib/data/atlasseg-demo.pt"))
    parser.add_argument("--phantoms", type=int, default=32, help="training phantoms (seeds 0..N-1)")
    parser.add_argument("--steps", type=int, default=1400, help="optimiser steps (one window each)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    card = load_card()
    t0 = time.perf_counter()
    # Phantom generation is numpy/SimpleITK work: two processes use both cores; results are per seed.
    with ProcessPoolExecutor(2) as pool:
        cases = list(pool.map(training_case, range(args.phantoms)))
    print(f"{len(cases)} training phantoms in {time.perf_counter() - t0:.0f} s", flush=True)

    net = train(card, cases, args.steps, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), args.out)
    print(f"saved {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) after {time.perf_counter() - t0:.0f} s")

    print_table(evaluate(net, card, EVAL_SEEDS), EVAL_SEEDS)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
