"""inference.sliding_window is MONAI's sliding_window_inference with a cheaper blend (one fused multiply-add per
window instead of ``p *= w`` then ``out[region] += p``): the same windows in the same order, the same padding,
weights, count map and division. The fused add rounds once where MONAI rounds twice (this CPU's addcmul uses FMA:
not bit-exact), so the gaussian blend is held to that rounding bound, the constant blend (weight 1: the product is
exact) to equality, and on the real CT and a tumor phantom with the demo model every mask and every stored
probability level (uint8, as the pipeline writes them) must be MONAI's."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference

from AtlasSegLib.backends import Runner
from AtlasSegLib.card import builtin_card
from AtlasSegLib.inference import (BLEND_ROUNDING, SKIPPED_LOGIT, count_windows, cover_crop, infer,
                                  sliding_window)
from AtlasSegLib.networks import load_model
from AtlasSegLib.phantom import make_phantom
from AtlasSegLib.pipeline import prepare
from AtlasSegLib.postprocess import quantize
from AtlasSegLib.progress import Cancelled, Reporter

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
    a = sliding_window(x, roi, batch, ours, overlap=overlap, mode=mode, sw_device=CPU, device=CPU)
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
def test_constant_blend_is_monais_exactly_windows_padding_and_all(shape, roi, overlap, batch):
    x = torch.rand((1, 1) + shape)
    a, b, ours, theirs = _both(x, roi, batch, overlap, "constant")
    assert ours == theirs  # the same windows, batched the same way, in the same order
    assert a.shape == b.shape == (1, 3) + shape
    assert torch.equal(a, b)  # weight 1: the fused product is exact, so every other step must be MONAI's


@pytest.mark.parametrize("shape,roi,overlap,batch", CASES)
def test_gaussian_blend_is_monais_up_to_one_rounding_per_window(shape, roi, overlap, batch):
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
    assert torch.allclose(got[(slice(None),) + inside], ref, rtol=0, atol=9 * BLEND_ROUNDING * float(ref.abs().max()))
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


def test_a_blend_mode_it_does_not_weigh_goes_to_monai():
    arr = np.zeros((30, 30, 30), np.float32)
    # MONAI's own refusal (its RuntimeError around look_up_option's ValueError, which lists the modes it has)
    with pytest.raises(RuntimeError, match="mode=triangle") as err:
        infer(SeededRunner(1, INFERENCE["roi_size"]), arr, dict(INFERENCE, mode="triangle"), device=CPU,
              reporter=Reporter())
    assert "gaussian" in str(err.value.__cause__)


@pytest.fixture(scope="module")
def demo_model():
    return load_model(builtin_card("atlasseg-demo"))


def _recorded_network(net):
    """The demo network run once per window (inside MONAI's pass); ``replay`` gives the same logits to ours."""
    seen = {}

    def record(x, coords):
        y = net(x).float()
        for k, p in zip(_key(coords), y):
            seen[k] = p.clone()
        return y

    def replay(x, coords):
        return torch.stack([seen[k] for k in _key(coords)])

    return record, replay, seen


@pytest.mark.parametrize("case", ["real_ct", "phantom"])
def test_masks_and_stored_probability_levels_are_monais_on_real_ct_and_phantom(demo_model, small_ct, case):
    image = sitk.ReadImage(str(small_ct)) if case == "real_ct" else make_phantom(7, tumors=True).image
    card = demo_model.card
    inf = card.inference
    arr = prepare(image, card).array  # the real CT: 36 slices, shorter than the 80³ window (padded)
    x = torch.from_numpy(arr)[None, None]
    record, replay, seen = _recorded_network(demo_model.net)
    with torch.inference_mode():
        theirs = sliding_window_inference(x, inf["roi_size"], inf["sw_batch_size"], record, overlap=inf["overlap"],
                                          mode=inf["mode"], with_coord=True)[0]
        ours = infer(Replay(replay), arr, inf, device=CPU, reporter=Reporter())
    assert ours.shape == theirs.shape
    n = _coverage(arr.shape, inf["roi_size"], [list(seen)])
    diff = float((ours - theirs).abs().max())
    assert diff <= (n + 1) * BLEND_ROUNDING * float(theirs.abs().max())
    pa, pb = torch.sigmoid(theirs).numpy(), torch.sigmoid(ours).numpy()
    for c in range(pa.shape[0]):
        assert np.array_equal(pa[c] >= inf["threshold"], pb[c] >= inf["threshold"]), f"channel {c} mask"
        assert np.array_equal(quantize(pa[c]), quantize(pb[c])), f"channel {c} stored probability levels"


class Replay(Runner):
    def __init__(self, fn):
        self.fn = fn

    def predict(self, x, coords):
        return self.fn(x, coords)
