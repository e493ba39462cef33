"""Reading CT volumes (NIfTI, NRRD, MetaImage, DICOM folders) and writing results atomically.

Everything is read with SimpleITK, so geometry is in ITK's LPS convention: ``image.GetDirection()`` holds the
direction cosines as a row-major 3×3 matrix whose columns are the index axes' directions.
"""
from __future__ import annotations

import gzip
import logging
import os
import shutil
import sys
import tempfile
import zlib
from contextlib import contextmanager
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
    # Set when an irregular DICOM series (gantry tilt, uneven spacing, missing slices) was resampled onto a
    # regular grid: what was found and how it was fixed (report.json "input.regularized").
    regularized: Optional[dict] = None
    warnings: tuple = ()  # sentences for report.json "warnings"
    # A folder with several series: which was read, why, and the others (report.json "input.series").
    series: Optional[dict] = None


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
    route_itk_messages_to_logging()
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
            check_nifti_complete(path)
            try:
                image = sitk.ReadImage(str(path))
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
                raise InputError(f"cannot read {path} as an image ({first}); is it a complete, uncorrupted "
                                 ".nii/.nii.gz/.nrrd/.mha file?") from None
            source = SourceInfo(path=str(path), format=_format_name(path))
    check_volume(image, str(path))
    return image, source


def check_nifti_complete(path: Path) -> None:
    """ITK silently zero-fills a truncated NIfTI; compare the data length with what the header promises."""
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return

    # here: nibabel (about 0.1 s to import) only for NIfTI inputs
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


def dicom_series(folder: Path) -> dict:
    """Series UID → (folder, files) for every DICOM series in ``folder`` and its subfolders."""
    found = {}
    dirs = [folder] + sorted(p for p in folder.rglob("*") if p.is_dir())
    with itk_messages_to_log(f"looking for DICOM series in {folder}"):
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


_ITK_LOGGER = None


def route_itk_messages_to_logging() -> None:
    """Send what ITK prints through its output window (warnings such as "Non uniform sampling or missing slices
    detected", debug text, errors) to the ``AtlasSegLib.itk`` logger instead of raw onto stderr: its text at INFO
    (AtlasSeg checks the geometry itself and says what it means in its own words), its errors at WARNING.
    Idempotent; installs one process-wide ITK logger."""
    global _ITK_LOGGER
    if _ITK_LOGGER is not None:
        return
    itk_log = logging.getLogger("AtlasSegLib.itk")

    class _ItkToLogging(sitk.LoggerBase):
        def DisplayText(self, text):
            itk_log.info("%s", " ".join(text.split()))

        DisplayGenericOutputText = DisplayDebugText = DisplayWarningText = DisplayText

        def DisplayErrorText(self, text):
            itk_log.warning("%s", " ".join(text.split()))

    _ITK_LOGGER = _ItkToLogging()
    _ITK_LOGGER.SetAsGlobalITKLogger()


@contextmanager
def itk_messages_to_log(what: str):
    """Route what ITK/GDCM print on the process's stderr (file descriptor 2) during the block to logging.

    ITK writes its warnings (e.g. "Non uniform sampling or missing slices detected") straight to the C stderr, out
    of Python's reach; left alone they reach the user raw, without saying what they mean for the result. AtlasSeg
    checks the geometry itself and says so in its own words; the ITK text is logged at INFO for diagnosis.
    Anything else another thread writes to fd 2 meanwhile is logged the same way instead of lost."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable stderr (e.g. a GUI process): nothing to capture
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            # ITK prefixes each message with a "WARNING: In <source file>, line N" line: keep the message only.
            messages = [line for line in lines if not (line.startswith("WARNING: In ") or line.startswith("ERROR: In "))]
            for message in messages:
                log.info("ITK/GDCM while %s: %s", what, message)


def _read_dicom_folder(folder: Path, series_uid: Optional[str]):
    series = dicom_series(folder)
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
    files = series[uid][1]
    choice, chose = None, ()
    if len(series) > 1:
        others = [{"uid": k, "slices": len(v[1]), "folder": str(v[0])} for k, v in series.items() if k != uid]
        choice = {"uid": uid, "slices": len(files), "chosen_by": "--series" if series_uid else "most slices",
                  "others": others}
        if not series_uid:
            chose = (f"{folder} holds {len(series)} DICOM series; the one with the most slices was segmented: {uid} "
                     f"({len(files)} files). Others: {_describe({k: v for k, v in series.items() if k != uid})}. "
                     "To segment another, run again with --series UID",)
            log.info("%s", chose[0])
    if len(files) < 2:
        raise InputError(f"DICOM series {uid} in {folder} has a single slice; a 3D CT series is needed")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(files))
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        with itk_messages_to_log(f"reading DICOM series {uid}"):
            image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"cannot decode DICOM series {uid} in {folder}: {str(exc).strip().splitlines()[-1]}") from None
    study = reader.GetMetaData(0, "0020|000d").strip() if reader.HasMetaDataKey(0, "0020|000d") else None
    name = f"DICOM series {uid} in {folder}"
    stack = _stack_from_reader(reader, len(files), name)
    regularized, warnings = None, ()
    if stack is not None and not stack.is_regular:
        refusal = stack.refusal()
        if refusal:
            raise InputError(f"{name} cannot be placed on a regular grid: {refusal}")
        array = sitk.GetArrayFromImage(image)[stack.order]  # slices in the order they lie along the normal
        del image
        grid = stack.regular_grid()
        image = grid.image_from_kji(regularize_slices(array, stack, grid, fill=min(float(array.min()), -1024.0)))
        del array
        regularized = stack.summary(grid)
        text = (f"the DICOM series is irregular ({stack.describe()}); its {stack.n} slices were resampled onto a "
                f"regular {grid.spacing[2]:.3g} mm grid from each slice's own position (largest correction "
                f"{regularized['max_correction_mm']:.3g} mm); masks lie on that grid, DICOM exports reference the "
                "original slices")
        log.info("%s: %s", name, text)  # the run's warnings carry it (one line, printed at the end)
        warnings = (text,)
    return image, SourceInfo(path=str(folder), format="dicom", series_uid=uid or None, study_uid=study or None, files=files,
                             other_series=tuple(k for k in series if k != uid), regularized=regularized,
                             warnings=chose + tuple(warnings), series=choice)


def _stack_from_reader(reader: sitk.ImageSeriesReader, n: int, name: str) -> Optional["SliceStack"]:
    """The ``SliceStack`` of the slices ``reader`` read, or None when a slice has no position/orientation (ITK's
    grid is then all there is)."""
    positions, orientations = [], []
    for k in range(n):
        if not (reader.HasMetaDataKey(k, "0020|0032") and reader.HasMetaDataKey(k, "0020|0037")):
            return None
        try:
            positions.append([float(v) for v in reader.GetMetaData(k, "0020|0032").split("\\")])
            orientations.append([float(v) for v in reader.GetMetaData(k, "0020|0037").split("\\")])
        except ValueError:
            return None
    first = reader.GetMetaDataKeys(0)
    if "0028|0030" in first:
        spacing_rc = [float(v) for v in reader.GetMetaData(0, "0028|0030").split("\\")]
    else:
        return None
    size = (int(reader.GetMetaData(0, "0028|0011")), int(reader.GetMetaData(0, "0028|0010")))
    return slice_stack(positions, orientations, (spacing_rc[1], spacing_rc[0]), size, name)


# ------------------------------------------------------------------------------------ irregular DICOM series
REGULAR_TOLERANCE_MM = 0.01  # a slice this close (or within 1 % of the slice spacing) to its regular place is on it
MAX_GAP_FACTOR = 3.0  # interpolate over at most two missing slices in a row
MAX_TILT_DEG = 45.0


@dataclass(frozen=True)
class SliceStack:
    """The geometry of a DICOM series from each slice's own ImagePositionPatient/ImageOrientationPatient.

    Sorted along the slice normal ``n = row × col``: ``heights`` are the slices' positions along it (mm, the first
    slice at 0) and ``offsets`` their in-plane shifts (mm along row, col) from the first slice. A regular series
    has equal height steps and no offsets; gantry tilt shows as offsets growing with height, missing slices and
    uneven spacing as unequal steps."""

    name: str
    order: np.ndarray  # indices into the slices as given, sorted by height
    positions: np.ndarray  # (n, 3) LPS, sorted
    row: np.ndarray
    col: np.ndarray
    normal: np.ndarray
    pixel_spacing: tuple  # (mm along row = i, mm along col = j)
    size: tuple  # (columns, rows)
    heights: np.ndarray
    offsets: np.ndarray  # (n, 2)

    @property
    def n(self) -> int:
        return len(self.heights)

    @property
    def gaps(self) -> np.ndarray:
        return np.diff(self.heights)

    @property
    def tolerance_mm(self) -> float:
        return max(REGULAR_TOLERANCE_MM, 0.01 * float(np.median(self.gaps)))

    def deviations_mm(self) -> np.ndarray:
        """How far each slice lies from its place on the evenly spaced stack of the same extent along the normal
        (what a grid with one spacing and the normal as third axis assumes)."""
        even = np.linspace(0.0, self.heights[-1], self.n)
        return np.sqrt((self.heights - even) ** 2 + (self.offsets ** 2).sum(axis=1))

    @property
    def is_regular(self) -> bool:
        return float(self.deviations_mm().max()) <= self.tolerance_mm

    @property
    def tilt_deg(self) -> float:
        """Angle between the slice normal and the line through the first and last slice positions."""
        shift = np.hypot(*self.offsets[-1])
        return float(np.degrees(np.arctan2(shift, self.heights[-1])))

    def missing_slices(self) -> int:
        median = float(np.median(self.gaps))
        return int(sum(max(0, round(g / median) - 1) for g in self.gaps))

    def describe(self) -> str:
        """What is irregular, in words: tilt angle, slice steps, missing slices."""
        parts = []
        if np.abs(self.offsets).max() > self.tolerance_mm:
            parts.append(f"gantry tilt {self.tilt_deg:.1f}° (slice {self.n} is shifted "
                         f"{np.hypot(*self.offsets[-1]):.1f} mm sideways from slice 1)")
        gaps = self.gaps
        if np.ptp(gaps) > self.tolerance_mm:
            text = f"slice spacing varies {gaps.min():.3g}-{gaps.max():.3g} mm (median {np.median(gaps):.3g} mm)"
            missing = self.missing_slices()
            if missing:
                text += f", about {missing} slice{'s' if missing > 1 else ''} missing"
            parts.append(text)
        return "; ".join(parts) or f"slices up to {self.deviations_mm().max():.3g} mm off an even stack"

    def refusal(self) -> Optional[str]:
        """Why this stack cannot be regularized (None when it can)."""
        median = float(np.median(self.gaps))
        widest = int(np.argmax(self.gaps))
        if self.gaps[widest] > MAX_GAP_FACTOR * median + self.tolerance_mm:
            return (f"{self.describe()}; the gap of {self.gaps[widest]:.3g} mm between slices {widest + 1} and "
                    f"{widest + 2} (sorted along the slice normal) is more than {MAX_GAP_FACTOR:g} times the usual "
                    f"{median:.3g} mm, too wide to interpolate over. Export the complete series from the scanner or "
                    "PACS again (slices are missing)")
        if self.tilt_deg > MAX_TILT_DEG:
            return (f"the slices are stacked {self.tilt_deg:.1f}° off their normal (more than {MAX_TILT_DEG:g}°), "
                    "which is no gantry tilt; the folder probably mixes different acquisitions: choose one with "
                    "--series or reconstruct the series on the scanner")
        return None

    def regular_grid(self):
        """The regular grid the slices are resampled onto.

        Axes: the slices' own row and column directions, and their normal (orthogonal, so a tilted acquisition
        becomes an ordinary axial volume). In-plane: the slices' pixel spacing, on the first slice's pixel lattice,
        widened to cover every slice's shifted footprint (no source pixel is cut off). Along the normal: the median
        slice step, adjusted so that the first and last slices lie on grid planes (with missing slices or gantry
        tilt every acquired slice then lies on a plane and is copied, not interpolated)."""
        # here: geometry imports nibabel; only DICOM slice stacks need the Grid
        from .geometry import Grid

        dx, dy = self.pixel_spacing
        cols, rows = self.size
        extent = float(self.heights[-1])
        steps = max(1, int(round(extent / float(np.median(self.gaps)))))
        dz = extent / steps
        i0 = int(np.floor(self.offsets[:, 0].min() / dx + 1e-6))
        j0 = int(np.floor(self.offsets[:, 1].min() / dy + 1e-6))
        i1 = int(np.ceil(self.offsets[:, 0].max() / dx - 1e-6)) + cols - 1
        j1 = int(np.ceil(self.offsets[:, 1].max() / dy - 1e-6)) + rows - 1
        origin = self.positions[0] + i0 * dx * self.row + j0 * dy * self.col
        direction = np.column_stack([self.row, self.col, self.normal])
        return Grid((i1 - i0 + 1, j1 - j0 + 1, steps + 1), (float(dx), float(dy), float(dz)),
                    tuple(float(v) for v in origin), tuple(float(v) for v in direction.reshape(-1)))

    def summary(self, grid) -> dict:
        """What report.json records under ``input.regularized``."""
        gaps = self.gaps
        return {
            "reason": self.describe(),
            "source_slices": self.n,
            "gantry_tilt_deg": round(self.tilt_deg, 3),
            "slice_steps_mm": {"min": round(float(gaps.min()), 4), "median": round(float(np.median(gaps)), 4),
                               "max": round(float(gaps.max()), 4)},
            "missing_slices": self.missing_slices(),
            "max_correction_mm": round(float(self.deviations_mm().max()), 3),
            "grid": grid.as_dict(),
            "method": "linear between the two nearest slices along the slice normal, bilinear in-plane, from each "
                      "slice's own ImagePositionPatient/ImageOrientationPatient",
        }

    def slice_index(self, position, *, tolerance_mm: float) -> Optional[int]:
        """The sorted index of the slice whose pixel (0, 0) is at ``position`` (LPS mm), or None."""
        distance = np.linalg.norm(self.positions - np.asarray(position, float), axis=1)
        k = int(np.argmin(distance))
        return k if distance[k] <= tolerance_mm else None


def slice_stack(positions, orientations, pixel_spacing, size, name: str) -> SliceStack:
    """A ``SliceStack`` from each slice's ImagePositionPatient (n × 3), ImageOrientationPatient (n × 6), the pixel
    spacing (mm along row, mm along column) and size (columns, rows).

    Raises InputError when the slices cannot form one volume: different orientations or two slices at one place."""
    positions = np.asarray(positions, float)
    orientations = np.asarray(orientations, float)
    if len(positions) < 2:
        raise InputError(f"{name} has fewer than 2 slices with a position; a 3D CT series is needed")
    spread = np.abs(orientations - orientations[0]).max()
    if spread > 1e-3:
        raise InputError(f"the slices of {name} have different orientations (ImageOrientationPatient differs by up "
                         f"to {spread:.3g}): it mixes acquisitions (e.g. localizers or several stacks); choose the "
                         "axial series with --series or remove the other images from the folder")
    row = orientations[0, :3] / np.linalg.norm(orientations[0, :3])
    col = orientations[0, 3:] - np.dot(orientations[0, 3:], row) * row
    col /= np.linalg.norm(col)
    normal = np.cross(row, col)
    heights = positions @ normal
    order = np.argsort(heights, kind="stable")
    positions, heights = positions[order], heights[order] - heights[order][0]
    steps = np.diff(heights)
    if steps.min() <= max(REGULAR_TOLERANCE_MM, 0.01 * float(np.median(steps))):
        k = int(np.argmin(steps))
        raise InputError(f"{name} has two slices at the same position ({_fmt_mm(positions[k])} mm, "
                         f"{steps[k]:.3g} mm apart along the slice normal): it holds more than one acquisition "
                         "(e.g. several phases or reconstructions); separate them into their own series")
    relative = positions - positions[0]
    offsets = np.column_stack([relative @ row, relative @ col])
    return SliceStack(name=name, order=order, positions=positions, row=row, col=col, normal=normal,
                      pixel_spacing=(float(pixel_spacing[0]), float(pixel_spacing[1])),
                      size=(int(size[0]), int(size[1])), heights=heights, offsets=offsets)


def _fmt_mm(values) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def regularize_slices(array: np.ndarray, stack: SliceStack, grid, *, fill: float) -> np.ndarray:
    """Resample the slices (``array``: k, j, i in ``stack`` order) onto ``grid`` (from ``stack.regular_grid()``).

    Why not ITK's volume: ITK's series reader stacks the slices on one grid with the mean step along the normal,
    starting at the first slice, so with gantry tilt (slice positions shifted in-plane), uneven steps or missing
    slices every slice but the first lands at the wrong place, millimetres off, and a segmentation made on it is
    wrong there without any sign. Slicer (acquisition geometry regularization) and dcm2niix resample instead; so
    does this: every output plane is parallel to the slices, so each slice only needs a 2D in-plane shift onto the
    output lattice (bilinear; exact where the shift is whole pixels), and an output voxel is the linear mix of the
    two slices around it along the normal. Voxels no slice covers keep ``fill`` (air or the CT's padding); at a
    tilted stack's rim, where only one of the two slices covers a voxel, the nearer slice is used if it covers it.
    Integer pixel types are rounded back to their type."""
    dx, dy = stack.pixel_spacing
    cols, rows = stack.size
    out_cols, out_rows, out_slices = grid.size
    first = grid.physical_to_index(stack.positions[0])  # continuous (i, j, k) of slice 0's pixel (0, 0)
    out = np.empty((out_slices, out_rows, out_cols), array.dtype)
    cache = {}

    def shifted(k):
        """Slice k on the output lattice (float32) and where it is covered (bool)."""
        if k not in cache:
            if len(cache) > 2:
                cache.pop(min(cache))
            # Output pixel (i, j) lies at continuous index (i - a, j - b) of slice k.
            a = first[0] + stack.offsets[k, 0] / dx
            b = first[1] + stack.offsets[k, 1] / dy
            cache[k] = _shift_bilinear(array[k].astype(np.float32), (out_rows, out_cols), a, b, rows, cols)
        return cache[k]

    heights = stack.heights
    tol = 1e-4 * float(grid.spacing[2])
    for z in range(out_slices):
        h = z * grid.spacing[2]
        a = int(np.clip(np.searchsorted(heights, h + tol, side="right") - 1, 0, stack.n - 1))
        if abs(h - heights[a]) <= tol or a == stack.n - 1:
            value, covered = shifted(a)
        else:
            w = (h - heights[a]) / (heights[a + 1] - heights[a])
            va, ca = shifted(a)
            vb, cb = shifted(a + 1)
            value = (1.0 - w) * va + w * vb
            value = np.where(ca & cb, value, np.where(ca if w < 0.5 else cb, va if w < 0.5 else vb, fill))
            covered = ca & cb | (ca if w < 0.5 else cb)
        plane = np.where(covered, value, fill)
        if np.issubdtype(out.dtype, np.integer):
            info = np.iinfo(out.dtype)
            plane = np.clip(np.rint(plane), info.min, info.max)
        out[z] = plane
    return out


def _shift_bilinear(src: np.ndarray, shape: tuple, a: float, b: float, rows: int, cols: int):
    """``src`` (rows × cols) sampled at continuous indices (i - a, j - b) for every pixel (j, i) of ``shape``
    (bilinear, borders continued as ITK's linear interpolator does), and which samples lie on its footprint
    (index −0.5 … size − 0.5)."""
    ci = np.arange(shape[1]) - a
    cj = np.arange(shape[0]) - b
    inside = (((cj >= -0.5 - 1e-6) & (cj <= rows - 0.5 + 1e-6))[:, None]
              & ((ci >= -0.5 - 1e-6) & (ci <= cols - 0.5 + 1e-6))[None, :])
    ci = np.clip(ci, 0, cols - 1)
    cj = np.clip(cj, 0, rows - 1)
    i0 = np.minimum(np.floor(ci).astype(int), cols - 2) if cols > 1 else np.zeros(len(ci), int)
    j0 = np.minimum(np.floor(cj).astype(int), rows - 2) if rows > 1 else np.zeros(len(cj), int)
    fi = (ci - i0).astype(np.float32)
    fj = (cj - j0).astype(np.float32)
    i1 = np.minimum(i0 + 1, cols - 1)
    j1 = np.minimum(j0 + 1, rows - 1)
    top = src[j0][:, i0] * (1 - fi) + src[j0][:, i1] * fi
    bottom = src[j1][:, i0] * (1 - fi) + src[j1][:, i1] * fi
    return top * (1 - fj)[:, None] + bottom * fj[:, None], inside


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


@contextmanager
def atomic_path(path, *, suffix: Optional[str] = None):
    """The one atomic-write rule: yield a temporary path in ``path``'s folder (created if missing) for a writer to
    fill; when the block ends normally, make it as readable as a plain open() would (mkstemp's private 0600 would
    keep colleagues and web servers out) and rename it over ``path``; on any exception, delete it and leave
    ``path`` as it was. ``suffix`` (default: the name's suffix, ``.nii.gz`` kept whole) lets writers that choose
    the format by extension (SimpleITK, pydicom, slicerio) see the right one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes[-2:]) if path.name.endswith((".nii.gz", ".seg.nrrd")) else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_image(image: sitk.Image, path, *, compress: bool = True) -> None:
    """Write ``image`` to ``path`` through a temporary file in the same folder, then rename."""
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)


def atomic_write_bytes(data: bytes, path) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    with atomic_path(path, suffix="") as tmp:
        tmp.write_bytes(data)


def atomic_write_text(text: str, path) -> None:
    atomic_write_bytes(text.encode("utf-8"), path)


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
