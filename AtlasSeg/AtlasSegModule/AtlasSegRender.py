"""The report's 3D overview: an AtlasSeg output folder's masks as closed surfaces, seen from the front, drawn
offscreen by Slicer's own 3D displayable managers (the renderer of Slicer's 3D view) into a PNG.

Runs in Slicer and in plain Python with ``slicer-core`` (PyPI), without Qt or an X server (Mesa EGL):

    python AtlasSeg/AtlasSegModule/AtlasSegRender.py OUTDIR          # writes OUTDIR/pictures/3d.png, then rebuilds the report

``AtlasSegLib`` never imports vtk or slicer, so ``atlasseg report`` cannot draw this picture; it includes
``pictures/3d.png`` when this script made it after the masks' last change.

The surfaces are built in a private MRML scene, so inside Slicer the user's scene and layout are untouched.
Organs are drawn half transparent so tumors inside them stay visible.
"""
import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support

import slicer

if __name__ == "__main__":  # run as a script: make the AtlasSegModule package (one folder up) importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from AtlasSegModule import AtlasSegBridge as bridge  # noqa: E402
from AtlasSegLib.errors import AtlasSegError, InputError  # noqa: E402  (importable once AtlasSegModule is)

PICTURE = Path("pictures") / "3d.png"
DEFAULT_SIZE = (560, 640)  # width, height: an abdomen seen from the front is taller than wide
SURFACE_VOXEL_MM = 1.5
ORGAN_OPACITY = 0.45
TUMOR_OPACITY = 1.0
MANAGERS = ("vtkMRMLCameraDisplayableManager", "vtkMRMLViewDisplayableManager", "vtkMRMLModelDisplayableManager",
            "vtkMRMLSegmentationsDisplayableManager3D")


class _PrivateScene:
    """A scene with the logics segmentations need, apart from any scene the Slicer application shows."""

    def __init__(self):
        self.scene = slicer.vtkMRMLScene()
        self.appLogic = slicer.vtkSlicerApplicationLogic()
        self.appLogic.SetMRMLScene(self.scene)
        self.appLogic.SetSliceLogics(vtk.vtkCollection())
        self.appLogic.SetViewLogics(vtk.vtkCollection())
        # The Segmentations logic registers the segmentation node classes with the scene.
        self.segmentationsLogic = slicer.vtkSlicerSegmentationsModuleLogic()
        self.segmentationsLogic.SetMRMLScene(self.scene)
        self.segmentationsLogic.SetMRMLApplicationLogic(self.appLogic)
        self.appLogic.SetModuleLogic("Segmentations", self.segmentationsLogic)

    def close(self):
        self.scene.Clear(True)


def _segmentFromMask(mask: np.ndarray, geometry: "bridge.VolumeGeometry"):
    """The mask's bounding box as a segment labelmap (extent inside the full grid): surfaces of 25 structures on a
    512×512×300 CT then take megabytes, not 25 full-size copies."""
    nz = [np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[0] for axis in range(3)]
    lo = [int(n[0]) for n in nz]  # k, j, i
    hi = [int(n[-1]) + 1 for n in nz]
    box = np.ascontiguousarray(mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] != 0, dtype=np.uint8)
    image = bridge.orientedImageFromArray(box, bridge.VolumeGeometry(
        (hi[2] - lo[2], hi[1] - lo[1], hi[0] - lo[0]), geometry.spacing, geometry.origin, geometry.directions))
    image.SetExtent(lo[2], hi[2] - 1, lo[1], hi[1] - 1, lo[0], hi[0] - 1)
    return image


def _coarsened(mask: sitk.Image) -> sitk.Image:
    """The mask on voxels of about ``SURFACE_VOXEL_MM`` (integer block averages, kept where half covered):
    a 560-pixel picture cannot show finer detail, and surfaces of sub-millimetre masks took a minute to build
    and draw with Mesa's software renderer."""
    factors = [max(1, int(SURFACE_VOXEL_MM // s)) for s in mask.GetSpacing()]
    if factors == [1, 1, 1]:
        return mask
    shrunk = sitk.BinShrink(sitk.Cast(mask != 0, sitk.sitkFloat32), factors)
    return sitk.Cast(shrunk >= 0.5, sitk.sitkUInt8)


def loadOutputFolder(scene, outputDir):
    """A segmentation node in ``scene`` with one segment per non-empty mask of the output folder (card colours,
    organs first). Returns ``(segmentationNode, [(name, kind)])``."""
    outputDir = Path(outputDir)
    from AtlasSegLib.run import Run  # the run folder's one reader

    # The structures of report.json (name, kind, colour, file): present in engine runs and in folders written
    # from a Slicer segmentation, whose card describes classes but no model.
    try:
        structures = Run(outputDir, check=False).read_report().get("structures") or []
    except InputError as exc:
        raise ValueError(str(exc)) from None
    if not structures:
        raise ValueError(f"{outputDir} is not an AtlasSeg output folder (its report.json lists no structures)")
    segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "AtlasSeg 3D overview")
    segmentationNode.CreateDefaultDisplayNodes()
    segmentation = segmentationNode.GetSegmentation()
    representation = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    segmentation.SetSourceRepresentationName(representation)
    added = []
    for entry in sorted(structures, key=lambda e: (e.get("kind") == "tumor", e.get("label", 0))):
        name, kind = entry["name"], entry.get("kind", "organ")
        path = outputDir / (entry.get("file") or f"segmentations/{name}.nii.gz")
        if not path.is_file():
            continue
        image = _coarsened(bridge.readImage(path))
        mask = sitk.GetArrayViewFromImage(image)
        if not mask.any():
            continue
        segment = slicer.vtkSegment()
        segment.SetName(name)
        segment.SetColor(*(float(v) / 255.0 for v in entry.get("color") or (200, 200, 200)))
        segment.AddRepresentation(representation, _segmentFromMask(mask, bridge.VolumeGeometry.fromSitk(image)))
        segmentation.AddSegment(segment, name)
        added.append((name, kind))
    if not added:
        raise ValueError(f"{outputDir} has no non-empty masks in segmentations/: nothing to draw in 3D")
    displayNode = segmentationNode.GetDisplayNode()
    for name, kind in added:
        displayNode.SetSegmentOpacity3D(name, TUMOR_OPACITY if kind == "tumor" else ORGAN_OPACITY)
    segmentationNode.CreateClosedSurfaceRepresentation()
    return segmentationNode, added


def _offscreenView(scene, appLogic, size):
    renderer = vtk.vtkRenderer()
    renderer.SetUseDepthPeeling(True)
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(*size)
    # Mesa (llvmpipe): depth peeling draws translucent surfaces as nothing unless multisampling is off.
    window.SetMultiSamples(0)
    window.SetAlphaBitPlanes(1)
    window.AddRenderer(renderer)
    interactor = vtk.vtkGenericRenderWindowInteractor()  # displayable managers want one; it needs no display
    interactor.SetRenderWindow(window)
    interactor.Initialize()
    factory = slicer.vtkMRMLThreeDViewDisplayableManagerFactory.GetInstance()
    # Inside Slicer the factory already serves the application's views: keep its application logic.
    if factory.GetMRMLApplicationLogic() is None:
        factory.SetMRMLApplicationLogic(appLogic)
    for manager in MANAGERS:
        if not factory.IsDisplayableManagerRegistered(manager):
            factory.RegisterDisplayableManager(manager)
    group = slicer.vtkMRMLDisplayableManagerGroup()
    group.Initialize(factory, renderer)
    viewLogic = slicer.vtkMRMLViewLogic()
    viewLogic.SetMRMLApplicationLogic(appLogic)
    viewLogic.SetMRMLScene(scene)
    viewNode = viewLogic.AddViewNode("AtlasSegReport")
    viewNode.SetBoxVisible(False)
    viewNode.SetAxisLabelsVisible(False)
    viewNode.SetBackgroundColor(0.0, 0.0, 0.0)
    viewNode.SetBackgroundColor2(0.0, 0.0, 0.0)
    group.SetMRMLDisplayableNode(viewNode)
    return renderer, window, group, viewLogic, interactor


def _grab(window) -> np.ndarray:
    window.Render()
    grabber = vtk.vtkWindowToImageFilter()
    grabber.SetInput(window)
    grabber.ReadFrontBufferOff()
    grabber.Update()
    image = grabber.GetOutput()
    width, height, _ = image.GetDimensions()
    pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)
    return np.ascontiguousarray(pixels[::-1, :, :3])


def _cropToContent(rgb: np.ndarray, margin: int = 36) -> np.ndarray:
    """Cut the empty background around the surfaces (a 9 cm slab seen from the front is a wide, low strip)."""
    drawn = np.argwhere(rgb.max(axis=-1) > 8)
    if drawn.size == 0:
        return rgb
    top, left = np.maximum(drawn.min(axis=0) - margin, 0)
    bottom, right = np.minimum(drawn.max(axis=0) + margin + 1, rgb.shape[:2])
    return np.ascontiguousarray(rgb[top:bottom, left:right])


def _annotate(rgb: np.ndarray):
    """A title band and R/L letters: seen from the front, the patient's right is on the image's left."""
    # here: pillow is installed by the module on first run; drawing the view needs only Slicer
    from PIL import Image, ImageDraw, ImageFont

    body = Image.fromarray(rgb, "RGB")
    picture = Image.new("RGB", (body.width, body.height + 28), "black")
    picture.paste(body, (0, 28))
    draw = ImageDraw.Draw(picture)
    try:
        font = ImageFont.load_default(size=18)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    w, h = picture.size
    draw.text((8, 6), "3D, anterior view", fill="white", font=font)
    draw.text((8, 28 + body.height / 2), "R", fill="yellow", font=font, anchor="lm")
    draw.text((w - 8, 28 + body.height / 2), "L", fill="yellow", font=font, anchor="rm")
    return picture


def renderOutputFolder(outputDir, path=None, *, size=DEFAULT_SIZE) -> Path:
    """Draw the output folder's masks as surfaces seen from the front into ``path`` (default
    ``OUTDIR/pictures/3d.png``), written through a temporary file and a rename. Returns the path."""
    outputDir = Path(outputDir)
    path = Path(path) if path is not None else outputDir / PICTURE
    private = _PrivateScene()
    try:
        segmentationNode, added = loadOutputFolder(private.scene, outputDir)
        renderer, window, group, viewLogic, interactor = _offscreenView(private.scene, private.appLogic, size)
        try:
            # The camera node belongs to the camera displayable manager (the view logic finds none headless).
            camera = group.GetDisplayableManagerByClassName("vtkMRMLCameraDisplayableManager").GetCameraNode()
            camera.RotateTo(slicer.vtkMRMLCameraNode.Anterior)
            renderer.ResetCamera()
            renderer.GetActiveCamera().Zoom(1.15)
            renderer.ResetCameraClippingRange()
            picture = _annotate(_cropToContent(_grab(window)))
        finally:
            group.SetMRMLDisplayableNode(None)
            window.Finalize()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
        os.close(fd)
        try:
            picture.save(tmp, format="PNG", optimize=True)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    finally:
        private.close()
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Draw OUTDIR/pictures/3d.png (an AtlasSeg run's masks as 3D "
                                     "surfaces, anterior view) with Slicer's renderer, then rebuild the report.")
    parser.add_argument("outdir", help="output folder of an 'atlasseg segment' or 'atlasseg demo' run")
    parser.add_argument("--size", type=int, nargs=2, default=DEFAULT_SIZE, metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--no-report", action="store_true", help="only draw the picture")
    args = parser.parse_args(argv)

    try:
        path = renderOutputFolder(args.outdir, size=tuple(args.size))
        print(path)
        if not args.no_report:
            # here: the report (scipy, pillow) only when it is rebuilt, not with --no-report
            from AtlasSegLib.report import build_report

            print(build_report(args.outdir).html_path)
    except (AtlasSegError, ValueError) as exc:
        print(f"AtlasSegRender: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
