"""Benchmark: the non-network stages of a ``--fast`` run (issue 24's nonnet_pct), this tree's code against the
same stages of an older AtlasSegLib, in the same process, on the same input, best of N, runs interleaved.

Input: bench_quick's 512×512×300 real CT (the small TotalSegmentator CT stretched to 0.8×0.8×1.5 mm) and its
reference labels as a 42-structure card (41 TotalSegmentator structures + an empty liver_tumor gated to the liver).
The logits are +10 inside each structure's label on the cropped 3 mm model grid and -10 elsewhere (what bench_quick's
label "network" gives, without the sliding window), so post-processing sees realistic masks.

Stages (as ``Segmenter.run`` times them):
- check: ``plausibility.body_profile`` + ``check_model_fit`` + ``check_coverage`` (the input check before the
  network; ``io.check_ct_values`` is not part of it);
- emit: ``OutputWriter`` (the overview's CT projection) + ``Segmenter._emit_structures`` (per structure: threshold,
  map onto the input grid, largest component, report entry, overview layer; masks written by the writer's threads)
  + ``_flag_structures`` + waiting for the last writes;
- finish: ``OutputWriter.finish`` (combined labels, report.json, overview.png).

"old" is AtlasSegLib as it was at ``--baseline-rev`` (default: main before issue 24's non-network work), taken from
this repository's git history with ``git archive`` into a temporary folder and imported there under another
package name; "new" is this tree's AtlasSegLib. Both write their outputs, which are compared at the end (every
NIfTI's bytes, the overview's pixels, report.json without timings): the speed-up must not change a byte.

    python Testing/bench/bench_postprocess.py [--repeat 3] [--baseline-rev REV]

Not a test: it prints a table and asserts nothing except that both write the same outputs.
"""
from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]  # Testing/ (this script lives one folder below it)
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "bench"))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import bench_quick as bq  # noqa: E402
from testdata import ct_data_dir  # noqa: E402

BASELINE_REV = "3b73a79"
"""main before issue 24's non-network work (the profile of 3.5 s non-network was measured on it)."""
ALIAS = "AtlasSegLib_baseline"


def load_baseline(rev: str, folder: Path):
    """AtlasSegLib at ``rev`` imported as the package ``ALIAS`` (its modules import each other relatively)."""
    data = subprocess.run(["git", "-C", str(REPO), "archive", rev, "AtlasSegLib"], check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(folder, filter="data")
    spec = importlib.util.spec_from_file_location(ALIAS, folder / "AtlasSegLib" / "__init__.py",
                                                  submodule_search_locations=[str(folder / "AtlasSegLib")])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[ALIAS] = pkg
    spec.loader.exec_module(pkg)
    return pkg


class Case:
    """The CT, the card and the model-grid logits, made once with this tree's code (inputs, not measured)."""

    def __init__(self):
        from AtlasSegLib.geometry import resample
        from AtlasSegLib.pipeline import prepare

        data = ct_data_dir() / "totalseg_abdomen_sm"
        size, spacing = (512, 512, 300), (0.8, 0.8, 1.5)
        self.ct = bq.stretched(sitk.ReadImage(str(data / "example_ct_sm.nii.gz")), size, spacing, sitk.sitkLinear,
                               -1024, sitk.sitkInt16)
        labels = bq.stretched(sitk.ReadImage(str(data / "example_seg.nii.gz")), size, spacing,
                              sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        self.card_raw = bq.label_card(labels).raw
        card = bq.label_card(labels)
        prep = prepare(self.ct, card, fast=True)
        lab = sitk.GetArrayFromImage(resample(labels, prep.grid, interpolator=sitk.sitkNearestNeighbor))
        lab = torch.from_numpy(np.ascontiguousarray(lab.transpose(2, 1, 0)).astype(np.int64))
        values = torch.tensor([c.label for c in sorted(card.classes, key=lambda c: c.channel)])
        self.logits = torch.where(lab[None] == values[:, None, None, None], 10.0, -10.0)
        self.prep = prep


def run_stages(lib: dict, case: Case, out: Path) -> dict:
    """One run of the three stages with the modules in ``lib``; returns seconds per stage."""
    pl, outputs, plaus, card_mod, io_mod, progress = (lib[k] for k in ("pipeline", "outputs", "plausibility",
                                                                        "card", "io", "progress"))
    networks = lib["networks"]
    card = card_mod.card_from_dict(json.loads(json.dumps(case.card_raw)))
    seg = pl.Segmenter(networks.LoadedModel(torch.nn.Identity(), card, None),
                       pl.SegmentOptions(device="cpu", backend="torch", fast=True, overview=True))
    seg.runner = _Info()
    prep = pl.Prepared(None, case.prep.grid, case.prep.model_grid, case.prep.crop_start)
    image = case.ct
    times = {}
    t = time.perf_counter()
    profile = plaus.body_profile(image)
    warnings = plaus.check_model_fit(card.id, image) + plaus.check_coverage(profile)
    times["check"] = time.perf_counter() - t

    out.mkdir(parents=True, exist_ok=True)
    reporter = progress.Reporter()
    t = time.perf_counter()
    writer = outputs.OutputWriter(out, image, io_mod.SourceInfo(path="bench", format="nifti"), card, reporter=reporter,
                                  overview=True)
    kji = sitk.GetArrayViewFromImage(image)
    masks = seg._emit_structures(case.logits, prep, image, writer, reporter)
    warnings += seg._flag_structures(writer.structures, masks, image, kji, profile)
    del masks
    writer.flush()
    times["emit"] = time.perf_counter() - t

    t = time.perf_counter()
    writer.finish(settings={}, timings={}, warnings=warnings, model_info={})
    times["finish"] = time.perf_counter() - t
    times["total"] = sum(times.values())
    return times


class _Info:
    backend, precision = "labels", "fp32"

    def info(self) -> dict:
        return {}


def modules(package: str) -> dict:
    names = ("pipeline", "outputs", "plausibility", "card", "io", "progress", "networks")
    return {n: importlib.import_module(f"{package}.{n}") for n in names}


def same_outputs(a: Path, b: Path) -> list:
    """Files of run folders ``a`` and ``b`` that differ (NIfTI bytes, PNG pixels, report.json minus timings)."""
    def strip(o):
        if isinstance(o, dict):
            return {k: strip(v) for k, v in o.items() if k not in ("timings_s", "created")}
        return [strip(v) for v in o] if isinstance(o, list) else o

    fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    bad = [str(p) for p in set(fa) ^ set(fb)]
    for rel in set(fa) & set(fb):
        x, y = a / rel, b / rel
        if x.name.endswith(".nii.gz"):
            ok = gzip.decompress(x.read_bytes()) == gzip.decompress(y.read_bytes())
        elif x.suffix == ".png":
            ok = np.array_equal(np.asarray(Image.open(x)), np.asarray(Image.open(y)))
        elif x.suffix == ".json":
            ok = strip(json.loads(x.read_text())) == strip(json.loads(y.read_text()))
        else:
            ok = x.read_bytes() == y.read_bytes()
        if not ok:
            bad.append(str(rel))
    return sorted(bad)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs of each version (best is shown)")
    ap.add_argument("--baseline-rev", default=BASELINE_REV, help="git revision of the old AtlasSegLib")
    args = ap.parse_args()
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="bench_postprocess_"))
    load_baseline(args.baseline_rev, work / "baseline")
    versions = {"old": modules(ALIAS), "new": modules("AtlasSegLib")}
    case = Case()
    print(f"case: {case.ct.GetSize()} CT, {len(case.logits)} structures, model grid {case.prep.grid.size}; "
          f"old = AtlasSegLib at {args.baseline_rev}, new = {REPO}", file=sys.stderr)
    best = {v: {} for v in versions}
    for r in range(args.repeat):
        for name, lib in versions.items():
            times = run_stages(lib, case, work / f"{name}{r}")
            for k, s in times.items():
                best[name][k] = min(best[name].get(k, float("inf")), s)
            print(f"run {r} {name}: " + " ".join(f"{k} {s:.3f}" for k, s in times.items()), file=sys.stderr)
    diff = same_outputs(work / "old0", work / "new0")
    print(f"\n{'stage':<8} {'old s':>8} {'new s':>8} {'speedup':>8}   (best of {args.repeat}, same process)")
    for k in ("check", "emit", "finish", "total"):
        o, n = best["old"][k], best["new"][k]
        print(f"{k:<8} {o:8.3f} {n:8.3f} {o / n:7.2f}x")
    print(f"outputs: {'identical' if not diff else 'DIFFERENT: ' + ', '.join(diff)}")
    subprocess.run(["rm", "-rf", str(work)], check=False)
    if diff:
        sys.exit(1)


if __name__ == "__main__":
    main()
