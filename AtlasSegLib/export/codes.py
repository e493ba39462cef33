"""Class codes as every export writes them, the same in DICOM and Slicer: the coding scheme designator of a code
(AtlasSeg's private scheme ``99ATLASSEG`` for classes without a standard code) and Slicer's ``TerminologyEntry``
strings (``terminology_entry`` / ``entry_from_terminology``, also used by the Slicer module). Plain Python."""
from __future__ import annotations

TERMINOLOGY_CONTEXT = "Segmentation category and type - AtlasSeg"  # the Slicer extension ships it (its General Anatomy list lacks 9 of these codes)
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
# AtlasSeg's private coding scheme: codes for classes without a SNOMED CT code (bring-your-own-model classes);
# the code value is the class name. Declared in every DICOM object that uses it.
PRIVATE_SCHEME = "99ATLASSEG"
PRIVATE_SCHEME_NAME = "AtlasSeg class names"


def scheme_designator(scheme) -> str:
    """The coding scheme designator written for a class code, the same in every export: standard schemes as they
    are; AtlasSeg's own codes (bring-your-own-model classes without a SNOMED code; older cards wrote "AtlasSeg")
    and any other local scheme as a DICOM private scheme, whose designator starts with "99"."""
    scheme = str(scheme or "")
    if scheme.upper() in ("ATLASSEG", PRIVATE_SCHEME):
        return PRIVATE_SCHEME
    if scheme and scheme not in ("SCT", "DCM", "FMA", "UMLS", "LN") and not scheme.startswith("99"):
        return "99" + scheme.upper()
    return scheme


def terminology_entry(entry: dict) -> str:
    """Slicer's ``TerminologyEntry`` string for a class entry (the format AtlasSegLogic.terminologyEntry writes)."""
    def part(key):
        code = entry.get(key) or {}
        return f"{scheme_designator(code.get('scheme'))}^{code.get('code', '')}^{code.get('meaning', '')}" if code else "^^"

    return "~".join([TERMINOLOGY_CONTEXT, part("category"), part("type"), part("type_modifier"), ANATOMIC_CONTEXT,
                     part("region"), "^^"])


def entry_from_terminology(text: str) -> dict:
    """Class codes (category/type/type_modifier/region) from a ``TerminologyEntry`` string (inverse of above)."""
    parts = (text or "").split("~")
    out = {}
    for key, index in (("category", 1), ("type", 2), ("type_modifier", 3), ("region", 5)):
        if index < len(parts):
            fields = parts[index].split("^")
            if len(fields) >= 3 and fields[1]:
                out[key] = {"scheme": fields[0], "code": fields[1], "meaning": "^".join(fields[2:])}
    return out


def slicer_terminology(entry: dict) -> dict:
    """The ``terminology`` of a segment in slicerio's segmentation dict (a .seg.nrrd's Segment*_Terminology)."""
    def codes(key):
        code = entry.get(key)
        return [scheme_designator(code.get("scheme")), str(code.get("code", "")), str(code.get("meaning", ""))] \
            if code else None

    out = {"contextName": TERMINOLOGY_CONTEXT, "category": codes("category"), "type": codes("type"),
           "anatomicContextName": ANATOMIC_CONTEXT}
    if codes("type_modifier"):
        out["typeModifier"] = codes("type_modifier")
    if codes("region"):
        out["anatomicRegion"] = codes("region")
    return out
