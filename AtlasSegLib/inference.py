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


def infer(net: torch.nn.Module, array_ijk: np.ndarray, inference: dict, *, device: torch.device,
          reporter: Reporter) -> torch.Tensor:
    """Run the network over ``array_ijk`` (I, J, K float32) and return logits (C, I, J, K) float32 on CPU."""
    roi = tuple(inference["roi_size"])
    overlap = float(inference["overlap"])
    total = count_windows(array_ijk.shape, roi, overlap)
    done = [0]

    def predictor(x):
        reporter.check_cancel()
        out = net(x)
        done[0] += x.shape[0]
        reporter.update("inference", done[0] / total, f"window {done[0]}/{total}")
        return out

    def run(dev: torch.device) -> torch.Tensor:
        net.to(dev)
        x = torch.from_numpy(array_ijk)[None, None]
        # On a GPU the full-volume accumulation buffer stays in host memory when it would not fit comfortably.
        out_dev = dev
        if dev.type == "cuda":
            free, _ = torch.cuda.mem_get_info(dev)
            need = 4 * array_ijk.size * (len(roi) + 30)
            out_dev = dev if need < 0.3 * free else torch.device("cpu")
        with torch.inference_mode():
            y = sliding_window_inference(
                x, roi, int(inference["sw_batch_size"]), predictor, overlap=overlap, mode=inference["mode"], sw_device=dev, device=out_dev)
        return y[0].float().cpu()

    reporter.update("inference", 0.0, f"{total} windows on {device.type}")
    if device.type != "cuda":
        return run(device)
    try:
        return run(device)
    except torch.cuda.OutOfMemoryError:
        log.warning("CUDA ran out of memory; running on the CPU instead (slower). Use --fast or a GPU with more "
                    "memory to stay on the GPU.")
        torch.cuda.empty_cache()
        done[0] = 0
        return run(torch.device("cpu"))
