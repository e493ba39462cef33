"""Export of segmentations from the scene and import of AbdomenAtlas cases, without Qt.

Both directions go through the library (``AtlasSegLib.export``), so the Slicer module writes exactly what
``atlasseg export`` writes:

* ``exportSegmentation`` writes a segmentation node (on its input volume's grid) into a temporary AtlasSeg-style
  output folder (``segmentations/<name>.nii.gz``, ``card.json``, ``report.json``) and calls the library's exporter
  for DICOM SEG, RTSTRUCT, ``.seg.nrrd`` or an AbdomenAtlas case folder. DICOM exports reference the volume's own
  DICOM files (Slicer's DICOM database) or a DICOM folder the user names.
* ``importAbdomenAtlasCase`` loads ``ct.nii.gz`` as a volume and ``segmentations/*.nii.gz`` as one segmentation
  with names, colours and terminology, through ``AtlasSegLogic.loadResults`` (the same path as a run's results).
"""
from __future__ import annotations

import dataclasses
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk
import vtk

import slicer

from AtlasSegModule import AtlasSegBridge as bridge
from AtlasSegModule import AtlasSegDependencies as deps
from AtlasSegModule import AtlasSegLogic
from AtlasSegModule import AtlasSegReview

from AtlasSegLib import export as libexport
from AtlasSegLib import roinames
from AtlasSegLib.card import complete_class
from AtlasSegLib.errors import InputError
from AtlasSegLib.outputs import write_probability_map
from AtlasSegLib.run import Run

FORMATS = AtlasSegLogic.EXPORT_FORMATS
KIND_TAG = AtlasSegLogic.ATTRIBUTE + "Kind"
NAMED_FORMATS = ("dicom-seg", "rtstruct", "seg-nrrd")  # formats whose segment/ROI names the choice sets


@dataclass(frozen=True)
class ExportOutcome:
    """What an export wrote, in words for the status line."""

    format: str
    path: Path
    seconds: float
    bytes: int
    notes: dict

    def message(self) -> str:
        empty = self.notes.get("empty") or []
        extra = f"; empty (kept as empty segments/ROIs): {', '.join(empty)}" if empty else ""
        if self.notes.get("no_tg263_name"):
            extra += f"; no TG-263 name, kept: {', '.join(self.notes['no_tg263_name'])}"
        if self.notes.get("names_over_16_characters"):
            extra += f"; names longer than TG-263's 16 characters: {', '.join(self.notes['names_over_16_characters'])}"
        return f"Wrote {self.path} ({self.bytes / 1e6:.2f} MB in {self.seconds:.1f} s){extra}"


def defaultFileName(fmt: str, segmentationNode) -> str:
    """A file (or folder) name for an export of ``segmentationNode``: its name without awkward characters."""
    stem = _safeName(segmentationNode.GetName() if segmentationNode is not None else "segmentation")
    return {"dicom-seg": f"{stem}_seg.dcm", "rtstruct": f"{stem}_rtstruct.dcm", "seg-nrrd": f"{stem}.seg.nrrd",
            "abdomenatlas": stem}[fmt]


def _safeName(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "segment"


def referenceVolumeOf(segmentationNode):
    """The volume a segmentation was made on: AtlasSeg's input-volume reference, else Slicer's reference geometry
    volume (``referenceImageGeometryRef``)."""
    volume = segmentationNode.GetNodeReference(AtlasSegLogic.INPUT_VOLUME_ROLE)
    if volume is None:
        volume = segmentationNode.GetNodeReference(segmentationNode.GetReferenceImageGeometryReferenceRole())
    return volume


def dicomFilesOfVolume(volumeNode) -> list:
    """The DICOM files a volume was loaded from (Slicer's DICOM database); empty when it was not loaded from DICOM
    or the database is not available."""
    uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split() if volumeNode is not None else []
    database = getattr(slicer, "dicomDatabase", None)
    if not uids or database is None:
        return []
    files = [database.fileForInstance(uid) for uid in uids]
    return [f for f in files if f] if all(files) else []


def segmentEntry(segment, index: int) -> dict:
    """A model-card class entry (name, label, kind, colour, codes) for a segment, from its terminology tag; segments
    without one get the structure table's codes for their name (or generic ones)."""
    entry = {"channel": index + 1, "label": index + 1, "name": segment.GetName(),
             "color": [int(round(c * 255)) for c in segment.GetColor()]}
    entry.update(libexport.entry_from_terminology(segmentTag(segment, segment.GetTerminologyEntryTagName())))
    kind = segmentTag(segment, KIND_TAG)
    if kind in ("organ", "tumor"):
        entry["kind"] = kind
    return complete_class(entry)


def segmentTag(segment, name: str) -> str:
    """A segment tag's value, '' when the segment has no such tag (``GetTerminology`` would invent "Tissue")."""
    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) else ""


def writeRunFolder(segmentationNode, referenceVolume, folder) -> Path:
    """Write ``segmentationNode`` into ``folder`` as an AtlasSeg output folder on ``referenceVolume``'s grid.

    ``report.json`` names the volume (written as ``ct.mha`` beside the masks) as the run's input, so the
    AbdomenAtlas export finds the CT; card.json holds one class per segment (codes from its terminology)."""
    folder = Path(folder)
    (folder / "segmentations").mkdir(parents=True, exist_ok=True)
    if referenceVolume is None or referenceVolume.GetImageData() is None:
        raise InputError("the segmentation has no reference volume with voxels; select the CT it was made on")
    segmentation = segmentationNode.GetSegmentation()
    if segmentation.GetNumberOfSegments() == 0:
        raise InputError(f"segmentation '{segmentationNode.GetName()}' has no segments to export")
    ctPath = bridge.writeVolumeNode(referenceVolume, folder / "ct.mha")
    classes, structures, used = [], [], set()
    for index in range(segmentation.GetNumberOfSegments()):
        segmentId = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segmentId)
        entry = segmentEntry(segment, index)
        stem = _safeName(entry["name"])
        while stem in used:
            stem += "_"
        used.add(stem)
        mask = bridge.arrayFromSegment(segmentationNode, segmentId, referenceVolume)
        image = bridge.VolumeGeometry.fromVolumeNode(referenceVolume).applyToSitk(sitk.GetImageFromArray(mask))
        sitk.WriteImage(image, str(folder / "segmentations" / f"{stem}.nii.gz"), useCompression=True)
        classes.append(entry)
        structures.append({"name": entry["name"], "label": entry["label"], "kind": entry["kind"],
                           "color": entry["color"], "voxels": int(np.count_nonzero(mask)),
                           "file": f"segmentations/{stem}.nii.gz"})
    model = {"id": segmentationNode.GetAttribute(AtlasSegLogic.ATTRIBUTE + "Model") or "slicer-segmentation",
             "title": segmentationNode.GetAttribute(AtlasSegLogic.ATTRIBUTE + "ModelTitle") or segmentationNode.GetName(),
             "version": "1"}
    card = {**model, "classes": classes}
    report = {"input": {"path": str(ctPath), "format": "mha", "series_uid": None, "study_uid": None},
              "model": model, "structures": structures,
              "tumors": _writeTumors(segmentationNode, folder, [s for s in structures if s["kind"] == "tumor"])}
    # The review decisions made in the scene (sensitivity panel, effect clicks) go with the folder, so its report
    # lists each candidate as kept, removed or still to review.
    run = Run(folder, check=False)  # the run folder's one writer (report.json, review.json, against their schemas)
    state = AtlasSegReview.loadReviewState(segmentationNode)
    if state.tumors:
        run.write_review(state)
    run.write_card_json(card)
    run.write_report(report)
    return folder


def _writeTumors(segmentationNode, folder: Path, tumorStructures: list) -> dict:
    """The ``tumors`` section of the folder's report.json, with each tumor's linked probability map written in
    the engine's layout (``probabilities/<name>.nii.gz`` + ``.json``) so the report measures its candidates
    with probabilities, as for an engine run."""
    tumors = {}
    for structure in tumorStructures:
        name = Path(structure["file"]).name[: -len(".nii.gz")]
        info = {"threshold": None, "gate": None, "gate_dilation_mm": None, "min_component_mm3": 0.0,
                "probability_file": None, "components": [], "note": None}
        node = AtlasSegReview.probabilityVolume(segmentationNode, structure["name"])
        if node is not None and node.GetImageData() is not None:
            pm = AtlasSegReview.probabilityMapFor(segmentationNode, structure["name"], node)
            gate = [g.strip() for g in (node.GetAttribute(AtlasSegLogic.ATTRIBUTE + "Gate") or "").split(",")
                    if g.strip()]
            threshold = node.GetAttribute(AtlasSegLogic.ATTRIBUTE + "Threshold")
            info.update(threshold=float(threshold) if threshold else None, gate=gate or None,
                        gate_dilation_mm=AtlasSegReview.floatAttribute(
                            node, AtlasSegLogic.ATTRIBUTE + "GateDilationMm", AtlasSegReview.DEFAULT_GATE_DILATION_MM),
                        min_component_mm3=pm.min_mm3)
            info["probability_file"] = write_probability_map(
                folder, name, pm.q, pm.box_grid, pm.start_ijk, pm.input_size_ijk, gate=info["gate"],
                gate_dilation_mm=info["gate_dilation_mm"], threshold=info["threshold"], min_mm3=pm.min_mm3)
        tumors[name] = info
    return tumors


def makeReport(segmentationNode, folder, *, referenceVolume=None, picture3D: bool = True, progress=None,
               anonymize: bool = False):
    """Write the segmentation as it is in the scene (after review) into ``folder`` and make its report there:
    report.html/.csv/.json and pictures, the 3D view drawn by Slicer's renderer. Returns the library's
    ``ReportResult``. ``folder`` must be new or empty: a report is never mixed with other files. ``anonymize``:
    no patient name, ID, dates, UIDs or file names in the page, CSV and pictures (``build_report``)."""
    # here: the report's picture code loads only when a report is made
    from AtlasSegLib.report import build_report

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise InputError(f"{folder} is not empty; choose a new or empty folder for the report")
    if segmentationNode is None:
        raise InputError("select a segmentation to report on")
    referenceVolume = referenceVolume or referenceVolumeOf(segmentationNode)
    # Made in a staging folder beside the target and moved in when complete: a failure leaves nothing behind.
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        writeRunFolder(segmentationNode, referenceVolume, staging)
        # The folder's CT is its own ct.mha: name it where it will be, not in the staging folder.
        run = Run(staging, check=False)
        report = run.read_report()
        report["input"]["path"] = str(folder / "ct.mha")
        run.write_report(report)
        if picture3D:
            # here: the offscreen renderer loads only when the 3D view is drawn
            from AtlasSegModule import AtlasSegRender

            AtlasSegRender.renderOutputFolder(staging)
        result = build_report(staging, ct=staging / "ct.mha", progress=progress, anonymize=anonymize)
        staging.chmod(0o755)
        if folder.exists():
            folder.rmdir()  # checked empty above
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    moved = lambda path: folder / Path(path).relative_to(staging)  # noqa: E731
    return dataclasses.replace(result, json_path=moved(result.json_path), csv_path=moved(result.csv_path),
                               html_path=moved(result.html_path),
                               pictures={k: moved(v) for k, v in result.pictures.items()})


def exportOptions(fmt: str, roiNames: str = "model", mapFile: Optional[str] = None,
                  tumorRoiType: str = "none") -> dict:
    """``exportSegmentation`` keyword arguments for the Export section's choices: "ROI names"
    (``AtlasSegLogic.EXPORT_ROI_NAMES``: ``model``, ``tg263`` or ``file`` with ``mapFile``) and "Tumor ROI type",
    each passed on only to the formats that have it (names: ``NAMED_FORMATS``; tumor ROI type: RTSTRUCT).

    Raises InputError when "file" is chosen without a mapping file."""
    options = {"names": "model", "nameMap": None, "tumorRoiType": "none"}
    if fmt in NAMED_FORMATS:
        if roiNames == "file":
            if not mapFile:
                raise InputError("choose the ROI name mapping file (JSON or CSV: structure -> name)")
            options["nameMap"] = mapFile
        elif roiNames in roinames.NAME_SCHEMES:
            options["names"] = roiNames
        else:
            raise InputError(f"unknown ROI name choice '{roiNames}'")
    if fmt == "rtstruct":
        options["tumorRoiType"] = tumorRoiType
    return options


def exportSegmentation(segmentationNode, fmt: str, destination, *, referenceVolume=None, referenceDicom=None,
                       overwrite: bool = False, names: str = "model", nameMap=None,
                       tumorRoiType: str = "none") -> ExportOutcome:
    """Export a segmentation node with the library's exporter for ``fmt`` (see ``FORMATS``).

    Args:
        segmentationNode: what to export (every segment; empty ones are skipped in DICOM exports).
        fmt: ``dicom-seg``, ``rtstruct``, ``seg-nrrd`` or ``abdomenatlas``.
        destination: the file to write (a folder for ``abdomenatlas``).
        referenceVolume: the CT; default the segmentation's input / reference-geometry volume.
        referenceDicom: a DICOM folder of that CT for DICOM exports; default the volume's own DICOM files.
        overwrite: replace an existing destination.
        names, nameMap: ROI/segment names (``model`` or ``tg263``, and a mapping file over them), for DICOM SEG,
            RTSTRUCT and .seg.nrrd (``AtlasSegLib.roinames``); segments are matched by their names.
        tumorRoiType: RTSTRUCT only, the RT ROI Interpreted Type of tumor segments (``none``: left to the planner).

    Raises:
        InputError: the message says what is missing (e.g. a DICOM reference) and what to do.
    """
    if segmentationNode is None:
        raise InputError("select a segmentation to export")
    if fmt in deps.FEATURE_OF_FORMAT:
        try:
            deps.requireFeature(deps.FEATURE_OF_FORMAT[fmt])
        except deps.DependencyError as exc:  # e.g. Slicer 5.8/5.10: no pydicom 3; say so before any work
            raise InputError(str(exc)) from None
    referenceVolume = referenceVolume or referenceVolumeOf(segmentationNode)
    if referenceVolume is None:
        raise InputError(f"segmentation '{segmentationNode.GetName()}' has no reference volume; set its reference "
                         "geometry to the CT (Segmentations module) first")
    if fmt in ("dicom-seg", "rtstruct") and not referenceDicom:
        referenceDicom = dicomFilesOfVolume(referenceVolume) or None
    workDir = Path(tempfile.mkdtemp(prefix="AtlasSeg-export-"))
    try:
        runFolder = writeRunFolder(segmentationNode, referenceVolume, workDir / "run")
        try:
            result = libexport.export(runFolder, fmt, Path(destination), reference_dicom=referenceDicom,
                                      overwrite=overwrite, names=names, name_map=nameMap,
                                      tumor_roi_type=tumorRoiType)
        except InputError as exc:
            # The library speaks to command-line users; in the panel the option is the reference DICOM folder.
            message = str(exc).replace("pass --reference-dicom DIR", "choose the CT's DICOM folder as reference")
            message = message.replace("as --reference-dicom", "as reference DICOM folder")
            raise InputError(message) from None
    finally:
        shutil.rmtree(workDir, ignore_errors=True)
    return ExportOutcome(result.format, result.path, result.seconds, result.bytes, result.notes)


@dataclass(frozen=True)
class ImportedCase:
    volumeNode: object
    results: object  # AtlasSegLogic.LoadedResults
    structures: tuple  # class entries found in the case


def importAbdomenAtlasCase(logic, caseFolder, *, name: Optional[str] = None) -> ImportedCase:
    """Load an AbdomenAtlas case folder (``ct.nii.gz`` + ``segmentations/*.nii.gz``) into the scene.

    Names come from the mask files; label values, colours and terminology from the case's ``labels.json`` or
    AtlasSeg's structure table. Masks are checked to lie on the CT's grid before the scene changes; structures
    with an empty mask get no segment.
    """
    case = libexport.read_abdomenatlas_case(caseFolder)
    caseName = name or Path(caseFolder).name
    ct = bridge.readImage(case.ct_path)
    workDir = Path(tempfile.mkdtemp(prefix="AtlasSeg-import-"))
    volume = None
    try:
        (workDir / "segmentations").mkdir()
        for structure in case.structures:
            shutil.copyfile(structure["file"], workDir / "segmentations" / f"{structure['name']}.nii.gz")
        classes = [{k: v for k, v in s.items() if k != "file"} for s in case.structures]
        card = {"id": "abdomenatlas-case", "title": f"AbdomenAtlas case {caseName}", "version": "1",
                "classes": classes}
        Run(workDir, check=False).write_card_json(card)
        volume = bridge.volumeNodeFromSitk(ct, caseName)
        results = logic.loadResults(workDir, volume, name=f"{caseName} segmentations")
    except Exception:
        if volume is not None:
            slicer.mrmlScene.RemoveNode(volume)
        raise
    finally:
        shutil.rmtree(workDir, ignore_errors=True)
    return ImportedCase(volumeNode=volume, results=results, structures=tuple(case.structures))
