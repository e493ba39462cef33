"""De-identified DICOM series lack attributes a DICOM object copies from its CT. Every attribute AtlasSeg (or highdicom
for it) copies into a DICOM SEG or RTSTRUCT is removed, one at a time, from a copy of the real sarcoma series:

* a Type 2 (or 3) attribute: the export still works and dciodvfy finds no error (the attribute is written empty, or
  for the slice thickness the slice spacing the masks are on);
* a Type 1 attribute (the UIDs, the pixel spacing): exit 2 naming it, nothing written.

De-identification tools remove exactly these (PS3.15 Annex E: birth date, sex, accession number, study id...).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from AtlasSegLib.cli import main
from test_export_outside_tools import DCIODVFY, dciodvfy_errors
from testdata import make_run

# Type 2 in the source CT (or Type 3 that AtlasSeg copies when present): may be missing or empty.
OPTIONAL = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
            "ReferringPhysicianName", "StudyID", "AccessionNumber", "StudyDescription", "SliceThickness",
            "PositionReferenceIndicator", "SpecificCharacterSet", "Manufacturer", "SeriesNumber", "InstanceNumber")
# Type 1: without them no object can reference the CT (or place a frame on it).
REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID", "SOPClassUID",
            "PixelSpacing", "ImagePositionPatient")


@pytest.fixture(scope="module")
def sarcoma_run(tmp_path_factory, ctdata):
    root = tmp_path_factory.mktemp("deid")
    case = ctdata / "ibsi_sts008_sarcoma_tumor"
    mask = (sitk.GetArrayFromImage(sitk.ReadImage(str(case / "nifti" / "CT_mask.nii.gz"))) > 0).astype(np.uint8)
    return {"root": root, "series": case / "CT" / "image",
            "run": make_run(root / "run", case / "CT" / "image", {"liver_tumor": mask})}


def series_without(src: Path, dest: Path, keyword: str) -> Path:
    """A copy of the series in ``src`` with ``keyword`` removed from every file (as a de-identifier does)."""
    dest.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        ds = pydicom.dcmread(f)
        if keyword in ds:
            del ds[keyword]
        ds.save_as(dest / f.name)
    return dest


def _export(capsys, run, fmt, series, out):
    code = main(["export", str(run), "--format", fmt, "--reference-dicom", str(series), "-o", str(out), "--overwrite"])
    return code, capsys.readouterr()


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy is not installed (Debian package dicom3tools)")
@pytest.mark.parametrize("keyword", OPTIONAL)
def test_series_lacking_a_type2_attribute_exports_valid_seg_and_rtstruct(sarcoma_run, capsys, keyword):
    series = series_without(sarcoma_run["series"], sarcoma_run["root"] / f"no-{keyword}", keyword)
    for fmt in ("dicom-seg", "rtstruct"):
        out = sarcoma_run["root"] / f"no-{keyword}-{fmt}.dcm"
        code, streams = _export(capsys, sarcoma_run["run"], fmt, series, out)
        assert code == 0, f"{fmt} without {keyword}: {streams.err}"
        errors = dciodvfy_errors(out)
        assert errors == [], f"{fmt} without {keyword}:\n" + "\n".join(errors)
        ds = pydicom.dcmread(out)
        if keyword in ("PatientBirthDate", "PatientSex", "PatientName", "PatientID", "StudyDate", "StudyTime",
                       "ReferringPhysicianName", "StudyID", "AccessionNumber"):
            assert keyword in ds and not ds[keyword].value, f"{fmt}: Type 2 {keyword} must be present and empty"


@pytest.mark.parametrize("keyword", REQUIRED)
def test_series_lacking_a_type1_attribute_is_refused_naming_it(sarcoma_run, capsys, keyword):
    series = series_without(sarcoma_run["series"], sarcoma_run["root"] / f"no1-{keyword}", keyword)
    for fmt in ("dicom-seg", "rtstruct"):
        out = sarcoma_run["root"] / f"no1-{keyword}-{fmt}.dcm"
        code, streams = _export(capsys, sarcoma_run["run"], fmt, series, out)
        assert code == 2, f"{fmt} without {keyword}: {streams.err}"
        assert keyword in streams.err
        assert not out.exists()
