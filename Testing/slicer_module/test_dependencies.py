"""Dependency handling: Slicer's own packages are never installed or replaced (AtlasSegDependencies)."""
import pytest

from AtlasSegModule import AtlasSegDependencies as deps


def test_requirements_file_lists_what_the_engine_needs_and_nothing_slicer_ships():
    requirements = deps.readRequirements()
    names = {deps.canonicalName(r) for r in requirements}
    assert {"monai", "connected-components-3d", "jsonschema", "tqdm", "nibabel"} <= names
    assert not names & set(deps.PROTECTED), "requirements.txt must not list torch or packages Slicer ships"


def test_protected_packages_are_filtered_whatever_their_spelling():
    installable, protected = deps.splitProtected(
        ["SimpleITK>=2.3", "NumPy<2", "requests", "torch==2.3.1", "monai>=1.4", "tqdm", "TorchVision"])
    assert installable == ["monai>=1.4", "tqdm"]
    assert protected == ["SimpleITK>=2.3", "NumPy<2", "requests", "torch==2.3.1", "TorchVision"]


def test_canonical_names_follow_pep_503():
    assert deps.canonicalName("Connected_Components.3D >= 3.12") == "connected-components-3d"
    assert deps.canonicalName("jsonschema[format]>=4") == "jsonschema"
    with pytest.raises(ValueError, match="is not a requirement"):
        deps.canonicalName(">=1.0")


def test_requirements_text_skips_comments_blank_lines_and_pip_options():
    text = "# comment\n\nmonai>=1.4  # trailing comment\n-c constraints.txt\n--index-url https://x\ntqdm\n"
    assert deps.parseRequirements(text) == ["monai>=1.4", "tqdm"]


def test_missing_means_absent_or_outside_the_version_range():
    versions = {"monai": "1.3.0", "tqdm": "4.66.0", "nibabel": None, "numpy": None}
    missing = deps.missingRequirements(["monai>=1.4,<1.7", "tqdm>=4.60", "nibabel>=5", "numpy>=1.24"],
                                       versionOf=versions.get)
    # numpy is protected: even when "missing" AtlasSeg does not install it.
    assert missing == ["monai>=1.4,<1.7", "nibabel>=5"]


def test_constraints_pin_the_installed_protected_packages():
    versions = {"simpleitk": "2.4.0", "numpy": "1.26.4", "requests": "2.32.3"}
    text = deps.constraintsText(versionOf=versions.get)
    assert text.splitlines() == ["simpleitk==2.4.0", "numpy==1.26.4", "requests==2.32.3"]
    assert deps.constraintsText(versionOf=lambda name: None) == ""


def test_confirmation_lists_every_package_and_promises_to_keep_slicers_own():
    text = deps.confirmationText(["monai>=1.4", "tqdm>=4.60"], torchMissing=True)
    assert "monai>=1.4" in text and "tqdm>=4.60" in text and "PyTorch extension" in text
    assert "SimpleITK, numpy and requests are kept" in text


def test_retry_hint_says_how_to_install_by_hand():
    hint = deps.retryHint(["monai>=1.4"])
    assert "slicer.util.pip_install(['monai>=1.4'])" in hint and "HTTPS_PROXY" in hint


def test_everything_installed_in_the_test_environment_is_found():
    """The test venv has every runtime dependency, so nothing would be installed there."""
    assert deps.missingRequirements(deps.readRequirements()) == []
