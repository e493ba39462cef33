"""Qt-free logic of the "Remove false positive" Segment Editor effect, on real MRML classes.

A click removes the 26-connected component under the cursor from *the segment under the cursor* (the topmost
visible one there), not only from the selected segment; Shift-click keeps only that component; in Add mode (or
Ctrl+click) a click adds the missed tumor around the point (``addAt``: ``AtlasSegLib.addlesion``). Each click is
one step of the Segment Editor's undo history.

Why it is fast: AtlasSeg loads segments into shared labelmap layers (organs in one, tumors in another), so a
segment's labelmap is a whole-volume image shared with other segments (label value = ``segment.GetLabelValue()``).
This module reads and edits that image's scalars through a numpy *view* (no copy of the volume), finds the
component in a window around the click that grows only while the component reaches the window's border
(``AtlasSegLib.review.component_at``), and writes zeros into the component's bounding box only. Calling
``Modified()`` on the layer image is all Slicer needs: ``vtkSegmentation`` observes its source labelmaps and
re-emits ``SourceRepresentationModified``, which the segmentation node, the slice views and the undo history
all react to — exactly what Slicer's own ``SetBinaryLabelmapToSegment`` does after writing a labelmap.

The undo step is taken with the editor's ``SaveStateForUndo`` *before* the edit; its cost is one copy of the
edited layer (``vtkSegmentationHistory`` deep-copies a layer modified since the last saved state), so small
layers make cheap clicks — see ``AtlasSegReview.compactTumorLayers``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import vtk
from vtk.util import numpy_support

import slicer

from AtlasSegLib import review  # importable: the package __init__ put it on sys.path
from AtlasSegLib.addlesion import add_lesion

REPRESENTATION = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()


# ------------------------------------------------------------------------------------------ layer access
def layerImage(segmentation, segmentId: str):
    """The (possibly shared) binary labelmap image of a segment, or None if it has none."""
    segment = segmentation.GetSegment(segmentId)
    return segment.GetRepresentation(REPRESENTATION) if segment is not None else None


def layerArray(image):
    """``(view, lowKji)``: the image's scalars as a (k, j, i) numpy view (no copy; writes go into the image)
    and the index of the view's first voxel, ``(k0, j0, i0)`` of the image extent. ``(None, None)`` when the
    image is empty."""
    extent = image.GetExtent()
    if extent[1] < extent[0] or extent[3] < extent[2] or extent[5] < extent[4]:
        return None, None
    scalars = image.GetPointData().GetScalars()
    if scalars is None or scalars.GetNumberOfComponents() != 1:
        return None, None
    dims = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    return numpy_support.vtk_to_numpy(scalars).reshape(dims), np.array([extent[4], extent[2], extent[0]])


def worldToNodeTransform(node):
    """A transform from world RAS to ``node``'s own coordinates (identity when it has no parent transform)."""
    transform = vtk.vtkGeneralTransform()
    parent = node.GetParentTransformNode()
    if parent is not None:
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, parent, transform)
    return transform


def worldToImageKji(segmentationNode, image, ras) -> np.ndarray:
    """The (k, j, i) image index (of the whole image grid, not of the extent) nearest to a world RAS point."""
    local = worldToNodeTransform(segmentationNode).TransformPoint([float(v) for v in ras])
    worldToImage = vtk.vtkMatrix4x4()
    image.GetWorldToImageMatrix(worldToImage)
    ijk = worldToImage.MultiplyPoint([*local, 1.0])[:3]
    return np.array([int(np.floor(v + 0.5)) for v in ijk[::-1]])


def imageKjiToWorld(segmentationNode, image, kji) -> tuple:
    """World RAS of an image index (k, j, i)."""
    imageToWorld = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(imageToWorld)
    local = imageToWorld.MultiplyPoint([float(kji[2]), float(kji[1]), float(kji[0]), 1.0])[:3]
    parent = segmentationNode.GetParentTransformNode()
    if parent is None:
        return tuple(local)
    toWorld = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(parent, None, toWorld)
    return tuple(toWorld.TransformPoint(local))


def notifyLayerModified(segmentationNode, image) -> None:
    """Tell Slicer that a layer's scalars were changed in place (views, segmentation node, undo history).

    ``vtkSegmentation`` turns a source labelmap's ModifiedEvent into ``SourceRepresentationModified`` (what
    Slicer's own ``SetBinaryLabelmapToSegment`` relies on), but only for layers it observes, and a layer can be
    left unobserved (seen on the tumor layer of segments loaded by ``AtlasSegLogic.loadResults``: the undo history
    then missed every edit of it). Then the segmentation's own reaction is done here: drop derived
    representations (closed surfaces) and emit the event — once, never twice.
    """
    segmentation = segmentationNode.GetSegmentation()
    fired = []
    tag = segmentation.AddObserver(slicer.vtkSegmentation.SourceRepresentationModified, lambda *args: fired.append(1))
    try:
        image.Modified()
    finally:
        segmentation.RemoveObserver(tag)
    if not fired:
        segmentation.InvalidateNonSourceRepresentations()
        segmentation.InvokeEvent(slicer.vtkSegmentation.SourceRepresentationModified)


def boundingSlices(mask: np.ndarray) -> list:
    """``[slices]`` of the bounding box of a boolean mask's voxels (empty list when it has none)."""
    spans = [np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[0] for axis in range(3)]
    if any(span.size == 0 for span in spans):
        return []
    return [tuple(slice(int(span[0]), int(span[-1]) + 1) for span in spans)]


def voxelVolumeMm3(image) -> float:
    return float(np.prod(image.GetSpacing()))


def segmentIdsTopmostFirst(segmentationNode, segmentIds=None) -> list:
    """Visible segments (or the given ``segmentIds``) in the order a click should try them: the one drawn on
    top first.

    Slice views draw a segmentation's labelmap layers in the order each layer's first segment appears, later
    layers on top; segments of one layer never overlap. So the order is by layer, last-drawn layer first.
    """
    segmentation = segmentationNode.GetSegmentation()
    allIds = list(segmentation.GetSegmentIDs())
    if segmentIds is None:
        display = segmentationNode.GetDisplayNode()
        if display is None or not display.GetVisibility():
            return []
        segmentIds = [s for s in allIds if display.GetSegmentVisibility(s)]
    wanted = set(segmentIds)
    layerRank = {}
    for segmentId in allIds:
        image = layerImage(segmentation, segmentId)
        if image is not None and id(image) not in layerRank:
            layerRank[id(image)] = len(layerRank)
    ranked = [(layerRank.get(id(layerImage(segmentation, s)), -1), allIds.index(s), s) for s in allIds if s in wanted]
    return [s for _, _, s in sorted(ranked, key=lambda r: (-r[0], -r[1]))]


@dataclass(frozen=True)
class Hit:
    """A segment voxel under a point: its segment, the layer image, and its (k, j, i) in the layer array."""

    segmentId: str
    image: object
    labelValue: int
    localKji: tuple  # index into layerArray(image)[0]


def segmentAt(segmentationNode, ras, segmentIds=None, *, searchRadiusVoxels: int = 0) -> Optional[Hit]:
    """The topmost visible segment (or one of ``segmentIds``) that has a voxel at world point ``ras``.

    ``searchRadiusVoxels`` > 0 also accepts the nearest segment voxel within that many voxels (a 3D view picks a
    point on a smoothed surface, which can lie just outside the voxels).
    """
    segmentation = segmentationNode.GetSegmentation()
    candidates = []
    for segmentId in segmentIdsTopmostFirst(segmentationNode, segmentIds):
        image = layerImage(segmentation, segmentId)
        array, low = layerArray(image) if image is not None else (None, None)
        if array is not None:
            label = int(segmentation.GetSegment(segmentId).GetLabelValue())
            candidates.append((segmentId, image, array, label, worldToImageKji(segmentationNode, image, ras) - low))
    # A voxel exactly under the point wins over a nearby one of a segment drawn on top of it.
    for radius in sorted({0, max(0, int(searchRadiusVoxels))}):
        for segmentId, image, array, label, local in candidates:
            found = _nearestLabelVoxel(array, local, label, radius)
            if found is not None:
                return Hit(segmentId, image, label, found)
    return None


def _nearestLabelVoxel(array, localKji, label, radius) -> Optional[tuple]:
    shape = np.asarray(array.shape)
    if np.all(localKji >= 0) and np.all(localKji < shape) and array[tuple(localKji)] == label:
        return tuple(int(v) for v in localKji)
    if radius <= 0:
        return None
    lo = np.maximum(localKji - radius, 0)
    hi = np.minimum(localKji + radius + 1, shape)
    if np.any(hi <= lo):
        return None
    window = array[tuple(slice(a, b) for a, b in zip(lo, hi))] == label
    if not window.any():
        return None
    points = np.argwhere(window) + lo
    best = points[np.argmin(((points - localKji) ** 2).sum(axis=1))]
    return tuple(int(v) for v in best)


# Voxels to search around a point picked on a smoothed 3D surface, which can lie just outside the voxels.
SEARCH_RADIUS_3D_VOXELS = 2


def pickSurfacePoint(renderer, x: float, y: float) -> Optional[tuple]:
    """The world RAS point of the surface under display position (x, y) of a 3D view, or None.

    A 3D click is resolved to the nearest visible surface (segments' closed surfaces, but also models or slice
    planes shown in 3D); ``RemoveFalsePositiveLogic.click(..., searchRadiusVoxels=SEARCH_RADIUS_3D_VOXELS)`` then
    finds the segment voxel there.
    """
    picker = vtk.vtkCellPicker()
    picker.SetTolerance(0.005)
    if not picker.Pick(float(x), float(y), 0.0, renderer):
        return None
    return tuple(picker.GetPickPosition())


# -------------------------------------------------------------------------------------------------- effect
@dataclass(frozen=True)
class ClickResult:
    """What one click did; ``message`` is for the status bar."""

    message: str
    segmentId: str = ""
    changedVoxels: int = 0
    changedMl: float = 0.0
    keepOnly: bool = False
    edit: object = None  # AtlasSegLib.review.Edit (its region indexes the edited part of the layer), or None
    removedSeedsIjk: tuple = ()  # full-grid (i, j, k) of a voxel of each removed component
    addedOrigin: str = ""  # an add: "added: probability" / "added: image" (AtlasSegLib.addlesion)
    addedSeedIjk: tuple = ()  # an add: full-grid (i, j, k) of a voxel of the added lesion
    addedThreshold: Optional[float] = None  # an add on the model's map: the threshold its region was made at

    @property
    def changed(self) -> bool:
        return self.changedVoxels > 0


class RemoveFalsePositiveLogic:
    """Remove (or keep only) the component under a point, from whichever visible segment is there.

    Args:
        segmentationNode: the segmentation being edited.
        saveStateForUndo: called once before each change (the editor's ``SaveStateForUndo``: the Segment Editor
            effect passes ``scriptedEffect.saveStateForUndo``; scripts pass a Segment Editor widget's
            ``saveStateForUndo``, or on Slicer >= 5.10 ``vtkSlicerSegmentEditorLogic.SaveStateForUndo``).

    Example::

        logic = RemoveFalsePositiveLogic(segmentationNode, editorLogic.SaveStateForUndo)
        print(logic.click([12.5, -40.0, 88.0]).message)   # "Removed liver_tumor component: 1,234 voxels ..."
    """

    def __init__(self, segmentationNode, saveStateForUndo: Optional[Callable[[], object]] = None):
        self.segmentationNode = segmentationNode
        self.saveStateForUndo = saveStateForUndo

    def click(self, ras, *, keepOnly: bool = False, segmentIds=None, searchRadiusVoxels: int = 0) -> ClickResult:
        """Remove the component under world point ``ras`` (``keepOnly``: remove every other component of that
        segment instead). Clicking background changes nothing and takes no undo step."""
        hit = segmentAt(self.segmentationNode, ras, segmentIds, searchRadiusVoxels=searchRadiusVoxels)
        if hit is None:
            return ClickResult("Remove false positive: nothing here — the click is on background "
                               "(no visible segment under the cursor).")
        return self.editHit(hit, keepOnly=keepOnly)

    def editHit(self, hit: Hit, *, keepOnly: bool = False) -> ClickResult:
        segmentation = self.segmentationNode.GetSegmentation()
        name = segmentation.GetSegment(hit.segmentId).GetName()
        if self.saveStateForUndo is not None:
            self.saveStateForUndo()
        array, low = layerArray(hit.image)
        if keepOnly:
            # Every other component of the segment is removed: work inside the segment's bounding box only
            # (the layer may be the whole volume and hold other segments).
            box = boundingSlices(array == hit.labelValue)[0]
            offset = np.array([s.start for s in box])
            edit = review.keep_only_at(array[box], np.asarray(hit.localKji) - offset, label=hit.labelValue)
            low = low + offset
        else:
            edit = review.remove_at(array, hit.localKji, label=hit.labelValue)
        if edit is None:  # keep-only on a segment that has a single component
            return ClickResult(f"{name} has no other component: nothing removed.", hit.segmentId, keepOnly=keepOnly)
        notifyLayerModified(self.segmentationNode, hit.image)
        ml = edit.changed_voxels * voxelVolumeMm3(hit.image) / 1000.0
        seeds = tuple(tuple(int(v) for v in (np.asarray(s) + low)[::-1]) for s in edit.removed)
        if keepOnly:
            message = (f"Kept only the clicked {name} component: removed {len(edit.removed)} other component(s), "
                       f"{edit.changed_voxels:,} voxels ({ml:.2f} ml). Undo restores them.")
        else:
            message = f"Removed a {name} component: {edit.changed_voxels:,} voxels ({ml:.2f} ml). Undo restores it."
        return ClickResult(message, hit.segmentId, edit.changed_voxels, ml, keepOnly, edit, seeds)


    # ----------------------------------------------------------------------------------- add a missed tumor
    def addAt(self, ras, tumor: Optional[str] = None) -> ClickResult:
        """Add the missed tumor around world point ``ras`` to a tumor segment with a linked probability volume
        (``tumor``: its name; default the first such segment): ``AtlasSegLib.addlesion.add_lesion`` on the
        tumor's probability box and the CT (the segmentation's input volume) — the model's region at the
        highest threshold that holds the point, else a region of similar attenuation bounded by the organ. A
        point inside an existing component of the tumor selects it (nothing changes). One undo step, taken just
        before the paste; the new voxels take only empty voxels of the layer (never another segment's).

        The tumor's probability map and click gate come from ``cachedProbabilityMap`` (built when the review session
        or the Add toggle started: ``prepareAdd``), so a click does not rebuild the dilated gate of the whole box."""
        from AtlasSegModule import AtlasSegReview  # here: AtlasSegReview imports this module (circular at load)

        node = self.segmentationNode
        tumors = AtlasSegReview.reviewableTumors(node)
        if tumor is None:
            tumor = tumors[0] if tumors else None
        if tumor not in tumors:
            return ClickResult("Add missed tumor: no tumor segment with a probability map here; it works on "
                               "tumors loaded from an AtlasSeg run.")
        reference = node.GetNodeReference("AtlasSegInputVolume")
        if reference is None or reference.GetImageData() is None:
            return ClickResult("Add missed tumor: the CT this segmentation was made from is not in the scene.")
        pm, gate = cachedProbabilityMap(node, tumor, withClickGate=True)
        controller = AtlasSegReview.SensitivityController(node, tumor, probabilityMap=pm)
        image, region = controller.box()
        label = controller.label()
        _, low = layerArray(image)
        local = worldToImageKji(node, image, ras) - np.asarray(pm.start_ijk)[::-1]
        if np.any(local < 0) or np.any(local >= np.asarray(pm.q.shape)):
            return ClickResult(f"Add missed tumor: the click is outside {tumor}'s search box (around its organ).",
                               controller.segmentId)
        start = np.asarray(pm.start_ijk)[::-1]
        # The box in the CT's own index grid (the layers are normally on it: offset 0).
        ctStart = start - np.asarray(AtlasSegReview._boxStartInLayer(image, reference))[::-1]
        box = tuple(slice(int(a), int(a + n)) for a, n in zip(ctStart, pm.q.shape))
        ct = slicer.util.arrayFromVolume(reference)[box]
        if ct.shape != pm.q.shape:
            return ClickResult("Add missed tumor: the CT does not cover the tumor's probability box.",
                               controller.segmentId)
        own = region == label
        # A 0/1 mask is enough: add_lesion only asks whether the click is inside a component, and keeps every
        # component's rim free (no labelling of the whole box per click).
        labels = own.view(np.uint8)
        free = (region == 0) | own  # never another segment's voxels
        gate = free if gate is None else gate & free
        found = add_lesion(ct, pm.box_grid.spacing[::-1], pm.q, labels, tuple(int(v) for v in local), gate=gate)
        if found.action == "select":
            return ClickResult(f"Add missed tumor: the click is inside an existing {tumor} component; nothing "
                               "added (click outside the segment to add one).", controller.segmentId)
        if found.action != "added":
            return ClickResult(f"Add missed tumor: nothing added — {found.reason}.", controller.segmentId)
        if self.saveStateForUndo is not None:
            self.saveStateForUndo()
        # Only the lesion's own box of the layer is read and written (not the whole probability box).
        window = region[found.region]
        new = found.mask & (window == 0)
        window[new] = label
        notifyLayerModified(node, image)
        voxels = int(np.count_nonzero(new))
        ml = voxels * voxelVolumeMm3(image) / 1000.0
        seed = tuple(int(v) for v in (np.argwhere(new)[0] + np.asarray(found.offset_kji) + start)[::-1])
        how = f" at p ≥ {found.threshold:g}" if found.threshold is not None else ""
        if found.threshold is None and found.model_voxels:
            how = f"; the model's own region there held only {found.model_voxels:,} voxels"
        return ClickResult(f"Added a {tumor} lesion ({found.origin}{how}): {voxels:,} voxels ({ml:.2f} ml). "
                           "Undo removes it.", controller.segmentId, voxels, ml, addedOrigin=found.origin,
                           addedSeedIjk=seed, addedThreshold=found.threshold)


    def prepareAdd(self, tumor: Optional[str] = None) -> bool:
        """Build (and cache) what an add click needs of ``tumor`` (default: every tumor with a probability map):
        its ``ProbabilityMap`` with the dilated gate and the click gate. Called when the review session starts or the
        effect's Add toggle is switched on, so the first click costs what the later ones do. False when there is no
        such tumor."""
        from AtlasSegModule import AtlasSegReview  # here: AtlasSegReview imports this module (circular at load)

        tumors = AtlasSegReview.reviewableTumors(self.segmentationNode)
        for name in tumors if tumor is None else [t for t in tumors if t == tumor]:
            cachedProbabilityMap(self.segmentationNode, name, withClickGate=True)
        return bool(tumors)


_mapCache: dict = {}  # (segmentation node id, tumor) -> [stamp, ProbabilityMap, click gate or None]


def cachedProbabilityMap(segmentationNode, tumor: str, *, withClickGate: bool = False):
    """The tumor's ``ProbabilityMap`` (probability volume + gate from the organ segments), built once and reused
    while neither the probability volume nor a gate organ's layer changes: building it reads and dilates the whole
    box (a second on a 512×512×300 CT). The review session's sensitivity controllers and the add click share it.
    Maps of one segmentation node are kept (one per tumor); another node's are dropped. ``withClickGate``: return
    ``(map, click gate)``, the gate ``ProbabilityMap.click_gate`` (computed once per map) that an add uses."""
    from AtlasSegModule import AtlasSegReview  # here: AtlasSegReview imports this module (circular at load)

    probability = AtlasSegReview.probabilityVolume(segmentationNode, tumor)
    if probability is None or probability.GetImageData() is None:  # the caller's own error message
        pm = AtlasSegReview.probabilityMapFor(segmentationNode, tumor, probability)
        return (pm, pm.click_gate()) if withClickGate else pm
    segmentation = segmentationNode.GetSegmentation()
    organs = [o.strip() for o in (probability.GetAttribute("AtlasSeg.Gate") or "").split(",") if o.strip()]
    images = [layerImage(segmentation, AtlasSegReview.segmentIdByName(segmentationNode, o)) for o in organs]
    tumorImage = layerImage(segmentation, AtlasSegReview.segmentIdByName(segmentationNode, tumor))
    # The box's place in the tumor layer depends only on the layer's index grid (its image-to-world matrix).
    grid = vtk.vtkMatrix4x4()
    if tumorImage is not None:
        tumorImage.GetImageToWorldMatrix(grid)
    stamp = (probability.GetID(), probability.GetMTime(), probability.GetImageData().GetMTime(),
             tuple(image.GetMTime() if image is not None else 0 for image in images),
             tumorImage is not None, tuple(grid.GetElement(r, c) for r in range(4) for c in range(4)))
    key = (segmentationNode.GetID(), tumor)
    cached = _mapCache.get(key)
    if cached is None or cached[0] != stamp:
        for other in [k for k in _mapCache if k[0] != key[0]]:
            del _mapCache[other]  # a box of a 512×512×300 CT is tens of MB: only the node under review
        cached = _mapCache[key] = [stamp, AtlasSegReview.probabilityMapFor(segmentationNode, tumor, probability),
                                   None]
    if not withClickGate:
        return cached[1]
    if cached[2] is None:
        cached[2] = cached[1].click_gate()
    return cached[1], cached[2]


# Called with (segmentationNode, ClickResult) after every click of the effect that changed something, so the
# AtlasSeg review panel can record the decision (the effect itself knows nothing about the panel).
clickObservers: list = []


def notifyClick(segmentationNode, result: ClickResult) -> None:
    for observer in list(clickObservers):
        observer(segmentationNode, result)
