"""Where the tests find the repository and the real CT data (importable by tests and benchmarks alike)."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def ct_data_dir() -> Path:
    """The real CT folder: $ATLASSEG_TEST_DATA, else ../shared/ctdata beside the repository."""
    return Path(os.environ.get("ATLASSEG_TEST_DATA", REPO.parent / "shared" / "ctdata"))


def make_run(outdir: Path, ct_input, masks: dict, card_id: str = "suprem-segresnet", *, card=None) -> Path:
    """An AtlasSeg output folder for ``masks`` (name -> k, j, i uint8 on the input grid), written by the pipeline's
    own OutputWriter (no model run), so exports and reports read exactly what a real run leaves. ``card``: a
    ModelCard to use instead of the built-in ``card_id`` (e.g. a bring-your-own model's)."""
    from AtlasSegLib.card import builtin_card
    from AtlasSegLib.io import read_image
    from AtlasSegLib.outputs import OutputWriter

    image, source = read_image(ct_input)
    card = card if card is not None else builtin_card(card_id).select(list(masks))
    writer = OutputWriter(outdir, image, source, card, overview=False)
    box = ((0, 0, 0), image.GetSize())
    for cls in card.classes:
        if cls.is_tumor:
            writer.add_tumor(cls, box, masks[cls.name], None, threshold=0.5)
        else:
            writer.add_structure(cls, box, masks[cls.name])
    writer.finish(settings={}, timings={})
    return outdir


def test_cache_dir() -> Path:
    """What tests keep between runs on one machine (the SuPreM parity checkpoints and their OpenVINO conversions,
    minutes to rebuild): $ATLASSEG_TEST_CACHE, else ~/.cache/atlasseg-test. Not pytest's cache: CI runs with
    ``-p no:cacheprovider``. Entries are keyed by what made them, so a stale one is never read: delete the folder
    to reclaim the space."""
    folder = os.environ.get("ATLASSEG_TEST_CACHE")
    return Path(folder).expanduser() if folder else Path.home() / ".cache" / "atlasseg-test"


test_cache_dir.__test__ = False  # a helper, not a test (its name starts with "test")


def phantom_run(outdir: Path, seed: int = 2024, *, card_id: str = "atlasseg-demo", tumor_peak: float = 0.97,
                **phantom_options) -> Path:
    """A run folder as ``atlasseg demo`` leaves it (``ct.nii.gz``, ``ground_truth/``, the demo model's classes)
    without running a model: the OutputWriter writes the phantom's truth as the segmentation, in a second or two
    instead of the demo model's half minute. Organs are the truth masks; each tumor class gets a probability map
    that is its truth mask smoothed (``tumor_peak`` deep inside, falling off over ~2 voxels at the rim, so a lower
    threshold grows every tumor and a higher one shrinks it) and a mask from it through the engine's own
    postprocess.tumor_mask at the card's threshold, gate (its organs dilated as the card says) and minimum size.
    ``phantom_options`` go to make_phantom (size, spacing_mm, tumor_count...)."""
    import json

    import numpy as np
    import SimpleITK as sitk
    from scipy import ndimage

    from AtlasSegLib.card import builtin_card
    from AtlasSegLib.geometry import Grid
    from AtlasSegLib.io import SourceInfo
    from AtlasSegLib.outputs import OutputWriter
    from AtlasSegLib.phantom import make_phantom
    from AtlasSegLib.postprocess import dilate_mm, quantize, tumor_mask

    outdir = Path(outdir)
    phantom = make_phantom(seed, **phantom_options)
    card = builtin_card(card_id)
    card = card.select([c.name for c in card.classes if c.name in phantom.labels])
    truth = {n: sitk.GetArrayFromImage(lab).astype(np.uint8) for n, lab in phantom.labels.items()}
    grid = Grid.of(phantom.image)
    spacing_kji = np.asarray(grid.spacing[::-1])
    threshold = float(card.raw.get("inference", {}).get("threshold", 0.5))
    dilation = float(card.raw.get("postprocessing", {}).get("tumor_gate_dilation_mm", 0.0))
    writer = OutputWriter(outdir, phantom.image, SourceInfo(path=f"phantom(seed={seed})", format="phantom"), card)
    full = ((0, 0, 0), tuple(grid.size))
    for cls in sorted(card.classes, key=lambda c: c.is_tumor):  # organs first: the gate is made of them
        if not cls.is_tumor:
            writer.add_structure(cls, full, truth[cls.name])
            continue
        blur = ndimage.gaussian_filter(truth[cls.name].astype(np.float32), sigma=1.0)
        prob = tumor_peak * blur / max(float(blur.max()), 1e-6)
        gate_names = [g for g in (cls.gate or ()) if g in truth]
        gate = None
        if gate_names:
            gate = dilate_mm(np.max([truth[g] for g in gate_names], axis=0), spacing_kji, dilation)
        q = quantize(prob)
        mask = tumor_mask(q, gate, threshold=threshold, voxel_mm3=grid.voxel_volume_mm3,
                          min_mm3=cls.min_component_mm3)
        writer.add_tumor(cls, full, mask, q, threshold=threshold, gate=gate_names or None,
                         min_mm3=cls.min_component_mm3, dilation_mm=dilation if gate_names else None)
    writer.finish(settings={"device": "cpu", "fast": False, "postprocess": True, "structures": None,
                            "note": "masks: the phantom's truth; tumor maps: its truth smoothed (no model ran)"},
                  timings={})
    sitk.WriteImage(phantom.image, str(outdir / "ct.nii.gz"), useCompression=True)
    (outdir / "ground_truth").mkdir(exist_ok=True)
    for name, lab in phantom.labels.items():
        sitk.WriteImage(lab, str(outdir / "ground_truth" / f"{name}.nii.gz"), useCompression=True)
    (outdir / "ground_truth" / "tumors.json").write_text(json.dumps({"seed": seed, "tumors": list(phantom.tumors)},
                                                                    indent=1))
    return outdir
