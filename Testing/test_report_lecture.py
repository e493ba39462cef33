"""Lecture pictures ('atlasseg report RUN --lecture'): slide-sized copies of the structure and tumor pictures
with large text and each structure named on the image; the report page's own pictures stay as they were."""
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from AtlasSegLib.cli import main
from AtlasSegLib.phantom import make_phantom
from AtlasSegLib.overview import text_font
from AtlasSegLib.report import LECTURE_HEIGHT_PX, LECTURE_WIDTH_PX, build_report
from AtlasSegLib.report.pictures import _draw_outlines
from testdata import make_run

COARSE = {"size": (96, 80, 48), "spacing_mm": (4.0, 4.0, 5.0)}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lecture")
    ph = make_phantom(6, tumor_count=2, tumor_diameter_mm=(20, 28), **COARSE)
    sitk.WriteImage(ph.image, str(folder / "ct.nii.gz"))
    masks = {n: sitk.GetArrayFromImage(ph.labels[n]) for n in ("liver", "spleen", "liver_tumor")}
    return make_run(folder / "out", folder / "ct.nii.gz", masks, "atlasseg-demo")


def test_lecture_pictures_are_slide_sized_and_leave_the_page_pictures_alone(run):
    build_report(run)
    page = {p.name: p.read_bytes() for p in (run / "pictures").glob("*.png")}
    assert main(["report", str(run), "--lecture"]) == 0
    assert {p.name: p.read_bytes() for p in (run / "pictures").glob("*.png")} == page
    lecture = {p.stem: Image.open(p).size for p in (run / "pictures" / "lecture").glob("*.png")}
    assert lecture["structures_axial"][0] == LECTURE_WIDTH_PX
    assert lecture["structures_coronal"] == (LECTURE_WIDTH_PX, LECTURE_HEIGHT_PX)
    tumors = [k for k in lecture if k.startswith("liver_tumor_")]
    assert tumors and all(lecture[k] == (LECTURE_HEIGHT_PX, LECTURE_HEIGHT_PX) for k in tumors)
    import json

    listed = json.loads((run / "report.json").read_text())["report"]["pictures"]["lecture"]
    assert sorted(listed) == sorted(f"pictures/lecture/{k}.png" for k in lecture)

    # Lecture pictures are drawn on the CT: asked for without pictures, the command refuses (exit 2).
    assert main(["report", str(run), "--no-pictures", "--lecture"]) == 2


def test_structure_names_are_written_inside_the_structure_in_its_colour_at_the_font_size():
    grey = np.full((300, 500), 90, np.uint8)
    mask = np.zeros_like(grey, bool)
    mask[60:240, 80:420] = True
    colour = (230, 40, 40)
    for size in (11, 28):
        rgb = np.asarray(_draw_outlines(grey, [("liver", colour, mask)], (500, 300), font=text_font(size), line=2))
        inner = np.zeros_like(mask)
        inner[70:230, 90:410] = True  # away from the outline: only the name can be coloured there
        rows, cols = np.nonzero(inner & (np.abs(rgb.astype(int) - colour).max(axis=-1) <= 30))
        assert rows.size > 0, "no name drawn inside the structure"
        assert 0.5 * size <= np.ptp(rows) + 1 <= 1.5 * size  # glyph height follows the font
        assert abs(cols.mean() - 250) < 20 and abs(rows.mean() - 150) < 20  # at the structure's centre
