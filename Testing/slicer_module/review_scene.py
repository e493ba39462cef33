"""An AtlasSeg result with a tumor probability map, loaded into a real MRML scene, for the review tests.

The output folder is written in the engine's layout (``fake_engine.writeOutputFolder``) with the engine's gate
and minimum-size settings (``gate_dilation_mm`` 5, ``min_component_mm3`` 50 in ``probabilities/<tumor>.json``),
and the tumor mask is the engine's own rule (``postprocess.tumor_mask``) at threshold 0.5, so Slicer-side
thresholds can be compared with ``AtlasSegLib.review.ProbabilityMap.from_output`` on the same folder.

Probability map (in the liver's box), by design:
  * a true tumor, p 0.9 in its core with a halo falling to 0.05 (it grows as the threshold drops);
  * a false positive at p 0.35 (appears at the "high sensitivity" point 0.3);
  * a false positive at p 0.2 (appears only at "maximum sensitivity" 0.1);
  * a blob at p 0.9 outside the liver (removed by the gate at every threshold).
The liver also has a small stray island (for "keep largest per organ").
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from AtlasSegModule import AtlasSegBridge as bridge
from fake_engine import ball, classTable, writeOutputFolder

GEOMETRY = bridge.VolumeGeometry(size=(64, 56, 40), spacing=(1.5, 1.5, 2.0), origin=(40.0, 30.0, -20.0),
                                 directions=((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, 1.0)))
SHAPE = GEOMETRY.shapeKji()
NAMES = ["liver", "spleen", "liver_tumor"]
BOX_START_IJK = (6, 12, 4)
BOX_SIZE_IJK = (34, 34, 34)
GATE_DILATION_MM = 5.0
MIN_COMPONENT_MM3 = 50.0
LIVER_CENTRE_KJI = (20, 28, 22)
TRUE_TUMOR_BOX_KJI = (16, 16, 12)
FP_HIGH_BOX_KJI = (16, 6, 24)  # p 0.35, in the true tumor's axial slice
FP_MAX_BOX_KJI = (24, 24, 22)  # p 0.2
OUTSIDE_BOX_KJI = (30, 30, 30)  # p 0.9, outside the gate
LIVER_ISLAND_KJI = (6, 45, 6)


@dataclass
class ReviewScene:
    volume: object
    outdir: Path
    results: object  # AtlasSegLogic.LoadedResults
    masks: dict  # structure -> full-grid uint8 mask as written

    @property
    def segmentationNode(self):
        return self.results.segmentationNode

    def boxToFullKji(self, kji) -> tuple:
        return tuple(int(a + b) for a, b in zip(kji, BOX_START_IJK[::-1]))

    def rasOfKji(self, kji) -> tuple:
        return tuple(float(v) for v in (GEOMETRY.ijkToRas() @ [kji[2], kji[1], kji[0], 1.0])[:3])


def probabilityBox() -> np.ndarray:
    shape = BOX_SIZE_IJK[::-1]
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    centre = np.array(TRUE_TUMOR_BOX_KJI)
    distance = np.sqrt((k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2)
    p = np.clip(0.9 - 0.15 * np.maximum(distance - 2.0, 0.0), 0.0, 0.9)  # core 0.9, halo down to 0
    p[ball(shape, FP_HIGH_BOX_KJI, 2.5)] = 0.35
    p[ball(shape, FP_MAX_BOX_KJI, 2.5)] = 0.2
    p[ball(shape, OUTSIDE_BOX_KJI, 3)] = 0.9
    return np.clip(np.rint(p * 255.0), 0, 255).astype(np.uint8)


def engineTumorMask(q: np.ndarray, liver: np.ndarray, threshold: float) -> np.ndarray:
    """The engine's tumor mask on the full grid (gate = liver dilated, dust < 50 mm³ removed)."""
    from AtlasSegLib.postprocess import dilate_mm, tumor_mask

    box = tuple(slice(s, s + n) for s, n in zip(BOX_START_IJK[::-1], BOX_SIZE_IJK[::-1]))
    gate = dilate_mm(liver[box].astype(np.uint8), GEOMETRY.spacing[::-1], GATE_DILATION_MM)
    full = np.zeros(SHAPE, np.uint8)
    full[box] = tumor_mask(q, gate, threshold=threshold, voxel_mm3=float(np.prod(GEOMETRY.spacing)),
                           min_mm3=MIN_COMPONENT_MM3)
    return full


def libraryMask(outdir: Path, threshold: float) -> np.ndarray:
    """What ``AtlasSegLib.review`` says the tumor is at ``threshold``, on the full grid."""
    from AtlasSegLib.review import ProbabilityMap

    pm = ProbabilityMap.from_output(outdir, "liver_tumor")
    full = np.zeros(SHAPE, np.uint8)
    full[pm.box_slices] = pm.mask(threshold)
    return full


def makeReviewScene(logic, folder: Path) -> ReviewScene:
    # Air around an elliptic body of soft tissue in a fat rim, with a little noise, so screenshots look like CT.
    k, j, i = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    body = ((j - 28) / 26.0) ** 2 + ((i - 32) / 31.0) ** 2
    ct = np.where(body <= 1.0, np.where(body > 0.8, -90, 35), -1000).astype(np.int16)
    ct = np.broadcast_to(ct, SHAPE).copy()
    ct += np.random.default_rng(0).normal(0, 6, SHAPE).astype(np.int16)
    liver = ball(SHAPE, LIVER_CENTRE_KJI, 14).astype(np.uint8)
    liver[ball(SHAPE, LIVER_ISLAND_KJI, 2)] = 1
    spleen = ball(SHAPE, (20, 28, 54), 7).astype(np.uint8)
    ct[liver > 0] += 25
    ct[spleen > 0] += 10
    q = probabilityBox()
    tumor = engineTumorMask(q, liver, 0.5)
    ct[tumor > 0] -= 45
    volume = bridge.volumeNodeFromArray(ct, GEOMETRY, "Review CT")
    masks = {"liver": liver, "spleen": spleen, "liver_tumor": tumor}
    outdir = writeOutputFolder(folder, GEOMETRY, masks, {"liver_tumor": (q, BOX_START_IJK, ["liver"], 0.5)},
                               classTable(NAMES))
    metaPath = outdir / "probabilities" / "liver_tumor.json"
    meta = json.loads(metaPath.read_text())
    meta.update(gate_dilation_mm=GATE_DILATION_MM, min_component_mm3=MIN_COMPONENT_MM3)
    metaPath.write_text(json.dumps(meta))
    results = logic.loadResults(outdir, volume)
    display = volume.GetDisplayNode()
    display.AutoWindowLevelOff()
    display.SetWindowLevel(400, 40)
    return ReviewScene(volume, outdir, results, masks)


def makeEditor(app, segmentationNode, volume, segmentId):
    """A real vtkSlicerSegmentEditorLogic + vtkMRMLSegmentEditorNode on the segmentation (headless)."""
    import slicer

    editorNode = app.scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor = slicer.vtkSlicerSegmentEditorLogic()
    editor.SetMRMLScene(app.scene)
    editor.SetMRMLApplicationLogic(app.appLogic)
    editor.SetSegmentEditorNode(editorNode)
    editor.SetSegmentationNode(segmentationNode)
    editor.SetSourceVolumeNode(volume)
    editor.SetCurrentSegmentID(segmentId)
    editorNode.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)
    return editor


def segmentArray(scene: ReviewScene, name: str) -> np.ndarray:
    return bridge.arrayFromSegment(scene.segmentationNode, name, scene.volume)
