"""Sliding-window inference with MONAI, with progress, cancel and a CUDA → CPU fallback."""
from __future__ import annotations

import logging
import math

import numpy as np
import torch
from monai.inferers import sliding_window_inference

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

    ``box`` ((i0, i1), (j0, j1), (k0, k1)) in ``array_ijk`` indices: only the windows of the full run that overlap
    it are run; the others are given ``SKIPPED_LOGIT``. Every window covering a voxel of the box overlaps the box,
    so inside it the blended logits are exactly those of the full run. ``stats`` (a dict) receives
    ``windows`` (of the full run) and ``windows_run``."""
    from .backends import Runner, TorchRunner

    if not isinstance(runner, Runner):
        runner = TorchRunner(runner, device)
    roi = tuple(inference["roi_size"])
    overlap = float(inference["overlap"])
    total = count_windows(array_ijk.shape, roi, overlap)
    done = [0]
    ran = [0]
    pad = _padding_before(array_ijk.shape, roi)
    if box is not None:
        box = [(int(a) + p, int(b) + p) for (a, b), p in zip(box, pad)]

    def wanted(coords) -> bool:
        if box is None:
            return True
        spatial = coords[-3:]
        return all(sl.start < b and sl.stop > a for sl, (a, b) in zip(spatial, box))

    n_out = [None]  # output channels, known after the first window that runs

    def run(runner) -> torch.Tensor:
        dev = runner.device

        def predictor(x, coords):
            reporter.check_cancel()
            keep = [i for i, c in enumerate(coords) if wanted(c)]
            if not keep and n_out[0] is None:
                keep = list(range(len(coords)))  # the channel count is not known yet: run this batch
            if len(keep) == len(coords):
                out = runner.predict(x, coords)
            else:
                if keep:
                    part = runner.predict(x[keep], [coords[i] for i in keep])
                    out = part.new_full((x.shape[0],) + tuple(part.shape[1:]), SKIPPED_LOGIT)
                    out[keep] = part
                else:
                    out = torch.full((x.shape[0], n_out[0]) + tuple(x.shape[2:]), SKIPPED_LOGIT,
                                     dtype=torch.float32, device=x.device)
            if n_out[0] is None:
                n_out[0] = int(out.shape[1])
            ran[0] += len(keep)
            done[0] += x.shape[0]
            reporter.update("inference", done[0] / total, f"window {done[0]}/{total}")
            return out

        runner.begin(array_ijk.shape)
        x = torch.from_numpy(array_ijk)[None, None]
        # On a GPU the full-volume accumulation buffer stays in host memory when it would not fit comfortably.
        out_dev = dev
        if dev.type == "cuda":
            free, _ = torch.cuda.mem_get_info(dev)
            need = 4 * array_ijk.size * (len(roi) + 30)
            out_dev = dev if need < 0.3 * free else torch.device("cpu")
        with torch.inference_mode():
            y = sliding_window_inference(
                x, roi, int(inference["sw_batch_size"]), predictor, overlap=overlap, mode=inference["mode"], sw_device=dev,
                device=out_dev, with_coord=True)
        if stats is not None:
            stats.update(windows=total, windows_run=ran[0])
        return y[0].float().cpu()

    reporter.update("inference", 0.0, f"{total} windows on {runner.device.type} ({runner.backend} {runner.precision})")
    if runner.device.type != "cuda":
        return run(runner)
    try:
        return run(runner)
    except torch.cuda.OutOfMemoryError:
        log.warning("CUDA ran out of memory; running on the CPU instead (slower). Use --fast or a GPU with more "
                    "memory to stay on the GPU.")
        torch.cuda.empty_cache()
        done[0] = ran[0] = 0
        return run(runner.to_cpu())
