"""The sensitivity / false-positive workflow, host-independent: re-threshold a kept tumor probability map,
list its candidates, and remove or keep components — each edit returning what changed so it can be undone.

The clinical idea: run the tumor model over-sensitive (a low threshold) so it misses almost nothing, then
throw away each false positive in seconds instead of drawing each missed tumor by hand in minutes.

Everything here works inside the probability map's box (the gate organ's box), never on the whole volume, so
a slider move costs milliseconds. Arrays are numpy (k, j, i) like the rest of AtlasSegLib; points given to or
returned from the public API in "ijk" are full-input-grid (i, j, k) indices.

Review decisions are keyed by the lesion's id (``lesions.IdMap``: matched by overlap across thresholds and
edits, so a lesion keeps its number while it exists); each also keeps a seed voxel inside the component, which
the Slicer module's in-scene review (no id map) and review states older than id maps go by. The decisions
themselves (``ReviewState``) and the status words live in ``reviewstate`` and are re-exported here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import cc3d
import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .geometry import Grid
from .lesions import IdMap
from .masks import bounding_slices, box_offset
from .postprocess import (Component, Labelling, dilated_gate, labelled_components, min_voxels_of, ranked_components,
                          tumor_labels)
from .reviewstate import (KEPT, KEPT_BELOW, ORIGIN_MODEL, REMOVED, REVIEW_FILE, REVIEW_VERSION, ROW_STATUSES,  # noqa: F401
                          STATUSES, TO_REVIEW, ReviewState, added_ids, origin_of, seed_kji, status_text)
from .run import Run, RunFolder

# ReviewState, the status words, origin_of, added_ids, seed_kji and status_text live in ``reviewstate`` (which
# ``run`` reads review.json into, with no circle); they are imported here too because the Slicer module, the tests
# and other modules use them as ``review.X``.


# Documented defaults when a card names none: "balanced" is the model's own 0.5; the two sensitive points
# trade false positives (seconds each to remove) for fewer missed tumors (minutes each to draw).
DEFAULT_OPERATING_POINTS = {"balanced": 0.5, "high_sensitivity": 0.3, "maximum_sensitivity": 0.1}


def operating_points(card=None, structure: Optional[str] = None) -> dict:
    """Named thresholds for a tumor structure, most specific first: the card's ``operating_points`` may be
    a flat ``{name: value}`` (all tumors) or hold a per-structure ``{structure: {name: value}}`` entry."""
    points = dict(DEFAULT_OPERATING_POINTS)
    raw = {}
    if card is not None:
        raw = card.operating_points if hasattr(card, "operating_points") else dict(card)
    for name, value in raw.items():
        if isinstance(value, dict):
            if name == structure:
                points.update({k: float(v) for k, v in value.items()})
        else:
            points[name] = float(value)
    for name, value in points.items():
        if not 0.0 < value < 1.0:
            raise InputError(f"operating point {name}={value} is not a probability in (0, 1)")
    return points


def _slices(start_kji, stop_kji) -> tuple:
    return tuple(slice(int(a), int(b)) for a, b in zip(start_kji, stop_kji))


@dataclass(frozen=True)
class Candidate:
    """One connected component of a tumor mask, as the review table shows it."""
    component: Component
    organ: Optional[str]
    seed_ijk: tuple  # a voxel inside the component, full input grid (i, j, k)

    label: int  # its value in the labelling's label array (not its id: ids follow size, labels do not)

    @property
    def id(self) -> int:
        return self.component.id

    def as_dict(self) -> dict:
        d = self.component.as_dict()
        d["organ"] = self.organ
        d["seed_ijk"] = [int(v) for v in self.seed_ijk]
        return d


@dataclass
class ProbabilityMap:
    """A kept uint8 p×255 tumor probability map in its box of the input grid."""
    name: str
    q: np.ndarray  # (k, j, i) of the box
    start_ijk: tuple
    input_size_ijk: tuple
    box_grid: Grid
    gate: Optional[np.ndarray] = None  # uint8 box mask (organ, dilated) or None
    min_mm3: float = 0.0
    organs: dict = field(default_factory=dict)  # organ name -> uint8 box mask (undilated), to name each candidate

    @property
    def organ(self) -> Optional[str]:
        return next(iter(self.organs), None)

    @property
    def box_slices(self) -> tuple:
        """The box as (k, j, i) slices of the full input grid."""
        start = np.asarray(self.start_ijk)[::-1]
        return _slices(start, start + np.asarray(self.q.shape))

    @classmethod
    def from_output(cls, outdir, name: str) -> "ProbabilityMap":
        """Read ``probabilities/<name>`` of an AtlasSeg output folder, with its gate built from the organ masks
        exactly as the run built it."""
        outdir = Path(outdir)
        run = Run(outdir, check=False)
        meta_path, image_path = run.probability_meta_path(name), run.probability_path(name)
        if not meta_path.is_file() or not image_path.is_file():
            raise InputError(f"{outdir} keeps no probability map for {name} (probabilities/{name}.nii.gz + .json); "
                             "only tumor structures of a run keep one")
        meta = run.read_probability_meta(name)
        image = sitk.ReadImage(str(image_path))
        q = sitk.GetArrayFromImage(image).astype(np.uint8, copy=False)
        box_grid = Grid.of(image)
        start = tuple(int(v) for v in meta["box_start_ijk"])
        pm = cls(name, q, start, tuple(int(v) for v in meta["input_size_ijk"]), box_grid,
                 min_mm3=float(meta.get("min_component_mm3") or 0.0))
        organs = {}
        for organ in meta.get("gate") or ():
            path = outdir / "segmentations" / f"{organ}.nii.gz"
            if path.is_file():
                organs[organ] = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[pm.box_slices].astype(np.uint8)
        pm.organs = organs
        if organs:
            gate = np.zeros(q.shape, np.uint8)
            for m in organs.values():
                gate |= m
            pm.gate = dilated_gate(gate, q, box_grid.spacing[::-1], float(meta.get("gate_dilation_mm") or 0.0))
        return pm

    def click_gate(self) -> Optional[np.ndarray]:
        """Where a click may add a lesion (``addlesion.add_lesion``'s gate): the gate organs themselves, and the
        dilated gate where the map is not 0. ``gate`` alone is dilated only where the map is non-zero
        (``postprocess.dilated_gate``: exact for every threshold, free on a healthy organ), so it would refuse
        every image-path click where the model gave 0. None without gate organs."""
        if self.gate is None:
            return None
        gate = self.gate.astype(bool)
        for organ in self.organs.values():
            gate |= organ.astype(bool, copy=False)
        return gate

    def labels(self, threshold: float) -> Labelling:
        """The box's tumor mask at ``threshold`` with its components: the engine's own ``tumor_mask`` rule, so
        the mask equals what the full map gives (p ≥ threshold, gated, dust removed)."""
        return tumor_labels(self.q, self.gate, threshold=threshold, voxel_mm3=self.box_grid.voxel_volume_mm3,
                            min_mm3=self.min_mm3)

    def mask(self, threshold: float) -> np.ndarray:
        return self.labels(threshold).mask

    def candidates(self, mask_box: np.ndarray, *, labelling: Optional[Labelling] = None) -> tuple:
        """``(Labelling, [Candidate])`` of a mask in this box (a thresholded one or an edited one)."""
        if labelling is None:
            labelling = ranked_components(mask_box.astype(bool, copy=False))
        return labelling, candidates_of(labelling, self.box_grid, self.start_ijk, q_box=self.q, organs=self.organs)


def candidates_of(labelling: Labelling, box_grid: Grid, start_ijk, *, q_box=None, organs=None) -> list:
    """Candidates of a labelling: statistics, a seed voxel and the organ each overlaps most."""
    comps = labelled_components(labelling, box_grid, start_ijk, q_box=q_box)
    out = []
    for comp, (label, slc, _) in zip(comps, labelling.parts):
        sub = labelling.labels[slc] == label
        organ = None
        if organs:
            overlap = {name: int(np.count_nonzero(m[slc][sub])) for name, m in organs.items()}
            best = max(overlap, key=overlap.get)
            # Gated tumors touch their organ; a component outside every organ mask (in the dilation margin)
            # still belongs to the gate organ when there is just one.
            organ = best if overlap[best] > 0 or len(overlap) == 1 else None
        seed_kji = _seed_voxel(sub) + [s.start for s in slc]
        out.append(Candidate(comp, organ, tuple(int(v) for v in np.asarray(start_ijk) + seed_kji[::-1]), int(label)))
    return out


def _seed_voxel(sub: np.ndarray) -> np.ndarray:
    """The component voxel nearest its centroid (kji within ``sub``): deterministic and inside the component,
    which a centroid itself is not for a C-shaped one."""
    pts = np.argwhere(sub)
    return pts[np.argmin(((pts - pts.mean(0)) ** 2).sum(1))]


# ----------------------------------------------------------------------------------------------- edits
@dataclass
class Edit:
    """What one edit changed: the changed region (k, j, i slices) and its voxels before and after."""
    description: str
    region: tuple
    before: np.ndarray
    after: np.ndarray
    changed_voxels: int
    removed: list = field(default_factory=list)  # (k, j, i) seed of each removed component, for review state

    def undo(self, mask: np.ndarray) -> None:
        mask[self.region] = self.before

    def redo(self, mask: np.ndarray) -> None:
        mask[self.region] = self.after


def _inside(mask: np.ndarray, label) -> np.ndarray:
    return mask != 0 if label is None else mask == label


def _commit(mask: np.ndarray, change: np.ndarray, offset, description: str, *, removed=()) -> Optional[Edit]:
    """Zero the voxels of boolean ``change`` (a sub-array of ``mask`` at ``offset``) and record the edit."""
    local = bounding_slices(change)
    if local is None:
        return None
    lo, hi = box_offset(local), [b.stop for b in local]
    region = _slices(np.add(offset, lo), np.add(offset, hi))
    before = mask[region].copy()
    mask[region][change[local]] = 0
    return Edit(description, region, before, mask[region].copy(), int(change.sum()), list(removed))


def component_at(mask: np.ndarray, kji, *, label=None) -> Optional[tuple]:
    """The 26-connected component of ``mask`` (voxels != 0, or == ``label``) that holds voxel ``kji``, found in
    a window around the point that grows only while the component reaches its border — so a click on a
    small tumor costs a window's worth of work, not a pass over the whole volume.

    Returns ``(offset kji, boolean array of the component within its bounding box)``, or None on background."""
    kji = tuple(int(v) for v in kji)
    shape = np.asarray(mask.shape)
    if any(v < 0 or v >= n for v, n in zip(kji, shape)):
        return None
    if label is None:
        if mask[kji] == 0:
            return None
    elif mask[kji] != label:
        return None
    half = np.array([24, 48, 48])
    while True:
        lo = np.maximum(np.asarray(kji) - half, 0)
        hi = np.minimum(np.asarray(kji) + half + 1, shape)
        window = _inside(mask[_slices(lo, hi)], label)
        labels = cc3d.connected_components(window, connectivity=26)
        comp = labels == labels[tuple(np.asarray(kji) - lo)]
        cbox = bounding_slices(comp)  # never None: the component holds the clicked voxel
        clo = np.array(box_offset(cbox))
        chi = np.array([b.stop for b in cbox])
        # The component can only continue outside the window where it touches a window face that is not
        # the volume's own face.
        touches = ((clo == 0) & (lo > 0)) | ((chi == hi - lo) & (hi < shape))
        if not touches.any():
            return lo + clo, comp[_slices(clo, chi)]
        half = half * 2


def remove_at(mask: np.ndarray, kji, *, label=None) -> Optional[Edit]:
    """Remove the component under voxel ``kji`` (None if it is background)."""
    found = component_at(mask, kji, label=label)
    if found is None:
        return None
    offset, comp = found
    return _commit(mask, comp, offset, "remove component", removed=[tuple(int(v) for v in kji)])


def keep_only_at(mask: np.ndarray, kji, *, label=None) -> Optional[Edit]:
    """Keep only the component under voxel ``kji``; remove every other one (None on background)."""
    found = component_at(mask, kji, label=label)
    if found is None:
        return None
    offset, comp = found
    others = _inside(mask, label)
    others[_slices(offset, offset + np.asarray(comp.shape))] &= ~comp
    removed = _component_seeds(others)
    return _commit(mask, others, (0, 0, 0), "keep only component", removed=removed)


def _component_seeds(change: np.ndarray) -> list:
    if not change.any():
        return []
    lab = ranked_components(change)
    return [tuple(int(v) for v in _seed_voxel(lab.labels[slc] == label) + [s.start for s in slc])
            for label, slc, _ in lab.parts]


def _remove_where(mask: np.ndarray, label, description: str, drop) -> Optional[Edit]:
    """Remove the components for which ``drop(rank, (label, slices, voxels), labels) -> bool`` is true
    (rank 1 = largest)."""
    inside = _inside(mask, label)
    if not inside.any():
        return None
    lab = ranked_components(inside)
    change = np.zeros(mask.shape, bool)
    removed = []
    for rank, part in enumerate(lab.parts, start=1):
        if drop(rank, part, lab.labels):
            value, slc, _ = part
            sub = lab.labels[slc] == value
            change[slc] |= sub
            removed.append(tuple(int(v) for v in _seed_voxel(sub) + [s.start for s in slc]))
    return _commit(mask, change, (0, 0, 0), description, removed=removed)


def remove_smaller_than(mask: np.ndarray, voxel_mm3: float, min_ml: float, *, label=None) -> Optional[Edit]:
    """Remove every component smaller than ``min_ml`` millilitres."""
    min_voxels = min_voxels_of(voxel_mm3, min_ml * 1000.0)
    return _remove_where(mask, label, f"remove components < {min_ml:g} ml",
                         lambda rank, part, labels: part[2] < min_voxels)


def remove_below_probability(mask: np.ndarray, q: np.ndarray, min_p: float, *, label=None) -> Optional[Edit]:
    """Remove every component whose highest probability is below ``min_p`` (``q``: uint8 p×255 aligned with
    ``mask``)."""
    def drop(rank, part, labels):
        value, slc, _ = part
        return float(q[slc][labels[slc] == value].max()) / 255.0 < min_p
    return _remove_where(mask, label, f"remove components with max probability < {min_p:g}", drop)


def keep_largest(mask: np.ndarray, n: int, *, label=None) -> Optional[Edit]:
    """Keep the ``n`` largest components; remove the rest (for organs: stray islands)."""
    if n < 1:
        raise InputError(f"keep at least one component (got n={n})")
    return _remove_where(mask, label, f"keep largest {n}", lambda rank, part, labels: rank > n)


def counts(rows: list) -> dict:
    """The review counter: candidates, removed, kept (below threshold too), to review."""
    st = [status_text(r) for r in rows]
    return {"candidates": len(rows), "removed": st.count(REMOVED), "kept": st.count(KEPT) + st.count(KEPT_BELOW),
            "to_review": st.count(TO_REVIEW)}


def counter_text(rows: list) -> str:
    c = counts(rows)
    n_below = sum(1 for r in rows if status_text(r) == KEPT_BELOW)
    below = f" ({n_below} below threshold)" if n_below else ""
    return (f"{c['candidates']} candidates, {c['removed']} removed, {c['kept']} kept{below}, "
            f"{c['to_review']} to review")


def load_review(outdir) -> ReviewState:
    """review.json of a folder, read by the run folder's owner (an empty state when there is none)."""
    return RunFolder(outdir, check=False).read_review()


def save_review(outdir, state: ReviewState) -> Path:
    """Write review.json through the run folder's owner (schema-checked, atomic)."""
    return RunFolder(outdir, check=False).write_review(state)


def tumor_box(run, name: str, report: dict, *, pm: Optional["ProbabilityMap"] = None) -> tuple:
    """``(start_ijk, shape kji)`` of the box a tumor's candidates and id map live in: its probability map's box,
    else the whole input grid."""
    if pm is not None:
        return pm.start_ijk, pm.q.shape
    size = (report.get("input") or {}).get("grid", {}).get("size")
    if size is None:
        size = sitk.ReadImage(str(run.mask_path(name))).GetSize()
    return (0, 0, 0), tuple(int(v) for v in size[::-1])


def id_map(run, name: str, start_ijk, shape, state: ReviewState):
    """The tumor's id map (``lesions.IdMap``) from the run folder, or a fresh one; a review state from before
    id maps (seeds only) is carried over by remembering each known id at its seed voxel."""
    given = [int(d["id"]) for d in state.decisions(name) if d.get("id") is not None]
    registry = (state.tumors.get(name) or {}).get("ids") or []
    floor = max(given + [int(r["id"]) for r in registry], default=0)
    found = IdMap.read(run.id_map_path(name), start_ijk, shape, floor=floor)
    if found is not None:
        return found
    return fresh_id_map(state, name, start_ijk, shape)


def fresh_id_map(state: ReviewState, name: str, start_ijk, shape):
    """An id map for a review without a stored one (a new run, a Slicer scene): each id the review state
    already names is remembered at its seed voxel, so decided lesions keep their numbers; the others are
    numbered after them, largest first."""
    given = [int(d["id"]) for d in state.decisions(name) if d.get("id") is not None]
    registry = (state.tumors.get(name) or {}).get("ids") or []
    floor = max(given + [int(r["id"]) for r in registry], default=0)
    fresh = IdMap(np.zeros(tuple(shape), np.uint32), start_ijk, floor=0)
    for r in registry:
        fresh.paint_seed(r["seed_ijk"], r["id"])
    for d in state.decisions(name):
        if d.get("id") is not None:
            fresh.paint_seed(d["seed_ijk"], d["id"])
    fresh.floor = floor
    return fresh


def adopt_decisions(state: ReviewState, name: str, idmap) -> None:
    """Give every decision made without an id (a Slicer scene's, a version 1 review) the id of its lesion:
    the id ``idmap`` remembers at its seed, else a new id remembered at that seed (a removed lesion no longer
    in the mask). Call after ``idmap`` remembered the current mask."""
    for d in state.decisions(name):
        if d.get("id") is None:
            rid = idmap.id_at(d["seed_ijk"])
            if rid is None:
                rid = idmap.next_id
                idmap.paint_seed(d["seed_ijk"], rid)
            d["id"] = int(rid)
            if isinstance(d.get("component"), dict):
                d["component"]["id"] = int(rid)


def component_details(report: dict, name: str) -> dict:
    """``{id: component}`` of report.json's tumor components: the per-lesion checks (``inside_organ_pct``,
    ``mean_hu``, ``flags``) were computed once, when the mask was last written, and are read from there."""
    info = (report.get("tumors") or {}).get(name) or {}
    return {int(c["id"]): c for c in info.get("components") or () if c.get("id") is not None}


ROW_DETAILS = ("inside_organ_pct", "mean_hu", "flags")


def review_rows(outdir, *, masks: Optional[dict] = None) -> dict:
    """For reports: per tumor structure of a run, one row per current component (statistics, organ, seed, its
    lesion id, flags and review status) plus one per removed component. Tumors with a kept probability map are
    measured inside its box with probabilities; others over the whole mask without. ``masks``: tumor masks
    (full-grid arrays) the caller has already read, by name (saves reading them again)."""
    run = RunFolder(outdir)
    report = run.read_report()
    state = run.read_review()
    out = {}
    for name, info in (report.get("tumors") or {}).items():
        seg_path = run.mask_path(name)
        if not seg_path.is_file():
            continue
        has_map = info.get("probability_file") and run.probability_meta_path(name).is_file()
        if masks is not None and name in masks and has_map:
            full = masks[name]
        else:
            image = sitk.ReadImage(str(seg_path))
            full = sitk.GetArrayViewFromImage(image)
        if has_map:
            pm = ProbabilityMap.from_output(run.folder, name)
            # The current mask file (maybe edited after the run), not a fresh threshold of the map.
            lab, cands = pm.candidates(np.asarray(full[pm.box_slices]))
            start, shape = pm.start_ijk, pm.q.shape
        else:
            lab = ranked_components(full != 0)
            start, shape = (0, 0, 0), full.shape
            cands = candidates_of(lab, Grid.of(image), start)
        idmap = id_map(run, name, start, shape, state)
        ids = idmap.assign(lab)
        rows = state.rows(name, lab.labels, start, cands, ids=ids, absent_kept=True, idmap=idmap)
        details = component_details(report, name)
        for row in rows:
            d = details.get(row["id"]) if row.get("present") else None
            if d is not None and d.get("voxels") == row.get("voxels"):
                for k in ROW_DETAILS:
                    if k in d:
                        row[k] = d[k]
            row.setdefault("flags", [])
            row.setdefault("inside_organ_pct", None)
            row["status_text"] = status_text(row)
        out[name] = rows
    return out


def organ_text(row: dict) -> str:
    """A row's organ as every table shows it: never the organ's bare name for a lesion flagged outside it."""
    organ = row.get("organ") or "-"
    if any(str(f).startswith("outside") for f in row.get("flags") or ()):
        return f"{organ} (outside)" if row.get("organ") else "outside"
    return organ


def drop_removed(mask_box: np.ndarray, state: ReviewState, tumor: str, start_ijk) -> int:
    """Zero the components of ``mask_box`` that hold the seed of a "removed" decision, so a false positive
    thrown away once stays away when the threshold moves. Returns the number of voxels dropped."""
    dropped = 0
    for d in state.decisions(tumor):
        kji = seed_kji(d["seed_ijk"], start_ijk, mask_box.shape) if d["status"] == "removed" else None
        edit = remove_at(mask_box, kji) if kji is not None else None
        dropped += edit.changed_voxels if edit else 0
    return dropped
