"""The ``atlasseg`` command line.

Exit codes: see "exit codes" in EXAMPLES (also in ``atlasseg --help`` and the README).
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import shlex
import sys
import threading
import time
from pathlib import Path

from .. import __version__
from ..errors import AtlasSegError, Cancelled, InputError, Terminated
# preflight is cheap (no numpy/SimpleITK/torch at load time): the checks run before anything heavy is imported
from ..preflight import check_batch, check_output_places, check_segment, parse_pairs
from ..progress import clear_interrupt, note_interrupt

log = logging.getLogger("atlasseg")

# The export formats (kept equal to AtlasSegLib.export.FORMATS by a test; not imported from there, see below).
EXPORT_FORMATS = ("dicom-seg", "rtstruct", "seg-nrrd", "abdomenatlas")

EXAMPLES = """examples:
  atlasseg demo                                   # synthetic phantom + demo model, offline
  atlasseg segment ct.nii.gz -o out --model suprem-segresnet --weights supervised_suprem_segresnet_2100.pth
  atlasseg segment dicom_folder/ -o out --model-card my_model.json --weights my_model.pt --device cpu
  atlasseg segment ct.nrrd -o out --model atlasseg-demo --structures liver,liver_tumor --threshold liver_tumor=0.3
  atlasseg threshold out --set liver_tumor=0.3    # change a tumor threshold without re-running the model
  atlasseg review out --structure liver_tumor --remove 3 4 --keep 1   # throw away false positives
  atlasseg report out                             # report.html/.csv/.json + pictures/ of a finished run
  atlasseg batch AbdomenAtlas/ -o results --model suprem-segresnet --fast
  atlasseg models list
  atlasseg estimate ct.nii.gz --model suprem-segresnet   # windows and time of each --quality preset, before a run
  atlasseg export out --format rtstruct --reference-dicom ct_dicom/   # also dicom-seg, seg-nrrd, abdomenatlas
  atlasseg synthesize ct.nii.gz -o synth --organ liver --run out --count 3 --diameter 10-30   # tumors + truth

exit codes:
  0    success
  1    internal error (a bug: please report it with the -v output)
  2    bad input: the message says what was wrong and what to do; nothing was changed
  3    download failed (no network, server error, checksum mismatch): 'models fetch'; see 'models import'
  130  interrupted (Ctrl-C) or cancelled
  141  the reader of the output went away (e.g. '| head'); output was cut short, nothing else happened
  143  terminated (SIGTERM); cleaned up like Ctrl-C
"""


REPORT_EPILOG = """The report is made from the output folder alone: the CT is read from the run's input path
(or OUTDIR/ct.nii.gz, or --ct). Review decisions (OUTDIR/review.json) set each tumor component's status.

A 3D overview (pictures/3d.png) needs Slicer's renderer, which this command does not load. With slicer-core
installed (pip install slicer-core) or inside Slicer, draw it first, then make the report:
  python AtlasSeg/AtlasSegModule/AtlasSegRender.py OUTDIR        # writes OUTDIR/pictures/3d.png, then rebuilds the report
It is included while it is newer than the masks (a threshold change leaves it out until it is redrawn)."""


class _ProgressSink:
    """Turns library progress callbacks into tqdm bars, JSON lines, or nothing."""

    def __init__(self, *, json_lines: bool, bar: bool):
        self.json_lines = json_lines
        self.bar = None
        self.stage = None
        # The bar is drawn on the first progress report, not before: commands that report none (threshold,
        # review, export) must not leave an empty 0 % bar between their lines.
        self.want_bar = bar

    def __call__(self, stage: str, fraction: float, message: str = "") -> None:
        if self.json_lines:
            print(json.dumps({"event": "progress", "stage": stage, "fraction": round(fraction, 4), "message": message}),
                  flush=True)
        if self.want_bar and self.bar is None:
            # tqdm here: loaded only when a bar is drawn (a terminal), not at every command's start
            from tqdm import tqdm

            self.bar = tqdm(total=100, file=sys.stderr, unit="%", bar_format="{desc:<28}{percentage:3.0f}%|{bar}| {elapsed}")
        if self.bar is not None:
            self.bar.set_description_str(f"{stage}: {message}"[:28])
            self.bar.n = round(100 * fraction, 1)
            self.bar.refresh()

    def close(self):
        self.want_bar = False  # nothing after the end draws a new bar
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def event(self, **payload):
        if self.json_lines:
            print(json.dumps(payload), flush=True)


QUALITY_HELP = ("reference = the published settings (full resolution, overlap 0.75, fp32); balanced = full "
                "resolution, overlap 0.5, INT8 on the CPU where it passes its check on this CT (about 5x fewer "
                "windows than reference); fast = coarse spacing (3 mm), overlap 0.5, INT8 where it passes. "
                "Default auto = balanced on a CPU, the model card's settings on a GPU (and with --fast)")


def _add_review_parser(sub) -> None:
    # Defined here, not in review.py: building the parser must not import numpy/cc3d/SimpleITK (startup time).
    r = sub.add_parser(
        "review", help="list tumor candidates of a finished run; remove false positives, keep true ones",
        description="Without actions: print every tumor candidate (id, organ, percent inside its organ, volume, "
        "diameters, max probability, a seed voxel inside it, review status: to review, kept, removed, or 'kept, "
        "below threshold' for a kept one a higher threshold dropped, and its flags: outside its organ, fat or gas "
        "HU); --json gives the same rows with 'flags' and 'inside_organ_pct'. The ids are the ones the run's "
        "warnings, report.json, report.csv and report.html use. With actions: edit one structure's mask and record the decisions in "
        "review.json (they survive later 'atlasseg threshold' changes and go into the report). "
        "Candidate ids are stable for the run: removing, keeping or a new threshold never renumbers the others "
        "(after '--remove 1 2 --keep 4' the kept candidate is still 4). A lesion is followed by overlap: it keeps "
        "its id while it exists at any threshold, shrinking or growing; one that splits at a higher threshold "
        "keeps its id on its largest part and the other parts get new ids; a candidate that appears later gets a "
        "new number, and an id is never reused. Contradictory actions (one id both removed and kept) are refused "
        "and change nothing; kept candidates are never removed by --remove-smaller-than or "
        "--remove-below-probability.")
    r.add_argument("outdir")
    r.add_argument("--structure", help="the structure to edit (required with any action)")
    r.add_argument("--remove", type=int, nargs="+", default=[], metavar="ID", help="remove these candidates (ids as listed)")
    r.add_argument("--keep", type=int, nargs="+", default=[], metavar="ID", help="mark these candidates as kept")
    r.add_argument("--remove-smaller-than", type=float, metavar="ML",
                   help="remove components below this volume (kept candidates are spared)")
    r.add_argument("--remove-below-probability", type=float, metavar="P",
                   help="remove components whose highest probability is below P (kept candidates are spared)")
    r.add_argument("--keep-largest", type=int, metavar="N",
                   help="keep the N largest components: organs only (stray islands); refused for tumors")
    r.add_argument("--add-at", metavar="R,A,S", help="add a missed tumor by one click at this point (mm, RAS as "
                   "Slicer shows coordinates): the model's probability region around it, else a region of similar "
                   "attenuation in the CT; a new id, status kept, origin 'added: probability' or 'added: image'; a "
                   "point inside a candidate selects it (nothing added). A negative first value needs '=': --add-at=-12.5,40,103")
    r.add_argument("--add-at-voxel", metavar="I,J,K", help="as --add-at, at a voxel of the input grid")
    r.add_argument("--lesion-threshold", action="append", default=[], metavar="ID=P",
                   help="give lesion ID its own probability threshold P (grows or shrinks that lesion alone, never into "
                   "a neighbour); kept through later 'atlasseg threshold' changes; repeatable")
    r.add_argument("--reviewer", metavar="NAME", help="who reviews (recorded in review.json with the time; exports "
                   "name it, e.g. 'Doe^Jane')")
    r.add_argument("--json", action="store_true", help="print the candidate table as JSON")


def _add_synthesize_parser(sub) -> None:
    # Here, not in synthesize.py: building the parser must not import numpy/scipy/SimpleITK (startup time).
    y = sub.add_parser(
        "synthesize", help="insert synthetic tumors into a real CT (truth mask included) for teaching and testing",
        description="Insert N synthetic tumors into the organ of a CT, after the recipe of SyntheticTumors (Hu et "
        "al., CVPR 2023): locations inside the organ away from its edge and its vessels, elastically deformed "
        "ellipsoids with a soft edge, a texture of filtered noise, attenuation relative to the organ's own mean HU. "
        "Writes OUTPUT/ct.nii.gz (the input's grid and pixel type), OUTPUT/segmentations/<organ>_tumor.nii.gz (the "
        "truth) and OUTPUT/tumors.json (per tumor: centre, diameter, size class, contrast, volume). Only voxels in "
        "and near the organ change; the same --seed gives the same CT.")
    y.add_argument("input", help="CT file (.nii/.nii.gz/.nrrd/.mha) or DICOM folder")
    y.add_argument("-o", "--output", required=True, help="output folder (must not exist unless --overwrite)")
    y.add_argument("--organ", required=True, choices=["liver", "pancreas", "kidney"],
                   help="where the tumors go (kidney: the left and right kidney masks together)")
    src = y.add_mutually_exclusive_group()
    src.add_argument("--organ-mask", metavar="MASK", help="the organ's mask on the CT's grid (any nonzero voxel, or "
                     "--label values)")
    src.add_argument("--run", metavar="RUN", help="take the organ's mask from this 'atlasseg segment' output folder")
    y.add_argument("--label", metavar="IDS", help="with --organ-mask: the label value(s) of the organ in a "
                   "multi-label mask, e.g. 5 or 2,3")
    y.add_argument("--count", type=int, default=1, help="number of tumors (default 1)")
    y.add_argument("--diameter", default="10-30", metavar="MIN-MAX",
                   help="nominal diameter in mm, one number or a range drawn per tumor (default 10-30)")
    y.add_argument("--contrast", metavar="HU", help="tumor mean minus organ mean in HU, one number or a range "
                   "(write negative ranges as --contrast=-60--20); default: the organ's range in synthesis.json")
    y.add_argument("--seed", type=int, default=0, help="random seed (default 0): the same seed gives the same CT")
    y.add_argument("--mass-effect", type=float, default=0.0, metavar="MM",
                   help="push the tissue around each tumor outwards by MM at its edge (the paper's optional mass "
                   "effect; default 0: off)")
    y.add_argument("--capsule", type=float, default=0.0, metavar="HU",
                   help="add HU along each tumor's edge, a brighter rim (the paper's optional capsule; default 0: off)")
    y.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def _add_export_parser(sub) -> None:
    # Here, not in the export package: building the parser must not import numpy/SimpleITK/pydicom (startup time).
    from .. import roinames  # plain Python

    e = sub.add_parser("export", help="export a finished run as DICOM SEG, RTSTRUCT, .seg.nrrd or AbdomenAtlas case",
                       description="Export the structures of an AtlasSeg output folder. DICOM SEG and RTSTRUCT "
                       "reference the CT's DICOM series: the run's input when it was a DICOM folder, otherwise "
                       "--reference-dicom.")
    e.add_argument("outdir", help="output folder of an 'atlasseg segment' run")
    e.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    e.add_argument("-o", "--output", help="file to write (a folder for abdomenatlas); default OUTDIR/export/...")
    e.add_argument("--reference-dicom", metavar="DIR", help="the CT's DICOM series (for dicom-seg and rtstruct)")
    e.add_argument("--ct", help="the CT file or DICOM folder (abdomenatlas) when the run's input has moved")
    e.add_argument("--compress", action="store_true",
                   help="write the DICOM SEG with the Deflated transfer syntax (lossless, smaller; dciodvfy and some "
                   "PACS/planning systems cannot read it). Default: Explicit VR Little Endian")
    e.add_argument("--no-compress", action="store_true", help=argparse.SUPPRESS)  # the default since 0.1
    e.add_argument("--holes", default="keyhole", choices=("keyhole", "separate"),
                   help="RTSTRUCT holes: keyhole (default: each hole joined to its outline by a zero-width cut, the "
                   "mask whether the planning system ORs contours or uses even-odd) or separate (inner contours)")
    e.add_argument("--names", default="model", choices=roinames.NAME_SCHEMES,
                   help="ROI/segment names: model (liver, kidney_left) or tg263 (AAPM TG-263: Liver, Kidney_L, "
                   "tumors GTV_Liver); for dicom-seg, rtstruct, seg-nrrd")
    e.add_argument("--name-map", metavar="FILE",
                   help="your own ROI names, applied over --names: JSON {\"liver\": \"Liver\"} or CSV lines "
                   "structure,name")
    e.add_argument("--tumor-roi-type", default="none", choices=roinames.TUMOR_ROI_TYPES,
                   help="rtstruct: RT ROI Interpreted Type of tumor ROIs; none (default): left for the planner to "
                   "set, as automatic candidates are unreviewed")
    e.add_argument("--approve", action="store_true",
                   help="rtstruct: ApprovalStatus APPROVED with ReviewerName and review date/time (default "
                   "UNAPPROVED); needs --reviewer NAME or a reviewer recorded in review.json")
    e.add_argument("--reviewer", metavar="NAME", help="who reviewed (DICOM person name, e.g. 'Doe^Jane'); structures "
                   "a person edited are exported as SEMIAUTOMATIC, untouched ones AUTOMATIC")
    e.add_argument("--overwrite", action="store_true", help="replace an existing output")
    e.add_argument("--force", action="store_true", help="export even when the run's warnings say its labels are "
                   "meaningless (not an abdomen, the demo model on a real CT); refused otherwise")


def _add_evaluate_parser(sub) -> None:
    # Here, not in evaluate.py: building the parser must not import numpy/SimpleITK/MONAI (startup time).
    e = sub.add_parser(
        "evaluate", help="score a run (or a batch) against truth masks: lesion-level FROC, Dice, surface distance",
        description="Lesion by lesion: a true tumor (26-connected component of the truth) is detected when a "
        "predicted component overlaps it by at least one voxel (one component may detect several); a predicted "
        "component overlapping no true tumor is a false positive. The kept probability maps are thresholded "
        "again from 0.01 to 0.99 (no re-run) for the FROC: sensitivity overall and per size class (tiny < 10 mm "
        "<= small < 20 <= medium < 40 <= large, longest diameter) against false positives per case. Writes "
        "froc.csv, froc.png, lesions.csv, cases.csv, structures.csv (Dice, average symmetric and 95%% Hausdorff "
        "surface distance in mm), operating_points.json (suggested thresholds in the model card's format) and "
        "evaluation.json.")
    e.add_argument("run", help="an 'atlasseg segment' output folder, or an 'atlasseg batch' results folder (RUN/<case>/)")
    e.add_argument("--truth", required=True, metavar="DIR",
                   help="truth masks on the CT's grid: DIR/<structure>.nii.gz or DIR/segmentations/<structure>.nii.gz "
                   "(AbdomenAtlas), or a dataset of such case folders (DIR/<case>/...) for a batch")
    e.add_argument("-o", "--output", metavar="OUT", help="folder for the results (default RUN/evaluation)")
    e.add_argument("--structures", metavar="A,B", help="evaluate only these structures (default: every structure "
                   "of the run with a truth file)")
    e.add_argument("--json", action="store_true", help="print evaluation.json instead of the summary")


def _add_estimate_parser(sub) -> None:
    # Here, not in estimate.py: building the parser must not import SimpleITK (startup time).
    e = sub.add_parser(
        "estimate", help="windows and estimated time of each --quality preset for a CT on this machine",
        description="Prints, per --quality preset (reference, balanced, fast), the windows the network would run "
        "on this CT (the pipeline's own grid, crop and placement) and the estimated time on this machine, from "
        "the seconds per window earlier runs of the model recorded here ('not timed yet on this machine' before "
        "the first run). Loads no model; reads and resamples the CT (seconds for a 512x512x300 CT).")
    e.add_argument("input", help="CT file (.nii/.nii.gz/.nrrd/.mha) or DICOM folder")
    m = e.add_mutually_exclusive_group(required=True)
    m.add_argument("--model", help="built-in model id (see 'atlasseg models list'); its weights are not needed")
    m.add_argument("--model-card", help="JSON model card of your own model")
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="the device the run would use (auto: the GPU when torch sees one)")
    e.add_argument("--series", help="DICOM series UID when the folder holds several")
    e.add_argument("--json", action="store_true", help="one JSON object on stdout: input, model, device, cpus and "
                   "presets (quality -> windows, backend, precision, window_s, network_s, total_s, timing)")


def _add_summarize_parser(sub) -> None:
    # Here, not in summarize.py: building the parser must not import numpy/SimpleITK (startup time).
    s = sub.add_parser(
        "summarize", help="dataset review of a batch: summary.csv, gallery.html, review marks, export accepted cases",
        description="Writes RESULTS/summary.csv (one row per case and structure: volume, mean HU, components, "
        "tumor count, largest lesion, the run's warnings, volume outlier score, review mark) and RESULTS/gallery.html "
        "(every case's frontal projection, the cases most likely wrong first, accept/revise marks). The page keeps "
        "marks in the browser; its 'Download marks' button saves review_marks.json: put it into RESULTS (or pass "
        "--marks) and this command prints the counts; --export-accepted writes the accepted cases as an "
        "AbdomenAtlas dataset.")
    s.add_argument("results", help="output folder of 'atlasseg batch' (or of one 'atlasseg segment' run)")
    s.add_argument("--marks", metavar="FILE", help="review marks downloaded from gallery.html "
                   "(default: RESULTS/review_marks.json when it exists)")
    s.add_argument("--export-accepted", metavar="DIR", help="write the accepted cases to DIR as one AbdomenAtlas "
                   "dataset (DIR/<case>/ct.nii.gz, segmentations/, combined_labels.nii.gz, labels.json)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --export-accepted folder")
    s.add_argument("--reports", action="store_true", help="make the missing report.html of each case first, so "
                   "every gallery link opens a report (1-3 s per case)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_progress_options(sp) -> None:
    """--quiet and --progress-json, for the commands that report progress."""
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.add_argument("--progress-json", action="store_true",
                    help="write progress as JSON lines on stdout (for GUIs, e.g. the Slicer module)")


def _add_segment_parser(sub) -> None:
    s = sub.add_parser("segment", help="segment a CT (file or DICOM folder)", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("input", help="CT file (.nii/.nii.gz/.nrrd/.mha) or DICOM folder")
    s.add_argument("-o", "--output", required=True, help="output folder (must not exist unless --overwrite)")
    m = s.add_mutually_exclusive_group()
    m.add_argument("--model", help="built-in model id (see 'atlasseg models list'); default: the best real model "
                   "whose weights are cached (suprem-unet, suprem-swinunetr, suprem-segresnet), else required")
    m.add_argument("--model-card", help="JSON model card of your own model")
    s.add_argument("--weights", help="checkpoint file (default: the model's cached or shipped weights)")
    s.add_argument("--structures", help="comma-separated subset of structures to produce")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--backend", default="auto", choices=["auto", "torch", "openvino"],
                   help="what runs the network: auto = OpenVINO on the CPU when installed, torch on a GPU")
    s.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16", "int8"],
                   help="auto = bf16 on CPUs with BF16 support (OpenVINO), fp16 autocast on a GPU, else fp32; "
                   "int8 = NNCF-quantized OpenVINO, checked against fp32 on this CT (fp32 runs if it disagrees)")
    s.add_argument("--fast", action="store_true", help="coarser model spacing where the card allows (CPU friendly)")
    s.add_argument("--quality", default="auto", choices=["auto", "reference", "balanced", "fast"],
                   help=QUALITY_HELP)
    s.add_argument("--series", help="DICOM series UID when the folder holds several")
    s.add_argument("--threshold", action="append", metavar="NAME=P", help="tumor threshold, e.g. liver_tumor=0.3")
    s.add_argument("--no-postprocess", action="store_true", help="keep raw masks (no largest component, gating, "
                   "small-component removal)")
    s.add_argument("--force", action="store_true", help="run even if the values do not look like CT")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    _add_progress_options(s)


def _add_batch_parser(sub) -> None:
    b = sub.add_parser("batch", help="segment every case of a dataset folder (model loaded once)",
                       description="Cases: AbdomenAtlas-style <root>/<case>/ct.nii.gz, CT files directly in the "
                       "folder (.nii.gz, .nrrd, .mha), or one DICOM series per subfolder. Each case goes to "
                       "OUTPUT/<case>/; a failing case is reported and the others go on; OUTPUT/batch_summary.csv "
                       "lists them all.")
    b.add_argument("input", help="dataset folder")
    b.add_argument("-o", "--output", required=True, help="output root folder")
    mb = b.add_mutually_exclusive_group()
    mb.add_argument("--model", help="built-in model id; default: the best cached real model, as for 'segment'")
    mb.add_argument("--model-card", help="JSON model card of your own model")
    b.add_argument("--weights")
    b.add_argument("--structures")
    b.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    b.add_argument("--backend", default="auto", choices=["auto", "torch", "openvino"],
                   help="what runs the network: auto = OpenVINO on the CPU when installed, torch on a GPU")
    b.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16", "int8"],
                   help="auto = bf16 on CPUs with BF16 support (OpenVINO), fp16 autocast on a GPU, else fp32")
    b.add_argument("--fast", action="store_true")
    b.add_argument("--quality", default="auto", choices=["auto", "reference", "balanced", "fast"], help=QUALITY_HELP)
    b.add_argument("--threshold", action="append", metavar="NAME=P")
    b.add_argument("--overwrite", action="store_true", help="re-run cases whose output exists (default: skip them)")
    b.add_argument("--workers", type=int, default=1, metavar="N",
                   help="segment N cases at a time on Ray (pip install 'atlasseg[cluster]'), each worker loading "
                   "the model once; without --ray-address a local Ray is started on 127.0.0.1 and stopped at the "
                   "end. Default 1: in this process, without Ray")
    b.add_argument("--ray-address", metavar="ADDR",
                   help="join this Ray cluster ('ray start --head' prints the address) instead of a local one; "
                   "inputs and outputs must be at the same paths on every node (a shared filesystem)")
    b.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="G",
                   help="GPUs each Ray worker reserves (e.g. 1, or 0.5 to share one); default 0")
    b.add_argument("--cpus-per-worker", type=int, metavar="C",
                   help="CPU cores each Ray worker reserves and uses (default: the cores shared out among workers)")
    _add_progress_options(b)


def _add_demo_parser(sub) -> None:
    d = sub.add_parser("demo", help="make a synthetic phantom, segment it with the demo model, print Dice")
    d.add_argument("-o", "--output", default="demo_output", help="output folder (default: demo_output)")
    d.add_argument("--seed", type=int, default=2024, help="phantom seed")
    d.add_argument("--no-tumors", action="store_true", help="phantom without liver tumors")
    d.add_argument("--tumor-count", type=int, metavar="N", help="liver tumors to insert, 0-10 (default: 1-4 at random)")
    d.add_argument("--tumor-diameter", metavar="MIN-MAX",
                   help="tumor diameters in mm, e.g. 10-20 or 15 (default: the 8/16/32 mm size classes)")
    d.add_argument("--tumor-contrast", type=float, metavar="HU",
                   help="mean HU of the tumors relative to the liver, -300..300, e.g. -60 (default: -65..-145 at random)")
    d.add_argument("--structures", "--organs", dest="structures", metavar="LIST",
                   help="comma-separated structures to segment and show, e.g. liver,liver_tumor (default: all)")
    d.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    d.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    _add_progress_options(d)


def _add_threshold_parser(sub) -> None:
    t = sub.add_parser("threshold", help="change tumor thresholds of a finished run (no re-run)")
    t.add_argument("outdir")
    t.add_argument("--set", action="append", required=True, metavar="NAME=P", help="e.g. liver_tumor=0.3")


def _add_report_parser(sub) -> None:
    # Defined here, not in report.py: importing the report's picture code would slow every command's start.
    r = sub.add_parser("report", help="write report.html, report.csv, report.json and pictures/ for a run",
                       description="Write a one-page report of a finished run into its folder: report.html "
                       "(self-contained, opens offline), report.csv, report.json (extended) and pictures/*.png "
                       "(frontal overview, an axial slice per tumor).",
                       epilog=REPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("outdir", help="output folder of an 'atlasseg segment' or 'atlasseg demo' run")
    r.add_argument("--ct", help="the CT the run segmented, when its input path has moved")
    r.add_argument("--no-pictures", action="store_true", help="tables and page only (fast; no CT needed)")
    r.add_argument("--anonymize", action=argparse.BooleanOptionalAction, default=None,
                   help="leave the patient's name and ID, study date, series description, UIDs and file names out "
                   "of the report (default: as the folder's previous report; --no-anonymize puts them back)")
    r.add_argument("--lecture", action="store_true",
                   help="also write pictures for slides into pictures/lecture/: 1920 px wide (tumor slices 1080 px), "
                   "text 2.5x larger, each structure named on the image")


def _add_models_parser(sub) -> None:
    mo = sub.add_parser("models", help="list, download, import model weights")
    msub = mo.add_subparsers(dest="models_command", metavar="ACTION")
    msub.add_parser("list", help="built-in models and whether their weights are cached")
    f = msub.add_parser("fetch", help="download a model's weights into the cache (verified)")
    f.add_argument("model_id")
    f.add_argument("--quiet", action="store_true")
    i = msub.add_parser("import", help="install a weights file downloaded by hand (size and sha256 checked)")
    i.add_argument("model_id")
    i.add_argument("file")
    rm = msub.add_parser("remove", help="delete a model's cached weights (e.g. a wrong file imported by hand)")
    rm.add_argument("model_id")
    msub.add_parser("path", help="print the cache folder")


def build_parser() -> argparse.ArgumentParser:
    """The whole ``atlasseg`` parser: one ``_add_<command>_parser`` per command, in the order --help lists them.
    Building it imports no numpy/SimpleITK/torch (each command's module is imported when it runs)."""
    p = argparse.ArgumentParser(prog="atlasseg", description="AbdomenAtlas CT segmentation (SuPreM, DiffTumor, "
                                "your own models): organs and tumors on the input grid.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"atlasseg {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_segment_parser, _add_batch_parser, _add_demo_parser, _add_threshold_parser, _add_report_parser,
                _add_review_parser, _add_models_parser, _add_synthesize_parser, _add_summarize_parser,
                _add_evaluate_parser, _add_export_parser, _add_estimate_parser):
        add(sub)
    _verbose_everywhere(sub)
    return p


def _verbose_everywhere(sub) -> None:
    """-v also after the command ('atlasseg segment ... -v'), as well as before it. SUPPRESS as default: a
    subcommand that was given no -v leaves the top-level value alone."""
    for parser in sub.choices.values():
        parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                            help="log details to stderr")
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                _verbose_everywhere(action)


# Without --model: the first of these whose weights are cached (multi-organ SuPreM models: U-Net and Swin UNETR carry
# the 32-class template with tumors, SegResNet the 25 AbdomenAtlas 1.1 organs). Never the demo model, which only
# knows synthetic phantoms: it must be asked for by name.
DEFAULT_MODELS = ("suprem-unet", "suprem-swinunetr", "suprem-segresnet")


def default_model() -> str:
    """The model ``segment``/``batch`` use without --model: the first of DEFAULT_MODELS whose weights are cached.

    Raises InputError (exit 2) naming how to get one when none is."""
    # here: download imports card (jsonschema); the parser and the other commands start without it
    from .. import download

    for model_id in DEFAULT_MODELS:
        if download.is_cached(model_id):
            return model_id
    cached = [r.id for r in download.list_models() if r.cached and r.sha256_status != "bundled"]
    have = (f" Cached real models: {', '.join(cached)} (pass one with --model)." if cached else "")
    raise InputError("no --model given, and no real model's weights are cached (cache: "
                     f"{download.cache_dir()}).{have} 'atlasseg models list' shows the models; 'atlasseg models fetch "
                     "suprem-unet' downloads one, 'atlasseg models import ID FILE' installs a file downloaded by hand; "
                     "then pass --model ID. (The shipped demo model only segments synthetic phantoms: "
                     "--model atlasseg-demo.)")


def _resolve_model(args):
    # here: card imports jsonschema, only needed once a model is chosen
    from ..card import builtin_card, load_card

    if args.model_card:
        return load_card(args.model_card), args.weights
    model_id = args.model
    if model_id is None:
        if args.weights:
            raise InputError("--weights needs --model ID (or --model-card FILE): which model are the weights for?")
        model_id = default_model()
        print(f"atlasseg: no --model given: using {model_id}, the best real model whose weights are cached "
              "(pass --model to choose another)", file=sys.stderr)
    card = builtin_card(model_id)
    weights = args.weights
    if weights is None and not card.weights.get("file") and card.architecture["type"] != "torchscript":
        try:
            from ..download import cached_path  # here: as the card above (jsonschema)
        except ImportError:  # the download module is optional for offline use of shipped models
            cached_path = None
        path = cached_path(card) if cached_path else None
        if path is None:
            raise InputError(f"the weights of {card.id} are not downloaded yet: run 'atlasseg models fetch {card.id}' "
                             "or pass --weights FILE")
        weights = str(path)
    return card, weights


def _options(args):
    # here: pipeline imports torch; only after the options and input are checked
    from ..pipeline import SegmentOptions

    return SegmentOptions(
        device=args.device, fast=args.fast, backend=args.backend, precision=args.precision,
        quality=getattr(args, "quality", None),
        structures=tuple(s.strip() for s in args.structures.split(",") if s.strip()) if args.structures else None,
        postprocess=not getattr(args, "no_postprocess", False),
        thresholds=parse_pairs(args.threshold, "--threshold"), force=getattr(args, "force", False),
        overwrite=args.overwrite, series_uid=getattr(args, "series", None))


def cmd_segment(args, sink) -> int:
    card, weights = _resolve_model(args)
    check_segment(args, card)  # options and input before torch and the model load: a refusal comes at once
    # here, after the checks: torch and the model load only for a run that will happen
    from ..pipeline import segment

    opts = _options(args)
    t0 = time.perf_counter()
    report = segment(args.input, args.output, card=card, weights=weights, options=opts, progress=sink)
    sink.close()
    warnings = report.get("warnings") or []
    # With --progress-json the warnings travel in the "done" event (the protocol's last line), not as raw lines
    # after it: a program reading the protocol gets them with the result.
    sink.event(event="done", outdir=str(Path(args.output).resolve()), warnings=warnings)
    if not args.progress_json:
        _print_summary(report, time.perf_counter() - t0, args.output)
        _print_warnings(warnings)
    return 0


def _print_warnings(warnings, prefix: str = "") -> None:
    """A run's plausibility warnings (report.json "warnings") on stderr, after its results."""
    for text in warnings:
        print(f"atlasseg: warning: {prefix}{text}", file=sys.stderr)


SHOWN_COMPONENTS = 10  # lesions listed per tumor after a run; 'atlasseg review OUT' lists them all


def _print_summary(report: dict, seconds: float, outdir) -> None:
    print(f"{report['model']['title']}: {len(report['structures'])} structures in {seconds:.1f} s -> {outdir}")
    print(f"{'structure':<30}{'volume ml':>12}{'mean HU':>10}")
    for s in report["structures"]:
        hu = "" if s["mean_hu"] is None else f"{s['mean_hu']:.0f}"
        print(f"{s['name']:<30}{s['volume_ml']:>12.1f}{hu:>10}")
    for name, info in report.get("tumors", {}).items():
        comps = info.get("components", [])
        print(f"{name}: {len(comps)} component(s) at threshold {info['threshold']}"
              + "".join(f"\n  #{c['id']}: {c['volume_ml']:.2f} ml, {c['longest_axial_diameter_mm'] / 10:.1f} x "
                        f"{c['perpendicular_diameter_mm'] / 10:.1f} cm, max p {c['max_probability']:.2f}"
                        + (f" [{'; '.join(c['flags'])}]" if c.get("flags") else "") for c in comps[:SHOWN_COMPONENTS]))
        if len(comps) > SHOWN_COMPONENTS:  # a cut list says so, and where the whole one is
            print(f"  … and {len(comps) - SHOWN_COMPONENTS} more: atlasseg review {shlex.quote(str(outdir))}")
    # The report page is a separate step (pictures take time): the exact command to make it.
    print(f"report: atlasseg report {shlex.quote(str(outdir))}")


def cmd_batch(args, sink) -> int:
    if args.workers < 1:
        raise InputError(f"--workers must be 1 or more, got {args.workers}")
    card, weights = _resolve_model(args)
    check_batch(args, card)  # before Ray, torch and the first case
    not_cases = []
    if args.workers > 1 or args.ray_address:
        # here: only a Ray batch needs the cluster module
        from ..cluster import DatasetBar, import_ray, run_batch_ray

        import_ray(args.ray_address)  # exit 2 with the install hint before any work when Ray is missing
        _print_batch_engine(args, not_cases)
        bar = DatasetBar(sink)
        try:
            rows = run_batch_ray(args.input, args.output, card=card, weights=weights, options=_options(args),
                                 workers=args.workers, ray_address=args.ray_address,
                                 gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
                                 progress=bar, events=bar.event, verbose=getattr(args, "verbose", False))
        finally:
            bar.close()
    else:
        # here: batch imports torch; only after the checks
        from ..batch import run_batch

        _print_batch_engine(args, not_cases)
        rows = run_batch(args.input, args.output, card=card, weights=weights, options=_options(args), progress=sink)
    sink.close()
    sink.event(event="done", outdir=str(Path(args.output).resolve()))
    failed = [r for r in rows if r["status"] == "failed"]
    skipped = sum(1 for r in rows if r["status"] == "skipped")
    if skipped:  # a rerun says what it did not redo
        print(f"atlasseg: {skipped} case(s) skipped: their output exists from an earlier run (their rows are kept in "
              "the summary; --overwrite re-runs them)", file=sys.stderr)
    if not args.progress_json:
        for r in rows:
            print(f"{r['case']:<32}{r['status']:<9}{float(r['seconds'] or 0):>8.1f} s  {r['message']}")
    # Each case's line counts its warnings; the warnings themselves are in its report.json and the summary (a
    # dataset's worth of them, case by case, would bury the results), and in the -v log.
    counted = [(r["case"], [w for w in (r.get("warnings") or "").split(" | ") if w]) for r in rows]
    for case, texts in counted:
        for text in texts:
            log.info("%s: warning: %s", case, text)
    summary = Path(args.output).resolve() / "batch_summary.csv"
    with_warnings = [case for case, texts in counted if texts]
    if with_warnings:
        print(f"atlasseg: warning: {len(with_warnings)} of {len(rows)} case(s) have run warnings "
              f"({sum(len(t) for _, t in counted)} in all): see each case's report.json or {summary} "
              "('atlasseg summarize' lists them case by case)", file=sys.stderr)
    if not args.progress_json:
        print(f"{len(rows) - len(failed)} of {len(rows)} cases done ({skipped} skipped), {len(failed)} failed; "
              f"summary: {summary}")
    if not_cases:
        print(f"atlasseg: batch: not a CT case, skipped: {', '.join(not_cases)}", file=sys.stderr)
    return 2 if failed else 0


def _print_batch_engine(args, not_cases: list) -> None:
    """The first line of a batch (stderr): how many cases and where they run. Fills ``not_cases`` with the files
    of the dataset folder that are no case (listed at the end)."""
    # here: batch imports torch; called after the checks
    from ..batch import find_cases

    n = len(find_cases(args.input, not_cases))
    if args.ray_address:
        gpus = args.gpus_per_worker * args.workers
        where = (f"Ray at {args.ray_address}: {args.workers} worker{'s' if args.workers != 1 else ''}, "
                 f"{gpus:g} GPU{'s' if gpus != 1 else ''}")
    elif args.workers > 1:
        where = f"{args.workers} workers on a local Ray" + (
            f" ({args.gpus_per_worker * args.workers:g} GPUs)" if args.gpus_per_worker else "")
    else:
        where = "1 worker in this process"
    print(f"atlasseg: batch: {n} case{'s' if n != 1 else ''}, {where}", file=sys.stderr, flush=True)


def cmd_demo(args, sink) -> int:
    # here: phantom (numpy, SimpleITK, scipy) only for the demo
    from ..phantom import check_structures, check_tumor_options

    # Checked before the demo's model code (torch) is imported: a mistyped option is refused at once.
    diameter = _parse_range_mm(args.tumor_diameter, "--tumor-diameter")
    structures = args.structures.split(",") if args.structures is not None else None
    check_tumor_options(args.tumor_count, diameter, args.tumor_contrast)
    check_structures(structures)
    if args.no_tumors and (args.tumor_count, diameter, args.tumor_contrast) != (None, None, None):
        raise InputError("tumor controls (count, diameter, contrast) were given together with --no-tumors: "
                         "leave out one or the other")
    # here, after the checks: demo imports torch
    from ..demo import run_demo

    result = run_demo(args.output, seed=args.seed, tumors=not args.no_tumors, device=args.device,
                      overwrite=args.overwrite, progress=sink, tumor_count=args.tumor_count,
                      tumor_diameter_mm=diameter, tumor_contrast_hu=args.tumor_contrast, structures=structures)
    # here: the report's picture code (scipy, PIL) only for the demo's page
    from ..report import build_report

    # The demo shows the whole product: the tumor candidates, their sizes in cm and the pictures, in one page.
    html = build_report(args.output).html_path
    sink.close()
    sink.event(event="done", outdir=str(Path(args.output).resolve()))
    if not args.progress_json:
        print(f"demo: phantom seed {args.seed} segmented with {result['model']} in {result['seconds']:.1f} s "
              f"-> {Path(args.output).resolve()}")
        print(f"{'structure':<16}{'Dice':>8}{'truth ml':>10}{'pred ml':>10}")
        for name, row in result["dice"].items():
            print(f"{name:<16}{row['dice']:>8.3f}{row['truth_ml']:>10.1f}{row['pred_ml']:>10.1f}")
        if result.get("tumors"):
            print("tumors inserted (truth): " + "; ".join(
                f"{t['diameter_mm']:.0f} mm, {t['contrast_hu']:+.0f} HU" for t in result["tumors"]))
        print(f"overview picture: {Path(args.output).resolve() / 'overview.png'}")
        print(f"report: {Path(html).resolve()}  (review tumors: atlasseg review {args.output})")
    _print_warnings(result["report"].get("warnings") or [])
    return 0


def _parse_range_mm(text, option: str):
    """"10-20" -> (10.0, 20.0), "15" -> (15.0, 15.0), None -> None; InputError otherwise."""
    if text is None:
        return None
    parts = text.split("-")
    try:
        values = tuple(float(v) for v in parts)
    except ValueError:
        values = ()
    if len(values) not in (1, 2):
        raise InputError(f"{option} {text!r}: give MIN-MAX in mm (e.g. 10-20) or one diameter (e.g. 15)")
    return (values[0], values[-1])


def cmd_threshold(args) -> int:
    # here: runedit (numpy, SimpleITK) only for this command
    from ..runedit import below_threshold_warnings, rethreshold

    values = parse_pairs(args.set, "--set")
    report = rethreshold(args.outdir, values)
    for name in values:
        info = report["tumors"][name]
        print(f"{name}: threshold {info['threshold']}, {info['count']} component(s), "
              f"{sum(c['volume_ml'] for c in info['components']):.2f} ml")
    for text in below_threshold_warnings(report, values):
        print(f"atlasseg: warning: {text}", file=sys.stderr)
    return 0


def cmd_models(args) -> int:
    # here: download imports card (jsonschema); the parser and the other commands start without it
    from .. import download

    action = args.models_command or "list"
    if action == "path":
        print(download.cache_dir())
    elif action == "list":
        rows = download.list_models()
        print(f"{'id':<28}{'classes':>8}{'size MB':>9}  {'cached':<7}{'sha256':<23}title / license")
        for r in rows:
            size = f"{r.size / 1e6:.0f}" if r.size else "?"
            print(f"{r.id:<28}{r.num_classes:>8}{size:>9}  {'yes' if r.cached else 'no':<7}{r.sha256_status:<23}"
                  f"{r.title} / {r.license.split(';')[0][:60]}")
        print(f"cache: {download.cache_dir()}")
    elif action == "fetch":
        bar = None
        if not args.quiet and sys.stderr.isatty():
            # tqdm here: loaded only when a bar is drawn (a terminal), not at every command's start
            from tqdm import tqdm

            bar = tqdm(unit="B", unit_scale=True, file=sys.stderr)

        def progress(done, total):
            if bar is not None:
                bar.total = total
                bar.n = done
                bar.refresh()

        if bar is None:
            path = download.fetch(args.model_id, progress=progress)
        else:
            # Log lines during the download (e.g. a checksum recorded on first use) go above the bar, not glued
            # to the end of its line.
            from tqdm.contrib.logging import logging_redirect_tqdm

            with logging_redirect_tqdm():
                path = download.fetch(args.model_id, progress=progress)
            bar.close()
        print(path)
    elif action == "import":
        print(download.import_file(args.model_id, args.file))
    elif action == "remove":
        for path in download.remove(args.model_id):
            print(f"removed {path}")
    return 0


def _route_library_warnings(verbose: bool) -> None:
    """Library warnings (pydicom, highdicom, torch: Python ``warnings``; ITK/GDCM: SimpleITK's own logger) go to
    the log, shown with -v, instead of raw onto stderr between the command's own lines."""
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.DEBUG if verbose else logging.ERROR)
    # here: io imports SimpleITK and numpy, which 'models' never needs
    from ..io import route_itk_messages_to_logging

    route_itk_messages_to_logging()  # ITK's text at INFO (shown with -v), its errors at WARNING


def _on_sigterm(signum, frame):
    # Later SIGTERMs are ignored while the first one unwinds: cleanup (removing a staging folder) must finish.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    note_interrupt(Terminated)
    raise Terminated()


def _on_sigint(signum, frame):
    # Python's own handler, plus a note: a KeyboardInterrupt raised while an object's __del__ runs is printed and
    # dropped by Python ("Exception ignored"), and the batch then ran to the end and exited 0. The note makes the
    # next progress check raise it again.
    note_interrupt(KeyboardInterrupt)
    raise KeyboardInterrupt()


def install_signal_handlers():
    """SIGTERM and SIGINT handlers for a CLI run (main thread only); returns a function that restores the
    previous ones."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    clear_interrupt()
    previous = {sig: signal.signal(sig, handler) for sig, handler in ((signal.SIGTERM, _on_sigterm),
                                                                      (signal.SIGINT, _on_sigint))}

    def restore():
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        clear_interrupt()

    return restore


def _interrupted_message(args, exc: KeyboardInterrupt) -> str:
    written = getattr(exc, "written", None)
    if written:
        return written
    if args.command in ("segment", "demo", "synthesize"):
        return "nothing was written (the output folder appears only when a run completes)"
    if args.command in ("threshold", "review", "report", "export", "summarize", "evaluate"):
        return "each file is replaced whole, so none is half-written; run the command again to finish"
    return "stopped"


class _OneLineWarnings(logging.Formatter):
    """Without -v: AtlasSeg's own warnings as one 'atlasseg: warning: ...' line each (like the run's warnings);
    other libraries' records (pydicom, highdicom, ITK...) only with -v, where every record keeps its logger name."""

    def format(self, record):
        return f"atlasseg: {record.levelname.lower()}: {' '.join(record.getMessage().split())}"


def _ours_or_error(record) -> bool:
    return record.name.split(".")[0] in ("atlasseg", "AtlasSegLib") or record.levelno >= logging.ERROR


def _configure_logging(verbose: bool) -> None:
    if verbose:
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineWarnings())
    handler.addFilter(_ours_or_error)
    logging.basicConfig(level=logging.WARNING, handlers=[handler])


def main(argv=None) -> int:
    """The CLI; returns the exit code (listed in ``atlasseg --help``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = getattr(args, "verbose", False)
    _configure_logging(verbose)
    if args.command is None:
        parser.print_help()
        return 2
    restore = install_signal_handlers()
    try:
        code = _run(args)
        sys.stdout.flush()  # here, not at exit: a reader that went away (| head) is handled below
        return code
    except BrokenPipeError:
        # The reader of our output closed it (e.g. 'atlasseg review out | head -1'): stop quietly. Output still
        # buffered must not be flushed again at exit, so stdout now points at /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141
    finally:
        restore()


# command -> (module relative to this package, or None for one defined here; function; takes the progress sink).
# The commands in their own modules are imported when they run: each keeps its heavy imports out of the CLI's start.
COMMANDS = {
    "segment": (None, "cmd_segment", True),
    "demo": (None, "cmd_demo", True),
    "batch": (None, "cmd_batch", True),
    "threshold": (None, "cmd_threshold", False),
    "models": (None, "cmd_models", False),
    "review": (".review", "cmd_review", False),
    "report": (".report", "cmd_report", True),
    "evaluate": (".evaluate", "cmd_evaluate", False),
    "export": (".export", "cmd_export", False),
    "summarize": (".summarize", "cmd_summarize", True),
    "synthesize": (".synthesize", "cmd_synthesize", False),
    "estimate": (".estimate", "cmd_estimate", False),
}


def _run(args) -> int:
    progress_json = getattr(args, "progress_json", False)
    quiet = getattr(args, "quiet", False)
    sink = _ProgressSink(json_lines=progress_json, bar=not quiet and not progress_json and sys.stderr.isatty())
    try:
        if args.command != "models":
            _route_library_warnings(getattr(args, "verbose", False))
            check_output_places(args)  # an unwritable output place is refused before any work
        module, name, takes_sink = COMMANDS[args.command]
        # here: a command's own module (numpy, SimpleITK, matplotlib, pydicom...) loads only when it runs
        where = importlib.import_module(module, __package__) if module else sys.modules[__name__]
        command = getattr(where, name)  # looked up at call time, so a test's monkeypatch of it takes effect
        return command(args, sink) if takes_sink else command(args)
    except BrokenPipeError:
        raise
    except AtlasSegError as exc:
        sink.close()
        sink.event(event="error", message=str(exc), exit_code=exc.exit_code)
        print(f"atlasseg: {'cancelled' if isinstance(exc, Cancelled) else 'error'}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated)
        clear_interrupt()
        sink.close()
        code = 143 if isinstance(exc, Terminated) else 130
        what = "terminated" if code == 143 else "interrupted"
        sink.event(event="error", message=f"{what}: {_interrupted_message(args, exc)}", exit_code=code)
        print(f"atlasseg: {what}; {_interrupted_message(args, exc)}", file=sys.stderr)
        return code
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence: report, exit 1
        sink.close()
        log.debug("internal error", exc_info=True)
        sink.event(event="error", message=f"internal error: {exc}", exit_code=1)
        print(f"atlasseg: internal error: {type(exc).__name__}: {exc} (run with -v for the traceback; please report it)",
              file=sys.stderr)
        return 1
    finally:
        sink.close()
    return 2
