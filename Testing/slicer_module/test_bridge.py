"""MRML volume node <-> engine input/output: voxels, dtype and geometry survive exactly (AtlasSegBridge)."""
import numpy as np
import pytest
import SimpleITK as sitk

import slicer

from AtlasSegModule import AtlasSegBridge as bridge


def _rotation(ax, ay, az):
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


DIRECTIONS = {
    "axis-aligned RAS": np.eye(3),
    "LPS-like flip (DICOM default)": np.diag([-1.0, -1.0, 1.0]),
    "left-handed flip of k": np.diag([1.0, 1.0, -1.0]),
    "oblique": _rotation(0.3, -0.4, 0.7),
    "oblique and flipped": _rotation(-0.2, 0.5, 1.1) @ np.diag([1.0, -1.0, 1.0]),
}
SIZE_IJK = (11, 9, 7)


def _geometry(directions):
    return bridge.VolumeGeometry(size=SIZE_IJK, spacing=(0.7123456789, 0.81, 2.5),
                                 origin=(-123.456789012, 45.6789, -300.1),
                                 directions=tuple(tuple(float(v) for v in row) for row in directions))


def _voxels(dtype):
    rng = np.random.default_rng(7)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(-1024, 3000, SIZE_IJK[::-1]).astype(dtype)
    return rng.normal(0, 500, SIZE_IJK[::-1]).astype(dtype)


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
@pytest.mark.parametrize("orientation", list(DIRECTIONS))
def test_volume_written_for_the_engine_keeps_voxels_dtype_and_geometry_exactly(slicer_app, tmp_path, dtype,
                                                                                orientation):
    geometry = _geometry(DIRECTIONS[orientation])
    voxels = _voxels(dtype)
    volume = bridge.volumeNodeFromArray(voxels, geometry, "ct")

    path = bridge.writeVolumeNode(volume, tmp_path / "input.mha")
    image = sitk.ReadImage(str(path))

    assert sitk.GetArrayViewFromImage(image).dtype == dtype
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), voxels)
    # Bit-exact: the engine sees exactly the grid Slicer shows.
    assert bridge.VolumeGeometry.fromSitk(image) == geometry
    # Independent check of the RAS -> LPS convention: voxel (i, j, k) lands at the same physical point.
    ijk = (3, 5, 2)
    ras = geometry.ijkToRas() @ [*ijk, 1.0]
    lps = image.TransformIndexToPhysicalPoint(ijk)
    np.testing.assert_allclose(lps, [-ras[0], -ras[1], ras[2]], atol=1e-9)


@pytest.mark.parametrize("orientation", list(DIRECTIONS))
def test_engine_image_back_to_volume_node_is_exact(slicer_app, orientation):
    geometry = _geometry(DIRECTIONS[orientation])
    image = sitk.GetImageFromArray(_voxels(np.float32))
    geometry.applyToSitk(image)

    volume = bridge.volumeNodeFromSitk(image, "probability")

    assert bridge.VolumeGeometry.fromVolumeNode(volume) == geometry
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), sitk.GetArrayViewFromImage(image))
    assert slicer.util.arrayFromVolume(volume).dtype == np.float32


def test_nifti_geometry_is_within_float32_precision(slicer_app, tmp_path):
    """NIfTI (the engine's output format) stores geometry in float32: differences stay in the µm range."""
    geometry = _geometry(DIRECTIONS["oblique and flipped"])
    volume = bridge.volumeNodeFromArray(_voxels(np.int16), geometry, "ct")

    image = sitk.ReadImage(str(bridge.writeVolumeNode(volume, tmp_path / "ct.nii.gz")))

    assert bridge.VolumeGeometry.fromSitk(image).differences(geometry, toleranceMm=1e-4) == []


def test_arrays_handed_out_are_copies(slicer_app):
    volume = bridge.volumeNodeFromArray(_voxels(np.int16), _geometry(np.eye(3)), "ct")
    copy = bridge.arrayFromVolumeNode(volume)
    copy[:] = 0
    assert slicer.util.arrayFromVolume(volume).any()


def test_box_geometry_moves_only_the_origin():
    geometry = _geometry(DIRECTIONS["oblique"])
    box = geometry.box((2, 3, 1), (4, 4, 3))
    assert box.spacing == geometry.spacing and box.directions == geometry.directions and box.size == (4, 4, 3)
    np.testing.assert_allclose(box.origin, (geometry.ijkToRas() @ [2, 3, 1, 1.0])[:3], atol=1e-12)


def test_geometry_differences_name_the_mismatch():
    geometry = _geometry(np.eye(3))
    moved = bridge.VolumeGeometry(geometry.size, geometry.spacing, (0.0, 0.0, 0.0), geometry.directions)
    assert any("origin" in d for d in geometry.differences(moved))
    assert geometry.differences(geometry) == []


def test_wrong_array_shape_is_refused_with_the_expected_shape(slicer_app):
    with pytest.raises(ValueError, match=r"expected shape \(7, 9, 11\)"):
        bridge.volumeNodeFromArray(np.zeros((11, 9, 7), np.int16), _geometry(np.eye(3)), "ct")
