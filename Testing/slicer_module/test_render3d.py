"""The report's 3D overview, drawn by Slicer's real 3D displayable managers offscreen (slicer-core, Mesa EGL):
the output folder's masks as surfaces seen from the front, and its place in the report."""
import json
import re

import numpy as np
import pytest
from PIL import Image

from AtlasSegModule import AtlasSegRender
from slicer_marks import requires_opengl

from AtlasSegLib.runedit import rethreshold
from AtlasSegLib.report import build_report
from report_cases import real_ct_output
from testdata import ct_data_dir


@pytest.fixture
def case(tmp_path):
    data = ct_data_dir()
    if not (data / "totalseg_abdomen_sm" / "example_ct_sm.nii.gz").is_file():
        pytest.fail(f"real CT test data not found at {data}; set ATLASSEG_TEST_DATA to the ctdata folder")
    return real_ct_output(data, tmp_path / "case")


def _hue_masks(rgb):
    r, g, b = (rgb[..., c].astype(int) for c in range(3))
    bright = rgb.max(axis=-1) > 50
    # Spleen (157, 108, 162): blue about red, both above green. Liver/kidneys (221, 130, 101 / 185, 102, 83):
    # red well above blue. Shading scales the channels, so ratios, not values.
    purple = bright & (b > g + 15) & (r > g + 15) & (b > 0.8 * r)
    orange = bright & (r > b + 40) & (r > g + 25) & (g > b)
    return purple, orange


@requires_opengl
def test_3d_overview_shows_the_organs_from_the_front_with_the_patients_right_on_the_left(case, slicer_app):
    assert AtlasSegRender.main([str(case)]) == 0  # the documented command: picture, then the report
    path = case / "pictures" / "3d.png"
    rgb = np.asarray(Image.open(path).convert("RGB"))
    width, height = AtlasSegRender.DEFAULT_SIZE
    # Cropped to the surfaces (this CT is a 9 cm slab: wide and low), plus the title band.
    assert rgb.shape[1] <= width and 100 < rgb.shape[0] < height and rgb.shape[2] == 3
    drawn = rgb.max(axis=-1) > 30
    assert 0.3 < drawn.mean() < 0.95, "the surfaces should fill most of the cropped picture"
    purple, orange = _hue_masks(rgb)
    assert purple.sum() > 500 and orange.sum() > 2000
    # Seen from the front, the spleen (patient's left) is on the image's right of the liver.
    assert np.argwhere(purple)[:, 1].mean() > np.argwhere(orange)[:, 1].mean() + 50
    report = json.loads((case / "report.json").read_text())["report"]
    assert report["pictures"]["3d"] == "pictures/3d.png"
    # Every picture of the report, the 3D view among them, is embedded in the page.
    pngs = set(re.findall(r'"(pictures/[^"]+\.png)"', json.dumps(report["pictures"])))
    assert "pictures/3d.png" in pngs
    assert (case / "report.html").read_text().count("data:image/png;base64,") == len(pngs)


@requires_opengl
def test_report_leaves_out_a_3d_picture_older_than_the_masks(case, slicer_app):
    AtlasSegRender.renderOutputFolder(case)
    assert build_report(case).report["report"]["pictures"]["3d"] == "pictures/3d.png"
    # A threshold change rewrites the tumor mask: the 3D picture no longer shows the segmentation.
    result = rethreshold(case, {"liver_tumor": 0.3})
    section = result["report"]
    assert section["pictures"]["3d"] is None
    assert any("3d.png is older than the masks" in note for note in section["notes"])
    assert (case / "pictures" / "3d.png").is_file()  # kept for the user to redraw, not silently deleted


def test_render_refuses_a_folder_without_masks(tmp_path, capsys):
    (tmp_path / "report.json").write_text("{}")
    assert AtlasSegRender.main([str(tmp_path), "--no-report"]) == 2
    assert "is not an AtlasSeg" in capsys.readouterr().err  # the run owner: no run folder, or a report.json that is none
