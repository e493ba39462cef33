"""Where the tests find the repository and the real CT data (importable by tests and benchmarks alike)."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def ct_data_dir() -> Path:
    """The real CT folder: $ATLASSEG_TEST_DATA, else ../shared/ctdata beside the repository."""
    return Path(os.environ.get("ATLASSEG_TEST_DATA", REPO.parent / "shared" / "ctdata"))
