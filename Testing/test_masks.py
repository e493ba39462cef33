"""The shared small mask rules (AtlasSegLib/masks.py) and the one atomic-write rule (io.atomic_path)."""
import os

import numpy as np
import pytest

from AtlasSegLib.io import atomic_path, atomic_write_text
from AtlasSegLib.masks import bounding_slices, box_offset, dice


def test_bounding_slices_is_the_smallest_box_and_margin_is_clipped_to_the_array():
    m = np.zeros((10, 12, 14), bool)
    m[2, 3:5, 13] = True
    m[6, 4, 7] = True
    assert bounding_slices(m) == (slice(2, 7), slice(3, 5), slice(7, 14))
    assert bounding_slices(m, margin=2) == (slice(0, 9), slice(1, 7), slice(5, 14))
    assert m[bounding_slices(m)].sum() == m.sum()
    assert box_offset(bounding_slices(m)) == (2, 3, 7)


def test_bounding_slices_of_an_empty_mask_is_none():
    assert bounding_slices(np.zeros((3, 4, 5), np.uint8)) is None


def test_dice_counts_overlap_and_two_empty_masks_agree_fully():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    assert dice(a, b) == 1.0
    a[0, 0, :2] = True
    assert dice(a, b) == 0.0
    b[0, 0, 1:3] = True
    assert dice(a, b) == pytest.approx(0.5)


def test_atomic_path_leaves_the_old_file_when_the_writer_fails(tmp_path):
    dest = tmp_path / "sub" / "report.json"
    atomic_write_text("old", dest)
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert dest.read_text() == "old"
    assert [p.name for p in dest.parent.iterdir()] == ["report.json"]  # no temporary file left behind


def test_atomic_path_keeps_a_double_suffix_and_a_readable_mode(tmp_path):
    dest = tmp_path / "liver.nii.gz"
    seen = []
    with atomic_path(dest) as tmp:
        seen.append(tmp.name)
        tmp.write_bytes(b"x")
    assert seen[0].endswith(".nii.gz")
    umask = os.umask(0)
    os.umask(umask)
    assert dest.stat().st_mode & 0o777 == 0o666 & ~umask
