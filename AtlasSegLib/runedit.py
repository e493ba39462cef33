"""Edits of a finished run folder: a new tumor threshold (``atlasseg threshold``) and review actions
(``atlasseg review``), each followed by what depends on the masks: the combined labels, report.json,
review.json and, when the run has one, the report pages.

Layers, lowest first: ``outputs`` (the run folder's files) <- ``review`` (candidates and decisions) <-
``report`` (pages and pictures) <- ``runedit`` (this module). No layer imports one above it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .geometry import Grid
from .io import atomic_write_image
from .lesions import IdMap, drop_ids, merge_lesion_checks
from .outputs import SEG_DIR, _box_slices, _mask_image, commit_edit, load_run, update_entry
from .plausibility import recheck_tumor
from .postprocess import ranked_components
from .review import (KEPT, REMOVED, ProbabilityMap, ReviewState, adopt_decisions, candidates_of, counter_text, id_map,
                     keep_largest, organ_text, remove_at, remove_below_probability, remove_smaller_than, review_rows,
                     seed_kji, status_text)
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
        ids = idmap.ids_in_rank_order(lab, update=True)
        idmap.write(run.id_map_path(name), pmap.box_grid)
        full = np.zeros(tuple(grid.size[::-1]), np.uint8)
        full[_box_slices(box)] = mask
        atomic_write_image(_mask_image(full, ref), seg_path)
        report["tumors"][name]["threshold"] = float(t)
        update_entry(report, name, mask, grid.sub(*box), box[0], q_box=pmap.q, ids=ids)
        meta["threshold"] = float(t)
        run.write_probability_meta(name, meta)
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
def edit_run(outdir, structure: str, *, remove_ids=(), keep_ids=(), remove_smaller_ml: Optional[float] = None,
             remove_below_probability_p: Optional[float] = None, keep_largest_n: Optional[int] = None) -> dict:
    """Review a finished run from the command line: remove or keep tumor candidates (by their stable ids, as
    ``review_rows`` lists them), remove tumor components by size or probability, or keep an organ's largest
    components; rewrites the structure's mask, the combined labels, report.json and review.json (each
    atomically). Kept candidates (earlier or in this call) are never removed by the size or probability rules.

    Contradictory or impossible requests (an id both removed and kept, --keep-largest on a tumor, an unknown
    id) are refused before anything changes. Returns ``{"removed": n, "kept": n, "changed_voxels": n,
    "spared": n}``."""
    # Checked before anything is read or changed: a probability of 1.5 would otherwise remove every candidate.
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
    outdir = Path(outdir)
    report, card = load_run(outdir)
    entries = {e["name"]: e for e in report["structures"]}
    if structure not in entries:
        raise InputError(f"{structure} is not a structure of this run; structures: {', '.join(entries)}")
    tumor = structure in (report.get("tumors") or {})
    if (remove_ids or keep_ids or remove_below_probability_p is not None) and not tumor:
        raise InputError(f"candidate review works on tumor structures; {structure} is an organ "
                         "(use --keep-largest or --remove-smaller-than for organs)")
    if keep_largest_n is not None and tumor:
        raise InputError(f"--keep-largest is for organs (it drops stray islands); every component of {structure} "
                         "is a lesion candidate: remove false positives with --remove ID, --remove-smaller-than ML "
                         "or --remove-below-probability P")
    run = Run(outdir)
    seg_path = run.mask_path(structure)
    image = sitk.ReadImage(str(seg_path))
    full = sitk.GetArrayFromImage(image).astype(np.uint8, copy=False)
    grid = Grid.of(image)
    state = run.read_review()
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
    if remove_below_probability_p is not None and q is None:
        raise InputError(f"{structure} keeps no probability map: cannot remove by probability")
    idmap = id_map(run, structure, start, lab.labels.shape, state) if tumor else None
    ids = idmap.assign(lab, update=True) if tumor else {c.label: c.id for c in cands}
    if tumor:
        adopt_decisions(state, structure, idmap)
    decided = state.decided_ids(structure, idmap) if tumor else {}
    by_id = {ids[c.label]: c for c in cands}
    for i in (*remove_ids, *keep_ids):
        if i not in by_id:
            gone = decided.get(i)
            why = f"candidate {i} is no longer in the mask ({gone['status']})" if gone else f"no candidate {i}"
            raise InputError(f"{structure} has {why}; candidates now: {', '.join(map(str, sorted(by_id))) or 'none'} "
                             "(list them with 'atlasseg review OUTDIR')")
    region = full[box]  # a view: edits land in ``full``
    work = region.copy()  # every change is made here first; ``region`` changes only once all of them worked
    removed = 0
    for i in remove_ids:
        cand = by_id[i]
        remove_at(work, (np.asarray(cand.seed_ijk) - np.asarray(start))[::-1])
        removed += 1
    # Kept candidates (decided earlier or now) are out of reach of the rules below.
    keep_labels = {by_id[i].label for i in keep_ids}
    if tumor:
        keep_labels |= {c.label for c in cands if c.label not in {by_id[i].label for i in remove_ids}
                        and (decided.get(ids[c.label]) or {}).get("status") == KEPT}
    protected = np.isin(lab.labels, sorted(keep_labels)) if keep_labels else None
    if protected is not None:
        work[protected] = 0
    batch = []
    if remove_smaller_ml is not None:
        batch.append(remove_smaller_than(work, grid.voxel_volume_mm3, remove_smaller_ml))
    if remove_below_probability_p is not None:
        batch.append(remove_below_probability(work, q, remove_below_probability_p))
    if keep_largest_n is not None:
        batch.append(keep_largest(work, keep_largest_n))
    batch_removed = []
    for edit in filter(None, batch):
        for kji in edit.removed:
            seed_ijk = tuple(int(v) for v in np.asarray(start) + np.asarray(kji)[::-1])
            batch_removed.append(_candidate_holding(cands, lab, start, seed_ijk))
            removed += 1
    spared = 0
    if protected is not None:
        # Spared: kept candidates a rule would have removed (run the rules on them alone to know).
        alone = np.where(protected, region, 0).astype(np.uint8)
        for rule in ([lambda m: remove_smaller_than(m, grid.voxel_volume_mm3, remove_smaller_ml)]
                     if remove_smaller_ml is not None else []) + \
                    ([lambda m: remove_below_probability(m, q, remove_below_probability_p)]
                     if remove_below_probability_p is not None else []):
            hit = rule(alone)
            spared += len(hit.removed) if hit else 0
        work[protected] = region[protected]
    changed = int(np.count_nonzero(work != region))
    if tumor:
        for i in remove_ids:
            _decide(state, structure, lab, start, by_id[i], "removed", ids)
        for cand in batch_removed:
            if cand is not None:
                _decide(state, structure, lab, start, cand, "removed", ids)
        for i in keep_ids:
            _decide(state, structure, lab, start, by_id[i], "kept", ids)
    if changed:
        region[...] = work
        out = sitk.GetImageFromArray(full)
        out.CopyInformation(image)
        atomic_write_image(out, seg_path)
        new_ids = idmap.ids_in_rank_order(ranked_components(region != 0), update=True) if tumor else None
        update_entry(report, structure, region, pm.box_grid if pm is not None else grid, start, q_box=q, ids=new_ids)
        if tumor:
            gate = next((c.gate for c in card.classes if c.name == structure), None)
            if pm is not None:
                organs = pm.organs
            else:  # no probability map: the gate organs' whole masks (box = the whole grid)
                organs = {o: sitk.GetArrayFromImage(sitk.ReadImage(str(outdir / SEG_DIR / f"{o}.nii.gz")))
                          for o in gate or () if (outdir / SEG_DIR / f"{o}.nii.gz").is_file()}
            box_ijk = (tuple(int(v) for v in start), tuple(int(v) for v in region.shape[::-1]))
            refresh_tumor_flags(report, structure, box_ijk, region, organs, gate, _RunCT(outdir, report, grid),
                                ids=new_ids)
    if tumor:
        idmap.write(run.id_map_path(structure), pm.box_grid if pm is not None else grid)
        run.write_review(state)  # before the report is rebuilt: it lists the statuses
    result = {"removed": removed, "kept": len(keep_ids), "changed_voxels": changed, "spared": spared}
    finish_edit(outdir, report, card, image, {"action": "review", "structure": structure, **result},
                masks_changed=bool(changed))
    return result


def _decide(state: ReviewState, tumor: str, lab, start, cand, status: str, ids: dict) -> None:
    row = cand.as_dict()
    row["id"] = ids[cand.label]
    state.decide(tumor, row, status, key=ids[cand.label])


def _candidate_holding(cands, lab, start_ijk, seed_ijk):
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
        spared = f"; {result['spared']} kept candidate(s) spared by the rules" if result["spared"] else ""
        print(f"{args.structure}: {result['removed']} removed, {result['kept']} kept "
              f"({result['changed_voxels']} voxels changed{spared})")
    rows = review_rows(args.outdir)
    # The run's plausibility warnings (report.json "warnings") come first: they may make every candidate moot.
    try:
        warnings = Run(args.outdir).read_report().get("warnings") or []
    except InputError:
        warnings = []
    for text in warnings:  # on stderr: stdout holds the table or the JSON alone (pipes, jq)
        print(f"atlasseg: warning: {text}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for tumor, tumor_rows in rows.items():
        print(f"{tumor}: {counter_text(tumor_rows)}")
        print(f"  {'id':>3}  {'organ':<14} {'in %':>5} {'ml':>8} {'long cm':>8} {'short cm':>8} {'max p':>6}  "
              f"{'seed i,j,k':<14} {'status':<22} flags")
        for row in tumor_rows:
            rid = row["id"] if row.get("id") is not None else "-"
            seed = ",".join(str(v) for v in row.get("seed_ijk") or ())
            pct = row.get("inside_organ_pct")
            print(f"  {rid:>3}  {organ_text(row):<14} {'-' if pct is None else format(pct, '.0f'):>5} "
                  f"{row['volume_ml']:>8.2f} "
                  f"{row['longest_axial_diameter_mm'] / 10:>8.1f} {row['perpendicular_diameter_mm'] / 10:>8.1f} "
                  f"{row['max_probability']:>6.2f}  {seed:<14} {status_text(row):<22} "
                  f"{'; '.join(row.get('flags') or ()) or '-'}")
    return 0
