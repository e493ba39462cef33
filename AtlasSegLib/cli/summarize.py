"""``atlasseg summarize RESULTS``: the dataset review of a batch (``summarize.summarize`` writes summary.csv and
gallery.html); prints the review marks' counts and where the files are."""
from __future__ import annotations

import sys
from pathlib import Path

from ..summarize import MARKS_JSON, Z_LIMIT, summarize


def cmd_summarize(args, sink=None) -> int:
    """``atlasseg summarize RESULTS [--marks FILE] [--export-accepted DIR] [--reports]``."""
    result = summarize(args.results, marks=args.marks, export_to=args.export_accepted, overwrite=args.overwrite,
                       reports=args.reports, progress=sink)
    if sink is not None:
        sink.close()
    c = result.counts
    print(f"{c['cases']} case(s): {c['accepted']} accepted, {c['revise']} to revise, {c['unreviewed']} unreviewed"
          + (f", {c['stale']} marked before their labels changed (review again)" if c["stale"] else "")
          + (f", {c['failed']} failed" if c["failed"] else ""))
    print(f"warnings: {c['warnings']} in {c['cases_with_warnings']} case(s); volume outliers (|modified z| > "
          f"{Z_LIMIT}): {c['outliers']} in {c['cases_with_outliers']} case(s)")
    for case in result.cases:
        if result.marks.status(case) == "revise":
            note = result.marks.of(case).get("note")
            print(f"  revise {case.name}" + (f": {note}" if note else ""))
    if result.unknown_marks:
        print(f"atlasseg: warning: {len(result.unknown_marks)} mark(s) for cases not in {args.results}: "
              f"{', '.join(result.unknown_marks[:10])}", file=sys.stderr)
    marks_note = (str(result.marks.path) if result.marks.path else
                  f"none yet (gallery.html → 'Download marks', save as {result.summary_path.parent / MARKS_JSON})")
    print(f"summary: {result.summary_path}\ngallery: {result.gallery_path} "
          f"({result.gallery_bytes / 1e6:.2f} MB, {result.gallery_bytes / max(c['cases'], 1) / 1e3:.1f} kB per case)"
          f"\nmarks: {marks_note}")
    if args.export_accepted:
        print(f"exported {len(result.exported)} accepted case(s) as an AbdomenAtlas dataset: "
              f"{Path(args.export_accepted).resolve()}")
    return 0
