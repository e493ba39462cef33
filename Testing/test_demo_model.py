"""The shipped demo model segments fresh phantoms (seeds never used in training) through the real pipeline."""
from __future__ import annotations

import json

import pytest

from AtlasSegLib.card import builtin_card
from AtlasSegLib.cli import main
from AtlasSegLib.demo import run_demo

ORGANS = ("liver", "spleen", "kidney_right", "kidney_left", "pancreas", "aorta", "vertebrae")


def test_demo_weights_are_small_and_load_strictly():
    card = builtin_card("atlasseg-demo")
    path = card.base_dir / card.weights["file"]
    assert path.stat().st_size < 5 * 2**20
    assert "not clinical use" in card.raw["intended_use"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [9001, 9002])
def test_demo_model_reaches_dice_085_on_fresh_phantoms(seed, tmp_path):
    result = run_demo(tmp_path / "out", seed=seed, device="cpu")
    for organ in ORGANS:
        assert result["dice"][organ]["dice"] >= 0.85, (organ, result["dice"])


@pytest.mark.slow
def test_demo_command_writes_outputs_and_prints_dice(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--seed", "9003", "--quiet", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "Dice" in printed and "liver" in printed
    for name in ("ct.nii.gz", "overview.png", "report.json", "combined_labels.nii.gz"):
        assert (out / name).is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["id"] == "atlasseg-demo"
    assert "liver_tumor" in report["tumors"]
    # The report page shows the phantom's truth: the Dice and volumes printed above, structure by structure.
    printed_rows = {line.split()[0]: line.split()[1:4] for line in printed.splitlines()
                    if line.split() and line.split()[0] in ORGANS + ("liver_tumor",)}
    truth = {r["structure"]: r for r in report["report"]["truth"]}
    assert set(truth) == set(printed_rows) == set(ORGANS) | {"liver_tumor"}
    page = (out / "report.html").read_text()
    table = page.split('id="truth"', 1)[1].split("</table>", 1)[0]
    for name, (dice, truth_ml, pred_ml) in printed_rows.items():
        assert (f"{truth[name]['dice']:.3f}", f"{truth[name]['truth_ml']:.1f}",
                f"{truth[name]['segmented_ml']:.1f}") == (dice, truth_ml, pred_ml)
        assert f"<td>{name}</td><td class=num>{dice}</td><td class=num>{truth_ml}</td><td class=num>{pred_ml}</td>" \
            in table
    assert "synthetic phantom" in page
    # Vertebrae are separate bones: the largest-component clean-up must not keep just one of them.
    import cc3d
    import SimpleITK as sitk

    vertebrae = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "segmentations" / "vertebrae.nii.gz")))
    assert cc3d.connected_components(vertebrae, connectivity=26, return_N=True)[1] > 3
    liver = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "segmentations" / "liver.nii.gz")))
    assert cc3d.connected_components(liver, connectivity=26, return_N=True)[1] == 1
