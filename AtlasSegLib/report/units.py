"""The report's units and rounding, written once for every writer: diameters mm -> cm (1 decimal), values rounded
for report.json (NaN becomes None), and numbers as the page, the CSV's neighbours and the CLI show them ("–" for
none)."""
from __future__ import annotations

import math
from typing import Optional


def is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def cm(mm) -> Optional[float]:
    """mm → cm, 1 decimal (a radiologist's diameter); None stays None."""
    return None if mm is None or is_nan(mm) else round(float(mm) / 10.0, 1)


def clean(value, digits: int):
    """Round for the report; NaN (no probability map) becomes None so report.json stays valid JSON."""
    if value is None or is_nan(value):
        return None
    return round(float(value), digits)


def fmt(value, digits: int = 1) -> str:
    """A number as text with ``digits`` decimals; "–" for None or NaN."""
    if value is None or is_nan(value):
        return "–"
    return f"{float(value):.{digits}f}"
