"""The report's pictures step: every picture drawn in memory as PNG bytes, on the CT with the masks' outlines, in
the radiological convention (anterior up, patient's right on the image's left), HU window −150…250:

    overview             frontal projection with each structure tinted (``overview.Overview``, fed by the measure
                         step while each mask is in memory)
    structures_axial     axial slices on which every structure is well shown, each outlined and named
    structures_coronal   the coronal slice through the most structures, the axial levels ticked at its sides
    <tumor>_<id>         an axial slice through each tumor component's centroid: outline, size, scale bar

One ``PictureStyle`` says how large a set is drawn: ``PAGE`` for report.html, ``LECTURE`` for slides
(pictures/lecture/). Both sets come from the same calls, so a slide shows exactly what the page shows. Kept
pictures an earlier report or Slicer drew (overview.png without a CT, 3d.png) are read back here too.
"""
from __future__ import annotations

import io as _io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from ..geometry import Grid, oriented, reorient_array
from ..outputs import SEG_DIR
from ..overview import WINDOW_HU, text_font
from .measure import Measurements, Scan, slice_number
from .units import fmt

PICTURES_DIR = "pictures"
THREE_D_PICTURE = f"{PICTURES_DIR}/3d.png"
# Per tumor type, largest first: at maximum sensitivity a run can hold dozens of specks; the page stays readable
# and the table still lists every one.
MAX_TUMOR_PICTURES = 12
# Field of view of a tumor picture: at least this wide, else 2.5 × the tumor's longest diameter, so the organ
# around a small lesion is visible and a large one is not cut off.
MIN_FOV_MM = 100.0
TUMOR_PICTURE_PX = 360
# Lecture pictures ('atlasseg report --lecture', pictures/lecture/): for a 1920 x 1080 slide. Wide pictures are
# 1920 px wide, tumor slices 1080 px square; text is LECTURE_TEXT x the page's (labels 11 -> 28 px, legend
# 13 -> 33 px, titles 16 -> 40 px): a projected label is then about 1/40 of the screen's height, readable from
# the back of a lecture hall, where the page's 11-px labels shrink to nothing.
LECTURE_DIR = f"{PICTURES_DIR}/lecture"
LECTURE_WIDTH_PX, LECTURE_HEIGHT_PX = 1920, 1080
LECTURE_TEXT = 2.5


@dataclass(frozen=True)
class PictureStyle:
    """How large one set of pictures is drawn. The defaults are the page's."""

    folder: str  # where the set's files go, relative to the output folder
    tumor_px: int = TUMOR_PICTURE_PX  # a tumor slice's longer side
    width_px: Optional[int] = None  # the structure pictures' width (None: from AXIAL_PANEL_PX and CORONAL_PX)
    height_px: Optional[int] = None  # the coronal picture's height (used with ``width_px``)
    text_scale: float = 1.0  # text, outlines and scale bars, relative to the page's


PAGE = PictureStyle(PICTURES_DIR)
LECTURE = PictureStyle(LECTURE_DIR, tumor_px=LECTURE_HEIGHT_PX, width_px=LECTURE_WIDTH_PX,
                       height_px=LECTURE_HEIGHT_PX, text_scale=LECTURE_TEXT)


def _png_bytes(image: Image.Image) -> bytes:
    buffer = _io.BytesIO()
    image.save(buffer, format="PNG")  # optimize=True: 10 % smaller, 5 × slower
    return buffer.getvalue()


def _scale_bar_cm(fov_mm: float) -> int:
    """The longest of 1, 2, 5, 10 cm that is at most a third of the picture's width."""
    for length in (10, 5, 2, 1):
        if length * 10.0 <= fov_mm / 3.0:
            return length
    return 1


def _text(draw: ImageDraw.ImageDraw, xy, text: str, font, fill="white", anchor="la") -> None:
    """Text with a dark outline: readable over bright bone and dark air alike."""
    draw.text(xy, text, fill=fill, font=font, anchor=anchor, stroke_width=2, stroke_fill="black")


def tumor_slice_picture(ct_kji: np.ndarray, grid: Grid, comp_offset_kji, comp_kji: np.ndarray, centroid_lps, *,
                        color, title: str, size_text: str, longest_mm: float = 0.0,
                        px: int = TUMOR_PICTURE_PX, text_scale: float = 1.0) -> tuple:
    """An axial CT slice through a tumor component's centroid, in the radiological convention (anterior up,
    patient's right on the image's left), HU window −150…250, with the component's outline in ``color``, a
    scale bar, orientation letters and ``title`` / ``size_text``.

    Args:
        ct_kji: the CT (k, j, i) on ``grid``.
        comp_offset_kji, comp_kji: the component as a boolean array within its bounding box and that box's corner.
        centroid_lps: the component's centroid (LPS mm); the slice nearest it is shown, or the slice where the
            component is largest when the centroid slice misses it (a C-shaped lesion).

    Returns:
        ``(PIL RGB image, S position of the slice in mm (RAS))``.

    ``px`` is the picture's longer side; ``text_scale`` enlarges the text, the outline and the scale bar.
    """
    lgrid = oriented(grid, "LAS")
    ct_las = reorient_array(ct_kji, grid, "LAS")  # (i: R→L, j: P→A, k: I→S), a view
    size_ijk = tuple(int(v) for v in np.asarray(comp_kji.shape)[::-1])
    sub = grid.sub(tuple(int(v) for v in np.asarray(comp_offset_kji)[::-1]), size_ijk)
    comp_las = reorient_array(comp_kji, sub, "LAS")
    first = np.rint(lgrid.physical_to_index(oriented(sub, "LAS").origin)).astype(int)
    centre = lgrid.physical_to_index(np.asarray(centroid_lps, float))
    kk = int(np.rint(centre[2])) - first[2]
    if not (0 <= kk < comp_las.shape[2] and comp_las[:, :, kk].any()):
        kk = int(np.argmax(comp_las.reshape(-1, comp_las.shape[2]).sum(axis=0)))
    k = first[2] + kk
    hu = np.clip(ct_las[:, :, k].astype(np.float32), *WINDOW_HU)
    grey = ((hu - WINDOW_HU[0]) / (WINDOW_HU[1] - WINDOW_HU[0]) * 255.0).astype(np.uint8)
    mask = np.zeros(grey.shape, np.uint8)
    i0, j0 = first[0], first[1]
    mask[i0:i0 + comp_las.shape[0], j0:j0 + comp_las.shape[1]] = comp_las[:, :, kk].astype(np.uint8) * 255
    # (i, j) → rows anterior first, columns patient's right first.
    grey = np.ascontiguousarray(grey.T[::-1])
    mask = np.ascontiguousarray(mask.T[::-1])
    rows, cols = grey.shape
    sx, sy = lgrid.spacing[0], lgrid.spacing[1]
    cx, cy = centre[0], (rows - 1) - centre[1]
    fov_mm = max(MIN_FOV_MM, 2.5 * float(longest_mm))
    width_mm = min(fov_mm, cols * sx)
    height_mm = min(fov_mm, rows * sy)

    def window(c, half_px, n):
        lo = min(max(c + 0.5 - half_px, 0.0), max(n - 2 * half_px, 0.0))
        return lo, min(lo + 2 * half_px, float(n))

    x0, x1 = window(cx, width_mm / sx / 2, cols)
    y0, y1 = window(cy, height_mm / sy / 2, rows)
    scale = px / max(width_mm, height_mm)
    out_size = (max(1, int(round(width_mm * scale))), max(1, int(round(height_mm * scale))))
    box = (x0, y0, x1, y1)
    picture = Image.fromarray(grey, "L").resize(out_size, Image.BILINEAR, box=box).convert("RGB")
    inside = np.asarray(Image.fromarray(mask, "L").resize(out_size, Image.NEAREST, box=box)) > 127
    edge = inside & ~ndimage.binary_erosion(inside, border_value=0)
    edge = ndimage.binary_dilation(edge, iterations=max(1, round(text_scale)))
    rgb = np.asarray(picture).copy()
    rgb[edge] = np.asarray(color, np.uint8)
    picture = Image.fromarray(rgb, "RGB")

    draw = ImageDraw.Draw(picture)
    t = text_scale
    font, small = text_font(round(16 * t)), text_font(round(13 * t))
    w, h = picture.size
    _text(draw, (6 * t, 5 * t), title, font)
    _text(draw, (6 * t, 25 * t), size_text, small, fill=tuple(int(v) for v in color))
    _text(draw, (w / 2, 6 * t), "A", font, fill="yellow", anchor="ma")
    _text(draw, (w / 2, h - 6 * t), "P", font, fill="yellow", anchor="md")
    _text(draw, (6 * t, h / 2), "R", font, fill="yellow", anchor="lm")
    _text(draw, (w - 6 * t, h / 2), "L", font, fill="yellow", anchor="rm")
    bar_cm = _scale_bar_cm(width_mm)
    bar_px = bar_cm * 10.0 * scale
    y = h - 14 * t
    draw.rectangle([w - 10 * t - bar_px, y - 2 * t, w - 10 * t, y + 2 * t], fill="white", outline="black")
    _text(draw, (w - 10 * t - bar_px / 2, y - 6 * t), f"{bar_cm} cm", small, anchor="md")
    s_mm = float(lgrid.index_to_physical([centre[0], centre[1], k])[2])  # LPS z = RAS S
    return picture, s_mm


# ------------------------------------------------------------------------------- structures on slices
# Structure pictures: axial levels chosen so that every structure is seen at ≥ half of its largest axial area in
# at least one of them (at most MAX_AXIAL_LEVELS), and one coronal slice through as many structures as possible.
MAX_AXIAL_LEVELS = 6
MIN_AXIAL_LEVELS = 3  # when fewer cover every structure, levels spread over the structures' extent are added
WELL_SHOWN = 0.5  # a structure is "well shown" on a slice holding this share of its largest area
AXIAL_PANEL_PX = 300
CORONAL_PX = (640, 560)  # the coronal slice fits this box (width, height), physical aspect ratio kept …
CORONAL_MIN_HEIGHT_PX, CORONAL_MAX_WIDTH_PX = 200, 1000  # … up to this wide when that leaves it under this tall
VIEW_MARGIN_MM = 20.0  # around the structures' common box
LEGEND_W = 200


def choose_axial_levels(layers: list, n_k: int, max_levels: int = MAX_AXIAL_LEVELS) -> list:
    """LAS axial slice indices (cranial first) on which every non-tumor structure is well shown: greedy set
    cover of "≥ WELL_SHOWN of its largest area" intervals, ties to the slice where the structures it shows are
    largest. A structure left uncovered after ``max_levels`` gets its largest slice added (it must be seen).
    Fewer than MIN_AXIAL_LEVELS are topped up with the slices farthest from those chosen within the structures'
    common extent, so a reader sees their upper and lower parts too."""
    organs = [l for l in layers if l.kind != "tumor"]
    if not organs:
        organs = list(layers)
    if not organs:
        return []
    rel = np.zeros((len(organs), n_k), np.float32)
    for row, layer in zip(rel, organs):
        k0, k1 = layer.k_range
        row[k0:k1 + 1] = layer.per_k / max(int(layer.per_k.max()), 1)
    good = rel >= WELL_SHOWN
    uncovered = np.ones(len(organs), bool)
    levels = []
    while uncovered.any() and len(levels) < max_levels:
        score = good[uncovered].sum(axis=0) + rel[uncovered].sum(axis=0) / (len(organs) + 1)
        k = int(np.argmax(score))
        levels.append(k)
        uncovered &= ~good[:, k]
    for n in np.flatnonzero(uncovered):
        if not (rel[n, levels] > 0).any():
            levels.append(int(np.argmax(rel[n])))
    present = np.flatnonzero((rel > 0).any(axis=0))
    lo, hi = int(present[0]), int(present[-1])
    candidates = np.arange(lo, hi + 1)
    while len(set(levels)) < MIN_AXIAL_LEVELS and len(set(levels)) < candidates.size:
        # Away from the extent's ends (a structure's tip is a poor picture): the middle 80 %.
        inner = candidates[(candidates >= lo + 0.1 * (hi - lo)) & (candidates <= hi - 0.1 * (hi - lo))]
        pool = inner if inner.size > len(set(levels)) else candidates
        gaps = np.min(np.abs(pool[:, None] - np.asarray(sorted(set(levels)))[None, :]), axis=1)
        levels.append(int(pool[int(np.argmax(gaps))]))
    return sorted(set(levels), reverse=True)


def choose_coronal_plane(layers: list, n_j: int) -> int:
    """The LAS coronal plane (j) through the most structures (each counted where its coronal area is ≥ 30 % of
    its largest), ties to where they are largest: a plane through the organs' centre that shows most of them."""
    organs = [l for l in layers if l.kind != "tumor"] or list(layers)
    rel = np.zeros((max(len(organs), 1), n_j), np.float32)
    for row, layer in zip(rel, organs):
        per_j = layer.crop.sum(axis=(0, 2))
        row[layer.lo[1]:layer.lo[1] + per_j.size] = per_j / max(int(per_j.max()), 1)
    score = (rel >= 0.3).sum(axis=0) + rel.sum(axis=0) / (len(organs) + 1)
    return int(np.argmax(score))


def _window_uint8(hu: np.ndarray) -> np.ndarray:
    hu = np.clip(hu.astype(np.float32), *WINDOW_HU)
    return ((hu - WINDOW_HU[0]) / (WINDOW_HU[1] - WINDOW_HU[0]) * 255.0).astype(np.uint8)


def _draw_outlines(grey: np.ndarray, masks: list, size: tuple, *, font=None, line: int = 1) -> Image.Image:
    """``grey`` (rows × cols uint8, display order) resized to ``size`` with each ``(name, colour, mask)``'s outline
    (mask in display order, ``line`` px either side of the edge) in its colour and its name beside it, names never
    drawn over each other (offsets and sizes follow the font's size)."""
    picture = Image.fromarray(grey, "L").resize(size, Image.BILINEAR).convert("RGB")
    rgb = np.asarray(picture).copy()
    labels = []
    for name, color, mask in masks:
        inside = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255, "L").resize(size, Image.NEAREST)) > 127
        if not inside.any():
            continue
        edge = inside & ~ndimage.binary_erosion(inside, border_value=0)
        edge = ndimage.binary_dilation(edge, iterations=line)
        rgb[edge] = np.asarray(color, np.uint8)
        rows, cols = np.nonzero(inside)
        # A small structure's name goes below it, not over the outline a reader has to check.
        em = getattr(font, "size", 11) / 11.0  # 1 at the page's label size
        y = float(rows.mean()) if np.ptp(rows) >= 30 * em else float(rows.max()) + 10.0 * em
        labels.append((name, color, float(cols.mean()), y))
    picture = Image.fromarray(rgb, "RGB")
    if font is not None:
        draw = ImageDraw.Draw(picture)
        taken = []
        step = getattr(font, "size", 11) + 2  # a line of text: 13 px at the page's label size
        for name, color, x, y in labels:
            w = draw.textlength(name, font=font) + 4
            for dy in (0, step, -step, 2 * step, -2 * step):
                box = (x - w / 2, y + dy - (step + 1) / 2, x + w / 2, y + dy + (step + 1) / 2)
                if not any(box[0] < t[2] and t[0] < box[2] and box[1] < t[3] and t[1] < box[3] for t in taken):
                    taken.append(box)
                    _text(draw, (x, y + dy), name, font, fill=tuple(color), anchor="mm")
                    break
    return picture


def _legend(draw: ImageDraw.ImageDraw, x: int, y: int, layers: list, font) -> None:
    em = getattr(font, "size", 13) / 13.0  # swatch and line height follow the font
    for layer in layers:
        draw.rectangle([x, y + 2 * em, x + 14 * em, y + 14 * em], fill=layer.color)
        draw.text((x + 20 * em, y), layer.name, fill="white", font=font)
        y += 20 * em


def _view_box(layers: list, lgrid: Grid) -> tuple:
    """LAS index ranges ((i0, i1), (j0, j1), (k0, k1)) of every structure's box grown by VIEW_MARGIN_MM."""
    lo = np.min([l.lo for l in layers], axis=0)
    hi = np.max([np.asarray(l.lo) + l.crop.shape for l in layers], axis=0)
    grow = np.ceil(VIEW_MARGIN_MM / np.asarray(lgrid.spacing)).astype(int)
    lo = np.maximum(lo - grow, 0)
    hi = np.minimum(hi + grow, lgrid.size)
    return tuple((int(a), int(b)) for a, b in zip(lo, hi))


def axial_structures_picture(ct_las: np.ndarray, lgrid: Grid, layers: list, levels: list, *,
                             level_text=None, title: str = "", width: Optional[int] = None,
                             text_scale: float = 1.0) -> Image.Image:
    """Axial CT slices (LAS indices ``levels``, cranial first) side by side, radiological convention (anterior
    up, patient's right on the left), every structure's outline in its colour and named, a legend and each
    slice's level (``level_text(k)``, e.g. "image 12 of 30, S 40.0 mm"). ``width``: the picture's width in px
    (panels sized to fill it; default: AXIAL_PANEL_PX panels); ``text_scale`` enlarges text and outlines."""
    (i0, i1), (j0, j1), _ = _view_box(layers, lgrid)
    sx, sy = lgrid.spacing[0], lgrid.spacing[1]
    width_mm, height_mm = (i1 - i0) * sx, (j1 - j0) * sy
    cols = min(len(levels), 3)
    rows = math.ceil(len(levels) / cols)
    t = text_scale
    gap, top, legend_w = 6, round(30 * t), round(LEGEND_W * t)
    scale = AXIAL_PANEL_PX / max(width_mm, height_mm)
    if width is not None:  # panels as wide as the width leaves after the legend and the gaps
        scale = ((width - legend_w) / cols - gap) / width_mm
    size = (max(1, int(round(width_mm * scale))), max(1, int(round(height_mm * scale))))
    canvas = Image.new("RGB", (width or cols * (size[0] + gap) + legend_w, top + rows * (size[1] + gap)), "black")
    draw = ImageDraw.Draw(canvas)
    font, small, tiny = text_font(round(16 * t)), text_font(round(13 * t)), text_font(round(11 * t))
    draw.text((6 * t, 6 * t), title, fill="white", font=font)
    for n, k in enumerate(levels):
        grey = np.ascontiguousarray(_window_uint8(ct_las[i0:i1, j0:j1, k]).T[::-1])
        masks = []
        for layer in layers:
            m = layer.axial(k, ((i0, i1), (j0, j1)))
            if m is not None:
                masks.append((layer.name, layer.color, np.ascontiguousarray(m.T[::-1])))
        panel = _draw_outlines(grey, masks, size, font=tiny, line=max(1, round(t)))
        pd = ImageDraw.Draw(panel)
        label = level_text(k) if level_text else f"slice {k}"
        fits = small
        room = size[0] - 10 * t
        if pd.textlength(label, font=small) > room:  # a long level text in a narrow panel: smaller, not cut
            fits = text_font(max(9, int(getattr(small, "size", 13) * room / pd.textlength(label, font=small))))
        _text(pd, (5 * t, 4 * t), label, fits)
        _text(pd, (size[0] / 2, size[1] - 4 * t), "P", small, fill="yellow", anchor="md")
        _text(pd, (5 * t, size[1] / 2), "R", small, fill="yellow", anchor="lm")
        _text(pd, (size[0] - 5 * t, size[1] / 2), "L", small, fill="yellow", anchor="rm")
        canvas.paste(panel, ((n % cols) * (size[0] + gap), top + (n // cols) * (size[1] + gap)))
    _legend(draw, cols * (size[0] + gap) + 6 * t, top + 4 * t, layers, small)
    return canvas


def coronal_structures_picture(ct_las: np.ndarray, lgrid: Grid, layers: list, j: int, *,
                               levels=(), title: str = "", width: Optional[int] = None, height: Optional[int] = None,
                               text_scale: float = 1.0) -> Image.Image:
    """The coronal CT slice at LAS ``j`` (head up, patient's right on the left, physical aspect ratio) with
    every structure's outline and name, a legend of the structures it cuts, a scale bar and the axial
    ``levels`` marked as ticks at the sides. ``width`` x ``height``: the picture's size in px (the slice as large
    as fits beside the legend); ``text_scale`` enlarges text and outlines."""
    (i0, i1), _, (k0, k1) = _view_box(layers, lgrid)
    sx, sz = lgrid.spacing[0], lgrid.spacing[2]
    width_mm, height_mm = (i1 - i0) * sx, (k1 - k0) * sz
    t = text_scale
    top, legend_w = round(30 * t), round(LEGEND_W * t)
    scale = min(CORONAL_PX[0] / width_mm, CORONAL_PX[1] / height_mm)
    if width is not None and height is not None:
        scale = min((width - legend_w) / width_mm, (height - top) / height_mm)
    elif height_mm * scale < CORONAL_MIN_HEIGHT_PX:  # a short scan: wider rather than a thin strip
        scale = min(CORONAL_MIN_HEIGHT_PX / height_mm, CORONAL_MAX_WIDTH_PX / width_mm)
    size = (max(1, int(round(width_mm * scale))), max(1, int(round(height_mm * scale))))
    grey = np.ascontiguousarray(_window_uint8(ct_las[i0:i1, j, k0:k1]).T[::-1])
    masks, shown = [], []
    for layer in layers:
        m = layer.coronal(j, ((i0, i1), (k0, k1)))
        if m is not None:
            masks.append((layer.name, layer.color, np.ascontiguousarray(m.T[::-1])))
            shown.append(layer)
    small, tiny = text_font(round(13 * t)), text_font(round(11 * t))
    panel = _draw_outlines(grey, masks, size, font=tiny, line=max(1, round(t)))
    pd = ImageDraw.Draw(panel)
    _text(pd, (size[0] / 2, 4 * t), "S", small, fill="yellow", anchor="ma")
    _text(pd, (16 * t, 4 * t), "R", small, fill="yellow", anchor="la")  # beside the level ticks, not on them
    _text(pd, (size[0] - 16 * t, 4 * t), "L", small, fill="yellow", anchor="ra")
    for k in levels:  # the axial pictures' levels
        y = (k1 - 1 - k + 0.5) * sz * scale
        if 0 <= y < size[1]:
            pd.line([(0, y), (10 * t, y)], fill="yellow", width=round(2 * t))
            pd.line([(size[0] - 1 - 10 * t, y), (size[0] - 1, y)], fill="yellow", width=round(2 * t))
    bar_cm = _scale_bar_cm(width_mm)
    bar_px = bar_cm * 10.0 * scale
    yb = size[1] - 12 * t
    pd.rectangle([size[0] - 14 * t - bar_px, yb - 2 * t, size[0] - 14 * t, yb + 2 * t], fill="white", outline="black")
    _text(pd, (size[0] - 14 * t - bar_px / 2, yb - 5 * t), f"{bar_cm} cm", tiny, anchor="md")
    canvas = Image.new("RGB", (width or size[0] + legend_w,
                               height or max(top + size[1], round(top + 8 * t + 20 * t * len(shown)))), "black")
    canvas.paste(panel, (0, top))
    draw = ImageDraw.Draw(canvas)
    draw.text((6 * t, 6 * t), title, fill="white", font=text_font(round(16 * t)))
    _legend(draw, size[0] + 6 * t, top + 4 * t, shown, small)
    return canvas




# ---------------------------------------------------------------------------------------- the step
@dataclass
class Pictures:
    """One report's pictures in memory: nothing on disk changes until every one of them exists."""

    pngs: dict  # PictureStyle -> {key -> PNG bytes}; keys "overview", "3d", "structures_axial", "<tumor>_<id>", …
    structures: Optional[dict] = None  # report.json's pictures.structures: files, axial levels, coronal plane
    tumors: dict = field(default_factory=dict)  # report.json's pictures.tumors: key -> file, structure, slice

    @property
    def page(self) -> dict:
        return self.pngs[PAGE]

    @property
    def lecture(self) -> dict:
        return self.pngs.get(LECTURE, {})


def draw_pictures(report: dict, m: Measurements, scan: Scan, *, overview=None, title: str, lecture: bool = False,
                  reporter, notes: list, timings: dict) -> Pictures:
    """The page's pictures (and with ``lecture`` the same ones in the ``LECTURE`` style) of what ``m`` measured
    on ``scan``; none without a CT. ``overview``: the ``overview.Overview`` the measure step fed."""
    t = time.perf_counter()
    drawn = Pictures({style: {} for style in ((PAGE, LECTURE) if lecture else (PAGE,))})
    if overview is not None:
        reporter.update("pictures", 0.0, "overview")
        drawn.page["overview"] = _png_bytes(overview.render(title))
    if scan.ct_las is not None and m.layers:
        reporter.update("pictures", 0.05, "structures on slices")
        drawn.structures = _draw_structures(report, m, scan, title, drawn)
    if scan.ct_kji is not None:
        _draw_tumors(report, m, scan, drawn, reporter=reporter, notes=notes)
    timings["pictures"] = time.perf_counter() - t
    return drawn


def _draw_structures(report: dict, m: Measurements, scan: Scan, title: str, drawn: Pictures) -> dict:
    """The axial and coronal structure pictures in every style of ``drawn``; returns report.json's
    pictures.structures (the files, the axial levels and the structures each one shows, the coronal plane)."""
    lgrid, dicom = scan.lgrid, scan.dicom
    ordered = [m.layers[e["name"]] for e in report.get("structures", []) if e["name"] in m.layers]
    levels = choose_axial_levels(ordered, lgrid.size[2])

    def level_text(k):
        point = lgrid.index_to_physical([lgrid.size[0] / 2, lgrid.size[1] / 2, k])
        return f"{slice_number(point, lgrid, dicom)['text']}, S {point[2]:.0f} mm"

    j = choose_coronal_plane(ordered, lgrid.size[1])
    a_mm = float(-lgrid.index_to_physical([0, j, 0])[1])  # LPS y → RAS A
    for style, pngs in drawn.pngs.items():
        pngs["structures_axial"] = _png_bytes(axial_structures_picture(
            scan.ct_las, lgrid, ordered, levels, level_text=level_text, title=f"axial slices: {title}",
            width=style.width_px, text_scale=style.text_scale))
        pngs["structures_coronal"] = _png_bytes(coronal_structures_picture(
            scan.ct_las, lgrid, ordered, j, levels=levels, title=f"coronal slice at A {a_mm:.0f} mm: {title}",
            width=style.width_px, height=style.height_px, text_scale=style.text_scale))
    whole = ((0, lgrid.size[0]), (0, lgrid.size[1]))
    return {
        "axial": f"{PICTURES_DIR}/structures_axial.png", "coronal": f"{PICTURES_DIR}/structures_coronal.png",
        "axial_levels": [{"slice": slice_number(lgrid.index_to_physical([0, 0, k]), lgrid, dicom),
                          "s_mm": round(float(lgrid.index_to_physical([0, 0, k])[2]), 1),
                          "structures": [l.name for l in ordered if l.axial(k, whole) is not None]} for k in levels],
        "coronal_a_mm": round(a_mm, 1),
        "coronal_structures": [l.name for l in ordered if l.crop.shape and l.lo[1] <= j < l.lo[1] + l.crop.shape[1]
                               and l.crop[:, j - l.lo[1], :].any()],
    }


def _draw_tumors(report: dict, m: Measurements, scan: Scan, drawn: Pictures, *, reporter, notes: list) -> None:
    """A slice picture per tumor component still in its mask (the MAX_TUMOR_PICTURES largest of each type; the
    rows come largest first) in every style of ``drawn``; each row gets its picture's file."""
    colors = {e["name"]: tuple(e.get("color") or (255, 255, 0)) for e in report.get("structures", [])}
    pictured = {}
    for r in m.tumor_rows:
        key = (r["structure"], r["component"])
        if key not in m.components or r["status"] == "removed":
            continue
        if pictured.get(r["structure"], 0) >= MAX_TUMOR_PICTURES:
            continue
        pictured[r["structure"]] = pictured.get(r["structure"], 0) + 1
        reporter.update("pictures", len(drawn.page) / max(1, len(m.components) + 1),
                        f"{r['structure']} #{r['component']}")
        offset, comp = m.components[key]
        size = (f"{fmt(r['longest_axial_diameter_cm'], 1)} x {fmt(r['perpendicular_diameter_cm'], 1)} cm, "
                f"{fmt(r['volume_ml'], 2)} ml")
        pkey = f"{r['structure']}_{r['component']}"
        for style, pngs in drawn.pngs.items():
            img, s_mm = tumor_slice_picture(scan.ct_kji, scan.grid, offset, comp, r["centroid_lps_mm"],
                                            color=colors.get(r["structure"], (255, 255, 0)),
                                            title=f"{r['structure']} #{r['component']}", size_text=size,
                                            longest_mm=(r["longest_axial_diameter_cm"] or 0.0) * 10.0,
                                            px=style.tumor_px, text_scale=style.text_scale)
            pngs[pkey] = _png_bytes(img)  # s_mm: the same slice in every style
        r["picture"] = f"{PICTURES_DIR}/{pkey}.png"
        lps = r["centroid_lps_mm"]
        drawn.tumors[pkey] = {"file": r["picture"], "structure": r["structure"], "component": r["component"],
                              "slice_s_mm": round(s_mm, 1),
                              "slice": slice_number([lps[0], lps[1], s_mm], scan.lgrid, scan.dicom)}
    for name, count in pictured.items():
        total = sum(1 for r in m.tumor_rows if r["structure"] == name and r["status"] != "removed")
        if total > count:
            notes.append(f"{name}: pictures of the {count} largest of {total} components (all are in the table)")


def add_kept_pictures(outdir: Path, drawn: Pictures, *, redrawn: bool, notes: list) -> None:
    """Pictures the page shows that this report did not draw: the earlier overview.png when there was no CT to
    redraw it (``redrawn``: pictures were asked for, so a note says so) and Slicer's pictures/3d.png while it is
    not older than the masks."""
    old_overview = outdir / PICTURES_DIR / "overview.png"
    if "overview" not in drawn.page and old_overview.is_file():
        drawn.page["overview"] = old_overview.read_bytes()
        if redrawn:
            notes.append("the overview picture is from an earlier report (no CT to redraw it)")
    three_d = outdir / THREE_D_PICTURE
    if three_d.is_file():
        newest_mask = max((p.stat().st_mtime for p in (outdir / SEG_DIR).glob("*.nii.gz")), default=0.0)
        if three_d.stat().st_mtime >= newest_mask:
            drawn.page["3d"] = three_d.read_bytes()
        else:
            notes.append("pictures/3d.png is older than the masks and was left out; redraw it with "
                         "'python AtlasSeg/AtlasSegModule/AtlasSegRender.py OUTDIR'")
