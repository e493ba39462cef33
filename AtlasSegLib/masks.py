"""Small rules about boolean masks that many modules need, each written once: the bounding box of a mask and the
Dice overlap of two masks. Pure numpy; arrays are indexed (k, j, i) like everywhere in AtlasSeg, but nothing here
depends on the axis order."""
from __future__ import annotations

from typing import Optional

import numpy as np


def bounding_slices(mask: np.ndarray, margin: int = 0) -> Optional[tuple]:
    """The smallest box holding every non-zero voxel of ``mask``, as one ``slice`` per axis (usable as
    ``array[box]``), grown by ``margin`` voxels on each side and clipped to the array; None when the mask is empty.

    Per-axis projections (``any`` over the other axes) instead of ``np.nonzero`` on the whole array: no index array
    as large as the mask is made, which matters for a 512x512x300 organ."""
    mask = np.asarray(mask)
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=others) if others else mask)
        if idx.size == 0:
            return None
        box.append(slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def box_offset(box: tuple) -> tuple:
    """The corner (start of each axis) of a box of slices, e.g. to place a cropped mask back."""
    return tuple(int(s.start or 0) for s in box)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two masks (non-zero = inside); 1.0 when both are empty (nothing to find, nothing found)."""
    a = np.asarray(a) != 0
    b = np.asarray(b) != 0
    denom = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if denom == 0 else 2.0 * int(np.count_nonzero(a & b)) / denom
