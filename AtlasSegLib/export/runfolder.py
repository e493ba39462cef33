"""The run as the exporters read it: a finished AtlasSeg output folder (``load_run_folder`` -> ``RunFolder``), its
structures (``Structure``: completed class entry, mask file, export name) and the one grid tolerance every export
checks geometry with (``grid_differences``). Every writer of the package takes a ``RunFolder``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..card import complete_class
from ..errors import InputError
from ..geometry import Grid
from ..run import Run

GRID_TOLERANCE_MM = 0.01  # NIfTI stores geometry as float32: µm-level differences to the DICOM headers are expected


@dataclass
class Structure:
    """One structure of a run: the completed class entry of its card and where its mask is."""

    name: str
    label: int
    kind: str
    color: tuple  # RGB 0-255
    entry: dict  # the class entry (category/type/type_modifier/region codes)
    path: Path
    roi_name: str = ""  # the name written into exports (``roinames``); empty: ``name``

    @property
    def is_tumor(self) -> bool:
        return self.kind == "tumor"

    @property
    def display_name(self) -> str:
        return self.roi_name or self.name


@dataclass
class RunFolder:
    """A finished AtlasSeg output folder, as the exporters read it."""

    path: Path
    report: dict
    card: dict
    structures: list
    grid: Grid

    def mask(self, structure: Structure) -> np.ndarray:
        """The structure's uint8 0/1 mask (k, j, i), checked to lie on the run's grid."""
        image = sitk.ReadImage(str(structure.path))
        problems = grid_differences(Grid.of(image), self.grid)
        if problems:
            raise InputError(f"{structure.path} is not on the grid of the other masks ({'; '.join(problems)})")
        return (sitk.GetArrayFromImage(image) != 0).astype(np.uint8)

    @property
    def model(self) -> dict:
        return {"id": str(self.card.get("id") or self.report.get("model", {}).get("id") or "unknown"),
                "title": str(self.card.get("title") or self.report.get("model", {}).get("title") or ""),
                "version": str(self.card.get("version") or self.report.get("model", {}).get("version") or "0")}


def load_run_folder(outdir) -> RunFolder:
    """Read ``report.json``, ``card.json`` and find the masks of an AtlasSeg output folder.

    Raises InputError when the folder is not an output folder or holds no masks."""
    outdir = Path(outdir)
    if not (outdir / "card.json").is_file() or not (outdir / "segmentations").is_dir():
        raise InputError(f"{outdir} is not an AtlasSeg output folder (card.json and segmentations/ are needed); "
                         "give the -o folder of an 'atlasseg segment' run")
    folder = Run(outdir, check=False)  # the run folder's owner reads its files
    card = folder.read_card_json()
    report = folder.read_report() if folder.report_path.is_file() else {}
    files = {e["name"]: e.get("file") for e in report.get("structures", []) if isinstance(e, dict) and "name" in e}
    structures = []
    for index, raw in enumerate(card.get("classes") or []):
        entry = {"label": index + 1, **complete_class(raw)}
        path = outdir / (files.get(entry["name"]) or f"segmentations/{entry['name']}.nii.gz")
        if path.is_file():
            structures.append(Structure(name=entry["name"], label=int(entry["label"]), kind=entry["kind"],
                                        color=tuple(int(v) for v in entry["color"]), entry=entry, path=path))
    if not structures:
        raise InputError(f"{outdir} holds no segmentation masks (segmentations/*.nii.gz named by card.json)")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(structures[0].path))
    reader.ReadImageInformation()  # the grid only; masks are read one at a time by RunFolder.mask
    grid = Grid(tuple(int(v) for v in reader.GetSize()), tuple(float(v) for v in reader.GetSpacing()),
                tuple(float(v) for v in reader.GetOrigin()), tuple(float(v) for v in reader.GetDirection()))
    return RunFolder(outdir, report, card, structures, grid)


def grid_differences(a: Grid, b: Grid, tolerance_mm: float = GRID_TOLERANCE_MM) -> list:
    """``Grid.differences`` with the export's tolerance (NIfTI's float32 geometry against DICOM headers)."""
    return a.differences(b, tolerance_mm)
