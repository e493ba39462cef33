"""The sensitivity / false-positive workflow, host-independent: re-threshold a kept tumor probability map,
list its candidates, and remove or keep components — each edit returning what changed so it can be undone.

The clinical idea: run the tumor model over-sensitive (a low threshold) so it misses almost nothing, then
throw away each false positive in seconds instead of drawing each missed tumor by hand in minutes.

Everything here works inside the probability map's box (the gate organ's box), never on the whole volume, so
a slider move costs milliseconds. Arrays are numpy (k, j, i) like the rest of AtlasSegLib; points given to or
returned from the public API in "ijk" are full-input-grid (i, j, k) indices.

Review decisions are keyed by a seed voxel inside the component rather than by a component number: numbers
change when the threshold changes, a voxel of a kept or removed tumor stays inside it.
"""
from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import cc3d
import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .geometry import Grid
from .io import atomic_write_text
from .postprocess import (Component, Labelling, _min_voxels, dilate_mm, labelled_components, ranked_components,
                          tumor_labels)

REVIEW_FILE = "review.json"
STATUSES = ("unreviewed", "kept", "removed")

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
        meta_path = outdir / "probabilities" / f"{name}.json"
        image_path = outdir / "probabilities" / f"{name}.nii.gz"
        if not meta_path.is_file() or not image_path.is_file():
            raise InputError(f"{outdir} keeps no probability map for {name} (probabilities/{name}.nii.gz + .json); "
                             "only tumor structures of a run keep one")
        meta = json.loads(meta_path.read_text())
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
            pm.gate = dilate_mm(gate, box_grid.spacing[::-1], float(meta.get("gate_dilation_mm") or 0.0))
        return pm

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
    if not change.any():
        return None
    nz = np.nonzero(change)
    lo = [int(a.min()) for a in nz]
    hi = [int(a.max()) + 1 for a in nz]
    local = _slices(lo, hi)
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
        nz = np.nonzero(comp)
        clo = np.array([a.min() for a in nz])
        chi = np.array([a.max() + 1 for a in nz])
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
    min_voxels = _min_voxels(voxel_mm3, min_ml * 1000.0)
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


# ------------------------------------------------------------------------------------------- review state
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class ReviewState:
    """What a reviewer decided per tumor structure: a list of decisions keyed by seed voxels (latest wins)."""
    tumors: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"version": 1, "tumors": self.tumors}, indent=1)

    @classmethod
    def from_json(cls, text: Optional[str]) -> "ReviewState":
        if not text:
            return cls()
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"review state is not valid JSON ({exc}); delete it to start the review afresh") from None
        if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("tumors"), dict):
            raise InputError("review state is not an AtlasSeg review (version 1 with a 'tumors' object)")
        return cls(doc["tumors"])

    def decisions(self, tumor: str) -> list:
        return self.tumors.get(tumor, {}).get("decisions", [])

    def set_threshold(self, tumor: str, threshold: float) -> None:
        self.tumors.setdefault(tumor, {"threshold": None, "decisions": []})["threshold"] = float(threshold)

    def decide(self, tumor: str, candidate, status: str) -> None:
        """Record ``status`` ("kept", "removed" or "unreviewed" to forget earlier decisions) for a candidate
        (a ``Candidate`` or its ``as_dict()``)."""
        if status not in STATUSES:
            raise InputError(f"review status must be one of {', '.join(STATUSES)}, not {status!r}")
        comp = candidate.as_dict() if hasattr(candidate, "as_dict") else dict(candidate)
        entry = self.tumors.setdefault(tumor, {"threshold": None, "decisions": []})
        seed = [int(v) for v in comp["seed_ijk"]]
        # Latest decision wins in status_of; dropping an earlier one with the same seed keeps the list short.
        entry["decisions"] = [d for d in entry["decisions"] if d["seed_ijk"] != seed]
        if status != "unreviewed":
            entry["decisions"].append({"seed_ijk": seed, "status": status, "component": comp, "at": _now()})

    def under_seeds(self, tumor: str, array_box: np.ndarray, start_ijk) -> list:
        """``(decision, value of array_box at its seed voxel)`` for every decision, in order; the value is 0 when
        the seed lies outside the box (``array_box``: a label or mask array whose corner is ``start_ijk``)."""
        out = []
        for d in self.decisions(tumor):
            kji = seed_kji(d["seed_ijk"], start_ijk, array_box.shape)
            out.append((d, int(array_box[kji]) if kji is not None else 0))
        return out

    def status_of(self, tumor: str, labels_box: np.ndarray, start_ijk, label: int) -> str:
        """The status of component ``label`` (its value in ``labels_box``, a label array whose corner is
        ``start_ijk``): the latest decision whose seed voxel lies inside it, else "unreviewed"."""
        status = "unreviewed"
        for d, value in self.under_seeds(tumor, labels_box, start_ijk):
            if value == label:
                status = d["status"]
        return status

    def removed_labels(self, tumor: str, labels_box: np.ndarray, start_ijk) -> set:
        """The labels of ``labels_box`` that hold the seed of a "removed" decision: false positives a reviewer
        threw away, which a new threshold must not bring back."""
        return {value for d, value in self.under_seeds(tumor, labels_box, start_ijk)
                if value and d["status"] == "removed"}

    def rows(self, tumor: str, labels_box: np.ndarray, start_ijk, candidates: list) -> list:
        """Review rows: every current candidate with its status, then each removed component no longer in
        the mask (from its decision)."""
        rows = []
        for cand in candidates:
            row = cand.as_dict()
            row["status"] = self.status_of(tumor, labels_box, start_ijk, cand.label)
            row["present"] = True
            rows.append(row)
        for d, value in self.under_seeds(tumor, labels_box, start_ijk):
            if not value and d["status"] == "removed":
                row = dict(d["component"])
                row["status"] = "removed"
                row["present"] = False
                # No number: ids rank the components present now, and the one it had at removal time may
                # belong to another candidate by now.
                row["id"] = None
                rows.append(row)
        return rows


def seed_kji(seed_ijk, start_ijk, shape) -> Optional[tuple]:
    """A full-grid (i, j, k) seed as a (k, j, i) index into a box at ``start_ijk`` of ``shape``; None outside."""
    kji = (np.asarray(seed_ijk) - np.asarray(start_ijk))[::-1]
    return tuple(int(v) for v in kji) if np.all(kji >= 0) and np.all(kji < shape) else None


def counts(rows: list) -> dict:
    """The review counter: candidates, removed, kept, to review."""
    n = {s: sum(1 for r in rows if r.get("status") == s) for s in STATUSES}
    return {"candidates": len(rows), "removed": n["removed"], "kept": n["kept"], "to_review": n["unreviewed"]}


def counter_text(rows: list) -> str:
    c = counts(rows)
    return f"{c['candidates']} candidates, {c['removed']} removed, {c['kept']} kept, {c['to_review']} to review"


def load_review(outdir) -> ReviewState:
    path = Path(outdir) / REVIEW_FILE
    return ReviewState.from_json(path.read_text(encoding="utf-8")) if path.is_file() else ReviewState()


def save_review(outdir, state: ReviewState) -> Path:
    path = Path(outdir) / REVIEW_FILE
    atomic_write_text(state.to_json(), path)
    return path


def review_rows(outdir, *, masks: Optional[dict] = None) -> dict:
    """For reports: per tumor structure of a run, one row per current component (statistics, organ, seed and
    review status) plus one per removed component. Tumors with a kept probability map are measured inside its
    box with probabilities; others over the whole mask without. ``masks``: tumor masks (full-grid arrays) the
    caller has already read, by name (saves reading them again)."""
    outdir = Path(outdir)
    report_path = outdir / "report.json"
    if not report_path.is_file():
        raise InputError(f"{outdir} is not an AtlasSeg output folder (no report.json)")
    report = json.loads(report_path.read_text())
    state = load_review(outdir)
    out = {}
    for name, info in (report.get("tumors") or {}).items():
        seg_path = outdir / "segmentations" / f"{name}.nii.gz"
        if not seg_path.is_file():
            continue
        has_map = info.get("probability_file") and (outdir / "probabilities" / f"{name}.json").is_file()
        if masks is not None and name in masks and has_map:
            full = masks[name]
        else:
            image = sitk.ReadImage(str(seg_path))
            full = sitk.GetArrayViewFromImage(image)
        if has_map:
            pm = ProbabilityMap.from_output(outdir, name)
            # The current mask file (maybe edited after the run), not a fresh threshold of the map.
            lab, cands = pm.candidates(np.asarray(full[pm.box_slices]))
            start = pm.start_ijk
        else:
            lab = ranked_components(full != 0)
            start = (0, 0, 0)
            cands = candidates_of(lab, Grid.of(image), start)
        out[name] = state.rows(name, lab.labels, start, cands)
    return out


def drop_removed(mask_box: np.ndarray, state: ReviewState, tumor: str, start_ijk) -> int:
    """Zero the components of ``mask_box`` that hold the seed of a "removed" decision, so a false positive
    thrown away once stays away when the threshold moves. Returns the number of voxels dropped."""
    dropped = 0
    for d in state.decisions(tumor):
        kji = seed_kji(d["seed_ijk"], start_ijk, mask_box.shape) if d["status"] == "removed" else None
        edit = remove_at(mask_box, kji) if kji is not None else None
        dropped += edit.changed_voxels if edit else 0
    return dropped


# ------------------------------------------------------------------------------------ output-folder edits
def edit_run(outdir, structure: str, *, remove_ids=(), keep_ids=(), remove_smaller_ml: Optional[float] = None,
             remove_below_probability_p: Optional[float] = None, keep_largest_n: Optional[int] = None) -> dict:
    """Review a finished run from the command line: remove or keep candidates (ids as ``review_rows`` lists
    them), or remove components by size, probability or rank; rewrites the structure's mask, the combined
    labels, report.json and review.json (each atomically). Returns ``{"removed": n, "kept": n,
    "changed_voxels": n}``."""
    from .outputs import SEG_DIR, commit_edit, load_run, update_entry
    from .io import atomic_write_image

    # Checked before anything is read or changed: a probability of 1.5 would otherwise remove every candidate.
    if remove_below_probability_p is not None and not 0.0 < remove_below_probability_p <= 1.0:
        raise InputError(f"--remove-below-probability must be a probability in (0, 1], got {remove_below_probability_p}")
    if remove_smaller_ml is not None and not remove_smaller_ml > 0.0:
        raise InputError(f"--remove-smaller-than must be a volume in ml above 0, got {remove_smaller_ml}")
    if keep_largest_n is not None and keep_largest_n < 1:
        raise InputError(f"--keep-largest must be at least 1, got {keep_largest_n}")
    outdir = Path(outdir)
    report, card = load_run(outdir)
    entries = {e["name"]: e for e in report["structures"]}
    if structure not in entries:
        raise InputError(f"{structure} is not a structure of this run; structures: {', '.join(entries)}")
    tumor = structure in (report.get("tumors") or {})
    if (remove_ids or keep_ids or remove_below_probability_p is not None) and not tumor:
        raise InputError(f"candidate review works on tumor structures; {structure} is an organ "
                         "(use --keep-largest or --remove-smaller-than for organs)")
    seg_path = outdir / SEG_DIR / f"{structure}.nii.gz"
    image = sitk.ReadImage(str(seg_path))
    full = sitk.GetArrayFromImage(image).astype(np.uint8, copy=False)
    grid = Grid.of(image)
    state = load_review(outdir)
    pm = None
    if tumor and report["tumors"][structure].get("probability_file"):
        pm = ProbabilityMap.from_output(outdir, structure)
        box = pm.box_slices
        start = pm.start_ijk
        q = pm.q
        lab, cands = pm.candidates(full[box])
    else:
        box = tuple(slice(0, n) for n in full.shape)
        start = (0, 0, 0)
        q = None
        lab = ranked_components(full != 0)
        cands = candidates_of(lab, grid, start)
    by_id = {c.id: c for c in cands}
    for i in (*remove_ids, *keep_ids):
        if i not in by_id:
            raise InputError(f"{structure} has no candidate {i}; candidates are 1..{len(cands)} "
                             "(list them with 'atlasseg review OUTDIR')")
    region = full[box]  # a view: edits land in ``full``
    changed = 0
    removed = 0
    for i in remove_ids:
        cand = by_id[i]
        edit = remove_at(region, (np.asarray(cand.seed_ijk) - np.asarray(start))[::-1])
        changed += edit.changed_voxels if edit else 0
        removed += 1
        state.decide(structure, cand, "removed")
    for i in keep_ids:
        state.decide(structure, by_id[i], "kept")
    batch = []
    if remove_smaller_ml is not None:
        batch.append(remove_smaller_than(region, grid.voxel_volume_mm3, remove_smaller_ml))
    if remove_below_probability_p is not None:
        if q is None:
            raise InputError(f"{structure} keeps no probability map: cannot remove by probability")
        batch.append(remove_below_probability(region, q, remove_below_probability_p))
    if keep_largest_n is not None:
        batch.append(keep_largest(region, keep_largest_n))
    seeds_to_cand = {c.seed_ijk: c for c in cands}
    for edit in filter(None, batch):
        changed += edit.changed_voxels
        for seed_kji in edit.removed:
            seed_ijk = tuple(int(v) for v in np.asarray(start) + np.asarray(seed_kji)[::-1])
            cand = seeds_to_cand.get(seed_ijk) or _candidate_holding(cands, lab, start, seed_ijk)
            removed += 1
            if tumor and cand is not None:
                state.decide(structure, cand, "removed")
    if changed:
        out = sitk.GetImageFromArray(full)
        out.CopyInformation(image)
        atomic_write_image(out, seg_path)
        update_entry(report, structure, region, pm.box_grid if pm is not None else grid, start, q_box=q)
    if tumor:
        save_review(outdir, state)  # before the report is rebuilt: it lists the statuses
    commit_edit(outdir, report, card, image, {"action": "review", "structure": structure, "removed": removed,
                                              "kept": len(keep_ids), "changed_voxels": changed},
                masks_changed=bool(changed))
    return {"removed": removed, "kept": len(keep_ids), "changed_voxels": changed}


def _candidate_holding(cands, lab: Labelling, start_ijk, seed_ijk):
    kji = seed_kji(seed_ijk, start_ijk, lab.labels.shape)
    value = lab.labels[kji] if kji is not None else 0
    return next((c for c in cands if c.label == value), None) if value else None


# ------------------------------------------------------------------------------------------------- CLI
def cmd_review(args) -> int:
    actions = (args.remove or args.keep or args.remove_smaller_than is not None
               or args.remove_below_probability is not None or args.keep_largest is not None)
    if actions:
        if not args.structure:
            raise InputError("name the structure to edit with --structure (e.g. --structure liver_tumor)")
        result = edit_run(args.outdir, args.structure, remove_ids=tuple(args.remove), keep_ids=tuple(args.keep),
                          remove_smaller_ml=args.remove_smaller_than,
                          remove_below_probability_p=args.remove_below_probability,
                          keep_largest_n=args.keep_largest)
        print(f"{args.structure}: {result['removed']} removed, {result['kept']} kept "
              f"({result['changed_voxels']} voxels changed)")
    rows = review_rows(args.outdir)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for tumor, tumor_rows in rows.items():
        print(f"{tumor}: {counter_text(tumor_rows)}")
        print(f"  {'id':>3}  {'organ':<14} {'ml':>8} {'long cm':>8} {'short cm':>8} {'max p':>6}  status")
        for row in tumor_rows:
            rid = row["id"] if row.get("id") is not None else "-"
            print(f"  {rid:>3}  {str(row.get('organ') or '-'):<14} {row['volume_ml']:>8.2f} "
                  f"{row['longest_axial_diameter_mm'] / 10:>8.1f} {row['perpendicular_diameter_mm'] / 10:>8.1f} "
                  f"{row['max_probability']:>6.2f}  {row['status']}")
    return 0
