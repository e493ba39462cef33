"""``atlasseg report``: the command that makes a run's report (``report.build_report``) and prints what it wrote
and each tumor type's summary. The parser stays in ``cli/__init__.py``: this module imports the report's picture
code, which ``cli/__init__`` imports only when the command is run."""
from __future__ import annotations

from ..report import build_report
from ..report.units import fmt


def cmd_report(args, sink=None) -> int:
    """``atlasseg report OUTDIR [--ct CT] [--no-pictures] [--anonymize] [--lecture]``."""
    result = build_report(args.outdir, ct=args.ct, pictures=not args.no_pictures,
                          anonymize=getattr(args, "anonymize", None), progress=sink,
                          lecture=getattr(args, "lecture", False))
    if sink is not None:
        sink.close()
    sec = result.report["report"]
    print(f"report of {sec['case']} in {result.seconds:.1f} s:")
    print(f"  {result.html_path}\n  {result.csv_path}\n  {result.json_path}")
    for key, path in sorted(result.pictures.items()):
        print(f"  {path}")
    for name, s in sec["tumor_summary"].items():
        largest = s["largest"]
        text = (f"largest {largest['volume_ml']:.2f} ml, {fmt(largest['longest_axial_diameter_cm'])} x "
                f"{fmt(largest['perpendicular_diameter_cm'])} cm") if largest else "none"
        print(f"{name}: {s['count']} component(s) at threshold {s['threshold']}, {text}; "
              f"{s['to_review']} to review, {s['kept']} kept, {s['removed']} removed")
    for note in result.notes:
        print(f"note: {note}")
    return 0
