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
