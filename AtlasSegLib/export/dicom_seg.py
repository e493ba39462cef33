"""DICOM Segmentation: ``write_dicom_seg`` (highdicom; one binary segment per structure, frames on the source
slices, codes, colours, the model as algorithm and who edited what) and ``read_dicom_seg`` (segments back as masks
on the reference series, frames placed by their plane positions)."""
from __future__ import annotations

import copy
import inspect
import logging
from typing import Optional

import numpy as np
from pydicom.sr.codedict import codes
from pydicom.uid import DeflatedExplicitVRLittleEndian

from .. import __version__
from ..errors import InputError
from .dicom_common import (ReferenceSeries, character_set, coding_schemes, dicom_code, make_values_valid,
                           save_dicom)
from .provenance import Provenance
from .runfolder import GRID_TOLERANCE_MM, RunFolder

log = logging.getLogger(__name__)

def write_dicom_seg(run: RunFolder, dest, ref: ReferenceSeries, *, compress: bool = False,
                    provenance: Optional[Provenance] = None) -> dict:
    """Write every structure of ``run`` as a segment of one DICOM SEG referencing ``ref``. Returns notes.

    An empty structure is a segment without frames (the model looked and found nothing); when every structure is
    empty the SEG holds one empty frame per segment on the first slice (a SEG needs at least one frame).
    Explicit VR Little Endian unless ``compress`` (Deflated Explicit VR Little Endian: lossless, smaller, but
    dciodvfy and a number of PACS and planning systems cannot read it). ``provenance``: structures a person edited
    are SEMIAUTOMATIC segments, and the reviewer (if known) is the Content Creator."""
    # here: highdicom adds ~0.25 s to `import AtlasSegLib.export` (the Slicer module imports it); only SEG needs it
    import highdicom as hd

    provenance = provenance or Provenance()
    algorithm = hd.AlgorithmIdentificationSequence(name=run.model["id"][:64], version=run.model["version"][:64],
                                                   family=codes.cid7162.ArtificialIntelligence, source="AtlasSeg")
    # Segment-major memory (one contiguous block per segment, handed to highdicom as a (slices, rows, columns,
    # segments) view): highdicom reads one segment at a time, and filling it needs no strided copy.
    shape = ref.slice_shape  # frames are made on the source slices, whatever grid the masks are on
    pixels = np.zeros((len(run.structures),) + shape, bool)
    descriptions, empty, used = [], [], np.zeros(shape[0], bool)
    for structure in run.structures:
        mask = ref.on_slices(run.mask(structure))
        if not mask.any():
            empty.append(structure.name)
        entry = structure.entry
        number = len(descriptions) + 1
        description = hd.seg.SegmentDescription(
            segment_number=number, segment_label=structure.display_name[:64],
            segmented_property_category=dicom_code(entry["category"]),
            segmented_property_type=dicom_code(entry["type"]),
            algorithm_type=getattr(hd.seg.SegmentAlgorithmTypeValues, provenance.algorithm_type(structure.name)),
            algorithm_identification=algorithm,
            tracking_uid=hd.UID(), tracking_id=structure.name[:64],
            anatomic_regions=[dicom_code(entry["region"])] if entry.get("region") else None,
            display_color=hd.color.CIELabColor.from_rgb(*structure.color))
        if provenance.description(structure.name):
            description.SegmentDescription = provenance.description(structure.name)[:64]  # LO
        modifier = dicom_code(entry.get("type_modifier"))
        if modifier is not None:
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                hd.sr.CodedConcept(modifier.value, modifier.scheme_designator, modifier.meaning)]
        descriptions.append(description)
        np.not_equal(mask, 0, out=pixels[number - 1])
        used |= pixels[number - 1].reshape(shape[0], -1).any(axis=1)
        del mask
    if not descriptions:
        raise InputError(f"the run in {run.path} has no structures; a DICOM SEG needs at least one segment")
    # Only the slices some structure touches are handed over (their frames would be omitted as empty anyway);
    # highdicom matches each plane to its source slice by position. Nothing anywhere: the first slice.
    first, last = np.flatnonzero(used)[[0, -1]] if used.any() else (0, 0)
    pixels = np.moveaxis(pixels[:len(descriptions), first:last + 1], 0, -1)
    positions = [hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT,
                                          [float(v) for v in ref.datasets[k].ImagePositionPatient])
                 for k in range(first, last + 1)]
    # An empty (0008,0005) in the CT means the default repertoire; highdicom refuses the empty string itself.
    # highdicom < 0.28 (Slicer 5.12 ships 0.27) has no specific_character_set argument: set the element after.
    charset = character_set(ref.datasets[0])
    charset_argument = ({"specific_character_set": charset}
                        if "specific_character_set" in inspect.signature(hd.SOPClass.__init__).parameters else {})
    sources, filled = _source_with_type2(ref)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, plane_positions=positions,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=9901,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="AtlasSeg",
        manufacturer_model_name=run.model["id"][:64], software_versions=f"atlasseg {__version__}",
        device_serial_number="0", content_label="ATLASSEG",
        content_description=f"{run.model['title'] or run.model['id']} (automatic)"[:64],
        series_description=f"AtlasSeg {run.model['id']}"[:64], omit_empty_frames=True, **charset_argument)
    if charset is not None and not charset_argument:
        seg.SpecificCharacterSet = charset
    del pixels
    seg.ContentCreatorName = ""  # Type 2: automatic, no person created the content
    if provenance.reviewer and (provenance.edited or provenance.approved):
        seg.ContentCreatorName = provenance.reviewer  # a person edited (semi-automatic) content
    schemes = coding_schemes([s.entry for s in run.structures])
    if len(schemes):
        seg.CodingSchemeIdentificationSequence = schemes
    changed = make_values_valid(seg, f"DICOM SEG {dest}")
    if compress:
        seg.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    save_dicom(seg, dest)
    return {"segments": len(descriptions), "frames": int(seg.NumberOfFrames), "empty": empty,
            "transfer_syntax": str(seg.file_meta.TransferSyntaxUID.name), "values_made_valid": changed,
            "source_attributes_missing": filled}


# Attributes highdicom reads from the first source image as ``ds.Keyword`` (Patient and General Study modules,
# Type 2 in a CT and in the SEG): a de-identified series often lacks them (PS3.15 Annex E removes the birth date,
# sex, accession number, study id...). Written empty, as the standard allows and RTSTRUCT already does.
SEG_TYPE2_FROM_SOURCE = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                         "StudyDate", "StudyTime", "ReferringPhysicianName")


def _source_with_type2(ref: ReferenceSeries):
    """``ref.datasets`` for highdicom, the first (the one it copies the patient and study from) completed with the
    Type 2 attributes it lacks (empty) and a slice thickness when it has none (the spacing of the slices the
    frames lie on; the SEG's Pixel Measures need one). Returns (datasets, names of the attributes filled in)."""
    first = ref.datasets[0]
    missing = [k for k in SEG_TYPE2_FROM_SOURCE if k not in first]
    thickness = first.get("SliceThickness", None)
    no_thickness = thickness is None or str(thickness).strip() == ""
    if not missing and not no_thickness:
        return ref.datasets, []
    first = copy.deepcopy(first)  # the series' own header stays as read
    for keyword in missing:
        setattr(first, keyword, "")
    if no_thickness:
        first.SliceThickness = f"{float(ref.grid.spacing[2]):.6g}"
        missing.append("SliceThickness")
    log.info("the DICOM series in %s lacks %s; written empty (slice thickness: the slice spacing)", ref.folder,
             ", ".join(missing))
    return [first] + list(ref.datasets[1:]), missing


def read_dicom_seg(path, ref: ReferenceSeries) -> list:
    """The segments of a DICOM SEG on ``ref``'s grid: ``[{"number", "name", "category", "type", "type_modifier",
    "region", "color", "mask"}]`` (codes as ``{"scheme", "code", "meaning"}``, colour RGB 0-255, mask uint8 k, j, i).

    Frames are placed by their plane positions (not by the source instances they name: some writers do not say
    whether spatial locations were preserved); a frame off the grid's slices is refused with its position."""
    # here: highdicom adds ~0.25 s to `import AtlasSegLib.export` (the Slicer module imports it); only SEG needs it
    import highdicom as hd

    try:
        seg = hd.seg.segread(str(path))
    except Exception as exc:  # noqa: BLE001 - pydicom/highdicom raise several types for bad files
        raise InputError(f"cannot read {path} as a DICOM SEG: {exc}") from None
    numbers = [int(n) for n in seg.get_segment_numbers()]
    masks = _place_seg_frames(seg, ref, numbers, path)
    out = []
    for index, number in enumerate(numbers):
        desc = seg.get_segment_description(number)
        item = {"number": int(number), "name": str(desc.segment_label),
                "category": _code_dict(desc.segmented_property_category),
                "type": _code_dict(desc.segmented_property_type),
                "mask": masks[number]}
        sequence = desc.SegmentedPropertyTypeCodeSequence[0]
        if "SegmentedPropertyTypeModifierCodeSequence" in sequence:
            item["type_modifier"] = _code_dict(sequence.SegmentedPropertyTypeModifierCodeSequence[0])
        regions = list(desc.anatomic_regions or [])
        if regions:
            item["region"] = _code_dict(regions[0])
        if "RecommendedDisplayCIELabValue" in desc:
            item["color"] = tuple(int(v) for v in hd.color.CIELabColor.from_dicom_value(
                desc.RecommendedDisplayCIELabValue).to_rgb())
        out.append(item)
    return out


def _place_seg_frames(seg, ref: ReferenceSeries, numbers: list, path) -> dict:
    """Segment number -> uint8 (k, j, i) mask from a SEG's frames, placed on ``ref``'s source slices by position
    (for a regular series these are its grid's slices)."""
    grid = ref.grid
    slices, rows, cols = ref.slice_shape
    stack = ref.stack
    if (int(seg.Rows), int(seg.Columns)) != (rows, cols):
        raise InputError(f"{path} has {seg.Rows}x{seg.Columns} frames, the DICOM series {rows}x{cols}; "
                         "the SEG was made on another series")
    shared = seg.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in seg else None
    frames = seg.pixel_array
    if frames.ndim == 2:
        frames = frames[np.newaxis]
    masks = {n: np.zeros((slices, rows, cols), np.uint8) for n in numbers}
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        def group(name):
            if name in item:
                return item[name].value[0]
            return shared[name].value[0] if shared is not None and name in shared else None
        number = int(group("SegmentIdentificationSequence").ReferencedSegmentNumber)
        orientation = group("PlaneOrientationSequence")
        measures = group("PixelMeasuresSequence")
        if orientation is not None and not np.allclose(
                np.asarray(orientation.ImageOrientationPatient, float),
                np.asarray(grid.direction).reshape(3, 3)[:, :2].T.reshape(-1), atol=1e-3):
            raise InputError(f"{path}: frame {index + 1} is not oriented as the DICOM series")
        if measures is not None and not np.allclose([float(v) for v in measures.PixelSpacing],
                                                    [stack.pixel_spacing[1], stack.pixel_spacing[0]],
                                                    atol=GRID_TOLERANCE_MM):
            raise InputError(f"{path}: frame {index + 1} has pixel spacing {list(measures.PixelSpacing)}, the series "
                             f"{[stack.pixel_spacing[1], stack.pixel_spacing[0]]}")
        position = np.asarray(group("PlanePositionSequence").ImagePositionPatient, float)
        # Along the normal, 1 % of a step (as the grid check allows); in-plane, the export's tolerance.
        k = int(np.argmin(np.abs((position - stack.positions[0]) @ stack.normal - stack.heights)))
        offset = position - stack.positions[k]
        along = float(offset @ stack.normal)
        if abs(along) > max(GRID_TOLERANCE_MM, 0.01 * float(np.median(stack.gaps))) or \
                np.linalg.norm(offset - along * stack.normal) > GRID_TOLERANCE_MM:
            raise InputError(f"{path}: frame {index + 1} at {_fmt(position)} mm is not on a slice of the DICOM series")
        if number in masks:
            masks[number][k] |= (frames[index] != 0).astype(np.uint8)
    return masks


def _code_dict(code) -> dict:
    if hasattr(code, "scheme_designator"):  # highdicom CodedConcept
        return {"scheme": str(code.scheme_designator), "code": str(code.value), "meaning": str(code.meaning)}
    return {"scheme": str(code.CodingSchemeDesignator), "code": str(code.CodeValue), "meaning": str(code.CodeMeaning)}


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"
