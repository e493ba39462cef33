"""Screenshot of the demo model's result on the phantom: an axial CT slice with the segmentation overlay, drawn
offscreen by Slicer's own slice displayable managers (no Qt, no X server).

Run from the repository root (needs the engine's demo model): ``.venv/bin/python Testing/slicer_module/render_overlay.py``
writes ``Resources/Screenshots/overlay.png``. ``test_screenshot.py`` uses ``renderAxialOverlay`` on known masks.
"""
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
for path in (HERE, REPO_ROOT / "AtlasSeg", REPO_ROOT):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import slicer_harness  # noqa: E402  (imports vtk, then slicer, in the order slicer-core needs)

OUTPUT = REPO_ROOT / "Resources" / "Screenshots" / "overlay.png"


def busiestAxialOffsetMm(volumeNode, mask: np.ndarray) -> float:
    """The axial slice position (RAS S, mm) where ``mask`` (KJI, on the volume's grid) has most voxels."""
    from AtlasSegModule import AtlasSegBridge as bridge

    k = int(np.argmax(mask.reshape(mask.shape[0], -1).sum(axis=1)))
    geometry = bridge.VolumeGeometry.fromVolumeNode(volumeNode)
    i, j = geometry.size[0] // 2, geometry.size[1] // 2
    return float((geometry.ijkToRas() @ [i, j, k, 1.0])[2])


def renderAxialOverlay(app, volumeNode, segmentationNode, focusSegmentId, path=None, size=(512, 512)) -> np.ndarray:
    """Render the axial slice through ``focusSegmentId``'s largest cross-section; return RGB (H, W, 3)."""
    from AtlasSegModule import AtlasSegBridge as bridge

    view = slicer_harness.SliceView(app, "Red", "Axial", size)
    view.show(volumeNode)
    displayNode = segmentationNode.GetDisplayNode()
    displayNode.SetOpacity2DFill(0.45)
    displayNode.SetOpacity2DOutline(1.0)
    focus = bridge.arrayFromSegment(segmentationNode, focusSegmentId, volumeNode)
    view.setOffset(busiestAxialOffsetMm(volumeNode, focus))
    return view.render(path)


def main() -> int:
    slicer_harness.installScriptedLoadableModuleStub()
    from AtlasSegModule import AtlasSegLogic

    app = slicer_harness.setup()
    logic = AtlasSegLogic.AtlasSegLogic()
    volume = logic.loadDemoPhantom()
    results = logic.runBlocking(volume, AtlasSegLogic.RunOptions(modelId=AtlasSegLogic.DEMO_MODEL_ID, device="cpu"),
                                python=sys.executable, timeoutSeconds=900, logCallback=print)
    focus = "liver_tumor" if "liver_tumor" in results.segmentIds else "liver"
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    renderAxialOverlay(app, volume, results.segmentationNode, focus, OUTPUT, size=(640, 560))
    print(f"{OUTPUT}: {', '.join(results.segmentIds)}")
    slicer_harness.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
