"""The run folder's one owner: opening and validating an AtlasSeg output folder, where its files are, its CT, and
reading and writing report.json and review.json against their versioned schemas (``schema/report.schema.json``,
``schema/review.schema.json``). Every command and the Slicer module go through ``Run``; nothing else parses
those files, so every reader agrees on what a valid run is and where its CT lives.

A run folder::

    report.json              the run's report (structures, tumors with their lesion components, warnings, history)
    card.json                the model card the run used
    review.json              the reviewer's decisions (optional)
    segmentations/<name>.nii.gz   one 0/1 mask per structure, on the input grid
    probabilities/<name>.nii.gz + .json   a tumor's kept probability map (uint8 p*255) on its box, and that box
    lesions/<name>.nii.gz    a tumor's lesion id map on the same box (``lesions.IdMap``)
    lesions/<name>.added.nii.gz   lesions a reviewer added by a click, under their ids (same box; pasted back
                             after every threshold change)
    combined_labels.nii.gz, overview.png, report.html, report.csv, pictures/   derived, rewritten on each change
    ct.nii.gz                the CT, when the run keeps it (the demo's phantom)

Paths inside the folder are relative to it, so a copied or moved folder still works; the CT is looked for the
same way by every command (``Run.ct_path``).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Optional

import jsonschema

from .card import card_from_dict
from .errors import InputError
from .io import atomic_write_image, atomic_write_text
from .lesions import IdMap
from .reviewstate import ReviewState

PACKAGE_DIR = Path(__file__).resolve().parent
REPORT_FILE, CARD_FILE, REVIEW_FILE = "report.json", "card.json", "review.json"
SEG_DIR, PROB_DIR = "segmentations", "probabilities"
CT_FILES = ("ct.nii.gz", "ct.mha", "ct.nrrd")  # a CT the folder keeps itself
REPORT_VERSION = 2  # report.json's format (key "report_version"; absent = 1)
REVIEW_VERSION = 2


@functools.lru_cache(maxsize=None)
def schema(name: str) -> dict:
    """A run-folder schema by file stem: "report" or "review"."""
    return json.loads((PACKAGE_DIR / "schema" / f"{name}.schema.json").read_text(encoding="utf-8"))


def validate(doc, name: str, where) -> None:
    """Check ``doc`` against ``schema(name)``; InputError naming the file, the field and what to do."""
    try:
        jsonschema.validate(doc, schema(name))
    except jsonschema.ValidationError as exc:
        field = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise InputError(f"{where} is not an AtlasSeg {name}.json ({field}: {exc.message}); it was made by "
                         "another program or a newer AtlasSeg: rerun 'atlasseg segment', or update AtlasSeg") from None


class Run:
    """An AtlasSeg run folder. ``Run(folder)`` checks it is one (report.json and card.json); ``check=False``
    opens a folder that may not be complete yet (a run being written, a review state alone)."""

    def __init__(self, folder, *, check: bool = True):
        self.folder = Path(folder)
        if check and not self.is_run(self.folder):
            missing = [f for f in (REPORT_FILE, CARD_FILE) if not (self.folder / f).is_file()]
            raise InputError(f"{self.folder} is not an AtlasSeg output folder (no {' / '.join(missing)}); give the "
                             "-o folder of an 'atlasseg segment' run")

    @staticmethod
    def is_run(folder) -> bool:
        folder = Path(folder)
        return (folder / REPORT_FILE).is_file() and (folder / CARD_FILE).is_file()

    def __repr__(self) -> str:
        return f"Run({str(self.folder)!r})"

    # ------------------------------------------------------------------------------------------ paths
    @property
    def report_path(self) -> Path:
        return self.folder / REPORT_FILE

    @property
    def card_path(self) -> Path:
        return self.folder / CARD_FILE

    @property
    def review_path(self) -> Path:
        return self.folder / REVIEW_FILE

    def mask_path(self, name: str) -> Path:
        return self.folder / SEG_DIR / f"{name}.nii.gz"

    def probability_path(self, name: str) -> Path:
        return self.folder / PROB_DIR / f"{name}.nii.gz"

    def probability_meta_path(self, name: str) -> Path:
        return self.folder / PROB_DIR / f"{name}.json"

    def id_map_path(self, name: str) -> Path:
        return IdMap.path(self.folder, name)

    def added_path(self, name: str) -> Path:
        """``lesions/<name>.added.nii.gz``: the voxels of lesions added by a click, under their ids."""
        return IdMap.added_path(self.folder, name)

    def ct_candidates(self, report: Optional[dict] = None) -> list:
        """``[(path, series_uid or None)]`` where the run's CT may be, in the order every command tries them:
        the run's input path (a relative one read against the folder) when it still exists, then the CT the
        folder keeps itself (``ct.nii.gz``: the demo's phantom; ``ct.mha``: a folder written from Slicer), which
        a copied or moved folder keeps too."""
        report = self.read_report() if report is None else report
        source = report.get("input") or {}
        out = []
        path = source.get("path")
        if path:
            p = Path(path)
            p = p if p.is_absolute() else self.folder / p
            if p.exists():
                out.append((p, source.get("series_uid")))
        for name in CT_FILES:
            if (self.folder / name).is_file() and all((self.folder / name) != q for q, _ in out):
                out.append((self.folder / name, None))
        return out

    def ct_path(self, report: Optional[dict] = None) -> Optional[Path]:
        """The first place the run's CT may be (``ct_candidates``), or None."""
        found = self.ct_candidates(report)
        return found[0][0] if found else None

    # ------------------------------------------------------------------------------------------ files
    def _read_json(self, path: Path, what: str):
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc}") from None
        except json.JSONDecodeError as exc:
            raise InputError(f"{path} is not valid JSON ({exc}): the {what} is damaged; rerun 'atlasseg segment' "
                             "into a new folder") from None

    def read_report(self) -> dict:
        """report.json, checked against its schema; a report newer than this AtlasSeg is refused."""
        if not self.report_path.is_file():
            raise InputError(f"{self.folder} is not an AtlasSeg output folder (no report.json); give the -o folder "
                             "of an 'atlasseg segment' run")
        doc = self._read_json(self.report_path, "run's report")
        if not isinstance(doc, dict):
            raise InputError(f"{self.report_path} is not an AtlasSeg report (not a JSON object)")
        version = doc.get("report_version", 1)
        if isinstance(version, int) and version > REPORT_VERSION:
            raise InputError(f"{self.report_path} is report version {version}, newer than this AtlasSeg reads "
                             f"({REPORT_VERSION}): update AtlasSeg")
        validate(doc, "report", self.report_path)
        return doc

    def write_report(self, report: dict) -> Path:
        """Replace report.json atomically (validated first: a bad report is never written)."""
        report["report_version"] = REPORT_VERSION
        validate(report, "report", self.report_path)
        atomic_write_text(json.dumps(report, indent=1), self.report_path)
        return self.report_path

    def read_card_json(self) -> dict:
        """card.json as plain JSON (a report needs only its operating points and classes)."""
        if not self.card_path.is_file():
            raise InputError(f"{self.folder} is not an AtlasSeg output folder (no card.json)")
        return self._read_json(self.card_path, "model card")

    def read_card(self):
        """card.json as a validated ``card.ModelCard``."""
        return card_from_dict(self.read_card_json(), path=self.card_path)

    def read_review(self):
        """review.json as a ``reviewstate.ReviewState`` (empty when there is none)."""
        if not self.review_path.is_file():
            return ReviewState()
        text = self.review_path.read_text(encoding="utf-8")
        state = ReviewState.from_json(text)  # clear messages for bad JSON / foreign files
        validate(json.loads(text), "review", self.review_path)
        return state

    def write_review(self, state) -> Path:
        doc = json.loads(state.to_json())
        validate(doc, "review", self.review_path)
        atomic_write_text(json.dumps(doc, indent=1), self.review_path)
        return self.review_path

    def write_card_json(self, card: dict) -> None:
        """card.json (the model card the run used, as plain JSON), written whole or not at all."""
        atomic_write_text(json.dumps(card, indent=1), self.card_path)

    def write_mask(self, name: str, image) -> Path:
        """Replace ``segmentations/<name>.nii.gz`` (a SimpleITK 0/1 image on the input grid) whole or not at all."""
        path = self.mask_path(name)
        atomic_write_image(image, path)
        return path

    def read_probability_meta(self, name: str) -> dict:
        return self._read_json(self.probability_meta_path(name), f"probability map description of {name}")

    def write_probability_meta(self, name: str, meta: dict) -> None:
        atomic_write_text(json.dumps(meta, indent=1), self.probability_meta_path(name))

    def tumor_names(self, report: Optional[dict] = None) -> list:
        report = self.read_report() if report is None else report
        return list((report.get("tumors") or {}))


RunFolder = Run  # the name the issue and other modules may use
