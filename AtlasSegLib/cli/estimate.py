"""``atlasseg estimate CT --model ID``: per ``--quality`` preset the windows and the estimated time on this
machine (``--json``: one object). The numbers come from ``AtlasSegLib.estimate``; this module only prints them."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..card import builtin_card, load_card
from ..estimate import INT8_ASSUMED_SPEEDUP, duration_text
from ..preflight import check_estimate


def cmd_estimate(args) -> int:
    """Print the estimate of every preset. Options and input are checked (exit 2) before torch is imported."""
    card = load_card(args.model_card) if args.model_card else builtin_card(args.model)
    check_estimate(args, card)
    # here, after the checks: these import torch (pipeline, inference), which a refused command never needs
    from ..estimate import estimate
    from ..inference import pick_device
    from ..io import read_image

    device = pick_device(args.device).type
    image, _ = read_image(args.input, series_uid=args.series)
    result = estimate(image, card, device=device)
    if args.json:
        print(json.dumps({"input": str(Path(args.input).resolve()), "model": card.id, "device": device,
                          "cpus": os.cpu_count(), "presets": result}))
        return 0
    print(f"{card.title} on {args.input} ({device}, {os.cpu_count()} cpus)")
    print(f"{'quality':<11}{'windows':>8}  {'estimated':<31}what runs")
    for quality, entry in result.items():
        runs = f"{entry['backend']} {entry['precision']}"
        if entry["timing"] == "assumed":
            runs += f" (INT8 assumed {INT8_ASSUMED_SPEEDUP}x faster than fp32)"
        elif entry["timing"] == "measured":
            runs += f", {entry['window_s']} s per window measured here"
        print(f"{quality:<11}{entry['windows']:>8}  {duration_text(entry['total_s']):<31}{runs}")
    skipped = [q for q in ("reference", "balanced", "fast") if q not in result]
    if skipped:
        print(f"atlasseg: warning: {card.id} has no fast spacing: no estimate for {', '.join(skipped)}",
              file=sys.stderr)
    return 0
