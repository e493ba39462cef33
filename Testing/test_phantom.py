"""Unit tests of the synthetic CT phantom (AtlasSegLib.phantom): grid, labels, HU, anatomy, seeds, tumors."""
import time

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from AtlasSegLib.phantom import ORGANS, STRUCTURES, TUMOR, Phantom, make_phantom

# A coarse grid covering the default field of view: 8x fewer voxels, so most tests stay fast.
COARSE = {"size": (96, 80, 48), "spacing_mm": (4.0, 4.0, 5.0)}
FLIP_XY = (-1, 0, 0, 0, -1, 0, 0, 0, 1)


@pytest.fixture(scope="module")
def default():
    return make_phantom(7)


@pytest.fixture(scope="module")
def coarse():
    return make_phantom(11, **COARSE)


def arr(image):
    return sitk.GetArrayFromImage(image)


def centroid_mm(label: sitk.Image) -> np.ndarray:
    """Physical (LPS) centre of mass of a mask."""
    k, j, i = np.nonzero(arr(label))
    return np.asarray(label.TransformContinuousIndexToPhysicalPoint((i.mean(), j.mean(), k.mean())))


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing())
            and np.allclose(a.GetOrigin(), b.GetOrigin()) and np.allclose(a.GetDirection(), b.GetDirection()))


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def test_default_grid_and_types(default):
    img = default.image
    assert isinstance(default, Phantom) and default.seed == 7
    assert img.GetSize() == (192, 160, 96)
    assert np.allclose(img.GetSpacing(), (2.0, 2.0, 2.5))
    assert np.allclose(img.GetDirection(), np.eye(3).ravel())
    assert img.GetPixelID() == sitk.sitkInt16
    # Centred on the phantom: the middle of the grid is the physical origin.
    centre = img.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in img.GetSize()])
    assert np.allclose(centre, 0.0, atol=1e-6)


def test_labels_are_binary_uint8_on_the_image_grid(default):
    assert set(default.labels) == set(STRUCTURES)
    for name, label in default.labels.items():
        assert label.GetPixelID() == sitk.sitkUInt8, name
        assert same_grid(label, default.image), name
        values = np.unique(arr(label))
        assert set(values.tolist()) == {0, 1}, name


def test_no_tumor_label_without_tumors():
    ph = make_phantom(3, tumors=False, **COARSE)
    assert set(ph.labels) == set(ORGANS)


@pytest.mark.parametrize("name, lo, hi", [
    ("liver", 80, 125), ("spleen", 90, 140), ("kidney_right", 120, 200), ("kidney_left", 120, 200),
    ("pancreas", 70, 110), ("aorta", 150, 220), ("vertebrae", 350, 750),
])
def test_organ_hu(default, name, lo, hi):
    # Median HU away from the edges (partial volume) and outside tumors.
    mask = ndimage.binary_erosion(arr(default.labels[name]).astype(bool), iterations=1)
    mask &= ~arr(default.labels[TUMOR]).astype(bool)
    assert lo <= np.median(arr(default.image)[mask]) <= hi


def test_background_hu(default):
    ct = arr(default.image)
    assert np.median(ct[:, :8, :8]) < -950  # air in the grid's corner, outside the body
    assert -1024 <= ct.min() and ct.max() < 1000
    # Subcutaneous and intra-abdominal fat is a sizeable part of the body.
    body = ct > -500
    fat = (ct > -140) & (ct < -60)
    assert fat.sum() > 0.08 * body.sum()
    # Noise: the liver's interior is not flat.
    liver = ndimage.binary_erosion(arr(default.labels["liver"]).astype(bool), iterations=3)
    liver &= ~ndimage.binary_dilation(arr(default.labels[TUMOR]).astype(bool), iterations=3)
    assert 6 < ct[liver].std() < 25


def test_anatomy_in_patient_space(coarse):
    c = {name: centroid_mm(coarse.labels[name]) for name in ORGANS}
    x, y, z = 0, 1, 2  # LPS: +x patient left, +y posterior, +z superior
    assert c["liver"][x] < -20 and c["spleen"][x] > 40
    assert c["kidney_right"][x] < -30 and c["kidney_left"][x] > 30
    assert c["kidney_right"][z] < c["kidney_left"][z]  # the right kidney sits lower
    assert abs(c["vertebrae"][x]) < 15
    assert c["aorta"][x] > c["vertebrae"][x] and c["aorta"][y] < c["vertebrae"][y]  # anterior-left of the spine
    assert c["pancreas"][y] < c["aorta"][y]  # the pancreas crosses in front of the aorta
    for side in ("kidney_right", "kidney_left"):
        assert c[side][y] > c["aorta"][y]  # retroperitoneal, posterior
    assert c["liver"][z] > c["kidney_right"][z]


def test_organs_do_not_overlap(coarse):
    total = sum(arr(coarse.labels[name]).astype(int) for name in ORGANS)
    assert total.max() == 1


def test_sizes_are_plausible(default):
    ml = np.prod(default.image.GetSpacing()) / 1000.0
    volume = {name: arr(default.labels[name]).sum() * ml for name in ORGANS}
    assert 1000 < volume["liver"] < 2600
    assert 80 < volume["spleen"] < 400
    for name in ("kidney_right", "kidney_left"):
        assert 80 < volume[name] < 300
    assert 25 < volume["pancreas"] < 150


def test_same_seed_is_reproducible():
    a, b = make_phantom(5, **COARSE), make_phantom(5, **COARSE)
    assert np.array_equal(arr(a.image), arr(b.image))
    for name in STRUCTURES:
        assert np.array_equal(arr(a.labels[name]), arr(b.labels[name]))


def test_seeds_differ(coarse):
    other = make_phantom(12, **COARSE)
    assert not np.array_equal(arr(coarse.image), arr(other.image))
    for name in ORGANS:
        d = dice(arr(coarse.labels[name]), arr(other.labels[name]))
        assert d < 0.97, name


def test_tumors_do_not_change_the_patient(coarse):
    plain = make_phantom(11, tumors=False, **COARSE)
    for name in ORGANS:
        assert np.array_equal(arr(coarse.labels[name]), arr(plain.labels[name])), name
    tumor = arr(coarse.labels[TUMOR]).astype(bool)
    ct, ct_plain = arr(coarse.image).astype(float), arr(plain.image).astype(float)
    # The image differs only around the tumors (their blurred edge reaches a few voxels out).
    changed = ct != ct_plain
    assert changed.any()
    near = ndimage.binary_dilation(tumor, np.ones((3, 3, 3), bool), iterations=12)
    assert not (changed & ~near).any()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_tumors_inside_liver(seed):
    ph = make_phantom(seed, **COARSE)
    tumor = arr(ph.labels[TUMOR]).astype(bool)
    liver = arr(ph.labels["liver"]).astype(bool)
    assert tumor.any()
    assert not (tumor & ~liver).any()  # the liver label includes the tumors
    # Centres lie in the 30-70 % band of the liver's height: each tumor's centre is well inside it.
    k = np.nonzero(liver.any(axis=(1, 2)))[0]
    components, n = ndimage.label(tumor)
    for centre in ndimage.center_of_mass(tumor, components, range(1, n + 1)):
        assert k[0] + 0.2 * (k[-1] - k[0]) <= centre[0] <= k[0] + 0.8 * (k[-1] - k[0])


def test_tumors_are_darker_than_liver(default):
    tumor = arr(default.labels[TUMOR]).astype(bool)
    liver = arr(default.labels["liver"]).astype(bool)
    ct = arr(default.image).astype(float)
    healthy = ndimage.binary_erosion(liver, iterations=2) & ~ndimage.binary_dilation(tumor, iterations=3)
    # Hypo-attenuating by 65-145 HU at full strength; the blurred rim and the texture lessen the mean.
    assert np.median(ct[healthy]) - np.median(ct[tumor]) > 30


@pytest.mark.parametrize("direction", [FLIP_XY, "oblique"])
def test_other_directions_give_the_same_patient(coarse, direction):
    if direction == "oblique":
        a, b = np.radians(20), np.radians(10)
        rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
        direction = tuple((rz @ rx).ravel())
    other = make_phantom(11, direction=direction, **COARSE)
    assert np.allclose(other.image.GetDirection(), direction)
    for name in ORGANS:
        moved = sitk.Resample(other.labels[name], coarse.image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        truth = arr(coarse.labels[name])
        inside = arr(sitk.Resample(other.labels[name] * 0 + 1, coarse.image, sitk.Transform(),
                                   sitk.sitkNearestNeighbor, 0)).astype(bool)
        # Compare where both grids see the patient (an oblique grid misses some corners).
        assert dice(arr(moved)[inside], truth[inside]) > 0.85, name
        moved_c = np.argwhere(arr(moved).astype(bool) & inside).mean(axis=0)
        truth_c = np.argwhere(truth.astype(bool) & inside).mean(axis=0)
        assert np.allclose(moved_c * COARSE["spacing_mm"][::-1], truth_c * COARSE["spacing_mm"][::-1], atol=4.0), name


def test_spacing_and_origin_are_honoured():
    ph = make_phantom(2, size=(60, 50, 40), spacing_mm=(3.0, 3.5, 4.0), origin=(-100.0, -80.0, -60.0))
    assert ph.image.GetSize() == (60, 50, 40)
    assert np.allclose(ph.image.GetSpacing(), (3.0, 3.5, 4.0))
    assert np.allclose(ph.image.GetOrigin(), (-100.0, -80.0, -60.0))
    for label in ph.labels.values():
        assert same_grid(label, ph.image)


def test_default_phantom_is_fast():
    t0 = time.perf_counter()
    make_phantom(123)
    assert time.perf_counter() - t0 < 10.0  # < 3 s on an idle 2-core machine; slack for loaded CI runners
