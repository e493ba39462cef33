"""What the report says about the case from a DICOM input: the header fields of the series' first slice (patient,
study, series), every slice's InstanceNumber and position (so a lesion can be named by the image a reader opens),
and the header block of report.json's "report" section, which an anonymized report keeps to the model alone."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import numpy as np

from ..io import SourceInfo

# What the report's header shows from a DICOM input (first slice of the series), report key -> DICOM keyword.
HEADER_FIELDS = (("patient_name", "PatientName"), ("patient_id", "PatientID"), ("study_date", "StudyDate"),
                 ("study_description", "StudyDescription"), ("series_description", "SeriesDescription"),
                 ("series_number", "SeriesNumber"), ("modality", "Modality"))
_SLICE_TAGS = ("SpecificCharacterSet", "SeriesInstanceUID", "InstanceNumber", "ImagePositionPatient",
               "ImageOrientationPatient") + tuple(k for _, k in HEADER_FIELDS)


def _person_name(value) -> str:
    """DICOM PN ("FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX") as a reader writes it: "FAMILY, GIVEN MIDDLE"."""
    parts = [p.strip() for p in str(value or "").split("=")[0].split("^")]
    family, rest = (parts[0] if parts else ""), " ".join(p for p in parts[1:] if p)
    return f"{family}, {rest}" if family and rest else family or rest


def _dicom_date(value) -> str:
    text = str(value or "").strip()
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if re.fullmatch(r"\d{8}", text) else text


def dicom_facts(files=(), *, folder=None, series_uid: Optional[str] = None) -> Optional[dict]:
    """The header fields (``HEADER_FIELDS``, from the first slice) and every slice's InstanceNumber and position
    of a DICOM series, read with pydicom without pixel data (about 1 ms a slice).

    Args:
        files: the series' files (``SourceInfo.files``); when empty, ``folder`` is searched (with subfolders)
            for files of ``series_uid`` (any series when None).

    Returns:
        ``{"header": {...}, "slices": [{"instance": int or None, "position": [x, y, z] LPS mm}], "normal":
        [x, y, z]}`` or None when no file is readable as DICOM.
    """
    # here: pydicom takes about 0.45 s to import and only a DICOM input needs it (most reports are of NIfTI runs)
    import pydicom

    paths = [Path(f) for f in files]
    if not paths and folder is not None and Path(folder).is_dir():
        paths = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    header, slices, normal = None, [], None
    for path in paths:
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=list(_SLICE_TAGS))
        except Exception:  # noqa: BLE001 - not DICOM (a README, a DICOMDIR's companions): skip it
            continue
        if series_uid and str(ds.get("SeriesInstanceUID", "")) != series_uid:
            continue
        if "ImagePositionPatient" not in ds:
            continue
        if header is None:
            header = {}
            for key, keyword in HEADER_FIELDS:
                value = ds.get(keyword)
                text = _person_name(value) if keyword == "PatientName" else str(value if value is not None else "")
                header[key] = _dicom_date(text) if keyword == "StudyDate" else text.strip()
            iop = [float(v) for v in ds.get("ImageOrientationPatient") or (1, 0, 0, 0, 1, 0)]
            normal = np.cross(iop[:3], iop[3:])
        instance = ds.get("InstanceNumber")
        slices.append({"instance": None if instance in (None, "") else int(instance),
                       "position": [float(v) for v in ds.ImagePositionPatient]})
    if header is None:
        return None
    return {"header": header, "slices": slices, "normal": [float(v) for v in normal]}


def dicom_of_run(report: dict, source: Optional[SourceInfo]) -> Optional[dict]:
    """``dicom_facts`` of the run's input when it was a DICOM series still on disk (None otherwise)."""
    inp = report.get("input") or {}
    if inp.get("format") != "dicom":
        return None
    if source is not None and source.format == "dicom" and source.files:
        return dicom_facts(source.files)
    path = inp.get("path")
    if not path or not Path(path).exists():
        return None
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    return dicom_facts(folder=folder, series_uid=inp.get("series_uid"))


def report_header(report: dict, dicom: Optional[dict], anonymize: bool) -> dict:
    """What the page's header says about the case: patient name/ID, study date and series description from a
    DICOM input's first slice, the input's file name (never its folder), the model and its version. With
    ``anonymize`` only the model and the kind of input."""
    inp = report.get("input") or {}
    model = report.get("model") or {}
    header = {"model": model.get("title"), "model_id": model.get("id"), "model_version": model.get("version"),
              "input_format": inp.get("format"), "anonymized": bool(anonymize)}
    if anonymize:
        return header
    path = inp.get("path") or ""
    header["input_name"] = Path(path).name if inp.get("format") != "phantom" else path
    if dicom:
        header.update(dicom["header"])
    elif inp.get("format") == "dicom":
        header["note"] = "DICOM header not available (the input series is no longer at its path)"
    return header
