"""How long each ``--quality`` preset would take for this CT on this machine (for a panel to show before Apply).

``estimate(image, card)`` returns, per preset, the windows the run would place (the same grid, crop and MONAI
placement as the pipeline: ``pipeline.prepare`` at the preset's spacing, then ``inference.count_windows`` at
its overlap) and, where this machine has timed the model before, the network time: windows × the seconds per
window of the backend and precision the preset would use, as finished runs recorded them
(``windowtimes.record_window_time``, called by ``Segmenter.run``, kept in ``<cache_dir()>/window_times.json``). INT8 not
yet timed on this machine is assumed ``INT8_ASSUMED_SPEEDUP`` × faster than fp32 OpenVINO (marked
``"assumed"``). No model is loaded, but ``pipeline`` (which it uses for the grid and crop) imports torch, and
resampling a 512×512×300 CT to the model grid takes seconds: call it in a worker process, never on a GUI thread
(Slicer: in the background process that runs the CLI).
"""
from __future__ import annotations

from typing import Optional

import SimpleITK as sitk

from .card import ModelCard
from .windowtimes import window_seconds

INT8_ASSUMED_SPEEDUP = 1.8
"""INT8 over fp32 OpenVINO per window, used until this machine has timed INT8 itself (SuPreM SegResNet on two
AVX2 cores: 1.8-3.4× measured in bench-quick, depending on the load)."""
NONNET_SHARE = 0.12
"""Non-network time as a share of the whole run (bench-quick's nonnet_pct: ≤ 12 % with compact masks)."""


def estimate(image: sitk.Image, card: ModelCard, *, device: str = "cpu", qualities=None) -> dict:
    """quality -> {"windows", "window_s", "network_s", "total_s", "timing"} for this CT. ``timing`` is
    "measured" (this machine ran this model so before), "assumed" (INT8 from fp32 × ``INT8_ASSUMED_SPEEDUP``)
    or None (not yet timed here: only the window count is known; the seconds are None)."""
    # here, not at the top: these import torch, and the Slicer module imports this module's describe() on its
    # GUI thread (only estimate() itself, run in a worker process, needs them)
    from .backends import AUTO_MIN_WINDOWS, cpu_capabilities, nncf_version, openvino_version
    from .inference import count_windows
    from .pipeline import QUALITIES, prepare, resolve_quality

    ov = device == "cpu" and openvino_version() is not None
    out = {}
    for quality in qualities or QUALITIES:
        preset = resolve_quality(quality, card)
        if quality != "reference" and not card.preprocessing.get("fast_spacing_mm") and preset.fast:
            continue
        prep = prepare(image, card, fast=preset.fast, body_crop=quality != "reference")
        windows = count_windows(prep.array.shape, card.inference["roi_size"], preset.overlap)
        backend = "openvino" if ov else "torch"
        if device != "cpu":
            precision = "fp16" if quality != "reference" else "fp32"
        elif preset.precision == "int8" and ov and nncf_version() is not None:
            precision = "int8"
        else:
            precision = ("bf16" if "BF16" in cpu_capabilities() else "fp32") if preset.precision == "auto" \
                else preset.precision
        per, timing = window_seconds(card.id, backend, precision), "measured"
        if per is None and precision == "int8" and windows < AUTO_MIN_WINDOWS:
            # A run this small skips a preset's first quantization (pipeline.Segmenter._make_runner) and runs what
            # auto runs: OpenVINO where this machine converted the model before, else torch fp32.
            auto = "bf16" if "BF16" in cpu_capabilities() else "fp32"
            for backend_, precision_ in (("openvino", auto), ("openvino", "fp32"), ("torch", "fp32")):
                per = window_seconds(card.id, backend_, precision_)
                if per:
                    backend, precision = backend_, precision_
                    break
        if per is None and precision == "int8":
            fp32 = window_seconds(card.id, backend, "fp32")
            per, timing = (fp32 / INT8_ASSUMED_SPEEDUP if fp32 else None), "assumed"
        if per is None and backend == "openvino" and precision in ("fp32", "bf16"):
            # Small runs of 'auto' are run by torch (no first conversion): their times are torch's.
            per = window_seconds(card.id, "torch", "fp32")
            backend, precision = ("torch", "fp32") if per else (backend, precision)
        if per is None and backend == "openvino" and windows < AUTO_MIN_WINDOWS:
            backend, precision = "torch", "fp32"  # nothing converted here yet: auto converts nothing for so few
        network = windows * per if per else None
        out[quality] = {"windows": windows, "backend": backend, "precision": precision,
                        "window_s": round(per, 3) if per else None,
                        "network_s": round(network, 1) if network else None,
                        "total_s": round(network / (1 - NONNET_SHARE), 1) if network else None,
                        "timing": timing if per else None}
    return out


NOT_TIMED = "not timed yet on this machine"


def duration_text(seconds: Optional[float]) -> str:
    """``251`` -> ``"~4 min"``, ``40`` -> ``"~40 s"``, ``5400`` -> ``"~1.5 h"``; None -> ``NOT_TIMED``. Rounded:
    an estimate is not a stopwatch."""
    if seconds is None:
        return NOT_TIMED
    if seconds < 90:
        return f"~{max(10, int(round(seconds / 10.0)) * 10)} s"
    if seconds < 90 * 60:
        return f"~{int(round(seconds / 60.0))} min"
    return f"~{seconds / 3600.0:.1f} h"


def describe(entry: dict) -> str:
    """One preset's estimate in words, e.g. "150 windows, ~4 min" (the panel's and the CLI's wording)."""
    text = f"{entry['windows']} window{'s' if entry['windows'] != 1 else ''}, {duration_text(entry.get('total_s'))}"
    if entry.get("timing") == "assumed":
        text += " (INT8 assumed)"
    return text
