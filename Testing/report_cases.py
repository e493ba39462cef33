"""Output folders for the report tests, written by the engine's own OutputWriter from the real CT.

``real_ct_output`` takes the real upper-abdomen CT (``totalseg_abdomen_sm``), adds two hypodense synthetic liver
lesions to it (the handcrafted recipe of MODELS.md §6: a darker blob), uses TotalSegmentator's organ masks of that
CT as the organ segmentation, and a synthetic liver-tumor probability map (Gaussian blobs) as the tumor model's
output. No network runs, so a folder is ready in about a second, yet every file is the engine's real format.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from AtlasSegLib.card import builtin_card
from AtlasSegLib.geometry import Grid, resample
from AtlasSegLib.io import SourceInfo, read_image
from AtlasSegLib.outputs import OutputWriter
from AtlasSegLib.postprocess import dilate_mm, quantize, tumor_mask

# TotalSegmentator v2 "total" label values in example_seg.nii.gz (ctdata/totalseg_labels_present.json).
TOTALSEG = {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 5, "stomach": 6, "pancreas": 7, "aorta": 52}
GATE_DILATION_MM = 5.0


def lesion_centres(liver: np.ndarray, spacing_kji) -> list:
    """Three voxels (k, j, i) deep inside the liver, far apart: for a large, a medium and a faint lesion."""
    # Padded: the scan's edge is not the liver's edge, but a lesion cut by it would be measured short.
    depth = ndimage.distance_transform_edt(np.pad(liver, 1), sampling=spacing_kji)[1:-1, 1:-1, 1:-1]
    first = np.unravel_index(np.argmax(depth), depth.shape)
    centres = [first]
    for min_depth in (9.0, 6.0):
        ok = depth >= min_depth
        points = np.argwhere(ok)
        dist = np.min([np.linalg.norm((points - np.asarray(c)) * spacing_kji, axis=1) for c in centres], axis=0)
        centres.append(tuple(points[np.argmax(dist)]))
    return centres


def _blob(shape, centre, spacing_kji, sigma_mm) -> np.ndarray:
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    r2 = (((k - centre[0]) * spacing_kji[0]) ** 2 + ((j - centre[1]) * spacing_kji[1]) ** 2
          + ((i - centre[2]) * spacing_kji[2]) ** 2)
    return np.exp(-r2 / (2.0 * sigma_mm ** 2))


def real_ct_output(ctdata: Path, folder: Path, *, threshold: float = 0.5, size_ijk=None) -> Path:
    """Write ``folder/ct_with_lesions.nii.gz`` and the output folder ``folder/out``; return the latter.

    Lesions (liver_tumor probability peaks): #1 large (peak 0.97, ~3 cm), #2 medium (peak 0.9, ~1.5 cm),
    #3 faint (peak 0.4: only found at thresholds ≤ 0.4, the sensitive operating points).
    ``size_ijk`` resamples CT and masks onto that many voxels over the same extent (for timing large cases)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ct = sitk.ReadImage(str(ctdata / "totalseg_abdomen_sm" / "example_ct_sm.nii.gz"))
    seg_image = sitk.ReadImage(str(ctdata / "totalseg_abdomen_sm" / "example_seg.nii.gz"))
    if size_ijk is not None:
        g = Grid.of(ct)
        spacing = tuple(n * s / m for n, s, m in zip(g.size, g.spacing, size_ijk))
        origin = g.index_to_physical(np.full(3, -0.5)) + np.asarray(g.direction).reshape(3, 3) @ (np.asarray(spacing) / 2)
        target = Grid(tuple(size_ijk), spacing, tuple(float(v) for v in origin), g.direction)
        ct = resample(ct, target)
        seg_image = resample(seg_image, target, interpolator=sitk.sitkNearestNeighbor)
    seg = sitk.GetArrayFromImage(seg_image)
    grid = Grid.of(ct)
    spacing_kji = np.asarray(grid.spacing[::-1])
    liver = (seg == TOTALSEG["liver"]).astype(np.uint8)
    centres = lesion_centres(liver, spacing_kji)
    prob = np.zeros(seg.shape, np.float32)
    hu = sitk.GetArrayFromImage(ct).astype(np.float32)
    for centre, peak, sigma in zip(centres, (0.97, 0.9, 0.4), (12.0, 6.0, 6.0)):
        blob = _blob(seg.shape, centre, spacing_kji, sigma)
        prob = np.maximum(prob, peak * blob)
        hu -= 45.0 * blob * liver  # hypodense: what the tumor model would have "seen"
    lesioned = sitk.GetImageFromArray(np.rint(hu).astype(np.int16))
    lesioned.CopyInformation(ct)
    ct_path = folder / "ct_with_lesions.nii.gz"
    sitk.WriteImage(lesioned, str(ct_path), useCompression=True)
    return _write_run(folder / "out", lesioned, SourceInfo(path=str(ct_path), format="nifti"), seg, prob,
                      threshold=threshold)


def _write_run(out: Path, ct: sitk.Image, source: SourceInfo, seg: np.ndarray, prob: np.ndarray, *,
               threshold: float = 0.5) -> Path:
    """The engine's output folder for TotalSegmentator labels ``seg`` (organs) and a liver-tumor probability map."""
    grid = Grid.of(ct)
    spacing_kji = np.asarray(grid.spacing[::-1])
    liver = (seg == TOTALSEG["liver"]).astype(np.uint8)
    names = list(TOTALSEG) + ["liver_tumor"]
    card = builtin_card("suprem-segresnet").select(names)
    writer = OutputWriter(out, ct, source, card)
    full = ((0, 0, 0), tuple(grid.size))
    for cls in sorted(card.classes, key=lambda c: c.is_tumor):
        if not cls.is_tumor:
            writer.add_structure(cls, full, (seg == TOTALSEG[cls.name]).astype(np.uint8))
            continue
        # The probability box is the liver's bounding box grown by the gate dilation, as the engine keeps it.
        nz = np.argwhere(liver)
        grow = int(np.ceil(GATE_DILATION_MM / min(grid.spacing))) + 1
        lo = np.maximum(nz.min(0) - grow, 0)
        hi = np.minimum(nz.max(0) + grow + 1, seg.shape)
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        q_box = quantize(prob[sl])
        gate = dilate_mm(liver[sl], spacing_kji, GATE_DILATION_MM)
        mask = tumor_mask(q_box, gate, threshold=threshold, voxel_mm3=grid.voxel_volume_mm3,
                          min_mm3=cls.min_component_mm3)
        box = (tuple(int(v) for v in lo[::-1]), tuple(int(v) for v in (hi - lo)[::-1]))
        writer.add_tumor(cls, box, mask, q_box, threshold=threshold, gate=["liver"], min_mm3=cls.min_component_mm3,
                         dilation_mm=GATE_DILATION_MM)
    writer.finish(settings={"device": "cpu", "fast": False, "postprocess": True, "structures": None,
                            "note": "organ masks: TotalSegmentator predictions; tumor map: synthetic"},
                  timings={})
    return out


DICOM_SERIES = ("totalseg_dicom_upper_abdomen", "example_ct_dicom")


def dicom_ct_output(ctdata: Path, folder: Path, *, patient: tuple = None) -> Path:
    """An output folder whose input is the real DICOM series (``totalseg_dicom_upper_abdomen``, 20 JPEG 2000 slices
    whose InstanceNumbers run 267… from the head down), read by ``read_image``: organs from its TotalSegmentator
    labels placed by physical position, one synthetic liver lesion (peak p 0.97, ~2 cm) deep in the liver.

    ``patient`` ("NAME^GIVEN", "ID") writes a copy of the series with that PatientName/PatientID (header only,
    pixel data untouched) into ``folder/<NAME>_series`` and segments that copy. Returns ``folder/out``."""
    import pydicom

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series = ctdata.joinpath(*DICOM_SERIES)
    if patient is not None:
        copy = folder / f"{patient[0].split('^')[0]}_series"
        copy.mkdir(exist_ok=True)
        for path in sorted(series.iterdir()):
            ds = pydicom.dcmread(str(path))
            ds.PatientName, ds.PatientID = patient
            ds.save_as(str(copy / path.name))
        series = copy
    ct, source = read_image(series)
    seg = sitk.GetArrayFromImage(resample(sitk.ReadImage(str(ctdata / DICOM_SERIES[0] / "example_seg_dicom.nii.gz")),
                                          Grid.of(ct), interpolator=sitk.sitkNearestNeighbor))
    liver = (seg == TOTALSEG["liver"]).astype(np.uint8)
    spacing_kji = np.asarray(Grid.of(ct).spacing[::-1])
    centre = lesion_centres(liver, spacing_kji)[0]
    prob = (0.97 * _blob(seg.shape, centre, spacing_kji, 8.0)).astype(np.float32)
    return _write_run(folder / "out", ct, source, seg, prob)
