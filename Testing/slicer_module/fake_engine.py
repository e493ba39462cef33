"""Test doubles for the engine: an output folder in the engine's exact layout, and a protocol-speaking script.

The output layout *is* the engine contract (AtlasSegLib/outputs.py)::

    OUTDIR/segmentations/<name>.nii.gz    uint8 0/1 on the input grid
    OUTDIR/combined_labels.nii.gz         uint8 label values from the card
    OUTDIR/probabilities/<tumor>.nii.gz   uint8 p×255 on a box of the input grid (shifted origin)
    OUTDIR/probabilities/<tumor>.json     {"box_start_ijk", "box_size_ijk", "input_size_ijk", "gate", "threshold"}
    OUTDIR/card.json, report.json
"""
from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from AtlasSegModule import AtlasSegBridge as bridge


def ball(shape_kji, centre_kji, radius_vox) -> np.ndarray:
    k, j, i = np.ogrid[: shape_kji[0], : shape_kji[1], : shape_kji[2]]
    return ((k - centre_kji[0]) ** 2 + (j - centre_kji[1]) ** 2 + (i - centre_kji[2]) ** 2) <= radius_vox ** 2


def writeImage(array, geometry: bridge.VolumeGeometry, path: Path) -> None:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    geometry.applyToSitk(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)


def writeOutputFolder(outdir: Path, geometry: bridge.VolumeGeometry, masks: dict, probabilities: dict,
                      classes: list, card_id="suprem-segresnet", title="SuPreM SegResNet") -> Path:
    """Write an engine output folder.

    Args:
        masks: structure name -> uint8 KJI mask on ``geometry``.
        probabilities: tumor name -> (uint8 KJI p×255 array, box start (i, j, k), gate list, threshold).
        classes: the full class table (dicts as in the card's "classes").
    """
    outdir = Path(outdir)
    combined = np.zeros(geometry.shapeKji(), np.uint8)
    for structure in classes:
        name = structure["name"]
        if name not in masks:
            continue
        writeImage(masks[name].astype(np.uint8), geometry, outdir / "segmentations" / f"{name}.nii.gz")
        combined[masks[name] > 0] = structure["label"]
    writeImage(combined, geometry, outdir / "combined_labels.nii.gz")
    for tumor, (array, start, gate, threshold) in probabilities.items():
        size = list(array.shape[::-1])
        writeImage(array.astype(np.uint8), geometry.box(start, size), outdir / "probabilities" / f"{tumor}.nii.gz")
        meta = {"box_start_ijk": list(start), "box_size_ijk": size, "input_size_ijk": list(geometry.size),
                "gate": gate, "threshold": threshold}
        (outdir / "probabilities" / f"{tumor}.json").write_text(json.dumps(meta))
    card = {"id": card_id, "title": title, "classes": classes}
    (outdir / "card.json").write_text(json.dumps(card, indent=1))
    report = {"structures": [{"name": n, "voxels": int(np.count_nonzero(m))} for n, m in masks.items()]}
    (outdir / "report.json").write_text(json.dumps(report))
    return outdir


def classTable(names) -> list:
    """Full class entries (colour, SNOMED codes, kind, label) for ``names`` from the SuPreM card."""
    from AtlasSegLib.card import builtin_card

    card = builtin_card("suprem-segresnet").select(list(names))
    return card.to_json()["classes"]


def protocolScript(folder: Path) -> Path:
    """A Python script that speaks the engine's JSON-lines protocol, for testing the runner without a model.

    Usage: ``python script.py MODE OUTDIR`` with MODE one of
    ``ok`` (3 progress lines, log lines on stderr, creates OUTDIR, "done"),
    ``fail`` ("error" event, exit 2), ``crash`` (stderr traceback, exit 1, no event),
    ``hang`` (progress, then starts a child process and both sleep; the child's pid goes to OUTDIR.child),
    ``escape`` (as ``hang``, but the child starts its own session, out of the engine's process group).
    """
    script = Path(folder) / "fake_engine_cli.py"
    script.write_text(textwrap.dedent('''
        import json, os, subprocess, sys, time
        mode, outdir = sys.argv[1], sys.argv[2]
        def emit(**event):
            print(json.dumps(event), flush=True)
        print("fake engine starting", file=sys.stderr, flush=True)
        print("a plain stdout line", flush=True)
        if mode == "ok":
            for i, stage in enumerate(["read", "inference", "write"]):
                emit(event="progress", stage=stage, fraction=(i + 1) / 3, message=f"step {i + 1}/3")
                time.sleep(0.05)
            os.makedirs(outdir, exist_ok=True)
            emit(event="done", outdir=outdir)
        elif mode == "fail":
            emit(event="error", message="input /nonexistent.nii.gz does not exist; give a CT file", exit_code=2)
            sys.exit(2)
        elif mode == "crash":
            print("Traceback (most recent call last):", file=sys.stderr)
            print("MemoryError: cannot allocate 12 GiB", file=sys.stderr, flush=True)
            sys.exit(1)
        elif mode in ("hang", "escape"):
            emit(event="progress", stage="inference", fraction=0.1, message="window 1/30")
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                                     start_new_session=(mode == "escape"))
            with open(outdir + ".child", "w") as fh:
                fh.write(str(child.pid))
            emit(event="progress", stage="inference", fraction=0.2, message="child started")
            time.sleep(300)
    '''))
    return script


def pythonCommand(script: Path, mode: str, outdir: Path) -> list:
    return [sys.executable, str(script), mode, str(outdir)]
