"""Dependency handling: Slicer's own packages are never installed or replaced (AtlasSegDependencies)."""
import pytest

from AtlasSegModule import AtlasSegDependencies as deps


def test_requirements_file_lists_what_the_engine_needs_and_nothing_slicer_ships():
    requirements = deps.readRequirements()
    names = {deps.canonicalName(r) for r in requirements}
    assert {"monai", "connected-components-3d", "fill-voids", "isal", "jsonschema", "tqdm", "nibabel"} <= names
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


# Python and the Python packages each supported Slicer ships, from its SuperBuild (Slicer tags v5.8.1, v5.10.0,
# branch 5.12: SuperBuild/External_python.cmake and the python-*-requirements.txt pins). SimpleITK is built by
# Slicer itself: present in every version (its exact version does not matter here).
SLICER_5_8 = ("3.9.10", {"pydicom": "2.4.4", "numpy": "1.26.4", "requests": "2.32.3", "simpleitk": "2.4.0"})
SLICER_5_10 = ("3.12.10", {"pydicom": "2.4.4", "numpy": "2.0.2", "requests": "2.32.3", "simpleitk": "2.4.0"})
SLICER_5_12 = ("3.12.10", {"pydicom": "3.0.2", "highdicom": "0.27.0", "numpy": "2.4.6", "requests": "2.34.2",
                           "simpleitk": "2.4.0"})


@pytest.mark.parametrize("slicer", [SLICER_5_8, SLICER_5_10, SLICER_5_12], ids=["5.8", "5.10", "5.12"])
def test_first_install_never_touches_a_package_slicer_ships(slicer):
    python, shipped = slicer
    plan = deps.missingForInstall(deps.readRequirements(), versionOf=shipped.get, pythonVersion=python)
    assert "monai>=1.4,<1.7" in plan and "connected-components-3d>=3.12" in plan  # the engine installs everywhere
    assert not {deps.canonicalName(r) for r in plan} & set(shipped)
    assert not {deps.canonicalName(r) for r in plan} & {"pydicom", "highdicom"}


@pytest.mark.parametrize("slicer, why", [(SLICER_5_8, "needs Python >=3.10; this Slicer has Python 3.9.10"),
                                         (SLICER_5_10, "this Slicer has pydicom 2.4.4, which AtlasSeg does not replace")],
                         ids=["5.8", "5.10"])
def test_dicom_exports_are_unavailable_with_the_reason_where_slicer_cannot_run_them(slicer, why):
    python, shipped = slicer
    unavailable = deps.unavailableFeatures(versionOf=shipped.get, pythonVersion=python)
    assert set(unavailable) == {"DICOM SEG export", "DICOM RTSTRUCT export"}
    assert all(why in reason and "Slicer 5.12" in reason for reason in unavailable.values())


def test_on_slicer_5_12_dicom_exports_use_the_shipped_highdicom_and_install_only_contourpy():
    python, shipped = SLICER_5_12
    statuses = {s.name: s for s in deps.featureStatuses(versionOf=shipped.get, pythonVersion=python)}
    assert statuses["DICOM SEG export"].available and statuses["DICOM SEG export"].toInstall == ()
    assert statuses["DICOM RTSTRUCT export"].toInstall == ("contourpy>=1.2",)


def test_a_too_old_non_slicer_package_makes_the_feature_unavailable_instead_of_being_replaced():
    versions = {"pydicom": "3.0.2", "highdicom": "0.20.0"}
    status = deps.featureStatus(deps.FEATURES[0], versionOf=versions.get, pythonVersion="3.12.10")
    assert not status.available and "highdicom 0.20.0" in status.reason


def test_feature_requirements_are_not_in_the_core_requirements_file():
    """They must never share the core pip run: one impossible package there stopped everything installing."""
    core = {deps.canonicalName(r) for r in deps.readRequirements()}
    for feature in deps.FEATURES:
        assert not core & {deps.canonicalName(r) for r in feature.requirements}, feature.name


@pytest.mark.parametrize("slicer", [SLICER_5_8, SLICER_5_10, SLICER_5_12], ids=["5.8", "5.10", "5.12"])
def test_install_runs_core_packages_alone_and_each_feature_in_a_pip_run_of_its_own(slicer):
    python, shipped = slicer
    runs, unavailable = deps.installPlan(deps.readRequirements(), versionOf=shipped.get, pythonVersion=python)
    assert runs[0].feature == "" and "monai>=1.4,<1.7" in runs[0].requirements
    featureNames = {deps.canonicalName(r) for f in deps.FEATURES for r in f.requirements}
    assert not {deps.canonicalName(r) for r in runs[0].requirements} & featureNames
    assert all(run.feature for run in runs[1:])
    planned = {run.feature for run in runs[1:]}
    assert not planned & set(unavailable)  # nothing is installed for a feature this Slicer cannot run
    if python.startswith("3.9"):
        assert planned == set()


# ------------------------------------------------------------------ installs that cannot half-succeed (audit D2, D3, D6, D14)
def test_slicer_5_11_pip_ensure_gets_the_constraints_file_and_no_skip_packages(tmp_path):
    """D3: skip_packages switches pip_ensure to --no-deps installs and a resolver-less dependency walk that only
    logs a dependency that failed; the constraints file already pins Slicer's packages."""
    arguments = deps.pipEnsureArguments(["monai>=1.4,<1.7", "tqdm>=4.60"], tmp_path / "c.txt", "AtlasSeg")
    assert "skip_packages" not in arguments
    assert arguments["constraints"] == str(tmp_path / "c.txt")
    assert [str(r) for r in arguments["requirements"]] == ["monai<1.7,>=1.4", "tqdm>=4.60"]
    assert arguments["prompt_install"] is False  # AtlasSeg asked already
    assert arguments["prompt_restart"] is False  # AtlasSeg advises from every changed package (D14)


def test_pip_runs_as_a_process_of_its_own_with_slicers_packages_pinned(tmp_path):
    """The command that replaces slicer.util.pip_install on Slicer < 5.11, run for real (already satisfied, so
    no network): pip accepts it, and the GUI is pumped while it runs."""
    import sys

    constraints = tmp_path / "slicer-constraints.txt"
    constraints.write_text(deps.constraintsText(), encoding="utf-8")
    assert "numpy==" in constraints.read_text()
    pumped, lines = [], []
    deps.runCommand(deps.pipCommand(sys.executable, constraints, ["tqdm>=4.60"]), pump=lambda: pumped.append(1),
                    onLine=lines.append)
    assert any("already satisfied" in line for line in lines) and pumped


def test_a_failing_install_step_raises_with_its_last_lines_and_the_gui_is_pumped_meanwhile():
    import sys

    pumped = []
    with pytest.raises(deps.DependencyError, match=r"(?s)exit code 3.*no wheel for this Python"):
        deps.runCommand([sys.executable, "-c", "import time; print('no wheel for this Python'); time.sleep(0.6); "
                         "raise SystemExit(3)"], pump=lambda: pumped.append(1), what="pip")
    assert len(pumped) >= 5  # every 30 ms: the modal dialog repaints while the step runs


# slow as well as subprocess (tiers.PROCESS_CALLABLES): smokeTest imports every package of the closure (torch,
# MONAI, SciPy, SimpleITK, edt, ...) in a fresh interpreter, 5-7 s on two cores.
@pytest.mark.slow
def test_the_whole_dependency_closure_imports_in_the_engines_python():
    assert deps.smokeTest() == {}


def _brokenJsonschema(tmp_path):
    """A jsonschema whose own dependency is missing, as a --no-deps install leaves it."""
    package = tmp_path / "broken" / "jsonschema"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("import rpds_not_installed_by_a_no_deps_walk\n", encoding="utf-8")
    return package.parent


def test_an_install_whose_transitive_dependency_is_missing_is_a_failure(tmp_path, monkeypatch):
    """D3: pip 'succeeded' and every top-level requirement is there, but one of jsonschema's dependencies is
    not: the import check finds it, and the install is reported as failed, naming what does not import."""
    monkeypatch.setenv("PYTHONPATH", str(_brokenJsonschema(tmp_path)))
    broken = deps.smokeTest(modules=["jsonschema", "AtlasSegLib.card", "tqdm"])
    assert set(broken) == {"jsonschema", "AtlasSegLib.card"}
    assert "rpds_not_installed_by_a_no_deps_walk" in broken["AtlasSegLib.card"]
    with pytest.raises(deps.DependencyError, match=r"(?s)still fails.*AtlasSegLib\.card: ModuleNotFoundError"):
        deps.installRequirements(deps.readRequirements())  # nothing to install here; the check still runs


def test_an_installed_torch_older_than_required_is_refused_with_how_to_fix_it():
    with pytest.raises(deps.DependencyError, match="PyTorch Utils module, click Uninstall"):
        deps.checkTorchVersion("2.0.1+cu118")
    assert deps.checkTorchVersion("2.5.1+cu124") == "2.5.1+cu124"


def test_torch_is_installed_by_light_the_torch_in_processes_of_its_own():
    commands = deps.torchInstallCommands("/slicer/bin/PythonSlicer", lttInstalled=False)
    assert commands == [
        ["/slicer/bin/PythonSlicer", "-m", "pip", "install", "--disable-pip-version-check", "light-the-torch>=0.5"],
        ["/slicer/bin/PythonSlicer", "-m", "light_the_torch", "install", "torch" + deps.TORCH_REQUIREMENT]]
    assert len(deps.torchInstallCommands("python", lttInstalled=True)) == 1


def test_restart_is_advised_for_any_changed_package_already_loaded_not_only_the_requested_ones():
    """D14: monai's install upgrading scipy (imported by Slicer at startup) needs a restart, though scipy was
    not among the requested packages."""
    before = {"scipy": "1.13.1", "numpy": "1.26.4", "tqdm": None}
    after = {"scipy": "1.14.0", "numpy": "1.26.4", "monai": "1.5.0", "tqdm": "4.66.0"}
    changed = deps.changedDistributions({k: v for k, v in before.items() if v}, after)
    assert changed == ["monai", "scipy", "tqdm"]
    assert deps.restartAdvised(changed, loadedModules={"scipy.ndimage", "numpy", "vtk"}) == ["scipy"]
    assert deps.restartAdvised(changed, loadedModules={"numpy"}) == []


def test_a_distribution_is_mapped_to_the_modules_it_provides():
    assert "cc3d" in deps.topLevelModules("connected-components-3d")
    assert "PIL" in deps.topLevelModules("pillow")
    assert "jsonschema" in deps.topLevelModules("jsonschema")


def _slicerPipEnsure(requirements, constraints=None, skip_packages=None, prompt_install=True, prompt_restart=True,
                     requester=None, skip_in_testing=True, show_progress=True):
    """The signature of Slicer's ``slicer.packaging.pip_ensure`` (Base/Python/slicer/packaging.py, Slicer 5.12 and
    main, copied once: slicer-core has no ``slicer.packaging``)."""


def test_the_pip_ensure_arguments_bind_to_slicers_signature(tmp_path):
    import inspect

    bound = inspect.signature(_slicerPipEnsure).bind(
        **deps.pipEnsureArguments(["monai>=1.4"], tmp_path / "c.txt", "AtlasSeg"))
    bound.apply_defaults()
    assert bound.arguments["skip_packages"] is None
