"""Fixtures for the Slicer-module tests: a real MRML scene and module logics from slicer-core, no Qt.

``slicer`` is imported first on purpose: a vtk other than the one slicer-core was built against (9.6.2) makes
``import slicer`` crash, and the whole run should stop on that one clear error.

Tests here import shared names from ``slicer_harness``, never ``from conftest import ...``: every conftest.py
outside a package is the module "conftest", so that name means whichever conftest pytest loaded last.
"""
import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
MODULE_DIR = REPO_ROOT / "AtlasSeg"
for path in (HERE, MODULE_DIR, REPO_ROOT):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import vtk  # noqa: E402,F401  (vtk before slicer, see above)
from vtk.util import numpy_support  # noqa: E402,F401


import slicer  # noqa: E402,F401  (first: a wrong vtk fails here, once, clearly)


import slicer_harness  # noqa: E402

slicer_harness.installScriptedLoadableModuleStub()


@pytest.fixture
def slicer_app():
    app = slicer_harness.setup()
    yield app
    slicer_harness.teardown()


@pytest.fixture
def logic(slicer_app):
    from AtlasSegModule import AtlasSegLogic

    return AtlasSegLogic.AtlasSegLogic()




def pytest_configure(config):
    # The engine subprocesses inherit this: keep torch from oversubscribing the 2-core test machines.
    os.environ.setdefault("OMP_NUM_THREADS", "2")
