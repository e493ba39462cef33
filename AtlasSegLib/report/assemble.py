"""The report's assemble step: report.json's "report" section built from what was measured and drawn (version,
case name, units, model, thresholds, organ and tumor rows, per-tumor summary, pictures, notes, warnings, header,
truth), and the cm values added beside the run's own mm values. Also the case's name as the report gives it and
the scrubbing of notes and warnings (the input's folder never shown; with ``anonymize`` not its name either)."""
from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Optional

from .. import __version__
from .dicomfacts import report_header
from .measure import Measurements
from .pictures import LECTURE_DIR, PICTURES_DIR, THREE_D_PICTURE, Pictures
from .units import cm

REPORT_VERSION = 1
ANONYMIZED_CASE = "anonymized case"
ANONYMIZED_INPUT = "(input)"


def case_name(report: dict, anonymize: bool = False) -> str:
    """The case as the report names it: the input's file (or DICOM folder) name without its suffix, never a
    full path; "anonymized case" with ``anonymize`` (a folder name is often the patient's name)."""
    if anonymize:
        return ANONYMIZED_CASE
    path = (report.get("input") or {}).get("path") or ""
    name = Path(path).name or path
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nhdr"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name or "case"


def scrub(text: str, report: dict, anonymize: bool) -> str:
    """A note or warning without the input's folder (and, anonymized, without its name either)."""
    path = (report.get("input") or {}).get("path") or ""
    if not path or (report.get("input") or {}).get("format") == "phantom":
        return text
    full = str(Path(path))
    name = ANONYMIZED_INPUT if anonymize else Path(full).name
    text = text.replace(full, name)
    parent = str(Path(full).parent)
    if len(parent) > 1:
        text = text.replace(parent + os.sep, "").replace(parent, "")
    if anonymize and Path(full).name:
        text = text.replace(Path(full).name, ANONYMIZED_INPUT)
    return text


def add_cm_to_run(report: dict, summary: dict) -> None:
    """The run's own tumor entries in a reader's units too: each component's diameters in cm beside its mm, and
    the run summary's largest diameter in cm (0.0 without a component)."""
    for name, info in (report.get("tumors") or {}).items():
        for comp in info.get("components", []):
            comp["longest_axial_diameter_cm"] = cm(comp.get("longest_axial_diameter_mm"))
            comp["perpendicular_diameter_cm"] = cm(comp.get("perpendicular_diameter_mm"))
        if name in report.get("summary", {}):
            largest = summary[name]["largest"]
            report["summary"][name]["largest_diameter_cm"] = largest["longest_axial_diameter_cm"] if largest else 0.0


def assemble_section(report: dict, m: Measurements, drawn: Pictures, *, notes: list, dicom: Optional[dict],
                     anonymize: bool) -> dict:
    """report.json's "report" section: what the page, the CSV and the Slicer panel show, in one dict."""
    pngs = drawn.page
    return {
        "version": REPORT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "atlasseg_version": __version__,
        "case": case_name(report, anonymize),
        "units": {"volume": "ml", "diameter": "cm", "attenuation": "HU", "centroid": "mm (RAS)",
                  "location": "slice: DICOM InstanceNumber, else axial slice counted from the head end; side: the "
                              "patient's, from the body's centre on that slice"},
        "model": {k: report.get("model", {}).get(k) for k in ("id", "title", "version", "license")},
        "thresholds": {name: s["threshold"] for name, s in m.summary.items()},
        "organs": m.organ_rows,
        "tumor_components": m.tumor_rows,
        "tumor_summary": m.summary,
        "pictures": {"overview": f"{PICTURES_DIR}/overview.png" if "overview" in pngs else None,
                     "3d": THREE_D_PICTURE if "3d" in pngs else None,
                     "structures": drawn.structures,
                     "tumors": drawn.tumors,
                     "lecture": [f"{LECTURE_DIR}/{key}.png" for key in drawn.lecture] or None},
        "notes": [scrub(n, report, anonymize) for n in notes],
        "warnings": [scrub(w, report, anonymize) for w in report.get("warnings") or []],
        "anonymized": bool(anonymize),
        "header": report_header(report, dicom, anonymize),
        "truth": m.truth_rows,
    }
