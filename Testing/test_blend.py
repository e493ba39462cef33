"""``inference.infer`` blends windows exactly as MONAI's ``sliding_window_inference`` does (it calls it): the
same logits, bit for bit, on odd grids, grids shorter than the window (padded), window batches, and over the
cover_crop of a box; progress per window and cancel still work. And the candidate cheaper blend of
Testing/bench/bench_blend.py (``fused_sliding_window``: one addcmul per window) places, pads, counts and divides
as MONAI does (equal with the constant blend, where the weight is 1 and the fused product exact) and stays within
its documented rounding bound with the gaussian one (addcmul rounds once where MONAI rounds twice), so the
benchmark's comparison is of the blend alone."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from AtlasSegLib.backends import Runner
from AtlasSegLib.inference import SKIPPED_LOGIT, count_windows, cover_crop, infer
from AtlasSegLib.progress import Cancelled, Reporter
from bench.bench_blend import BLEND_ROUNDING, fused_sliding_window

CPU = torch.device("cpu")


def _key(coords) -> list:
    return [tuple((s.start, s.stop) for s in c[2:]) for c in coords]


class SeededWindows:
    """Predictor whose logits depend only on the window's position (so two blends see the same windows) and on the
    window's data (so padding and cropping mistakes show); records every call's coordinates."""

    def __init__(self, channels: int, roi, scale: float = 8.0):
        self.channels, self.roi, self.scale = channels, tuple(roi), scale
        self.calls = []

    def __call__(self, x, coords):
        self.calls.append(_key(coords))
        out = []
        for k, w in zip(_key(coords), x):
            g = torch.Generator().manual_seed(hash(k) % 2**31)
            out.append(torch.randn((self.channels,) + self.roi, generator=g) * self.scale + w)
        return torch.stack(out)  # a new tensor per call: MONAI multiplies it in place


def _coverage(shape, roi, calls) -> int:
    """Most windows over one voxel (after MONAI's padding of short axes)."""
    n = np.zeros([max(s, r) for s, r in zip(shape, roi)], np.int32)
    for batch in calls:
        for k in batch:
            n[tuple(slice(a, b) for a, b in k)] += 1
    return int(n.max())


def _both(x, roi, batch, overlap, mode, channels=3):
    ours, theirs = SeededWindows(channels, roi), SeededWindows(channels, roi)
    a = fused_sliding_window(x, roi, batch, ours, overlap=overlap, mode=mode)
    b = sliding_window_inference(x, roi, batch, theirs, overlap=overlap, mode=mode, with_coord=True)
    return a, b, ours.calls, theirs.calls


CASES = [  # shape, roi, overlap, batch: odd sizes, axes shorter than the window (padded), an axis exactly one window
    ((45, 37, 70), (32, 32, 32), 0.5, 1),
    ((20, 50, 31), (32, 32, 32), 0.75, 3),
    ((32, 33, 10), (32, 16, 24), 0.25, 2),
    ((10, 12, 14), (16, 16, 16), 0.5, 1),
    ((61, 40, 29), (24, 24, 24), 0.625, 4),
]


@pytest.mark.parametrize("shape,roi,overlap,batch", CASES)
def test_fused_candidate_constant_blend_is_monais_exactly(shape, roi, overlap, batch):
    x = torch.rand((1, 1) + shape)
    a, b, ours, theirs = _both(x, roi, batch, overlap, "constant")
    assert ours == theirs  # the same windows, batched the same way, in the same order
    assert a.shape == b.shape == (1, 3) + shape
    assert torch.equal(a, b)  # weight 1: the fused product is exact, so every other step must be MONAI's


@pytest.mark.parametrize("shape,roi,overlap,batch", CASES)
def test_fused_candidate_gaussian_blend_is_monais_up_to_one_rounding_per_window(shape, roi, overlap, batch):
    x = torch.rand((1, 1) + shape)
    a, b, ours, theirs = _both(x, roi, batch, overlap, "gaussian")
    assert ours == theirs
    assert a.shape == b.shape
    n = _coverage(shape, roi, theirs)
    bound = (n + 1) * BLEND_ROUNDING * float(b.abs().max())
    diff = float((a - b).abs().max())
    assert diff <= bound, f"{diff} > {bound} ({n} windows over a voxel)"
    if n == 1:
        assert torch.equal(a, b)  # one window per voxel: 0 + p·w rounds once either way


class SeededRunner(Runner):
    """A Runner on the predictor contract ``predict(x, coords)`` (as the label network of bench_quick uses it)."""

    def __init__(self, channels, roi):
        self.windows = SeededWindows(channels, roi)

    def predict(self, x, coords):
        return self.windows(x, coords)


INFERENCE = {"roi_size": [24, 24, 24], "overlap": 0.5, "mode": "gaussian", "sw_batch_size": 2}


@pytest.mark.parametrize("shape,roi,overlap,batch", CASES)
def test_infer_gives_monais_logits_bit_for_bit(shape, roi, overlap, batch):
    arr = np.random.default_rng(5).random(shape, dtype=np.float32)
    inf = {"roi_size": list(roi), "overlap": overlap, "mode": "gaussian", "sw_batch_size": batch}
    runner = SeededRunner(3, roi)
    got = infer(runner, arr, inf, device=CPU, reporter=Reporter())
    theirs = SeededWindows(3, roi)
    ref = sliding_window_inference(torch.from_numpy(arr)[None, None], roi, batch, theirs, overlap=overlap,
                                   mode="gaussian", with_coord=True)[0]
    assert runner.windows.calls == theirs.calls
    assert got.shape == (3,) + shape and torch.equal(got, ref)


def test_infer_box_path_is_monai_over_the_crop_and_skipped_outside():
    rng = np.random.default_rng(3)
    arr = rng.random((70, 53, 41), dtype=np.float32)
    box = ((30, 41), (5, 12), (20, 30))
    stats = {}
    got = infer(SeededRunner(2, INFERENCE["roi_size"]), arr, INFERENCE, device=CPU, reporter=Reporter(), box=box,
                stats=stats)
    crop = cover_crop(arr.shape, INFERENCE["roi_size"], INFERENCE["overlap"], box)
    inside = tuple(slice(a, b) for a, b in crop)
    sub = torch.from_numpy(np.ascontiguousarray(arr[inside]))[None, None]
    ref = sliding_window_inference(sub, INFERENCE["roi_size"], 2, SeededWindows(2, INFERENCE["roi_size"]),
                                   overlap=0.5, mode="gaussian", with_coord=True)[0]
    assert got.shape == (2,) + arr.shape
    assert torch.equal(got[(slice(None),) + inside], ref)
    outside = torch.ones(arr.shape, dtype=torch.bool)
    outside[inside] = False
    assert bool((got[:, outside] == SKIPPED_LOGIT).all())
    assert stats["crop_ijk"] == [list(c) for c in crop] and stats["windows_run"] < stats["windows"]


def test_infer_reports_every_window_and_stops_when_cancelled():
    arr = np.random.default_rng(4).random((50, 40, 30), dtype=np.float32)
    seen = []
    infer(SeededRunner(1, INFERENCE["roi_size"]), arr, INFERENCE, device=CPU,
          reporter=Reporter(progress=lambda stage, f, msg: seen.append(msg)))
    windows = [m for m in seen if m.startswith("window ")]
    assert windows[-1] == "window 24/24" and len(windows) == 12  # 4 × 3 × 2 windows, two per batch
    assert count_windows(arr.shape, INFERENCE["roi_size"], INFERENCE["overlap"]) == 24
    calls = []
    with pytest.raises(Cancelled):
        infer(SeededRunner(1, INFERENCE["roi_size"]), arr, INFERENCE, device=CPU,
              reporter=Reporter(cancel=lambda: calls.append(1) or len(calls) > 3))
