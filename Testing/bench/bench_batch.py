"""Batch throughput (``make bench-batch``, a few minutes on 2 cores): cases/hour of ``atlasseg batch`` in this
process (``--workers 1``, the baseline) against Ray with 1 and 2 workers on this machine.

Each mode runs the real CLI in a subprocess on the same phantom dataset (demo model, 6 cases) into a fresh
output folder, so every row pays its own start: imports, for Ray starting a local cluster and its workers
loading the model. Two rates per row:

- end to end: cases / wall time of the whole command, as a user sees it;
- steady: cases / time from the first case starting to the last one finishing (what a 1,000-case dataset
  approaches; the start is paid once).

The in-process baseline runs first and last and its better run counts (other processes share the cores).

The masks of every mode are checked identical to the baseline's. Ends with a table and one RESULT line.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]  # Testing/ (this script lives one folder below it)
REPO = HERE.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402


def make_dataset(root: Path, n: int) -> list:
    from AtlasSegLib.phantom import make_phantom

    root.mkdir(parents=True)
    names = []
    for seed in range(n):
        ph = make_phantom(seed=seed, size=(128, 112, 72), spacing_mm=(3.0, 3.0, 3.5))
        sitk.WriteImage(ph.image, str(root / f"case{seed:02d}.nii.gz"))
        names.append(f"case{seed:02d}")
    return names


def run(dataset: Path, out: Path, extra: list, ray_workers: int = 0) -> dict:
    """One command; wall time and the time from its first case starting to its end."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if ray_workers == 1:  # --workers 1 is the in-process path: a one-worker Ray run goes through the library
        code = ("import sys; from AtlasSegLib.cli import _ProgressSink; from AtlasSegLib.card import builtin_card; "
                "from AtlasSegLib.cluster import DatasetBar, run_batch_ray; "
                "bar = DatasetBar(_ProgressSink(json_lines=True, bar=False)); "
                f"run_batch_ray({str(dataset)!r}, {str(out)!r}, card=builtin_card('atlasseg-demo'), workers=1, "
                "progress=bar, events=bar.event)")
        cmd = [sys.executable, "-c", code]
    else:
        cmd = [sys.executable, "-m", "AtlasSegLib", "batch", str(dataset), "-o", str(out), "--model", "atlasseg-demo",
               "--progress-json", *extra]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = None
    for line in proc.stdout:
        event = json.loads(line)
        starts_case = (event["event"] == "case" and event.get("status") == "running") or (
            event["event"] == "progress" and event.get("stage") == "read")
        if first is None and starts_case:
            first = time.monotonic()
    err = proc.stderr.read()
    proc.wait()
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:6]} failed ({proc.returncode}): {err[-2000:]}")
    return {"wall": wall, "steady": wall - (first - t0) if first else wall}


def same_masks(a: Path, b: Path, names) -> bool:
    for name in names:
        for f in sorted((a / name).rglob("*.nii.gz")):
            g = b / name / f.relative_to(a / name)
            if not np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(f))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(g)))):
                return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=6)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="atlasseg-bench-batch-") as tmp:
        tmp = Path(tmp)
        names = make_dataset(tmp / "dataset", args.cases)
        # The baseline runs first and last (its best counts): the machine's other load changes over minutes.
        modes = [("in-process (--workers 1)", [], 0), ("Ray, 2 workers", ["--workers", "2"], 0),
                 ("Ray, 1 worker", [], 1), ("in-process (--workers 1)", [], 0)]
        results = []
        load = [os.getloadavg()[0]]
        for i, (label, extra, ray1) in enumerate(modes):
            out = tmp / f"out{i}"
            print(f"running {label} ...", file=sys.stderr, flush=True)
            r = run(tmp / "dataset", out, extra, ray1)
            r["label"] = label
            r["same"] = i == 0 or same_masks(tmp / "out0", out, names)
            r["backend"] = json.loads((out / names[0] / "report.json").read_text())["settings"]["backend"]
            results.append(r)
        load.append(os.getloadavg()[0])
    base = min((r for r in results if r["label"].startswith("in-process")), key=lambda r: r["steady"])
    results = [base] + [r for r in results if not r["label"].startswith("in-process")]
    n = args.cases
    print(f"\n{n} phantom cases (128x112x72 voxels, demo model), {os.cpu_count()} CPU cores, load average "
          f"{load[0]:.1f} before / {load[1]:.1f} after (other processes share these cores)")
    print(f"{'mode':<26}{'backend':>8}{'wall s':>8}{'cases/h end to end':>20}{'cases/h steady':>16}"
          f"{'masks = baseline':>18}")
    for r in results:
        print(f"{r['label']:<26}{r['backend']:>8}{r['wall']:>8.1f}{3600 * n / r['wall']:>20.0f}"
              f"{3600 * n / r['steady']:>16.0f}{'yes' if r['same'] else 'NO':>18}")
    two, one = results[1], results[2]
    print(f"RESULT seq_cases_per_hour={3600 * n / base['steady']:.0f} ray1_cases_per_hour="
          f"{3600 * n / one['steady']:.0f} ray2_cases_per_hour={3600 * n / two['steady']:.0f} "
          f"ray2_vs_seq_steady={base['steady'] / two['steady']:.2f} same_masks={all(r['same'] for r in results)}")


if __name__ == "__main__":
    main()
