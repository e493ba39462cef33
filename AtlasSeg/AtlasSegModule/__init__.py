"""The AtlasSeg Slicer module's helpers: logic, MRML bridge, engine runner, dependency installer, review,
export and the panels built in Python.

They live in this package, not beside ``AtlasSeg.py``, because Slicer's scripted-module factory loads **every**
top-level ``.py`` file of a module folder as a module of its own (``qSlicerScriptedLoadableModuleFactory::
isValidFile``): a helper there is executed a second time by the factory (Slicer 5.8 re-runs it into the module
object ``AtlasSeg.py`` already imported, redefining its classes; 5.10+ replaces ``sys.modules`` entries and
keeps half-built ones after a failed import) and logs "class X was not found". A package is imported only the
normal Python way. See Testing/slicer_module/slicer_loaders.py for the loader behaviour the tests reproduce.

Importing the package makes ``AtlasSegLib`` importable: an installed extension copies it next to this package
(already on ``sys.path``); in a source checkout it sits beside the ``AtlasSeg`` folder.
"""
import importlib.util
import sys
from pathlib import Path

#: The module folder: ``AtlasSeg/`` in a checkout, ``qt-scripted-modules/`` in an installed extension.
MODULE_DIR = Path(__file__).resolve().parent.parent


def ensureLibraryImportable() -> Path:
    """Make ``import AtlasSegLib`` import this extension's own copy and return the folder that holds it.

    Slicer APPENDS module folders to ``sys.path``, so an ``AtlasSegLib`` found earlier on the path (the
    ``atlasseg`` wheel pip-installed into Slicer's Python, another checkout) would shadow the copy installed
    with the extension, and the engine would run another version's library. The copy beside this package
    therefore goes first; only where there is none is an importable ``AtlasSegLib`` used as it is.
    """
    for candidate in (MODULE_DIR, MODULE_DIR.parent):
        if (candidate / "AtlasSegLib" / "__init__.py").is_file():
            loadedFile = getattr(sys.modules.get("AtlasSegLib"), "__file__", None)
            if loadedFile and Path(loadedFile).resolve().parent.parent != candidate.resolve():
                raise ImportError(f"another AtlasSegLib ({loadedFile}) was imported before AtlasSeg's own "
                                  f"({candidate / 'AtlasSegLib'}); restart Slicer, and uninstall the other one "
                                  "from Slicer's Python if it was pip-installed there")
            if sys.path[:1] != [str(candidate)]:
                if str(candidate) in sys.path:
                    sys.path.remove(str(candidate))
                sys.path.insert(0, str(candidate))
                importlib.invalidate_caches()
            return candidate.resolve()
    spec = importlib.util.find_spec("AtlasSegLib")
    if spec is None or not spec.origin:
        raise ImportError(f"the AtlasSegLib package is neither installed nor next to {MODULE_DIR}; "
                          "reinstall the AtlasSeg extension")
    return Path(spec.origin).resolve().parent.parent


LIBRARY_PARENT_DIR = ensureLibraryImportable()
