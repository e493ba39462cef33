"""Atomic writes replace files whole and leave them with ordinary permissions (readable by colleagues and tools,
not the private 0600/0700 that temporary files get)."""
import os
import stat

import numpy as np
import SimpleITK as sitk

from AtlasSegLib.io import StagingDir, atomic_write_image, atomic_write_text


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_and_committed_run_folders_get_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        target = tmp_path / "report.json"
        target.write_text("old")
        atomic_write_text("new", target)
        assert target.read_text() == "new" and _mode(target) == 0o644
        atomic_write_image(sitk.GetImageFromArray(np.zeros((2, 2, 2), np.uint8)), tmp_path / "m.nii.gz")
        assert _mode(tmp_path / "m.nii.gz") == 0o644
        staging = StagingDir(tmp_path / "run")
        with staging as folder:
            (folder / "x.txt").write_text("x")
            staging.commit()
        assert _mode(tmp_path / "run") == 0o755 and (tmp_path / "run" / "x.txt").read_text() == "x"
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
    finally:
        os.umask(old)
