"""Odd inputs a new user brings, each either handled right or refused (exit 2) at once: a DICOM folder with two
series, a multi-label organ mask, junk weights, exports of runs whose warnings make the labels meaningless."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pydicom

from testdata import make_run


# ------------------------------------------------------------------------------- a folder with two series
def test_a_folder_with_two_series_records_the_choice_and_warns_naming_series(tmp_path, ctdata):
    src = ctdata / "dcmqi_ct3slice" / "ct-3slice"
    folder = tmp_path / "two"
    folder.mkdir()
    files = sorted(src.iterdir())
    for k, f in enumerate(files):
        shutil.copy(f, folder / f"a{k}.dcm")
    other = "1.2.826.0.1.3680043.8.498.4242"
    for k, f in enumerate(files[:2]):  # a second series of 2 slices: the 3-slice one is chosen (most slices)
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = other
        ds.SOPInstanceUID = f"{other}.{k}"
        ds.save_as(folder / f"b{k}.dcm")
    chosen = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    run = make_run(tmp_path / "run", folder, {"liver": np.zeros((3, 512, 512), np.uint8)}, card_id="atlasseg-demo")
    report = json.loads((run / "report.json").read_text())
    series = report["input"]["series"]
    assert series["uid"] == chosen and series["slices"] == 3 and series["chosen_by"] == "most slices"
    assert [(o["uid"], o["slices"]) for o in series["others"]] == [(other, 2)]
    warning = [w for w in report["warnings"] if "DICOM series" in w and "--series" in w]
    assert len(warning) == 1 and chosen in warning[0] and other in warning[0]


def test_a_series_chosen_with_series_is_recorded_without_a_warning(tmp_path, ctdata):
    from AtlasSegLib.io import read_image

    src = ctdata / "dcmqi_ct3slice" / "ct-3slice"
    folder = tmp_path / "two"
    folder.mkdir()
    other = "1.2.826.0.1.3680043.8.498.4243"
    for k, f in enumerate(sorted(src.iterdir())):
        shutil.copy(f, folder / f"a{k}.dcm")
        if k < 2:
            ds = pydicom.dcmread(f)
            ds.SeriesInstanceUID, ds.SOPInstanceUID = other, f"{other}.{k}"
            ds.save_as(folder / f"b{k}.dcm")
    _, source = read_image(folder, series_uid=other)
    assert source.series["uid"] == other and source.series["chosen_by"] == "--series"
    assert not any("--series" in w for w in source.warnings)
