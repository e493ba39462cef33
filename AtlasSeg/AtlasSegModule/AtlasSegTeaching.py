"""The Teaching section's logic: synthetic tumors placed by a teacher, their truth, one undo step per insert.

Qt-free (tested headless against slicer-core's real MRML classes); the panel (``AtlasSegTeachingPanel``) only
reads its controls and calls these functions.

* **Insert** (``TeachingLogic.insertTumor``): the tumor is made by ``AtlasSegLib.synthesize.insert_tumors`` at
  the clicked voxel (organ = a chosen segment of an existing segmentation, or none: then the contrast is relative
  to the soft tissue around the point) and written into the CT volume node in place. The synthesizer is given
  the box of ``cropAround`` (1.5 diameters + 15 mm each way of the point), not the whole CT: the organ-wide
  distance maps it computes took 17 s on a 512x512x160 CT and take under a second on the box; the organ's mean
  HU the contrast refers to is then the organ's around the tumor.
* **Undo** (``TeachingLogic.undoInsert``): before writing, the insert keeps a copy of the volume's voxels in the
  box where anything changed (the smallest box holding every voxel whose value differs, grown to the
  synthesizer's own ``changed`` box). Undo writes that copy back into the same box: the other voxels were
  never touched, so the volume is bit-identical to what it was. Inserts are undone last-first; each insert is
  one step (its voxels and its truth segment go together). The copy is of the box only, a few hundred kB for a
  3 cm tumor, not the whole CT.
* **Truth**: each tumor becomes a segment of the "Teaching truth" segmentation (one per CT), hidden until the
  teacher reveals the answers (``setAnswersVisible``); ``showBeside`` puts the truth in one slice view and the
  model's result in another, side by side on the same CT.
* **Demo phantom** with the teaching controls (``loadPhantom``): tumor count, diameters, contrast, and the
  structures whose truth is loaded into "Teaching truth" (hidden too).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import SimpleITK as sitk
import vtk

import slicer

from AtlasSegModule import AtlasSegBridge as bridge
from AtlasSegLib.errors import InputError

TRUTH_NAME_SUFFIX = "Teaching truth"
TRUTH_ROLE = "AtlasSegTeachingTruth"  # CT volume -> its "Teaching truth" segmentation
ATTRIBUTE = "AtlasSeg.Teaching."
DEFAULT_DIAMETER_MM = 20.0
DEFAULT_CONTRAST_HU = -60.0
DIAMETER_RANGE_MM = (3.0, 80.0)  # as the phantom's and the synthesizer's limits
CONTRAST_RANGE_HU = (-300.0, 300.0)
TUMOR_COLOR = (1.0, 0.85, 0.0)  # yellow: the truth, apart from the model's tumor colour


@dataclass
class Insertion:
    """One insert, everything its undo needs."""

    volumeId: str
    box: tuple  # KJI slices of the voxels that may have changed
    before: np.ndarray  # the volume's voxels in ``box`` before the insert (exact copy, same dtype)
    shapeKji: tuple
    truthNodeId: str
    segmentId: str
    tumor: dict = field(default_factory=dict)  # centre, diameter, contrast as the synthesizer reports them
    changedVoxels: int = 0


def organNameOf(segmentName: str) -> str:
    """The synthesizer's organ (liver, pancreas or kidney: its contrast defaults) for a segment's name."""
    name = (segmentName or "").lower()
    if "pancrea" in name:
        return "pancreas"
    if "kidney" in name or "renal" in name:
        return "kidney"
    return "liver"


def pointToKji(volumeNode, pointRas) -> tuple:
    """The (k, j, i) voxel of ``volumeNode`` nearest a world (RAS) point; ``ValueError`` outside the volume."""
    point = np.asarray(pointRas, float)
    transformNode = volumeNode.GetParentTransformNode()
    if transformNode is not None:  # the volume sits under a transform: go to its own coordinates first
        fromWorld = vtk.vtkGeneralTransform()
        transformNode.GetTransformFromWorld(fromWorld)
        point = np.asarray(fromWorld.TransformPoint(*point), float)
    geometry = bridge.VolumeGeometry.fromVolumeNode(volumeNode)
    ijk = np.linalg.solve(geometry.ijkToRas(), np.append(point, 1.0))[:3]
    index = np.rint(ijk).astype(int)
    if np.any(index < 0) or np.any(index >= np.asarray(geometry.size)):
        raise ValueError(f"the point R {point[0]:.1f}, A {point[1]:.1f}, S {point[2]:.1f} mm is outside "
                         f"{volumeNode.GetName()}: click inside the CT")
    return int(index[2]), int(index[1]), int(index[0])


def cropAround(shapeKji, centreKji, spacingKji, diameterMm: float) -> tuple:
    """KJI slices of the box the synthesizer sees: 1.5 diameters + 15 mm each way of the centre (room for the
    deformed tumor, its soft edge and the organ around it), clipped to the volume."""
    half = 1.5 * float(diameterMm) + 15.0
    return tuple(slice(max(0, int(c - np.ceil(half / sp))), min(int(n), int(c + np.ceil(half / sp)) + 1))
                 for c, sp, n in zip(centreKji, spacingKji, shapeKji))


def _boxOf(changed: np.ndarray, extra=None) -> Optional[tuple]:
    """KJI slices of the smallest box holding every True voxel of ``changed`` and the slices ``extra``."""
    lo, hi = [], []
    for axis in range(3):
        hit = np.flatnonzero(changed.any(axis=tuple(a for a in range(3) if a != axis)))
        a, b = (int(hit[0]), int(hit[-1]) + 1) if hit.size else (None, None)
        if extra is not None and extra[axis].start is not None:
            s = extra[axis]
            a = s.start if a is None else min(a, s.start)
            b = s.stop if b is None else max(b, s.stop)
        if a is None:
            return None
        lo.append(a)
        hi.append(b)
    return tuple(slice(a, b) for a, b in zip(lo, hi))


def _segmentLabelmap(mask: np.ndarray, geometry: bridge.VolumeGeometry, offsetKji=(0, 0, 0)):
    """The mask's bounding box as an oriented labelmap placed in the full grid (extent), not a full-size copy.
    ``mask`` may be a part of the grid starting at voxel ``offsetKji``."""
    box = _boxOf(mask)
    part = np.ascontiguousarray(mask[box] != 0, dtype=np.uint8)
    image = bridge.orientedImageFromArray(part, bridge.VolumeGeometry(
        part.shape[::-1], geometry.spacing, geometry.origin, geometry.directions))
    k, j, i = (s.start + o for s, o in zip(box, offsetKji))
    image.SetExtent(i, i + part.shape[2] - 1, j, j + part.shape[1] - 1, k, k + part.shape[0] - 1)
    return image


class TeachingLogic:
    """Inserts, undo stack, truth segmentation and answer visibility. One instance per module widget."""

    def __init__(self):
        self._undo: list = []
        self._inserted = 0  # seeds: insert n uses seed baseSeed + n, so a session can be replayed

    # -------------------------------------------------------------------------------------------- truth
    @staticmethod
    def truthNode(volumeNode, create: bool = False):
        """The "Teaching truth" segmentation of ``volumeNode`` (made hidden on its grid with ``create``)."""
        node = volumeNode.GetNodeReference(TRUTH_ROLE)
        if node is not None or not create:
            return node
        scene = slicer.mrmlScene
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                       scene.GenerateUniqueName(f"{volumeNode.GetName()} {TRUTH_NAME_SUFFIX}"))
        node.CreateDefaultDisplayNodes()
        node.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        node.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        node.GetSegmentation().SetSourceRepresentationName(
            slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
        node.SetAttribute(ATTRIBUTE + "Truth", "1")
        node.GetDisplayNode().SetVisibility(False)  # answers start hidden: the students look first
        volumeNode.SetNodeReferenceID(TRUTH_ROLE, node.GetID())
        return node

    @staticmethod
    def addTruthSegment(truthNode, mask: np.ndarray, geometry: bridge.VolumeGeometry, name: str,
                        color=TUMOR_COLOR, offsetKji=(0, 0, 0)) -> str:
        """Add ``mask`` (KJI, on ``geometry``, or the part of it from voxel ``offsetKji``) as a new segment;
        returns its id."""
        segment = slicer.vtkSegment()
        segment.SetName(name)
        segment.SetColor(*color)
        segment.AddRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(),
                                  _segmentLabelmap(mask, geometry, offsetKji))
        segmentation = truthNode.GetSegmentation()
        segmentId = segmentation.GenerateUniqueSegmentID(name.replace(" ", "_"))
        segmentation.AddSegment(segment, segmentId)
        return segmentId

    @staticmethod
    def setAnswersVisible(volumeNode, visible: bool) -> bool:
        """Show or hide the volume's "Teaching truth" (all its segments, 2D and 3D); False when it has none."""
        node = TeachingLogic.truthNode(volumeNode)
        if node is None or node.GetDisplayNode() is None:
            return False
        node.GetDisplayNode().SetVisibility(bool(visible))
        return True

    @staticmethod
    def answersVisible(volumeNode) -> bool:
        node = TeachingLogic.truthNode(volumeNode)
        return bool(node is not None and node.GetDisplayNode() is not None and node.GetDisplayNode().GetVisibility())

    @staticmethod
    def showBeside(truthNode, resultNode, truthViewIds, resultViewIds) -> list:
        """The truth only in ``truthViewIds`` and the model's result only in ``resultViewIds`` (slice/3D view
        node ids): with two slice views side by side on the same CT, the answer is beside the result.

        Returns what ``restoreViews`` needs to show both where they were shown before (otherwise the result
        stayed missing from the 3D view and the other slice views, and the scene was saved that way)."""
        saved = []
        for node, viewIds in ((truthNode, truthViewIds), (resultNode, resultViewIds)):
            if node is None or node.GetDisplayNode() is None:
                continue
            display = node.GetDisplayNode()
            saved.append((display, [display.GetNthViewNodeID(i) for i in range(display.GetNumberOfViewNodeIDs())]))
            display.RemoveAllViewNodeIDs()
            for viewId in viewIds:
                display.AddViewNodeID(viewId)
        return saved

    @staticmethod
    def restoreViews(saved) -> None:
        """Undo ``showBeside``: each display node back to the views it had (none listed: all views)."""
        for display, viewIds in saved or ():
            display.RemoveAllViewNodeIDs()
            for viewId in viewIds:
                display.AddViewNodeID(viewId)

    # ------------------------------------------------------------------------------------------- insert
    def insertTumor(self, volumeNode, pointRas, *, diameterMm: float = DEFAULT_DIAMETER_MM,
                    contrastHu: float = DEFAULT_CONTRAST_HU, organSegmentation=None, organSegmentId=None,
                    baseSeed: int = 0) -> Insertion:
        """Insert one synthetic tumor centred at the world point ``pointRas`` into ``volumeNode`` (in place) and
        its truth into the volume's "Teaching truth" segmentation; one undo step.

        Raises ``ValueError`` for a point outside the volume and ``AtlasSegLib.errors.InputError`` for what the
        synthesizer refuses (a point outside the organ, a size out of range), with the message to show."""
        # here: synthesize needs scipy, installed by the module on first run; this file loads at Slicer's start
        from AtlasSegLib.synthesize import insert_tumors

        if volumeNode is None or volumeNode.GetImageData() is None:
            raise ValueError("select a CT volume that has voxels")
        lo, hi = DIAMETER_RANGE_MM
        if not lo <= diameterMm <= hi:
            raise ValueError(f"diameter {diameterMm:g} mm: choose {lo:g}-{hi:g} mm")
        lo, hi = CONTRAST_RANGE_HU
        if not lo <= contrastHu <= hi:
            raise ValueError(f"contrast {contrastHu:g} HU: choose {lo:g} to {hi:g} HU")
        centre = pointToKji(volumeNode, pointRas)
        geometry = bridge.VolumeGeometry.fromVolumeNode(volumeNode)
        voxels = slicer.util.arrayFromVolume(volumeNode)  # a view: only the crop is copied
        crop = cropAround(voxels.shape, centre, geometry.spacing[::-1], diameterMm)
        ct = np.array(voxels[crop], copy=True)
        organ, organName = None, "liver"
        if organSegmentation is not None and organSegmentId:
            organ = bridge.arrayFromSegment(organSegmentation, organSegmentId, volumeNode)[crop].astype(bool)
            segment = organSegmentation.GetSegmentation().GetSegment(organSegmentId)
            organName = organNameOf(segment.GetName() if segment is not None else organSegmentId)
        local = tuple(c - s.start for c, s in zip(centre, crop))
        if organ is not None and not organ[local]:
            # Said here: in the box the synthesizer gets, an organ the point misses may be absent altogether.
            raise InputError(f"the point is outside the {organName} segment: click inside the organ, or choose "
                             "no organ")
        result = insert_tumors(ct, organ, geometry.spacing[::-1], organ_name=organName, count=1,
                               diameter_mm=(float(diameterMm), float(diameterMm)), contrast_hu=float(contrastHu),
                               centers_zyx=[local], seed=int(baseSeed) + self._inserted)
        if result.ct.shape != ct.shape or result.ct.dtype != ct.dtype:
            raise RuntimeError(f"the synthesizer returned {result.ct.shape} {result.ct.dtype} for a "
                               f"{ct.shape} {ct.dtype} CT")
        mask = np.asarray(result.mask, bool)
        if not mask.any():
            raise ValueError("no tumor could be placed there (the organ has no voxels around the point)")
        differs = result.ct != ct
        inCrop = _boxOf(differs | mask, result.changed if result.changed else None)
        box = tuple(slice(c.start + b.start, c.start + b.stop) for c, b in zip(crop, inCrop))
        before = ct[inCrop].copy()

        # The voxels change in place through Slicer's own array view, so every view and observer updates.
        voxels[box] = result.ct[inCrop]
        slicer.util.arrayFromVolumeModified(volumeNode)

        tumor = dict(result.tumors[0]) if result.tumors else {}
        truth = self.truthNode(volumeNode, create=True)
        number = truth.GetSegmentation().GetNumberOfSegments() + 1
        label = f"Tumor {number} ({diameterMm:.0f} mm, {contrastHu:+.0f} HU)"
        segmentId = self.addTruthSegment(truth, mask, geometry, label, offsetKji=tuple(s.start for s in crop))
        insertion = Insertion(volumeId=volumeNode.GetID(), box=box, before=before, shapeKji=tuple(voxels.shape),
                              truthNodeId=truth.GetID(), segmentId=segmentId, tumor=tumor,
                              changedVoxels=int(np.count_nonzero(differs)))
        self._undo.append(insertion)
        self._inserted += 1
        return insertion

    def canUndo(self, volumeNode=None) -> bool:
        """Whether there is an insert to undo (on ``volumeNode``, if given: the last insert must be on it)."""
        if not self._undo:
            return False
        return volumeNode is None or self._undo[-1].volumeId == volumeNode.GetID()

    def undoInsert(self) -> Insertion:
        """Undo the last insert: the volume's voxels in its box back to the saved copy, its truth segment gone."""
        if not self._undo:
            raise ValueError("there is no inserted tumor to undo")
        insertion = self._undo[-1]
        volumeNode = slicer.mrmlScene.GetNodeByID(insertion.volumeId)
        if volumeNode is None:
            self._undo.pop()
            raise ValueError("the CT of the last insert was removed from the scene: nothing to undo")
        voxels = slicer.util.arrayFromVolume(volumeNode)
        if tuple(voxels.shape) != insertion.shapeKji:
            raise ValueError(f"{volumeNode.GetName()} changed size since the insert: it cannot be undone")
        voxels[insertion.box] = insertion.before
        slicer.util.arrayFromVolumeModified(volumeNode)
        truth = slicer.mrmlScene.GetNodeByID(insertion.truthNodeId)
        if truth is not None and truth.GetSegmentation().GetSegment(insertion.segmentId) is not None:
            truth.GetSegmentation().RemoveSegment(insertion.segmentId)
        self._undo.pop()
        self._inserted -= 1
        return insertion

    def forgetVolume(self, volumeNode=None) -> None:
        """Drop the undo steps of a volume, or all of them with None (the scene closed)."""
        self._undo = [i for i in self._undo if volumeNode is not None and i.volumeId != volumeNode.GetID()]

    # ------------------------------------------------------------------------------------ demo phantom
    @staticmethod
    def loadPhantom(logic, *, seed: int, tumorCount=None, diameterMm=None, contrastHu=None, structures=None):
        """The demo phantom with the teaching controls (``None``: as the plain *Load demo phantom*), its truth
        for ``structures`` (default: all) in the volume's "Teaching truth", hidden. ``logic`` is the module's
        ``AtlasSegLogic`` (it adds the CT). Returns ``(volumeNode, truthNode, phantom)``."""
        # here: phantom needs scipy, installed by the module on first run (this file loads at Slicer's start);
        # AtlasSegLogic only as the default logic
        from AtlasSegLib.phantom import check_structures, make_phantom

        from AtlasSegModule.AtlasSegLogic import AtlasSegLogic

        shown = check_structures(structures)
        phantom = make_phantom(seed=seed, tumors=True, tumor_count=tumorCount, tumor_diameter_mm=diameterMm,
                               tumor_contrast_hu=contrastHu)
        volumeNode = (logic or AtlasSegLogic()).addPhantomVolume(phantom)
        truth = TeachingLogic.truthNode(volumeNode, create=True)
        geometry = bridge.VolumeGeometry.fromVolumeNode(volumeNode)
        colors = _cardColors()
        for name in shown:
            label = phantom.labels.get(name)
            if label is None:
                continue

            mask = sitk.GetArrayViewFromImage(label)
            if mask.any():
                TeachingLogic.addTruthSegment(truth, mask, geometry, name,
                                              tuple(c / 255.0 for c in colors.get(name, (255, 217, 0))))
        return volumeNode, truth, phantom


def _cardColors() -> dict:
    """Structure name -> RGB 0-255 of the demo model's card (the colours the model's result gets)."""
    try:
        from AtlasSegLib.card import builtin_card  # here: card needs jsonschema (installed on first run)

        return {c.name: tuple(c.color) for c in builtin_card("atlasseg-demo").classes if getattr(c, "color", None)}
    except Exception:  # noqa: BLE001 - colours are cosmetic; the truth loads without them
        return {}
