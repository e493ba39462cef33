"""Lesion identity: the one number a tumor candidate keeps for the whole life of a run.

A reviewer points at a lesion by its number ("remove #12"), so a number must mean the same lesion in every
output (warnings, flags, report.json, report.csv, report.html, ``atlasseg review``) and after every change of
the mask (a new threshold, a review edit). Numbers are kept in an *id map*: a label image over the tumor's box
(``lesions/<tumor>.nii.gz`` in the run folder) that remembers, per voxel, the id of the lesion that last held it.

Matching is by overlap, never by one seed voxel: thresholds of one probability map give nested components (a
component at a higher threshold lies inside one at a lower threshold: a tree), so a lesion that shrinks still
overlaps its remembered voxels and keeps its id. The rules (``IdMap.assign``):

* every remembered id that overlaps the new mask has a *home*: the component holding most of its voxels;
* a component homing one id shows it; one homing several (lesions merged at a lower threshold) shows the one it
  overlaps most, and the others stay remembered under their voxels, so they come back when the lesions part;
* a component homing none gets a new id (the next never used: ids are never reused), in size order, so a fresh
  run numbers 1 = largest;
* a lesion that splits keeps its id on its largest part (the one holding most of its voxels); the other parts
  get new ids.

Arrays are numpy (k, j, i) over the box, like the rest of AtlasSegLib.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from .geometry import Grid
from .io import atomic_write_image

ID_DIR = "lesions"
ID_DTYPE = np.uint32
ADDED_SUFFIX = ".added.nii.gz"


class IdMap:
    """The remembered lesion ids of one tumor structure over its box (``start_ijk`` + the array's shape)."""

    def __init__(self, memory: np.ndarray, start_ijk=(0, 0, 0), *, floor: int = 0):
        self.memory = memory.astype(ID_DTYPE, copy=False)
        self.start_ijk = tuple(int(v) for v in start_ijk)
        # Ids below ``floor`` were given once (e.g. recorded in review decisions): never give them again.
        self.floor = int(floor)

    @property
    def next_id(self) -> int:
        return max(int(self.memory.max()) if self.memory.size else 0, self.floor) + 1

    # ------------------------------------------------------------------------------------------ matching
    def assign(self, labelling, *, update: bool = False) -> dict:
        """``{label: id}`` for the components of ``labelling`` (a ``postprocess.Labelling`` over the same box).
        ``update``: remember the result (the new components' voxels under their ids); without it the same
        call gives the same ids again, so a listing shows exactly what the next edit will keep."""
        parts = labelling.parts
        if not parts:
            return {}
        labels = labelling.labels
        fg = labels != 0
        lab = labels[fg].astype(np.int64)
        mem = self.memory[fg].astype(np.int64)
        # Overlap of each (component label, remembered id) pair.
        known = mem != 0
        overlap = {}
        if known.any():
            key = lab[known] * (1 << 32) + mem[known]
            uniq, cnt = np.unique(key, return_counts=True)
            for k, c in zip(uniq.tolist(), cnt.tolist()):
                overlap[(k >> 32, k & 0xFFFFFFFF)] = c
        rank = {p[0]: r for r, p in enumerate(parts)}
        home = {}  # id -> label holding most of its voxels (ties: the larger component)
        for (label, rid), c in overlap.items():
            if label not in rank:
                continue
            best = home.get(rid)
            if best is None or (c, -rank[label]) > (overlap[(best, rid)], -rank[best]):
                home[rid] = label
        homes = {}
        for rid, label in home.items():
            homes.setdefault(label, []).append(rid)
        ids = {}
        nxt = self.next_id
        for label, _slc, _n in parts:  # size order: new ids 1 = largest on a fresh run
            homed = homes.get(label)
            if homed:
                ids[label] = max(homed, key=lambda rid: (overlap[(label, rid)], -rid))
            else:
                ids[label] = nxt
                nxt += 1
        if update:
            self._remember(fg, lab, mem, home, ids)
            self.floor = max(self.floor, nxt - 1)
        return ids

    def _remember(self, fg, lab, mem, home: dict, ids: dict) -> None:
        """Write the shown ids under their components' voxels, except where a voxel remembers an id at home
        in that same component (a merged lesion: it must come back when the lesions part again)."""
        top = int(max(lab.max(), 0)) + 1
        shown = np.zeros(top, ID_DTYPE)
        for label, rid in ids.items():
            shown[label] = rid
        home_of = np.zeros(int(mem.max()) + 1 if mem.size else 1, np.int64)
        for rid, label in home.items():
            if rid < home_of.size:
                home_of[rid] = label
        keep = (mem != 0) & (home_of[mem] == lab)
        self.memory[fg] = np.where(keep, mem, shown[lab]).astype(ID_DTYPE)

    def ids_in_rank_order(self, labelling, *, update: bool = False) -> list:
        """The ids of ``labelling``'s components, largest first (the order of ``postprocess.components``)."""
        ids = self.assign(labelling, update=update)
        return [ids[p[0]] for p in labelling.parts]

    def remembered(self, rid: int) -> np.ndarray:
        """Boolean box mask of the voxels remembered under id ``rid``."""
        return self.memory == int(rid)

    def id_at(self, seed_ijk) -> Optional[int]:
        """The id remembered at a full-grid (i, j, k) voxel (None outside the box or never a lesion's)."""
        kji = (np.asarray(seed_ijk) - np.asarray(self.start_ijk))[::-1]
        if np.any(kji < 0) or np.any(kji >= self.memory.shape):
            return None
        v = int(self.memory[tuple(int(x) for x in kji)])
        return v or None

    def paint_seed(self, seed_ijk, rid: int) -> None:
        """Remember ``rid`` at one voxel (migrating a review state that kept seeds, not an id map)."""
        kji = (np.asarray(seed_ijk) - np.asarray(self.start_ijk))[::-1]
        if np.all(kji >= 0) and np.all(kji < self.memory.shape):
            self.memory[tuple(int(x) for x in kji)] = int(rid)
        self.floor = max(self.floor, int(rid))

    # ------------------------------------------------------------------------------------------ files
    @staticmethod
    def path(outdir, name: str) -> Path:
        return Path(outdir) / ID_DIR / f"{name}.nii.gz"

    @staticmethod
    def added_path(outdir, name: str) -> Path:
        """The lesions a person added (one click), each under its id, on the same box: a threshold change rebuilds
        the mask from the probability map, which may not hold them (an image-path lesion), so they are pasted
        back from here."""
        return Path(outdir) / ID_DIR / f"{name}{ADDED_SUFFIX}"

    @classmethod
    def read(cls, path, start_ijk, shape, *, floor: int = 0) -> Optional["IdMap"]:
        """The id map stored at ``path`` when it covers exactly this box, else None."""
        path = Path(path)
        if not path.is_file():
            return None
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        if tuple(arr.shape) != tuple(shape):
            return None  # another box (the run was redone): the ids start afresh
        return cls(arr, start_ijk, floor=floor)

    def write(self, path, box_grid: Grid) -> None:
        image = sitk.GetImageFromArray(self.memory)
        image.SetSpacing(box_grid.spacing)
        image.SetOrigin(box_grid.origin)
        image.SetDirection(box_grid.direction)
        atomic_write_image(image, path)


def drop_ids(mask_box: np.ndarray, labelling, ids: dict, idmap: IdMap, removed: set) -> int:
    """Zero, in ``mask_box``, every component whose id is in ``removed`` and every voxel remembered under a
    removed id (a false positive that merged with another candidate at a lower threshold): a lesion a reviewer
    threw away stays away whatever the threshold. Returns the number of voxels dropped."""
    if not removed:
        return 0
    before = int(np.count_nonzero(mask_box))
    for label, slc, _ in labelling.parts:
        if ids.get(label) in removed:
            mask_box[slc][labelling.labels[slc] == label] = 0
    gone = np.isin(idmap.memory, np.fromiter(removed, dtype=np.int64))
    mask_box[gone] = 0
    return before - int(np.count_nonzero(mask_box))


def merge_lesion_checks(components: list, checks: list) -> None:
    """Put each lesion's checks (``plausibility.check_structures(lesions=...)``: ``inside_organ_pct``,
    ``mean_hu``, ``flags``) on its report.json component, matched by lesion id."""
    by_id = {int(c["id"]): c for c in checks}
    for comp in components:
        found = by_id.get(int(comp["id"]))
        comp["inside_organ_pct"] = found["inside_organ_pct"] if found else None
        comp["mean_hu"] = found["mean_hu"] if found else None
        comp["flags"] = list(found["flags"]) if found else []
