"""The segmentation pipeline: CT in, masks on the input grid out.

Steps (each inverted exactly by one physical-space resampling onto the input grid at the end):
read → orient (axis flips/permutations to the model's orientation) → resample to the model spacing → HU window
→ crop to foreground → sliding-window inference → per structure: activation/threshold on the model grid,
nearest-neighbour resampling onto the input grid *only inside the structure's box*, post-processing, write.

Memory: the network output (C × model-grid voxels, float32) is the only all-class array; on the input grid
one structure at a time is held (uint8), plus the uint8 combined label map.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import cc3d
import numpy as np
import psutil
import SimpleITK as sitk
import torch
from scipy import ndimage

from . import backends
from .card import ModelCard
from .errors import InputError
from .geometry import Grid, covering_box, oriented, resample, respaced
from .backends import choose, make_runner, nncf_version, openvino_version
from .inference import count_windows, foreground_windows, infer, pick_device
from .io import SourceInfo, StagingDir, check_ct_values, read_image
from .networks import LoadedModel, load_model
from .outputs import OutputWriter
from .plausibility import body_profile, check_coverage, check_model_fit, check_structures
from .lesions import merge_lesion_checks
from .masks import bounding_slices
from .postprocess import (dilated_gate, largest_component, largest_per_side, quantize, tumor_mask)
from .progress import Reporter
from .windowtimes import record_window_time

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentOptions:
    """How to run a model. ``thresholds`` overrides tumor thresholds by structure name (p kept if ≥ value)."""

    device: str = "auto"
    fast: bool = False
    backend: str = "auto"  # auto | torch | openvino (see backends.py)
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 | int8
    quality: Optional[str] = None  # None (the card's settings) | auto | reference | balanced | fast: see QUALITIES
    roi_cascade: bool = True  # with ``structures``: a coarse pass finds their box, the full model runs only there
    structures: Optional[tuple] = None
    postprocess: bool = True
    thresholds: dict = field(default_factory=dict)
    force: bool = False
    overwrite: bool = False
    series_uid: Optional[str] = None
    overview: bool = True


@dataclass
class Prepared:
    """The network input and where it lies."""

    array: np.ndarray  # (I, J, K) float32, windowed and cropped
    grid: Grid  # geometry of ``array`` (the cropped model grid)
    model_grid: Grid  # the uncropped model grid
    crop_start: tuple


QUALITIES = {
    "reference": "the published settings: full resolution, the card's overlap (SuPreM 0.75), fp32",
    "balanced": "full resolution, overlap 0.5, INT8 on the CPU where it passes its check on this CT",
    "fast": "the card's fast spacing (SuPreM 3 mm), overlap 0.5, INT8 on the CPU where it passes its check",
}
"""``--quality`` presets. ``precision`` other than auto, and ``backend``, still apply on top of them."""
AUTO_QUALITY = "auto"
"""``quality="auto"`` (the CLI's default): ``CPU_QUALITY`` on a CPU, the card's settings on a GPU
(``default_quality``)."""
CPU_QUALITY = "balanced"
"""The preset ``auto`` picks on a CPU without a GPU (README "Which preset on a CPU": a fifth of the reference
windows, each checked INT8 or bf16, masks ≥ 0.98 Dice of reference's with the trained demo model)."""
PRESET_OVERLAP = 0.5
"""Overlap of ``balanced`` and ``fast`` (at most the card's): at 0.75 every voxel is covered by up to 64 windows
of 96³; at 0.5 by up to 8, with MONAI's gaussian blending the centres weigh most either way."""


@dataclass(frozen=True)
class Preset:
    """What a ``quality`` resolves to for a card: spacing (fast), overlap and the precision asked of the backend
    (``int8`` means INT8 where available and checked, see backends.py)."""

    quality: Optional[str]
    fast: bool
    overlap: float
    precision: str


def default_quality(quality: Optional[str], device: torch.device, *, fast: bool = False) -> Optional[str]:
    """What ``quality`` means on ``device``: ``"auto"`` is ``CPU_QUALITY`` on the CPU and the card's settings
    (None) on a GPU, where the published settings take minutes; with ``fast`` (``--fast``) ``auto`` keeps the
    card's fast spacing and overlap as before. Any other value is returned as it is."""
    if quality != AUTO_QUALITY:
        return quality
    return None if fast or device.type != "cpu" else CPU_QUALITY


def resolve_quality(quality: Optional[str], card: ModelCard, *, fast: bool = False, precision: str = "auto") -> Preset:
    """The settings a ``--quality`` stands for with ``card``; None keeps ``fast``/``precision`` and the card's
    overlap. Raises InputError for an unknown quality or ``--fast`` with ``reference``/``balanced``."""
    overlap = float(card.inference["overlap"])
    if quality is None:
        return Preset(None, fast, overlap, precision)
    if quality not in QUALITIES:
        raise InputError(f"--quality must be one of {', '.join(QUALITIES)}, not '{quality}'")
    if fast and quality != "fast":
        raise InputError(f"--fast contradicts --quality {quality}: use --quality fast (or leave out --fast)")
    if quality == "reference":
        return Preset(quality, False, overlap, "fp32" if precision == "auto" else precision)
    return Preset(quality, quality == "fast", min(overlap, PRESET_OVERLAP),
                  "int8" if precision == "auto" else precision)


CASCADE_MARGIN_MM = 6.0
"""Margin around the coarse pass's box of the selected structures (coarse masks at 3 mm can be a voxel or two
short). The network's context beyond the box comes from ``inference.cover_crop`` (a quarter window each side);
15 mm here on top of that ran 17 % more windows for liver + liver_tumor without changing a mask."""


def model_grid(image: sitk.Image, card: ModelCard, *, fast: bool = False) -> Grid:
    """The uncropped grid the network sees: the card's orientation and (fast) spacing."""
    pre = card.preprocessing
    spacing = pre["fast_spacing_mm"] if fast and pre.get("fast_spacing_mm") else pre["spacing_mm"]
    return respaced(oriented(Grid.of(image), pre["orientation"]), spacing)


BODY_OPEN_MM = 5.0
"""``body_crop``: in-plane opening radius that removes the table top, blankets and the gantry's thin shells (a
few mm thick) from the foreground before its box is taken; bodies and arms are centimetres across."""
BODY_MIN_CM2 = 4.0
"""``body_crop``: components of the opened foreground projection smaller than this are dropped too."""


def body_box_2d(fg_ji: np.ndarray, spacing_ji) -> Optional[tuple]:
    """Box ((j0, j1), (i0, i1)) of the body in a 2-D foreground projection (any slice above the HU window's lower
    end): opened by a disc of ``BODY_OPEN_MM`` (the table and gantry shells are thinner) and components under
    ``BODY_MIN_CM2`` dropped; None when nothing is left (then the plain foreground box is used)."""
    r = [max(1, int(round(BODY_OPEN_MM / s))) for s in spacing_ji]
    jj, ii = np.ogrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1]
    disc = (jj / r[0]) ** 2 + (ii / r[1]) ** 2 <= 1.0
    opened = ndimage.binary_opening(fg_ji, structure=disc)
    labels, n = ndimage.label(opened)
    if not n:
        return None
    sizes = np.bincount(labels.ravel())[1:] * float(np.prod(spacing_ji)) / 100.0
    keep = np.isin(labels, np.nonzero(sizes >= BODY_MIN_CM2)[0] + 1)
    box = bounding_slices(keep)
    if box is None:
        return None
    return tuple((max(0, s.start - m), min(n, s.stop + m)) for s, m, n in zip(box, r, fg_ji.shape))


def prepare(image: sitk.Image, card: ModelCard, *, fast: bool = False, body_crop: bool = False) -> Prepared:
    """Orient, resample, window and crop ``image`` as the card says. ``body_crop`` (the ``balanced`` and
    ``fast`` presets): the in-plane crop is the body's box (``body_box_2d``), without the table, gantry and
    air around them that the published crop (every voxel above the window's lower end) keeps."""
    pre = card.preprocessing
    if fast and not pre.get("fast_spacing_mm"):
        log.warning("model %s has no fast mode (no fast_spacing_mm in its card); running at full resolution", card.id)
    grid = model_grid(image, card, fast=fast)
    # Nearest-neighbour extrapolation at the rim mirrors MONAI's border padding for the last half voxel.
    resampled = resample(image, grid, interpolator=sitk.sitkLinear, pixel_type=sitk.sitkFloat32, extrapolate=True)
    arr = sitk.GetArrayFromImage(resampled)  # (k, j, i)
    del resampled
    lo, hi = pre["hu_window"]
    a, b = pre["scale"]
    np.clip(arr, lo, hi, out=arr)
    arr -= lo
    arr *= (b - a) / (hi - lo)
    arr += a
    start = (0, 0, 0)
    if pre["crop_foreground"]:
        fg = arr > 0
        if not fg.any():
            raise InputError(f"no voxel is above {lo} HU: the image holds no body to segment")
        box = [(s.start, s.stop) for s in bounding_slices(fg)]
        if body_crop:
            body = body_box_2d(fg.any(axis=0), (grid.spacing[1], grid.spacing[0]))
            if body is not None:  # within the plain box (the opening's margin may reach past it)
                box[1], box[2] = [(max(p[0], q[0]), min(p[1], q[1])) for p, q in zip(body, box[1:])]
        del fg
        k, j, i = box
        arr = arr[k[0]:k[1], j[0]:j[1], i[0]:i[1]]
        start = (i[0], j[0], k[0])
        size = (i[1] - i[0], j[1] - j[0], k[1] - k[0])
    else:
        size = grid.size
    net_input = np.ascontiguousarray(arr.transpose(2, 1, 0))
    return Prepared(net_input, grid.sub(start, size), grid, start)


def estimate_memory_bytes(image: sitk.Image, card: ModelCard, *, fast: bool = False) -> int:
    """Peak memory a run needs, from the grid sizes (network output C × model voxels dominates)."""
    g = model_grid(image, card, fast=fast)
    channels = max(c.channel for c in card.classes) + 1
    n_in = int(np.prod(image.GetSize()))
    # float32 input + output + MONAI's count/importance buffers on the model grid; uint8 masks on the input grid.
    return 4 * g.n_voxels * (channels + 4) + n_in * (image.GetSizeOfPixelComponent() + 4) + 600 * 2**20


class Segmenter:
    """Runs one loaded model on images; reusable across cases (batch runs load the weights once)."""

    def __init__(self, model: LoadedModel, options: SegmentOptions = SegmentOptions()):
        self.model = model
        self.options = options
        self.card = model.card
        if options.structures:
            self.card = _with_gates(self.card, options.structures)
        self.device = pick_device(options.device)
        self.quality = default_quality(options.quality, self.device, fast=options.fast)
        self.preset = resolve_quality(self.quality, self.card, fast=options.fast, precision=options.precision)
        self.inference = dict(self.card.inference, overlap=self.preset.overlap)
        precision = self.preset.precision
        if precision == "int8" and options.precision == "auto" and not _int8_available(options.backend, self.device):
            precision = "auto"  # a preset's INT8 where it can run: fp16 on a GPU, fp32/bf16 without NNCF
        self._precision = precision
        self._body_crop = self.preset.quality in ("balanced", "fast")
        choose(options.backend, precision, self.device)  # refuse what cannot run before reading anything
        self.runner = None  # made in run(), when the number of windows is known (see backends.make_runner)

    def run(self, image: sitk.Image, source: SourceInfo, outdir, *, reporter: Optional[Reporter] = None,
            extra_files: Optional[dict] = None) -> dict:
        """Segment ``image`` into ``outdir`` (created atomically). Returns the report dict."""
        reporter = reporter or Reporter()
        opts = self.options
        card = self.card
        timings = {}
        t0 = time.perf_counter()
        staging = StagingDir(outdir, overwrite=opts.overwrite)
        reporter.update("read", 1.0, "checking the image")
        kji = sitk.GetArrayViewFromImage(image)
        check_ct_values(kji, source.path, force=opts.force)
        # Plausibility (warnings, never changes): is this the model for this image, is there an abdomen in it.
        profile = body_profile(image)
        warnings = check_model_fit(card.id, image) + check_coverage(profile)
        need = estimate_memory_bytes(image, card, fast=self.preset.fast)
        avail = psutil.virtual_memory().available
        if need > avail:
            raise InputError(f"this volume (size {image.GetSize()}) needs about {need / 2**30:.1f} GB of memory, "
                             f"{avail / 2**30:.1f} GB are available; close other programs, use --fast, or crop the "
                             "volume to the abdomen")
        timings["check"] = time.perf_counter() - t0

        t = time.perf_counter()
        reporter.update("preprocess", 0.0, "resampling to the model grid")
        prep = prepare(image, card, fast=self.preset.fast, body_crop=self._body_crop)
        timings["preprocess"] = time.perf_counter() - t
        reporter.update("preprocess", 1.0, f"model grid {prep.grid.size}")

        t = time.perf_counter()
        if self.runner is None or self.runner.provisional:
            self.runner = self._make_runner(prep, source, reporter)
        t_net = time.perf_counter()  # the network's time, without a first conversion or quantization
        box, self._windows = None, {}
        if (opts.structures and opts.roi_cascade and not self.preset.fast
                and card.preprocessing.get("fast_spacing_mm")):
            box = self._coarse_box(image, prep, reporter)
        stats = {}
        logits = infer(self.runner, prep.array, self.inference, device=self.device, reporter=reporter, box=box,
                       stats=stats)
        self._windows.update(stats)
        if getattr(self.runner, "backend", None) in ("torch", "openvino"):  # this machine's time per window
            record_window_time(card.id, self.runner.backend, self.runner.precision, time.perf_counter() - t_net,
                               stats.get("windows_run", 0) + self._windows.get("coarse_windows", 0))
        prep.array = None  # the network input is no longer needed; free it before the per-structure stage
        timings["inference"] = time.perf_counter() - t

        with staging as tmpdir:
            writer = OutputWriter(tmpdir, image, source, card, reporter=reporter, overview=opts.overview)
            t = time.perf_counter()
            try:  # masks are written by the writer's threads while the next structure is computed
                masks = self._emit_structures(logits, prep, image, writer, reporter)
                del logits
                warnings += self._flag_structures(writer.structures, masks, image, kji, profile)
                del masks
                writer.flush()
            except BaseException:
                writer.close()
                raise
            timings["invert_postprocess_write"] = time.perf_counter() - t
            for name, src in (extra_files or {}).items():
                (Path(tmpdir) / name).parent.mkdir(parents=True, exist_ok=True)
                sitk.WriteImage(src, str(Path(tmpdir) / name), useCompression=True)
            timings["total"] = time.perf_counter() - t0
            report = writer.finish(settings=self._settings(prep), timings=timings, warnings=warnings,
                                   model_info=self.runner.info())
            reporter.update("write", 1.0, "done")
            staging.commit()
        return report

    def _make_runner(self, prep: Prepared, source: SourceInfo, reporter: Reporter):
        """The backend for this run (backends.make_runner). INT8 is quantized on this CT's foreground windows
        when no quantization is cached, and checked on others; an INT8 a preset only prefers is skipped, as
        ``--backend auto`` skips a first conversion, for runs under ``AUTO_MIN_WINDOWS`` windows."""
        inf = self.inference
        roi, overlap = inf["roi_size"], float(inf["overlap"])
        windows = count_windows(prep.array.shape, roi, overlap)
        precision, kwargs = self._precision, {}
        if (precision == "int8" and self.options.precision == "auto" and self.options.backend == "auto"
                and windows < backends.AUTO_MIN_WINDOWS and not backends.is_quantized(self.model.net, roi)):
            precision = "auto"
        if precision == "int8":
            reporter.update("inference", 0.0, "INT8: checking it against fp32 on this CT")
            n = max(backends.CALIBRATION_WINDOWS, backends.INT8_CHECK_WINDOWS)
            calibration, check = foreground_windows(prep.array, roi, overlap, n)
            names = {c.channel: c.name for c in self.card.classes}
            # A preset's INT8 falls back to what auto picks (bf16 on BF16 CPUs); an explicit --precision int8 to fp32.
            fallback = "fp32" if self.options.precision == "int8" else choose("auto", "auto", self.device).precision
            kwargs = dict(calibration=calibration[:backends.CALIBRATION_WINDOWS], fallback=fallback,
                          calibration_source=f"{len(calibration[:backends.CALIBRATION_WINDOWS])} foreground windows "
                          f"of {source.path}",
                          check={"windows": check[:backends.INT8_CHECK_WINDOWS], "activation": inf["activation"],
                                 "threshold": float(inf["threshold"]), "names": names})
        return make_runner(self.model.net, roi, self.device, self.options.backend, precision, windows=windows,
                           **kwargs)

    def _coarse_box(self, image: sitk.Image, prep: Prepared, reporter: Reporter):
        """Region-of-interest cascade (as TotalSegmentator's roi_subset): run the model at its fast spacing, take
        the box of the selected structures (with the organs their tumors are gated to) plus ``CASCADE_MARGIN_MM``
        and return it in ``prep.array`` indices, or None (full run) when the coarse pass finds none of them."""
        card = self.card
        coarse = prepare(image, card, fast=True, body_crop=self._body_crop)
        stats = {}
        reporter.update("inference", 0.0, "coarse pass for the region of interest")
        logits = infer(self.runner, coarse.array, self.inference, device=self.device, reporter=reporter, stats=stats)
        channels = sorted({c.channel for c in card.classes})
        if card.inference["activation"] == "softmax":
            found = np.isin(torch.argmax(logits, dim=0).numpy(), channels)
        else:
            found = (logits[channels] >= 0.0).any(dim=0).numpy()  # sigmoid(0) = 0.5
        del logits
        self._windows = {"coarse_windows": stats["windows_run"]}
        if not found.any():
            log.info("the coarse pass found none of %s: running the full model everywhere",
                     ", ".join(c.name for c in card.classes))
            self._windows["roi_box_ijk"] = None
            return None
        found_box = bounding_slices(found)
        lo, hi = [s.start for s in found_box], [s.stop for s in found_box]
        margin = int(np.ceil(CASCADE_MARGIN_MM / min(prep.grid.spacing)))
        cover = covering_box(prep.grid, coarse.grid, lo, hi, margin=margin)
        if cover is None:
            return None
        start, size = cover
        box = [(a, a + n) for a, n in zip(start, size)]
        self._windows["roi_box_ijk"] = box
        return box

    def _settings(self, prep: Prepared) -> dict:
        o = self.options
        return {
            "windows": dict(getattr(self, "_windows", {})),
            "device": self.device.type, "backend": self.runner.backend, "precision": self.runner.precision,
            "quality": self.quality, "quality_asked": o.quality, "fast": self.preset.fast, "postprocess": o.postprocess,
            "structures": list(o.structures) if o.structures else None,
            "model_grid": prep.model_grid.as_dict(), "crop_start_ijk": list(prep.crop_start),
            "crop_size_ijk": list(prep.grid.size),
            "preprocessing": self.card.preprocessing, "inference": self.inference,
            "postprocessing": self.card.postprocessing,
            "torch": torch.__version__,
        }

    def _flag_structures(self, entries: list, masks: dict, image: sitk.Image, kji, profile) -> list:
        """Plausibility flags of the written structures: set as each entry's "flags", returned as warnings."""
        gates = {c.name: list(c.gate) for c in self.card.classes if c.is_tumor and c.gate}
        lesions = {}
        flags = check_structures(entries, masks, Grid.of(image), kji, gates=gates, midline_x_mm=profile.midline_x_mm,
                                 lesions=lesions)
        warnings = []
        for entry in entries:
            entry["flags"] = flags.get(entry["name"], [])
            if "tumor" in entry:  # each lesion's own checks on its row (ids of a fresh run: 1 = largest)
                merge_lesion_checks(entry["tumor"].get("components") or [], lesions.get(entry["name"]) or [])
            warnings += [f"{entry['name']}: {text}" for text in entry["flags"]]
        return warnings

    def _emit_structures(self, logits: torch.Tensor, prep: Prepared, image: sitk.Image, writer: "OutputWriter",
                         reporter: Reporter) -> dict:
        """Write every structure; returns name -> (box, mask on that box) of the non-empty ones."""
        card = self.card
        inf = card.inference
        post = card.postprocessing
        target = Grid.of(image)
        softmax = inf["activation"] == "softmax"
        if softmax:
            probs = torch.softmax(logits, dim=0)
            argmax = torch.argmax(logits, dim=0).numpy().astype(np.uint8)
        classes = sorted(card.classes, key=lambda c: c.is_tumor)  # organs first: tumors are gated by them
        organ_boxes = {}
        tumors = {}
        midline = float(target.index_to_physical(np.asarray(target.size) / 2.0 - 0.5)[0])
        for n, cls in enumerate(classes):
            reporter.update("postprocess", n / len(classes), cls.name)
            if softmax:
                prob = probs[cls.channel].numpy()
            elif cls.is_tumor:  # an organ needs only its mask (sigmoid_mask), a tumor its probabilities
                prob = torch.sigmoid(logits[cls.channel]).numpy()
            if not cls.is_tumor:
                if softmax:
                    channels = [cls.channel] + [t.channel for t in card.classes if t.is_tumor and t.gate and cls.name in t.gate]
                    mask_model = np.isin(argmax, channels).astype(np.uint8)
                else:
                    mask_model = sigmoid_mask(logits[cls.channel], float(inf["threshold"]))
                largest = bool(self.options.postprocess and post["largest_component"] and cls.largest_component)
                box, mask, done = self._to_input_grid(mask_model, prep.grid, target,
                                                      largest=largest and not cls.paired)
                if box is not None and largest and not done:
                    if cls.paired:
                        mask = largest_per_side(mask, target.sub(*box), midline)
                    else:
                        mask = largest_component(mask)
                if box is not None and mask.any():
                    organ_boxes[cls.name] = (box, mask)
                writer.add_structure(cls, box, mask)
            else:
                tumor = self._emit_tumor(cls, prob, prep, target, organ_boxes, writer)
                if tumor is not None:
                    tumors[cls.name] = tumor
        return {**organ_boxes, **tumors}

    @staticmethod
    def _to_input_grid(array_ijk: np.ndarray, grid: Grid, target: Grid, *, nonzero=None, largest: bool = False):
        """Resample a model-grid uint8 (i, j, k) array onto the input grid, only over the box where it is
        non-zero. Returns ((start, size), box array (k, j, i), largest_done) or (None, None, False) when empty.

        ``largest``: keep only the 26-connected component with the most input-grid voxels, chosen on the model
        grid when the resampling allows it (``largest_on_model_grid``; ``largest_done`` says so), else left to
        the caller on the input grid."""
        nz_box = bounding_slices(array_ijk if nonzero is None else nonzero)
        if nz_box is None:
            return None, None, False
        lo, hi = [s.start for s in nz_box], [s.stop for s in nz_box]
        box = covering_box(target, grid, lo, hi)
        if box is None:
            return None, None, False
        sub = target.sub(*box)
        maps = axis_maps(grid, sub)
        done = False
        if largest:
            kept = largest_on_model_grid(array_ijk, maps, lo, hi)
            if kept is not None:
                array_ijk, done = kept, True
        return box, nearest_onto(array_ijk, grid, sub, maps=maps), done

    def _emit_tumor(self, cls, prob, prep: Prepared, target: Grid, organ_boxes: dict, writer):
        card = self.card
        post = card.postprocessing
        threshold = float(self.options.thresholds.get(cls.name, card.inference["threshold"]))
        gated = bool(self.options.postprocess and post["tumor_gate"] and cls.gate)
        q = quantize(prob)
        gate_info = None
        if gated:
            present = [g for g in cls.gate if g in organ_boxes]
            in_card = [g for g in cls.gate if any(c.name == g for c in card.classes)]
            if not in_card:
                gated = False
            elif not present:
                writer.add_tumor(cls, None, None, None, threshold=threshold, gate=in_card,
                                 note=f"no {'/'.join(in_card)} found, so no {cls.name} (gated to the organ)")
                return
            else:
                box, organs = _gate_box(present, organ_boxes, target, post["tumor_gate_dilation_mm"])
                gate_info = present
        if not gated:
            nz = q > 0
            if not nz.any():
                writer.add_tumor(cls, None, None, None, threshold=threshold, gate=None, note="probability zero everywhere")
                return
            box, q_box, _ = self._to_input_grid(q, prep.grid, target, nonzero=nz)
            gate_mask = None
        else:
            q_box = nearest_onto(q, prep.grid, target.sub(*box))
            gate_mask = dilated_gate(organs, q_box, target.spacing[::-1], post["tumor_gate_dilation_mm"])
        min_mm3 = cls.min_component_mm3 if self.options.postprocess else 0.0
        mask = tumor_mask(q_box, gate_mask, threshold=threshold, voxel_mm3=target.voxel_volume_mm3, min_mm3=min_mm3)
        writer.add_tumor(cls, box, mask, q_box, threshold=threshold, gate=gate_info, min_mm3=min_mm3,
                         dilation_mm=post["tumor_gate_dilation_mm"] if gate_info else None)
        return (box, mask) if mask.any() else None


def sigmoid_mask(logit: torch.Tensor, threshold: float) -> np.ndarray:
    """``(torch.sigmoid(logit).numpy() >= threshold)`` as uint8 0/1, the same array, mostly without the sigmoid.

    A float32 sigmoid is within a few units in the last place of the true one (torch's vectorised and scalar
    kernels alike), so wherever the logit lies more than ``band`` (2**-18 / (t (1 - t)), ~500 times that error
    at the threshold's slope, plus the threshold's own float32 rounding) from the threshold's logit, the
    comparison's outcome is that of the logit with the threshold's logit. Only when some voxel lies inside that
    band (a network output within ~1e-5 of the boundary) is the sigmoid computed, everywhere, as before. Saves
    one exp per voxel and structure (7 ms per structure on a 3 mm grid of a 512x512x300 CT)."""
    t = float(threshold)
    if logit.dtype == torch.float32 and 0.01 <= t <= 0.99:
        centre = math.log(t / (1.0 - t))
        t32 = float(np.float32(t))
        band = 2.0 ** -18 / (t * (1.0 - t)) + abs(math.log(t32 / (1.0 - t32)) - centre)
        x = logit.numpy()  # NumPy, one thread: torch's parallel comparisons wait on busy cores (the writers')
        above = x >= centre + band
        # No voxel in the band: as many above its lower edge as above its upper edge (two counts, no mask of it).
        if np.count_nonzero(x > centre - band) == np.count_nonzero(above):
            return above.view(np.uint8)
    return (torch.sigmoid(logit).numpy() >= threshold).view(np.uint8)


def nearest_onto(array_ijk: np.ndarray, grid: Grid, target: Grid, *, maps=None) -> np.ndarray:
    """Nearest-neighbour resampling of ``array_ijk`` (on ``grid``) onto ``target``, as (k, j, i): ITK's result.

    The model grid is the input grid's axes flipped/permuted and respaced, so each target index axis maps to one
    source axis and the resampling separates into three 1-D index maps, each rounded as ITK rounds: half up, and
    on an axis where a voxel lies within 1e-6 of halfway between two source voxels (1.5 mm slices on a 3 mm grid:
    every other slice), where ITK's choice follows the last bit of its floating-point index, by ITK's resampler
    itself on a probe one voxel thin across the other axes (``_itk_axis_index``). The voxels are then gathered
    one axis at a time (``np.take`` copies whole rows; the source is small, the target up to 512×512×300): a
    fraction of ITK's per-voxel point mapping, which was the largest non-network cost of a --fast run. Oblique
    pairs of grids use ITK's resampler on the whole box."""
    if maps is None:
        maps = axis_maps(grid, target)
    if maps is None:
        src = grid.image_from_ijk(array_ijk)
        return sitk.GetArrayFromImage(resample(src, target, interpolator=sitk.sitkNearestNeighbor))
    axes, index = maps
    # Only the source voxels some target voxel picks are read: cropped to their range first (a structure's box
    # is a small part of the model grid, and the first gather below copies one byte at a time).
    crop = [slice(0, 0)] * 3
    for r, idx in zip(axes, index):
        inside = idx[idx >= 0]
        if inside.size:
            crop[r] = slice(int(inside.min()), int(inside.max()) + 1)
    index = [np.where(idx >= 0, idx - crop[r].start, -1) for r, idx in zip(axes, index)]
    src = np.ascontiguousarray(array_ijk[tuple(crop)].transpose(axes))
    outside = [idx < 0 for idx in index]
    if any(o.any() for o in outside):  # a zero plane after each axis stands for "outside the source"
        src = np.pad(src, [(0, 1 if o.any() else 0) for o in outside])
        index = [np.where(o, n - 1, idx) for o, n, idx in zip(outside, src.shape, index)]
    out = src.take(index[2], axis=2).take(index[1], axis=1).take(index[0], axis=0)
    return np.ascontiguousarray(out)


def axis_maps(grid: Grid, target: Grid):
    """The per-axis index maps of ``nearest_onto``: ``(axes, index)`` where ``axes[n]`` is the source axis that
    output axis n (k, j, i of ``target``) follows and ``index[n]`` the source index of each target index along
    it (-1 outside the source), rounded as ITK rounds; None for an oblique pair of grids."""
    m = np.linalg.inv(grid.matrix)
    a = m @ target.matrix
    perm = np.argmax(np.abs(a), axis=1)  # source axis r follows target axis perm[r]
    off = np.abs(a).copy()
    off[np.arange(3), perm] = 0.0
    if sorted(perm.tolist()) != [0, 1, 2] or off.max() > 1e-9 * np.abs(a).max():
        return None
    axes = [int(np.nonzero(perm == t)[0][0]) for t in (2, 1, 0)]  # source axis of output axis 0 (k), 1 (j), 2 (i)
    b = m @ (np.asarray(target.origin) - np.asarray(grid.origin))
    index = []
    for r in axes:
        cont = a[r, perm[r]] * np.arange(target.size[perm[r]], dtype=float) + b[r]
        if (np.abs(cont - np.floor(cont) - 0.5) < 1e-6).any():  # a halfway tie: ITK's own rounding decides
            index.append(_itk_axis_index(grid, target, r, int(perm[r])))
        else:  # round half up, as ITK's nearest neighbour does away from ties (one probe costs ~5 ms)
            idx = np.floor(cont + 0.5).astype(np.int64)
            index.append(np.where((idx >= 0) & (idx < grid.size[r]), idx, -1))
    return axes, index


def largest_on_model_grid(array_ijk: np.ndarray, maps, lo, hi) -> Optional[np.ndarray]:
    """``array_ijk`` (model grid, 0/1) reduced to the 26-connected component that ``nearest_onto`` with
    ``maps`` turns into the largest component on the input grid, found on the model grid (~30× fewer voxels at
    3 mm than a 0.8 mm input grid); None when that cannot be done exactly.

    Where every map steps by at most one source index between neighbouring target voxels (the input grid is
    at least as fine as the model grid) and hits every source index of the non-zero box [lo, hi), the input-grid
    components are exactly the images of the model-grid ones, and a model voxel's image has as many voxels as
    the product of its per-axis run lengths: the largest is picked by those weighted counts (ties: the
    component cc3d numbers first). Otherwise (e.g. 5 mm slices on a 1.5 mm model grid) None."""
    if maps is None:
        return None
    axes, index = maps
    counts = {}
    for r, idx in zip(axes, index):
        inside = idx[idx >= 0]
        if inside.size == 0 or (np.abs(np.diff(inside)) > 1).any():
            return None
        c = np.bincount(inside, minlength=array_ijk.shape[r])[lo[r]:hi[r]]
        if (c == 0).any():
            return None
        counts[r] = c
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    labels, n = cc3d.connected_components(array_ijk[crop], connectivity=26, return_N=True)
    if n <= 1:
        return array_ijk
    weight = counts[0][:, None, None] * counts[1][None, :, None] * counts[2][None, None, :]
    sizes = np.bincount(labels.ravel(), weights=weight.ravel().astype(np.float64), minlength=n + 1)
    best = int(np.argmax(sizes[1:])) + 1
    out = np.zeros_like(array_ijk)
    out[crop] = labels == best
    return out


def _itk_axis_index(grid: Grid, target: Grid, r: int, t: int) -> np.ndarray:
    """For each index along ``target``'s axis ``t``: the index along ``grid``'s axis ``r`` that ITK's
    nearest-neighbour resampler picks, -1 outside ``grid``. Computed by ITK itself on a probe: the source is
    ``grid``'s axis ``r`` (values = indices) two voxels thick across the other axes, the target ``target``'s axis
    ``t`` one voxel thick across the others. On axis-aligned grids an index along one axis does not depend on
    the others (the direction matrices' zeros are exact), so this is the full resampler's choice, halfway ties
    included; one thread, so the scanline is split as in a whole-box run (tested against ITK on random grids)."""
    # Target voxel 0 in grid index space; the probe only needs where it starts on the other axes.
    b = np.linalg.inv(grid.matrix) @ (np.asarray(target.origin) - np.asarray(grid.origin))
    src_start, src_size = [0, 0, 0], [2, 2, 2]
    src_size[r] = grid.size[r]
    for q in range(3):
        if q != r:  # target index 0 on the other axes lands in [floor(b), floor(b) + 1]: both probe voxels
            src_start[q] = int(np.floor(b[q]))
    tg_size = [1, 1, 1]
    tg_size[t] = target.size[t]
    values = np.broadcast_to(np.arange(grid.size[r], dtype=np.int32).reshape([-1 if q == r else 1 for q in range(3)]),
                             src_size)
    probe = grid.sub(src_start, src_size).image_from_ijk(values)
    tg = target.sub((0, 0, 0), tg_size)
    f = sitk.ResampleImageFilter()
    f.SetSize(tg.size)
    f.SetOutputSpacing(tg.spacing)
    f.SetOutputOrigin(tg.origin)
    f.SetOutputDirection(tg.direction)
    f.SetInterpolator(sitk.sitkNearestNeighbor)
    f.SetDefaultPixelValue(-1)
    f.SetOutputPixelType(sitk.sitkInt32)
    f.SetNumberOfThreads(1)
    # One work unit: ITK runs the probe in the calling thread. With the default it hands the work to its thread
    # pool and waits, which cost 3-7 ms per structure while the mask writers keep both cores busy (the probe
    # itself takes under 1 ms); the scanline is not split either way.
    f.SetNumberOfWorkUnits(1)
    return sitk.GetArrayFromImage(f.Execute(probe)).reshape(-1).astype(np.int64)


def _gate_box(names, organ_boxes: dict, target: Grid, dilation_mm: float):
    """Box (start, size) on the input grid around the gate organs, grown by the dilation, and the union of the
    organs inside it (k, j, i; ``postprocess.dilated_gate`` dilates it where the tumor map is non-zero)."""
    starts = np.array([organ_boxes[n][0][0] for n in names])
    stops = np.array([np.add(organ_boxes[n][0][0], organ_boxes[n][0][1]) for n in names])
    grow = np.ceil(dilation_mm / np.asarray(target.spacing)).astype(int) + 1
    start = np.maximum(starts.min(0) - grow, 0)
    stop = np.minimum(stops.max(0) + grow, target.size)
    size = stop - start
    gate = np.zeros(tuple(size[::-1]), np.uint8)
    for n in names:
        (s, z), m = organ_boxes[n]
        o = np.asarray(s) - start
        gate[o[2]:o[2] + z[2], o[1]:o[1] + z[1], o[0]:o[0] + z[0]] |= m
    return (tuple(int(v) for v in start), tuple(int(v) for v in size)), gate


def _int8_available(backend: str, device: torch.device) -> bool:
    return (device.type == "cpu" and backend != "torch" and openvino_version() is not None
            and nncf_version() is not None)


def _with_gates(card: ModelCard, names) -> ModelCard:
    """Restrict to ``names``, adding the organs that selected tumors are gated to."""
    names = list(names)
    by_name = {c.name: c for c in card.classes}
    for n in list(names):
        c = by_name.get(n)
        if c is not None and c.is_tumor and c.gate:
            for g in c.gate:
                if g in by_name and g not in names:
                    log.info("adding %s: %s is gated to it", g, n)
                    names.append(g)
    return card.select(names)


def segment(input_path, outdir, *, card: ModelCard, weights=None, options: SegmentOptions = SegmentOptions(),
            progress=None, cancel=None) -> dict:
    """Read ``input_path``, run ``card``'s model with ``weights`` and write ``outdir``. Returns the report."""
    reporter = Reporter(progress=progress, cancel=cancel)
    StagingDir(outdir, overwrite=options.overwrite)  # refuse an existing folder before the slow steps
    reporter.update("read", 0.0, f"reading {input_path}")
    image, source = read_image(input_path, series_uid=options.series_uid)
    model = load_model(card, weights)
    return Segmenter(model, options).run(image, source, outdir, reporter=reporter)
