"""gallery.html as a reviewer uses it, in headless Chromium driven through the DevTools protocol
(``chromium_devtools.py``): real mouse clicks and typing mark cases, *Download marks* saves review_marks.json
through the browser's own download, ``atlasseg summarize`` reads that file back, and the marks survive reopening
the page (localStorage).

The cases are written by the pipeline's OutputWriter from phantom truth masks (no model run, and no overview.png:
the gallery draws their projections itself with overview.py). ``make test`` installs Chromium when it is missing
and the machine allows it; elsewhere this test is skipped and says why.
"""
from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from AtlasSegLib import cli
from chromium_devtools import CHROMIUM, Browser
from testdata import make_run

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium; "
    "'make test' installs it when run as root)")

STRUCTURES = ("liver", "spleen", "kidney_right", "kidney_left", "aorta")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from AtlasSegLib.phantom import make_phantom

    root = tmp_path_factory.mktemp("gallery")
    for seed in (4, 5, 6):
        phantom = make_phantom(seed, tumors=False, size=(96, 80, 48), spacing_mm=(4.0, 4.0, 5.0))
        case = root / "data" / f"BDMAP_{seed:08d}"
        case.mkdir(parents=True)
        sitk.WriteImage(phantom.image, str(case / "ct.nii.gz"))
        masks = {n: sitk.GetArrayFromImage(phantom.labels[n]) for n in STRUCTURES}
        make_run(root / "results" / case.name, case / "ct.nii.gz", masks)
    # One case with a warning, which must put it first on the page.
    report_path = root / "results" / "BDMAP_00000005" / "report.json"
    report = json.loads(report_path.read_text())
    report["warnings"].append("coverage: under 30 mm of the scan shows a trunk-sized body cross-section")
    report_path.write_text(json.dumps(report))
    assert cli.main(["summarize", str(root / "results")]) == 0
    return root / "results"


def test_reviewer_marks_cases_downloads_marks_and_atlasseg_reads_them(results, tmp_path, capsys):
    page = (results / "gallery.html").as_uri()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with Browser(tmp_path / "profile", width=1280, height=900) as browser:
        browser.open(page)
        # The warned case is first; every thumbnail is drawn (decoded, not a broken image).
        order = browser.js("Array.from(document.querySelectorAll('section.case')).map(c => c.dataset.case)")
        assert order[0] == "BDMAP_00000005" and len(order) == 3
        assert browser.js("Array.from(document.images).every(i => i.complete && i.naturalWidth > 100)")
        assert browser.js("document.getElementById('counts').textContent") == \
            "0 accepted · 0 to revise · 3 unreviewed"
        browser.click("#case-BDMAP_00000004 button.accept")
        browser.click("#case-BDMAP_00000005 button.revise")
        browser.click("#case-BDMAP_00000005 .note")
        browser.type("coverage: check the field of view")
        assert browser.js("document.getElementById('counts').textContent") == \
            "1 accepted · 1 to revise · 1 unreviewed"
        browser.screenshot(tmp_path / "gallery.png")
        browser.allow_downloads(downloads)
        browser.click("#download")
        done = browser.wait_download()
        assert done["state"] == "completed", done
        # Reopened, the page shows the marks kept in the browser. Chromium hands a page's localStorage writes to
        # its browser process asynchronously, so a document opened at once in a new renderer may not see them
        # yet (CI, under load, saw the marks missing): reopen until they show, for at most 10 s.
        want = {"BDMAP_00000004": "accept", "BDMAP_00000005": "revise", "BDMAP_00000006": ""}
        deadline = time.monotonic() + 10.0
        while True:
            browser.open(page)
            marks = browser.js("Object.fromEntries(Array.from(document.querySelectorAll('section.case'))"
                               ".map(c => [c.dataset.case, c.dataset.mark]))")
            if marks == want or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert marks == want
        assert browser.js("document.querySelector('#case-BDMAP_00000005 .note').value") == \
            "coverage: check the field of view"
        # Clicking a pressed button again clears the mark.
        browser.click("#case-BDMAP_00000004 button.accept")
        assert browser.js("document.querySelector('#case-BDMAP_00000004').dataset.mark") == ""

    downloaded = downloads / "review_marks.json"
    assert downloaded.is_file()
    shutil.copy(downloaded, results / "review_marks.json")
    assert cli.main(["summarize", str(results)]) == 0
    out = capsys.readouterr().out
    assert "1 accepted, 1 to revise, 1 unreviewed" in out
    assert "revise BDMAP_00000005: coverage: check the field of view" in out

    # The screenshot shows the page: the header band, three cards with their (dark) projections, the marked cards'
    # green and orange edges.
    rgb = np.asarray(Image.open(tmp_path / "gallery.png").convert("RGB")).astype(int)
    header = np.abs(rgb[:40] - np.array([0x1F, 0x3A, 0x5F])).max(axis=-1) <= 3
    assert header.mean() > 0.8
    # Three 220 × 138 thumbnails, a third or so of each the black air around the body (the page has no black).
    assert (rgb.max(axis=-1) < 30).sum() > 15_000
    green = np.abs(rgb - np.array([0x2E, 0x9D, 0x4A])).max(axis=-1) <= 3
    orange = np.abs(rgb - np.array([0xD9, 0x82, 0x2B])).max(axis=-1) <= 3
    assert green.sum() > 500 and orange.sum() > 500
