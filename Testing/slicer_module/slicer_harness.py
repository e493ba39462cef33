"""A headless "Slicer application" for tests, built only from slicer-core (PyPI) classes.

slicer-core ships Slicer's C++ MRML scene, module logics and displayable managers and the real
``slicer/util.py``, but no Qt application: no ``slicer.app``, ``slicer.mrmlScene``, ``slicer.modules``, ``qt``,
``ctk`` or ``slicer.ScriptedLoadableModule``. ``setup()`` creates a scene with the module logics AtlasSeg uses and
installs ``slicer.mrmlScene``, ``slicer.modules`` and a small ``slicer.app`` I/O stand-in, so ``slicer.util``
helpers and AtlasSeg's logic run unchanged. ``SliceView`` renders an offscreen slice view with Slicer's real
displayable managers (Mesa EGL). Everything below the stand-ins is real Slicer code.

Usage::

    app = slicer_harness.setup()      # fresh scene + logics
    ...
    slicer_harness.teardown()
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import vtk
from vtk.util import numpy_support  # noqa: F401  (slicer.util expects vtk.util.numpy_support loaded)

import slicer


HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
MODULE_DIR = REPO_ROOT / "AtlasSeg"


class _ModuleShim:
    """Stands in for ``slicer.modules.<name>`` (a qSlicerAbstractCoreModule in real Slicer)."""

    def __init__(self, name, logic):
        self.name = name
        self._logic = logic

    def logic(self):
        return self._logic


class _CoreIOManagerShim:
    """The part of qSlicerCoreIOManager that ``slicer.util.loadVolume/loadSegmentation/saveNode`` call."""

    def __init__(self, app):
        self._app = app

    def fileType(self, filename):
        name = str(filename).lower()
        return "SegmentationFile" if name.endswith((".seg.nrrd", ".seg.nii.gz")) else "VolumeFile"

    def loadNodes(self, fileType, properties, loadedNodes, userMessages):
        fileName = str(properties["fileName"])
        name = properties.get("name") or Path(fileName).name.split(".")[0]
        if fileType == "VolumeFile":
            options = 0
            if properties.get("labelmap"):
                options |= 1
            if properties.get("center"):
                options |= 2
            if properties.get("singleFile", True):
                options |= 4
            node = self._app.volumesLogic.AddArchetypeVolume(fileName, name, options)
        elif fileType == "SegmentationFile":
            node = self._app.segmentationsLogic.LoadSegmentationFromFile(fileName, True, name)
        else:
            userMessages.AddMessage(vtk.vtkCommand.ErrorEvent, f"harness: unsupported file type {fileType}")
            return False
        if node is None:
            return False
        loadedNodes.AddItem(node)
        return True

    def fileWriterFileType(self, node):
        return "NodeWriter"

    def saveNodes(self, fileType, properties, userMessages):
        node = self._app.scene.GetNodeByID(properties["nodeID"])
        if node.IsA("vtkMRMLSegmentationNode"):
            storage = slicer.vtkMRMLSegmentationStorageNode()
        elif node.IsA("vtkMRMLVolumeNode"):
            storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        else:
            storage = node.CreateDefaultStorageNode()
        if "useCompression" in properties:
            storage.SetUseCompression(bool(properties["useCompression"]))
        storage.SetFileName(str(properties["fileName"]))
        ok = bool(storage.WriteData(node))
        if not ok:
            userMessages.AddMessage(vtk.vtkCommand.ErrorEvent, storage.GetUserMessages().GetAllMessagesAsString())
        return ok


class HeadlessSlicer:
    """A scene plus the module logics of a Slicer application (Volumes, Segmentations, SubjectHierarchy...)."""

    def __init__(self):
        self.scene = slicer.vtkMRMLScene()
        crosshair = slicer.vtkMRMLCrosshairNode()
        crosshair.SetCrosshairName("default")
        self.scene.AddNode(crosshair)

        self.appLogic = slicer.vtkSlicerApplicationLogic()
        self.appLogic.SetMRMLScene(self.scene)
        self.appLogic.GetColorLogic().SetMRMLScene(self.scene)
        self.appLogic.GetColorLogic().AddDefaultColorNodes()
        self.appLogic.SetSliceLogics(vtk.vtkCollection())
        self.appLogic.SetViewLogics(vtk.vtkCollection())
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(self.scene, True)
        slicer.vtkMRMLThreeDViewDisplayableManagerFactory.GetInstance().SetMRMLApplicationLogic(self.appLogic)
        slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance().SetMRMLApplicationLogic(self.appLogic)

        self.colorLogic = self.appLogic.GetColorLogic()
        self.appLogic.SetModuleLogic("Colors", self.colorLogic)
        self.volumesLogic = self._register(slicer.vtkSlicerVolumesLogic(), "Volumes")
        # Unlike the desktop app, nothing here gives new data nodes a subject hierarchy item (Slicer's SH
        # plugin logic is Qt code): tests create items themselves where they matter.
        # Node classes are registered by the logics' SetMRMLScene: without the Segmentations logic a bare
        # scene cannot create segment editor nodes. The Terminologies logic is left out: slicer-core ships no
        # .term.json files and the logic only logs errors without them (terminology strings still work).
        self.segmentationsLogic = self._register(slicer.vtkSlicerSegmentationsModuleLogic(), "Segmentations")
        self.subjectHierarchyLogic = self._register(slicer.vtkSlicerSubjectHierarchyModuleLogic(), "SubjectHierarchy")
        self.dataLogic = self._register(slicer.vtkSlicerDataModuleLogic(), "Data")
        self.modules = types.SimpleNamespace(
            volumes=_ModuleShim("Volumes", self.volumesLogic),
            segmentations=_ModuleShim("Segmentations", self.segmentationsLogic),
            subjecthierarchy=_ModuleShim("SubjectHierarchy", self.subjectHierarchyLogic),
            colors=_ModuleShim("Colors", self.colorLogic),
            data=_ModuleShim("Data", self.dataLogic),
        )
        self._ioManager = _CoreIOManagerShim(self)

    def _register(self, logic, name):
        logic.SetMRMLScene(self.scene)
        logic.SetMRMLApplicationLogic(self.appLogic)
        self.appLogic.SetModuleLogic(name, logic)
        return logic

    # The subset of qSlicerApplication that slicer.util touches in the functions AtlasSeg uses.
    def coreIOManager(self):
        return self._ioManager

    def processEvents(self):
        pass


_current: HeadlessSlicer | None = None


def setup() -> HeadlessSlicer:
    """Create a fresh scene + logics and install them as slicer.mrmlScene / slicer.modules / slicer.app."""
    global _current
    teardown()
    _current = HeadlessSlicer()
    slicer.mrmlScene = _current.scene
    slicer.modules = _current.modules
    slicer.app = _current
    return _current


def teardown() -> None:
    global _current
    if _current is not None:
        _current.scene.Clear(True)
        _current = None
    for attr in ("mrmlScene", "modules", "app"):
        if hasattr(slicer, attr):
            delattr(slicer, attr)


def installScriptedLoadableModuleStub() -> None:
    """Provide ``slicer.ScriptedLoadableModule.ScriptedLoadableModuleLogic`` (part of the Qt app in Slicer).

    Only the logic base class is provided, with Slicer's parameter-node behaviour (a singleton
    ``vtkMRMLScriptedModuleNode`` tagged with the module name): the widget classes need Qt and are not tested here.
    """
    if "slicer.ScriptedLoadableModule" in sys.modules:
        return
    module = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            self.moduleName = type(self).__name__.replace("Logic", "")

        def getParameterNode(self):
            node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node is None:
                node = slicer.vtkMRMLScriptedModuleNode()
                node.SetSingletonTag(self.moduleName)
                node.SetModuleName(self.moduleName)
                node = slicer.mrmlScene.AddNode(node)
            return node

    module.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    sys.modules["slicer.ScriptedLoadableModule"] = module
    slicer.ScriptedLoadableModule = module


# ------------------------------------------------------------------------------------ offscreen views
def openGlAvailable() -> bool:
    """Whether an offscreen OpenGL context (EGL/Mesa) can render here."""
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(8, 8)
    try:
        window.Render()
    except RuntimeError:
        return False
    return window.SupportsOpenGL() == 1


def _offscreenWindow(width, height):
    renderer = vtk.vtkRenderer()
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(width, height)
    # Mesa llvmpipe: depth peeling draws translucent surfaces as nothing unless multisampling is off.
    window.SetMultiSamples(0)
    window.SetAlphaBitPlanes(1)
    window.AddRenderer(renderer)
    interactor = vtk.vtkGenericRenderWindowInteractor()  # displayable managers want one; needs no X server
    interactor.SetRenderWindow(window)
    interactor.Initialize()
    return renderer, window, interactor


def screenshot(renderWindow, path=None) -> np.ndarray:
    """Render and return the window as an (height, width, 3) uint8 RGB array (top row first); save a PNG."""
    renderWindow.Render()
    grabber = vtk.vtkWindowToImageFilter()
    grabber.SetInput(renderWindow)
    grabber.ReadFrontBufferOff()
    grabber.Update()
    if path is not None:
        writer = vtk.vtkPNGWriter()
        writer.SetFileName(str(path))
        writer.SetInputConnection(grabber.GetOutputPort())
        writer.Write()
    image = grabber.GetOutput()
    width, height, _ = image.GetDimensions()
    pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)
    return np.ascontiguousarray(pixels[::-1, :, :3])


class SliceView:
    """An offscreen slice view (qMRMLSliceView without Qt) with Slicer's 2D displayable managers."""

    MANAGERS = ("vtkMRMLSegmentationsDisplayableManager2D", "vtkMRMLCrosshairDisplayableManager",
                "vtkMRMLModelSliceDisplayableManager", "vtkMRMLOrientationMarkerDisplayableManager",
                "vtkMRMLRulerDisplayableManager")

    def __init__(self, app: HeadlessSlicer, name="Red", orientation="Axial", size=(512, 512)):
        self.renderer, self.renderWindow, self.interactor = _offscreenWindow(*size)
        self.renderer.GetActiveCamera().ParallelProjectionOn()
        # The slice image must be the first prop: added after the displayable managers' actors, the first
        # segmentation fill layer is drawn over black instead of blended over the CT.
        mapper = vtk.vtkImageMapper()
        mapper.SetColorWindow(255)
        mapper.SetColorLevel(127.5)
        self.imageActor = vtk.vtkActor2D()
        self.imageActor.SetMapper(mapper)
        self.imageActor.GetProperty().SetDisplayLocationToBackground()
        self.renderer.AddViewProp(self.imageActor)
        factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
        factory.SetMRMLApplicationLogic(app.appLogic)
        for manager in self.MANAGERS:
            if not factory.IsDisplayableManagerRegistered(manager):
                factory.RegisterDisplayableManager(manager)
        self.group = slicer.vtkMRMLDisplayableManagerGroup()
        self.group.Initialize(factory, self.renderer)
        self.logic = slicer.vtkMRMLSliceLogic()
        self.logic.SetMRMLApplicationLogic(app.appLogic)
        app.appLogic.GetSliceLogics().AddItem(self.logic)
        self.logic.SetMRMLScene(app.scene)
        self.sliceNode = self.logic.AddSliceNode(name)
        self.sliceNode.SetOrientation(orientation)
        self.group.SetMRMLDisplayableNode(self.sliceNode)
        self.size = size

    def show(self, backgroundVolume):
        self.logic.GetSliceCompositeNode().SetBackgroundVolumeID(backgroundVolume.GetID())
        self.logic.ResizeSliceNode(*self.size)
        self.logic.FitSliceToBackground(*self.size)
        self.logic.SnapSliceOffsetToIJK()

    def setOffset(self, offsetMm):
        self.logic.SetSliceOffset(offsetMm)

    def render(self, path=None) -> np.ndarray:
        self.imageActor.GetMapper().SetInputConnection(self.logic.GetImageDataConnection())
        self.group.GetMRMLDisplayableNode().Modified()
        return screenshot(self.renderWindow, path)
