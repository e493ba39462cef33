"""Checks every command makes before any real work: the output place can be written, the options make sense, the
input is there and readable. Each failure is an ``InputError`` (exit 2) saying what was wrong and what to do.

Cheap on purpose: this module imports no numpy, SimpleITK or torch at load time (a refusal must come in well under
two seconds, not after torch and the backends have loaded); the input probe imports SimpleITK/nibabel only when
it runs.
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Iterable, Optional

from .errors import InputError


# ------------------------------------------------------------------------------------------ output places
def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(path.anchor or ".")


def _probe(folder: Path) -> Optional[str]:
    """Why nothing can be created in ``folder`` (None when a file can). An actual file is made and removed: the
    permission bits alone do not tell (root ignores them, a read-only mount or a full disk does not show in them)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".atlasseg-probe-", dir=folder)
    except OSError as exc:
        return _reason(exc)
    os.close(fd)
    try:
        os.unlink(name)
    except OSError:
        pass
    return None


def _reason(exc: OSError) -> str:
    if exc.errno == errno.EROFS:
        return "it is on a read-only file system"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.ENOSPC:
        return "the disk is full"
    if exc.errno == errno.EDQUOT:
        return "the disk quota is used up"
    return exc.strerror or str(exc)


def check_output_place(target, *, what: str = "output", option: str = "-o") -> None:
    """Refuse when ``target`` (a file or folder to be created or replaced) cannot be written: a path component is a
    file, or the nearest existing folder above it takes no new files (read-only, no permission, full).

    Raises InputError naming the folder and the reason."""
    target = Path(target).absolute()
    base = _nearest_existing(target.parent)
    if not base.is_dir():
        raise InputError(f"cannot write the {what} {target}: {base} is a file, not a folder; choose another {option}")
    reason = _probe(base)
    if reason:
        raise InputError(f"cannot write the {what} {target}: the folder {base} is not writable ({reason}); choose "
                         f"another {option} or make the folder writable")


def check_folder_writable(folder, *, what: str) -> None:
    """Refuse when files cannot be written into the existing ``folder`` (a run folder edited in place). A folder
    that does not exist is left to the command, which says so in its own words."""
    folder = Path(folder).absolute()
    if not folder.is_dir():
        return
    reason = _probe(folder)
    if reason:
        raise InputError(f"cannot write into {what} {folder}: the folder is not writable ({reason}); copy it to a "
                         "writable place or make it writable")


# ------------------------------------------------------------------------------------------- thresholds
def check_thresholds(thresholds: dict, tumors: Iterable[str], *, where: str = "this run") -> None:
    """The messages ``atlasseg threshold --set`` gives: a known tumor structure, a value strictly between 0 and 1."""
    tumors = list(tumors)
    for name, t in thresholds.items():
        if name not in tumors:
            raise InputError(f"{name} is not a tumor structure of {where}; tumors: {', '.join(tumors) or 'none'}")
        if not 0.0 < float(t) < 1.0:
            raise InputError(f"threshold for {name} must be between 0 and 1 (exclusive), got {t}")


def segment_tumors(card, structures) -> list:
    """The tumor structures a segment run with ``card`` and ``--structures`` makes (those a threshold can set)."""
    return [c.name for c in card.classes if c.is_tumor and (not structures or c.name in structures)]


# ---------------------------------------------------------------------------------------------- inputs
def check_input_exists(path) -> None:
    if not Path(path).exists():
        raise InputError(f"input {path} does not exist; give a CT file (.nii.gz, .nrrd, .mha) or a DICOM folder")


def probe_image_file(path) -> None:
    """The header of a CT file, read without its voxels: missing, unreadable, not a 3D scalar volume, or a NIfTI
    whose data is shorter than its header promises are refused with ``io.read_image``'s messages. A DICOM folder
    or slice is left to ``read_image`` (only its existence is checked here)."""
    path = Path(path)
    check_input_exists(path)
    if path.is_dir() or path.suffix.lower() == ".dcm":
        return
    # here: this module stays cheap (see its docstring): SimpleITK only to probe a file
    import SimpleITK as sitk

    from .io import itk_messages_to_log

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with itk_messages_to_log(f"reading the header of {path}"):
            reader.ReadImageInformation()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
        raise InputError(f"cannot read {path} as an image ({first}); is it a complete, uncorrupted "
                         ".nii/.nii.gz/.nrrd/.mha file?") from None
    name = str(path)
    components, dim, size = reader.GetNumberOfComponents(), reader.GetDimension(), reader.GetSize()
    if components != 1:
        raise InputError(f"{name} has {components} components per voxel (RGB or vector image); a CT is a "
                         "single-channel volume")
    if dim == 4:
        raise InputError(f"{name} is 4D (size {size}); extract one 3D volume first")
    if dim != 3:
        raise InputError(f"{name} is {dim}D (size {size}); a 3D CT volume is needed")
    if min(size) < 2:
        raise InputError(f"{name} is a single slice (size {size}); a 3D CT volume is needed")
    _check_nifti_length(path)


def _check_nifti_length(path: Path) -> None:
    """A truncated NIfTI, found cheaply: a .nii shorter than its header says, or a .nii.gz whose gzip trailer
    (the uncompressed length mod 2^32) is not what the header promises. Only then is the whole stream read
    (``io.check_nifti_complete``) for the exact message; a file that passes is read in full later anyway."""
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return
    # here: this module stays cheap (see its docstring): nibabel only for a NIfTI
    import nibabel as nib

    from .io import check_nifti_complete

    try:
        header = nib.load(str(path)).header
        voxels = 1
        for n in header.get_data_shape():
            voxels *= int(n)
        expected = int(header["vox_offset"]) + voxels * int(header.get_data_dtype().itemsize)
    except Exception:  # noqa: BLE001 - the full check below gives the message
        check_nifti_complete(path)
        return
    if name.endswith(".gz"):
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            trailer = int.from_bytes(fh.read(4), "little")
        if trailer == expected % (1 << 32):
            return
    elif path.stat().st_size >= expected:
        return
    check_nifti_complete(path)


# ------------------------------------------------------------------------------------------- per command
def check_output_places(args) -> None:
    """Every command's output place, from its parsed arguments, before it does anything (``cli._run``)."""
    command = args.command
    if command in ("segment", "synthesize", "demo"):
        if getattr(args, "output", None):
            check_output_place(args.output, what="output folder")
            if command == "demo":  # the others check it with their inputs; the demo would make its phantom first
                check_new_folder(args.output, overwrite=args.overwrite)
    elif command == "batch":
        _check_into(args.output, what="results folder")
    elif command == "export":
        # Without -o the export goes to OUTDIR/export/...: its folders may not exist yet. A run folder that does
        # not exist is left to the command (it says so); nothing is probed elsewhere for it.
        if args.output or Path(args.outdir).is_dir():
            check_output_place(args.output or Path(args.outdir) / "export" / "file", what="export")
    elif command == "evaluate":
        if args.output or Path(args.run).is_dir():
            _check_into(args.output or Path(args.run) / "evaluation", what="evaluation folder")
    elif command == "summarize":
        check_folder_writable(args.results, what="the results folder")
        if args.export_accepted:
            check_output_place(args.export_accepted, what="--export-accepted folder", option="--export-accepted")
    elif command in ("threshold", "report"):
        check_folder_writable(args.outdir, what="the run folder")
    elif command == "review":
        if (args.remove or args.keep or args.remove_smaller_than is not None
                or args.remove_below_probability is not None or args.keep_largest is not None):
            check_folder_writable(args.outdir, what="the run folder")


def _check_into(folder, *, what: str) -> None:
    """A folder files are written into: itself when it exists, else the place where it will be made."""
    folder = Path(folder)
    if folder.is_dir():
        check_folder_writable(folder, what=f"the {what}")
    else:
        check_output_place(folder, what=what)


def check_new_folder(folder, *, overwrite: bool) -> None:
    """An output folder that must not exist unless --overwrite (``io.StagingDir``'s messages, said earlier)."""
    out = Path(folder)
    if out.exists() and not overwrite:
        raise InputError(f"output folder {out.resolve()} already exists; choose another -o or pass --overwrite")
    if out.exists() and not out.is_dir():
        raise InputError(f"output path {out.resolve()} exists and is not a folder")


def check_segment(args, card) -> None:
    """``segment``: options and input, before the pipeline (torch) is imported."""
    thresholds = _thresholds(args)
    structures = [s.strip() for s in args.structures.split(",") if s.strip()] if args.structures else None
    check_thresholds(thresholds, segment_tumors(card, structures), where=f"the model {card.id}"
                     + (" with --structures " + ",".join(structures) if structures else ""))
    check_new_folder(args.output, overwrite=args.overwrite)
    if args.series and Path(args.input).is_file() and Path(args.input).suffix.lower() != ".dcm":
        raise InputError("--series applies to DICOM folders only; the input is a file")
    probe_image_file(args.input)


def check_batch(args, card) -> None:
    """``batch``: the dataset folder and the thresholds, before any case and before torch."""
    structures = [s.strip() for s in args.structures.split(",") if s.strip()] if args.structures else None
    check_thresholds(_thresholds(args), segment_tumors(card, structures), where=f"the model {card.id}"
                     + (" with --structures " + ",".join(structures) if structures else ""))
    source = Path(args.input)
    if not source.exists():
        raise InputError(f"input {source} does not exist; give the dataset folder (one case per subfolder or CT file)")
    if not source.is_dir():
        raise InputError(f"{source} is not a folder; 'atlasseg batch' takes a dataset folder (use 'segment' for one "
                         "CT)")


def parse_pairs(values, what: str) -> dict:
    """``name=value`` options (``--threshold``, ``--set``; repeated or comma-separated) as {name: float}; a
    malformed one is refused (exit 2) before anything loads."""
    out = {}
    for item in values or []:
        for part in item.split(","):
            if not part:
                continue
            if "=" not in part:
                raise InputError(f"{what} must look like name=value (e.g. liver_tumor=0.3), got '{part}'")
            name, value = part.split("=", 1)
            try:
                out[name.strip()] = float(value)
            except ValueError:
                raise InputError(f"{what} value for {name} must be a number, got '{value}'") from None
    return out


def _thresholds(args) -> dict:
    return parse_pairs(args.threshold, "--threshold")


def check_estimate(args, card) -> None:
    """``estimate``: the input, before the pipeline (torch) is imported (``card`` was loaded by the caller:
    an unknown model or a bad card is refused there)."""
    if args.series and Path(args.input).is_file() and Path(args.input).suffix.lower() != ".dcm":
        raise InputError("--series applies to DICOM folders only; the input is a file")
    probe_image_file(args.input)
