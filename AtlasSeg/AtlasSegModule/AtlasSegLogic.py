"""AtlasSeg logic: everything the Slicer module does that needs no Qt.

The widget (``AtlasSeg.py``) only reads the panel and calls the functions here; tests call them directly with
real Slicer classes from ``slicer-core``. Responsibilities:

* the model registry as the panel shows it (``ModelInfo``), device detection and the advice shown with it;
* preparing a run (input written through ``AtlasSegBridge``, the engine command line) and starting it in a
  separate process (``AtlasSegRunner.EngineRunner``);
* turning the engine's output folder into a segmentation node (names, colours, terminology, reference
  geometry, subject hierarchy) and probability volumes linked to it, with one level of undo when an existing
  segmentation is overwritten.
"""

import importlib.metadata
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

from AtlasSegModule import LIBRARY_PARENT_DIR  # importing the package puts AtlasSegLib on sys.path
from AtlasSegModule import AtlasSegBridge as bridge
from AtlasSegModule import AtlasSegDependencies as deps
from AtlasSegModule.AtlasSegRunner import (EngineRunner, ProcessOutput, RunState, downloadCommand,
                                           pythonExecutable)

# Slicer >= 5.4 has typed parameter nodes; slicer-core (headless tests) does not. (This file has no
# "from __future__ import annotations": parameterNodeWrapper reads the field annotations as real types.)
try:
    from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
    from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
    from typing import Annotated
except ImportError:
    parameterNodeWrapper = None

log = logging.getLogger(__name__)


DEMO_MODEL_ID = "atlasseg-demo"
DEMO_PHANTOM_SEED = 2024  # as `atlasseg demo`; the demo model was trained on seeds 0..31
DEVICES = ("auto", "cpu", "cuda")
# The engine's --backend / --precision choices (AtlasSegLib.backends.BACKENDS/PRECISIONS; not imported here:
# that module imports torch, which Slicer may not have yet when the panel is built).
BACKENDS = ("auto", "torch", "openvino")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
# The engine's --quality presets (AtlasSegLib.pipeline.QUALITIES, which imports torch), as the panel offers them.
QUALITIES = ("reference", "balanced", "fast")
QUALITY_TITLES = {"reference": "Reference", "balanced": "Balanced", "fast": "Fast (3 mm)"}
QUALITY_TOOLTIP = (
    "Reference: the published settings (1.5 mm, overlap 0.75, fp32): the most windows, the slowest, what the "
    "papers report.\n"
    "Balanced: 1.5 mm, overlap 0.5, INT8 on the CPU where it agrees with fp32 on this CT (else fp32/bf16): about "
    "a fifth of the windows, the choice on a CPU without a GPU.\n"
    "Fast: 3 mm, overlap 0.5, INT8 where it agrees: minutes on a CPU, less detail on small structures and tumors.\n"
    "The estimate beside each is for this CT on this computer (windows; time once this computer has run the model).")
# The engine's default on a CPU (AtlasSegLib.pipeline.CPU_QUALITY, what the CLI's --quality auto picks there; the
# README's "Which preset on a CPU" argues it from measured agreement and time). The panel always passes the combo's
# value; on a GPU Balanced's INT8 becomes fp16.
DEFAULT_QUALITY = "balanced"
# GPUs with less memory than this run out of memory at full resolution (the users' 8 GB cards, minus overhead).
SMALL_GPU_GIB = 7.0

TERMINOLOGY_CONTEXT = "Segmentation category and type - AtlasSeg"  # shipped: Resources/Terminology (terminology.py)
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
PROBABILITY_ROLE = "AtlasSegProbability"
SEGMENTATION_ROLE = "AtlasSegSegmentation"
INPUT_VOLUME_ROLE = "AtlasSegInputVolume"
ATTRIBUTE = "AtlasSeg."
PROBABILITY_SCALE = 255  # probability maps store round(p × 255) as uint8
MASK_TOLERANCE_MM = 1e-3  # engine outputs are NIfTI (float32 geometry): allow µm-level differences


# --------------------------------------------------------------------------------------------- parameters
if parameterNodeWrapper is not None:

    @parameterNodeWrapper
    class AtlasSegParameterNode:
        """The module's state, saved with the scene.

        inputVolume: the CT to segment.
        modelId: id of the selected model card.
        excludedStructures: comma-separated structures the user unticked (all others are produced).
        device: "auto", "cpu" or "cuda".
        backend, precision: the engine's --backend (auto, torch, openvino) and --precision (auto, fp32, bf16,
            fp16, int8).
        quality: the engine's --quality preset (reference, balanced, fast), see QUALITY_TOOLTIP.
        overwrite: put the result into ``outputSegmentation`` instead of a new segmentation node.
        outputSegmentation: the segmentation to overwrite.
        show3D: build closed surfaces and show them in 3D after a run.
        """

        inputVolume: vtkMRMLScalarVolumeNode
        modelId: str = DEMO_MODEL_ID
        excludedStructures: str = ""
        device: Annotated[str, Choice(list(DEVICES))] = "auto"
        backend: Annotated[str, Choice(list(BACKENDS))] = "auto"
        precision: Annotated[str, Choice(list(PRECISIONS))] = "auto"
        quality: Annotated[str, Choice(list(QUALITIES))] = DEFAULT_QUALITY
        overwrite: bool = False
        outputSegmentation: vtkMRMLSegmentationNode
        show3D: bool = False


# ------------------------------------------------------------------------------------------- plain data
# Export formats offered by the module (key as in ``atlasseg export --format``, label for the panel). Here, in a
# module Slicer imports at startup, so the Export section can list them before the export packages are installed.
EXPORT_FORMATS = (
    ("dicom-seg", "DICOM SEG"),
    ("rtstruct", "DICOM RTSTRUCT (radiotherapy planning)"),
    ("seg-nrrd", "Slicer segmentation (.seg.nrrd)"),
    ("abdomenatlas", "AbdomenAtlas case folder (NIfTI)"),
)
# The Export section's "ROI names" choices (the library's name schemes, or the user's mapping file over the model
# names) and RTSTRUCT tumor ROI types; AtlasSegLib.roinames and .errors are plain Python, importable before any
# install.
from AtlasSegLib.errors import AtlasSegError, InputError  # noqa: E402
from AtlasSegLib.roinames import NAME_SCHEME_LABELS, TUMOR_ROI_TYPE_LABELS  # noqa: E402

EXPORT_ROI_NAMES = NAME_SCHEME_LABELS + (("file", "Mapping file (JSON/CSV)…"),)
EXPORT_TUMOR_ROI_TYPES = TUMOR_ROI_TYPE_LABELS


@dataclass(frozen=True)
class RunOptions:
    """What to run. Exactly one of ``modelId`` / ``modelCardPath`` names the model.

    ``structures`` empty means every structure of the model. ``quality`` is the engine's ``--quality`` ("" = the
    engine's default, ``auto``: Balanced on a CPU, the card's settings on a GPU or with ``fast``); ``fast`` goes
    with "" or "fast" only (the engine refuses ``--fast`` with reference/balanced).
    """

    modelId: str = DEMO_MODEL_ID
    modelCardPath: str = ""
    weightsPath: str = ""
    structures: tuple = ()
    device: str = "auto"
    fast: bool = False
    backend: str = "auto"
    precision: str = "auto"
    quality: str = ""

    def __post_init__(self):
        if self.quality and self.quality not in QUALITIES:
            raise ValueError(f"quality must be one of {', '.join(QUALITIES)} (or empty), not '{self.quality}'")
        if self.fast and self.quality not in ("", "fast"):
            raise ValueError(f"fast contradicts quality '{self.quality}': use quality 'fast'")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, not '{self.device}'")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not '{self.backend}'")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not '{self.precision}'")
        if not self.modelId and not self.modelCardPath:
            raise ValueError("RunOptions needs a modelId or a modelCardPath")


@dataclass(frozen=True)
class StructureInfo:
    name: str
    kind: str  # "organ" or "tumor"
    color: tuple  # RGB 0-255
    meaning: str  # SNOMED meaning of the type, e.g. "Liver"


@dataclass(frozen=True)
class ModelInfo:
    """A model as the Model section lists it."""

    id: str
    title: str
    description: str
    structures: tuple  # StructureInfo
    license: str
    citation: str
    homepage: str
    sizeBytes: Optional[int]
    weightsFilename: str
    downloaded: bool  # weights in the cache or shipped with the extension
    downloadable: bool  # a URL is known

    @property
    def organs(self) -> tuple:
        return tuple(s.name for s in self.structures if s.kind != "tumor")

    @property
    def tumors(self) -> tuple:
        return tuple(s.name for s in self.structures if s.kind == "tumor")

    def matches(self, text: str) -> bool:
        """Whether every word of a search ``text`` occurs in the id, title, license or a structure name."""
        haystack = " ".join([self.id, self.title, self.license, self.description]
                            + [s.name for s in self.structures]).lower().replace("_", " ")
        return all(word in haystack for word in text.lower().replace("_", " ").split())

    def licenseShort(self) -> str:
        """The license in a few characters for the model table ("Apache-2.0", "not stated")."""
        if self.license.lower().startswith("not stated"):
            return "not stated"
        return re.split(r" \(|;|,", self.license, maxsplit=1)[0].strip()

    def sizeText(self) -> str:
        if self.sizeBytes is None:
            return "size unknown"
        if self.sizeBytes < 1e6:
            return f"{self.sizeBytes / 1e3:.0f} kB"
        return f"{self.sizeBytes / 1e6:.0f} MB"

    def sizeColumnText(self) -> str:
        """The size for the model table: like ``sizeText`` but "?" when unknown, to keep the column narrow."""
        return "?" if self.sizeBytes is None else self.sizeText()

    def statusText(self) -> str:
        if self.downloaded:
            return "ready"
        return "not downloaded" if self.downloadable else "weights file needed"


@dataclass(frozen=True)
class DeviceInfo:
    """What torch sees. ``error`` is set (and the rest empty) when torch cannot be imported."""

    torchVersion: str = ""
    cudaBuild: str = ""  # torch.version.cuda; empty for a CPU-only build
    gpuName: str = ""
    gpuMemoryGiB: float = 0.0
    error: str = ""

    @property
    def hasGpu(self) -> bool:
        return bool(self.gpuName)

    def summary(self) -> str:
        if self.error:
            return self.error
        build = f"CUDA {self.cudaBuild} build" if self.cudaBuild else "CPU-only build"
        gpu = f"{self.gpuName}, {self.gpuMemoryGiB:.1f} GiB" if self.hasGpu else "no CUDA GPU detected"
        return f"torch {self.torchVersion} ({build}); {gpu}"


@dataclass(frozen=True)
class LoadedResults:
    """What ``loadResults`` put into the scene."""

    segmentationNode: object
    segmentIds: tuple
    probabilityNodes: dict  # tumor name -> vtkMRMLScalarVolumeNode
    emptyStructures: tuple  # produced by the engine but without a single voxel
    volumesMl: dict  # structure name -> volume in ml
    warnings: tuple = ()  # report.json "warnings": demo model on a real CT, implausible labels, regularized input…
    backend: str = ""  # the backend that ran the network, e.g. "openvino fp32" (readRunBackend)


@dataclass
class PreparedRun:
    """A run's temporary folder, input file and command line. ``cleanup()`` deletes the folder."""

    tempDir: Path
    inputPath: Path
    outputDir: Path
    command: list
    env: dict
    cwd: str
    options: RunOptions

    def cleanup(self) -> None:
        shutil.rmtree(self.tempDir, ignore_errors=True)


@dataclass
class _OverwriteSnapshot:
    """Enough to put an overwritten segmentation and its probability volumes back as they were."""

    history: object  # vtkSegmentationHistory holding the segments before the run
    referenceGeometry: str
    probabilityReferences: list  # node IDs referenced before the run
    probabilityStates: list = field(default_factory=list)  # (node ID, array, VolumeGeometry, attributes)
    createdNodeIds: list = field(default_factory=list)


# ------------------------------------------------------------------------------------- pure functions
def readRunBackend(outputDir) -> str:
    """What ran the network (report.json ``model.backend``/``precision``, with the reason when the engine fell
    back to torch), e.g. "openvino bf16"; "" when the report does not say."""
    from AtlasSegLib.run import Run  # here: needs jsonschema (installed on first run)

    try:
        model = Run(outputDir, check=False).read_report().get("model") or {}
    except (OSError, ValueError, AttributeError, AtlasSegError) as exc:
        log.warning("no backend read from %s: %s", outputDir, exc)
        return ""
    if not model.get("backend"):
        return ""
    text = f"{model['backend']} {model.get('precision', '')}".strip()
    if model.get("backend_note"):
        text += f" ({model['backend_note']})"
    return text


def readRunWarnings(outputDir) -> tuple:
    """The engine's warnings of a run (``report.json`` ``"warnings"``), shown in the panel after the run."""
    from AtlasSegLib.run import Run  # here: needs jsonschema (installed on first run)

    try:
        warnings = Run(outputDir, check=False).read_report().get("warnings") or []
    except (OSError, ValueError, AttributeError, AtlasSegError) as exc:
        log.warning("no warnings read from %s: %s", outputDir, exc)
        return ()
    return tuple(str(w) for w in warnings)


def engineCommand(python: str, inputPath, outputDir, options: RunOptions) -> list:
    """The engine command line for one run (see ``python -m AtlasSegLib segment --help``)."""
    command = [python, "-m", "AtlasSegLib", "segment", str(inputPath), "-o", str(outputDir)]
    if options.modelCardPath:
        command += ["--model-card", str(options.modelCardPath)]
    else:
        command += ["--model", options.modelId]
    if options.weightsPath:
        command += ["--weights", str(options.weightsPath)]
    if options.structures:
        command += ["--structures", ",".join(options.structures)]
    command += ["--device", options.device, "--backend", options.backend, "--precision", options.precision]
    if options.quality:
        command += ["--quality", options.quality]
    elif options.fast:
        command.append("--fast")
    command.append("--progress-json")
    return command


def terminologyEntry(structure: dict) -> str:
    """Slicer's terminology string for a class of a model card (``vtkSegment`` tag ``TerminologyEntry``).

    Tumors carry category "Morphologically Altered Structure", type "Neoplasm" (or "Cyst") and the organ as
    anatomic region, all from the card's class table.

    Example:
        liver -> "Segmentation category and type - AtlasSeg~SCT^123037004^Anatomical
        Structure~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^" (one line)
    """
    def code(key):
        entry = structure.get(key) or {}
        return str(entry.get("code", "")), str(entry.get("scheme", "")), str(entry.get("meaning", ""))

    category, typ, modifier, region = code("category"), code("type"), code("type_modifier"), code("region")
    return slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(
        TERMINOLOGY_CONTEXT, *category, *typ, *modifier, ANATOMIC_CONTEXT, *region, "", "", "")


def qualityHint(device: DeviceInfo, requestedDevice: str, fast: bool) -> str:
    """One or two sentences of advice shown under the device line (empty when there is nothing to say)."""
    if device.error:
        return ("PyTorch is not installed yet: Apply installs it through the PyTorch extension "
                "(pick a CUDA build there if this computer has an NVIDIA GPU).")
    hints = []
    if not device.cudaBuild:
        hints.append("This torch build has no CUDA support, so a GPU cannot be used; reinstall torch with CUDA "
                     "from the PyTorch Utils module to use an NVIDIA GPU.")
    if requestedDevice == "cuda" and not device.hasGpu:
        hints.append("GPU was chosen but none is available: the run will fail; choose Auto or CPU.")
    onCpu = requestedDevice == "cpu" or not device.hasGpu
    if onCpu and not fast:
        hints.append("On the CPU a full-resolution run takes many minutes: choose Quality Fast mode (3 mm) for a "
                     "result in a few minutes; Balanced runs a fifth of Reference's windows.")
    elif not onCpu and device.gpuMemoryGiB < SMALL_GPU_GIB and not fast:
        hints.append(f"This GPU has {device.gpuMemoryGiB:.1f} GiB; full resolution may run out of GPU memory "
                     "(the engine then continues on the CPU, slowly). Fast mode needs far less.")
    return " ".join(hints)


def applyBlocker(*, inputVolume, model: Optional[ModelInfo], structures, overwrite: bool,
                 outputSegmentation, dependenciesError: str = "") -> str:
    """Why Apply cannot run now, as a sentence for its tooltip; empty when it can."""
    if dependenciesError:
        return dependenciesError
    if inputVolume is None:
        return "Select an input CT volume (or click Load demo phantom)."
    if inputVolume.GetImageData() is None:
        return f"The input volume '{inputVolume.GetName()}' has no voxels."
    if model is None:
        return "Select a model in the Model section."
    if not model.downloaded and not model.downloadable:
        return (f"The weights of {model.title} are not available: import the weights file "
                f"({model.weightsFilename or 'checkpoint'}) with Import weights file.")
    if not structures:
        return "Tick at least one structure in the Structures section."
    if overwrite and outputSegmentation is None:
        return "Select the segmentation to overwrite in the Output section, or untick Overwrite."
    return ""


def formatDuration(seconds: float) -> str:
    """``75.4`` -> ``"1:15"``, ``3725`` -> ``"1:02:05"`` (elapsed time as clocks show it)."""
    seconds = int(max(0.0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


STAGE_TITLES = {"read": "Reading the CT", "preprocess": "Preprocessing", "inference": "Running the model",
                "invert": "Resampling to the input grid", "postprocess": "Post-processing", "write": "Writing results"}


def progressText(stage: str, fraction: float, message: str, elapsedSeconds: float) -> str:
    """The status line under the progress bar, e.g. "Running the model (window 12/30) — 42% — 1:15 elapsed"."""
    title = STAGE_TITLES.get(stage, stage.capitalize() if stage else "Starting")
    detail = f" ({message})" if message else ""
    return f"{title}{detail} — {100 * fraction:.0f}% — {formatDuration(elapsedSeconds)} elapsed"


def orientationCode(directions) -> str:
    """Three letters naming where each index axis points, e.g. "LPS" for DICOM-style axial CT.

    A ``*`` suffix marks an oblique grid (an axis more than ~2.5° away from the nearest RAS axis).
    """
    letters = []
    oblique = False
    matrix = np.asarray(directions, dtype=float)
    for column in range(3):
        axis = matrix[:, column]
        dominant = int(np.argmax(np.abs(axis)))
        letters.append(("RL", "AP", "SI")[dominant][0 if axis[dominant] > 0 else 1])
        oblique |= abs(axis[dominant]) < 0.999
    return "".join(letters) + ("*" if oblique else "")


def describeVolume(volumeNode) -> str:
    """One line about the input volume: size, spacing, orientation, value range hint."""
    if volumeNode is None or volumeNode.GetImageData() is None:
        return ""
    geometry = bridge.VolumeGeometry.fromVolumeNode(volumeNode)
    size = "×".join(str(n) for n in geometry.size)
    spacing = "×".join(f"{s:.2g}" for s in geometry.spacing)
    text = f"{size} voxels, {spacing} mm, {orientationCode(geometry.directions)}"
    if orientationCode(geometry.directions).endswith("*"):
        text += " (oblique: results come back on this grid)"
    return text


def modelDetailsHtml(model: ModelInfo) -> str:
    """The model details box: description, structures, license, citation, weights."""
    organs = ", ".join(escape(n) for n in model.organs) or "none"
    tumors = ", ".join(escape(n) for n in model.tumors) or "none"
    link = f' — <a href="{escape(model.homepage)}">{escape(model.homepage)}</a>' if model.homepage else ""
    weights = escape(model.weightsFilename or "weights")
    return (f"<b>{escape(model.title)}</b> <small>({escape(model.id)})</small><br>{escape(model.description)}"
            f"<p><b>Organs ({len(model.organs)}):</b> {organs}<br><b>Tumors ({len(model.tumors)}):</b> {tumors}</p>"
            f"<p><b>License:</b> {escape(model.license)}<br><b>Cite:</b> {escape(model.citation)}{link}</p>"
            f"<p><b>Weights:</b> {weights}, {model.sizeText()}, {model.statusText()}</p>")


def readOutputCard(outputDir) -> dict:
    """``outputDir/card.json`` (the model card of the run) with every class completed (colour, codes, kind).

    Raises:
        ValueError: the file is missing, unreadable or has no class table.
    """
    # here: AtlasSegLib.run needs jsonschema, installed by the module on first run (this file loads at start)
    from AtlasSegLib.run import Run

    run = Run(outputDir, check=False)  # the run folder's owner reads card.json
    path = run.card_path
    if not path.is_file():
        raise ValueError(f"{outputDir} is not an AtlasSeg output folder: card.json is missing")
    try:
        card = run.read_card_json()
    except (OSError, InputError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    classes = card.get("classes")
    if not isinstance(classes, list) or not classes:
        raise ValueError(f"{path} has no class table ('classes')")
    needed = ("name", "kind", "color", "category", "type", "label")
    if not all(all(key in c for key in needed) for c in classes):
        # here: AtlasSegLib.card needs jsonschema, installed by the module on first run (this file loads at start)
        from AtlasSegLib.card import complete_class

        card["classes"] = [{"label": index + 1, **complete_class(c)} for index, c in enumerate(classes)]
    return card


def modelInfoFromCard(card, downloaded: bool) -> ModelInfo:
    """A ``ModelInfo`` for an ``AtlasSegLib.card.ModelCard``; ``downloaded``: its weights are usable here."""
    weights = card.weights or {}
    structures = tuple(
        StructureInfo(name=c.name, kind=c.kind, color=tuple(int(v) for v in c.color),
                      meaning=str((c.type or {}).get("meaning", c.name)))
        for c in card.classes)
    return ModelInfo(
        id=card.id, title=card.title, description=str(card.raw.get("description", "")), structures=structures,
        license=card.license, citation=str(card.raw.get("citation", "")), homepage=str(card.raw.get("homepage", "")),
        sizeBytes=weights.get("size"), weightsFilename=str(weights.get("filename") or weights.get("file") or ""),
        downloaded=downloaded, downloadable=bool(weights.get("url")))


# What torch sees, printed as one JSON line by the engine's Python. It runs in a process of its own: importing torch
# in Slicer's process froze the panel for seconds on every first opening and kept torch and CUDA loaded for the
# whole session (a later torch upgrade then needed a restart).
PROBE_SCRIPT = r"""
import json
try:
    import torch
except ImportError as exc:
    print(json.dumps({"error": f"PyTorch is not installed ({exc})"}))
    raise SystemExit(0)
info = {"torchVersion": torch.__version__, "cudaBuild": torch.version.cuda or ""}
try:
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        info["gpuName"] = properties.name
        info["gpuMemoryGiB"] = properties.total_memory / 2**30
except RuntimeError as exc:
    info = {**info, "error": f"torch {info['torchVersion']} cannot use the GPU: {exc}"}
print(json.dumps(info))
"""


class DeviceProbe:
    """``PROBE_SCRIPT`` in the engine's Python, without blocking: ``poll()`` returns the ``DeviceInfo`` once it
    has ended, else None. When torch is not installed (its metadata says so) no process is started."""

    def __init__(self, python: Optional[str] = None, timeoutSeconds: float = 300):
        self._process = None
        self.info: Optional[DeviceInfo] = None
        try:
            importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            self.info = DeviceInfo(error="PyTorch is not installed")
            return
        self._process = ProcessOutput([python or pythonExecutable(), "-c", PROBE_SCRIPT],
                                      timeoutSeconds=timeoutSeconds)

    def poll(self) -> Optional[DeviceInfo]:
        if self.info is None and self._process.poll():
            self.info = parseProbeOutput(self._process.output)
        return self.info

    def wait(self) -> DeviceInfo:
        while self.poll() is None:
            time.sleep(0.05)
        return self.info

    def cancel(self) -> None:
        if self._process is not None:
            self._process.cancel()


def parseProbeOutput(output: str) -> DeviceInfo:
    """The ``DeviceInfo`` of ``PROBE_SCRIPT``'s output (its last JSON line); an error naming the output else."""
    fields = {f for f in DeviceInfo.__dataclass_fields__}
    for line in reversed(output.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(data, dict):
                return DeviceInfo(**{k: v for k, v in data.items() if k in fields})
    tail = " ".join(output.strip().splitlines()[-3:])
    return DeviceInfo(error=f"the GPU check failed ({tail or 'no output'})")


def probeDevice(python: Optional[str] = None) -> DeviceInfo:
    """What torch in the engine's Python sees, asked in a separate process (blocking; the panel polls a
    ``DeviceProbe`` instead). Torch is never imported into this process."""
    return DeviceProbe(python).wait()


@dataclass(frozen=True)
class QualityEstimate:
    """What ``atlasseg estimate --json`` said for one CT and model: per quality {"windows", "total_s", "timing",
    "backend", "precision", ...} (``presets``), or why there is no estimate (``error``)."""

    presets: dict = field(default_factory=dict)
    device: str = ""
    error: str = ""

    def text(self, quality: str) -> str:
        """E.g. "150 windows, ~4 min"; "" when this preset has no estimate (a model without a fast spacing)."""
        from AtlasSegLib.estimate import describe  # plain Python: no torch

        entry = self.presets.get(quality)
        return describe(entry) if entry else ""


def estimateCommand(python: str, inputPath, modelId: str = "", modelCardPath: str = "", device: str = "auto") -> list:
    """The engine command line that estimates each preset for a CT (``python -m AtlasSegLib estimate --help``)."""
    command = [python, "-m", "AtlasSegLib", "estimate", str(inputPath)]
    command += ["--model-card", str(modelCardPath)] if modelCardPath else ["--model", modelId]
    return command + ["--device", device, "--json"]


def parseEstimateOutput(output: str, returnCode: int) -> QualityEstimate:
    """The ``QualityEstimate`` of ``estimateCommand``'s output: its JSON object, else the engine's error line."""
    for line in reversed(output.splitlines()):
        line = line.strip()
        if returnCode == 0 and line.startswith("{"):
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(data, dict) and isinstance(data.get("presets"), dict):
                return QualityEstimate(presets=data["presets"], device=str(data.get("device", "")))
    said = [line.split("error:", 1)[1].strip() for line in output.splitlines() if "error:" in line]
    tail = " ".join(output.strip().splitlines()[-2:])
    return QualityEstimate(error=said[-1] if said else f"the estimate failed ({tail or f'exit code {returnCode}'})")


class EstimateProbe:
    """``atlasseg estimate`` for a volume node in the engine's Python, without blocking: the volume is written
    to a temporary ``.mha`` as the run's input is (``AtlasSegBridge.writeVolumeNode``: the estimate crops the
    body, so it needs the voxels, not only the geometry), then ``poll()`` returns the ``QualityEstimate`` once the
    process has ended (else None) and deletes the file. Torch is imported there, never here."""

    def __init__(self, volumeNode, modelId: str, device: str = "auto", python: Optional[str] = None,
                 timeoutSeconds: float = 300):
        self.result: Optional[QualityEstimate] = None
        self._tempDir = Path(tempfile.mkdtemp(prefix="AtlasSeg-estimate-"))
        try:
            inputPath = bridge.writeVolumeNode(volumeNode, self._tempDir / "input.mha")
            pythonPath = [str(LIBRARY_PARENT_DIR), os.environ.get("PYTHONPATH", "")]
            self._process = ProcessOutput(estimateCommand(python or pythonExecutable(), inputPath, modelId,
                                                          device=device),
                                          env={"PYTHONPATH": os.pathsep.join(p for p in pythonPath if p)},
                                          cwd=str(LIBRARY_PARENT_DIR), timeoutSeconds=timeoutSeconds)
        except Exception:
            shutil.rmtree(self._tempDir, ignore_errors=True)
            raise

    def poll(self) -> Optional[QualityEstimate]:
        if self.result is None and self._process.poll():
            self.result = parseEstimateOutput(self._process.output, self._process.returnCode)
            shutil.rmtree(self._tempDir, ignore_errors=True)
        return self.result

    def wait(self) -> QualityEstimate:
        while self.poll() is None:
            time.sleep(0.05)
        return self.result

    def cancel(self) -> None:
        self._process.cancel()
        self._process.wait()
        shutil.rmtree(self._tempDir, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ logic
class AtlasSegLogic(ScriptedLoadableModuleLogic):
    """Computation and scene changes of the AtlasSeg module; usable from scripts without the widget.

    Example (in Slicer's Python console)::

        logic = AtlasSegLogic()
        volume = logic.loadDemoPhantom()
        results = logic.runBlocking(volume, RunOptions(modelId="atlasseg-demo", fast=True))
        print(results.volumesMl)
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._snapshots = {}  # segmentation node ID -> _OverwriteSnapshot
        self._deviceInfo: Optional[DeviceInfo] = None
        self._deviceProbe: Optional[DeviceProbe] = None
        self._estimate = None  # (key, EstimateProbe) while an estimate runs
        self._estimates = {}  # estimateKey -> QualityEstimate

    def getParameterNode(self):
        node = super().getParameterNode()
        return AtlasSegParameterNode(node) if parameterNodeWrapper is not None else node

    # ---------------------------------------------------------------------------------------- registry
    def models(self) -> list:
        """Every built-in model, as ``ModelInfo``, sorted by title. A card that fails to load is left out (logged)."""
        # here: AtlasSegLib.card needs jsonschema, installed by the module on first run (this file loads at start)
        from AtlasSegLib import card as cards

        found = []
        for modelId in cards.builtin_card_ids():
            try:
                found.append(self.modelInfo(modelId))
            except AtlasSegError as exc:
                log.warning("model card %s is not usable: %s", modelId, exc)
        return sorted(found, key=lambda m: m.title)

    def modelInfo(self, modelId: str) -> ModelInfo:
        # here: AtlasSegLib.card and .download need jsonschema, installed by the module on first run
        from AtlasSegLib import card as cards
        from AtlasSegLib import download

        card = cards.builtin_card(modelId)
        try:
            downloaded = bool(download.is_cached(card))
        except AtlasSegError as exc:
            # One odd card (e.g. shipped weights missing from a broken install) must not empty the model list.
            log.warning("cannot tell whether the weights of %s are available: %s", modelId, exc)
            downloaded = False
        return modelInfoFromCard(card, downloaded=downloaded)

    def downloadModel(self, modelId: str, progress=None, cancelled=None) -> Path:
        """Download a model's weights into the cache (verified); ``progress(fraction, message)``."""
        # here: AtlasSegLib.download imports card (jsonschema, installed on first run)
        from AtlasSegLib import download

        def bytesProgress(done, total):
            if progress is not None:
                fraction = done / total if total else 0.0
                progress(fraction, f"{done / 1e6:.0f} of {total / 1e6:.0f} MB" if total else f"{done / 1e6:.0f} MB")

        return Path(download.fetch(modelId, progress=bytesProgress, cancel=cancelled))

    def startDownload(self, modelIdOrCardPath, logCallback=None) -> EngineRunner:
        """Download a model's weights into the cache in a separate process (what the panel uses: a thread in
        Slicer's process is starved of the GIL). ``poll()`` gives "progress" events; on success
        ``result.outdir`` is the weights file. Cancel kills the process; the next download resumes."""
        pythonPath = [str(LIBRARY_PARENT_DIR), os.environ.get("PYTHONPATH", "")]
        runner = EngineRunner(downloadCommand(pythonExecutable(), modelIdOrCardPath),
                              env={"PYTHONPATH": os.pathsep.join(p for p in pythonPath if p)},
                              cwd=str(LIBRARY_PARENT_DIR), logCallback=logCallback)
        runner.start()
        return runner

    def importWeights(self, modelId: str, path, pump=None) -> Path:
        """Copy a weights file the user downloaded by hand into the cache (checked against the card).

        Runs ``atlasseg models import`` in the engine's Python, in a process of its own: a file for a model
        without a published checksum is load-checked with torch, and torch never enters Slicer's process
        (audit D5); ``pump()`` is called every 30 ms while it waits so the GUI keeps painting.

        Raises:
            InputError: the file was refused; the message is the engine's own (what was wrong, what to do).
        """
        pythonPath = [str(LIBRARY_PARENT_DIR), os.environ.get("PYTHONPATH", "")]
        lines = []
        try:
            deps.runCommand([pythonExecutable(), "-m", "AtlasSegLib", "models", "import", modelId, str(path)],
                            pump=pump, onLine=lines.append, what="Importing the weights file",
                            env={"PYTHONPATH": os.pathsep.join(p for p in pythonPath if p)},
                            cwd=str(LIBRARY_PARENT_DIR))
        except deps.DependencyError as exc:
            said = [line.split("error:", 1)[1].strip() for line in lines if "error:" in line]
            raise InputError(said[-1] if said else str(exc)) from None
        # 'models import' prints the installed file's path on stdout; stderr lines (warnings) interleave with it.
        installed = [Path(line.strip()) for line in lines if Path(line.strip()).is_file()]
        if not installed:
            raise InputError("the import said nothing about the installed file:\n" + "\n".join(lines[-8:]))
        return installed[-1]

    def cacheFolder(self) -> Path:
        # here: AtlasSegLib.download imports card (jsonschema, installed on first run)
        from AtlasSegLib import download

        return Path(download.cache_dir())

    def deviceInfo(self, refresh: bool = False) -> DeviceInfo:
        """What torch sees, probed once in a separate process (blocking) unless ``refresh``."""
        if self._deviceInfo is None or refresh:
            self._deviceInfo = probeDevice()
        return self._deviceInfo

    def startDeviceProbe(self) -> DeviceProbe:
        """Start probing the device without waiting; ``pollDeviceProbe`` then returns the result once there."""
        if self._deviceProbe is not None:
            self._deviceProbe.cancel()
        self._deviceProbe = DeviceProbe()
        return self._deviceProbe

    def pollDeviceProbe(self) -> Optional[DeviceInfo]:
        """The started probe's ``DeviceInfo`` once it has ended (then also ``cachedDeviceInfo()``), else None."""
        if self._deviceProbe is None:
            return None
        info = self._deviceProbe.poll()
        if info is not None:
            self._deviceInfo = info
            self._deviceProbe = None
        return info

    def cachedDeviceInfo(self) -> Optional[DeviceInfo]:
        """The last ``deviceInfo()`` result, without probing (None before the first probe)."""
        return self._deviceInfo

    # ---------------------------------------------------------------------------------------- estimate
    @staticmethod
    def estimateKey(volumeNode, modelId: str, device: str) -> tuple:
        """What an estimate depends on: the volume (node and voxels' modification time), the model, the device."""
        image = volumeNode.GetImageData() if volumeNode is not None else None
        return (volumeNode.GetID() if volumeNode is not None else None, image.GetMTime() if image else 0,
                modelId, device)

    def startEstimate(self, volumeNode, modelId: str, device: str = "auto") -> Optional[QualityEstimate]:
        """Estimate each quality preset for ``volumeNode`` with ``modelId`` in a process of its own. Returns the
        estimate at once when this volume/model/device was estimated before (then nothing is started), else None
        (``pollEstimate`` gives it later). A running estimate for something else is cancelled."""
        key = self.estimateKey(volumeNode, modelId, device)
        if key in self._estimates:
            self.cancelEstimate()
            return self._estimates[key]
        if self._estimate is not None and self._estimate[0] == key:
            return None
        self.cancelEstimate()
        self._estimate = (key, EstimateProbe(volumeNode, modelId, device))
        return None

    def pollEstimate(self) -> Optional[QualityEstimate]:
        """The started estimate once its process has ended (remembered for its volume/model/device), else None."""
        if self._estimate is None:
            return None
        key, probe = self._estimate
        result = probe.poll()
        if result is not None:
            self._estimate = None
            if not result.error:
                self._estimates[key] = result
        return result

    def forgetEstimates(self) -> None:
        """Drop the remembered estimates (after a run: this computer's seconds per window changed)."""
        self._estimates.clear()

    def estimating(self) -> bool:
        return self._estimate is not None

    def cancelEstimate(self) -> None:
        if self._estimate is not None:
            self._estimate[1].cancel()
            self._estimate = None

    # -------------------------------------------------------------------------------------------- input
    def loadDemoPhantom(self, seed: int = DEMO_PHANTOM_SEED, name: str = "AtlasSeg phantom", **tumorControls):
        """Add a synthetic abdominal CT phantom as a volume, in a patient/study of its own.

        The default seed is the one ``atlasseg demo`` uses, outside the demo model's training phantoms.
        ``tumorControls`` (``tumor_count``, ``tumor_diameter_mm``, ``tumor_contrast_hu``) go to ``make_phantom``.
        """
        # here: phantom needs scipy, installed by the module on first run
        from AtlasSegLib.phantom import make_phantom

        return self.addPhantomVolume(make_phantom(seed=seed, tumors=True, **tumorControls), name)

    def addPhantomVolume(self, phantom, name: str = "AtlasSeg phantom"):
        """Add a ``phantom.Phantom``'s CT as a volume in a patient/study of its own, abdomen window."""
        seed = phantom.seed
        volume = bridge.volumeNodeFromSitk(phantom.image, name)
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        patient = shNode.CreateSubjectItem(shNode.GetSceneItemID(), "AtlasSeg phantom patient")
        study = shNode.CreateStudyItem(patient, f"Phantom CT (seed {seed})")
        item = shNode.GetItemByDataNode(volume)
        if item:
            shNode.SetItemParent(item, study)
        else:
            shNode.CreateItem(study, volume)
        displayNode = volume.GetDisplayNode()
        if displayNode is not None:
            # An abdomen window (W 400 / L 40) instead of the automatic one, which the air around the body skews.
            displayNode.AutoWindowLevelOff()
            displayNode.SetWindowLevel(400, 40)
        return volume

    # ---------------------------------------------------------------------------------------------- run
    def prepareRun(self, inputVolume, options: RunOptions, python: Optional[str] = None) -> PreparedRun:
        """Write the input to a new temporary folder and build the engine command (nothing is started)."""
        if inputVolume is None or inputVolume.GetImageData() is None:
            raise ValueError("select an input volume that has voxels")
        tempDir = Path(tempfile.mkdtemp(prefix="AtlasSeg-"))
        try:
            inputPath = bridge.writeVolumeNode(inputVolume, tempDir / "input.mha")
        except Exception:
            shutil.rmtree(tempDir, ignore_errors=True)
            raise
        outputDir = tempDir / "output"
        pythonPath = [str(LIBRARY_PARENT_DIR), os.environ.get("PYTHONPATH", "")]
        env = {"PYTHONPATH": os.pathsep.join(p for p in pythonPath if p)}
        command = engineCommand(python or pythonExecutable(), inputPath, outputDir, options)
        # ``python -m`` also puts the working folder first on sys.path: a second guarantee that the engine
        # imports this extension's AtlasSegLib even where a launcher rewrites PYTHONPATH.
        return PreparedRun(tempDir=tempDir, inputPath=inputPath, outputDir=outputDir, command=command, env=env,
                           cwd=str(LIBRARY_PARENT_DIR), options=options)

    def startRun(self, prepared: PreparedRun, logCallback=None) -> EngineRunner:
        runner = EngineRunner(prepared.command, env=prepared.env, cwd=prepared.cwd, logCallback=logCallback)
        runner.start()
        return runner

    def runBlocking(self, inputVolume, options: RunOptions, *, segmentationNode=None, timeoutSeconds=None,
                    python: Optional[str] = None, logCallback=None) -> LoadedResults:
        """Run the engine, wait, and load the results (for scripts and the self-test; the GUI does not block).

        Raises:
            RuntimeError: the run failed or was cancelled; the message is the engine's.
        """
        prepared = self.prepareRun(inputVolume, options, python=python)
        try:
            runner = self.startRun(prepared, logCallback=logCallback)
            result = runner.wait(timeout=timeoutSeconds)
            if result.state is not RunState.SUCCEEDED:
                raise RuntimeError(f"segmentation {result.state.value}: {result.errorMessage}")
            return self.loadResults(result.outdir or prepared.outputDir, inputVolume,
                                    segmentationNode=segmentationNode, structures=options.structures)
        finally:
            prepared.cleanup()

    # ------------------------------------------------------------------------------------------ results
    def loadResults(self, outputDir, inputVolume, *, segmentationNode=None, name: Optional[str] = None,
                    structures=()) -> LoadedResults:
        """Turn an engine output folder into a segmentation node (and probability volumes) in the scene.

        Args:
            outputDir: the engine's output folder (``segmentations/``, ``probabilities/``, ``card.json``).
            inputVolume: the volume the engine ran on; the masks lie on its grid.
            segmentationNode: overwrite this segmentation (segments of the same names are replaced, others
                kept; ``undoLastRun`` restores it). ``None`` creates a new segmentation node.
            name: name of a new segmentation node (default "<input volume> AtlasSeg").
            structures: load only these (default: every structure found in the folder).

        Returns:
            ``LoadedResults``. All files are read and checked before the scene is touched, so a bad folder
            raises ``ValueError`` and leaves the scene unchanged.
        """
        outputDir = Path(outputDir)
        geometry = bridge.VolumeGeometry.fromVolumeNode(inputVolume)
        wanted = set(structures or ())
        card = readOutputCard(outputDir)
        present = [c for c in card["classes"]
                   if (outputDir / "segmentations" / f"{c['name']}.nii.gz").is_file()
                   and (not wanted or c["name"] in wanted)]
        if not present:
            raise ValueError(f"{outputDir} holds no segmentation masks (segmentations/*.nii.gz)")
        probabilities = self._readProbabilities(outputDir, geometry, {c["name"] for c in present})
        layers, voxels = self._assembleLayers(outputDir, present, geometry, keepEmpty=set(probabilities))
        empty = tuple(c["name"] for c in present if voxels[c["name"]] == 0)
        voxelMl = float(np.prod(geometry.spacing)) / 1000.0
        volumesMl = {c["name"]: voxels[c["name"]] * voxelMl for c in present}

        scene = slicer.mrmlScene
        overwriting = segmentationNode is not None
        if overwriting:
            self._snapshots[segmentationNode.GetID()] = self._snapshot(segmentationNode)
            self._removeSegments(segmentationNode, [c["name"] for c in present])
        else:
            segmentationNode = scene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", scene.GenerateUniqueName(name or f"{inputVolume.GetName()} AtlasSeg"))
            segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(inputVolume)
        segmentationNode.SetAndObserveTransformNodeID(inputVolume.GetTransformNodeID())
        segmentationNode.SetNodeReferenceID(INPUT_VOLUME_ROLE, inputVolume.GetID())
        segmentationNode.SetAttribute(ATTRIBUTE + "Model", str(card.get("id", "")))
        segmentationNode.SetAttribute(ATTRIBUTE + "ModelTitle", str(card.get("title", "")))

        segmentIds = self._addSegments(segmentationNode, layers, geometry)
        del layers
        probabilityNodes = self._placeProbabilities(segmentationNode, probabilities, geometry, inputVolume,
                                                    snapshot=self._snapshots.get(segmentationNode.GetID())
                                                    if overwriting else None)
        self._placeInSubjectHierarchy(inputVolume, [segmentationNode, *probabilityNodes.values()])
        return LoadedResults(segmentationNode=segmentationNode, segmentIds=tuple(segmentIds),
                             probabilityNodes=probabilityNodes, emptyStructures=empty, volumesMl=volumesMl,
                             warnings=readRunWarnings(outputDir), backend=readRunBackend(outputDir))

    @staticmethod
    def _readLabels(path: Path, geometry: bridge.VolumeGeometry) -> np.ndarray:
        """A uint8 KJI label (or 0/1 mask) image of the output folder, checked to lie on the input grid."""
        image = bridge.readImage(path)
        problems = bridge.VolumeGeometry.fromSitk(image).differences(geometry, MASK_TOLERANCE_MM)
        if problems:
            raise ValueError(f"{path.name} is not on the input volume's grid ({'; '.join(problems)}); "
                             "was the output made from another volume?")
        return sitk.GetArrayFromImage(image)

    def _assembleLayers(self, outputDir: Path, structures: list, geometry, keepEmpty: set) -> tuple:
        """Pack the structures' masks into few labelmap layers, holding few full-size masks at a time.

        ``combined_labels.nii.gz`` holds every structure whose label there covers its whole mask (its
        ``report.json`` voxel count equals the label's count): from that one read come one layer of organs and one
        of tumors. A structure partly hidden in the combined image (an organ under its tumor) is read from its
        own file into a further layer where it overlaps nothing. Without the report or the combined image, every
        mask is read from its file. Organs and tumors never share a layer, so tumors can be drawn on top.

        Returns:
            ``(layers, voxels)``: layers as ``[(uint8 KJI label array, [(structure, label value)])]`` and the
            voxel count of every structure. Empty structures get no segment unless named in ``keepEmpty``.
        """
        from AtlasSegLib.run import Run  # here: needs jsonschema (installed on first run)

        reported = {}
        run = Run(outputDir, check=False)
        if run.report_path.is_file():
            try:
                report = run.read_report()
                reported = {e["name"]: int(e["voxels"]) for e in report.get("structures", [])
                            if isinstance(e, dict) and "voxels" in e}
            except (OSError, ValueError, TypeError, KeyError, AtlasSegError) as exc:
                log.warning("ignoring unreadable %s: %s", run.report_path, exc)
        combinedPath = outputDir / "combined_labels.nii.gz"
        layers, voxels, separate = [], {}, []
        if combinedPath.is_file() and all(c["name"] in reported for c in structures):
            combined = self._readLabels(combinedPath, geometry)
            counts = np.bincount(combined.ravel(), minlength=256)
            for tumors in (False, True):
                lookup = np.zeros(256, np.uint8)  # maps each combined label kept in this layer to itself
                members = []
                for structure in structures:
                    if (structure["kind"] == "tumor") != tumors:
                        continue
                    label = int(structure["label"])
                    if not (0 < label < 256 and int(counts[label]) == reported[structure["name"]]):
                        separate.append(structure)
                        continue
                    voxels[structure["name"]] = int(counts[label])
                    if counts[label] or structure["name"] in keepEmpty:
                        lookup[label] = label
                        members.append((structure, label))
                if members:
                    layers.append((lookup[combined], members))
            del combined
        else:
            separate = list(structures)
        for structure in separate:
            path = outputDir / "segmentations" / f"{structure['name']}.nii.gz"
            mask = self._readLabels(path, geometry) != 0
            voxels[structure["name"]] = int(np.count_nonzero(mask))
            if not voxels[structure["name"]] and structure["name"] not in keepEmpty:
                continue
            isTumor = structure["kind"] == "tumor"
            for labels, members in layers:
                sameKind = all((s["kind"] == "tumor") == isTumor for s, _ in members)
                if sameKind and max(value for _, value in members) < 255 and not labels[mask].any():
                    break
            else:
                labels, members = np.zeros(geometry.shapeKji(), np.uint8), []
                layers.append((labels, members))
            label = max((value for _, value in members), default=0) + 1
            labels[mask] = label
            members.append((structure, label))
        return layers, voxels

    @staticmethod
    def _addSegments(segmentationNode, layers: list, geometry) -> list:
        """Add one segment per structure; the structures of a layer share one labelmap (one image in memory).

        Segments are added organs first, tumors last (each in label order). Slice views draw layers in the order
        their first segment appears, so tumors, which never share a layer with organs, are drawn on top.
        """
        segmentation = segmentationNode.GetSegmentation()
        representation = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
        entries = []
        for labels, members in layers:
            image = bridge.orientedImageFromArray(labels, geometry)
            entries += [(structure, label, image) for structure, label in members]
        entries.sort(key=lambda entry: (entry[0]["kind"] == "tumor", int(entry[0].get("label", 0))))
        segmentIds = []
        wasModifying = segmentationNode.StartModify()
        try:
            for structure, label, image in entries:
                segment = slicer.vtkSegment()
                segment.SetName(structure["name"])
                segment.SetColor(*(float(v) / 255.0 for v in structure["color"]))
                segment.SetLabelValue(label)
                segment.SetNameAutoGenerated(False)
                segment.SetColorAutoGenerated(False)
                segment.SetTag(segment.GetTerminologyEntryTagName(), terminologyEntry(structure))
                segment.SetTag(ATTRIBUTE + "Kind", structure["kind"])
                segment.AddRepresentation(representation, image)
                segmentId = structure["name"]
                if segmentation.GetSegment(segmentId) is not None:
                    segmentId = segmentation.GenerateUniqueSegmentID(segmentId)
                segmentation.AddSegment(segment, segmentId)
                segmentIds.append(segmentId)
        finally:
            segmentationNode.EndModify(wasModifying)
        return segmentIds

    @staticmethod
    def _readProbabilities(outputDir: Path, geometry: bridge.VolumeGeometry, names: set) -> dict:
        """tumor name -> (uint8 KJI array, box geometry, metadata) for every probability map of ``names``."""
        # here: AtlasSegLib.run needs jsonschema, installed by the module on first run (this file loads at start)
        from AtlasSegLib.run import Run

        found = {}
        run = Run(outputDir, check=False)  # the run folder's owner knows where maps live and reads their boxes
        for tumor in sorted(names):
            metaPath, imagePath = run.probability_meta_path(tumor), run.probability_path(tumor)
            if not metaPath.is_file() or not imagePath.is_file():
                continue
            try:
                meta = run.read_probability_meta(tumor)
                start, size = list(meta["box_start_ijk"]), list(meta["box_size_ijk"])
                inputSize = list(meta["input_size_ijk"])
            except (OSError, InputError, KeyError) as exc:
                raise ValueError(f"cannot read probability box of {tumor} from {metaPath}: {exc}") from None
            if tuple(inputSize) != tuple(geometry.size):
                raise ValueError(f"probability map {tumor} was made for a {inputSize} volume, not the input's "
                                 f"{list(geometry.size)}")
            if any(s < 0 or s + n > total for s, n, total in zip(start, size, geometry.size)):
                raise ValueError(f"probability box of {tumor} (start {start}, size {size}) leaves the input grid "
                                 f"{list(geometry.size)}")
            if min(size) == 0:
                continue
            array = sitk.GetArrayFromImage(bridge.readImage(imagePath))
            if tuple(array.shape) != tuple(reversed(size)):
                raise ValueError(f"probability map {imagePath.name} has {array.shape[::-1]} voxels (i, j, k), but its "
                                 f"box says {size}")
            found[tumor] = (array.astype(np.uint8, copy=False), geometry.box(start, size), meta)
        return found

    def _placeProbabilities(self, segmentationNode, probabilities: dict, geometry, inputVolume, snapshot) -> dict:
        existing = {}
        for index in range(segmentationNode.GetNumberOfNodeReferences(PROBABILITY_ROLE)):
            node = segmentationNode.GetNthNodeReference(PROBABILITY_ROLE, index)
            if node is not None:
                existing[node.GetAttribute(ATTRIBUTE + "Structure")] = node
        nodes = {}
        for tumor, (array, boxGeometry, meta) in probabilities.items():
            name = f"{segmentationNode.GetName()} {tumor} probability"
            node = existing.get(tumor)
            if node is not None:
                if snapshot is not None:
                    snapshot.probabilityStates.append(
                        (node.GetID(), bridge.arrayFromVolumeNode(node), bridge.VolumeGeometry.fromVolumeNode(node),
                         {key: node.GetAttribute(key) for key in node.GetAttributeNames() or ()}))
                bridge.updateVolumeNodeFromArray(node, array, boxGeometry)
            else:
                node = bridge.volumeNodeFromArray(array, boxGeometry, name)
                if snapshot is not None:
                    snapshot.createdNodeIds.append(node.GetID())
                segmentationNode.AddNodeReferenceID(PROBABILITY_ROLE, node.GetID())
            node.SetAttribute(ATTRIBUTE + "Role", "probability")
            node.SetAttribute(ATTRIBUTE + "Structure", tumor)
            node.SetAttribute(ATTRIBUTE + "ProbabilityScale", str(PROBABILITY_SCALE))
            node.SetAttribute(ATTRIBUTE + "Threshold", str(meta.get("threshold", "")))
            node.SetAttribute(ATTRIBUTE + "Gate", ",".join(str(g) for g in meta.get("gate") or ()))
            # The sensitivity slider rebuilds the gate and the dust limit exactly as the run did.
            node.SetAttribute(ATTRIBUTE + "GateDilationMm", str(meta.get("gate_dilation_mm") or 0.0))
            node.SetAttribute(ATTRIBUTE + "MinComponentMm3", str(meta.get("min_component_mm3") or 0.0))
            node.SetNodeReferenceID(SEGMENTATION_ROLE, segmentationNode.GetID())
            node.SetAndObserveTransformNodeID(inputVolume.GetTransformNodeID())
            displayNode = node.GetDisplayNode()
            if displayNode is not None:
                displayNode.AutoWindowLevelOff()
                displayNode.SetWindowLevelMinMax(0, PROBABILITY_SCALE)
            nodes[tumor] = node
        return nodes

    @staticmethod
    def _placeInSubjectHierarchy(inputVolume, nodes) -> None:
        """Put ``nodes`` beside the input volume (under its study), where DICOM export looks for them."""
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        volumeItem = shNode.GetItemByDataNode(inputVolume)
        parent = shNode.GetItemParent(volumeItem) if volumeItem else shNode.GetSceneItemID()
        for node in nodes:
            item = shNode.GetItemByDataNode(node)
            if item:
                shNode.SetItemParent(item, parent)
            else:  # Slicer's SH plugins normally create the item when the node is added; do it if they did not
                shNode.CreateItem(parent, node)

    @staticmethod
    def _removeSegments(segmentationNode, names) -> None:
        segmentation = segmentationNode.GetSegmentation()
        for name in names:
            if segmentation.GetSegment(name) is not None:
                segmentation.RemoveSegment(name)
            segmentId = segmentation.GetSegmentIdBySegmentName(name)
            while segmentId:
                segmentation.RemoveSegment(segmentId)
                segmentId = segmentation.GetSegmentIdBySegmentName(name)

    # --------------------------------------------------------------------------------------------- undo
    def _snapshot(self, segmentationNode) -> _OverwriteSnapshot:
        history = slicer.vtkSegmentationHistory()
        history.SetMaximumNumberOfStates(2)
        history.SetSegmentation(segmentationNode.GetSegmentation())
        history.SaveState()
        geometryName = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
        return _OverwriteSnapshot(
            history=history,
            referenceGeometry=segmentationNode.GetSegmentation().GetConversionParameter(geometryName),
            probabilityReferences=[segmentationNode.GetNthNodeReferenceID(PROBABILITY_ROLE, i)
                                   for i in range(segmentationNode.GetNumberOfNodeReferences(PROBABILITY_ROLE))])

    def canUndo(self, segmentationNode) -> bool:
        return segmentationNode is not None and segmentationNode.GetID() in self._snapshots

    def undoLastRun(self, segmentationNode) -> None:
        """Put back the segments and probability volumes an overwriting run replaced (one level)."""
        snapshot = self._snapshots.pop(segmentationNode.GetID(), None) if segmentationNode is not None else None
        if snapshot is None:
            raise ValueError("there is no AtlasSeg run to undo on this segmentation")
        wasModifying = segmentationNode.StartModify()
        try:
            snapshot.history.RestorePreviousState()
            geometryName = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
            segmentationNode.GetSegmentation().SetConversionParameter(geometryName, snapshot.referenceGeometry)
            for nodeId, array, geometry, attributes in snapshot.probabilityStates:
                node = slicer.mrmlScene.GetNodeByID(nodeId)
                if node is None:
                    continue
                bridge.updateVolumeNodeFromArray(node, array, geometry)
                for key, value in attributes.items():
                    node.SetAttribute(key, value)
            for nodeId in snapshot.createdNodeIds:
                node = slicer.mrmlScene.GetNodeByID(nodeId)
                if node is not None:
                    slicer.mrmlScene.RemoveNode(node)
            segmentationNode.RemoveNodeReferenceIDs(PROBABILITY_ROLE)
            for nodeId in snapshot.probabilityReferences:
                segmentationNode.AddNodeReferenceID(PROBABILITY_ROLE, nodeId)
        finally:
            segmentationNode.EndModify(wasModifying)

    # ------------------------------------------------------------------------------------------ display
    @staticmethod
    def probabilityVolume(segmentationNode, structure: str):
        """The probability volume of ``structure`` linked to a segmentation (``None`` if there is none)."""
        for index in range(segmentationNode.GetNumberOfNodeReferences(PROBABILITY_ROLE)):
            node = segmentationNode.GetNthNodeReference(PROBABILITY_ROLE, index)
            if node is not None and node.GetAttribute(ATTRIBUTE + "Structure") == structure:
                return node
        return None

    @staticmethod
    def showIn3D(segmentationNode, show: bool = True) -> None:
        """Build (or drop) closed-surface representations so the segments appear in 3D views."""
        if show:
            segmentationNode.CreateClosedSurfaceRepresentation()
        else:
            segmentationNode.RemoveClosedSurfaceRepresentation()
