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
* torch is installed with light-the-torch, as the PyTorch extension (``PyTorchUtils``) does, which picks the build
  for the computer's GPU;
* nothing is installed without the user's OK (the widget asks, listing ``confirmationText``);
* every install step runs in a process of its own (pip on Slicer < 5.11, light-the-torch for torch) while the
  caller pumps the GUI (``pump``) under a modal dialog, so the panel repaints and cannot start a second install;
  Slicer >= 5.11's ``pip_ensure`` gets the constraints file and no ``skip_packages`` (that path installs with
  ``--no-deps`` and walks the dependency tree without a resolver, logging a failed dependency and going on);
* the install is checked as a whole afterwards: every requirement's version, then an import of what the panels
  and the engine import, in the engine's Python (``smokeTest``): a half-installed dependency tree is a failure;
* an installed torch older than ``TORCH_REQUIREMENT`` is refused with how to fix it (never silently used);
* after installing, a restart is offered when any package that changed (requested or pulled in) was already
  imported into Slicer's process.

The pure functions (parsing, filtering, what is missing, commands, restart advice) are unit-tested, and so is
``installRequirements`` against a real pip into a scratch target; inside Slicer it also calls ``pip_ensure``.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from AtlasSegModule import LIBRARY_PARENT_DIR
from AtlasSegModule.AtlasSegRunner import EngineRunner, RunState, pythonExecutable

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
    restartRecommended: bool  # a package that changed (requested or pulled in) was already imported
    unavailable: dict = None  # feature name -> why this Slicer cannot offer it
    changed: tuple = ()  # every distribution added, removed or upgraded by the install
    restartPackages: tuple = ()  # those of ``changed`` already imported here (why a restart is recommended)


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
        from packaging.requirements import Requirement  # here: optional (see the docstring)
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
        parts.append("  • PyTorch, the build for this computer's GPU or CPU (chosen by light-the-torch, as the PyTorch "
                     "extension does; a download of up to a few GB)")
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


def pipEnsureArguments(requirements, constraintsPath, requester: str) -> dict:
    """Keyword arguments for Slicer >= 5.11's ``pip_ensure``: the constraints file pins Slicer's packages, so no
    ``skip_packages`` (that switches pip_ensure to ``--no-deps`` installs and a resolver-less walk of the tree
    that only logs a dependency that failed). AtlasSeg asks before installing and advises the restart itself."""
    from packaging.requirements import Requirement  # here: optional (see the docstring)

    return dict(requirements=[Requirement(r) for r in requirements], constraints=str(constraintsPath),
                prompt_install=False, prompt_restart=False, requester=requester)


def pipCommand(python: str, constraintsPath, requirements) -> list:
    """What ``slicer.util.pip_install`` runs, as a command of our own (it blocks the GUI in a processEvents loop
    that lets the user click Install again while pip runs)."""
    return [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-c", str(constraintsPath),
            *requirements]


def _pipInstall(requirements, requester: str, pump=None, onLine=None, python: Optional[str] = None) -> None:
    """One pip run for ``requirements`` with Slicer's own packages pinned.

    Raises:
        whatever pip raised (``DependencyError`` when pip exited with an error).
    """
    with tempfile.TemporaryDirectory(prefix="AtlasSeg-pip-") as folder:
        constraints = Path(folder) / "slicer-constraints.txt"
        constraints.write_text(constraintsText(), encoding="utf-8")
        pipEnsure = _pipEnsure()
        if pipEnsure is not None:
            pipEnsure(**pipEnsureArguments(requirements, constraints, requester))
            return
        runCommand(pipCommand(python or _python(), constraints, requirements), pump=pump, onLine=onLine)


def _python() -> str:
    return pythonExecutable()


def runCommand(command, *, pump=None, onLine=None, what: str = "", env=None, cwd=None) -> None:
    """Run ``command`` in its own process and wait, calling ``pump()`` every 30 ms (the GUI processes events
    there) and ``onLine(line)`` for each line it prints. ``env``: variables added to this process's environment;
    ``cwd``: its working folder.

    Raises:
        DependencyError: it failed; the message has its last lines.
    """
    runner = EngineRunner(command, env=env, cwd=cwd, logCallback=onLine, expectDone=False)
    runner.start()
    while runner.state is RunState.RUNNING:
        if pump is not None:
            pump()
        time.sleep(0.03)  # sleeping releases the GIL: the runner's reader threads get to run
        runner.poll()
    if runner.state is not RunState.SUCCEEDED:
        tail = "\n".join(runner.result.logTail[-8:])
        raise DependencyError(f"{what or ' '.join(command[:5])} failed (exit code {runner.result.returnCode})"
                              + (f":\n{tail}" if tail else ""))


def installedDistributions() -> dict:
    """``{canonical name: version}`` of every installed distribution."""
    found = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found[canonicalName(name)] = dist.version
    return found


def changedDistributions(before: dict, after: dict) -> list:
    """Names of the distributions added, removed or at another version (sorted)."""
    return sorted(name for name in set(before) | set(after) if before.get(name) != after.get(name))


def topLevelModules(name: str) -> set:
    """The modules a distribution provides (``top_level.txt``, else the first part of its files' paths)."""
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return {name.replace("-", "_")}
    text = dist.read_text("top_level.txt")
    if text:
        return {line.strip() for line in text.splitlines() if line.strip()}
    modules = set()
    for file in dist.files or ():
        parts = Path(str(file)).parts
        if not parts or parts[0].endswith((".dist-info", ".egg-info", ".data")) or parts[0] == "..":
            continue
        first = parts[0]
        modules.add(first[:-3] if first.endswith(".py") else first.split(".")[0])
    return modules or {name.replace("-", "_")}


def restartAdvised(changed, loadedModules=None, modulesOf: Callable[[str], set] = topLevelModules) -> list:
    """The changed distributions whose modules this process has already imported (a restart is needed to use
    their new versions): the requested packages and everything pip pulled in or upgraded with them."""
    loaded = {name.split(".")[0] for name in (sys.modules if loadedModules is None else loadedModules)}
    return [name for name in changed if modulesOf(name) & loaded]


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


def installRequirements(requirements, requester: str = REQUESTER, *, pump=None, onLine=None,
                        python: Optional[str] = None, smoke: bool = True) -> InstallOutcome:
    """Install what ``installPlan`` says into Slicer's Python (call after confirming), then check the whole
    install: every requirement at its version and an import of everything the module uses (``smokeTest``).

    ``pump`` is called while pip runs (the GUI processes events there, under a modal dialog); ``onLine`` gets
    pip's output.

    Raises:
        DependencyError: pip failed on the core requirements, or left them (or a dependency of theirs) missing or
            unimportable; the message names the packages and how to retry. A feature whose install fails is only
            reported (``InstallOutcome.unavailable``).
    """
    runs, unavailable = installPlan(requirements)
    installed = []
    before = installedDistributions()
    for run in runs:
        wanted = list(run.requirements)
        try:
            _pipInstall(wanted, requester, pump=pump, onLine=onLine, python=python)
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
    if smoke:
        broken = smokeTest(python=python, pump=pump)
        if broken:
            details = "\n".join(f"  • {module}: {error}" for module, error in broken.items())
            raise DependencyError("The packages were installed, but some of what AtlasSeg imports still fails "
                                  f"(a dependency is missing or broken):\n{details}\n\n"
                                  f"{retryHint(readRequirements())}")
    changed = changedDistributions(before, installedDistributions())
    loadedChanged = restartAdvised(changed)
    return InstallOutcome(installed=tuple(installed), restartRecommended=bool(loadedChanged),
                          unavailable=unavailable, changed=tuple(changed), restartPackages=tuple(loadedChanged))


# What the panels and the engine import, checked after an install in the engine's Python (not in Slicer's:
# monai imports torch). A dependency that pip left out surfaces here instead of at the user's first click.
SMOKE_IMPORTS = ("AtlasSegLib.card", "AtlasSegLib.review", "AtlasSegLib.export", "AtlasSegLib.report",
                 "AtlasSegLib.download", "AtlasSegLib.phantom", "AtlasSegLib.synthesize", "AtlasSegLib.pipeline",
                 "monai.inferers", "monai.networks.nets")

SMOKE_SCRIPT = r"""
import importlib, json, sys
failed = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = f"{type(exc).__name__}: {exc}"
print("SMOKE " + json.dumps(failed))
"""


def smokeImports(requirements=None) -> list:
    """The modules to import: every requirement's own module, then ``SMOKE_IMPORTS``."""
    installable, _ = splitProtected(readRequirements() if requirements is None else requirements)
    return [_importName(r) for r in installable] + list(SMOKE_IMPORTS)


def smokeTest(python: Optional[str] = None, pump=None, modules=None) -> dict:
    """``{module: error}`` for each module in ``modules`` (default ``smokeImports()``) that the engine's Python
    cannot import with this extension's AtlasSegLib; empty when everything imports."""
    names = list(modules if modules is not None else smokeImports())
    pythonPath = [str(LIBRARY_PARENT_DIR), os.environ.get("PYTHONPATH", "")]
    runner = EngineRunner([python or _python(), "-c", SMOKE_SCRIPT, *names], expectDone=False,
                          env={"PYTHONPATH": os.pathsep.join(p for p in pythonPath if p)}, cwd=str(LIBRARY_PARENT_DIR))
    runner.start()
    while runner.state is RunState.RUNNING:
        if pump is not None:
            pump()
        time.sleep(0.03)
        runner.poll()
    for line in reversed(runner.result.logTail):
        if line.startswith("SMOKE "):
            return json.loads(line[len("SMOKE "):])
    return {"(python)": "the import check did not run: " + " ".join(runner.result.logTail[-3:])}


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
        from packaging.specifiers import SpecifierSet  # here: optional, as in isSatisfied
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


def checkTorchVersion(version: Optional[str] = None) -> str:
    """The installed torch's version, refused when it is older than ``TORCH_REQUIREMENT`` (read from its
    metadata: torch is never imported into Slicer's process).

    Raises:
        DependencyError: not installed, or too old; the message says how to fix it.
    """
    version = installedVersion("torch") if version is None else version
    if version is None:
        raise DependencyError("PyTorch is not installed.")
    if not isSatisfied(f"torch{TORCH_REQUIREMENT}", version.split("+")[0]):
        raise DependencyError(f"AtlasSeg needs PyTorch {TORCH_REQUIREMENT}, but this Slicer has PyTorch {version}. "
                              "Open the PyTorch Utils module, click Uninstall, restart Slicer, then click Install "
                              "in AtlasSeg's panel (or install a newer PyTorch there).")
    return version


def torchInstallCommands(python: str, lttInstalled: Optional[bool] = None) -> list:
    """The commands that install torch for this computer's GPU, as the PyTorch extension does (light-the-torch
    picks the CUDA build): each runs in its own process, so the GUI keeps repainting during the multi-GB
    download, which pip prints nothing about."""
    if lttInstalled is None:
        lttInstalled = installedVersion("light-the-torch") is not None
    commands = [] if lttInstalled else [[str(python), "-m", "pip", "install", "--disable-pip-version-check",
                                         "light-the-torch>=0.5"]]
    commands.append([str(python), "-m", "light_the_torch", "install", f"torch{TORCH_REQUIREMENT}"])
    return commands


def ensureTorch(pump=None, onLine=None, python: Optional[str] = None) -> str:
    """Install torch (light-the-torch, as the PyTorch extension does) when it is missing, each step in its own
    process while ``pump()`` keeps the GUI alive; return the installed version, checked against
    ``TORCH_REQUIREMENT`` (an installed torch too is checked, and refused when too old).

    Raises:
        DependencyError: installing failed, or the installed torch is too old.
    """
    if installedVersion("torch") is not None:
        return checkTorchVersion()
    try:
        for command in torchInstallCommands(python or _python()):
            runCommand(command, pump=pump, onLine=onLine, what="Installing PyTorch")
    except DependencyError as exc:
        raise DependencyError(f"{exc}\n\nOpen the PyTorch Utils module to install it (choose the CUDA version of "
                              "your GPU), then click Install in AtlasSeg's panel again.") from exc
    importlib.invalidate_caches()
    return checkTorchVersion()


def _importName(requirement: str) -> str:
    """The module a requirement is imported as, for the restart check (most projects: the name itself)."""
    known = {"connected-components-3d": "cc3d", "pillow": "PIL", "scikit-image": "skimage"}
    name = canonicalName(requirement)
    return known.get(name, name.replace("-", "_"))
