"""Shared fixtures: the real CT data (../shared/ctdata or $ATLASSEG_TEST_DATA) and small helpers."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from testdata import ct_data_dir  # noqa: E402


@pytest.fixture(scope="session")
def ctdata() -> Path:
    """The real CT folder. Missing data is a failure, not a skip: these tests are the point."""
    d = ct_data_dir()
    if not (d / "totalseg_abdomen_sm" / "example_ct_sm.nii.gz").is_file():
        pytest.fail(f"real CT test data not found at {d}; set ATLASSEG_TEST_DATA to the ctdata folder")
    return d


@pytest.fixture
def small_ct(ctdata) -> Path:
    return ctdata / "totalseg_abdomen_sm" / "example_ct_sm.nii.gz"


def write_card(tmp_path: Path, card: dict, name: str = "card.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(card))
    return path
