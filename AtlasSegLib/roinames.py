"""ROI names and RT ROI types of exported structures, for radiotherapy planning systems.

* ``--names model`` (default): the model's structure names (``liver``, ``kidney_left``).
* ``--names tg263``: AAPM TG-263 standard names from ``data/tg263.json`` (``Liver``, ``Kidney_L``, ``GTV_Liver``);
  a structure the table does not know (a custom model's class) keeps its model name and is listed in the notes.
* ``--name-map FILE``: the user's own names, applied over either of the above. JSON (``{"liver": "Liver"}``, or that
  object under a ``"names"`` key) or CSV (two columns, structure and name; a ``structure,name`` header line is
  allowed). Validated before anything is written: an unknown structure, a name used twice (compared without case,
  as planning systems compare them), an empty name, one longer than DICOM's 64 characters (ROI Name and Segment
  Label are LO) or one holding a backslash or control character is refused naming the line or key; a name longer
  than TG-263's 16 characters is written and listed as a warning (TG-263 keeps names that short because some
  planning systems accept no more).

The names go into RTSTRUCT ROI Name (and the 16-character ROI Observation Label), DICOM SEG Segment Label and
.seg.nrrd segment names; file names, codes and colours do not change.

RT ROI Interpreted Type (RTSTRUCT only): organs are ``ORGAN``. A tumor class is an automatic *candidate* that
nobody has reviewed, so by default it is written with an empty type (DICOM: Type 2, empty = not interpreted) and
the planner sets it on review; ``--tumor-roi-type GTV`` writes it as a gross tumor volume (for candidates reviewed
before export), ``ORGAN``, ``AVOIDANCE`` or ``CONTROL`` as the DICOM defined terms say. CTV/PTV are not offered:
they are margins a person draws around a GTV. A cyst is never typed GTV.

Plain Python (json/csv): imported by the CLI parser and the Slicer panel before any heavy package.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .errors import InputError

TG263_PATH = Path(__file__).resolve().parent / "data" / "tg263.json"

NAME_SCHEMES = ("model", "tg263")
NAME_SCHEME_LABELS = (("model", "Model names (liver, kidney_left)"), ("tg263", "TG-263 (Liver, Kidney_L)"))
TUMOR_ROI_TYPES = ("none", "GTV", "ORGAN", "AVOIDANCE", "CONTROL")
TUMOR_ROI_TYPE_LABELS = (("none", "Not set (the planner decides)"), ("GTV", "GTV"), ("ORGAN", "ORGAN"),
                         ("AVOIDANCE", "AVOIDANCE"), ("CONTROL", "CONTROL"))
DICOM_LO_MAX = 64  # ROI Name (3006,0026) and Segment Label (0062,0005) are LO
TG263_MAX = 16
CYST_CODE = "441457006"  # SNOMED CT "Cyst"
_BAD_CHARACTERS = re.compile(r"[\\\x00-\x1f\x7f]")


@lru_cache(maxsize=1)
def tg263_table() -> dict:
    """Structure name -> ``{"name", "match", "note"?}`` from ``data/tg263.json``."""
    return json.loads(TG263_PATH.read_text(encoding="utf-8"))["names"]


@dataclass
class RoiNames:
    """The ROI name of every structure of an export, and what the user should know about them."""

    names: dict  # structure name -> ROI name
    scheme: str = "model"
    map_file: str = ""
    no_tg263_name: list = field(default_factory=list)  # kept their model name under --names tg263
    over_16: list = field(default_factory=list)  # "ROI name (n characters)" longer than TG-263's limit

    def notes(self) -> dict:
        out = {"names": self.scheme + (f" + {self.map_file}" if self.map_file else "")}
        if self.no_tg263_name:
            out["no_tg263_name"] = list(self.no_tg263_name)
        if self.over_16:
            out["names_over_16_characters"] = list(self.over_16)
        return out


def read_name_map(path) -> dict:
    """A mapping file (JSON or CSV, see the module's docstring) as ``{structure: name}``, checked for form only
    (file, syntax, one name per structure, valid names); ``roi_names`` checks the structures against a run."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"ROI name mapping file {path} does not exist; give a JSON or CSV file of structure -> name")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read ROI name mapping file {path}: {exc}") from None
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        return _json_map(text, path)
    return _csv_map(text, path)


def _json_map(text: str, path: Path) -> dict:
    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise InputError(f"ROI name mapping file {path}: structure(s) {', '.join(twice)} given more than once")
        return dict(pairs)

    try:
        data = json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as exc:
        raise InputError(f"ROI name mapping file {path} is not valid JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("names"), dict):
        data = data["names"]
    if not isinstance(data, dict):
        raise InputError(f"ROI name mapping file {path}: expected a JSON object of structure -> ROI name, "
                         'e.g. {"liver": "Liver", "kidney_left": "Kidney_L"}')
    out = {}
    for structure, name in data.items():
        if not isinstance(name, str):
            raise InputError(f"ROI name mapping file {path}: the name of '{structure}' must be a string, "
                             f"not {json.dumps(name)}")
        out[str(structure).strip()] = _checked_name(name, f"{path}: '{structure}'")
    return out


def _csv_map(text: str, path: Path) -> dict:
    out, lines = {}, {}
    for number, row in enumerate(csv.reader(text.splitlines()), start=1):
        cells = [c.strip() for c in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if number == 1 and [c.lower() for c in cells[:2]] == ["structure", "name"]:
            continue  # header line
        if len(cells) != 2:
            raise InputError(f"ROI name mapping file {path}, line {number}: expected two columns "
                             f"(structure,name), found {len(cells)}: {','.join(row)}")
        structure, name = cells
        if structure in out:
            raise InputError(f"ROI name mapping file {path}: structure '{structure}' given twice "
                             f"(lines {lines[structure]} and {number})")
        out[structure] = _checked_name(name, f"{path}, line {number}")
        lines[structure] = number
    if not out:
        raise InputError(f"ROI name mapping file {path} maps no structure; write one 'structure,name' line each "
                         "(CSV) or a JSON object")
    return out


def _checked_name(name: str, where: str) -> str:
    name = name.strip()
    if not name:
        raise InputError(f"{where}: the ROI name is empty")
    if len(name) > DICOM_LO_MAX:
        raise InputError(f"{where}: ROI name '{name}' has {len(name)} characters; DICOM allows {DICOM_LO_MAX} "
                         f"(TG-263 recommends at most {TG263_MAX})")
    if _BAD_CHARACTERS.search(name):
        raise InputError(f"{where}: ROI name {name!r} holds a backslash or control character, which DICOM names "
                         "cannot hold")
    return name


def roi_names(structures, *, names: str = "model", name_map=None) -> RoiNames:
    """The ROI name of each structure in ``structures`` (model names, in export order).

    Args:
        names: ``model`` or ``tg263``.
        name_map: a mapping file (path) or a ``{structure: name}`` dict, applied over ``names``.

    Raises:
        InputError: unknown scheme, a mapping entry for a structure that is neither in this export nor in
            AtlasSeg's structure table, two structures given the same name, or an invalid name.
    """
    if names not in NAME_SCHEMES:
        raise InputError(f"unknown ROI name scheme '{names}'; choose one of {', '.join(NAME_SCHEMES)} "
                         "(and --name-map FILE for your own names)")
    structures = list(structures)
    result = RoiNames(names={s: s for s in structures}, scheme=names)
    if names == "tg263":
        table = tg263_table()
        for s in structures:
            if s in table:
                result.names[s] = table[s]["name"]
            else:
                result.no_tg263_name.append(s)
    if name_map is not None:
        if isinstance(name_map, dict):
            mapping = {str(k): _checked_name(str(v), f"ROI name of '{k}'") for k, v in name_map.items()}
        else:
            mapping = read_name_map(name_map)
            result.map_file = Path(name_map).name
        from .card import structures as known_structures  # here: the card module needs jsonschema

        known = set(structures) | set(known_structures()) | set(tg263_table())
        unknown = sorted(k for k in mapping if k not in known)
        if unknown:
            source = f" file {name_map}" if result.map_file else ""
            raise InputError(f"ROI name mapping{source}: unknown structure(s) {', '.join(unknown)}; this export has "
                             f"{', '.join(structures)}")
        for s in structures:
            if s in mapping:
                result.names[s] = mapping[s]
                if s in result.no_tg263_name:
                    result.no_tg263_name.remove(s)
    seen = {}
    for s in structures:
        seen.setdefault(result.names[s].casefold(), []).append(s)
    clashes = [" and ".join(f"{s} -> '{result.names[s]}'" for s in group) for group in seen.values() if len(group) > 1]
    if clashes:
        raise InputError(f"ROI names must be unique (planning systems compare them without case): "
                         f"{'; '.join(clashes)}")
    if names != "model" or name_map is not None:  # model names make no claim to TG-263's length rule
        result.over_16 = [f"{result.names[s]} ({len(result.names[s])})" for s in structures
                          if len(result.names[s]) > TG263_MAX]
    return result


def interpreted_type(kind: str, entry: dict, tumor_roi_type: str = "none") -> str:
    """RT ROI Interpreted Type (3006,00A4) of a structure: ``ORGAN`` for organs; for tumor classes the chosen
    ``tumor_roi_type`` (``none`` -> empty), except that a cyst is never a GTV."""
    if tumor_roi_type not in TUMOR_ROI_TYPES:
        raise InputError(f"unknown tumor ROI type '{tumor_roi_type}'; choose one of {', '.join(TUMOR_ROI_TYPES)}")
    if kind != "tumor":
        return "ORGAN"
    if tumor_roi_type == "none":
        return ""
    if tumor_roi_type == "GTV" and str((entry.get("type") or {}).get("code")) == CYST_CODE:
        return ""
    return tumor_roi_type
