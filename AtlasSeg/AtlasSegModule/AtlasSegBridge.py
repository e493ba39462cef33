"""The module's one place where voxels and grids cross between MRML nodes and numpy / SimpleITK: ``VolumeGeometry``
(a volume's grid in RAS: from a node or a SimpleITK image, to LPS, a sub-box, and its differences to another grid
through ``AtlasSegLib.geometry.Grid``), whole-volume copies node -> KJI array -> SimpleITK image and back (new or
replaced volume nodes), segment labelmaps from arrays (``orientedImageFromArray``) and segments read back as
uint8 0/1 (``arrayFromSegment``), and the engine's files (``writeVolumeNode`` writes its input CT as ``.mha``,
``readImage`` reads an image it wrote). Used by ``AtlasSeg.py``, ``AtlasSegLogic``, ``AtlasSegExport``,
``AtlasSegRender``, ``AtlasSegTeaching`` and ``AtlasSegReview`` (the others need no grid).

The voxel functions copy, so their results are safe to hand anywhere: code that must not copy a whole volume works
on numpy views of the node's own buffers instead and says so (``AtlasSegReview`` and ``RemoveFalsePositiveLogic``
edit labelmap layers in place, ``AtlasSegTeaching`` paints into the CT's voxels). What changes a node or an image
says so in its name: ``updateVolumeNodeFromArray``, ``VolumeGeometry.applyToVolumeNode`` / ``applyToSitk``.

Conventions (every function in this file follows them):

* **Axis order KJI.** An array ``a`` holds voxel ``(i, j, k)`` at ``a[k, j, i]``. This is the order of
  ``slicer.util.arrayFromVolume`` and of ``SimpleITK.GetArrayFromImage``, so no transposes happen anywhere.
* **World coordinates.** Slicer works in RAS, ITK/SimpleITK and the AtlasSeg engine in LPS. ``VolumeGeometry``
  is stored in RAS; ``VolumeGeometry.toLps`` / ``VolumeGeometry.fromSitk`` convert by negating the first two
  world axes, which is exact in floating point (no matrix is inverted or decomposed).
* **dtype.** Voxel types are preserved: an int16 CT stays int16, a float32 map stays float32. Segment
  labelmaps are uint8 (``orientedImageFromArray`` casts to uint8, so pass 0/1 or small labels); a segment read
  back (``arrayFromSegment``) is uint8 0/1.
* **Ownership.** Arrays returned here are copies owned by the caller; changing them never changes a node.
  Nodes built from arrays deep-copy the voxels, so the caller may reuse or free its array afterwards.

Geometry is copied component by component (spacing, origin, direction columns) and never through a 4×4
matrix, because decomposing ``IJKToRAS`` loses the last bits of an oblique direction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support

import slicer

# Multiplying a world point by this flips RAS <-> LPS.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class VolumeGeometry:
    """The voxel grid of a volume, without its voxels, in Slicer's RAS world.

    Attributes:
        size: number of voxels along (i, j, k).
        spacing: voxel size in mm along (i, j, k).
        origin: RAS position (mm) of the centre of voxel (0, 0, 0).
        directions: 3×3 tuple of rows; column ``a`` is the RAS unit direction of index axis ``a``
            (the layout of ``vtkMRMLVolumeNode.GetIJKToRASDirections``).
    """

    size: tuple
    spacing: tuple
    origin: tuple
    directions: tuple

    @classmethod
    def fromVolumeNode(cls, volumeNode) -> "VolumeGeometry":
        """The geometry of a volume node in its own (parent-transform-free) coordinates."""
        imageData = volumeNode.GetImageData()
        if imageData is None:
            raise ValueError(f"volume '{volumeNode.GetName()}' has no voxels (empty image data)")
        directions = [[0.0] * 3 for _ in range(3)]
        volumeNode.GetIJKToRASDirections(directions)
        return cls(
            size=tuple(int(n) for n in imageData.GetDimensions()),
            spacing=tuple(float(s) for s in volumeNode.GetSpacing()),
            origin=tuple(float(o) for o in volumeNode.GetOrigin()),
            directions=tuple(tuple(float(v) for v in row) for row in directions),
        )

    @classmethod
    def fromSitk(cls, image: sitk.Image) -> "VolumeGeometry":
        """The RAS geometry of a SimpleITK (LPS) image."""
        directionLps = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
        directionsRas = _RAS_TO_LPS @ directionLps
        originRas = _RAS_TO_LPS @ np.asarray(image.GetOrigin(), dtype=float)
        return cls(
            size=tuple(int(n) for n in image.GetSize()),
            spacing=tuple(float(s) for s in image.GetSpacing()),
            origin=tuple(float(o) for o in originRas),
            directions=tuple(tuple(float(v) for v in row) for row in directionsRas),
        )

    def toLps(self) -> tuple:
        """``(spacing, origin, direction)`` as SimpleITK wants them: LPS origin, row-major 9-tuple direction."""
        directionLps = _RAS_TO_LPS @ np.asarray(self.directions, dtype=float)
        originLps = _RAS_TO_LPS @ np.asarray(self.origin, dtype=float)
        return (tuple(self.spacing), tuple(float(o) for o in originLps),
                tuple(float(d) for d in directionLps.ravel()))

    def applyToSitk(self, image: sitk.Image) -> sitk.Image:
        """Set ``image``'s spacing, origin and direction to this geometry (in place; returns ``image``)."""
        spacing, origin, direction = self.toLps()
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        image.SetDirection(direction)
        return image

    def applyToVolumeNode(self, volumeNode) -> None:
        """Set a volume node's spacing, origin and directions to this geometry (voxels untouched)."""
        volumeNode.SetSpacing(*self.spacing)
        volumeNode.SetOrigin(*self.origin)
        volumeNode.SetIJKToRASDirections([list(row) for row in self.directions])

    def ijkToRas(self) -> np.ndarray:
        """4×4 homogeneous IJK → RAS matrix (for display and point mapping, not for copying geometry)."""
        matrix = np.eye(4)
        matrix[:3, :3] = np.asarray(self.directions) * np.asarray(self.spacing)[np.newaxis, :]
        matrix[:3, 3] = self.origin
        return matrix

    def box(self, startIjk, sizeIjk) -> "VolumeGeometry":
        """The geometry of the sub-box starting at voxel ``startIjk`` (i, j, k) with ``sizeIjk`` voxels.

        The box shares spacing and directions; only the origin moves, to the centre of voxel ``startIjk``.

        Example:
            A box starting at (2, 0, 1) of a 1 mm axis-aligned grid at the RAS origin starts at (2, 0, 1) mm.
        """
        start = np.asarray(startIjk, dtype=float)
        origin = np.asarray(self.origin) + (np.asarray(self.directions) * np.asarray(self.spacing)) @ start
        return VolumeGeometry(size=tuple(int(n) for n in sizeIjk), spacing=self.spacing,
                              origin=tuple(float(o) for o in origin), directions=self.directions)

    def shapeKji(self) -> tuple:
        """The numpy shape ``(k, j, i)`` of an array on this grid."""
        return tuple(reversed(self.size))

    def differences(self, other: "VolumeGeometry", toleranceMm: float = 1e-3) -> list:
        """Human-readable differences to ``other`` (empty when the grids match within ``toleranceMm``): the
        library's ``Grid.differences`` on both geometries in LPS."""
        from AtlasSegLib.geometry import Grid  # here: this module is imported before AtlasSeg puts the library on sys.path

        return self._grid(Grid).differences(other._grid(Grid), toleranceMm)

    def _grid(self, Grid):
        spacing, origin, direction = self.toLps()
        return Grid(tuple(int(v) for v in self.size), spacing, origin, direction)


def arrayFromVolumeNode(volumeNode) -> np.ndarray:
    """A KJI copy of a volume's voxels in the volume's scalar type."""
    return np.array(slicer.util.arrayFromVolume(volumeNode), copy=True)


def sitkImageFromVolumeNode(volumeNode) -> sitk.Image:
    """The volume as a SimpleITK image in LPS with identical voxels, dtype and geometry.

    Ignores any parent transform of the node: the image is in the node's own coordinates (results come back
    onto the same node's grid, and the segmentation is placed under the same transform).
    """
    image = sitk.GetImageFromArray(arrayFromVolumeNode(volumeNode), isVector=False)
    return VolumeGeometry.fromVolumeNode(volumeNode).applyToSitk(image)


def writeVolumeNode(volumeNode, path) -> Path:
    """Write a volume node to an image file for the engine and return the path.

    MetaImage (``.mha``) keeps spacing, origin and direction bit for bit; NRRD stores direction × spacing
    (last-bit rounding); NIfTI stores geometry in float32 (errors of a few µm on origins far from zero).
    The engine input is therefore written as ``.mha``. Temporary files are written uncompressed because
    compression costs seconds on a 512×512×300 CT and the file lives only for one run.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitkImageFromVolumeNode(volumeNode), str(path), useCompression=False)
    return path


def readImage(path) -> sitk.Image:
    """Read an image file with SimpleITK (LPS), raising ``ValueError`` naming the file when it fails."""
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ValueError(f"cannot read {path}: {str(exc).strip().splitlines()[-1]}") from None


def volumeNodeFromArray(array: np.ndarray, geometry: VolumeGeometry, name: str,
                        nodeClassName: str = "vtkMRMLScalarVolumeNode", scene=None):
    """A new volume node holding a deep copy of ``array`` (KJI) on ``geometry``.

    Args:
        array: KJI voxels; the shape must equal ``geometry.shapeKji()``.
        geometry: where the voxels are.
        name: node name (made unique in the scene).
        nodeClassName: ``vtkMRMLScalarVolumeNode`` or ``vtkMRMLLabelMapVolumeNode``.
        scene: defaults to ``slicer.mrmlScene``.

    Returns:
        The node, added to the scene, with default display nodes.
    """
    scene = scene or slicer.mrmlScene
    _checkShape(array, geometry)
    node = scene.AddNewNodeByClass(nodeClassName, scene.GenerateUniqueName(name))
    updateVolumeNodeFromArray(node, array, geometry)
    node.CreateDefaultDisplayNodes()
    return node


def updateVolumeNodeFromArray(volumeNode, array: np.ndarray, geometry: VolumeGeometry) -> None:
    """Replace a volume node's voxels (deep copy of ``array``, KJI) and geometry."""
    _checkShape(array, geometry)
    imageData = vtk.vtkImageData()
    imageData.SetDimensions(*geometry.size)
    contiguous = np.ascontiguousarray(array)
    vtkArray = numpy_support.numpy_to_vtk(contiguous.ravel(), deep=True,
                                          array_type=numpy_support.get_vtk_array_type(contiguous.dtype))
    imageData.GetPointData().SetScalars(vtkArray)
    geometry.applyToVolumeNode(volumeNode)
    volumeNode.SetAndObserveImageData(imageData)


def volumeNodeFromSitk(image: sitk.Image, name: str, nodeClassName: str = "vtkMRMLScalarVolumeNode", scene=None):
    """A new volume node from a SimpleITK image (voxels and LPS geometry converted to RAS, dtype kept)."""
    return volumeNodeFromArray(sitk.GetArrayFromImage(image), VolumeGeometry.fromSitk(image), name,
                               nodeClassName=nodeClassName, scene=scene)


def orientedImageFromArray(array: np.ndarray, geometry: VolumeGeometry):
    """A ``vtkOrientedImageData`` (what segment labelmaps are made of) holding a deep uint8 copy of ``array``."""
    _checkShape(array, geometry)
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(*geometry.size)
    contiguous = np.ascontiguousarray(array, dtype=np.uint8)
    image.GetPointData().SetScalars(
        numpy_support.numpy_to_vtk(contiguous.ravel(), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR))
    image.SetSpacing(*geometry.spacing)
    image.SetOrigin(*geometry.origin)
    image.SetDirections([list(row) for row in geometry.directions])
    return image


def arrayFromSegment(segmentationNode, segmentId: str, referenceVolumeNode) -> np.ndarray:
    """A segment as a uint8 0/1 KJI array on the reference volume's grid (a copy).

    ``slicer.util.arrayFromSegmentBinaryLabelmap`` returns the reference volume's dtype (int16 for a CT);
    this always returns uint8 so masks compare equal to the engine's files.
    """
    array = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, referenceVolumeNode)
    return (np.asarray(array) != 0).astype(np.uint8)


def _checkShape(array: np.ndarray, geometry: VolumeGeometry) -> None:
    if tuple(array.shape) != geometry.shapeKji():
        raise ValueError(f"array shape {tuple(array.shape)} (k, j, i) does not match the grid size "
                         f"{geometry.size} (i, j, k); expected shape {geometry.shapeKji()}")
    if array.ndim != 3 or math.prod(array.shape) == 0:
        raise ValueError(f"need a non-empty 3D array, got shape {tuple(array.shape)}")
