"""``atlasseg review OUTDIR``: list a run's tumor candidates, or edit them (remove, keep, add by a click, own
thresholds) and print what changed. The edits are ``runedit``'s; the table rows are ``review.review_rows``."""
from __future__ import annotations

import json
import sys

from ..errors import InputError
from ..review import counter_text, organ_text, review_rows, status_text
from ..run import Run
from ..runedit import add_lesion_at, click_voxel, edit_run, parse_lesion_thresholds, record_reviewer, resize_lesions


def cmd_review(args) -> int:
    actions = (args.remove or args.keep or args.remove_smaller_than is not None
               or args.remove_below_probability is not None or args.keep_largest is not None)
    add_at, add_voxel = getattr(args, "add_at", None), getattr(args, "add_at_voxel", None)
    reviewer = getattr(args, "reviewer", None)
    # Every option is checked before anything changes: a bad --lesion-threshold must not follow a done --remove.
    lesion_thresholds = parse_lesion_thresholds(getattr(args, "lesion_threshold", None))
    if add_at is not None and add_voxel is not None:
        raise InputError("give the point once: --add-at R,A,S (mm) or --add-at-voxel I,J,K, not both")
    if (actions or add_at is not None or add_voxel is not None or lesion_thresholds) and not args.structure:
        raise InputError("name the structure to edit with --structure (e.g. --structure liver_tumor)")
    if reviewer is not None and not str(reviewer).strip():
        raise InputError("--reviewer needs a name (e.g. --reviewer 'Doe^Jane')")
    ijk = click_voxel(args.outdir, add_at=add_at, add_at_voxel=add_voxel) \
        if add_at is not None or add_voxel is not None else None
    if actions:
        result = edit_run(args.outdir, args.structure, remove_ids=tuple(args.remove), keep_ids=tuple(args.keep),
                          remove_smaller_ml=args.remove_smaller_than,
                          remove_below_probability_p=args.remove_below_probability,
                          keep_largest_n=args.keep_largest, reviewer=reviewer)
        spared = f"; {result['spared']} kept candidate(s) spared by the rules" if result["spared"] else ""
        print(f"{args.structure}: {result['removed']} removed, {result['kept']} kept "
              f"({result['changed_voxels']} voxels changed{spared})")
    if ijk is not None:
        added = add_lesion_at(args.outdir, args.structure, ijk, reviewer=reviewer)
        if added["action"] == "select":
            print(f"{args.structure}: voxel {','.join(map(str, ijk))} is inside candidate {added['id']} "
                  "(nothing added)")
        else:
            how = f" at p >= {added['threshold']:g}" if added.get("threshold") is not None else ""
            print(f"{args.structure}: added lesion {added['id']} ({added['origin']}{how}, {added['volume_ml']:.2f} ml, "
                  f"{added['voxels']} voxels), kept")
    if lesion_thresholds:
        for rid, r in resize_lesions(args.outdir, args.structure, lesion_thresholds, reviewer=reviewer).items():
            print(f"{args.structure}: lesion {rid} at its own threshold {r['threshold']:g}: {r['voxels_before']} -> "
                  f"{r['voxels']} voxels")
    if reviewer is not None and not (actions or ijk is not None or lesion_thresholds):
        record_reviewer(args.outdir, reviewer)
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
              f"{'seed i,j,k':<14} {'status':<22} {'origin':<18} flags")
        for row in tumor_rows:
            rid = row["id"] if row.get("id") is not None else "-"
            seed = ",".join(str(v) for v in row.get("seed_ijk") or ())
            pct = row.get("inside_organ_pct")
            print(f"  {rid:>3}  {organ_text(row):<14} {'-' if pct is None else format(pct, '.0f'):>5} "
                  f"{row['volume_ml']:>8.2f} "
                  f"{row['longest_axial_diameter_mm'] / 10:>8.1f} {row['perpendicular_diameter_mm'] / 10:>8.1f} "
                  f"{row['max_probability']:>6.2f}  {seed:<14} {status_text(row):<22} "
                  f"{row.get('origin') or 'model':<18} {'; '.join(row.get('flags') or ()) or '-'}")
    return 0
