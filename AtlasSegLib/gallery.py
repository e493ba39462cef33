"""``gallery.html``: the dataset review page of ``atlasseg summarize`` (one self-contained file, opens offline).

One card per case, most likely wrong first (``summarize.sort_cases``): the case's frontal projection (the run's
``overview.png``, drawn by ``overview.py``, with its title band and legend cut off and shrunk to a thumbnail;
recomputed with ``overview.Overview`` from the CT and masks when a run has none), its structures with their
colours and volumes (outlier volumes with their score), its warnings, and a link to its report.

Marks: a page opened from file:// cannot write files, so the reviewer's accept / revise marks and notes are kept
in the browser (localStorage, under a key naming the results folder, so reopening the page finds them) and
*Download marks* saves them as ``review_marks.json``; put that file into the results folder (or pass
``--marks FILE``) and ``atlasseg summarize`` reads it. When the page is made again, the marks of that file are
built in, so a colleague on another computer sees them too; where the browser holds a newer mark for a case, the
newer one wins. *Load marks…* merges a marks file (e.g. a colleague's) into the page.
"""
from __future__ import annotations

import base64
import html
import io as _io
import json
import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image

from .card import complete_class
from .geometry import Grid, oriented
from .io import atomic_write_text, read_image
from .overview import Overview

log = logging.getLogger(__name__)

THUMB_BOX_PX = (220, 220)  # a thumbnail fits this box (physical aspect kept): ~10 kB as JPEG
JPEG_QUALITY = 80
# overview.Overview._decorate: the projection is pasted at (0, TITLE_PX) and a LEGEND_PX wide legend is drawn right
# of it; the thumbnail keeps only the projection (the page lists the structures with their colours itself).
TITLE_PX = 30
LEGEND_PX = 210


# ------------------------------------------------------------------------------------------- thumbnails
def thumbnail(case) -> tuple:
    """(JPEG bytes, width, height) of the case's frontal projection, or (None, 0, 0) when it cannot be drawn."""
    picture = case.folder / "overview.png"
    try:
        if picture.is_file():
            img = _projection_part(Image.open(picture).convert("RGB"), case.report)
        else:
            img = _draw_projection(case)
    except Exception as exc:  # noqa: BLE001 - one unreadable picture must not stop a dataset's page
        log.warning("case %s: no thumbnail (%s)", case.name, exc)
        return None, 0, 0
    if img is None:
        return None, 0, 0
    img.thumbnail(THUMB_BOX_PX, Image.LANCZOS)
    buf = _io.BytesIO()
    img.save(buf, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return buf.getvalue(), img.width, img.height


def _projection_part(img, report: dict):
    """The projection inside an overview.png: below the title band, left of the legend, as tall as the scan's
    head-to-foot length is to its width (the canvas below it may be padding for a long legend or a note)."""
    width = img.width - LEGEND_PX
    g = oriented(Grid.from_dict(report["input"]["grid"]), "LAS")
    height = round(width * g.size[2] * g.spacing[2] / max(g.size[0] * g.spacing[0], 1e-6))
    height = max(1, min(height, img.height - TITLE_PX))
    return img.crop((0, TITLE_PX, width, TITLE_PX + height))


def _draw_projection(case):
    """overview.py's projection for a run without overview.png: the CT (the run's input, else OUTDIR/ct.nii.gz;
    without one, the masks over black) and every non-empty mask."""
    report = case.report
    masks = [(e, case.folder / (e.get("file") or f"segmentations/{e['name']}.nii.gz")) for e in report["structures"]]
    masks = [(e, p) for e, p in masks if p.is_file()]
    ct_path = next((p for p in (report.get("input", {}).get("path"), case.folder / "ct.nii.gz")
                    if p and Path(p).exists()), None)
    if ct_path is not None:
        image, _ = read_image(ct_path, series_uid=report.get("input", {}).get("series_uid"))
    elif masks:
        ref = sitk.ReadImage(str(masks[0][1]))
        image = sitk.Cast(ref, sitk.sitkInt16) * 0 - 1000
        image.CopyInformation(ref)
    else:
        return None
    overview = Overview(image)
    for entry, path in masks:
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        if mask.any():
            color = entry.get("color") or complete_class({"name": entry["name"]}).get("color") or (255, 255, 0)
            overview.add(entry["name"], color, (mask > 0).astype(np.uint8))
    return _projection_part(overview.render(""), report)


# ------------------------------------------------------------------------------------------------ page
def write_gallery(cases: list, marks, results: Path, path: Path, *, document: dict, marks_name: str, z_limit: float,
                  min_cases: int, single: bool = False, progress=None) -> int:
    """Write the page atomically; returns its size in bytes.

    What the page states but ``summarize`` owns comes as arguments (this module imports nothing of summarize,
    which imports it): ``document``, the header of the marks file *Download marks* writes
    (``summarize.marks_document`` without its marks); ``marks_name``, that file's name; ``z_limit`` and
    ``min_cases``, the outlier rule (``summarize.Z_LIMIT``, ``summarize.MIN_CASES_FOR_OUTLIERS``)."""
    cards = []
    for n, case in enumerate(cases):
        if progress is not None:
            progress("gallery", n / max(len(cases), 1), case.name)
        cards.append(_card(case, n + 1, results, single))
    data = {"key": f"atlasseg-review-marks:{results.resolve()}", "results": str(results.resolve()),
            "file_marks": marks.marks, "stamps": {c.name: c.labels_stamp for c in cases if c.report is not None},
            "document": {k: v for k, v in document.items() if k != "marks"}}
    reviewable = sum(c.report is not None for c in cases)
    rule = (f"Order: failed runs, then the number of plausibility warnings, then the number of organ volumes that "
            f"are outliers for this dataset, then the largest outlier score. Outlier: modified z-score "
            f"0.6745&nbsp;×&nbsp;(volume&nbsp;−&nbsp;median)&nbsp;/&nbsp;MAD beyond ±{z_limit} among the cases with "
            f"that organ (Iglewicz &amp; Hoaglin; only organs present in at least {min_cases} cases; "
            f"tumors are not scored).")
    where = html.escape(str(results.resolve() / marks_name))
    page = (_HEAD.replace("@TITLE@", html.escape(f"AtlasSeg review: {results.resolve().name}"))
            + f"<header><h1>Dataset review: {html.escape(results.resolve().name)}</h1>"
            f"<div class=sub>{len(cases)} case(s) · {html.escape(str(results.resolve()))}</div>"
            "<p class=help>Marks stay in this browser until you download them: <b>Download marks</b> saves "
            f"<code>review_marks.json</code>; put it at <code>{where}</code> (or run <code>atlasseg summarize "
            "RESULTS --marks FILE</code>). Keys: <kbd>j</kbd>/<kbd>k</kbd> next/previous case, <kbd>a</kbd> accept, "
            f"<kbd>r</kbd> revise (and type a note), <kbd>u</kbd> clear.</p><p class=help>{rule}</p></header>"
            f"<nav class=bar><span id=counts data-total='{reviewable}'></span>"
            "<label>show <select id=filter><option value=all>all</option><option value=unreviewed>unreviewed"
            "</option><option value=revise>revise</option><option value=accept>accepted</option>"
            "<option value=flagged>with warnings or outliers</option></select></label>"
            "<button id=download type=button>Download marks</button>"
            "<label class=load>Load marks… <input id=load type=file accept='.json,application/json'></label></nav>"
            f"<main id=cases>{''.join(cards)}</main>"
            f"<script type='application/json' id=atlasseg-data>{_json_for_script(data)}</script>"
            f"<script>{_SCRIPT}</script></body></html>\n")
    atomic_write_text(page, path)
    return len(page.encode("utf-8"))


def _json_for_script(data) -> str:
    # Inside <script> only "</" can end the element early; escaping it keeps case names and notes inert.
    return json.dumps(data).replace("</", "<\\/")


def _card(case, rank: int, results: Path, single: bool) -> str:
    esc = html.escape
    name = esc(case.name)
    if case.report is None:
        return (f"<section class='case failed' id='case-{name}' data-case='{name}' data-flagged=1>"
                f"<h2><span class=rank>{rank}</span>{name}</h2><p class=status>{esc(case.status)}: "
                f"{esc(case.message or 'no output')}</p><p class=help>Not reviewable: re-run this case "
                "(atlasseg batch skips finished cases).</p></section>")
    base = "" if single else f"{case.name}/"
    href = base + ("report.html" if (case.folder / "report.html").is_file() else "report.json")
    jpeg, w, h = thumbnail(case)
    # R/L drawn by the page: overview.png's own markers are unreadable at thumbnail size.
    pic = (f"<img src='data:image/jpeg;base64,{base64.b64encode(jpeg).decode()}' width={w} height={h} "
           f"alt='frontal projection of {name}'><span class=side style='left:4px'>R</span>"
           "<span class=side style='right:4px'>L</span>" if jpeg else "<div class=nopic>no picture</div>")
    badges = []
    if case.warnings:
        badges.append(f"<span class='badge warn'>{len(case.warnings)} warning{'s' * (len(case.warnings) > 1)}</span>")
    if case.outliers:
        badges.append(f"<span class='badge outlier'>{len(case.outliers)} outlier{'s' * (len(case.outliers) > 1)}"
                      "</span>")
    tumors = case.report.get("tumors") or {}
    rows = []
    for entry in case.report["structures"]:
        color = ",".join(str(int(v)) for v in (entry.get("color") or (200, 200, 200)))
        z = case.z.get(entry["name"])
        cls = " class=out" if entry["name"] in case.outliers else ""  # |z| beyond summarize's limit
        if entry["name"] in tumors:
            comps = tumors[entry["name"]].get("components") or []
            big = max((c.get("longest_axial_diameter_mm") or 0.0 for c in comps), default=0.0)
            value = f"{len(comps)}" + (f", ≤{big / 10:.1f} cm" if comps else "")
        else:
            value = f"{entry.get('volume_ml') or 0:.0f} ml" + (f" <i>z {z:+.1f}</i>" if cls else "")
        flagged = " ⚠" if entry.get("flags") else ""
        rows.append(f"<li{cls}><b style='background:rgb({color})'></b>{esc(entry['name'])}{flagged}"
                    f"<span>{value}</span></li>")
    # Three warnings shown, the rest one click away: a card stays a card when a run has fifteen.
    shown = "".join(f"<li>{esc(w)}</li>" for w in case.warnings[:3])
    more = "".join(f"<li>{esc(w)}</li>" for w in case.warnings[3:])
    more = (f"<details><summary>{len(case.warnings) - 3} more warning(s)</summary><ul class=warnings>{more}</ul>"
            "</details>") if more else ""
    warn_html = f"<ul class=warnings>{shown}</ul>{more}" if shown else ""
    flagged = int(bool(case.warnings or case.outliers))
    return (f"<section class=case id='case-{name}' data-case='{name}' data-flagged={flagged} tabindex=-1>"
            f"<h2><span class=rank>{rank}</span><a href='{esc(href)}'>{name}</a>{''.join(badges)}</h2>"
            f"<div class=body><a class=pic href='{esc(href)}'>{pic}</a><ul class=structures>{''.join(rows)}</ul></div>"
            f"{warn_html}<div class=marks><button type=button class=accept data-mark=accept>Accept</button>"
            f"<button type=button class=revise data-mark=revise>Revise</button>"
            f"<input class=note type=text placeholder='note (what to fix)' aria-label='note for {name}'>"
            f"<span class=state></span></div></section>")


_HEAD = """<!DOCTYPE html><html lang=en><head><meta charset=utf-8><meta name=viewport content="width=device-width">
<title>@TITLE@</title><style>
body{font:14px/1.35 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#eef1f5;color:#1b2430}
header{background:#1f3a5f;color:#fff;padding:10px 16px 4px}
header h1{font-size:19px;margin:0}.sub{opacity:.8;font-size:12px}
.bar{display:flex;gap:14px;align-items:center;flex-wrap:wrap;padding:6px 16px;background:#1f3a5f;color:#fff;position:sticky;top:0;z-index:2;box-shadow:0 2px 4px rgba(0,0,0,.25)}
.bar select{width:auto;max-width:16em;font:inherit}
.bar button,.bar .load{background:#fff;color:#1f3a5f;border:0;border-radius:4px;padding:4px 10px;font:inherit;cursor:pointer}
.load input{display:none}#counts b{font-size:15px}
.help{font-size:12px;margin:2px 0;opacity:.9}.help code{color:#ffe9a8}
kbd{background:#fff;color:#1f3a5f;border-radius:3px;padding:0 4px;font-size:11px}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(440px,1fr));gap:10px;padding:10px;align-items:start}
details{font-size:12px;color:#a1150b;margin-left:18px}details .warnings{padding-left:0}
.case{background:#fff;border-radius:6px;padding:8px 10px;border-left:6px solid #b0b8c4}
.case:focus{outline:3px solid #5b8def}
.case[data-mark=accept]{border-left-color:#2e9d4a;background:#f1fbf3}
.case[data-mark=revise]{border-left-color:#d9822b;background:#fff6ec}
.case.stale .state{color:#b00020}
.case h2{font-size:15px;margin:0 0 6px;display:flex;gap:6px;align-items:center}
.case h2 a{color:#1f3a5f}.rank{color:#7a8594;font-weight:400;min-width:2.2em}
.badge{font-size:11px;border-radius:9px;padding:1px 7px;font-weight:600}
.warn{background:#ffe3e0;color:#a1150b}.outlier{background:#fff0c2;color:#7a5200}
.body{display:flex;gap:10px}.pic img{display:block;border-radius:3px;background:#000}
.nopic{width:160px;height:120px;background:#333;color:#ccc;display:flex;align-items:center;justify-content:center}
.structures{list-style:none;margin:0;padding:0;font-size:12px;flex:1;columns:1}
.structures li{display:flex;align-items:center;gap:5px;white-space:nowrap}
.structures li b{width:10px;height:10px;border-radius:2px;display:inline-block}
.structures li span{margin-left:auto;color:#4a5563}.structures li.out{background:#fff0c2}
.structures i{color:#7a5200;font-style:normal}
.warnings{font-size:12px;color:#a1150b;margin:6px 0 0;padding-left:18px}
.marks{display:flex;gap:6px;align-items:center;margin-top:7px}
.marks button{border:1px solid #9aa5b4;background:#fff;border-radius:4px;padding:3px 10px;font:inherit;cursor:pointer}
.marks button.accept[aria-pressed=true]{background:#2e9d4a;color:#fff;border-color:#2e9d4a}
.marks button.revise[aria-pressed=true]{background:#d9822b;color:#fff;border-color:#d9822b}
.note{flex:1;min-width:80px;font:inherit;padding:3px 5px;border:1px solid #c3cad4;border-radius:4px}
.state{font-size:11px;color:#5d6877}
.failed{border-left-color:#b00020}.failed .status{color:#b00020}
.hidden{display:none}
@media print{.bar{position:static}.marks input{border:0}}
.pic{position:relative;display:block}.pic .side{position:absolute;top:2px;color:#ffd400;font-size:11px;font-weight:700}
</style></head><body>
"""

# The page's only script: marks in localStorage, merged with the marks built into the page, and downloaded as
# review_marks.json. Kept dependency-free so the page works offline in any current browser.
_SCRIPT = r"""
(function(){
"use strict";
const DATA = JSON.parse(document.getElementById("atlasseg-data").textContent);
const KEY = DATA.key;
function stored(){ try { return JSON.parse(localStorage.getItem(KEY) || "{}"); } catch (e) { return {}; } }
function newer(a, b){ return !a ? b : !b ? a : ((b.at || "") > (a.at || "") ? b : a); }
let marks = {};
function merge(incoming){
  for (const [name, m] of Object.entries(incoming || {})) { marks[name] = newer(marks[name], m); }
}
merge(DATA.file_marks); merge(stored());
function save(){ try { localStorage.setItem(KEY, JSON.stringify(marks)); } catch (e) {
  document.getElementById("counts").textContent = "cannot keep marks in this browser (" + e.name + "): download them often"; } }
const cards = Array.from(document.querySelectorAll("section.case"));
function show(card){
  const name = card.dataset.case, m = marks[name], state = card.querySelector(".state");
  if (!state) return;
  const mark = m && m.mark ? m.mark : "";
  const stale = !!(mark && m.labels && DATA.stamps[name] && m.labels !== DATA.stamps[name]);
  card.dataset.mark = mark;
  card.classList.toggle("stale", stale);
  for (const b of card.querySelectorAll("button[data-mark]")) b.setAttribute("aria-pressed", String(b.dataset.mark === mark));
  const note = card.querySelector(".note");
  if (document.activeElement !== note) note.value = (m && m.note) || "";
  state.textContent = stale ? "marked on earlier labels: review again" : mark ? (mark === "accept" ? "accepted" : "to revise") : "";
}
function counts(){
  let a = 0, r = 0;
  for (const c of cards) { if (c.querySelector(".state")) { if (c.dataset.mark === "accept" && !c.classList.contains("stale")) a++;
    else if (c.dataset.mark === "revise" && !c.classList.contains("stale")) r++; } }
  const el = document.getElementById("counts"), total = Number(el.dataset.total);
  el.innerHTML = "<b>" + a + "</b> accepted · <b>" + r + "</b> to revise · <b>" + (total - a - r) + "</b> unreviewed";
  applyFilter();
}
function setMark(card, mark, note){
  const name = card.dataset.case, old = marks[name] || {};
  marks[name] = {mark: mark, note: note === undefined ? (old.note || "") : note, at: new Date().toISOString(),
                 labels: DATA.stamps[name] || ""};
  save(); show(card); counts();
}
function applyFilter(){
  const f = document.getElementById("filter").value;
  for (const c of cards) {
    const m = c.dataset.mark || "", reviewable = !!c.querySelector(".state");
    const visible = f === "all" || (f === "flagged" && c.dataset.flagged === "1") ||
      (f === "unreviewed" && reviewable && (!m || c.classList.contains("stale"))) || (f === m && !c.classList.contains("stale"));
    c.classList.toggle("hidden", !visible);
  }
}
for (const card of cards) {
  for (const b of card.querySelectorAll("button[data-mark]")) {
    b.addEventListener("click", function(){ setMark(card, card.dataset.mark === b.dataset.mark ? null : b.dataset.mark); });
  }
  const note = card.querySelector(".note");
  if (note) note.addEventListener("input", function(){
    const m = marks[card.dataset.case];
    // A note alone means "revise": the reviewer is saying what to fix.
    setMark(card, m && m.mark ? m.mark : "revise", note.value);
  });
  show(card);
}
function documentOfMarks(){
  const out = {};
  for (const [name, m] of Object.entries(marks)) if (m && m.mark) out[name] = m;
  return Object.assign({}, DATA.document, {saved: new Date().toISOString(), marks: out});
}
window.atlassegMarks = documentOfMarks;
document.getElementById("download").addEventListener("click", function(){
  const blob = new Blob([JSON.stringify(documentOfMarks(), null, 1)], {type: "application/json"});
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob); a.download = "review_marks.json";
  document.body.appendChild(a); a.click(); a.remove();
  setTimeout(function(){ URL.revokeObjectURL(a.href); }, 10000);
});
document.getElementById("load").addEventListener("change", function(ev){
  const file = ev.target.files[0]; if (!file) return;
  file.text().then(function(text){
    const doc = JSON.parse(text);
    if (doc.format !== DATA.document.format) throw new Error("not a review marks file");
    merge(doc.marks); save(); cards.forEach(show); counts();
  }).catch(function(e){ alert("Cannot load " + file.name + ": " + e.message); });
  ev.target.value = "";
});
document.getElementById("filter").addEventListener("change", applyFilter);
let current = -1;
function focusCard(i){
  const visible = cards.filter(function(c){ return !c.classList.contains("hidden"); });
  if (!visible.length) return;
  current = Math.max(0, Math.min(visible.length - 1, i));
  visible[current].focus(); visible[current].scrollIntoView({block: "center"});
}
document.addEventListener("keydown", function(ev){
  if (ev.target.tagName === "INPUT" || ev.target.tagName === "SELECT" || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const visible = cards.filter(function(c){ return !c.classList.contains("hidden"); });
  const card = visible.indexOf(document.activeElement) >= 0 ? document.activeElement : null;
  if (ev.key === "j") { focusCard(card ? visible.indexOf(card) + 1 : 0); }
  else if (ev.key === "k") { focusCard(card ? visible.indexOf(card) - 1 : 0); }
  else if (card && card.querySelector(".state") && ev.key === "a") { setMark(card, "accept"); focusCard(visible.indexOf(card) + 1); }
  else if (card && card.querySelector(".state") && ev.key === "r") { setMark(card, "revise"); card.querySelector(".note").focus(); ev.preventDefault(); }
  else if (card && card.querySelector(".state") && ev.key === "u") { setMark(card, null); }
});
counts();
})();
"""
