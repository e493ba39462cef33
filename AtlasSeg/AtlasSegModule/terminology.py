"""AtlasSeg's terminology context for Slicer: every category, type and modifier code AtlasSeg writes.

Slicer's "3D Slicer General Anatomy list" lacks 9 of the type codes AtlasSeg writes (Neoplasm for every tumor,
Cyst, inferior vena cava, portal and hepatic veins, rectum, femur, celiac trunk, vertebral column), so Slicer's
terminology selector could not find those segments' entries. As SlicerTotalSegmentator does, the extension ships
a context of its own (``Resources/Terminology/SegmentationCategoryTypeModifier-AtlasSeg.term.json``, built from
``AtlasSegLib/data/structures.json`` by ``build()``; a test keeps the file equal to it) and loads it into Slicer's
Terminologies logic at startup. Qt-free.
"""
import json
from pathlib import Path

CONTEXT_NAME = "Segmentation category and type - AtlasSeg"
TERMINOLOGY_FILE = (Path(__file__).resolve().parents[1] / "Resources" / "Terminology"
                    / "SegmentationCategoryTypeModifier-AtlasSeg.term.json")
SCHEMA = "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/schemas/segment-context-schema.json#"


def _coded(entry: dict) -> dict:
    return {"CodingSchemeDesignator": entry["scheme"], "CodeValue": entry["code"], "CodeMeaning": entry["meaning"]}


def build(structures: dict) -> dict:
    """The terminology context (Slicer's ``SegmentationCategoryTypeModifier`` JSON) for ``structures``
    (``structures.json``'s ``"structures"``): one category per category code, one type per type code, the
    structures' laterality as type modifiers, each labelled with the structure's name and colour."""
    categories = {}
    for name, structure in structures.items():
        category = categories.setdefault(structure["category"]["code"], {
            **_coded(structure["category"]), "showAnatomy": structure.get("kind") == "tumor", "Type": {}})
        typ = category["Type"].setdefault(structure["type"]["code"], {
            **_coded(structure["type"]), "recommendedDisplayRGBValue": list(structure["color"])})
        modifier = structure.get("type_modifier")
        if modifier:
            typ.setdefault("Modifier", {})[modifier["code"]] = {
                **_coded(modifier), "recommendedDisplayRGBValue": list(structure["color"]), "3dSlicerLabel": name}
        else:
            typ.setdefault("_names", []).append(name)
    for category in categories.values():
        for typ in category["Type"].values():
            names = typ.pop("_names", [])
            if len(names) == 1:  # a type several structures share (Neoplasm of every tumor) names none of them
                typ["3dSlicerLabel"] = names[0]
    return {
        "SegmentationCategoryTypeContextName": CONTEXT_NAME,
        "@schema": SCHEMA,
        "SegmentationCodes": {"Category": [
            {**{k: v for k, v in category.items() if k != "Type"},
             "Type": [{**{k: v for k, v in typ.items() if k != "Modifier"},
                       **({"Modifier": list(typ["Modifier"].values())} if "Modifier" in typ else {})}
                      for typ in category["Type"].values()]}
            for category in categories.values()]},
    }


def buildText(structures: dict) -> str:
    return json.dumps(build(structures), indent=2, ensure_ascii=False) + "\n"


def loadTerminology(logic=None) -> bool:
    """Load the AtlasSeg context into Slicer's Terminologies logic (``logic``: default the module's), once per
    session. Returns whether it is loaded; False outside the Slicer application (no Terminologies module)."""
    if logic is None:
        # here: this module is Qt- and Slicer-free for build() and its test; slicer only for the default logic
        import slicer

        module = getattr(slicer.modules, "terminologies", None)
        if module is None:
            return False
        logic = module.logic()
    if isLoaded(logic):
        return True
    logic.LoadTerminologyFromFile(str(TERMINOLOGY_FILE))  # returns the context name (5.10+) or a bool (5.8)
    return isLoaded(logic)


def isLoaded(logic) -> bool:
    # here: as slicer above: vtk only with a Terminologies logic
    import vtk

    names = vtk.vtkStringArray()
    logic.GetLoadedTerminologyNames(names)
    return CONTEXT_NAME in [names.GetValue(i) for i in range(names.GetNumberOfValues())]
