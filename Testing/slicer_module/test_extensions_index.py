"""The extension is ready for Slicer's Extensions Index (audit section 3): catalog entry valid against Slicer's
published schema, repository named Slicer<Name> (the Index's check_git_repository_name), contributors in the
documented "Name (Org)" form, CMake as the 5.10+ extension template. What only the Index's CI confirms: that
the URLs answer (the repository must be public at exactly that address)."""
import json
import re
from pathlib import Path

import jsonschema

REPO_ROOT = Path(__file__).resolve().parents[2]
ENTRY = REPO_ROOT / "Resources" / "ExtensionsIndex" / "AtlasSeg.json"
SCHEMA = Path(__file__).resolve().parent / "data" / "slicer-extension-catalog-entry-schema-v1.0.2.json"
CMAKE = (REPO_ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
REPOSITORY = "https://github.com/AtlasSeg/SlicerAtlasSeg"


def _cmake(key):
    return re.search(rf'set\({key} "([^"]*)"\)', CMAKE).group(1)


def test_catalog_entry_is_valid_against_slicers_published_schema():
    entry = json.loads(ENTRY.read_text(encoding="utf-8"))
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(entry, schema)
    assert entry["$schema"] == schema["$id"]
    assert entry["category"] == _cmake("EXTENSION_CATEGORY") == "Segmentation"
    assert entry["build_dependencies"] == ["PyTorch"] == _cmake("EXTENSION_DEPENDS").split()


def test_a_catalog_entry_missing_a_required_field_is_refused_by_the_schema():
    """The schema really checks (so the test above can fail)."""
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    entry = json.loads(ENTRY.read_text(encoding="utf-8"))
    del entry["scm_url"]
    try:
        jsonschema.validate(entry, schema)
    except jsonschema.ValidationError as exc:
        assert "scm_url" in exc.message
    else:
        raise AssertionError("an entry without scm_url passed the schema")


def test_every_url_names_the_slicer_prefixed_repository():
    """The Index refuses a repository whose name lacks "slicer" (ExtensionsIndex check_description_files.py)."""
    entry = json.loads(ENTRY.read_text(encoding="utf-8"))
    assert entry["scm_url"] == REPOSITORY + ".git"
    assert _cmake("EXTENSION_HOMEPAGE") == REPOSITORY
    raw = REPOSITORY.replace("github.com", "raw.githubusercontent.com") + "/main/"
    urls = [_cmake("EXTENSION_ICONURL"), *_cmake("EXTENSION_SCREENSHOTURLS").split()]
    for url in urls:
        assert url.startswith(raw), url
        assert (REPO_ROOT / url[len(raw):]).is_file(), f"{url} names no file of this repository"
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert "SlicerAtlasSeg" in readme and "must be named" in readme


def test_contributors_are_in_the_documented_name_org_form():
    contributors = _cmake("EXTENSION_CONTRIBUTORS").split(", ")
    assert contributors and all(re.fullmatch(r"[^()]+ \([^()]+\)", c) for c in contributors), contributors
    module = (REPO_ROOT / "AtlasSeg" / "AtlasSeg.py").read_text(encoding="utf-8")
    assert f"self.parent.contributors = {contributors!r}".replace("'", '"') in module


def test_cmake_minimum_required_is_the_5_10_extension_templates():
    assert CMAKE.startswith("cmake_minimum_required(VERSION 3.20.6...3.22.6 FATAL_ERROR)\n")
