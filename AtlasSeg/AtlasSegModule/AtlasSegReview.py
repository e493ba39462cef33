"""The review of an AtlasSeg result in the Slicer scene, without Qt (the panel is ``AtlasSegReviewPanel``): the
tumor sensitivity sliders, the candidate table and its decisions, and the batch clean-up of tumor and organ
segments.

The clinical workflow this serves: run the tumor model over-sensitive so it misses almost nothing, then throw
away each false positive in seconds instead of drawing each missed tumor by hand in minutes.

* ``SensitivityController`` re-thresholds one tumor segment from its linked probability volume. A preview
  rewrites only the probability map's box (the gate organ's box) of the tumor layer, in place, keeping lesions a
  reviewer added or resized; Apply makes the change one undo step of the history the caller gives
  (``saveStateForUndo``: the Segment Editor's, or the panel's own), Cancel puts the box back.
* ``ReviewSession`` holds the candidate table (one row per tumor component: lesion id from an
  ``AtlasSegLib.lesions.IdMap`` as the CLI numbers them, organ, ml, diameters, max probability, review status),
  keep/remove/next/previous, the clicks of the "Remove false positive" effect (``recordClick``), the counter
  text, centring the slice views on a candidate, resizing one lesion on its own probability threshold
  (``resizeLesion``), and the batch operations: remove tumor candidates by size or probability, keep the largest
  components of each organ segment (``keepLargestPerOrgan``).
* Decisions: ``loadReviewState`` / ``storeReviewState`` keep each tumor's decisions as JSON in its segment's tag
  ``AtlasSeg.Review`` (saved with the scene, and undone/redone with the masks) and the reviewer and time as
  attributes of the segmentation node, in the format of ``AtlasSegLib.reviewstate.ReviewState``;
  ``exportReview`` writes them as a ``review.json`` file (atomically) for the report.
* Layer housekeeping: a review session first crops tumor-only labelmap layers to their probability boxes
  (``compactTumorLayers``: cheaper undo steps), and a preview grows a layer to cover the box it writes into
  (``ensureLayerCovers``).

The review numerics (candidates, operating points, probability maps, lesion ids, decisions) come from
``AtlasSegLib.review`` (the CLI computes the same numbers); this file maps them onto MRML: labelmap layers are
read and written through numpy views of the shared layer images (see ``AtlasSegModule.RemoveFalsePositiveLogic``),
never through whole-volume copies.

Index conventions: numpy arrays are (k, j, i); ``start_ijk`` and seeds are (i, j, k) indices of the
segmentation's labelmap grid, which for AtlasSeg results is the input CT's grid.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import cc3d
import numpy as np
import vtk

import slicer

from AtlasSegModule.RemoveFalsePositiveLogic import (
    REPRESENTATION, Hit, RemoveFalsePositiveLogic, boundingSlices, cachedProbabilityMap, imageKjiToWorld, layerArray,
    layerImage, notifyLayerModified)

from AtlasSegLib import review
from AtlasSegLib.addlesion import ORIGIN_IMAGE, resize_lesion
from AtlasSegLib.card import DEFAULT_TUMOR_MIN_MM3
from AtlasSegLib.errors import InputError
from AtlasSegLib.geometry import Grid
from AtlasSegLib.io import atomic_write_text
from AtlasSegLib.postprocess import dilated_gate

from AtlasSegModule import AtlasSegBridge as bridge

REVIEW_ATTRIBUTE = "AtlasSeg.Review"
PROBABILITY_ROLE = "AtlasSegProbability"  # as AtlasSegLogic.PROBABILITY_ROLE
KIND_TAG = "AtlasSeg.Kind"
# Used when a probability volume does not say how its gate was built: the engine's documented default
# (AtlasSegLib.card postprocessing "tumor_gate_dilation_mm") and the card's default tumor minimum size.
DEFAULT_GATE_DILATION_MM = 5.0
GEOMETRY_TOLERANCE = 1e-4


# ------------------------------------------------------------------------------------------ lookups
def probabilityVolume(segmentationNode, tumor: str):
    """The probability volume of ``tumor`` linked to the segmentation (None if it has none)."""
    for index in range(segmentationNode.GetNumberOfNodeReferences(PROBABILITY_ROLE)):
        node = segmentationNode.GetNthNodeReference(PROBABILITY_ROLE, index)
        if node is not None and node.GetAttribute("AtlasSeg.Structure") == tumor:
            return node
    return None


def segmentIdByName(segmentationNode, name: str) -> str:
    segmentation = segmentationNode.GetSegmentation()
    if segmentation.GetSegment(name) is not None:
        return name
    return segmentation.GetSegmentIdBySegmentName(name) or ""


def segmentKind(segmentationNode, segmentId: str) -> str:
    segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
    value = vtk.mutable("")
    if segment is not None and segment.GetTag(KIND_TAG, value):
        return str(value)
    return ""


def reviewableTumors(segmentationNode) -> list:
    """Segment names that have a linked probability volume (a slider), in segment order."""
    segmentation = segmentationNode.GetSegmentation()
    names = [segmentation.GetSegment(s).GetName() for s in segmentation.GetSegmentIDs()]
    return [n for n in names if probabilityVolume(segmentationNode, n) is not None]


def floatAttribute(node, name: str, default: float) -> float:
    text = node.GetAttribute(name)
    try:
        return float(text) if text not in (None, "") else default
    except ValueError:
        return default


# ------------------------------------------------------------------------------------ box geometry
def _boxStartInLayer(image, volumeNode) -> tuple:
    """(i, j, k) of ``volumeNode``'s first voxel in ``image``'s index grid; raises if the grids differ."""
    ijkToRas = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRas)
    worldToImage = vtk.vtkMatrix4x4()
    image.GetWorldToImageMatrix(worldToImage)
    combined = vtk.vtkMatrix4x4()
    vtk.vtkMatrix4x4.Multiply4x4(worldToImage, ijkToRas, combined)
    linear = np.array([[combined.GetElement(r, c) for c in range(3)] for r in range(3)])
    offset = np.array([combined.GetElement(r, 3) for r in range(3)])
    if not np.allclose(linear, np.eye(3), atol=GEOMETRY_TOLERANCE) or \
            not np.allclose(offset, np.round(offset), atol=1e-3):
        raise ValueError(f"'{volumeNode.GetName()}' does not lie on the segmentation's labelmap grid "
                         "(different spacing, directions or a fractional voxel offset); reload the AtlasSeg "
                         "results to review them")
    return tuple(int(v) for v in np.round(offset))


def boxSlicesInLayer(image, startIjk, sizeIjk) -> Optional[tuple]:
    """The (k, j, i) slices of the layer array covering a box, or None if the layer extent does not cover it."""
    array, low = layerArray(image)
    if array is None:
        return None
    start = np.asarray(startIjk)[::-1] - low
    stop = start + np.asarray(sizeIjk)[::-1]
    if np.any(start < 0) or np.any(stop > np.asarray(array.shape)):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop))


def segmentMaskInBox(segmentationNode, segmentId: str, startIjk, sizeIjk) -> np.ndarray:
    """A segment as a uint8 0/1 (k, j, i) mask of a box of the labelmap grid (only the box is read)."""
    image = layerImage(segmentationNode.GetSegmentation(), segmentId)
    out = np.zeros(tuple(int(v) for v in sizeIjk[::-1]), np.uint8)
    array, low = layerArray(image) if image is not None else (None, None)
    if array is None:
        return out
    label = segmentationNode.GetSegmentation().GetSegment(segmentId).GetLabelValue()
    start = np.asarray(startIjk)[::-1] - low
    lo = np.maximum(start, 0)
    hi = np.minimum(start + out.shape, array.shape)
    if np.any(hi <= lo):
        return out
    src = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    dst = tuple(slice(int(a - s), int(b - s)) for a, b, s in zip(lo, hi, start))
    out[dst] = array[src] == label
    return out


def ensureLayerCovers(segmentationNode, segmentId: str, startIjk, sizeIjk):
    """Grow the segment's layer image (shared by its layer mates) so its extent covers a box; returns it.

    Slicer keeps a labelmap's extent as small as its edits made it; a threshold preview needs the whole box.
    """
    segmentation = segmentationNode.GetSegmentation()
    image = layerImage(segmentation, segmentId)
    if image is not None and boxSlicesInLayer(image, startIjk, sizeIjk) is not None:
        return image
    old, low = layerArray(image) if image is not None else (None, None)
    boxLow = np.asarray(startIjk)[::-1]
    boxHigh = boxLow + np.asarray(sizeIjk)[::-1]
    if old is not None:
        newLow, newHigh = np.minimum(low, boxLow), np.maximum(low + old.shape, boxHigh)
    else:
        newLow, newHigh = boxLow, boxHigh
    grown = slicer.vtkOrientedImageData()
    if image is not None:
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        grown.SetImageToWorldMatrix(matrix)
    else:
        geometryName = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
        slicer.vtkSegmentationConverter.DeserializeImageGeometry(segmentation.GetConversionParameter(geometryName),
                                                                 grown, False)
    grown.SetExtent(int(newLow[2]), int(newHigh[2]) - 1, int(newLow[1]), int(newHigh[1]) - 1,
                    int(newLow[0]), int(newHigh[0]) - 1)
    grown.AllocateScalars(vtk.VTK_UNSIGNED_CHAR if old is None else image.GetScalarType(), 1)
    target, _ = layerArray(grown)
    target[...] = 0
    if old is not None:
        offset = low - newLow
        target[tuple(slice(int(o), int(o + n)) for o, n in zip(offset, old.shape))] = old
    mates = [s for s in segmentation.GetSegmentIDs() if image is not None and layerImage(segmentation, s) is image]
    for mate in mates or [segmentId]:
        segmentation.GetSegment(mate).AddRepresentation(REPRESENTATION, grown)
    return grown


def compactTumorLayers(segmentationNode, margin: int = 0) -> int:
    """Crop each layer that holds only tumor segments to the union of its segments' probability boxes and
    voxels; returns how many layers were cropped.

    Why: the editor's undo step copies the whole layer an edit touches, so a tumor layer of the size of the
    liver box makes a click ~10× cheaper than a whole-volume layer (see Testing/bench/bench_review.py). Call it before
    editing starts (the first undo state would otherwise hold the large layer).
    """
    segmentation = segmentationNode.GetSegmentation()
    layers = {}
    for segmentId in segmentation.GetSegmentIDs():
        image = layerImage(segmentation, segmentId)
        if image is not None:
            layers.setdefault(id(image), (image, []))[1].append(segmentId)
    cropped = 0
    for image, members in layers.values():
        if not all(segmentKind(segmentationNode, s) == "tumor" for s in members):
            continue
        array, low = layerArray(image)
        if array is None:
            continue
        boxes = []
        for segmentId in members:
            node = probabilityVolume(segmentationNode, segmentation.GetSegment(segmentId).GetName())
            if node is not None and node.GetImageData() is not None:
                start = np.asarray(_boxStartInLayer(image, node))[::-1]
                boxes.append((start, start + np.asarray(node.GetImageData().GetDimensions())[::-1]))
        nonzero = np.nonzero(array.any(axis=(1, 2)))[0], np.nonzero(array.any(axis=(0, 2)))[0], \
            np.nonzero(array.any(axis=(0, 1)))[0]
        if all(n.size for n in nonzero):
            boxes.append((low + [n.min() for n in nonzero], low + [n.max() + 1 for n in nonzero]))
        if not boxes:
            continue
        newLow = np.maximum(np.min([b[0] for b in boxes], axis=0) - margin, low)
        newHigh = np.minimum(np.max([b[1] for b in boxes], axis=0) + margin, low + array.shape)
        if np.array_equal(newLow, low) and np.array_equal(newHigh, low + array.shape):
            continue
        small = slicer.vtkOrientedImageData()
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        small.SetImageToWorldMatrix(matrix)
        small.SetExtent(int(newLow[2]), int(newHigh[2]) - 1, int(newLow[1]), int(newHigh[1]) - 1,
                        int(newLow[0]), int(newHigh[0]) - 1)
        small.AllocateScalars(image.GetScalarType(), 1)
        target, _ = layerArray(small)
        target[...] = array[tuple(slice(int(a - b), int(c - b)) for a, b, c in zip(newLow, low, newHigh))]
        for segmentId in members:
            segmentation.GetSegment(segmentId).AddRepresentation(REPRESENTATION, small)
        cropped += 1
    return cropped


def probabilityMapFor(segmentationNode, tumor: str, probabilityNode=None) -> review.ProbabilityMap:
    """The library's ``ProbabilityMap`` of a tumor from its linked probability volume and the organ segments.

    The gate is rebuilt from the organ segments named in the volume's ``AtlasSeg.Gate`` attribute, dilated by
    ``AtlasSeg.GateDilationMm`` (default 5 mm, the engine's), so thresholds give the engine's masks.
    """
    node = probabilityNode or probabilityVolume(segmentationNode, tumor)
    if node is None or node.GetImageData() is None:
        raise ValueError(f"{tumor} has no probability volume linked to '{segmentationNode.GetName()}'; only tumor "
                         "segments loaded from an AtlasSeg run keep one")
    segmentId = segmentIdByName(segmentationNode, tumor)
    if not segmentId:
        raise ValueError(f"segmentation '{segmentationNode.GetName()}' has no segment named {tumor}")
    image = layerImage(segmentationNode.GetSegmentation(), segmentId)
    q = np.ascontiguousarray(slicer.util.arrayFromVolume(node)).astype(np.uint8, copy=True)
    geometry = bridge.VolumeGeometry.fromVolumeNode(node)
    spacing, originLps, directionLps = geometry.toLps()
    boxGrid = Grid(tuple(geometry.size), tuple(spacing), tuple(originLps), tuple(directionLps))
    if image is not None:
        start = _boxStartInLayer(image, node)
    else:  # an empty tumor segment without a labelmap yet: index the box on the reference geometry
        start = _boxStartInReference(segmentationNode, node)
    reference = segmentationNode.GetNodeReference("AtlasSegInputVolume")
    inputSize = tuple(reference.GetImageData().GetDimensions()) if reference is not None and \
        reference.GetImageData() is not None else tuple(int(v) for v in np.asarray(start) + geometry.size)
    organs = {}
    for organ in [g.strip() for g in (node.GetAttribute("AtlasSeg.Gate") or "").split(",") if g.strip()]:
        organId = segmentIdByName(segmentationNode, organ)
        if organId:
            organs[organ] = segmentMaskInBox(segmentationNode, organId, start, geometry.size)
    gate = None
    if organs:
        gate = np.zeros(q.shape, np.uint8)
        for mask in organs.values():
            gate |= mask
        gate = dilated_gate(gate, q, boxGrid.spacing[::-1],
                            floatAttribute(node, "AtlasSeg.GateDilationMm", DEFAULT_GATE_DILATION_MM))
    return review.ProbabilityMap(tumor, q, start, inputSize, boxGrid, gate=gate,
                                 min_mm3=floatAttribute(node, "AtlasSeg.MinComponentMm3", DEFAULT_TUMOR_MIN_MM3),
                                 organs=organs)


def _boxStartInReference(segmentationNode, node) -> tuple:
    geometryName = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    reference = slicer.vtkOrientedImageData()
    slicer.vtkSegmentationConverter.DeserializeImageGeometry(
        segmentationNode.GetSegmentation().GetConversionParameter(geometryName), reference, False)
    return _boxStartInLayer(reference, node)


# ------------------------------------------------------------------------------------- sensitivity
class SensitivityController:
    """Live threshold preview of one tumor segment from its probability volume, inside the box only.

    Example::

        controller = SensitivityController(segmentationNode, "liver_tumor", saveStateForUndo=editor.SaveStateForUndo)
        controller.preview(0.3)    # the slice views show the tumor at p >= 0.3
        controller.apply()         # one undo step; or controller.cancel() to put the old mask back
    """

    def __init__(self, segmentationNode, tumor: str, *, saveStateForUndo: Optional[Callable[[], object]] = None,
                 probabilityMap: Optional[review.ProbabilityMap] = None):
        self.segmentationNode = segmentationNode
        self.tumor = tumor
        self.segmentId = segmentIdByName(segmentationNode, tumor)
        self.probabilityNode = probabilityVolume(segmentationNode, tumor)
        # The shared cache: the review session's controllers and the Add click use one map (its gate built once).
        self.map = probabilityMap or cachedProbabilityMap(segmentationNode, tumor)
        self.saveStateForUndo = saveStateForUndo
        self.appliedThreshold = floatAttribute(self.probabilityNode, "AtlasSeg.Threshold", 0.5) \
            if self.probabilityNode is not None else 0.5
        self.threshold = self.appliedThreshold
        self.labelling = None  # AtlasSegLib Labelling (mask + components) of the last preview (box)
        self._original: Optional[np.ndarray] = None  # the box before the first preview
        self._written: list = []  # (k, j, i) slices of the box that hold the previewed components

    @property
    def sizeIjk(self) -> tuple:
        return tuple(int(v) for v in self.map.q.shape[::-1])

    @property
    def pending(self) -> bool:
        """A preview differs from the applied state (Apply or Cancel would do something)."""
        return self._original is not None

    def operatingPoints(self, card=None) -> dict:
        return review.operating_points(card, self.tumor)

    def layer(self):
        """The tumor's layer image, grown to cover the box if needed."""
        return ensureLayerCovers(self.segmentationNode, self.segmentId, self.map.start_ijk, self.sizeIjk)

    def box(self) -> tuple:
        """``(image, box view)``: the box of the tumor layer as a writable (k, j, i) numpy view."""
        image = self.layer()
        array, _ = layerArray(image)
        return image, array[boxSlicesInLayer(image, self.map.start_ijk, self.sizeIjk)]

    def label(self) -> int:
        return int(self.segmentationNode.GetSegmentation().GetSegment(self.segmentId).GetLabelValue())

    def currentMask(self) -> np.ndarray:
        """The segment in the box as uint8 0/1 (a copy)."""
        _, region = self.box()
        return (region == self.label()).astype(np.uint8)

    def preview(self, threshold: float) -> int:
        """Show the tumor thresholded at ``threshold`` (gate and minimum size as the engine); returns its voxels.

        Only the bounding boxes of the old and the new components are written, not the whole box.
        """
        labelling = self.map.labels(threshold)
        # False positives removed in this review stay removed whatever the threshold (their seed voxel is kept).
        state = loadReviewState(self.segmentationNode)
        removed = state.removed_labels(self.tumor, labelling.labels, self.map.start_ijk)
        image, region = self.box()
        label = self.label()
        parts = [(slc, labelling.labels[slc] == value) for value, slc, _ in labelling.parts if value not in removed]
        # Lesions a reviewer resized (ReviewSession.resizeLesion) keep their own threshold.
        parts = self._resizedLesions(state, labelling, parts, removed)
        if any(((region[slc] != 0) & (region[slc] != label) & inside).any() for slc, inside in parts):
            # Another segment of the shared layer is where this tumor now grows: give the tumor a layer of its own
            # rather than overwrite its neighbour.
            self.segmentationNode.GetSegmentation().SeparateSegmentLabelmap(self.segmentId)
            image, region = self.box()
            label = self.label()
            if self._original is not None:  # the tumor's own layer holds only its own label
                self._original = np.where(self._original == label, label, 0).astype(region.dtype)
        if self._original is None:
            # First preview of a round: keep the box for Cancel/Apply, and where the segment is now.
            self._original = region.copy()
            self._written = boundingSlices(self._original == label)
        # Lesions a reviewer added by a click (the map may not hold them) stay, as they were before the preview.
        added = self._addedLesions(state, label)
        if added is not None:
            parts += [(slc, added[slc]) for slc in boundingSlices(added)]
        for slc in self._written:
            view = region[slc]
            view[view == label] = 0
        for slc, inside in parts:
            region[slc][inside] = label
        self._written = [slc for slc, _ in parts]
        notifyLayerModified(self.segmentationNode, image)
        self.threshold = float(threshold)
        self.labelling = labelling
        return int(sum(int(np.count_nonzero(inside)) for _, inside in parts))

    def _resizedLesions(self, state, labelling, parts, removed) -> list:
        """``parts`` with each lesion that has its own threshold (a kept model lesion's decision ``threshold``,
        found at its seed) at that threshold (``addlesion.resize_lesion``: never into another lesion)."""
        own = [(d["seed_ijk"], float(d["threshold"])) for d in state.decisions(self.tumor)
               if d.get("threshold") is not None and d.get("status") == review.KEPT
               and not str(d.get("origin") or "").startswith("added")]
        if not own:
            return parts
        labels = labelling.labels.copy()
        byValue = {value: slc for value, slc, _ in labelling.parts if value not in removed}
        resizedParts = {}
        for seed, threshold in own:
            kji = review.seed_kji(seed, self.map.start_ijk, labels.shape)
            value = int(labels[kji]) if kji is not None else 0
            if value not in byValue:
                continue
            resized = resize_lesion(self.map.q, labels, value, threshold, gate=self.map.gate, seed_kji=kji,
                                    bounds=byValue[value])
            resized.apply(labels)
            resizedParts[value] = (resized.region, resized.mask)
        if not resizedParts:
            return parts
        values = [value for value, _, _ in labelling.parts if value not in removed]
        return [resizedParts.get(value, part) for value, part in zip(values, parts)]

    def _addedLesions(self, state, label) -> Optional[np.ndarray]:
        """The components of the box before the preview that hold the seed of a kept "added: ..." decision
        (``RemoveFalsePositiveLogic.addAt`` + ``ReviewSession.recordClick``), or None."""
        seeds = [d["seed_ijk"] for d in state.decisions(self.tumor)
                 if str(d.get("origin") or "").startswith("added") and d.get("status") == "kept"]
        if not seeds or self._original is None:
            return None
        own = self._original == label
        labels = cc3d.connected_components(own, connectivity=26)
        values = set()
        for seed in seeds:
            kji = review.seed_kji(seed, self.map.start_ijk, own.shape)
            if kji is not None and labels[kji]:
                values.add(int(labels[kji]))
        return np.isin(labels, sorted(values)) if values else None

    def apply(self) -> bool:
        """Keep the previewed threshold as one undo step (undo brings back the mask before the preview)."""
        if self._original is None:
            return False
        image, region = self.box()
        previewed = region.copy()
        # The undo state must hold the mask from before the preview: put it back for the snapshot.
        region[...] = self._original
        notifyLayerModified(self.segmentationNode, image)
        if self.saveStateForUndo is not None:
            self.saveStateForUndo()
        region[...] = previewed
        notifyLayerModified(self.segmentationNode, image)
        self._original = None
        self.appliedThreshold = self.threshold
        if self.probabilityNode is not None:
            self.probabilityNode.SetAttribute("AtlasSeg.Threshold", f"{self.threshold:g}")
        return True

    def cancel(self) -> bool:
        """Put back the mask from before the preview."""
        if self._original is None:
            return False
        image, region = self.box()
        region[...] = self._original
        notifyLayerModified(self.segmentationNode, image)
        self._original = None
        self.threshold = self.appliedThreshold
        self.labelling = None
        return True

    def candidates(self) -> tuple:
        """``(Labelling, [Candidate])`` of the segment as it is now (after edits, not only thresholds)."""
        return self.map.candidates(self.currentMask())


# ------------------------------------------------------------------------------------------ review
def loadReviewState(segmentationNode) -> review.ReviewState:
    """The review decisions, read from each tumor segment's ``AtlasSeg.Review`` tag.

    Kept in segment tags (not a node attribute) because the Segment Editor's undo history snapshots segments
    with their tags: undoing a removal brings back the component *and* forgets the decision, redo restores both.
    Tags are saved with the segmentation (``.seg.nrrd``)."""
    tumors = {}
    segmentation = segmentationNode.GetSegmentation()
    for segmentId in segmentation.GetSegmentIDs():
        segment = segmentation.GetSegment(segmentId)
        value = vtk.mutable("")
        if segment.GetTag(REVIEW_ATTRIBUTE, value) and str(value):
            entry = review.ReviewState.from_json(
                '{"version": 1, "tumors": {"t": ' + str(value) + '}}').tumors["t"]
            tumors[segment.GetName()] = entry
    # Who reviewed and when: the segmentation node's attributes (saved with the scene).
    return review.ReviewState(tumors, reviewer=segmentationNode.GetAttribute(REVIEWER_ATTRIBUTE) or None,
                              reviewed_at=segmentationNode.GetAttribute(REVIEWED_AT_ATTRIBUTE) or None)


def storeReviewState(segmentationNode, state: review.ReviewState) -> None:
    """Write each tumor's decisions into its segment's tag (see ``loadReviewState``)."""
    segmentation = segmentationNode.GetSegmentation()
    for tumor, entry in state.tumors.items():
        segmentId = segmentIdByName(segmentationNode, tumor)
        if segmentId:
            text = json.dumps(entry, separators=(",", ":"))
            # Slicer stores tags as "key:value|" pairs in .seg.nrrd: a '|' inside the JSON would split it.
            segmentation.GetSegment(segmentId).SetTag(REVIEW_ATTRIBUTE, text.replace("|", "\\u007c"))
    for name, value in ((REVIEWER_ATTRIBUTE, state.reviewer), (REVIEWED_AT_ATTRIBUTE, state.reviewed_at)):
        if value:
            segmentationNode.SetAttribute(name, str(value))


REVIEWER_ATTRIBUTE = "AtlasSeg.Reviewer"  # review.json "reviewer", on the segmentation node
REVIEWED_AT_ATTRIBUTE = "AtlasSeg.ReviewedAt"


@dataclass(frozen=True)
class BatchResult:
    message: str
    removedComponents: int = 0
    removedVoxels: int = 0


class ReviewSession:
    """Sliders, candidate table and batch operations for one AtlasSeg segmentation.

    Args:
        segmentationNode: an AtlasSeg result (segments + linked probability volumes).
        saveStateForUndo: the Segment Editor's ``SaveStateForUndo`` (every edit is one undo step with it).
        compact: crop tumor-only layers to their probability boxes first (cheaper undo steps).
    """

    def __init__(self, segmentationNode, *, saveStateForUndo: Optional[Callable[[], object]] = None,
                 compact: bool = True):
        self.segmentationNode = segmentationNode
        self.saveStateForUndo = saveStateForUndo
        if compact:
            compactTumorLayers(segmentationNode)
        self.controllers = {t: SensitivityController(segmentationNode, t, saveStateForUndo=saveStateForUndo)
                            for t in reviewableTumors(segmentationNode)}
        self.remover = RemoveFalsePositiveLogic(segmentationNode, saveStateForUndo)
        # The Add click's map and click gate now (the controllers built the maps), not on the first click.
        self.remover.prepareAdd()
        self.state = loadReviewState(segmentationNode)
        self.reviewer: Optional[str] = None  # the review panel's Reviewer field (remembered in the settings)
        self.rows: list = []
        self._labels: dict = {}
        self._idMaps: dict = {}  # tumor -> AtlasSegLib.lesions.IdMap: lesion ids matched by overlap, as the CLI
        self.selected = -1
        self.refresh()

    # ---------------------------------------------------------------------------------------- table
    def refresh(self) -> list:
        """Recompute the rows (after a threshold change, an edit or an undo). Each row is the library's review
        row (``Candidate.as_dict()`` + "status") plus "tumor"; rows of removed components have no "label"."""
        # Re-read the decisions: an editor undo/redo may have changed them together with the masks.
        self.state = loadReviewState(self.segmentationNode)
        rows = []
        for tumor, controller in self.controllers.items():
            labelling, candidates = controller.candidates()
            labels = labelling.labels
            self._labels[tumor] = labels
            # The library's lesion ids (a lesion keeps its number across thresholds and edits, by overlap).
            idMap = self._idMaps.get(tumor)
            if idMap is None or idMap.memory.shape != labels.shape:
                idMap = self._idMaps[tumor] = review.fresh_id_map(self.state, tumor, controller.map.start_ijk,
                                                                  labels.shape)
            ids = idMap.assign(labelling, update=True)
            tumorRows = self.state.rows(tumor, labels, controller.map.start_ijk, candidates, ids=ids, idmap=idMap)
            for index, row in enumerate(tumorRows):
                row["tumor"] = tumor
                if index < len(candidates):  # the library lists current components first, then removed ones
                    row["label"] = candidates[index].label
            rows += tumorRows
        self.rows = rows
        if self.selected >= len(rows):
            self.selected = len(rows) - 1
        return rows

    def counts(self) -> dict:
        return review.counts(self.rows)

    def counterText(self) -> str:
        return review.counter_text(self.rows)

    def select(self, index: int) -> Optional[dict]:
        if not self.rows:
            self.selected = -1
            return None
        self.selected = max(0, min(int(index), len(self.rows) - 1))
        return self.rows[self.selected]

    def next(self) -> Optional[dict]:
        return self.select(self.selected + 1)

    def previous(self) -> Optional[dict]:
        return self.select(self.selected - 1 if self.selected > 0 else 0)

    def _row(self, index) -> dict:
        index = self.selected if index is None else index
        if not 0 <= index < len(self.rows):
            raise IndexError(f"no candidate row {index} (there are {len(self.rows)})")
        return self.rows[index]

    def keep(self, index: Optional[int] = None) -> str:
        """Mark a candidate as a true tumor ("kept")."""
        row = self._row(index)
        if "label" not in row:
            return "This component was removed; undo the removal to keep it."
        if self.saveStateForUndo is not None:  # a decision is an undo step of its own, like an edit
            self.saveStateForUndo()
        self.state.decide(row["tumor"], row, "kept")
        self._storeState()
        self.refresh()
        return f"Kept {row['tumor']} candidate {row['id']}."

    def remove(self, index: Optional[int] = None) -> str:
        """Remove a candidate from its tumor segment (one undo step) and record the decision."""
        row = self._row(index)
        if "label" not in row:
            return f"{row['tumor']} candidate {row['id']} is already removed."
        controller = self.controllers[row["tumor"]]
        image = controller.layer()
        _, low = layerArray(image)
        seedKji = tuple(int(v) for v in np.asarray(row["seed_ijk"])[::-1] - low)
        result = self.remover.editHit(Hit(controller.segmentId, image, controller.label(), seedKji))
        self.state.decide(row["tumor"], row, "removed")
        self._storeState()
        self.refresh()
        return result.message

    def recordClick(self, result) -> None:
        """Record the components a "Remove false positive" click removed from a reviewed tumor as "removed"."""
        tumor = self.segmentationNode.GetSegmentation().GetSegment(result.segmentId).GetName() \
            if result.segmentId else ""
        if not result.changed or tumor not in self.controllers:
            return
        self._recordRemovedSeeds(tumor, result.removedSeedsIjk)
        if getattr(result, "addedOrigin", ""):
            # An "Add missed tumor" click: the new lesion is kept, and says where it came from.
            self.refresh()
            labels = self._labels.get(tumor)
            kji = review.seed_kji(result.addedSeedIjk, self.controllers[tumor].map.start_ijk, labels.shape) \
                if labels is not None else None
            row = next((r for r in self.rows if r["tumor"] == tumor and kji is not None
                        and r.get("label") == int(labels[kji])), None)
            if row is not None:
                self.state.decide(tumor, row, "kept", origin=result.addedOrigin,
                                  threshold=getattr(result, "addedThreshold", None))
        self._storeState()
        self.refresh()

    def lesionThreshold(self, index: Optional[int] = None) -> float:
        """The probability threshold a candidate is at now: its own (a resize) or its tumor's."""
        row = self._row(index)
        if row.get("lesion_threshold") is not None:
            return float(row["lesion_threshold"])
        return float(self.controllers[row["tumor"]].appliedThreshold)

    def resizeLesion(self, index: Optional[int] = None, threshold: float = 0.5) -> str:
        """Grow or shrink one candidate alone at its own probability ``threshold`` (``AtlasSegLib.addlesion.
        resize_lesion``, as ``atlasseg review --lesion-threshold ID=P``): it never takes another lesion's voxels or
        their one-voxel rim (so it never merges into a neighbour's id) nor another segment's voxels, and no other
        voxel changes. One undo step, decision included: the lesion is recorded with its ``threshold`` (status kept
        unless it was decided otherwise), which ``exportReview`` writes to review.json."""
        row = self._row(index)
        tumor = row["tumor"]
        if "label" not in row:
            return f"{tumor} candidate {row['id']} was removed; undo the removal to resize it."
        if row.get("origin") == ORIGIN_IMAGE:
            return (f"{tumor} lesion {row['id']} was added from the image (the model's map holds nothing there): its "
                    "size cannot follow a probability threshold.")
        controller = self.controllers[tumor]
        if controller.pending:
            return f"Apply or cancel the {tumor} threshold preview first, then resize one lesion."
        threshold = float(threshold)
        image, region = controller.box()
        tumorLabel = controller.label()
        labels = self._labels[tumor]
        pm = controller.map
        # The new voxels may take only empty voxels of the layer or the tumor's own (never another segment's).
        free = region == 0
        free |= region == tumorLabel
        gate = free if pm.gate is None else np.logical_and(pm.gate, free, out=free)
        seed = review.seed_kji(row["seed_ijk"], pm.start_ijk, labels.shape)
        try:
            resized = resize_lesion(pm.q, labels, int(row["label"]), threshold, gate=gate, seed_kji=seed)
        except InputError as error:
            return f"{tumor} lesion {row['id']}: {error}."
        if not (region[resized.region][resized.before] == tumorLabel).all():
            # The segment changed since the table was made (an edit elsewhere): make the table again first.
            self.refresh()
            return f"The candidate table was out of date; it is updated now: resize lesion {row['id']} again."
        if not resized.mask.any():
            return (f"{tumor} lesion {row['id']} has no voxel at p ≥ {threshold:g}: nothing changed (lower the "
                    "threshold, or Remove it).")
        if self.saveStateForUndo is not None:
            self.saveStateForUndo()
        resized.apply(region, tumorLabel)
        notifyLayerModified(self.segmentationNode, image)
        # The decision follows the lesion's id to its new extent (a shrunk lesion may no longer hold the old seed).
        status = row["status"] if row["status"] in (review.KEPT, review.REMOVED) else review.KEPT
        self.refresh()
        voxel = tuple(int(v) for v in np.argwhere(resized.mask)[0] + np.asarray(resized.offset_kji))
        newLabel = int(self._labels[tumor][voxel])
        newRow = next((r for r in self.rows if r["tumor"] == tumor and r.get("label") == newLabel), row)
        self.state.decide(tumor, newRow, status, key=row["id"], threshold=threshold)
        self._storeState()
        # The row as the next refresh would make it (one refresh per resize: the table statistics of every
        # candidate are most of a resize's time on a real CT).
        newRow.update(status=status, lesion_threshold=round(threshold, 4))
        self.selected = next((i for i, r in enumerate(self.rows) if r["tumor"] == tumor and r["id"] == row["id"]),
                             self.selected)
        grown = resized.voxels - int(np.count_nonzero(resized.before))
        ml = abs(grown) * pm.box_grid.voxel_volume_mm3 / 1000.0
        return (f"{tumor} lesion {row['id']} at p ≥ {threshold:g}: {'grew' if grown >= 0 else 'shrank'} by "
                f"{abs(grown):,} voxels ({ml:.2f} ml). Undo restores it.")

    def _recordRemovedSeeds(self, tumor: str, seedsIjk) -> int:
        """Mark the candidates (of the last refresh) that hold these seeds as removed."""
        labels = self._labels.get(tumor)
        if labels is None:
            return 0
        start = self.controllers[tumor].map.start_ijk
        byLabel = {r["label"]: r for r in self.rows if r["tumor"] == tumor and "label" in r}
        recorded = 0
        for seed in seedsIjk:
            kji = review.seed_kji(seed, start, labels.shape)
            if kji is not None and int(labels[kji]) in byLabel:
                self.state.decide(tumor, byLabel[int(labels[kji])], "removed")
                recorded += 1
        return recorded

    def centreOn(self, index: Optional[int] = None, sliceNodes=None) -> tuple:
        """Centre slice views on a candidate (on a voxel inside it); returns the RAS point.

        ``sliceNodes`` None: every slice view of the scene (``vtkMRMLSliceNode.JumpAllSlices``).
        """
        row = self._row(index)
        controller = self.controllers[row["tumor"]]
        image = controller.layer()
        ras = imageKjiToWorld(self.segmentationNode, image, np.asarray(row["seed_ijk"])[::-1])
        if sliceNodes is None:
            slicer.vtkMRMLSliceNode.JumpAllSlices(self.segmentationNode.GetScene(), *ras,
                                                  slicer.vtkMRMLSliceNode.CenteredJumpSlice)
        else:
            for sliceNode in sliceNodes:
                sliceNode.JumpSliceByCentering(*ras)
        return ras

    # ------------------------------------------------------------------------------------ sliders
    def applyThreshold(self, tumor: str) -> bool:
        controller = self.controllers[tumor]
        applied = controller.apply()
        if applied:
            self.state.set_threshold(tumor, controller.threshold)
            self._storeState()
            self.refresh()
        return applied

    # ------------------------------------------------------------------------------------- batch
    def _batchOnTumor(self, tumor: str, operation) -> BatchResult:
        controller = self.controllers[tumor]
        image, region = controller.box()
        label = controller.label()
        trial = region.copy()
        edit = operation(trial, label)
        if edit is None:
            return BatchResult(f"{tumor}: nothing to remove.")
        if self.saveStateForUndo is not None:
            self.saveStateForUndo()
        edit.redo(region)
        notifyLayerModified(self.segmentationNode, image)
        start = np.asarray(controller.map.start_ijk)
        self._recordRemovedSeeds(tumor, [tuple(int(v) for v in start + np.asarray(s)[::-1]) for s in edit.removed])
        self._storeState()
        self.refresh()
        return BatchResult(f"{tumor}: removed {len(edit.removed)} component(s), {edit.changed_voxels:,} voxels.",
                           len(edit.removed), edit.changed_voxels)

    def removeSmallerThan(self, tumor: str, minMl: float) -> BatchResult:
        """Remove every component of ``tumor`` smaller than ``minMl`` ml (one undo step)."""
        voxelMm3 = self.controllers[tumor].map.box_grid.voxel_volume_mm3
        return self._batchOnTumor(tumor, lambda mask, label: review.remove_smaller_than(mask, voxelMm3, minMl,
                                                                                        label=label))

    def removeBelowProbability(self, tumor: str, minProbability: float) -> BatchResult:
        """Remove every component of ``tumor`` whose highest probability is below ``minProbability``."""
        q = self.controllers[tumor].map.q
        return self._batchOnTumor(tumor, lambda mask, label: review.remove_below_probability(
            mask, q, minProbability, label=label))

    def keepLargestPerOrgan(self, n: int = 1, segmentIds=None) -> BatchResult:
        """Keep the ``n`` largest components of each organ segment (default: every segment tagged organ; tumors
        only if named), as one undo step."""
        segmentation = self.segmentationNode.GetSegmentation()
        if segmentIds is None:
            segmentIds = [s for s in segmentation.GetSegmentIDs() if segmentKind(self.segmentationNode, s) == "organ"]
        plans = []  # (image, writable view of the segment's bounding box, Edit found on a copy of it)
        bounds = {}
        for segmentId in segmentIds:
            image = layerImage(segmentation, segmentId)
            array, _ = layerArray(image) if image is not None else (None, None)
            if array is None:
                continue
            if id(image) not in bounds:  # one pass per layer gives every label's bounding box
                bounds[id(image)] = cc3d.statistics(np.ascontiguousarray(array))["bounding_boxes"]
            label = int(segmentation.GetSegment(segmentId).GetLabelValue())
            boxes = bounds[id(image)]
            if label >= len(boxes) or boxes[label] is None:
                continue
            view = array[boxes[label]]
            edit = review.keep_largest(view.copy(), n, label=label)
            if edit is not None:
                plans.append((image, view, edit))
        if not plans:
            return BatchResult(f"Every organ already has at most {n} component(s): nothing removed.")
        if self.saveStateForUndo is not None:
            self.saveStateForUndo()
        for image, view, edit in plans:
            edit.redo(view)
            notifyLayerModified(self.segmentationNode, image)
        components = sum(len(edit.removed) for _, _, edit in plans)
        voxels = sum(edit.changed_voxels for _, _, edit in plans)
        self.refresh()
        return BatchResult(f"Kept the {n} largest component(s) of {len(plans)} organ(s): removed {components} "
                           f"component(s), {voxels:,} voxels.", components, voxels)

    # --------------------------------------------------------------------------------------- state
    def _storeState(self) -> None:
        # Every stored decision records when, and who when the panel's Reviewer field names someone.
        self.state.touch(self.reviewer)
        storeReviewState(self.segmentationNode, self.state)

    def exportReview(self, path) -> Path:
        """Write the review state as ``review.json`` (atomically) for the report; ``path`` may be a folder."""
        path = Path(path)
        if path.is_dir():
            path = path / review.REVIEW_FILE
        atomic_write_text(self.state.to_json(), path)
        return path
