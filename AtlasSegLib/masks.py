"""Small rules about boolean masks that many modules need, each written once: the bounding box of a mask and the
Dice overlap of two masks. Pure numpy; arrays are indexed (k, j, i) like everywhere in AtlasSeg, but nothing here
depends on the axis order."""
from __future__ import annotations

from typing import Optional

import numpy as np


def bounding_slices(mask: np.ndarray, margin: int = 0) -> Optional[tuple]:
    """The smallest box holding every non-zero voxel of ``mask``, as one ``slice`` per axis (usable as
    ``array[box]``), grown by ``margin`` voxels on each side and clipped to the array; None when the mask is empty.

    Projections instead of ``np.nonzero`` on the whole array (no index array as large as the mask, which matters
    for a 512x512x300 organ), in two passes: the first axis's range from its rows (contiguous in memory), then
    the other axes' from the one plane that slab of rows projects to. Called once per structure of a run."""
    mask = np.asarray(mask)
    if mask.ndim == 0:
        return ()
    rows = (mask.reshape(mask.shape[0], -1).any(axis=1) if mask.flags.c_contiguous
            else mask.any(axis=tuple(range(1, mask.ndim))))
    idx = np.flatnonzero(rows)
    if idx.size == 0:
        return None
    ranges = [(int(idx[0]), int(idx[-1]) + 1)]
    if mask.ndim > 1:
        plane = mask[ranges[0][0]:ranges[0][1]].any(axis=0)  # non-empty: the slab holds every non-zero voxel
        for axis in range(plane.ndim):
            others = tuple(a for a in range(plane.ndim) if a != axis)
            idx = np.flatnonzero(plane.any(axis=others) if others else plane)
            ranges.append((int(idx[0]), int(idx[-1]) + 1))
    return tuple(slice(max(a - margin, 0), min(b + margin, n)) for (a, b), n in zip(ranges, mask.shape))


def box_offset(box: tuple) -> tuple:
    """The corner (start of each axis) of a box of slices, e.g. to place a cropped mask back."""
    return tuple(int(s.start or 0) for s in box)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two masks (non-zero = inside); 1.0 when both are empty (nothing to find, nothing found)."""
    a = np.asarray(a) != 0
    b = np.asarray(b) != 0
    denom = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if denom == 0 else 2.0 * int(np.count_nonzero(a & b)) / denom
