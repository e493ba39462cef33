"""DICOM RT Structure Set, for radiotherapy planning systems: ``write_rtstruct`` = the header (patient and study
from the CT, series, structure set, approval: ``_header``), the references to the CT's slices (``_references``)
and one ROI per structure (``_roi``: its Structure Set ROI, ROI Contour and RT ROI Observations items, contours on
the acquired slices by ``contours.mask_contours``); ``read_rtstruct`` fills the contours back into masks
(``contours.fill_polygons``)."""
from __future__ import annotations

import datetime as _dt
from typing import Optional

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from .. import __version__
from .. import roinames
from ..errors import InputError
from .contours import HOLES, fill_polygons, mask_contours
from .dicom_common import (ReferenceSeries, character_set, coding_schemes, dicom_code, make_values_valid,
                           save_dicom)
from .provenance import Provenance
from .runfolder import RunFolder, Structure

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
DETACHED_STUDY_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"
CONTOUR_DATA = 0x30060050
# Patient and General Study attributes copied from the CT, written empty where it lacks them (all are Type 2 but the
# Study Instance UID, without which read_reference_series refuses the series).
PATIENT_AND_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                     "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber", "StudyDescription")


def write_rtstruct(run: RunFolder, dest, ref: ReferenceSeries, *, tumor_roi_type: str = "none",
                   holes: str = "keyhole", provenance: Optional[Provenance] = None) -> dict:
    """Write every structure of ``run`` as an ROI of an RT Structure Set referencing ``ref``. Returns notes.

    An empty structure is an ROI without contours (the Contour Sequence is optional), so a run without any finding
    is a valid structure set too. ``holes``: how a slice's holes are written (``mask_contours``): ``keyhole`` (one
    polygon per part, holes joined by a zero-width cut: the mask whether the reader ORs contours or applies the
    even-odd rule) or ``separate`` (holes as their own contours: only even-odd readers leave them open).

    ``tumor_roi_type``: RT ROI Interpreted Type of tumor classes (``roinames.interpreted_type``).
    ``provenance``: ROIs of structures a person edited say SEMIAUTOMATIC; approved: ApprovalStatus APPROVED with
    ReviewerName, ReviewDate and ReviewTime (default UNAPPROVED, without them: they are 2C, for APPROVED/REJECTED)."""
    if holes not in HOLES:
        raise InputError(f"unknown hole form '{holes}'; choose one of {', '.join(HOLES)}")
    if not run.structures:
        raise InputError(f"the run in {run.path} has no structures; an RT Structure Set needs at least one ROI")
    provenance = provenance or Provenance()
    ds = _header(run, ref, provenance)
    ds.ReferencedFrameOfReferenceSequence = _references(ref)
    rois, contours_seq, observations, empty, total = [], [], [], [], 0
    for number, structure in enumerate(run.structures, start=1):
        roi, contours, observation = _roi(number, structure, run, ref, provenance=provenance,
                                          tumor_roi_type=tumor_roi_type, holes=holes)
        count = len(contours.get("ContourSequence", ()))
        if not count:
            empty.append(structure.name)
        total += count
        rois.append(roi)
        contours_seq.append(contours)
        observations.append(observation)
    ds.StructureSetROISequence = Sequence(rois)
    ds.ROIContourSequence = Sequence(contours_seq)
    ds.RTROIObservationsSequence = Sequence(observations)
    schemes = coding_schemes([s.entry for s in run.structures])
    if len(schemes):
        ds.CodingSchemeIdentificationSequence = schemes
    changed = make_values_valid(ds, f"RTSTRUCT {dest}")
    save_dicom(ds, dest)
    return {"rois": len(rois), "contours": total, "empty": empty, "holes": holes, "values_made_valid": changed}


def _header(run: RunFolder, ref: ReferenceSeries, provenance: Provenance) -> Dataset:
    """The structure set without its ROIs: file meta, SOP common, patient and study (copied from the CT, so the
    planning system files the structures with it), RT series, frame of reference, equipment, structure set and its
    approval."""
    first = ref.datasets[0]
    now = _dt.datetime.now()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    if character_set(first):
        ds.SpecificCharacterSet = character_set(first)
    ds.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    for keyword in PATIENT_AND_STUDY:
        if keyword in first:
            ds[keyword] = first[keyword]  # the element as it is (no re-validation of the source's values)
        else:
            setattr(ds, keyword, "")
    ds.Modality = "RTSTRUCT"
    ds.OperatorsName = ""  # Type 2 (RT Series): no person operated anything
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 9902
    ds.SeriesDescription = f"AtlasSeg {run.model['id']}"[:64]
    ds.FrameOfReferenceUID = first.FrameOfReferenceUID
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "") or ""  # Type 2 (Frame of Reference)
    ds.Manufacturer = "AtlasSeg"
    ds.ManufacturerModelName = run.model["id"][:64]
    ds.SoftwareVersions = f"atlasseg {__version__}"
    ds.InstanceNumber = 1
    ds.StructureSetLabel = "AtlasSeg"
    ds.StructureSetName = run.model["id"][:64]
    ds.StructureSetDescription = f"automatic segmentation: {run.model['title'] or run.model['id']}"[:1024]
    ds.StructureSetDate = now.strftime("%Y%m%d")
    ds.StructureSetTime = now.strftime("%H%M%S")
    ds.ApprovalStatus = "UNAPPROVED"  # automatic contours: a person reviews and approves them in the planning system
    if provenance.approved:
        ds.ApprovalStatus = "APPROVED"
        ds.ReviewDate = provenance.approved_at.strftime("%Y%m%d")
        ds.ReviewTime = provenance.approved_at.strftime("%H%M%S")
        ds.ReviewerName = provenance.reviewer
    return ds


def _image_ref(ds) -> Dataset:
    """A Contour Image Sequence item: one CT slice by its SOP class and instance."""
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    return item


def _references(ref: ReferenceSeries) -> Sequence:
    """The Referenced Frame of Reference Sequence: the CT's frame of reference, study and series with every slice."""
    first = ref.datasets[0]
    series_item = Dataset()
    series_item.SeriesInstanceUID = first.SeriesInstanceUID
    series_item.ContourImageSequence = Sequence([_image_ref(ds) for ds in ref.datasets])
    study_item = Dataset()
    study_item.ReferencedSOPClassUID = DETACHED_STUDY_MANAGEMENT
    study_item.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study_item.RTReferencedSeriesSequence = Sequence([series_item])
    frame_item = Dataset()
    frame_item.FrameOfReferenceUID = first.FrameOfReferenceUID
    frame_item.RTReferencedStudySequence = Sequence([study_item])
    return Sequence([frame_item])


def _roi(number: int, structure: Structure, run: RunFolder, ref: ReferenceSeries, *, provenance: Provenance,
         tumor_roi_type: str, holes: str) -> tuple:
    """One structure as ROI ``number``: (its Structure Set ROI item, its ROI Contour item with a CLOSED_PLANAR
    contour per polygon of each slice it touches, on that acquired slice at its own position; its RT ROI
    Observations item)."""
    frame_of_reference = ref.datasets[0].FrameOfReferenceUID
    mask = ref.on_slices(run.mask(structure))
    contours = []
    for k in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)):
        for ring in mask_contours(mask[k], holes):
            points = ref.slice_to_physical(int(k), ring)  # on the acquired slice, at its own position
            contour = Dataset()
            contour.ContourImageSequence = Sequence([_image_ref(ref.datasets[int(k)])])
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(points)
            contour[CONTOUR_DATA] = _raw_ds(CONTOUR_DATA, points.reshape(-1))
            contours.append(contour)
    del mask
    roi = Dataset()
    roi.ROINumber = number
    roi.ReferencedFrameOfReferenceUID = frame_of_reference
    roi.ROIName = structure.display_name[:64]
    roi.ROIGenerationAlgorithm = provenance.algorithm_type(structure.name)
    roi.ROIGenerationDescription = f"AtlasSeg {run.model['id']} {run.model['version']}"[:64]
    if provenance.description(structure.name):
        roi.ROIDescription = provenance.description(structure.name)[:1024]  # ST
    item = Dataset()
    item.ROIDisplayColor = [int(v) for v in structure.color]
    item.ReferencedROINumber = number
    if contours:
        item.ContourSequence = Sequence(contours)
    observation = Dataset()
    observation.ObservationNumber = number
    observation.ReferencedROINumber = number
    observation.ROIObservationLabel = structure.display_name[:16]
    # Organs are ORGAN; an automatic tumor finding is left uninterpreted unless asked (a planner decides whether
    # it is a GTV), see roinames.
    observation.RTROIInterpretedType = roinames.interpreted_type(structure.kind, structure.entry, tumor_roi_type)
    observation.ROIInterpreter = ""
    code = dicom_code(structure.entry.get("type"))
    if code is not None:
        coded = Dataset()
        coded.CodingSchemeDesignator, coded.CodeMeaning = code.scheme_designator, code.meaning[:64]
        if len(code.value) <= 16:
            coded.CodeValue = code.value
        else:  # a private code naming a long class name: Long Code Value (UC) instead of Code Value (SH)
            coded.LongCodeValue = code.value
        observation.RTROIIdentificationCodeSequence = Sequence([coded])
    return roi, item, observation


def _raw_ds(tag: int, values) -> RawDataElement:
    """A DS element from many numbers, encoded once (pydicom would build and validate one object per number)."""
    text = "\\".join(f"{v:.3f}".rstrip("0").rstrip(".") for v in values)  # µm precision, shortest form
    data = text.encode("ascii")
    if len(data) % 2:
        data += b" "
    return RawDataElement(Tag(tag), "DS", len(data), data, 0, False, True)


def read_rtstruct(path, grid) -> list:
    """The ROIs of an RT Structure Set as masks on ``grid``: ``[{"number", "name", "color", "mask"}]``.

    ``grid`` is a ``Grid``, or a ``ReferenceSeries`` to get the masks on its source slices (placed by each slice's
    own position, as an irregular series needs). Contours are filled with the even-odd rule on the slice they lie
    on; a contour between slices (more than a quarter slice off) is refused with its position."""
    try:
        ds = pydicom.dcmread(str(path))
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot read {path} as DICOM: {exc}") from None
    if ds.get("Modality") != "RTSTRUCT" or "ROIContourSequence" not in ds:
        raise InputError(f"{path} is not an RT Structure Set (modality {ds.get('Modality')})")
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.get("StructureSetROISequence", [])}
    ref = grid if isinstance(grid, ReferenceSeries) else None
    slices, rows, cols = ref.slice_shape if ref is not None else (grid.size[2], grid.size[1], grid.size[0])
    out = []
    for item in ds.ROIContourSequence:
        number = int(item.ReferencedROINumber)
        per_slice = {}
        for contour in item.get("ContourSequence", []):
            points = np.asarray(contour.ContourData, float).reshape(-1, 3)
            if ref is not None:
                k, ij = ref.physical_to_slice(points, what=f"{path}: a contour of ROI {names.get(number, number)}")
                per_slice.setdefault(k, []).append(ij)
                continue
            ijk = grid.physical_to_index(points)
            k = float(np.median(ijk[:, 2]))
            if abs(k - round(k)) > 0.25 or np.ptp(ijk[:, 2]) > 0.25:
                raise InputError(f"{path}: a contour of ROI {names.get(number, number)} lies between slices of the "
                                 f"grid (slice index {k:.2f}); the structure set belongs to another series")
            k = int(round(k))
            if 0 <= k < slices:
                per_slice.setdefault(k, []).append(ijk[:, :2])
        mask = np.zeros((slices, rows, cols), np.uint8)
        for k, polygons in per_slice.items():
            mask[k] = fill_polygons(polygons, (rows, cols))
        color = tuple(int(v) for v in item.get("ROIDisplayColor", (255, 0, 0)))
        out.append({"number": number, "name": names.get(number, str(number)), "color": color, "mask": mask})
    return out
