"""An AbdomenAtlas case folder: ``write_abdomenatlas`` (the run's CT as ``ct.nii.gz``, ``segmentations/<name>.nii.gz``,
``combined_labels.nii.gz`` painted by ``outputs.combined_labels``, ``labels.json``; staged, then renamed whole) and
``read_abdomenatlas_case`` (a case folder's CT and masks, for ``summarize`` and the Slicer module)."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..card import complete_class
from ..errors import InputError
from ..geometry import Grid
from ..io import StagingDir, read_image
from ..outputs import combined_labels, hidden_warning, packed_box
from ..run import Run
from .runfolder import RunFolder, grid_differences

log = logging.getLogger(__name__)


def _run_ct(run: RunFolder, ct=None) -> sitk.Image:
    """The CT of a run: ``ct`` (a file or DICOM folder) or the run's input, checked to lie on the masks' grid."""
    source = run.report.get("input", {})
    series = None
    if ct is not None:
        path = ct
    else:  # where every command looks for the run's CT (also in a copied or moved folder: its ct.nii.gz)
        found = Run(run.path, check=False).ct_candidates(run.report)
        path, series = found[0] if found else (source.get("path"), None)
    if not path or not Path(path).exists():
        raise InputError(f"the CT of the run in {run.path} ({path or 'not recorded'}) is not there; "
                         "pass the CT with --ct FILE_OR_DICOM_FOLDER")
    image, _ = read_image(path, series_uid=series if ct is None and Path(path).is_dir() else None)
    problems = grid_differences(Grid.of(image), run.grid)
    if problems:
        raise InputError(f"the CT {path} does not lie on the segmentation's grid ({'; '.join(problems)})")
    return image


def write_abdomenatlas(run: RunFolder, dest, *, ct=None, overwrite: bool = False) -> dict:
    """Write an AbdomenAtlas case folder ``dest`` (ct.nii.gz, segmentations/, combined_labels.nii.gz, labels.json)."""
    image = _run_ct(run, ct)
    staging = StagingDir(dest, overwrite=overwrite)
    with staging as stage:
        sitk.WriteImage(image, str(stage / "ct.nii.gz"), useCompression=True)
        del image
        (stage / "segmentations").mkdir()
        labels, drawn = [], []
        for structure in sorted(run.structures, key=lambda s: (s.is_tumor, s.label)):
            mask = run.mask(structure)
            image = run.grid.image_from_kji(mask)
            sitk.WriteImage(image, str(stage / "segmentations" / f"{structure.name}.nii.gz"), useCompression=True)
            drawn.append((int(np.count_nonzero(mask)), structure.is_tumor, structure.label, structure.name,
                          *packed_box(mask)))
            labels.append({"name": structure.name, "label": structure.label, "kind": structure.kind,
                           "color": list(structure.color),
                           **{k: structure.entry[k] for k in ("category", "type", "type_modifier", "region")
                              if structure.entry.get(k)}})
        # Smaller structures are drawn over larger ones (tumors over their organs; a small vessel stays visible).
        combined, hidden = combined_labels(tuple(run.grid.size[::-1]), drawn)
        for name in hidden:
            log.warning(hidden_warning(name))
        sitk.WriteImage(run.grid.image_from_kji(combined), str(stage / "combined_labels.nii.gz"), useCompression=True)
        (stage / "labels.json").write_text(json.dumps({"model": run.model, "labels": labels}, indent=1))
        staging.commit()
    return {"structures": len(labels), "hidden_in_combined": hidden}


@dataclass
class AtlasCase:
    """An AbdomenAtlas case folder as read by ``read_abdomenatlas_case``."""

    path: Path
    ct_path: Path
    structures: list  # completed class entries (name, label, kind, color, codes) with "file"


def read_abdomenatlas_case(folder) -> AtlasCase:
    """Find the CT and masks of an AbdomenAtlas case folder (``ct.nii.gz`` + ``segmentations/*.nii.gz``).

    Names come from the file names; label values, colours and codes from ``labels.json`` when present, else from
    the structure table (AbdomenAtlas names such as ``liver`` or ``kidney_left`` are known)."""
    folder = Path(folder)
    ct_path = next((folder / n for n in ("ct.nii.gz", "ct.nii", "ct.nrrd", "ct.mha") if (folder / n).is_file()), None)
    masks = sorted((folder / "segmentations").glob("*.nii.gz")) if (folder / "segmentations").is_dir() else []
    if ct_path is None or not masks:
        raise InputError(f"{folder} is not an AbdomenAtlas case folder: it needs ct.nii.gz and "
                         "segmentations/<structure>.nii.gz")
    known = {}
    if (folder / "labels.json").is_file():
        try:
            known = {e["name"]: e for e in json.loads((folder / "labels.json").read_text())["labels"]}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"cannot read {folder / 'labels.json'}: {exc}") from None
    structures = []
    names = [p.name[: -len(".nii.gz")] for p in masks]
    for index, (name, path) in enumerate(zip(names, masks)):
        entry = complete_class({k: v for k, v in known.get(name, {"name": name}).items() if v is not None})
        entry.setdefault("label", index + 1)
        entry["file"] = str(path)
        structures.append(entry)
    labels = [e["label"] for e in structures]
    if len(set(labels)) != len(labels):  # labels.json missing entries: number them in file order
        for index, entry in enumerate(structures):
            entry["label"] = index + 1
    return AtlasCase(path=folder, ct_path=ct_path, structures=structures)
