"""Edits of a finished run folder: a new tumor threshold (``atlasseg threshold``) and review actions
(``atlasseg review``), each followed by what depends on the masks: the combined labels, report.json,
review.json and, when the run has one, the report pages.

Layers, lowest first: ``outputs`` (the run folder's files) <- ``review`` (candidates and decisions) <-
``report`` (pages and pictures) <- ``runedit`` (this module). No layer imports one above it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from .addlesion import ORIGIN_IMAGE, add_lesion, parse_point, ras_to_ijk, resize_lesion, voxel_to_ijk
from .errors import InputError
from .geometry import Grid
from .lesions import IdMap, drop_ids, merge_lesion_checks
from .outputs import mask_image, commit_edit, load_run, update_entry
from .plausibility import recheck_tumor
from .postprocess import ranked_components
from .review import (KEPT, REMOVED, ProbabilityMap, ReviewState, added_ids, adopt_decisions, candidates_of, id_map,
                     keep_largest, origin_of, remove_at, remove_below_probability, remove_smaller_than, seed_kji)
from .run import Run


BELOW_THRESHOLD_WARNING = "{name}: kept candidate"  # how the warnings this module adds begin (per tumor)


def below_threshold_warnings(report: dict, names) -> list:
    """The "kept, below threshold" warnings report.json holds for these tumors."""
    return [w for w in report.get("warnings") or ()
            if any(w.startswith(BELOW_THRESHOLD_WARNING.format(name=n) + " ") for n in names)]


class _RunCT:
    """The run's CT on its grid (``report.load_run_ct``: the input path, else OUTDIR/ct.nii.gz, where the demo
    keeps its phantom), read once per edit and only when a tumor's flags need it; None when it cannot be read
    (``why`` says so)."""

    def __init__(self, outdir: Path, report: dict, grid: Grid):
        self.outdir, self.report, self.grid = outdir, report, grid
        self._kji, self.why, self._read = None, "", False

    @property
    def kji(self):
        if not self._read:
            self._read = True
            from .report import load_run_ct  # heavy (pictures): only when a tumor's flags are rechecked

            image, _, _ = load_run_ct(self.outdir, self.report)
            if image is None:
                path = (self.report.get("input") or {}).get("path")
                self.why = f"the run's CT ({path}) cannot be read any more, and there is no ct.nii.gz in the run folder"
            else:
                self._kji = sitk.GetArrayFromImage(image)
        return self._kji


NOT_RECHECKED = "attenuation not rechecked after the change: "


def refresh_tumor_flags(report: dict, name: str, box, mask: np.ndarray, organs: dict, gate, ct: _RunCT, *,
                        ids: Optional[list] = None) -> None:
    """Replace ``name``'s plausibility flags (its report entry's "flags", their "name: ..." lines in "warnings"
    and each component's own checks) by those of its changed mask, naming lesions by their ids (``ids``:
    largest first, as ``update_entry`` numbered the components)."""
    entry = next(e for e in report["structures"] if e["name"] == name)
    per = []
    flags = recheck_tumor(name, box, mask, organs, ct.grid, ct.kji if np.any(mask) else None, gate=gate,
                          lesion_ids=ids, lesions=per)
    merge_lesion_checks(((report.get("tumors") or {}).get(name) or {}).get("components") or [], per)
    if np.any(mask) and ct.kji is None:
        flags.append(NOT_RECHECKED + ct.why)
    old = {f"{name}: {text}" for text in entry.get("flags") or []}
    warnings = [w for w in report.get("warnings") or [] if w not in old]
    entry["flags"] = flags
    report["warnings"] = warnings + [f"{name}: {text}" for text in flags]


def finish_edit(outdir: Path, report: dict, card, ref: sitk.Image, history: dict, *, masks_changed: bool = True) -> dict:
    """``outputs.commit_edit`` (combined labels, summary, history, report.json), then the report pages rebuilt
    when the run has them: they would show the old masks (or, with ``masks_changed`` False, old decisions)."""
    report = commit_edit(outdir, report, card, ref, history, masks_changed=masks_changed)
    if "report" in report or (outdir / "report.html").is_file():
        from .report import build_report  # heavy (pictures): only when there is a report to rebuild

        report = build_report(outdir).report
    return report


# ------------------------------------------------------------------------------------------- thresholds
def rethreshold(outdir, thresholds: dict) -> dict:
    """Rewrite the tumor masks of a finished run at new thresholds (p kept if ≥ value) from the kept
    probability maps, then the combined labels, the report and the overview. No model is run.

    Components a reviewer removed stay removed; a kept one the new threshold drops is named in report.json's
    "warnings" (and 'atlasseg review' lists it as "kept, below threshold"). Candidate ids stay as they were
    (``ReviewState.stable_ids``). Each file is replaced atomically; a bad name or value changes nothing."""
    outdir = Path(outdir)
    report, card = load_run(outdir)
    by_name = {c.name: c for c in card.classes}
    for name, t in thresholds.items():
        if name not in report.get("tumors", {}):
            raise InputError(f"{name} is not a tumor structure of this run; tumors: "
                             f"{', '.join(report.get('tumors', {})) or 'none'}")
        if not 0.0 < float(t) < 1.0:
            raise InputError(f"threshold for {name} must be between 0 and 1 (exclusive), got {t}")
        if not report["tumors"][name].get("probability_file"):
            raise InputError(f"{name} has no kept probability map in {outdir} "
                             f"({report['tumors'][name].get('note') or 'nothing to threshold'})")
    run = Run(outdir)
    ref = sitk.ReadImage(str(run.mask_path(next(iter(by_name)))))
    grid = Grid.of(ref)
    state = run.read_review()
    stale = below_threshold_warnings(report, thresholds)
    warnings = [w for w in report.get("warnings") or [] if w not in stale]
    changed = []
    for name, t in thresholds.items():
        meta = run.read_probability_meta(name)
        box = (tuple(meta["box_start_ijk"]), tuple(meta["box_size_ijk"]))
        pmap = ProbabilityMap.from_output(outdir, name)  # the map with its gate, built as the run built it
        seg_path = run.mask_path(name)
        # The ids the reviewer saw before this change are remembered first, so they survive it.
        before = sitk.GetArrayFromImage(sitk.ReadImage(str(seg_path)))[pmap.box_slices]
        idmap = id_map(run, name, pmap.start_ijk, pmap.q.shape, state)
        idmap.assign(ranked_components(before != 0), update=True)
        adopt_decisions(state, name, idmap)
        lab = pmap.labels(float(t))
        mask = lab.mask
        # Lesions a reviewer removed stay removed at the new threshold, matched by their ids (by overlap).
        removed = {rid for rid, d in state.decided_ids(name, idmap).items() if d["status"] == REMOVED}
        if drop_ids(mask, lab, idmap.assign(lab), idmap, removed):
            lab = ranked_components(mask != 0)
        # Lesions a person added (which the map may not hold) come back, and each lesion's own threshold is
        # applied again, keeping their ids.
        if reapply_lesion_edits(mask, pmap, idmap, state, name, read_added(run, name, pmap)):
            lab = ranked_components(mask != 0)
        ids = idmap.ids_in_rank_order(lab, update=True)
        idmap.write(run.id_map_path(name), pmap.box_grid)
        full = np.zeros(tuple(grid.size[::-1]), np.uint8)
        full[pmap.box_slices] = mask  # the box the map was read from (its meta's box_start/size)
        run.write_mask(name, mask_image(full, ref))
        report["tumors"][name]["threshold"] = float(t)
        update_entry(report, name, mask, grid.sub(*box), box[0], q_box=pmap.q, ids=ids)
        meta["threshold"] = float(t)
        run.write_probability_meta(name, meta)
        mark_origins(report, name, state, idmap)
        warnings += _kept_below(state, name, idmap, set(ids), float(t))
        changed.append((name, box, mask, pmap, ids))
    if warnings or "warnings" in report:
        report["warnings"] = warnings
    ct = _RunCT(outdir, report, grid)
    for name, box, mask, pmap, ids in changed:
        refresh_tumor_flags(report, name, box, mask, pmap.organs, by_name[name].gate, ct, ids=ids)
    if state.tumors:
        run.write_review(state)
    return finish_edit(outdir, report, card, ref, {"action": "threshold",
                                                   "values": {k: float(v) for k, v in thresholds.items()}})


def _kept_below(state: ReviewState, name: str, idmap: IdMap, present: set, threshold: float) -> list:
    """A warning per kept lesion no longer in the mask (a threshold dropped a lesion the reviewer confirmed)."""
    out = []
    for key, d in sorted(state.decided_ids(name, idmap).items()):
        if d["status"] != KEPT or key in present:
            continue
        comp = d.get("component") or {}
        p = comp.get("max_probability")
        back = f"; a threshold of {p:.2f} or lower brings it back" if isinstance(p, (int, float)) else ""
        out.append(f"{BELOW_THRESHOLD_WARNING.format(name=name)} #{key}"
                   + f" (seed ijk {list(d['seed_ijk'])}, {comp.get('volume_ml', 0):.2f} ml) is below the threshold "
                   f"{threshold:g} and no longer in the mask{back}; 'atlasseg review' lists it as "
                   "'kept, below threshold'")
    return out


# ---------------------------------------------------------------------------------------------- review
@dataclass
class ReviewPlan:
    """What one review call changes in a structure's box, computed before anything is written
    (``plan_review``): the box's new mask, the decisions to record and the counts the command prints."""
    mask: np.ndarray  # the box's new 0/1 mask (a copy: the old one is untouched)
    decisions: list  # [(Candidate, "removed" | "kept")], in the order they are recorded
    removed: int  # components removed (by id and by the rules)
    kept: int  # ids kept in this call
    spared: int  # kept candidates a rule would have removed
    changed_voxels: int

    def result(self) -> dict:
        return {"removed": self.removed, "kept": self.kept, "changed_voxels": self.changed_voxels,
                "spared": self.spared}


def plan_review(region: np.ndarray, lab, cands: list, ids: dict, *, start_ijk, voxel_mm3: float, q=None,
                decided: Optional[dict] = None, remove_ids=(), keep_ids=(), remove_smaller_ml: Optional[float] = None,
                remove_below_probability_p: Optional[float] = None,
                keep_largest_n: Optional[int] = None) -> ReviewPlan:
    """The review edits on a structure's box, in numpy alone: ``region`` its 0/1 mask (not changed), ``lab`` and
    ``cands`` its components (``ranked_components`` / ``candidates_of``), ``ids`` ``{label: id}``, ``decided``
    ``{id: decision}`` of earlier review calls (kept ones are out of reach of the rules), ``q`` the uint8 p×255
    map of the box (for ``remove_below_probability_p``). Ids must name candidates (checked by the caller)."""
    decided = decided or {}
    by_id = {ids[c.label]: c for c in cands}
    work = region.copy()  # every change is made here; ``region`` stays as it was
    for i in remove_ids:
        remove_at(work, (np.asarray(by_id[i].seed_ijk) - np.asarray(start_ijk))[::-1])
    removed = len(remove_ids)
    # Kept candidates (decided earlier or now) are out of reach of the rules below.
    removed_labels = {by_id[i].label for i in remove_ids}
    keep_labels = {by_id[i].label for i in keep_ids}
    keep_labels |= {c.label for c in cands if c.label not in removed_labels
                    and (decided.get(ids[c.label]) or {}).get("status") == KEPT}
    protected = np.isin(lab.labels, sorted(keep_labels)) if keep_labels else None
    if protected is not None:
        work[protected] = 0
    rules = []  # the size and probability rules, which a kept candidate is spared from
    if remove_smaller_ml is not None:
        rules.append(lambda m: remove_smaller_than(m, voxel_mm3, remove_smaller_ml))
    if remove_below_probability_p is not None:
        rules.append(lambda m: remove_below_probability(m, q, remove_below_probability_p))
    batch = [rule(work) for rule in rules]
    if keep_largest_n is not None:
        batch.append(keep_largest(work, keep_largest_n))
    decisions = [(by_id[i], REMOVED) for i in remove_ids]
    for edit in filter(None, batch):
        for kji in edit.removed:
            seed_ijk = tuple(int(v) for v in np.asarray(start_ijk) + np.asarray(kji)[::-1])
            cand = _candidate_holding(cands, lab, start_ijk, seed_ijk)
            if cand is not None:
                decisions.append((cand, REMOVED))
            removed += 1
    spared = 0
    if protected is not None:
        # Spared: kept candidates a rule would have removed (run the rules on them alone to know).
        alone = np.where(protected, region, 0).astype(np.uint8)
        for rule in rules:
            hit = rule(alone)
            spared += len(hit.removed) if hit else 0
        work[protected] = region[protected]
    decisions += [(by_id[i], KEPT) for i in keep_ids]
    return ReviewPlan(work, decisions, removed, len(keep_ids), spared, int(np.count_nonzero(work != region)))


def _check_review_options(remove_ids, keep_ids, remove_smaller_ml, remove_below_probability_p,
                          keep_largest_n) -> None:
    """The options alone, checked before anything is read or changed: a probability of 1.5 would otherwise
    remove every candidate."""
    if remove_below_probability_p is not None and not 0.0 < remove_below_probability_p <= 1.0:
        raise InputError(f"--remove-below-probability must be a probability in (0, 1], got {remove_below_probability_p}")
    if remove_smaller_ml is not None and not remove_smaller_ml > 0.0:
        raise InputError(f"--remove-smaller-than must be a volume in ml above 0, got {remove_smaller_ml}")
    if keep_largest_n is not None and keep_largest_n < 1:
        raise InputError(f"--keep-largest must be at least 1, got {keep_largest_n}")
    both = sorted(set(remove_ids) & set(keep_ids))
    if both:
        raise InputError(f"candidate{'s' if len(both) > 1 else ''} {', '.join(map(str, both))} cannot be both "
                         "removed and kept; give each id to --remove or to --keep")


@dataclass
class _ReviewTarget:
    """A structure of a run folder as a review call sees it: its mask on the input grid, the box its candidates
    live in (the probability map's, else the whole grid) and, for a tumor, its ids and earlier decisions."""
    outdir: Path
    structure: str
    report: dict
    card: object
    run: Run
    image: sitk.Image
    full: np.ndarray  # the whole mask (k, j, i); ``full[box]`` is the region a plan edits
    grid: Grid
    state: ReviewState
    tumor: bool
    pm: Optional[ProbabilityMap]
    box: tuple
    start: tuple
    lab: object
    cands: list
    idmap: Optional[IdMap]
    ids: dict
    decided: dict

    @property
    def box_grid(self) -> Grid:
        return self.pm.box_grid if self.pm is not None else self.grid


def _open_review(outdir: Path, structure: str, *, candidate_review: bool, keep_largest: bool,
                 by_probability: bool) -> _ReviewTarget:
    """Read the structure a review call edits; refuse a structure the requested edits do not fit."""
    report, card = load_run(outdir)
    entries = {e["name"]: e for e in report["structures"]}
    if structure not in entries:
        raise InputError(f"{structure} is not a structure of this run; structures: {', '.join(entries)}")
    tumor = structure in (report.get("tumors") or {})
    if candidate_review and not tumor:
        raise InputError(f"candidate review works on tumor structures; {structure} is an organ "
                         "(use --keep-largest or --remove-smaller-than for organs)")
    if keep_largest and tumor:
        raise InputError(f"--keep-largest is for organs (it drops stray islands); every component of {structure} "
                         "is a lesion candidate: remove false positives with --remove ID, --remove-smaller-than ML "
                         "or --remove-below-probability P")
    run = Run(outdir)
    image = sitk.ReadImage(str(run.mask_path(structure)))
    full = sitk.GetArrayFromImage(image).astype(np.uint8, copy=False)
    grid = Grid.of(image)
    state = run.read_review()
    pm = None
    if tumor and report["tumors"][structure].get("probability_file"):
        pm = ProbabilityMap.from_output(outdir, structure)
        box, start = pm.box_slices, pm.start_ijk
        lab, cands = pm.candidates(full[box])
    else:
        box, start = tuple(slice(0, n) for n in full.shape), (0, 0, 0)
        lab = ranked_components(full != 0)
        cands = candidates_of(lab, grid, start)
    if by_probability and pm is None:
        raise InputError(f"{structure} keeps no probability map: cannot remove by probability")
    idmap = id_map(run, structure, start, lab.labels.shape, state) if tumor else None
    ids = idmap.assign(lab, update=True) if tumor else {c.label: c.id for c in cands}
    if tumor:
        adopt_decisions(state, structure, idmap)
    decided = state.decided_ids(structure, idmap) if tumor else {}
    return _ReviewTarget(outdir, structure, report, card, run, image, full, grid, state, tumor, pm, box, start, lab,
                         cands, idmap, ids, decided)


def _check_ids(t: _ReviewTarget, wanted) -> None:
    """Every id given must name a candidate now; one removed earlier (or unknown) is refused with the list."""
    present = {t.ids[c.label] for c in t.cands}
    for i in wanted:
        if i not in present:
            gone = t.decided.get(i)
            why = f"candidate {i} is no longer in the mask ({gone['status']})" if gone else f"no candidate {i}"
            raise InputError(f"{t.structure} has {why}; candidates now: {', '.join(map(str, sorted(present))) or 'none'} "
                             "(list them with 'atlasseg review OUTDIR')")


def _commit_review(t: _ReviewTarget, plan: ReviewPlan, reviewer: Optional[str]) -> dict:
    """Write a planned review: the decisions into review.json, the mask (atomically, through the run folder),
    report.json's entry and the tumor's flags, the id map, then the combined labels and pages (``finish_edit``)."""
    structure, q = t.structure, (t.pm.q if t.pm is not None else None)
    if t.tumor:
        for cand, status in plan.decisions:
            _decide(t.state, structure, t.lab, t.start, cand, status, t.ids)
    new_ids = None
    if plan.changed_voxels:
        region = t.full[t.box]  # a view: the plan lands in the whole mask
        region[...] = plan.mask
        out = sitk.GetImageFromArray(t.full)
        out.CopyInformation(t.image)
        t.run.write_mask(structure, out)
        new_ids = t.idmap.ids_in_rank_order(ranked_components(region != 0), update=True) if t.tumor else None
        update_entry(t.report, structure, region, t.box_grid, t.start, q_box=q, ids=new_ids)
        if t.tumor:
            gate = next((c.gate for c in t.card.classes if c.name == structure), None)
            if t.pm is not None:
                organs = t.pm.organs
            else:  # no probability map: the gate organs' whole masks (box = the whole grid)
                organs = {o: sitk.GetArrayFromImage(sitk.ReadImage(str(t.run.mask_path(o))))
                          for o in gate or () if t.run.mask_path(o).is_file()}
            box_ijk = (tuple(int(v) for v in t.start), tuple(int(v) for v in region.shape[::-1]))
            refresh_tumor_flags(t.report, structure, box_ijk, region, organs, gate,
                                _RunCT(t.outdir, t.report, t.grid), ids=new_ids)
    if t.tumor:
        t.idmap.write(t.run.id_map_path(structure), t.box_grid)
        t.state.touch(reviewer)
        mark_origins(t.report, structure, t.state, t.idmap)
        t.run.write_review(t.state)  # before the report is rebuilt: it lists the statuses
    result = plan.result()
    finish_edit(t.outdir, t.report, t.card, t.image, {"action": "review", "structure": structure, **result},
                masks_changed=bool(plan.changed_voxels))
    return result


def edit_run(outdir, structure: str, *, remove_ids=(), keep_ids=(), remove_smaller_ml: Optional[float] = None,
             remove_below_probability_p: Optional[float] = None, keep_largest_n: Optional[int] = None,
             reviewer: Optional[str] = None) -> dict:
    """Review a finished run from the command line: remove or keep tumor candidates (by their stable ids, as
    ``review_rows`` lists them), remove tumor components by size or probability, or keep an organ's largest
    components; rewrites the structure's mask, the combined labels, report.json and review.json (each
    atomically). Kept candidates (earlier or in this call) are never removed by the size or probability rules.

    Contradictory or impossible requests (an id both removed and kept, --keep-largest on a tumor, an unknown
    id) are refused before anything changes. Returns ``{"removed": n, "kept": n, "changed_voxels": n,
    "spared": n}``. Three steps: validate (``_check_review_options``, ``_open_review``, ``_check_ids``), plan
    (``plan_review``: numpy alone), commit (``_commit_review``)."""
    _check_review_options(remove_ids, keep_ids, remove_smaller_ml, remove_below_probability_p, keep_largest_n)
    t = _open_review(Path(outdir), structure,
                     candidate_review=bool(remove_ids or keep_ids or remove_below_probability_p is not None),
                     keep_largest=keep_largest_n is not None, by_probability=remove_below_probability_p is not None)
    _check_ids(t, (*remove_ids, *keep_ids))
    plan = plan_review(t.full[t.box], t.lab, t.cands, t.ids, start_ijk=t.start, voxel_mm3=t.grid.voxel_volume_mm3,
                       q=t.pm.q if t.pm is not None else None, decided=t.decided,
                       remove_ids=remove_ids, keep_ids=keep_ids, remove_smaller_ml=remove_smaller_ml,
                       remove_below_probability_p=remove_below_probability_p, keep_largest_n=keep_largest_n)
    return _commit_review(t, plan, reviewer)


# ------------------------------------------------------------------------------- added and resized lesions
def read_added(run: Run, name: str, pm: ProbabilityMap) -> IdMap:
    """The lesions added by a click (``lesions/<name>.added.nii.gz``, each under its id) over the tumor's box; an
    empty one when there are none (or the box changed: a redone run)."""
    found = IdMap.read(run.added_path(name), pm.start_ijk, pm.q.shape)
    return found if found is not None else IdMap(np.zeros(pm.q.shape, np.uint32), pm.start_ijk)


def reapply_lesion_edits(mask_box: np.ndarray, pm: ProbabilityMap, idmap: IdMap, state: ReviewState, name: str,
                         added: Optional[IdMap]) -> bool:
    """After a threshold rebuilt ``mask_box`` (0/1, the tumor's box) from the probability map: paste back every
    added lesion a reviewer has not removed (its stored voxels), then give every other lesion with its own
    threshold (``--lesion-threshold``) that threshold again (``addlesion.resize_lesion``: it never takes another
    lesion's voxels). Returns whether the mask changed."""
    before = mask_box.copy()
    decided = state.decided_ids(name, idmap)
    adds = added_ids(state, name)
    if added is not None and added.memory.any():
        for rid in adds:
            if (decided.get(rid) or {}).get("status") == REMOVED:
                continue
            mask_box[added.memory == rid] = 1
    own = {rid: float(d["threshold"]) for rid, d in decided.items()
           if d.get("threshold") is not None and d["status"] != REMOVED and rid not in adds}
    if own:
        lab = ranked_components(mask_box != 0)
        ids = idmap.assign(lab)
        label_of = {rid: label for label, rid in ids.items()}
        labels = lab.labels.astype(np.int64)
        for rid, t in sorted(own.items()):
            label = label_of.get(rid)
            if label is None:
                # Not in the mask at this threshold: its remembered voxels (where no other lesion is) are its core.
                core = idmap.remembered(rid) & (labels == 0)
                if not core.any():
                    continue
                label = int(labels.max()) + 1
                labels[core] = label
            resized = resize_lesion(pm.q, labels, label, t, gate=pm.gate)
            resized.apply(labels)
            resized.apply(mask_box, 1)
    return bool(np.any(before != mask_box))


def mark_origins(report: dict, name: str, state: ReviewState, idmap: Optional[IdMap]) -> None:
    """Each report.json component of ``name`` says where it came from ("model", "added: probability", "added:
    image"), by its lesion id's decision."""
    decided = state.decided_ids(name, idmap)
    for comp in ((report.get("tumors") or {}).get(name) or {}).get("components") or ():
        comp["origin"] = origin_of(decided.get(int(comp["id"]))) if comp.get("id") is not None else "model"


class _TumorEdit:
    """One tumor of a run opened for a lesion edit (add, resize): its mask, probability map, id map, review state
    and added-lesion store, and ``commit`` that writes them all back in the order every edit uses."""

    def __init__(self, outdir, structure: str):
        self.outdir = Path(outdir)
        self.report, self.card = load_run(self.outdir)
        tumors = self.report.get("tumors") or {}
        if structure not in tumors:
            raise InputError(f"{structure} is not a tumor structure of this run; tumors: {', '.join(tumors) or 'none'}")
        if not tumors[structure].get("probability_file"):
            raise InputError(f"{structure} keeps no probability map in {self.outdir}: adding or resizing a lesion "
                             "works inside the tumor's probability box; rerun 'atlasseg segment' (it keeps the map)")
        self.name = structure
        self.run = Run(self.outdir)
        self.pm = ProbabilityMap.from_output(self.outdir, structure)
        self.image = sitk.ReadImage(str(self.run.mask_path(structure)))
        self.grid = Grid.of(self.image)
        self.full = sitk.GetArrayFromImage(self.image).astype(np.uint8, copy=False)
        self.region = self.full[self.pm.box_slices]  # a view: edits land in ``full``
        self.state = self.run.read_review()
        self.lab, self.cands = self.pm.candidates(self.region)
        self.idmap = id_map(self.run, structure, self.pm.start_ijk, self.pm.q.shape, self.state)
        self.ids = self.idmap.assign(self.lab, update=True)
        adopt_decisions(self.state, structure, self.idmap)
        self.added = read_added(self.run, structure, self.pm)

    def candidate(self, rid: int):
        """(Candidate, ids) of lesion ``rid`` in the current mask (after ``relabel``), or (None, ids)."""
        return next((c for c in self.cands if self.ids[c.label] == rid), None), self.ids

    def relabel(self) -> list:
        """The mask's components after a change, their ids remembered; returns the ids largest first."""
        self.lab, self.cands = self.pm.candidates(self.region)
        self.ids = self.idmap.assign(self.lab, update=True)
        return [self.ids[p[0]] for p in self.lab.parts]

    def decide(self, rid: int, status: str, *, fallback: Optional[dict] = None, **extra) -> None:
        """Record a decision on lesion ``rid`` with its current statistics (``fallback``: its row from before
        the change, when the change emptied it)."""
        cand, _ = self.candidate(rid)
        row = cand.as_dict() if cand is not None else (dict(fallback) if fallback else None)
        if row is not None:
            row["id"] = rid
            self.state.decide(self.name, row, status, key=rid, **extra)

    def commit(self, history: dict, reviewer: Optional[str]) -> None:
        self.run.write_mask(self.name, mask_image(self.full, self.image))
        ordered = [self.ids[p[0]] for p in self.lab.parts]
        update_entry(self.report, self.name, self.region, self.pm.box_grid, self.pm.start_ijk, q_box=self.pm.q,
                     ids=ordered)
        gate = next((c.gate for c in self.card.classes if c.name == self.name), None)
        box_ijk = (tuple(int(v) for v in self.pm.start_ijk), tuple(int(v) for v in self.region.shape[::-1]))
        refresh_tumor_flags(self.report, self.name, box_ijk, self.region, self.pm.organs, gate,
                            _RunCT(self.outdir, self.report, self.grid), ids=ordered)
        self.idmap.write(self.run.id_map_path(self.name), self.pm.box_grid)
        if self.added.memory.any() or self.run.added_path(self.name).is_file():
            self.added.write(self.run.added_path(self.name), self.pm.box_grid)
        self.state.touch(reviewer)
        mark_origins(self.report, self.name, self.state, self.idmap)
        self.run.write_review(self.state)  # before the report is rebuilt: it lists the statuses and origins
        finish_edit(self.outdir, self.report, self.card, self.image, history)


def click_voxel(outdir, *, add_at: Optional[str] = None, add_at_voxel: Optional[str] = None) -> tuple:
    """The (i, j, k) voxel of ``--add-at R,A,S`` (mm, RAS as Slicer shows it) or ``--add-at-voxel I,J,K`` on the
    run's input grid (InputError outside the image)."""
    run = Run(outdir)
    report = run.read_report()
    # The masks lie on the input grid voxel for voxel: any one's header is the grid (no pixels read).
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(run.mask_path(report["structures"][0]["name"])))
    reader.ReadImageInformation()
    grid = Grid(tuple(reader.GetSize()), tuple(reader.GetSpacing()), tuple(reader.GetOrigin()),
                tuple(reader.GetDirection()))
    if add_at is not None:
        return ras_to_ijk(parse_point(add_at, "--add-at"), grid)
    return voxel_to_ijk(add_at_voxel, grid)


def add_lesion_at(outdir, structure: str, ijk, *, reviewer: Optional[str] = None) -> dict:
    """One click at voxel ``ijk`` (i, j, k of the input grid) of tumor ``structure``: ``addlesion.add_lesion`` on the
    tumor's probability box. Returns ``{"action": "select", "id"}`` (the click is inside candidate ``id``: nothing
    changes) or ``{"action": "added", "id", "origin", "threshold", "voxels", "volume_ml"}`` (the new lesion: a new
    id, status kept, its origin, in the mask, the id map, the added-lesion store, review.json and the report).
    InputError (exit 2) outside the box, without the CT, or where nothing plausible is there."""
    edit = _TumorEdit(outdir, structure)
    pm = edit.pm
    kji = seed_kji(ijk, pm.start_ijk, pm.q.shape)
    box_end = tuple(int(a) + int(n) - 1 for a, n in zip(pm.start_ijk, pm.q.shape[::-1]))
    if kji is None:
        raise InputError(f"voxel {tuple(ijk)} (i, j, k) is outside {structure}'s search box (voxels "
                         f"{tuple(pm.start_ijk)} to {box_end}, around its organ): click inside the organ")
    from .report import load_run_ct  # heavy (pictures): only here

    ct, _, note = load_run_ct(edit.outdir, edit.report)
    if ct is None:
        raise InputError(f"adding a lesion needs the run's CT: {note}")
    ct_box = sitk.GetArrayViewFromImage(ct)[pm.box_slices]
    labels = edit.lab.labels
    found = add_lesion(ct_box, pm.box_grid.spacing[::-1], pm.q, labels, kji, gate=pm.click_gate())
    if found.action == "select":
        return {"action": "select", "id": int(edit.ids[int(labels[kji])]), "ijk": list(ijk)}
    if found.action != "added":
        raise InputError(f"nothing added at voxel {tuple(ijk)}: {found.reason}")
    rid = edit.idmap.next_id  # never used before: ids are never reused
    new = np.zeros(edit.region.shape, bool)
    found.paste(new, True)
    edit.region[new] = 1
    edit.idmap.memory[new] = rid
    edit.idmap.floor = max(edit.idmap.floor, rid)
    edit.added.memory[new] = rid
    edit.relabel()
    edit.decide(rid, KEPT, origin=found.origin, threshold=found.threshold)
    volume_ml = round(found.voxels * pm.box_grid.voxel_volume_mm3 / 1000.0, 4)
    result = {"action": "added", "id": rid, "origin": found.origin, "threshold": found.threshold,
              "voxels": found.voxels, "volume_ml": volume_ml, "ijk": list(ijk)}
    edit.commit({"action": "review", "structure": structure, "added": rid, "origin": found.origin,
                 "changed_voxels": found.voxels}, reviewer)
    return result


def parse_lesion_thresholds(items) -> dict:
    """``--lesion-threshold ID=P`` (repeatable) → ``{id: p}``; InputError for a malformed one or p not in (0, 1)."""
    out = {}
    for item in items or ():
        rid, sep, p = str(item).partition("=")
        try:
            rid, p = int(rid), float(p)
        except ValueError:
            rid = None
        if not sep or rid is None or rid < 1:
            raise InputError(f"--lesion-threshold takes ID=P, e.g. 3=0.35 (got '{item}')")
        if not 0.0 < p < 1.0:
            raise InputError(f"--lesion-threshold {item}: the threshold must be a probability in (0, 1)")
        out[rid] = p
    return out


def resize_lesions(outdir, structure: str, thresholds: dict, *, reviewer: Optional[str] = None) -> dict:
    """Each lesion ``id`` of ``thresholds`` at its own probability threshold (``addlesion.resize_lesion``: that
    lesion alone grows or shrinks on the map, never taking another lesion's voxels or its one-voxel rim), recorded
    on its decision (``threshold``; status kept unless decided otherwise) so every later threshold change applies
    it again. Returns ``{id: {"voxels_before", "voxels", "changed_voxels"}}``."""
    edit = _TumorEdit(outdir, structure)
    decided = edit.state.decided_ids(structure, edit.idmap)
    label_of = {rid: label for label, rid in edit.ids.items()}
    for rid in thresholds:
        if rid not in label_of:
            gone = decided.get(rid)
            why = f"lesion {rid} is no longer in the mask ({gone['status']})" if gone else f"no lesion {rid}"
            raise InputError(f"{structure} has {why}; lesions now: {', '.join(map(str, sorted(label_of))) or 'none'}")
        if origin_of(decided.get(rid)) == ORIGIN_IMAGE:
            raise InputError(f"lesion {rid} was added from the image (the model's map holds nothing there): its size "
                             "cannot follow a probability threshold; remove it and click again to redo it")
    labels = edit.lab.labels.astype(np.int64)
    rows_before = {rid: edit.candidate(rid)[0].as_dict() for rid in thresholds}
    out = {}
    for rid, t in sorted(thresholds.items()):
        label = label_of[rid]
        resized = resize_lesion(edit.pm.q, labels, label, t, gate=edit.pm.gate)
        out[rid] = {"threshold": t, "voxels_before": int(np.count_nonzero(resized.before)),
                    "voxels": resized.voxels, "changed_voxels": resized.changed_voxels}
        resized.apply(labels)
        resized.apply(edit.region, 1)
        if rid in added_ids(edit.state, structure):  # an added lesion's stored voxels follow its new size
            edit.added.memory[edit.added.memory == rid] = 0
            edit.added.memory[labels == label] = rid
    edit.relabel()
    for rid, t in thresholds.items():
        status = (decided.get(rid) or {}).get("status") or KEPT
        edit.decide(rid, status, threshold=t, fallback=rows_before[rid])
    changed = sum(v["changed_voxels"] for v in out.values())
    edit.commit({"action": "review", "structure": structure, "lesion_thresholds": {str(k): v for k, v in
                                                                                   thresholds.items()},
                 "changed_voxels": changed}, reviewer)
    return out


def record_reviewer(outdir, reviewer: str) -> None:
    """``--reviewer NAME`` alone: record who reviews (and now) in review.json."""
    run = Run(outdir)
    state = run.read_review()
    state.touch(reviewer)
    run.write_review(state)


def _decide(state: ReviewState, tumor: str, lab, start, cand, status: str, ids: dict) -> None:
    row = cand.as_dict()
    row["id"] = ids[cand.label]
    state.decide(tumor, row, status, key=ids[cand.label])


def _candidate_holding(cands, lab, start_ijk, seed_ijk):
    kji = seed_kji(seed_ijk, start_ijk, lab.labels.shape)
    value = lab.labels[kji] if kji is not None else 0
    return next((c for c in cands if c.label == value), None) if value else None
