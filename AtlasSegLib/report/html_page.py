"""report.html: the self-contained report page (CSS inline, pictures inlined as data: URIs, no scripts), written
from report.json's "report" section and the pictures' PNG bytes, one builder per section of the page; and the
same rows as strings for the Slicer module's Report table (``table_rows``)."""
from __future__ import annotations

import base64
import html
import re

from ..evaluate import TRUTH_DIR
from ..review import TO_REVIEW, status_text
from .assemble import ANONYMIZED_INPUT
from .units import fmt

CSS = """
body{font-family:"DejaVu Sans","Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1c2430;background:#fff;
font-size:14px;line-height:1.4}
header{background:#1f3a5f;color:#fff;padding:14px 24px}
header h1{margin:0;font-size:22px;font-weight:600}
header .sub{color:#c9d6e8;font-size:13px;margin-top:2px}
main{padding:8px 24px 24px;max-width:1400px}
h2{font-size:17px;margin:22px 0 8px;color:#1f3a5f;border-bottom:2px solid #1f3a5f;padding-bottom:3px}
table{border-collapse:collapse;margin:4px 0 8px}
th{background:#dde6f2;color:#1c2430;text-align:left;font-weight:600;padding:5px 10px;border:1px solid #b9c6d8}
td{padding:4px 10px;border:1px solid #d3dbe6}
tr:nth-child(even) td{background:#f6f8fb}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.status{display:inline-block;padding:1px 8px;border-radius:9px;font-size:12px;font-weight:600}
.kept{background:#d7f0dc;color:#17612b}.unreviewed{background:#fff1c9;color:#7a5600}td.flags{color:#a3341b;font-size:12px}
.removed{background:#e8e8e8;color:#666;text-decoration:line-through}
tr.removed-row td{color:#888}
.pictures{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
figure{margin:0}
figcaption{font-size:12px;color:#45505e;max-width:420px;margin-top:3px}
img{display:block;border:1px solid #c8d0da}
img.wide{max-width:100%;height:auto}
figure{max-width:100%}
td.where{max-width:330px;font-size:13px}
.case dl{margin:10px 0 4px}
.notes{background:#fff7e0;border-left:4px solid #e0a800;padding:6px 12px;margin:10px 0}
.warnings{background:#fdecea;border-left:4px solid #b3261e;color:#5f1410;padding:6px 12px;margin:10px 0}
.warnings ul{margin:4px 0 2px;padding-left:20px}
.warning{color:#8a1f11;font-weight:600}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 14px;margin:4px 0}
dt{font-weight:600;color:#45505e}dd{margin:0}
footer{color:#6a7583;font-size:12px;padding:10px 24px 20px}
@media print{header{-webkit-print-color-adjust:exact;print-color-adjust:exact}}
"""



def _e(value) -> str:
    return html.escape("" if value is None else str(value))





def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def report_html(report: dict, pngs: dict) -> str:
    """The self-contained report page (pictures from ``pngs``: key -> PNG bytes, inlined as data: URIs)."""
    sec = report["report"]
    parts = _top_html(report, sec)
    parts += _truth_html(sec, report.get("input", {}))
    parts += _tumors_html(sec)
    parts += _tumor_pictures_html(sec, pngs)
    parts += _structure_pictures_html(sec, pngs)
    parts += _organs_html(sec)
    parts += _settings_html(report, sec)
    parts.append(f"<footer>AtlasSeg {_e(sec['atlasseg_version'])}. Volumes in ml, diameters in cm, centroids in mm "
                 "(RAS). Location: the image to open (DICOM instance number, or the axial slice counted from the "
                 "head end) and the patient's side of the body's midline on that slice. Segmentations made by a "
                 "model: check every finding on the images. Research use only.</footer></body></html>\n")
    return "\n".join(parts)


def _top_html(report: dict, sec: dict) -> list:
    """The page's head and title band, the case block, the warnings (first: they outweigh any number) and notes."""
    model = report.get("model", {})
    title = "AtlasSeg report" + ("" if sec.get("anonymized", False) else f": {sec['case']}")
    parts = [f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{CSS}</style></head><body>
<header><h1>{_e(title)}</h1>
<div class="sub">{_e(model.get('title'))} {_e(model.get('version'))} &middot; report {_e(sec['created'])} &middot;
research use only, not for diagnosis</div></header>
<main>"""]
    parts.append(_header_html(sec, report))
    warnings = sec.get("warnings", report.get("warnings") or [])
    if warnings:
        # First on the page: a wrong model, a scan without an abdomen or an implausible label outweighs any number.
        parts.append(f'<div class="warnings" id="warnings"><strong>{len(warnings)} warning'
                     f'{"s" if len(warnings) != 1 else ""}: check before using these results</strong><ul>'
                     + "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul></div>")
    if sec["notes"]:
        parts.append('<div class="notes">' + "<br>".join(_e(n) for n in sec["notes"]) + "</div>")
    return parts


def _truth_html(sec: dict, inp: dict) -> list:
    """A known truth (the demo), first after the warnings: it says how far every number below can be trusted."""
    truth = sec.get("truth") or []
    if not truth:
        return []
    parts = ['<h2 id="truth">Truth and Dice</h2><p>Each mask against the known truth in '
             f"<code>{TRUTH_DIR}/</code>" + (" (the synthetic phantom's labels)" if inp.get("format") == "phantom"
                                             else "") + ": Dice = 2 |A &cap; B| / (|A| + |B|).</p>"
             "<table><tr><th>Structure</th><th>Dice</th><th>Truth (ml)</th><th>Segmented (ml)</th>"
             "<th>Difference (ml)</th></tr>"]
    for r in truth:
        diff = None if r.get("truth_ml") is None else r["segmented_ml"] - r["truth_ml"]
        parts.append(f"<tr><td>{_e(r['structure'])}</td><td class=num>{fmt(r.get('dice'), 3)}</td>"
                     f"<td class=num>{fmt(r.get('truth_ml'), 1)}</td>"
                     f"<td class=num>{fmt(r.get('segmented_ml'), 1)}</td>"
                     f"<td class=num>{'–' if diff is None else f'{diff:+.1f}'}</td></tr>")
    parts.append("</table>")
    for r in truth:
        les = r.get("lesions")
        if les:
            parts.append(f"<p id=\"lesions-{_e(r['structure'])}\"><strong>{_e(r['structure'])}, lesion by lesion"
                         f":</strong> {les['found']} of {les['truth']} true tumor{'s' if les['truth'] != 1 else ''} "
                         f"found, {les['missed']} missed, {les['false_positives']} false positive"
                         f"{'s' if les['false_positives'] != 1 else ''} (a true tumor is found when a segmented "
                         "component overlaps it; a component overlapping none is a false positive; "
                         "<code>atlasseg evaluate</code> gives the FROC)</p>")
    return parts


def _tumors_html(sec: dict) -> list:
    """The tumor summary (a row per tumor type) and the components table."""
    parts = ["<h2>Tumors</h2>"]
    if not sec["tumor_summary"]:
        return parts + ["<p>This model segments no tumors.</p>"]
    parts.append("<table><tr><th>Tumor type</th><th>Count</th><th>Largest (ml)</th><th>Largest diameter (cm)</th>"
                 "<th>Total (ml)</th><th>Threshold</th><th>Review</th></tr>")
    for name, s in sec["tumor_summary"].items():
        largest = s["largest"] or {}
        point = f" ({s['operating_point'].replace('_', ' ')})" if s["operating_point"] else ""
        review = f"{s['kept']} kept, {s['to_review']} to review, {s['removed']} removed"
        note = f'<br><span class="warning">{_e(s["note"])}</span>' if s.get("note") else ""
        parts.append(f"<tr><td>{_e(name)}{note}</td><td class=num>{s['count']}</td>"
                     f"<td class=num>{fmt(largest.get('volume_ml'), 2)}</td>"
                     f"<td class=num>{fmt(largest.get('longest_axial_diameter_cm'))} &times; "
                     f"{fmt(largest.get('perpendicular_diameter_cm'))}</td>"
                     f"<td class=num>{fmt(s['total_volume_ml'], 2)}</td>"
                     f"<td class=num>{fmt(s['threshold'], 2)}{_e(point)}</td><td>{_e(review)}</td></tr>")
    parts.append("</table>")
    parts.append(_components_table(sec["tumor_components"]))
    return parts


def _tumor_pictures_html(sec: dict, pngs: dict) -> list:
    tumor_pictures = sec["pictures"]["tumors"]
    if not tumor_pictures:
        return []
    parts = ['<h2>Tumor slices</h2><div class="pictures">']
    for key, info in tumor_pictures.items():
        if key not in pngs:
            continue
        where = (info.get("slice") or {}).get("text")
        parts.append(f'<figure><img decoding="sync" alt="axial slice of {_e(info["structure"])} #{info["component"]}" '
                     f'src="{_data_uri(pngs[key])}"><figcaption>{_e(info["structure"])} #{info["component"]}: '
                     f"axial slice at S {info['slice_s_mm']:.1f} mm{f' ({_e(where)})' if where else ''} "
                     "through its centroid; outline of the component; the diameters are the longest axial one "
                     "(on any slice) and its perpendicular.</figcaption></figure>")
    parts.append("</div>")
    return parts


def _structure_pictures_html(sec: dict, pngs: dict) -> list:
    """The structures on axial and coronal slices, the frontal overview and Slicer's 3D view, as there are."""
    structures = sec["pictures"].get("structures") or {}
    overview = pngs.get("overview")
    three_d = pngs.get("3d")
    if not (structures or overview or three_d):
        return []
    parts = ['<h2>Structures on the images</h2><div class="pictures">']
    if "structures_axial" in pngs:
        levels = structures.get("axial_levels") or []
        parts.append(f'<figure><img decoding="sync" class="wide" alt="axial slices with every structure outlined" '
                     f'src="{_data_uri(pngs["structures_axial"])}"><figcaption>Axial slices ('
                     f"{len(levels)}) chosen so that every structure is seen at half its largest area or more "
                     "in one of them; each structure outlined in its colour and named (legend on the right). "
                     "Radiological view: anterior up, patient's right on the left; HU -150...250."
                     "</figcaption></figure>")
    if "structures_coronal" in pngs:
        parts.append(f'<figure><img decoding="sync" class="wide" alt="coronal slice with the structures outlined" '
                     f'src="{_data_uri(pngs["structures_coronal"])}"><figcaption>Coronal slice at A '
                     f"{fmt(structures.get('coronal_a_mm'), 0)} mm, through the most structures "
                     f"({len(structures.get('coronal_structures') or [])}); yellow ticks: the axial slices' "
                     "levels. Head up, patient's right on the left, true proportions.</figcaption></figure>")
    if overview:
        parts.append(f'<figure><img decoding="sync" class="wide" alt="frontal projection with the structures tinted" '
                     f'src="{_data_uri(overview)}">'
                     "<figcaption>Frontal projection (sum along anterior-posterior, HU -150...250, 1 mm pixels); "
                     "each structure tinted in its colour. Patient's right on the left.</figcaption></figure>")
    if three_d:
        parts.append(f'<figure><img decoding="sync" alt="3D view of the segmentation from the front" style="max-width:460px" '
                     f'src="{_data_uri(three_d)}"><figcaption>3D surfaces, anterior view (Slicer renderer).'
                     "</figcaption></figure>")
    parts.append("</div>")
    return parts


def _organs_html(sec: dict) -> list:
    parts = ["<h2>Organs and structures</h2><table><tr><th>Structure</th><th>Kind</th><th>Volume (ml)</th>"
             "<th>Mean HU</th></tr>"]
    for r in sec["organs"]:
        parts.append(f"<tr><td>{_e(r['structure'])}</td><td>{_e(r['kind'])}</td>"
                     f"<td class=num>{fmt(r['volume_ml'], 1)}</td><td class=num>{fmt(r['mean_hu'], 0)}</td></tr>")
    parts.append("</table>")
    return parts


def _settings_html(report: dict, sec: dict) -> list:
    """The model, its thresholds and operating points, the run's settings and input (anonymized: no name, no UID)."""
    model = report.get("model", {})
    inp = report.get("input", {})
    settings = report.get("settings", {})
    anonymized = sec.get("anonymized", False)
    grid = inp.get("grid") or {}
    header = sec.get("header") or {}
    facts = [
        ("Model", f"{model.get('title')} ({model.get('id')}, version {model.get('version')})"),
        ("License", model.get("license")),
        ("Citation", model.get("citation")),
        ("Thresholds", ", ".join(f"{k} {v}" for k, v in sec["thresholds"].items()) or "–"),
        ("Operating points", "; ".join(
            f"{k}: " + ", ".join(f"{n.replace('_', ' ')} {v}" for n, v in s["operating_points"].items())
            for k, s in sec["tumor_summary"].items()) or "–"),
        ("Device", f"{settings.get('device')}{' (fast, coarse spacing)' if settings.get('fast') else ''}"),
        ("Post-processing", "on" if settings.get("postprocess", True) else "off (raw masks)"),
        ("Input", f"{ANONYMIZED_INPUT if anonymized else header.get('input_name')} ({inp.get('format')})"),
        ("Series UID", "–" if anonymized else inp.get("series_uid") or "–"),
        ("Grid", f"{' x '.join(str(v) for v in grid.get('size', []))} voxels, "
                 f"{' x '.join(f'{v:.2f}' for v in grid.get('spacing', []))} mm"),
        ("Run", report.get("created")),
    ]
    parts = ["<h2>Model and settings</h2><dl>"]
    for label, value in facts:
        parts.append(f"<dt>{_e(label)}</dt><dd>{_e(value)}</dd>")
    parts.append("</dl></main>")
    return parts


def _header_html(sec: dict, report: dict) -> str:
    """The case block under the title: who and what was scanned (from the DICOM input), the input's file name,
    the model; an anonymized report says what it left out."""
    h = sec.get("header") or {}
    model = f"{h.get('model') or ''} ({h.get('model_id')}), version {h.get('model_version')}"
    rows = []
    if h.get("anonymized"):
        rows.append(("Case", "anonymized: patient name and ID, study date, series description, UIDs and file names "
                             "left out"))
    elif h.get("input_format") == "phantom":
        seed = re.search(r"seed=(\d+)", h.get("input_name") or "")
        rows.append(("Case", "synthetic phantom" + (f", seed {seed.group(1)}" if seed else "")))
    else:
        name = h.get("patient_name")
        pid = h.get("patient_id")
        if name or pid:
            rows.append(("Patient", f"{name or '(no name)'}" + (f" (ID {pid})" if pid else "")))
        elif "patient_name" in h:
            rows.append(("Patient", "(no name or ID in the DICOM header)"))
        if h.get("study_date") or h.get("study_description"):
            rows.append(("Study", " · ".join(v for v in (h.get("study_date"), h.get("study_description")) if v)))
        series = " · ".join(v for v in (h.get("series_description"),
                                        f"series {h['series_number']}" if h.get("series_number") else "",
                                        h.get("modality")) if v)
        if series:
            rows.append(("Series", series))
        if h.get("input_name"):
            rows.append(("Input", f"{h['input_name']} ({h.get('input_format')})"))
        if h.get("note"):
            rows.append(("Note", h["note"]))
    rows.append(("Model", model))
    return ('<div class="case"><dl>' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows)
            + "</dl></div>")



def _components_table(rows: list) -> str:
    if not rows:
        return "<p>No tumor components at the current thresholds.</p>"
    out = ["<table><tr><th>Tumor</th><th>#</th><th>Organ</th><th>Volume (ml)</th><th>Diameters (cm)</th>"
           "<th>Max p</th><th>Mean p</th><th>Mean HU</th><th>In organ</th><th>Flags</th><th>Review</th><th>Location</th>"
           "<th>Centroid R, A, S (mm)</th></tr>"]
    for r in rows:
        status = r["status"]
        label = r.get("status_text") or status_text(r)
        if (r.get("origin") or "model") != "model":
            label = f"{label} ({r['origin']})"  # a lesion a reviewer added by a click says so
        css = {TO_REVIEW: "unreviewed", "kept, below threshold": "kept"}.get(status, status)
        pct = r.get("inside_organ_pct")
        flags = "; ".join(r.get("flags") or ()) or "–"
        ras = ", ".join(fmt(v, 1) for v in r["centroid_ras_mm"])
        cls = ' class="removed-row"' if status == "removed" else ""
        where = (r.get("location") or {}).get("text") or "–"
        out.append(f"<tr{cls}><td>{_e(r['structure'])}</td><td class=num>{'&ndash;' if r['component'] is None else r['component']}</td><td>{_e(r.get('organ_text') or r['organ'])}</td>"
                   f"<td class=num>{fmt(r['volume_ml'], 2)}</td>"
                   f"<td class=num>{fmt(r['longest_axial_diameter_cm'])} &times; {fmt(r['perpendicular_diameter_cm'])}</td>"
                   f"<td class=num>{fmt(r['max_probability'], 2)}</td><td class=num>{fmt(r['mean_probability'], 2)}</td>"
                   f"<td class=num>{fmt(r['mean_hu'], 0)}</td>"
                   f"<td class=num>{'–' if pct is None else fmt(pct, 0) + ' %'}</td><td class=flags>{_e(flags)}</td>"
                   f'<td><span class="status {_e(css)}">{_e(label)}</span></td><td class="where">{_e(where)}</td>'
                   f"<td class=num>{ras}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def table_rows(report: dict) -> list:
    """The report's rows as strings for a GUI table (the Slicer module's Report section): one row per tumor
    component, then one per structure. Columns: ``TABLE_COLUMNS``."""
    sec = report.get("report")
    if not sec:
        return []
    rows = []
    for r in sec["tumor_components"]:
        name = f"{r['structure']} (removed)" if r["component"] is None else f"{r['structure']} #{r['component']}"
        organ = r.get("organ_text") or r["organ"] or ""
        if r.get("flags"):
            organ = f"{organ} ⚑ {'; '.join(r['flags'])}"
        rows.append([name, organ, fmt(r["volume_ml"], 2),
                     f"{fmt(r['longest_axial_diameter_cm'])} x {fmt(r['perpendicular_diameter_cm'])}",
                     fmt(r["max_probability"], 2), (r.get("status_text") or status_text(r))
                     + ("" if (r.get("origin") or "model") == "model" else f" ({r['origin']})")])
    for r in sec["organs"]:
        rows.append([r["structure"], r["kind"] or "", fmt(r["volume_ml"], 1), "", "",
                     "" if r["mean_hu"] is None else f"{r['mean_hu']} HU"])
    return rows


TABLE_COLUMNS = ("Structure", "Organ / kind", "Volume (ml)", "Diameters (cm)", "Max p", "Review / HU")
