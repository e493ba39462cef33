"""Shared fixtures: the real CT data (../shared/ctdata or $ATLASSEG_TEST_DATA) and small helpers."""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
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


_SESSION_HOME = None


def pytest_configure(config):
    """Tests never read or write the user's AtlasSeg cache (downloaded weights, OpenVINO conversions, which are
    large and would also change which backend ``auto`` picks from one run to the next): one fresh cache per test
    session, inherited by the engine subprocesses. Tests that need a cache of their own still set
    ``ATLASSEG_HOME`` themselves."""
    global _SESSION_HOME
    _SESSION_HOME = tempfile.mkdtemp(prefix="atlasseg-test-home-")
    os.environ["ATLASSEG_HOME"] = _SESSION_HOME


def pytest_unconfigure(config):
    if _SESSION_HOME:
        shutil.rmtree(_SESSION_HOME, ignore_errors=True)
