"""Loaded results are drawn by Slicer's real slice displayable managers over the CT (offscreen rendering)."""
import numpy as np
import SimpleITK as sitk

from AtlasSegModule import AtlasSegBridge as bridge
from slicer_marks import requires_opengl
from fake_engine import classTable, writeOutputFolder
from render_overlay import renderAxialOverlay


def _near(rgb, colour, tolerance=14):
    return (np.abs(rgb.astype(int) - np.asarray(colour)[None, None, :]) <= tolerance).all(axis=-1)


@requires_opengl
def test_phantom_segments_show_in_their_colours_over_the_ct(logic, slicer_app, tmp_path):
    from AtlasSegLib.phantom import make_phantom

    volume = logic.loadDemoPhantom(seed=0)
    phantom = make_phantom(seed=0, tumors=True)
    geometry = bridge.VolumeGeometry.fromVolumeNode(volume)
    # The phantom's truth, written as the engine writes its output, stands in for a model run.
    names = [n for n in ("liver", "liver_tumor", "spleen", "kidney_right", "kidney_left", "aorta")
             if n in phantom.labels]
    masks = {n: sitk.GetArrayFromImage(phantom.labels[n]) for n in names}
    outdir = writeOutputFolder(tmp_path / "out", geometry, masks, {}, classTable(names))
    results = logic.loadResults(outdir, volume)

    rgb = renderAxialOverlay(slicer_app, volume, results.segmentationNode, "liver_tumor", tmp_path / "overlay.png",
                             size=(320, 280))

    assert (tmp_path / "overlay.png").stat().st_size > 10_000
    colours = {c["name"]: c["color"] for c in classTable(names)}
    # Outlines are drawn in the segment colour at full opacity.
    assert _near(rgb, colours["liver"]).sum() > 100, "liver outline not visible"
    assert _near(rgb, colours["liver_tumor"]).sum() > 20, "tumor outline not visible"
    # The CT shows through: plenty of grey pixels (tissue inside the body) remain.
    grey = (np.ptp(rgb.astype(int), axis=-1) < 8) & (rgb.mean(axis=-1) > 40)
    assert grey.sum() > 0.1 * grey.size
