"""``atlasseg evaluate RUN TRUTH``: score a run (or a batch) against truth masks; prints the summary
(``evaluate.summary_lines``) or, with --json, evaluation.json."""
from __future__ import annotations

from ..evaluate import evaluate, summary_lines


def cmd_evaluate(args) -> int:
    structures = [s.strip() for s in (args.structures or "").split(",") if s.strip()] or None
    ev = evaluate(args.run, args.truth, args.output, structures=structures)
    if args.json:
        print((ev.outdir / "evaluation.json").read_text(), end="")
    else:
        print("\n".join(summary_lines(ev)))
    return 0
