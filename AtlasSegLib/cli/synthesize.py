"""``atlasseg synthesize CT -o OUT``: insert synthetic tumors into a CT (``synthesize.synthesize_file``) and
print one line per tumor."""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..synthesize import parse_range, synthesize_file


def cmd_synthesize(args) -> int:
    labels = None
    if args.label:
        try:
            labels = [int(v) for v in args.label.split(",") if v.strip()]
        except ValueError:
            raise InputError(f"--label must be label values like 5 or 2,3, got '{args.label}'") from None
    info = synthesize_file(
        args.input, args.output, organ_name=args.organ, organ_mask=args.organ_mask, run=args.run, labels=labels,
        count=args.count, diameter_mm=parse_range(args.diameter, "--diameter"),
        contrast_hu=parse_range(args.contrast, "--contrast") if args.contrast is not None else None,
        seed=args.seed, mass_effect_mm=args.mass_effect, capsule_hu=args.capsule, overwrite=args.overwrite)
    out = Path(args.output).resolve()
    print(f"{info['count']} synthetic {args.organ} tumor(s) in {info['seconds']:.2f} s -> {out}")
    print(f"{'id':>3}  {'centre (z, y, x)':<18}{'diameter mm':>12}{'class':>8}{'contrast HU':>13}{'volume ml':>11}")
    for t in info["tumors"]:
        centre = ", ".join(str(c) for c in t["center_zyx"])
        print(f"{t['id']:>3}  {centre:<18}{t['diameter_mm']:>12.1f}{t['size_class']:>8}{t['contrast_hu']:>13.0f}"
              f"{t['volume_ml']:>11.2f}")
    print(f"truth: {out / info['truth']}")
    return 0
