"""Shared fixtures: the real CT data (../shared/ctdata or $ATLASSEG_TEST_DATA), the SuPreM parity checkpoints (built
once per machine in the test cache), where tests save pictures, and small helpers; and the test tiers: every test is
marked with why it is expensive (Testing/tiers.py) and, under CI, a test with no tier must stay under 5 s."""
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

import tiers  # noqa: E402
from testdata import ct_data_dir, test_cache_dir  # noqa: E402


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


@pytest.fixture(scope="session")
def parity_checkpoints() -> dict:
    """arch -> the SuPreM parity oracle's deterministic checkpoint (released layout) for the U-Net and Swin UNETR,
    built once per machine: kept in the test cache (testdata.test_cache_dir) under a key of the oracle tool's
    bytes and torch's version (the file is torch.save output), so the torch and OpenVINO parity tests share one
    build per session and later sessions none."""
    # Imported here: torch and the SuPreM test module are only for the tests that use this fixture (conftest is
    # loaded by every run, the Slicer tests' included).
    import hashlib
    import subprocess

    import torch
    from test_suprem_networks import ARCHS, shared_dir

    tool = shared_dir() / "tools" / "suprem_parity.py"
    key = hashlib.sha256(tool.read_bytes() + torch.__version__.split("+")[0].encode()).hexdigest()[:16]
    folder = test_cache_dir() / "suprem-parity" / key
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for arch in ARCHS:
        paths[arch] = folder / f"{arch}.pth"
        if not paths[arch].is_file():  # built beside, then renamed: a killed build leaves no half checkpoint
            tmp = folder / f".{arch}.{os.getpid()}.pth"
            subprocess.run([sys.executable, str(tool), "build", arch, str(tmp)], check=True, capture_output=True,
                           timeout=300)
            tmp.replace(paths[arch])
    return paths


@pytest.fixture
def screenshot_dir(tmp_path) -> Path:
    """Where a test saves the pictures it draws: its own temporary folder, never a tracked file. ``make
    screenshots`` sets ATLASSEG_SCREENSHOTS (Resources/Screenshots) to refresh the README's pictures."""
    chosen = os.environ.get("ATLASSEG_SCREENSHOTS")
    folder = Path(chosen) if chosen else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


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


@pytest.hookimpl(tryfirst=True)  # before -m selects: the marks must be on the items by then
def pytest_collection_modifyitems(config, items):
    """Mark each test with the tiers its code shows (Testing/tiers.py: the fixtures it uses, the helpers they
    call), so ``make test-quick`` (-m "not (engine or ...)") and the CI time rule see why a test is expensive."""
    for item in items:
        have = {m.name for m in item.iter_markers()}
        try:
            found = tiers.item_tiers(item)
        except Exception as exc:  # a detection bug must not stop anyone's test run: the test keeps its hand marks
            item.warn(pytest.PytestWarning(f"test tiers not worked out ({type(exc).__name__}: {exc})"))
            continue
        for tier, why in found.items():
            if tier not in have:
                item.add_marker(getattr(pytest.mark, tier))
                item.user_properties.append((f"tier:{tier}", why))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI (CI=true), a test with no tier whose setup or call takes longer than tiers.QUICK_LIMIT_S fails,
    named, so the quick tier stays quick: make it cheaper, or mark why it is expensive."""
    outcome = yield
    report = outcome.get_result()
    if (not tiers.is_ci() or report.when not in ("setup", "call") or not report.passed
            or report.duration <= tiers.QUICK_LIMIT_S):
        return
    if any(m.name in tiers.TIERS for m in item.iter_markers()):
        return
    report.outcome = "failed"
    report.longrepr = (f"{item.nodeid}: {report.when} took {report.duration:.1f} s, over the "
                       f"{tiers.QUICK_LIMIT_S:.0f} s allowed a test with no tier under CI. Make it (or its fixture) cheaper, or mark why it is "
                       "expensive (@pytest.mark.slow with a comment; engine/subprocess/external are detected from "
                       "the code, see Testing/tiers.py).")
