"""``atlasseg demo``: a synthetic phantom, segmented by the committed demo model, scored against its truth."""
from __future__ import annotations

import json
import time
from pathlib import Path

from .card import builtin_card
from .errors import InputError
from .evaluate import truth_scores
from .io import SourceInfo, atomic_write_text
from .networks import load_model
from .phantom import check_structures, check_tumor_options, make_phantom
from .pipeline import SegmentOptions, Segmenter
from .progress import Reporter

DEMO_MODEL = "atlasseg-demo"


def run_demo(outdir, *, seed: int = 2024, tumors: bool = True, device: str = "auto", overwrite: bool = False,
             progress=None, cancel=None, tumor_count=None, tumor_diameter_mm=None, tumor_contrast_hu=None,
             structures=None) -> dict:
    """Segment a fresh phantom with the demo model into ``outdir`` (with the phantom as ``ct.nii.gz`` and its
    truth under ``ground_truth/``); returns Dice per structure against the truth (Dice rounded to 3 decimals,
    volumes in ml to 1, as the report's truth table shows them).

    Teaching controls: ``tumor_count``, ``tumor_diameter_mm`` (min, max) and ``tumor_contrast_hu`` (relative to
    the liver) as in ``phantom.make_phantom``; ``structures`` limits what is segmented and shown (and the truth
    written) to those names. Left at None, the run is the plain demo. The inserted tumors (centre, diameter,
    contrast) are returned as ``tumors`` and written to ``OUTDIR/ground_truth/tumors.json``."""
    shown = check_structures(structures)
    check_tumor_options(tumor_count, tumor_diameter_mm, tumor_contrast_hu)
    controlled = (tumor_count, tumor_diameter_mm, tumor_contrast_hu) != (None, None, None)
    if controlled and not tumors:
        raise InputError("tumor controls (count, diameter, contrast) were given together with no tumors: "
                         "leave out one or the other")
    t0 = time.perf_counter()
    phantom = make_phantom(seed, tumors=tumors, tumor_count=tumor_count, tumor_diameter_mm=tumor_diameter_mm,
                           tumor_contrast_hu=tumor_contrast_hu)
    card = builtin_card(DEMO_MODEL)
    model = load_model(card)
    extra = {"ct.nii.gz": phantom.image}
    for name, lab in phantom.labels.items():
        if name in shown:
            extra[f"ground_truth/{name}.nii.gz"] = lab
    source = SourceInfo(path=f"phantom(seed={seed})", format="phantom")
    subset = None if structures is None else tuple(shown)
    report = Segmenter(model, SegmentOptions(device=device, overwrite=overwrite, structures=subset)).run(
        phantom.image, source, outdir, reporter=Reporter(progress=progress, cancel=cancel), extra_files=extra)
    if tumors:
        atomic_write_text(json.dumps({"seed": seed, "tumors": list(phantom.tumors)}, indent=1),
                          Path(outdir) / "ground_truth" / "tumors.json")
    # The same numbers as the report's truth table (evaluate.truth_scores reads the masks and OUTDIR/ground_truth).
    scores = truth_scores(outdir, [cls.name for cls in model.card.classes
                                   if cls.name in phantom.labels and cls.name in shown])
    return {"model": card.id, "dice": scores, "report": report, "seconds": time.perf_counter() - t0,
            "tumors": list(phantom.tumors)}
