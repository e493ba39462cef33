"""Model cards: JSON files, validated by ``schema/model_card.schema.json``, that describe a model completely
(network, checkpoint layout, preprocessing, inference settings, class table, license, weights).

Class entries may be short (``{"channel": 5, "name": "liver"}``): colour, SNOMED terminology, kind, tumor
gate and minimum component volume are filled in from ``data/structures.json``.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Optional

import jsonschema

from .errors import InputError

PACKAGE_DIR = Path(__file__).resolve().parent
CARDS_DIR = PACKAGE_DIR / "cards"
SCHEMA_PATH = PACKAGE_DIR / "schema" / "model_card.schema.json"
STRUCTURES_PATH = PACKAGE_DIR / "data" / "structures.json"

DEFAULT_TUMOR_MIN_MM3 = 50.0
_ANATOMY = {"scheme": "SCT", "code": "123037004", "meaning": "Anatomical Structure"}
_ALTERED = {"scheme": "SCT", "code": "49755003", "meaning": "Morphologically Altered Structure"}


@lru_cache(maxsize=1)
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


@lru_cache(maxsize=1)
def structures() -> dict:
    return json.loads(STRUCTURES_PATH.read_text())["structures"]


@dataclass(frozen=True)
class ClassInfo:
    """One output structure of a model."""

    channel: int
    label: int
    name: str
    kind: str  # "organ" or "tumor"
    color: tuple
    category: dict
    type: dict
    type_modifier: Optional[dict] = None
    region: Optional[dict] = None
    gate: Optional[tuple] = None
    paired: bool = False
    min_component_mm3: float = 0.0
    largest_component: bool = True

    @property
    def is_tumor(self) -> bool:
        return self.kind == "tumor"

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["color"] = list(self.color)
        d["gate"] = list(self.gate) if self.gate is not None else None
        return d


@dataclass(frozen=True)
class ModelCard:
    raw: dict = field(repr=False)
    path: Optional[Path] = None

    # Convenience accessors; ``raw`` is the validated JSON with defaults filled in.
    @property
    def id(self) -> str:
        return self.raw["id"]

    @property
    def title(self) -> str:
        return self.raw["title"]

    @property
    def version(self) -> str:
        return self.raw["version"]

    @property
    def architecture(self) -> dict:
        return self.raw["architecture"]

    @property
    def checkpoint(self) -> dict:
        return self.raw["checkpoint"]

    @property
    def preprocessing(self) -> dict:
        return self.raw["preprocessing"]

    @property
    def inference(self) -> dict:
        return self.raw["inference"]

    @property
    def postprocessing(self) -> dict:
        return self.raw["postprocessing"]

    @property
    def weights(self) -> dict:
        return self.raw.get("weights", {})

    @property
    def license(self) -> str:
        return self.raw["license"]

    @property
    def classes(self) -> tuple:
        return tuple(_class_info(c, i) for i, c in enumerate(self.raw["classes"]))

    @property
    def operating_points(self) -> dict:
        return dict(self.raw.get("operating_points", {}))

    @property
    def base_dir(self) -> Optional[Path]:
        return self.path.parent if self.path else None

    def with_class_table(self, size: int) -> "ModelCard":
        """The card with the class table chosen by ``size`` (e.g. ``organ_embedding`` rows or output channels).

        Raises InputError naming the supported sizes when none matches."""
        tables = self.raw.get("class_tables") or {}
        if str(size) in tables:
            raw = copy.deepcopy(self.raw)
            raw["classes"] = tables[str(size)]
            return ModelCard(raw=raw, path=self.path)
        if tables:
            raise InputError(
                f"model {self.id}: the checkpoint has {size} classes, but only class tables for "
                f"{', '.join(sorted(tables, key=int))} classes are known; use a checkpoint of this model "
                "or a model card with a matching class table")
        return self

    def select(self, names) -> "ModelCard":
        """The card restricted to the structures named (tumor gates keep their organs' channels)."""
        names = list(names)
        known = {c["name"] for c in self.raw["classes"]}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise InputError(f"unknown structure(s) {', '.join(unknown)} for model {self.id}; "
                             f"available: {', '.join(sorted(known))}")
        raw = copy.deepcopy(self.raw)
        raw["classes"] = [c for c in raw["classes"] if c["name"] in names]
        return ModelCard(raw=raw, path=self.path)

    def to_json(self) -> dict:
        return copy.deepcopy(self.raw)


def _class_info(entry: dict, position: int) -> ClassInfo:
    return ClassInfo(
        channel=entry["channel"],
        label=entry.get("label", position + 1),
        name=entry["name"],
        kind=entry["kind"],
        color=tuple(entry["color"]),
        category=entry["category"],
        type=entry["type"],
        type_modifier=entry.get("type_modifier"),
        region=entry.get("region"),
        gate=tuple(entry["gate"]) if entry.get("gate") else None,
        paired=entry.get("paired", False),
        min_component_mm3=float(entry.get("min_component_mm3", 0.0)),
        largest_component=bool(entry.get("largest_component", True)),
    )


def complete_class(entry: dict) -> dict:
    """Fill a class entry's missing fields from the structure table (or generic defaults)."""
    out = dict(entry)
    known = structures().get(entry["name"], {})
    for key, value in known.items():
        out.setdefault(key, copy.deepcopy(value))
    kind = out.setdefault("kind", "tumor" if entry["name"].endswith(("_tumor", "_lesion", "_cyst")) else "organ")
    out.setdefault("color", [128, 174, 128])
    # A class without a known code: tumors are morphologically altered structures, the rest anatomical structures;
    # the type is a code of AtlasSeg's private scheme (declared as such in DICOM exports) naming the class.
    out.setdefault("category", _ALTERED if kind == "tumor" else _ANATOMY)
    out.setdefault("type", {"scheme": "99ATLASSEG", "code": entry["name"],
                            "meaning": entry["name"].replace("_", " ").capitalize()})
    if kind == "tumor":
        out.setdefault("min_component_mm3", DEFAULT_TUMOR_MIN_MM3)
    return out


_DEFAULTS = {
    "checkpoint": {"keys": ["net", "state_dict", "model", "model_state_dict"], "strip_prefix": ["module."]},
    "preprocessing": {"scale": [0.0, 1.0], "crop_foreground": True, "pad_to_roi": False},
    "inference": {"overlap": 0.5, "mode": "gaussian", "sw_batch_size": 1, "threshold": 0.5},
    "postprocessing": {"largest_component": True, "tumor_gate": True, "tumor_gate_dilation_mm": 5.0},
}


def card_from_dict(raw: dict, path: Optional[Path] = None) -> ModelCard:
    """Validate ``raw`` against the schema and fill defaults. Raises InputError with the failing field."""
    try:
        jsonschema.validate(raw, schema())
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        source = f" {path}" if path else ""
        raise InputError(f"invalid model card{source}: at {where}: {exc.message}") from None
    raw = copy.deepcopy(raw)
    for section, defaults in _DEFAULTS.items():
        merged = dict(defaults)
        merged.update(raw.get(section, {}))
        raw[section] = merged
    raw["classes"] = [complete_class(c) for c in raw["classes"]]
    if raw.get("class_tables"):
        raw["class_tables"] = {k: [complete_class(c) for c in v] for k, v in raw["class_tables"].items()}
    _check_classes(raw, path)
    return ModelCard(raw=raw, path=path)


def _check_classes(raw: dict, path) -> None:
    tables = [raw["classes"]] + list((raw.get("class_tables") or {}).values())
    for table in tables:
        names = [c["name"] for c in table]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise InputError(f"invalid model card {path or raw['id']}: duplicate class name(s) {sorted(dup)}")
        labels = [c.get("label", i + 1) for i, c in enumerate(table)]
        if len(set(labels)) != len(labels):
            raise InputError(f"invalid model card {path or raw['id']}: duplicate label values")


def load_card(path) -> ModelCard:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"model card {path} does not exist; pass a JSON model card file "
                         "(see AtlasSegLib/cards/ for examples)")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"model card {path} is not valid JSON: {exc}") from None
    return card_from_dict(raw, path=path.resolve())


def builtin_card_ids() -> list:
    return sorted(p.stem for p in CARDS_DIR.glob("*.json"))


def builtin_card(model_id: str) -> ModelCard:
    path = CARDS_DIR / f"{model_id}.json"
    if not path.is_file():
        raise InputError(f"unknown model '{model_id}'; known models: {', '.join(builtin_card_ids())} "
                         "(or pass --model-card FILE for your own model)")
    return load_card(path)
