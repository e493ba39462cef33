"""Sliding-window inference with MONAI, with progress, cancel and a CUDA → CPU fallback."""
from __future__ import annotations

import logging
import math

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from .backends import Runner, TorchRunner
from .errors import InputError
from .progress import Reporter

log = logging.getLogger(__name__)


def pick_device(requested: str = "auto") -> torch.device:
    if requested not in ("auto", "cpu", "cuda"):
        raise InputError(f"--device must be auto, cpu or cuda, not '{requested}'")
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "cuda":
        raise InputError(f"--device cuda was asked for, but this torch build ({torch.__version__}) sees no CUDA GPU; "
                         "use --device cpu (or auto)")
    return torch.device("cpu")


def count_windows(shape, roi, overlap: float) -> int:
    """Number of windows MONAI's sliding_window_inference evaluates for an image of ``shape``."""
    total = 1
    for n, r in zip(shape, roi):
        n = max(n, r)  # MONAI pads images smaller than the window
        interval = r if r == n else max(int(r * (1 - overlap)), 1)
        total *= int(math.ceil((n - r) / interval)) + 1
    return total


def window_starts(n: int, r: int, overlap: float) -> list:
    """Start indices along one axis of MONAI's window placement for an axis of ``n`` voxels and windows of ``r``
    (interval int(r × (1 - overlap)), the last window moved back to end at the border)."""
    if n <= r:
        return [0]
    interval = max(int(r * (1 - overlap)), 1)
    count = int(math.ceil((n - r) / interval)) + 1
    return [min(i * interval, n - r) for i in range(count)]


def foreground_windows(array_ijk: np.ndarray, roi, overlap: float, n: int) -> tuple:
    """Two disjoint sets of up to ``n`` windows (each (1, 1, *roi) float32) of MONAI's placement over
    ``array_ijk``, among those with the most tissue (voxels above the HU window's lower end, > 0 after scaling):
    ranked by that share, even ranks go to the first set (INT8 calibration), odd ranks to the second (its
    check), so both sample the body and the check never sees a calibration window. Arrays smaller than the
    window are zero-padded evenly, as MONAI pads them. With a single window both sets hold it."""
    roi = tuple(int(r) for r in roi)
    pad = [(p, max(r - s, 0) - p) for p, s, r in zip(_padding_before(array_ijk.shape, roi), array_ijk.shape, roi)]
    arr = np.pad(array_ijk, pad) if any(a or b for a, b in pad) else array_ijk
    starts = [window_starts(s, r, overlap) for s, r in zip(arr.shape, roi)]
    # Tissue share per window from a coarse (every 4th voxel) view: ranking only.
    tissue = arr[::4, ::4, ::4] > 0
    scored = []
    for i in starts[0]:
        for j in starts[1]:
            for k in starts[2]:
                sub = tissue[i // 4:(i + roi[0]) // 4, j // 4:(j + roi[1]) // 4, k // 4:(k + roi[2]) // 4]
                scored.append((-float(sub.mean()) if sub.size else 0.0, (i, j, k)))
    scored.sort()
    picks = [pos for _, pos in scored[:2 * n]]
    cut = lambda p: np.ascontiguousarray(arr[p[0]:p[0] + roi[0], p[1]:p[1] + roi[1], p[2]:p[2] + roi[2]],
                                         dtype=np.float32)[None, None]
    first, second = [cut(p) for p in picks[0::2]], [cut(p) for p in picks[1::2]]
    return first, (second or first)


CONTEXT = 0.25
"""``cover_crop`` covers the box grown by this fraction of the window on each side: a box voxel is then at least a
quarter window from the crop's faces, where MONAI's gaussian (sigma 1/8 of the window) still weighs the windows
kept ≥ e^-2 of a window's centre, and the network sees context around it."""


def cover_crop(shape, roi, overlap: float, box) -> list:
    """Per axis (c0, c1): the span of the fewest windows of the full run's placement that cover ``box`` [(a, b)].
    MONAI's sliding window over ``array[c0:c1]`` places exactly those windows (the crop starts at one of the full
    run's window starts and ends where one of them ends). Axes no longer than the window are kept whole."""
    out = []
    for n, r, (a, b) in zip(shape, roi, box):
        n, r = int(n), int(r)
        if n <= r:
            out.append((0, n))
            continue
        starts = window_starts(n, r, overlap)
        e = int(round(CONTEXT * r))
        a, b = max(0, int(a) - e), min(n, int(b) + e)
        first = max(s for s in starts if s <= a)
        last = min((s for s in starts if s + r >= b), default=starts[-1])
        out.append((first, max(first, last) + r))
    return out


GPU_MAX_BATCH = 16
"""Most windows per batch on a GPU (throughput stops growing well before; more only delays the progress bar)."""


def gpu_window_batch(free_bytes: int, window_bytes: int, *, buffer_bytes: int = 0, headroom: float = 0.8,
                     max_batch: int = GPU_MAX_BATCH) -> int:
    """Sliding-window batch for a GPU with ``free_bytes`` free (``torch.cuda.mem_get_info``): as many windows as
    fit in ``headroom`` of it after the blending buffers kept on the GPU (``buffer_bytes``), each window needing
    ``window_bytes`` (its measured peak: activations, in the precision it runs); at least 1, at most
    ``max_batch``. Pure arithmetic, so it is tested with given memory numbers."""
    if window_bytes <= 0:
        return 1
    budget = headroom * free_bytes - buffer_bytes
    return int(max(1, min(max_batch, budget // window_bytes)))


def _window_bytes(runner, roi, dev) -> int:
    """Peak GPU memory one window takes through ``runner`` (measured once per run, with zeros)."""
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    with torch.inference_mode():
        runner(torch.zeros((1, 1) + tuple(int(r) for r in roi), device=dev))
    torch.cuda.synchronize(dev)
    return int(torch.cuda.max_memory_allocated(dev) - base)


SKIPPED_LOGIT = -20.0
"""Logit given to voxels that only windows outside a region of interest cover (sigmoid ≈ 2e-9: background)."""


def _padding_before(shape, roi) -> tuple:
    """Voxels MONAI's sliding window pads before each axis (images smaller than the window are padded evenly)."""
    return tuple(max(r - n, 0) // 2 for n, r in zip(shape, roi))


def infer(runner, array_ijk: np.ndarray, inference: dict, *, device: torch.device,
          reporter: Reporter, box=None, stats: dict = None) -> torch.Tensor:
    """Run the network over ``array_ijk`` (I, J, K float32) and return logits (C, I, J, K) float32 on CPU.

    ``runner`` is a :class:`~AtlasSegLib.backends.Runner` (torch or OpenVINO, see backends.py) or a plain torch
    module (run by torch in fp32). MONAI's sliding window places, pads and blends the windows the same way for
    every backend; the runner is only the predictor called per window batch.

    ``box`` ((i0, i1), (j0, j1), (k0, k1)) in ``array_ijk`` indices: only the fewest windows of the full run's
    placement that cover the box are run (``cover_crop``): MONAI's sliding window runs on the crop they span,
    which places exactly those windows; voxels outside the crop get ``SKIPPED_LOGIT``. Inside the box the logits
    are the full run's blend less the windows that start before or after the crop; those reach box voxels only
    within half a window of the crop's faces, where the kept windows still cover them, so masks agree with the
    full run's up to edge voxels (the caller's box has a margin around the structures). (Running every window that overlaps the box gives identical logits but, with 96³ windows at half
    overlap, almost every window of an abdomen: measured 1.05 × a full run for liver + liver_tumor.)
    ``stats`` (a dict) receives ``windows`` (of the full run), ``windows_run`` and ``crop_ijk``."""
    if not isinstance(runner, Runner):
        runner = TorchRunner(runner, device)
    roi = tuple(inference["roi_size"])
    overlap = float(inference["overlap"])
    total = count_windows(array_ijk.shape, roi, overlap)
    full_shape = array_ijk.shape
    crop = None
    if box is not None:
        crop = cover_crop(full_shape, roi, overlap, box)
        array_ijk = np.ascontiguousarray(array_ijk[tuple(slice(a, b) for a, b in crop)])
    to_run = count_windows(array_ijk.shape, roi, overlap)
    done = [0]

    def run(runner) -> torch.Tensor:
        dev = runner.device

        def predictor(x, coords):
            reporter.check_cancel()
            out = runner.predict(x, coords)
            done[0] += x.shape[0]
            reporter.update("inference", done[0] / to_run, f"window {done[0]}/{to_run}")
            return out

        runner.begin(array_ijk.shape)
        x = torch.from_numpy(array_ijk)[None, None]
        # On a GPU the full-volume accumulation buffer stays in host memory when it would not fit comfortably.
        out_dev = dev
        batch = int(inference["sw_batch_size"])
        if dev.type == "cuda":
            free, _ = torch.cuda.mem_get_info(dev)
            need = 4 * array_ijk.size * (len(roi) + 30)
            out_dev = dev if need < 0.3 * free else torch.device("cpu")
            # The batch fills the free memory (fp16 windows are half the size): more windows per call.
            window = _window_bytes(runner, roi, dev)
            free, _ = torch.cuda.mem_get_info(dev)
            batch = gpu_window_batch(free, window, buffer_bytes=need if out_dev == dev else 0)
            log.info("GPU: %.1f GiB free, %.2f GiB per window: %d windows per batch", free / 2**30,
                     window / 2**30, batch)
        with torch.inference_mode():
            y = sliding_window_inference(
                x, roi, batch, predictor, overlap=overlap, mode=inference["mode"], sw_device=dev,
                device=out_dev, with_coord=True)
        if stats is not None:
            stats.update(windows=total, windows_run=done[0], sw_batch_size=batch)
            if crop is not None:
                stats["crop_ijk"] = [list(c) for c in crop]
        y = y[0].float().cpu()
        if crop is None:
            return y
        full = torch.full((y.shape[0],) + tuple(full_shape), SKIPPED_LOGIT, dtype=torch.float32)
        full[(slice(None),) + tuple(slice(a, b) for a, b in crop)] = y
        return full

    reporter.update("inference", 0.0, f"{to_run} windows on {runner.device.type} ({runner.backend} {runner.precision})")
    if runner.device.type != "cuda":
        return run(runner)
    try:
        return run(runner)
    except torch.cuda.OutOfMemoryError:
        log.warning("CUDA ran out of memory; running on the CPU instead (slower). Use --fast or a GPU with more "
                    "memory to stay on the GPU.")
        torch.cuda.empty_cache()
        done[0] = 0
        return run(runner.to_cpu())
