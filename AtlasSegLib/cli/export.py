"""``atlasseg export``: the command around ``AtlasSegLib.export.export``. It says the run's own warnings first (they
travel with its export), prints the export's one-line summary on stdout and a warning for GTV candidates nobody has
reviewed; the library writes and returns notes, and never prints."""
from __future__ import annotations

import sys

from ..errors import InputError
from ..export import export
from ..run import Run


def cmd_export(args) -> int:
    try:
        warnings = Run(args.outdir, check=False).read_report().get("warnings") or []
    except (OSError, ValueError, InputError):
        warnings = []  # not a run folder: export() says so
    for text in warnings:
        print(f"atlasseg: warning: run: {text}", file=sys.stderr)
    result = export(args.outdir, args.format, args.output, reference_dicom=args.reference_dicom, ct=args.ct,
                    overwrite=args.overwrite, compress=args.compress and not args.no_compress, names=args.names,
                    name_map=args.name_map, tumor_roi_type=args.tumor_roi_type, holes=args.holes,
                    approve=getattr(args, "approve", False), reviewer=getattr(args, "reviewer", None),
                    force=getattr(args, "force", False))
    print(result.summary())
    for entry in result.notes.get("gtv_unreviewed", []):
        print(f"atlasseg: warning: --tumor-roi-type GTV given to candidates nobody has reviewed: {entry}; a GTV is "
              "a physician's call ('atlasseg review' keeps or removes each candidate)", file=sys.stderr)
    return 0
