"""Reading CT volumes (NIfTI, NRRD, MetaImage, DICOM folders) and writing results atomically.

Everything is read with SimpleITK, so geometry is in ITK's LPS convention: ``image.GetDirection()`` holds the
direction cosines as a row-major 3×3 matrix whose columns are the index axes' directions.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from .errors import InputError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class SourceInfo:
    """Where an image came from; DICOM inputs keep the identifiers exports need."""

    path: str
    format: str
    series_uid: Optional[str] = None
    study_uid: Optional[str] = None
    files: tuple = field(default=(), repr=False)
    other_series: tuple = ()


def read_image(path, *, series_uid: Optional[str] = None) -> tuple:
    """Read a CT volume.

    Args:
        path: a NIfTI/NRRD/MHA file or a folder holding a DICOM series.
        series_uid: with a DICOM folder holding several series, the one to read.

    Returns:
        ``(image, source)``: a 3D scalar ``sitk.Image`` (any pixel type) and a ``SourceInfo``.

    Raises:
        InputError: the path is missing, unreadable, not a 3D scalar image, or the DICOM folder is empty or
            ambiguous.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"input {path} does not exist; give a CT file (.nii.gz, .nrrd, .mha) or a DICOM folder")
    if path.is_dir():
        image, source = _read_dicom_folder(path, series_uid)
    else:
        if series_uid:
            raise InputError("--series applies to DICOM folders only; the input is a file")
        if path.suffix.lower() == ".dcm":
            image, source = _read_dicom_folder(path.parent, series_uid)
        else:
            _check_nifti_complete(path)
            try:
                image = sitk.ReadImage(str(path))
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
                raise InputError(f"cannot read {path} as an image ({first}); is it a complete, uncorrupted "
                                 ".nii/.nii.gz/.nrrd/.mha file?") from None
            source = SourceInfo(path=str(path), format=_format_name(path))
    check_volume(image, str(path))
    return image, source


def _check_nifti_complete(path: Path) -> None:
    """ITK silently zero-fills a truncated NIfTI; compare the data length with what the header promises."""
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return
    import gzip
    import zlib

    import nibabel as nib

    try:
        header = nib.load(str(path)).header
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for damaged headers
        raise InputError(f"cannot read {path} as NIfTI ({exc}); is it a complete, uncorrupted file?") from None
    expected = int(header["vox_offset"]) + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
    if name.endswith(".gz"):
        length = 0
        try:
            with gzip.open(path, "rb") as fh:
                while chunk := fh.read(8 << 20):
                    length += len(chunk)
        except (EOFError, OSError, zlib.error) as exc:
            raise InputError(f"cannot read {path}: the compressed data is truncated or corrupt ({exc}); "
                             "copy or export the file again") from None
    else:
        length = path.stat().st_size
    if length < expected:
        raise InputError(f"cannot read {path}: the file holds {length} bytes of the {expected} its header promises "
                         "(truncated); copy or export the file again")


def _format_name(path: Path) -> str:
    name = path.name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix.lstrip(".")
    return path.suffix.lstrip(".") or "unknown"


def _dicom_series(folder: Path) -> dict:
    """Series UID → (folder, files) for every DICOM series in ``folder`` and its subfolders."""
    found = {}
    dirs = [folder] + sorted(p for p in folder.rglob("*") if p.is_dir())
    for d in dirs:
        try:
            ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(d))
        except RuntimeError:
            continue
        for uid in ids:
            if uid in found:
                continue
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(d), uid)
            found[uid] = (d, tuple(files))
    return found


def _read_dicom_folder(folder: Path, series_uid: Optional[str]):
    series = _dicom_series(folder)
    if not series:
        raise InputError(f"no DICOM image series found in {folder}; point to the folder holding the CT's .dcm files")
    if series_uid:
        if series_uid not in series:
            raise InputError(f"series {series_uid} is not in {folder}; series found: {_describe(series)}")
        uid = series_uid
    else:
        ranked = sorted(series.items(), key=lambda kv: -len(kv[1][1]))
        if len(ranked) > 1 and len(ranked[0][1][1]) == len(ranked[1][1][1]):
            raise InputError(f"{folder} holds several DICOM series with the same number of slices: "
                             f"{_describe(series)}; choose one with --series UID")
        uid = ranked[0][0]
        if len(ranked) > 1:
            log.warning("%s holds %d series; using %s (most slices). Others: %s", folder, len(ranked), uid,
                        _describe({k: v for k, v in series.items() if k != uid}))
    files = series[uid][1]
    if len(files) < 2:
        raise InputError(f"DICOM series {uid} in {folder} has a single slice; a 3D CT series is needed")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(files))
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"cannot decode DICOM series {uid} in {folder}: {str(exc).strip().splitlines()[-1]}") from None
    study = reader.GetMetaData(0, "0020|000d").strip() if reader.HasMetaDataKey(0, "0020|000d") else None
    return image, SourceInfo(path=str(folder), format="dicom", series_uid=uid or None, study_uid=study or None, files=files,
                             other_series=tuple(k for k in series if k != uid))


def _describe(series: dict) -> str:
    return "; ".join(f"{uid} ({len(files)} files in {d})" for uid, (d, files) in series.items())


def check_volume(image: sitk.Image, name: str) -> None:
    """Refuse images that are not 3D scalar volumes, with a message saying what they are."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name} has {image.GetNumberOfComponentsPerPixel()} components per voxel (RGB or vector "
                         "image); a CT is a single-channel volume")
    dim = image.GetDimension()
    if dim == 4:
        raise InputError(f"{name} is 4D (size {image.GetSize()}); extract one 3D volume first")
    if dim != 3:
        raise InputError(f"{name} is {dim}D (size {image.GetSize()}); a 3D CT volume is needed")
    if min(image.GetSize()) < 2:
        raise InputError(f"{name} is a single slice (size {image.GetSize()}); a 3D CT volume is needed")


def check_ct_values(array: np.ndarray, name: str, *, force: bool = False) -> None:
    """Refuse non-finite voxels, and values that do not look like CT Hounsfield units unless ``force``."""
    # A strided sample is enough to judge the value range and keeps this cheap on 500 MB volumes.
    sample = array.reshape(-1)[:: max(1, array.size // 2_000_000)]
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InputError(f"{name} has {bad} NaN or infinite voxels; fix or replace them (e.g. with -1024) first")
    lo, hi = np.percentile(sample, [0.5, 99.5])
    # Any body CT contains air or fat (below -100 HU); MR and unrescaled CT values are all >= 0.
    if lo > -100 and not force:
        raise InputError(
            f"{name} does not look like CT in Hounsfield units (0.5-99.5 percentile range {lo:.0f}..{hi:.0f}, "
            "no air or fat below -100 HU); if it is CT stored without its rescale intercept, fix the file; "
            "to run anyway, pass --force")


def _default_mode(directory: bool = False) -> int:
    """The mode a plain open()/mkdir() would give under the current umask. mkstemp/mkdtemp make private
    0600/0700 entries, which would leave a run's outputs unreadable to colleagues and other tools."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def atomic_write_image(image: sitk.Image, path, *, compress: bool = True) -> None:
    """Write ``image`` to ``path`` through a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        sitk.WriteImage(image, tmp, useCompression=compress)
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(text: str, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class StagingDir:
    """A temporary folder beside ``outdir`` that becomes ``outdir`` only when the run completes.

    Used as a context manager: on an exception the staging folder is deleted and ``outdir`` is untouched.
    ``commit()`` swaps it in (an existing ``outdir`` is replaced only when ``overwrite``).
    """

    def __init__(self, outdir, *, overwrite: bool = False):
        self.outdir = Path(outdir).resolve()
        self.overwrite = overwrite
        if self.outdir.exists() and not overwrite:
            raise InputError(f"output folder {self.outdir} already exists; choose another -o or pass --overwrite")
        if self.outdir.exists() and not self.outdir.is_dir():
            raise InputError(f"output path {self.outdir} exists and is not a folder")
        self.path: Optional[Path] = None

    def __enter__(self) -> Path:
        self.outdir.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.outdir.name}.partial-", dir=self.outdir.parent))
        return self.path

    def commit(self) -> Path:
        old = None
        if self.outdir.exists():
            old = self.outdir.with_name(f".{self.outdir.name}.old-{os.getpid()}")
            os.replace(self.outdir, old)
        os.chmod(self.path, _default_mode(directory=True))
        os.replace(self.path, self.outdir)
        self.path = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.outdir

    def __exit__(self, exc_type, exc, tb):
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
        return False
