"""Every input format reads, with its geometry, from the real CT files."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import nibabel as nib

from AtlasSegLib.geometry import Grid, resample
from AtlasSegLib.io import read_image


def test_nifti_with_sform_only_reads_with_nibabels_geometry(small_ct):
    image, source = read_image(small_ct)
    assert source.format == "nii.gz" and image.GetSize() == (122, 101, 30)
    affine = nib.load(str(small_ct)).affine  # RAS
    lps = np.diag([-1, -1, 1]) @ affine[:3, 3]
    assert np.allclose(image.GetOrigin(), lps, atol=1e-3)
    assert np.allclose(np.asarray(image.GetSpacing()), [3, 3, 3])


def test_nrrd_and_mha_read(ctdata, small_ct, tmp_path):
    nrrd, _ = read_image(ctdata / "dcmqi_ct3slice" / "liver_spine_seg.nrrd")
    assert nrrd.GetDimension() == 3
    ct = sitk.ReadImage(str(small_ct))
    sitk.WriteImage(ct, str(tmp_path / "ct.mha"))
    mha, source = read_image(tmp_path / "ct.mha")
    assert source.format == "mha"
    assert np.array_equal(sitk.GetArrayViewFromImage(mha), sitk.GetArrayViewFromImage(ct))


def test_jpeg2000_dicom_series_reads_as_one_volume(ctdata):
    image, source = read_image(ctdata / "totalseg_dicom_upper_abdomen" / "example_ct_dicom")
    # This anonymised series carries no Series/Study Instance UIDs; it is still one series of 20 files.
    assert source.format == "dicom" and len(source.files) == 20
    assert image.GetSize() == (512, 512, 20)
    assert abs(image.GetSpacing()[2] - 2.0) < 1e-3


def test_uncompressed_three_slice_dicom_reads(ctdata):
    image, source = read_image(ctdata / "dcmqi_ct3slice" / "ct-3slice")
    assert image.GetSize()[2] == 3 and source.format == "dicom"


def test_dicom_and_y_flipped_labels_align_physically(ctdata):
    """The label map is stored with its y axis flipped: only a physical-space pairing gives the right HU."""
    ct, _ = read_image(ctdata / "totalseg_dicom_upper_abdomen" / "example_ct_dicom")
    labels = sitk.ReadImage(str(ctdata / "totalseg_dicom_upper_abdomen" / "example_seg_dicom.nii.gz"))
    on_ct = sitk.GetArrayFromImage(resample(labels, Grid.of(ct), interpolator=sitk.sitkNearestNeighbor))
    hu = sitk.GetArrayFromImage(ct)
    # TotalSegmentator v2 ids: 5 liver, 52 aorta.
    assert abs(hu[on_ct == 5].mean() - 89) < 5
    assert abs(hu[on_ct == 52].mean() - 177) < 8
