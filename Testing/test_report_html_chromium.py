"""report.html as a browser draws it: headless Chromium (Debian package ``chromium``) takes a screenshot of the
page opened from disk, offline, and the screenshot must show the header, the tables and the pictures.

``make test`` installs Chromium when it is missing and the machine allows it (root with apt-get); elsewhere this
test is skipped and says why.
"""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from AtlasSegLib.report import build_report
from report_cases import real_ct_output

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium; "
    "'make test' installs it when run as root)")

WIDTH, HEIGHT = 1280, 1800
HEADER_BLUE = (0x1F, 0x3A, 0x5F)  # report/html_page.py CSS: header band
TABLE_HEAD = (0xDD, 0xE6, 0xF2)  # report/html_page.py CSS: th background


def screenshot(page, png, tmp_path):
    """Chromium's own rendering of ``page`` (a local file: nothing is fetched from the network)."""
    command = [CHROMIUM, "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}",
               f"--window-size={WIDTH},{HEIGHT}", f"--screenshot={png}", page.as_uri()]
    # The sandbox needs user namespaces, which root in a container does not get.
    command.insert(1, "--no-sandbox")
    done = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0 and png.is_file(), done.stderr[-2000:]
    return np.asarray(Image.open(png).convert("RGB")).astype(int)


def _near(rgb, colour, tolerance=3):
    return (np.abs(rgb - np.asarray(colour)[None, None, :]) <= tolerance).all(axis=-1)


def test_report_page_shows_header_tables_and_pictures_in_chromium(ctdata, tmp_path):
    out = real_ct_output(ctdata, tmp_path / "case")
    result = build_report(out)
    rgb = screenshot(result.html_path, tmp_path / "report.png", tmp_path)
    assert rgb.shape == (HEIGHT, WIDTH, 3)
    background = _near(rgb, (255, 255, 255), 0)
    # Not blank: most of a report page is white, but a fair part is text, tables and pictures.
    assert 0.3 < background.mean() < 0.95
    # The header band spans the page's top.
    assert _near(rgb[:40], HEADER_BLUE).mean() > 0.8
    # Table header cells: rows of the th colour, in the upper part where the tumor tables are.
    th_rows = np.nonzero(_near(rgb, TABLE_HEAD).sum(axis=1) > 300)[0]
    assert th_rows.size > 20 and th_rows.min() < 400
    # The overview picture (black background) and the tumor slices (grey CT) are drawn, not broken images.
    dark = (rgb.max(axis=-1) < 20)
    assert dark.sum() > 40_000
    grey = (np.ptp(rgb, axis=-1) < 6) & (rgb.mean(axis=-1) > 60) & (rgb.mean(axis=-1) < 200)
    assert grey.sum() > 60_000
    # And the text is there: dark text pixels inside the first table's band, left of its right edge.
    first_table = rgb[th_rows.min(): th_rows.min() + 60, :900]
    assert ((first_table.mean(axis=-1) < 90).sum()) > 200


def test_page_without_tumors_shows_every_structure_outlined_on_ct_slices_in_chromium(ctdata, tmp_path):
    from AtlasSegLib.runedit import rethreshold

    out = real_ct_output(ctdata, tmp_path / "case")
    rethreshold(out, {"liver_tumor": 0.99})  # no tumor left: the structure pictures must still be there
    result = build_report(out, anonymize=True)
    assert result.report["report"]["tumor_summary"]["liver_tumor"]["count"] == 0
    rgb = screenshot(result.html_path, tmp_path / "report.png", tmp_path)
    # The axial and coronal slices: CT greys, drawn 1:1 (the pictures fit the page's width).
    grey = (np.ptp(rgb, axis=-1) < 6) & (rgb.mean(axis=-1) > 60) & (rgb.mean(axis=-1) < 200)
    assert grey.sum() > 60_000
    # Each structure's outline in its own colour, far more pixels than the three legends' swatches (~600).
    colours = {s["name"]: tuple(s["color"]) for s in result.report["structures"]}
    for name in ("spleen", "aorta", "pancreas"):
        assert _near(rgb, colours[name], 2).sum() > 800, name
