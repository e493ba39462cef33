"""Every segment AtlasSeg writes names a terminology context that has its codes (audit D7).

Slicer's "3D Slicer General Anatomy list" lacks 9 of AtlasSeg's type codes; the extension ships its own context
(as SlicerTotalSegmentator does) and loads it at startup. These tests load the shipped file into Slicer's real
Terminologies logic (slicer-core) and resolve every structure's category, type and modifier in the context the
segments name. What only the app shows: the terminology selector listing them (the same logic calls).
"""
import json

import pytest
import vtk  # noqa: F401  (vtk before slicer, as in conftest.py)

import slicer

from AtlasSegModule import AtlasSegLogic, terminology

STRUCTURES = json.loads((terminology.TERMINOLOGY_FILE.parents[3] / "AtlasSegLib" / "data" /
                         "structures.json").read_text(encoding="utf-8"))["structures"]


def test_the_shipped_terminology_file_is_built_from_the_structure_table():
    assert terminology.TERMINOLOGY_FILE.read_text(encoding="utf-8") == terminology.buildText(STRUCTURES), (
        "regenerate it: terminology.TERMINOLOGY_FILE.write_text(terminology.buildText(structures))")


@pytest.fixture(scope="module")
def terminologies():
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    assert terminology.loadTerminology(logic)
    assert terminology.loadTerminology(logic)  # a second load (module created twice) is harmless
    return logic


def _find(items):
    return {item.GetCodeValue(): item for item in items}


def _categories(logic, context):
    out = []
    for index in range(logic.GetNumberOfCategoriesInTerminology(context)):
        category = slicer.vtkSlicerTerminologyCategory()
        logic.GetNthCategoryInTerminology(context, index, category)
        out.append(category)
    return out


def _types(logic, context, category):
    out = []
    for index in range(logic.GetNumberOfTypesInTerminologyCategory(context, category)):
        typ = slicer.vtkSlicerTerminologyType()
        logic.GetNthTypeInTerminologyCategory(context, category, index, typ)
        out.append(typ)
    return out


def _modifiers(logic, context, category, typ):
    out = []
    for index in range(logic.GetNumberOfTypeModifiersInTerminologyType(context, category, typ)):
        modifier = slicer.vtkSlicerTerminologyType()
        logic.GetNthTypeModifierInTerminologyType(context, category, typ, index, modifier)
        out.append(modifier)
    return out


@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_every_structures_codes_resolve_in_the_context_its_segments_name(terminologies, name):
    structure = STRUCTURES[name]
    entry = AtlasSegLogic.terminologyEntry(structure)
    context = entry.split("~")[0]
    assert context == terminology.CONTEXT_NAME == AtlasSegLogic.TERMINOLOGY_CONTEXT
    category = _find(_categories(terminologies, context)).get(structure["category"]["code"])
    assert category is not None, f"{name}: category {structure['category']} not in {context}"
    typ = _find(_types(terminologies, context, category)).get(structure["type"]["code"])
    assert typ is not None, f"{name}: type {structure['type']} not in {context}"
    assert typ.GetCodeMeaning() == structure["type"]["meaning"]
    if structure.get("type_modifier"):
        modifier = _find(_modifiers(terminologies, context, category, typ)).get(structure["type_modifier"]["code"])
        assert modifier is not None, f"{name}: modifier {structure['type_modifier']} not in {context}"
    assert bool(category.GetShowAnatomy()) == ("region" in structure)  # tumors: the organ as anatomic region


def test_the_library_names_the_same_context_in_the_files_it_writes():
    from AtlasSegLib import export as libexport

    assert libexport.TERMINOLOGY_CONTEXT == terminology.CONTEXT_NAME
