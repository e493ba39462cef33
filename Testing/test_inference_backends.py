"""Inference backends (AtlasSegLib/backends.py): the OpenVINO backend gives the masks torch fp32 gives.

Agreement, stated tolerances:
- masks: Dice ≥ 0.99 per structure against torch fp32 (demo model on a phantom and on the real CT);
- tumor probabilities (stored as uint8 p × 255): within 2/255 for fp32, 0.05 for bf16/fp16;
- SuPreM parity window (logits up to ±6.5): OpenVINO fp32 within 0.05 of the published implementation's logits
  (measured: U-Net 0.014, Swin UNETR 0.007; torch itself is within the oracle's 1e-3, OpenVINO sums in another
  order); 0.1 for bf16/fp16. Slow: a first conversion of these two networks takes minutes on two cores (cached
  in the default AtlasSeg cache afterwards).
Only the precisions this CPU supports are run (OpenVINO's OPTIMIZATION_CAPABILITIES); fp32 always.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from AtlasSegLib import backends
from AtlasSegLib.card import builtin_card, card_from_dict
from AtlasSegLib.cli import main
from AtlasSegLib.errors import InputError
from AtlasSegLib.inference import CONTEXT, GPU_MAX_BATCH, count_windows, cover_crop, gpu_window_batch, window_starts
from AtlasSegLib.io import SourceInfo, read_image
from AtlasSegLib.networks import load_model
from AtlasSegLib.pipeline import SegmentOptions, Segmenter
from AtlasSegLib.phantom import make_phantom
from test_suprem_networks import load_released_layout, parity_error, shared_dir
from testdata import test_cache_dir


def test_gpu_window_batch_fills_free_memory_after_the_blending_buffers():
    gib = 2**30
    # An 80 GB GPU with 70 GiB free, 2 GiB per window, 10 GiB of buffers: (0.8 × 70 - 10) // 2 = 23 -> the cap.
    assert gpu_window_batch(70 * gib, 2 * gib, buffer_bytes=10 * gib) == GPU_MAX_BATCH
    # A 12 GB card with 10 GiB free, 1.5 GiB per window (fp32 SuPreM U-Net class), 2 GiB of buffers: 4 windows.
    assert gpu_window_batch(10 * gib, int(1.5 * gib), buffer_bytes=2 * gib) == 4
    # fp16 halves the window: twice the batch on the same card.
    assert gpu_window_batch(10 * gib, int(0.75 * gib), buffer_bytes=2 * gib) == 8
    # Nothing fits (a nearly full card): still one window; the CUDA out-of-memory fallback handles the rest.
    assert gpu_window_batch(1 * gib, 3 * gib) == 1
    assert gpu_window_batch(10 * gib, 0) == 1


ov = pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install openvino; 'make test' installs it)")

CPU_PRECISIONS = ["fp32"] + [p for p in ("bf16", "fp16") if p.upper() in backends.cpu_capabilities()]
PROB_TOL = {"fp32": 2 / 255, "bf16": 0.05, "fp16": 0.05}
LOGIT_TOL = {"fp32": 0.05, "bf16": 0.1, "fp16": 0.1}


def _dice(a, b) -> float:
    a, b = a > 0, b > 0
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def _run(model, image, source, out: Path, backend: str, precision: str) -> dict:
    opts = SegmentOptions(device="cpu", backend=backend, precision=precision, overview=False)
    return Segmenter(model, opts).run(image, source, out)


def _compare_runs(ref: Path, new: Path, prob_tol: float) -> dict:
    """Dice per structure (masks) and max |Δp| of the tumor probability maps between two output folders."""
    dice = {}
    for f in sorted((ref / "segmentations").glob("*.nii.gz")):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(new / "segmentations" / f.name)))
        dice[f.name[:-7]] = _dice(a, b)
    rep_a = json.loads((ref / "report.json").read_text())
    rep_b = json.loads((new / "report.json").read_text())
    for name, info in rep_a["tumors"].items():
        pa, pb = info.get("probability_file"), rep_b["tumors"][name].get("probability_file")
        if not pa:
            continue
        assert pb, f"{name}: torch wrote a probability map, the other backend none"
        qa = sitk.GetArrayFromImage(sitk.ReadImage(str(ref / pa))).astype(float) / 255
        qb = sitk.GetArrayFromImage(sitk.ReadImage(str(new / pb))).astype(float) / 255
        if qa.shape == qb.shape:
            diff = float(np.abs(qa - qb).max())
            assert diff <= prob_tol, f"{name}: tumor probability differs by {diff:.3f} > {prob_tol:.3f}"
    return dice


@pytest.fixture(scope="module")
def demo_model():
    return load_model(builtin_card("atlasseg-demo"))


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(7, tumors=True)


@pytest.mark.parametrize("precision", CPU_PRECISIONS)
def test_openvino_masks_match_torch_fp32_on_phantom(demo_model, phantom, tmp_path, precision):
    source = SourceInfo(path="phantom(seed=7)", format="phantom")
    ref = _run(demo_model, phantom.image, source, tmp_path / "torch", "torch", "fp32")
    new = _run(demo_model, phantom.image, source, tmp_path / "ov", "openvino", precision)
    assert ref["model"]["backend"] == "torch" and ref["model"]["precision"] == "fp32"
    assert new["model"]["backend"] == "openvino" and new["model"]["precision"] == precision
    dice = _compare_runs(tmp_path / "torch", tmp_path / "ov", PROB_TOL[precision])
    assert len(dice) == 8
    assert sum(1 for n in dice if (tmp_path / "torch" / "segmentations" / f"{n}.nii.gz").stat().st_size) == 8
    low = {n: d for n, d in dice.items() if d < 0.99}
    assert not low, f"Dice < 0.99 against torch fp32: {low}"


@pytest.mark.parametrize("precision", CPU_PRECISIONS)
def test_openvino_masks_match_torch_fp32_on_real_ct(demo_model, small_ct, tmp_path, precision):
    image, source = read_image(str(small_ct))
    _run(demo_model, image, source, tmp_path / "torch", "torch", "fp32")
    _run(demo_model, image, source, tmp_path / "ov", "openvino", precision)
    dice = _compare_runs(tmp_path / "torch", tmp_path / "ov", PROB_TOL[precision])
    nonempty = [n for n in dice if sitk.GetArrayViewFromImage(
        sitk.ReadImage(str(tmp_path / "torch" / "segmentations" / f"{n}.nii.gz"))).any()]
    assert len(nonempty) >= 4, "the demo model should find several structures on the real abdomen"
    low = {n: d for n, d in dice.items() if d < 0.99}
    assert not low, f"Dice < 0.99 against torch fp32: {low}"


def test_auto_backend_on_cpu_is_openvino_with_precision_from_cpu_capabilities():
    choice = backends.choose("auto", "auto", torch.device("cpu"))
    assert choice.backend == "openvino"
    assert choice.precision == ("bf16" if "BF16" in backends.cpu_capabilities() else "fp32")


def test_backend_choice_refuses_what_cannot_run():
    with pytest.raises(InputError, match="CPU only"):
        backends.choose("openvino", "auto", torch.device("cuda"))
    with pytest.raises(InputError, match="fp16 on the CPU"):
        backends.choose("torch", "fp16", torch.device("cpu"))
    with pytest.raises(InputError, match="--backend must be"):
        backends.choose("onnx", "auto", torch.device("cpu"))
    assert backends.choose("auto", "auto", torch.device("cuda")) == backends.Choice("torch", "fp16")
    missing = [p for p in ("bf16", "fp16") if p.upper() not in backends.cpu_capabilities()]
    for p in missing:
        with pytest.raises(InputError, match="no .* support"):
            backends.choose("openvino", p, torch.device("cpu"))


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


class _Noisy(_Tiny):
    """Converts fine, but its output is not a function of its input: the conversion check must catch it."""

    def forward(self, x):
        return self.conv(x) + torch.rand_like(x)


def test_conversion_is_cached_by_weights_and_not_repeated(tmp_path, monkeypatch):
    monkeypatch.setenv("ATLASSEG_HOME", str(tmp_path / "home"))
    torch.manual_seed(0)
    net = _Tiny().eval()
    xml, check = backends.converted(net, (16, 16, 16))
    assert check["ok"] and check["max_abs_diff"] <= 1e-4
    assert xml.parent.parent == tmp_path / "home" / "openvino"
    stamp = xml.stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(backends, "_convert", lambda *a: calls.append(a))
    xml2, _ = backends.converted(net, (16, 16, 16))
    assert xml2 == xml and xml.stat().st_mtime_ns == stamp and not calls
    # Other weights: another cache entry. No temporary folders left behind.
    with torch.no_grad():
        net.conv.weight.add_(1.0)
    assert backends.weights_key(net, (16, 16, 16)) != xml.parent.name
    assert [p.name for p in (tmp_path / "home" / "openvino").iterdir() if p.name.startswith(".")] == []


def test_network_failing_the_conversion_check_runs_with_torch_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("ATLASSEG_HOME", str(tmp_path / "home"))
    runner = backends.make_runner(_Noisy().eval(), (16, 16, 16), torch.device("cpu"), "openvino", "auto")
    assert isinstance(runner, backends.TorchRunner)
    assert runner.info()["backend"] == "torch"
    assert "differ from torch" in runner.info()["backend_note"]
    # The failed check is remembered: the next run does not convert again.
    entry = next((tmp_path / "home" / "openvino").iterdir())
    assert json.loads((entry / "check.json").read_text())["ok"] is False


@pytest.mark.skipif("BF16" not in backends.cpu_capabilities(),
                    reason="this CPU has no bf16: OpenVINO runs a bf16 hint in fp32, nothing to check")
def test_bf16_that_misses_its_bound_runs_fp32_and_says_why(tmp_path, monkeypatch):
    """auto picks bf16 on CPUs that have it; a network whose bf16 logits leave the fp32 ones (SuPreM's Swin UNETR:
    40 on logits of 12) must run fp32, and say so. The check is real: a bound no bf16 run can meet."""
    monkeypatch.setenv("ATLASSEG_HOME", str(tmp_path / "home"))
    torch.manual_seed(1)
    net = _Tiny().eval()
    cpu = torch.device("cpu")
    passing = backends.make_runner(net, (16, 16, 16), cpu, "openvino", "bf16")
    assert passing.precision == "bf16" and not passing.note
    record = next(p for p in (tmp_path / "home" / "openvino").iterdir() if not p.name.startswith("compiled"))
    assert json.loads((record / "check-bf16.json").read_text())["ok"] is True
    monkeypatch.setattr(backends, "LOWP_RTOL", 1e-9)  # a changed bound checks again instead of reusing the record
    strict = backends.make_runner(net, (16, 16, 16), cpu, "auto", "auto")
    assert isinstance(strict, backends.OpenVINORunner) and strict.precision == "fp32"
    assert "bf16 logits differ from fp32" in strict.info()["backend_note"]
    assert json.loads((record / "check-bf16.json").read_text())["ok"] is False


def test_openvino_runner_matches_torch_on_a_batch_of_two_windows(tmp_path, monkeypatch):
    monkeypatch.setenv("ATLASSEG_HOME", str(tmp_path / "home"))
    torch.manual_seed(1)
    net = _Tiny().eval()
    runner = backends.make_runner(net, (16, 16, 16), torch.device("cpu"), "openvino", "fp32")
    assert isinstance(runner, backends.OpenVINORunner)
    x = torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        ref = net(x)
    for batch in (x, x[:1]):  # MONAI's last window batch may be smaller than sw_batch_size
        got = runner(batch)
        assert got.shape == ref[: len(batch)].shape
        assert float((got - ref[: len(batch)]).abs().max()) <= 1e-4


def test_openvino_outputs_are_the_callers_and_survive_the_next_window(tmp_path, monkeypatch):
    # The runner hands OpenVINO's own output copy to MONAI without copying it again; MONAI scales it in place
    # and the INT8 check keeps several windows' outputs: each must be a writable array no later call reuses.
    monkeypatch.setenv("ATLASSEG_HOME", str(tmp_path / "home"))
    torch.manual_seed(1)
    net = _Tiny().eval()
    runner = backends.make_runner(net, (16, 16, 16), torch.device("cpu"), "openvino", "fp32")
    x1, x2 = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    first = runner(x1)
    kept = first.clone()
    second = runner(x2)
    assert first.dtype == torch.float32 and first.numpy().flags.writeable
    assert torch.equal(first, kept), "the next window overwrote the previous window's output"
    assert not np.shares_memory(first.numpy(), second.numpy())
    first *= 2.0  # in place, as MONAI's blending does: must not touch what OpenVINO returns next
    assert torch.equal(runner(x2), second)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["unet", "swinunetr"])
def test_suprem_parity_window_logits_with_openvino(arch, parity_checkpoints, monkeypatch):
    """The converted SuPreM U-Net / Swin UNETR give the published implementation's logits on the parity window.

    A first conversion of these networks takes minutes on two cores, so the parity weights (the session fixture
    ``parity_checkpoints``, shared with test_suprem_networks) and their conversion are kept in the test cache
    ($ATLASSEG_TEST_CACHE, else ~/.cache/atlasseg-test; not pytest's cache, which CI's -p no:cacheprovider
    disables), not the session's fresh AtlasSeg cache: later runs load the converted model, whose conversion check
    (recorded in check.json) passed, and still compare its logits with the published ones. The conversion's key
    (backends.weights_key) holds the weights, OpenVINO, torch and ``backends.CONVERSION_FORMAT``, so a change of
    any reconverts."""
    keep = test_cache_dir() / "openvino-parity"
    monkeypatch.setattr(backends, "ov_cache_dir", lambda: keep / "openvino")
    path = parity_checkpoints[arch]
    net = load_released_layout(arch, path)
    x = np.load(shared_dir() / "docs" / "suprem_parity" / "input_96.npy")
    for precision in CPU_PRECISIONS:
        runner = backends.make_runner(net, (96, 96, 96), torch.device("cpu"), "openvino", precision)
        assert isinstance(runner, backends.OpenVINORunner), runner.info()
        if runner.precision != precision:
            # Only a low precision that failed its check against fp32 may be replaced, and it must say so
            # (measured: the Swin UNETR's bf16 logits are off by ~20 on this window on an AVX-512 BF16 CPU).
            assert runner.precision == "fp32" and "differ from fp32" in (runner.note or ""), runner.info()
        logits = runner(torch.from_numpy(x)[None, None].float())[0].numpy()
        err = parity_error(arch, logits)
        assert err <= LOGIT_TOL[runner.precision], f"{arch} OpenVINO {runner.precision}: max abs error {err:.3g}"


def test_structure_subset_cascade_runs_fewer_windows_and_gives_the_full_runs_mask(demo_model, phantom, tmp_path):
    """--structures spleen: a coarse pass (5 mm) finds the spleen's box, the full model runs only the fewest
    windows of the full run's placement that cover it (plus a margin); the spleen mask agrees with the full run's
    (Dice ≥ 0.99: the blend near the crop's faces lacks the windows outside it)."""
    raw = json.loads(json.dumps(demo_model.card.raw))
    raw["preprocessing"]["fast_spacing_mm"] = [5.0, 5.0, 5.0]
    raw["inference"]["roi_size"] = [48, 48, 48]  # more, smaller windows than the card's 80³: a box can skip some
    model = type(demo_model)(demo_model.net, card_from_dict(raw), None)
    source = SourceInfo(path="phantom(seed=7)", format="phantom")
    full = Segmenter(model, SegmentOptions(device="cpu", backend="torch", overview=False)).run(
        phantom.image, source, tmp_path / "full")
    sub = Segmenter(model, SegmentOptions(device="cpu", backend="torch", structures=("spleen",), overview=False)).run(
        phantom.image, source, tmp_path / "sub")
    w = sub["settings"]["windows"]
    assert w["roi_box_ijk"] is not None and w["coarse_windows"] >= 1
    assert w["windows_run"] < w["windows"] == full["settings"]["windows"]["windows_run"], w
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "full" / "segmentations" / "spleen.nii.gz")))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "sub" / "segmentations" / "spleen.nii.gz")))
    assert a.sum() > 1000
    d = _dice(a, b)
    print(f"spleen Dice subset vs full run {d:.5f}, {int((a != b).sum())} voxels differ; windows {w}")
    assert d >= 0.999  # measured identical (0 voxels differ) with a quarter-window context
    assert [e["name"] for e in sub["structures"]] == ["spleen"]


def test_cover_crop_places_a_subset_of_the_full_runs_windows_covering_the_box():
    """MONAI's placement over the crop is exactly the full run's windows inside it, and they cover the box grown
    by the context on every side (clipped to the image)."""
    shape, roi, overlap = (269, 257, 60), (96, 96, 96), 0.75
    for box in ([(87, 240), (63, 238), (0, 60)], [(0, 5), (250, 257), (10, 20)], [(120, 121), (100, 160), (0, 1)]):
        crop = cover_crop(shape, roi, overlap, box)
        n = 1
        for (c0, c1), size, r, (a, b) in zip(crop, shape, roi, box):
            inside = [c0 + s for s in window_starts(c1 - c0, r, overlap)]
            full = window_starts(size, r, overlap)
            assert set(inside) <= set(full) or c1 - c0 == size <= r
            e = int(round(CONTEXT * r))
            assert c0 <= max(0, a - e) and c1 >= min(size, b + e)
            n *= len(inside)
        assert n == count_windows([b - a for a, b in crop], roi, overlap) < count_windows(shape, roi, overlap)


def test_cli_backend_and_precision_reach_report_json(small_ct, tmp_path, capsys):
    code = main(["segment", str(small_ct), "-o", str(tmp_path / "t"), "--model", "atlasseg-demo", "--device", "cpu",
                 "--backend", "torch", "--precision", "fp32", "--quiet"])
    assert code == 0
    model = json.loads((tmp_path / "t" / "report.json").read_text())["model"]
    assert (model["backend"], model["precision"]) == ("torch", "fp32")
    code = main(["segment", str(small_ct), "-o", str(tmp_path / "o"), "--model", "atlasseg-demo", "--device", "cpu",
                 "--backend", "openvino", "--quiet"])
    assert code == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert (report["model"]["backend"], report["settings"]["backend"]) == ("openvino", "openvino")
    assert report["model"]["precision"] == backends.choose("auto", "auto", torch.device("cpu")).precision


def test_auto_converts_only_for_runs_large_enough_to_repay_it(tmp_path, monkeypatch):
    monkeypatch.setenv("ATLASSEG_HOME", str(tmp_path / "home"))
    torch.manual_seed(2)
    net = _Tiny().eval()
    cpu = torch.device("cpu")
    small = backends.make_runner(net, (16, 16, 16), cpu, "auto", "auto", windows=backends.AUTO_MIN_WINDOWS - 1)
    assert small.backend == "torch" and small.provisional and "windows" in small.info()["backend_note"]
    assert not (tmp_path / "home" / "openvino").exists()  # nothing was converted for the small run
    large = backends.make_runner(net, (16, 16, 16), cpu, "auto", "auto", windows=backends.AUTO_MIN_WINDOWS)
    assert large.backend == "openvino" and not large.provisional
    # Once converted, small runs use the cached conversion too.
    again = backends.make_runner(net, (16, 16, 16), cpu, "auto", "auto", windows=1)
    assert again.backend == "openvino"


def test_cli_refuses_a_precision_the_cpu_lacks(small_ct, tmp_path, capsys):
    lacking = [p for p in ("bf16", "fp16") if p.upper() not in backends.cpu_capabilities()]
    if not lacking:
        pytest.skip("this CPU supports both bf16 and fp16 in OpenVINO: nothing to refuse")
    code = main(["segment", str(small_ct), "-o", str(tmp_path / "x"), "--model", "atlasseg-demo", "--device", "cpu",
                 "--backend", "openvino", "--precision", lacking[0], "--quiet"])
    assert code == 2
    assert f"no {lacking[0].upper()} support" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_stale_failed_check_is_converted_again(tmp_path, monkeypatch):
    """A cache entry recorded as failed under another tolerance (an older AtlasSeg) does not keep torch forever."""
    monkeypatch.setenv("ATLASSEG_HOME", str(tmp_path / "home"))
    torch.manual_seed(3)
    net = _Tiny().eval()
    entry = tmp_path / "home" / "openvino" / backends.weights_key(net, (16, 16, 16))
    entry.mkdir(parents=True)
    (entry / "check.json").write_text(json.dumps({"ok": False, "rtol": 1e-9, "reason": "old"}))
    xml, check = backends.converted(net, (16, 16, 16))
    assert check["ok"] and xml == entry / "model.xml" and xml.is_file()


CTRL_C_AFTER_A_COMPILE = """
import ctypes, faulthandler, gc, signal, sys, torch
from AtlasSegLib import backends

faulthandler.enable()  # as pytest, python -X faulthandler and PYTHONFAULTHANDLER do: it owns an alternate stack
# Python's own Ctrl-C handler, also where this test run inherited SIGINT ignored (started in a script's background).
signal.signal(signal.SIGINT, signal.default_int_handler)

class StackT(ctypes.Structure):  # POSIX stack_t
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]

def signal_stack():
    s = StackT()
    ctypes.CDLL(None).sigaltstack(None, ctypes.byref(s))
    return (s.ss_sp, s.ss_size, s.ss_flags)

before = signal_stack()
backends.cpu_capabilities()
# Two models alive at once and dropped in the order they were made (an INT8 check beside its fp32 reference,
# a batch's cases): each OpenVINO core puts back, when it goes, the stack it found, which may be the other's.
first = backends.make_runner(torch.nn.Conv3d(1, 2, 3, padding=1).eval(), (16, 16, 16), torch.device("cpu"),
                             "openvino", "fp32")
first(torch.zeros(1, 1, 16, 16, 16))
second = backends.make_runner(torch.nn.Conv3d(1, 3, 3, padding=1).eval(), (16, 16, 16), torch.device("cpu"),
                              "openvino", "fp32")
second(torch.zeros(1, 1, 16, 16, 16))
del first
gc.collect()
del second
gc.collect()
print("signal stack kept" if signal_stack() == before else "signal stack replaced")
try:
    signal.raise_signal(signal.SIGINT)
except KeyboardInterrupt:
    print("interrupted cleanly")
"""


def test_ctrl_c_after_an_openvino_model_was_compiled_and_dropped_is_a_keyboardinterrupt_not_a_crash(tmp_path):
    """OpenVINO's CPU plugin swaps the thread's alternate signal stack when it compiles a model (or answers a
    property) and frees that memory later; Python's signal handlers run on that stack, so a Ctrl-C after the model
    was dropped segfaulted (exit -11, seen after an in-process batch under pytest) instead of cancelling and
    cleaning up. Seen where the thread had a stack of its own (faulthandler's, enabled by pytest, -X faulthandler
    or PYTHONFAULTHANDLER): it must be back after every OpenVINO call. In a process of its own: a crash would take pytest
    down."""
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent), ATLASSEG_HOME=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", CTRL_C_AFTER_A_COMPILE], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert "signal stack kept" in r.stdout and "interrupted cleanly" in r.stdout, r.stdout
