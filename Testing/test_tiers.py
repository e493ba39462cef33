"""The test tiers (Testing/tiers.py): a test is marked with why it is expensive from the code it runs, fixtures and
helpers included, so ``make test-quick`` leaves out exactly the expensive ones without anyone keeping a list; and
under CI an unmarked test over the time limit fails with its name.

The fixtures below refer to what makes a test expensive without doing it: the detection reads code, it never
runs it, and these tests check the marks the collection hook put on themselves."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib

import pytest

import tiers
from testdata import REPO


@pytest.fixture
def demo_model_run():
    from AtlasSegLib.demo import run_demo  # a function-level import is read too

    return run_demo  # not called: its reference is the evidence


def _cli_in_a_process(*args):
    return subprocess.run([sys.executable, "-m", "AtlasSegLib", *args], capture_output=True)


@pytest.fixture
def cli_helper_user():
    return _cli_in_a_process  # reached through a module-level helper of the test folder


@pytest.fixture
def fixture_of_a_fixture(demo_model_run):
    return demo_model_run


@pytest.fixture
def pipeline_with_a_loaded_model():
    from AtlasSegLib.networks import load_model
    from AtlasSegLib.pipeline import Segmenter

    return lambda card: Segmenter(load_model(card))  # called, as a test would (here only read)


@pytest.fixture
def pipeline_with_the_tiny_predictor():
    from AtlasSegLib.card import load_card
    from AtlasSegLib.networks import load_model
    from AtlasSegLib.pipeline import Segmenter
    from models_for_tests import bone_model

    return lambda folder: Segmenter(load_model(load_card(bone_model(folder))))


def _tiers(request) -> set:
    return {m.name for m in request.node.iter_markers() if m.name in tiers.TIERS}


def test_a_test_using_a_fixture_that_runs_the_demo_model_is_marked_engine(demo_model_run, request):
    assert _tiers(request) == {"engine"}


def test_a_fixture_of_a_fixture_marks_the_test_too(fixture_of_a_fixture, request):
    assert _tiers(request) == {"engine"}


def test_the_pipeline_runs_a_real_network_unless_given_the_tiny_predictor(pipeline_with_a_loaded_model, request):
    assert _tiers(request) == {"engine"}


def test_a_pipeline_helper_that_runs_no_model_is_not_engine(request):
    from AtlasSegLib.pipeline import Segmenter

    assert callable(Segmenter._to_input_grid) and _tiers(request) == set()  # a reference, not a run


def test_pipeline_stage_tests_with_the_tiny_predictor_stay_in_the_quick_tier(pipeline_with_the_tiny_predictor,
                                                                              request):
    assert _tiers(request) == set()


def test_a_process_started_in_a_helper_marks_the_test_subprocess(cli_helper_user, request):
    assert _tiers(request) == {"subprocess"}


def test_a_command_word_compared_or_used_as_a_folder_name_is_not_marked(request, tmp_path):
    folder = tmp_path / "demo"
    made = [str(folder), "demo"]  # not an argv: "demo" is not its command
    assert ["atlasseg", "demo", "--model"][1:] == ["demo", "--model"] and made and _tiers(request) == set()


# Read from a file of its own: words in this test module's own code would mark its tests.
SAMPLE = """
def validates_the_seg():
    return ["dciodvfy", "seg.dcm"]


def reads_a_three_slice_series(ctdata):
    \"\"\"Without plastimatch: polygons filled by hand.\"\"\"
    return ctdata / "dcmqi_ct3slice" / "ct-3slice"
"""


def test_outside_programs_are_external_but_not_in_prose_or_data_folder_names(tmp_path):
    import importlib.util

    (tmp_path / "sample_tiers.py").write_text(SAMPLE)
    spec = importlib.util.spec_from_file_location("sample_tiers", tmp_path / "sample_tiers.py")
    sample = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sample)
    assert set(tiers.evidence([sample.validates_the_seg])) == {"external"}
    assert set(tiers.evidence([sample.reads_a_three_slice_series])) == set()


def test_pyproject_registers_every_tier_with_strict_markers():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "--strict-markers" in config["addopts"]
    assert config["markers"] == tiers.marker_lines()


def test_under_ci_an_unmarked_test_over_the_limit_fails_with_its_name_and_a_marked_one_passes(tmp_path):
    (tmp_path / "test_timed.py").write_text(textwrap.dedent("""
        import time
        import pytest

        def test_quick():
            pass

        def test_unmarked_and_long():
            time.sleep(0.4)

        @pytest.mark.slow
        def test_marked_and_long():
            time.sleep(0.4)
    """))
    env = dict(os.environ, CI="true", ATLASSEG_QUICK_LIMIT_S="0.2",
               PYTHONPATH=os.pathsep.join([str(REPO / "Testing"), str(REPO), os.environ.get("PYTHONPATH", "")]))
    # Testing/conftest.py loaded as a plugin: its hooks apply to a test file outside the test folder.
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest", "--rootdir",
            str(tmp_path), "-c", os.devnull, str(tmp_path / "test_timed.py")]
    r = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "1 failed, 2 passed" in r.stdout, r.stdout
    assert "test_timed.py::test_unmarked_and_long: call took" in r.stdout, r.stdout
    # Outside CI the same file passes: the rule is CI's, a developer's loaded machine does not fail tests.
    env["CI"] = "false"
    r = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "3 passed" in r.stdout, r.stdout + r.stderr
