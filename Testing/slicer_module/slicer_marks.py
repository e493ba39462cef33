"""pytest marks for what the Slicer-module tests need from the machine (an OpenGL context, the engine CLI).

Kept apart from ``slicer_harness`` because probing OpenGL opens a render window, which scripts that only need a
scene should not pay for.
"""
import importlib.util

import pytest

from slicer_harness import REPO_ROOT, openGlAvailable


def engineCliAvailable() -> bool:
    """Whether ``python -m AtlasSegLib`` (the engine CLI) and torch exist in this checkout and environment."""
    return (REPO_ROOT / "AtlasSegLib" / "__main__.py").is_file() and importlib.util.find_spec("torch") is not None


requires_opengl = pytest.mark.skipif(not openGlAvailable(), reason="no offscreen OpenGL (EGL/Mesa) context")
requires_engine = pytest.mark.skipif(not engineCliAvailable(), reason="AtlasSegLib CLI or torch not available")
