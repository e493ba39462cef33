"""Installing AtlasSeg's Python dependencies inside Slicer without breaking Slicer (no Qt at import time).

What users of other AI extensions hit most is an install that replaces Slicer's own SimpleITK, numpy or
requests, or a torch from PyPI that does not match their GPU. So:

* ``Resources/requirements.txt`` lists what AtlasSeg needs besides torch;
* packages Slicer ships (``PROTECTED``) are never installed or upgraded: they are dropped from the list, and
  pip gets a constraints file pinning their installed versions, so a dependency cannot pull in another one;
* features that need more than a Slicer version offers (``FEATURES``: DICOM SEG and RTSTRUCT export need
  Python >= 3.10 and pydicom >= 3, which Slicer 5.8 and 5.10 do not have) are installed in pip calls of their
  own, only where they can work: elsewhere they are reported unavailable, with the reason, and everything else
  still installs (one pip call for everything made a single impossible package stop the whole install);
* torch comes from the PyTorch extension (``PyTorchUtils``), which picks the build for the computer's GPU;
* nothing is installed without the user's OK (the widget asks, listing ``confirmationText``);
* after installing, a restart is offered only when a package that was already imported changed.

The pure functions (parsing, filtering, what is missing) are unit-tested; ``installRequirements`` and
``ensureTorch`` call into Slicer.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

REQUIREMENTS_FILE = Path(__file__).resolve().parents[1] / "Resources" / "requirements.txt"
REQUESTER = "AtlasSeg"
TORCH_REQUIREMENT = ">=2.1"

# Shipped with Slicer (or, for torch, installed by the PyTorch extension for the right GPU): never replaced.
# pydicom: every Slicer ships it (its DICOM module uses it); highdicom: Slicer >= 5.12 ships it.
PROTECTED = ("simpleitk", "numpy", "requests", "vtk", "torch", "torchvision", "torchaudio", "pydicom", "highdicom")

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


class DependencyError(RuntimeError):
    """Installing a dependency failed or was declined; the message says what and how to retry."""


@dataclass(frozen=True)
class InstallOutcome:
    installed: tuple  # requirement strings that were missing and are now installed
    restartRecommended: bool
    unavailable: dict = None  # feature name -> why this Slicer cannot offer it


def canonicalName(requirement: str) -> str:
    """The PEP 503 normalised project name of a requirement: ``"SimpleITK>=2.3"`` -> ``"simpleitk"``."""
    match = _NAME.match(requirement)
    if not match:
        raise ValueError(f"'{requirement}' is not a requirement (expected e.g. 'monai>=1.4')")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def parseRequirements(text: str) -> list:
    """Requirement strings of a requirements.txt text, without comments, blank lines and pip options."""
    requirements = []
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith(("#", "-")):
            requirements.append(line)
    return requirements


def readRequirements(path: Path = REQUIREMENTS_FILE) -> list:
    return parseRequirements(Path(path).read_text(encoding="utf-8"))


def splitProtected(requirements) -> tuple:
    """``(installable, protected)``: requirements AtlasSeg may install, and those it must leave to Slicer."""
    installable, protected = [], []
    for requirement in requirements:
        (protected if canonicalName(requirement) in PROTECTED else installable).append(requirement)
    return installable, protected


def installedVersion(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def isSatisfied(requirement: str, version: Optional[str]) -> bool:
    """Whether an installed ``version`` (None: not installed) satisfies ``requirement``.

    Version ranges are checked with ``packaging`` when it is importable; without it, presence is enough.
    """
    if version is None:
        return False
    try:
        from packaging.requirements import Requirement
        from packaging.version import InvalidVersion
    except ImportError:
        return True
    parsed = Requirement(requirement)
    if parsed.marker is not None and not parsed.marker.evaluate():
        return True
    try:
        return parsed.specifier.contains(version, prereleases=True)
    except InvalidVersion:
        return True


def missingRequirements(requirements, versionOf: Callable[[str], Optional[str]] = installedVersion) -> list:
    """The installable requirements that are not installed, or installed at a version outside the range."""
    installable, _ = splitProtected(requirements)
    return [r for r in installable if not isSatisfied(r, versionOf(canonicalName(r)))]


def constraintsText(versionOf: Callable[[str], Optional[str]] = installedVersion) -> str:
    """A pip constraints file pinning every installed protected package to its current version."""
    lines = [f"{name}=={version}" for name in PROTECTED if (version := versionOf(name))]
    return "\n".join(lines) + ("\n" if lines else "")


def confirmationText(missing, torchMissing: bool) -> str:
    """The question asked before installing anything."""
    parts = ["AtlasSeg needs Python packages that are not installed yet:\n"]
    parts += [f"  • {r}" for r in missing]
    if torchMissing:
        parts.append("  • PyTorch, installed by the PyTorch extension for this computer's GPU or CPU")
    parts.append("\nSlicer's own SimpleITK, numpy and requests are kept as they are. Downloading and installing "
                 "can take a few minutes. Install now?")
    return "\n".join(parts)


def retryHint(requirements) -> str:
    """How to install by hand, shown when the automatic install fails (e.g. behind a proxy)."""
    return ("To retry, click Apply again, or install by hand in Slicer's Python console:\n"
            f"    slicer.util.pip_install({list(requirements)!r})\n"
            "Behind a proxy, set the HTTPS_PROXY environment variable before starting Slicer.")


def _pipEnsure():
    """Slicer's ``pip_ensure`` (``slicer.packaging`` or ``slicer.pydeps`` depending on the version), or None."""
    for moduleName in ("slicer.packaging", "slicer.pydeps"):
        try:
            module = importlib.import_module(moduleName)
        except ImportError:
            continue
        function = getattr(module, "pip_ensure", None)
        if function is not None:
            return function
    return None


def _pipInstall(requirements, requester: str) -> bool:
    """One pip run for ``requirements`` with Slicer's own packages pinned; returns whether a restart is advised.

    Raises:
        whatever pip raised.
    """
    import slicer

    importedBefore = {canonicalName(r) for r in requirements if _importName(r) in sys.modules}
    with tempfile.TemporaryDirectory(prefix="AtlasSeg-pip-") as folder:
        constraints = Path(folder) / "slicer-constraints.txt"
        constraints.write_text(constraintsText(), encoding="utf-8")
        pipEnsure = _pipEnsure()
        if pipEnsure is not None:
            from packaging.requirements import Requirement

            # pip_ensure asks about a restart itself when an imported package changed.
            pipEnsure([Requirement(r) for r in requirements], constraints=str(constraints),
                      skip_packages=list(PROTECTED), prompt_install=False, prompt_restart=True,
                      requester=requester)
            return False
        slicer.util.pip_install(["-c", str(constraints), *requirements])
        return bool(importedBefore)


@dataclass(frozen=True)
class PipRun:
    """One pip invocation of an install: the core requirements (``feature`` empty) or one feature's."""

    feature: str
    requirements: tuple


def installPlan(requirements, versionOf: Callable[[str], Optional[str]] = installedVersion,
                pythonVersion: Optional[str] = None) -> tuple:
    """``(runs, unavailable)``: the pip runs a first install makes, in order — the missing core requirements
    first, then one run per feature this Slicer can offer — and ``{feature: reason}`` for those it cannot.

    Separate runs, because in one pip call a single requirement this Python cannot install (highdicom on
    Slicer 5.8's Python 3.9) made pip install nothing at all.
    """
    runs = []
    core = missingRequirements(requirements, versionOf)
    if core:
        runs.append(PipRun("", tuple(core)))
    unavailable = {}
    for status in featureStatuses(versionOf, pythonVersion):
        if not status.available:
            unavailable[status.name] = status.reason
        elif status.toInstall:
            runs.append(PipRun(status.name, tuple(r for r in status.toInstall if r not in core)))
    return [run for run in runs if run.requirements], unavailable


def installRequirements(requirements, requester: str = REQUESTER) -> InstallOutcome:
    """Install what ``installPlan`` says into Slicer's Python (blocking; call after confirming).

    Raises:
        DependencyError: pip failed on the core requirements; the message names the packages and how to retry.
        A feature whose install fails is only reported (``InstallOutcome.unavailable``).
    """
    runs, unavailable = installPlan(requirements)
    restart = False
    installed = []
    for run in runs:
        wanted = list(run.requirements)
        try:
            restart = _pipInstall(wanted, requester) or restart
        except Exception as exc:  # pip's CalledProcessError, network errors: all end the same way for the user
            if run.feature:  # one feature failing must not undo the rest
                unavailable[run.feature] = f"installing {', '.join(wanted)} failed: {exc}"
                continue
            raise DependencyError(f"Installing {', '.join(wanted)} failed: {exc}\n\n{retryHint(wanted)}") from exc
        importlib.invalidate_caches()
        still = missingRequirements(wanted)
        if still and not run.feature:
            raise DependencyError(f"pip finished but {', '.join(still)} is still missing or too old.\n\n"
                                  f"{retryHint(still)}")
        installed += [r for r in wanted if r not in still]
    return InstallOutcome(installed=tuple(installed), restartRecommended=restart, unavailable=unavailable)


@dataclass(frozen=True)
class Feature:
    """A feature with needs of its own. ``requirements`` are installed when absent; a protected one that is
    absent, or any one installed at a version outside the range, makes the feature unavailable (AtlasSeg never
    replaces an installed package for one feature)."""

    name: str
    requirements: tuple
    python: str = ""  # a version specifier for the running Python, e.g. ">=3.10"


# The versions are the oldest the exports were tested with (highdicom 0.27.0 is what Slicer 5.12 ships).
FEATURES = (
    Feature("DICOM SEG export", ("pydicom>=3.0", "highdicom>=0.27"), python=">=3.10"),
    Feature("DICOM RTSTRUCT export", ("pydicom>=3.0", "contourpy>=1.2"), python=">=3.10"),
)
FEATURE_OF_FORMAT = {"dicom-seg": "DICOM SEG export", "rtstruct": "DICOM RTSTRUCT export"}


@dataclass(frozen=True)
class FeatureStatus:
    name: str
    available: bool  # works now, or will once ``toInstall`` is installed
    toInstall: tuple = ()
    reason: str = ""  # why not available


def pythonVersionText(versionInfo=None) -> str:
    info = versionInfo or sys.version_info
    return f"{info[0]}.{info[1]}.{info[2]}"


def featureStatus(feature: Feature, versionOf: Callable[[str], Optional[str]] = installedVersion,
                  pythonVersion: Optional[str] = None) -> FeatureStatus:
    """Whether ``feature`` can work in this Python (given what is installed), and what to install for it."""
    pythonVersion = pythonVersion or pythonVersionText()
    if feature.python and not _pythonMatches(feature.python, pythonVersion):
            return FeatureStatus(feature.name, False, reason=(
                f"{feature.name} needs Python {feature.python}; this Slicer has Python {pythonVersion} (use Slicer "
                "5.12 or later)"))
    toInstall = []
    for requirement in feature.requirements:
        name = canonicalName(requirement)
        version = versionOf(name)
        if isSatisfied(requirement, version):
            continue
        if version is not None or name in PROTECTED:
            found = f"this Slicer has {name} {version}" if version else f"{name} is not installed"
            return FeatureStatus(feature.name, False, reason=(
                f"{feature.name} needs {requirement}; {found}, which AtlasSeg does not replace (Slicer and "
                "other extensions rely on it). Use Slicer 5.12 or later for this feature"))
        toInstall.append(requirement)
    return FeatureStatus(feature.name, True, toInstall=tuple(toInstall))


def _pythonMatches(specifier: str, pythonVersion: str) -> bool:
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:  # only ">=X.Y" is used in FEATURES
        wanted = tuple(int(v) for v in specifier.lstrip(">=").split("."))
        return tuple(int(v) for v in pythonVersion.split(".")[:len(wanted)]) >= wanted
    return SpecifierSet(specifier).contains(pythonVersion, prereleases=True)


def featureStatuses(versionOf: Callable[[str], Optional[str]] = installedVersion,
                    pythonVersion: Optional[str] = None) -> list:
    return [featureStatus(f, versionOf, pythonVersion) for f in FEATURES]


def unavailableFeatures(versionOf: Callable[[str], Optional[str]] = installedVersion,
                        pythonVersion: Optional[str] = None) -> dict:
    """``{feature name: reason}`` for the features this Slicer cannot offer."""
    return {s.name: s.reason for s in featureStatuses(versionOf, pythonVersion) if not s.available}


def requireFeature(name: str) -> None:
    """Raise ``DependencyError`` with the reason when feature ``name`` cannot work in this Slicer."""
    for status in featureStatuses():
        if status.name == name and not status.available:
            raise DependencyError(status.reason + ".")
        if status.name == name and status.toInstall:
            raise DependencyError(f"{name} needs {', '.join(status.toInstall)}: click 'Install' in AtlasSeg's "
                                  "panel (or Apply), then try again.")


def missingForInstall(requirements, versionOf: Callable[[str], Optional[str]] = installedVersion,
                      pythonVersion: Optional[str] = None) -> list:
    """Everything one install would add: the missing core requirements and the installable features' ones."""
    missing = missingRequirements(requirements, versionOf)
    for status in featureStatuses(versionOf, pythonVersion):
        missing += [r for r in status.toInstall if r not in missing]
    return missing


def torchMissing() -> bool:
    return installedVersion("torch") is None


def ensureTorch(askConfirmation: bool = False) -> str:
    """Install torch through the PyTorch extension when it is missing; return the installed version.

    Raises:
        DependencyError: the PyTorch extension is not installed, or the user declined, or installing failed.
    """
    version = installedVersion("torch")
    if version is not None:
        return version
    try:
        import PyTorchUtils
    except ImportError:
        raise DependencyError("AtlasSeg needs PyTorch, which is installed by the PyTorch extension: install "
                              "'PyTorch' from the Extensions Manager, restart Slicer, then click Apply "
                              "again.") from None
    try:
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=askConfirmation,
                                                             torchVersionRequirement=TORCH_REQUIREMENT)
    except Exception as exc:  # whatever pip or light-the-torch raised, the user needs the same advice
        raise DependencyError(f"Installing PyTorch failed: {exc}\n\nOpen the PyTorch Utils module to install it "
                              "(choose the CUDA version of your GPU), then click Apply again.") from exc
    if torch is None:
        raise DependencyError("PyTorch was not installed, so AtlasSeg cannot run; click Apply again to install it.")
    return torch.__version__


def _importName(requirement: str) -> str:
    """The module a requirement is imported as, for the restart check (most projects: the name itself)."""
    known = {"connected-components-3d": "cc3d", "pillow": "PIL", "scikit-image": "skimage"}
    name = canonicalName(requirement)
    return known.get(name, name.replace("-", "_"))
