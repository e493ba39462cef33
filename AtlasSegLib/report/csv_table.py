"""report.csv: the report as one long table (a "section" column says what each row is), written from report.json's
"report" section alone, so reports of many cases can be concatenated and filtered."""
from __future__ import annotations

import csv
import io as _io

CSV_COLUMNS = ("section", "case", "model_id", "model_version", "structure", "kind", "component", "organ", "status",
               "volume_ml", "mean_hu", "longest_axial_diameter_cm", "perpendicular_diameter_cm", "max_probability",
               "mean_probability", "centroid_r_mm", "centroid_a_mm", "centroid_s_mm", "threshold", "count",
               "largest_volume_ml", "largest_diameter_cm", "image", "side", "location", "dice", "truth_ml",
               "inside_organ_pct", "flags", "origin")


def report_csv(report: dict) -> str:
    """report.csv: one long table (a "section" column says what each row is) so reports of many cases can be
    concatenated and filtered: "structure" rows (volume, mean HU), "tumor_component" rows (size in cm,
    probabilities, review status, centroid, the image to open and the side), "tumor_summary" rows (count,
    largest, threshold) and, with a known truth (the demo), "truth" rows (Dice, truth and segmented ml)."""
    sec = report["report"]
    common = {"case": sec["case"], "model_id": sec["model"].get("id"), "model_version": sec["model"].get("version")}
    out = _io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in sec["organs"]:
        writer.writerow({**common, "section": "structure", "structure": r["structure"], "kind": r["kind"],
                         "volume_ml": r["volume_ml"], "mean_hu": r["mean_hu"]})
    for r in sec["tumor_components"]:
        ras = r["centroid_ras_mm"]
        writer.writerow({**common, "section": "tumor_component", "structure": r["structure"], "kind": "tumor",
                         "component": r["component"], "organ": r["organ"], "status": r["status"],
                         "inside_organ_pct": r.get("inside_organ_pct"), "flags": "; ".join(r.get("flags") or ()),
                         "origin": r.get("origin") or "model",
                         "volume_ml": r["volume_ml"], "mean_hu": r["mean_hu"],
                         "longest_axial_diameter_cm": r["longest_axial_diameter_cm"],
                         "perpendicular_diameter_cm": r["perpendicular_diameter_cm"],
                         "max_probability": r["max_probability"], "mean_probability": r["mean_probability"],
                         "centroid_r_mm": ras[0], "centroid_a_mm": ras[1], "centroid_s_mm": ras[2],
                         "threshold": sec["tumor_summary"][r["structure"]]["threshold"],
                         "image": ((r.get("location") or {}).get("slice") or {}).get("text"),
                         "side": (r.get("location") or {}).get("side"),
                         "location": (r.get("location") or {}).get("text")})
    for name, s in sec["tumor_summary"].items():
        largest = s["largest"] or {}
        writer.writerow({**common, "section": "tumor_summary", "structure": name, "kind": "tumor",
                         "threshold": s["threshold"], "count": s["count"], "volume_ml": s["total_volume_ml"],
                         "largest_volume_ml": largest.get("volume_ml", 0.0),
                         "largest_diameter_cm": largest.get("longest_axial_diameter_cm", 0.0)})
    for r in sec.get("truth") or []:
        writer.writerow({**common, "section": "truth", "structure": r["structure"], "dice": r["dice"],
                         "truth_ml": r["truth_ml"], "volume_ml": r["segmented_ml"]})
    return out.getvalue()
