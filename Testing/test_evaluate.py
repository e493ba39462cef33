"""``atlasseg evaluate``: lesion matching, FROC counts per threshold and size class from the kept probability
maps, false positives per case over a batch, suggested operating points in the card format, surface distances,
refusals, and a real run of the demo model on a phantom."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from AtlasSegLib import evaluate as ev_mod
from AtlasSegLib.card import builtin_card, card_from_dict
from AtlasSegLib.cli import main
from AtlasSegLib.errors import InputError
from AtlasSegLib.evaluate import evaluate, lesion_detection, longest_diameter_mm, match, size_class, surface_metrics
from AtlasSegLib.geometry import Grid
from AtlasSegLib.io import SourceInfo
from AtlasSegLib.outputs import OutputWriter
from AtlasSegLib.review import operating_points

SHAPE = (40, 96, 96)  # k, j, i at 1 mm


def _ball(centre_kji, radius, shape=SHAPE):
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (k - centre_kji[0]) ** 2 + (j - centre_kji[1]) ** 2 + (i - centre_kji[2]) ** 2 <= radius ** 2


def _image(array, spacing=(1.0, 1.0, 1.0)):
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin((-40.0, -30.0, 10.0))
    return img


def _write_run(outdir: Path, truth_dir: Path, truth: np.ndarray, prob: np.ndarray, *, threshold=0.5):
    """A run of the demo card's liver_tumor written by the pipeline's own OutputWriter with ``prob`` (float p,
    k, j, i) kept as its probability map (whole grid as the box, no gate, no minimum volume), and the truth."""
    ct = _image(np.full(SHAPE, 60, np.int16))
    card = builtin_card("atlasseg-demo").select(["liver_tumor"])
    writer = OutputWriter(outdir, ct, SourceInfo(path="handmade", format="nifti"), card, overview=False)
    q = np.clip(np.rint(prob * 255), 0, 255).astype(np.uint8)
    level = int(np.ceil(threshold * 255 - 1e-6))
    box = ((0, 0, 0), ct.GetSize())
    writer.add_tumor(card.classes[0], box, (q >= level).astype(np.uint8), q, threshold=threshold, gate=None,
                     min_mm3=0.0)
    writer.finish(settings={}, timings={})
    truth_dir.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(_image(truth.astype(np.uint8)), str(truth_dir / "liver_tumor.nii.gz"))


# Hand-made case: six true tumors, two false positive blobs; p inside each region as listed.
L_TINY = ((10, 20, 20), 3)      # p 0.2: found at t <= 0.2
L_SMALL = ((10, 20, 60), 6)     # p 0.6 on its half only: found at t <= 0.6
L_MEDIUM = ((20, 60, 30), 12)   # p 0.9
# Two tiny tumors, one predicted blob covers both. p 0.72, not 0.7: maps keep p as uint8 p×255 and 0.7 is stored
# as 178/255 < 0.7, which a threshold of 0.7 drops.
L_PAIR = (((30, 80, 70), 2), ((30, 80, 76), 2))
FP_40 = ((30, 15, 85), 3)       # p 0.4, touches no tumor
FP_10 = ((5, 85, 10), 2)        # p 0.1
LARGE_BOX = (slice(2, 14), slice(40, 52), slice(40, 86))  # 46 x 12 x 12 mm, p 0: missed at every threshold


def _handmade():
    truth = np.zeros(SHAPE, bool)
    prob = np.zeros(SHAPE, np.float32)
    for (c, r), p in ((L_TINY, 0.2), (L_MEDIUM, 0.9)):
        truth |= _ball(c, r)
        prob[_ball(c, r)] = p
    truth |= _ball(*L_SMALL)
    half = _ball(*L_SMALL).copy()
    half[:, :, : L_SMALL[0][2]] = False
    prob[half] = 0.6
    for c, r in L_PAIR:
        truth |= _ball(c, r)
    prob[_ball((30, 80, 73), 6)] = 0.72
    truth[LARGE_BOX] = True
    prob[_ball(*FP_40)] = 0.4
    prob[_ball(*FP_10)] = 0.1
    return truth, prob


def _row(ev, t):
    return next(r for r in ev.tumors["liver_tumor"]["rows"] if r["threshold"] == t)


def test_matching_rule_any_overlap_one_component_may_find_several_and_untouched_components_are_false_positives():
    pred = np.array([[1, 1, 0, 2, 0, 3, 3, 3]])
    truth = np.array([[1, 0, 0, 0, 2, 2, 0, 3]])
    d = match(pred, 3, truth, 3)
    assert d.detected == (1, 2, 3) and d.false_positives == 1 and d.missed == 0
    # The same through the masks: component {5,6,7} touches tumors 2 and 3; component {3} touches nothing.
    d = lesion_detection((pred != 0)[None], (truth != 0)[None])
    assert (d.lesions, len(d.detected), d.false_positives, d.predicted) == (3, 3, 1, 3)
    empty = lesion_detection(np.zeros((1, 1, 8), bool), (truth != 0)[None])
    assert (empty.missed, empty.false_positives) == (3, 0)


def test_longest_diameter_is_in_mm_across_voxel_corners_and_size_classes_follow_the_recipe():
    box = np.ones((5, 4, 3), bool)  # k, j, i voxels
    grid = Grid((3, 4, 5), (2.0, 1.0, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert longest_diameter_mm(box, grid) == pytest.approx(np.sqrt(6.0 ** 2 + 4.0 ** 2 + 15.0 ** 2))
    assert [size_class(d) for d in (0.5, 9.99, 10.0, 19.9, 20.0, 39.9, 40.0, 120.0)] == \
        ["tiny", "tiny", "small", "small", "medium", "medium", "large", "large"]


def test_froc_counts_per_threshold_and_size_class_from_the_kept_probability_map(tmp_path):
    truth, prob = _handmade()
    _write_run(tmp_path / "run", tmp_path / "truth", truth, prob)
    ev = evaluate(tmp_path / "run", tmp_path / "truth", tmp_path / "eval")
    t = ev.tumors["liver_tumor"]
    assert t["lesions"] == 6 and t["lesions_by_class"] == {"tiny": 3, "small": 1, "medium": 1, "large": 1}
    # (threshold, detected, false positives): p >= t keeps a voxel; 0.2 and 0.21 straddle the tiny tumor's p.
    expected = {0.01: (5, 2), 0.1: (5, 2), 0.11: (5, 1), 0.2: (5, 1), 0.21: (4, 1), 0.4: (4, 1), 0.41: (4, 0),
                0.5: (4, 0), 0.6: (4, 0), 0.61: (3, 0), 0.72: (3, 0), 0.73: (1, 0), 0.9: (1, 0), 0.91: (0, 0)}
    for thr, (det, fp) in expected.items():
        r = _row(ev, thr)
        assert (r["detected"], r["false_positives"]) == (det, fp), thr
        assert r["sensitivity"] == round(det / 6, 4) and r["fp_per_case"] == fp
    r = _row(ev, 0.5)  # the run's threshold: the pair (tiny x2), small and medium found
    assert (r["detected_tiny"], r["detected_small"], r["detected_medium"], r["detected_large"]) == (2, 1, 1, 0)
    assert r["sensitivity_tiny"] == round(2 / 3, 4) and r["sensitivity_large"] == 0.0
    large = next(les for les in ev.lesions if les.size_class == "large")
    assert large.highest_detecting_threshold is None and large.max_probability == 0.0
    medium = next(les for les in ev.lesions if les.size_class == "medium")
    assert medium.highest_detecting_threshold == 0.9 and medium.detected_at_run_threshold
    assert sorted(les.highest_detecting_threshold for les in ev.lesions if les.size_class == "tiny") == \
        [0.2, 0.72, 0.72]
    # Suggested points: the lowest threshold with <= 1 FP/case (0.11: the p 0.1 blob is out) and <= 8 (0.01).
    snippet = json.loads((tmp_path / "eval" / "operating_points.json").read_text())
    assert snippet == {"operating_points": {"liver_tumor": {"high_sensitivity": 0.11, "maximum_sensitivity": 0.01}}}
    # ... in the card's format: pasted into a card it validates and the review workflow uses it.
    raw = builtin_card("atlasseg-demo").to_json()
    raw.update(snippet)
    points = operating_points(card_from_dict(raw), "liver_tumor")
    assert points["high_sensitivity"] == 0.11 and points["maximum_sensitivity"] == 0.01
    # The files: one FROC row per threshold (grid + the run's and the card's), a readable picture.
    rows = (tmp_path / "eval" / "froc.csv").read_text().splitlines()
    assert rows[0].startswith("structure,threshold,cases,lesions,detected,sensitivity,false_positives,fp_per_case")
    assert len(rows) - 1 == len(t["rows"]) == len(set(ev_mod.THRESHOLDS) | {0.15, 0.3, 0.5})
    png = sitk.ReadImage(str(tmp_path / "eval" / "froc.png"))
    assert png.GetWidth() >= 800 and png.GetHeight() >= 600
    assert len((tmp_path / "eval" / "lesions.csv").read_text().splitlines()) == 7
    summary = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert summary["tumors"]["liver_tumor"]["saved_masks"] == {"detected": 4, "lesions": 6, "false_positives": 0,
                                                               "sensitivity": 0.6667, "fp_per_case": 0.0}


def test_batch_counts_false_positives_per_case_including_cases_without_tumors(tmp_path):
    truth, prob = _handmade()
    _write_run(tmp_path / "runs" / "case_a", tmp_path / "truth" / "case_a" / "segmentations", truth, prob)
    healthy = np.zeros(SHAPE, np.float32)
    healthy[_ball((20, 50, 50), 4)] = 0.8  # one false positive at every threshold up to 0.8
    _write_run(tmp_path / "runs" / "case_b", tmp_path / "truth" / "case_b", np.zeros(SHAPE, bool), healthy)
    (tmp_path / "truth" / "case_c").mkdir()  # truth without a run: named, not counted
    shutil.copy(tmp_path / "truth" / "case_b" / "liver_tumor.nii.gz", tmp_path / "truth" / "case_c")
    ev = evaluate(tmp_path / "runs", tmp_path / "truth")
    assert ev.outdir == tmp_path / "runs" / "evaluation" and ev.cases == ["case_a", "case_b"]
    assert any("case_c" in n for n in ev.notes)
    assert (_row(ev, 0.5)["false_positives"], _row(ev, 0.5)["fp_per_case"]) == (1, 0.5)
    assert (_row(ev, 0.3)["false_positives"], _row(ev, 0.3)["fp_per_case"]) == (2, 1.0)
    assert (_row(ev, 0.1)["false_positives"], _row(ev, 0.1)["fp_per_case"]) == (3, 1.5)
    assert _row(ev, 0.5)["sensitivity"] == round(4 / 6, 4)  # the healthy case adds no lesion
    assert ev.tumors["liver_tumor"]["suggested"]["high_sensitivity"]["threshold"] == 0.11
    per_case = {r["case"]: r for r in ev.per_case}
    assert per_case["case_b"]["fp_at_run_threshold"] == 1 and per_case["case_a"]["detected_at_run_threshold"] == 4


def test_saved_mask_counts_the_review_while_the_sweep_counts_the_model(tmp_path):
    from AtlasSegLib.review import review_rows
    from AtlasSegLib.runedit import edit_run, rethreshold

    truth, prob = _handmade()
    _write_run(tmp_path / "run", tmp_path / "truth", truth, prob)
    rethreshold(tmp_path / "run", {"liver_tumor": 0.3})
    fp_centre_ijk = FP_40[0][::-1]
    rows = review_rows(tmp_path / "run")["liver_tumor"]
    fp_id = next(r["id"] for r in rows
                 if np.abs(np.asarray(r["seed_ijk"]) - fp_centre_ijk).max() <= FP_40[1])
    edit_run(tmp_path / "run", "liver_tumor", remove_ids=(fp_id,))
    ev = evaluate(tmp_path / "run", tmp_path / "truth")
    run_mark = next(m for m in ev.tumors["liver_tumor"]["marks"] if m["name"] == "run threshold")
    assert run_mark["threshold"] == 0.3 and run_mark["fp_per_case"] == 1.0  # the model at 0.3
    saved = ev.tumors["liver_tumor"]["saved_masks"]
    assert (saved["detected"], saved["false_positives"]) == (4, 0)  # the reviewer removed it


def test_surface_distances_equal_monais_metrics_on_an_anisotropic_grid():
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    shape = (20, 30, 30)
    a = _ball((10, 15, 14), 7, shape)
    b = _ball((11, 16, 17), 6, shape)
    b[10:12, 3:6, 3:6] = True  # a stray island: the 95th percentile sees it
    spacing = (2.5, 0.8, 1.2)  # k, j, i
    ours = surface_metrics(a, b, spacing)
    ta, tb = torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None]
    assd = compute_average_surface_distance(ta, tb, include_background=True, symmetric=True, spacing=list(spacing))
    hd95 = compute_hausdorff_distance(ta, tb, include_background=True, percentile=95, spacing=list(spacing))
    assert ours["assd_mm"] == pytest.approx(float(assd), abs=0.01)
    assert ours["hd95_mm"] == pytest.approx(float(hd95), abs=0.01)
    assert ours["dice"] == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()), abs=1e-4)
    assert surface_metrics(a, np.zeros(shape, bool), spacing) == {"dice": 0.0, "assd_mm": None, "hd95_mm": None}


def test_refusals_exit_2_with_what_was_wrong(tmp_path, capsys):
    truth, prob = _handmade()
    _write_run(tmp_path / "run", tmp_path / "truth", truth, prob)
    off = tmp_path / "off_grid"
    off.mkdir()
    sitk.WriteImage(_image(truth.astype(np.uint8), spacing=(1.0, 1.0, 1.5)), str(off / "liver_tumor.nii.gz"))
    assert main(["evaluate", str(tmp_path / "run"), "--truth", str(off)]) == 2
    err = capsys.readouterr().err
    assert "not on the grid of the run" in err and "spacing" in err
    assert not (tmp_path / "run" / "evaluation").exists()
    assert main(["evaluate", str(tmp_path / "truth"), "--truth", str(tmp_path / "truth")]) == 2
    assert "neither an AtlasSeg output folder" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "run"), "--truth", str(tmp_path / "nowhere")]) == 2
    assert main(["evaluate", str(tmp_path / "run"), "--truth", str(tmp_path / "truth"), "--structures", "spleen"]) == 2
    assert "--structures spleen" in capsys.readouterr().err
    with pytest.raises(InputError, match="batch of 1 cases but --truth"):
        (tmp_path / "batch").mkdir()
        shutil.copytree(tmp_path / "run", tmp_path / "batch" / "c1")
        evaluate(tmp_path / "batch", tmp_path / "truth")
    # A run that kept no probability map for a tumor it found cannot give a FROC.
    shutil.rmtree(tmp_path / "run" / "probabilities")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    report["tumors"]["liver_tumor"]["probability_file"] = None
    (tmp_path / "run" / "report.json").write_text(json.dumps(report))
    with pytest.raises(InputError, match="keeps no probability map"):
        evaluate(tmp_path / "run", tmp_path / "truth")


def test_demo_model_on_a_phantom_evaluates_against_the_phantoms_labels(tmp_path, capsys):
    from AtlasSegLib.networks import load_model
    from AtlasSegLib.phantom import make_phantom
    from AtlasSegLib.pipeline import SegmentOptions, Segmenter
    from AtlasSegLib.postprocess import ranked_components
    from AtlasSegLib.report import build_report

    phantom = make_phantom(7)
    out = tmp_path / "run"
    extra = {f"ground_truth/{name}.nii.gz": lab for name, lab in phantom.labels.items()}
    Segmenter(load_model(builtin_card("atlasseg-demo")), SegmentOptions(device="cpu")).run(
        phantom.image, SourceInfo(path="phantom(seed=7)", format="phantom"), out, extra_files=extra)
    assert main(["evaluate", str(out), "--truth", str(out / "ground_truth"), "-o", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    assert "liver_tumor:" in printed and ("suggested" in printed or "no threshold" in printed)
    summary = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    liver = summary["structures"]["liver"]
    assert liver["dice"] > 0.9 and 0 < liver["assd_mm"] < 3.0
    truth = sitk.GetArrayFromImage(phantom.labels["liver_tumor"]) != 0
    tumor = summary["tumors"]["liver_tumor"]
    assert tumor["lesions"] == len(ranked_components(truth).parts) > 0
    # At the run's threshold, before any review, the sweep and the saved mask are the same mask.
    run_mark = next(m for m in tumor["marks"] if m["name"] == "run threshold")
    saved = tumor["saved_masks"]
    assert (run_mark["sensitivity"], run_mark["fp_per_case"]) == (saved["sensitivity"], saved["fp_per_case"])
    # The demo report's truth section says the same lesion by lesion.
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "segmentations" / "liver_tumor.nii.gz"))) != 0
    d = lesion_detection(pred, truth)
    assert (len(d.detected), d.false_positives) == (saved["detected"], saved["false_positives"])
    result = build_report(out, pictures=False)
    row = next(r for r in result.report["report"]["truth"] if r["structure"] == "liver_tumor")
    assert row["lesions"] == {"truth": d.lesions, "found": len(d.detected), "missed": d.missed,
                              "false_positives": d.false_positives}
    assert f"{len(d.detected)} of {d.lesions} true tumor" in result.html_path.read_text()


def test_suggested_points_are_never_less_sensitive_than_balanced_or_say_that_none_meets_the_budget(tmp_path, capsys):
    # Ten false-positive blobs at p 0.6: every threshold up to 0.6 has 10 FP per case, over both budgets. The
    # lowest threshold within 8 FP/case is 0.61, above the card's balanced 0.5: suggested as "maximum
    # sensitivity" it would be less sensitive than balanced (the issue's t=0.78). None is suggested; it says why.
    truth = np.zeros(SHAPE, bool)
    prob = np.zeros(SHAPE, np.float32)
    truth |= _ball((20, 48, 48), 6)
    prob[_ball((20, 48, 48), 6)] = 0.9
    for n in range(10):
        prob[_ball((5 + 3 * n, 10 + 7 * n, 85), 1)] = 0.6
    _write_run(tmp_path / "run", tmp_path / "truth", truth, prob)
    ev = evaluate(tmp_path / "run", tmp_path / "truth", tmp_path / "eval")
    t = ev.tumors["liver_tumor"]
    assert _row(ev, 0.5)["fp_per_case"] == 10 and _row(ev, 0.61)["fp_per_case"] == 0
    assert t["suggested"] == {}
    assert set(t["not_suggested"]) == {"high_sensitivity", "maximum_sensitivity"}
    assert "balanced" in t["not_suggested"]["maximum_sensitivity"] and "8" in t["not_suggested"]["maximum_sensitivity"]
    assert json.loads((tmp_path / "eval" / "operating_points.json").read_text()) == {"operating_points": {}}
    assert main(["evaluate", str(tmp_path / "run"), "--truth", str(tmp_path / "truth"), "-o",
                 str(tmp_path / "eval2")]) == 0
    out = capsys.readouterr().out
    assert "no threshold at or below balanced (t=0.5) keeps false positives at or under 8 per case" in out


def test_suggested_points_are_ordered_maximum_high_balanced():
    rows = [{"threshold": t, "sensitivity": s, "fp_per_case": fp}
            for t, s, fp in ((0.1, 1.0, 6.0), (0.3, 0.9, 2.0), (0.4, 0.8, 1.0), (0.5, 0.7, 0.5), (0.7, 0.5, 0.0))]
    s = ev_mod.suggest(rows, balanced=0.5)
    assert s["maximum_sensitivity"]["threshold"] == 0.1 and s["high_sensitivity"]["threshold"] == 0.4
    s = ev_mod.suggest(rows, balanced=0.35)  # high (0.4) would lie above balanced: not suggested
    assert "high_sensitivity" not in s and s["maximum_sensitivity"]["threshold"] == 0.1


def test_per_size_class_lesion_sensitivity_and_patient_level_sensitivity_specificity(tmp_path, capsys):
    truth, prob = _handmade()
    _write_run(tmp_path / "runs" / "case_a", tmp_path / "truth" / "case_a", truth, prob)  # tumors, found
    healthy = np.zeros(SHAPE, np.float32)
    healthy[_ball((20, 50, 50), 4)] = 0.8
    _write_run(tmp_path / "runs" / "case_b", tmp_path / "truth" / "case_b", np.zeros(SHAPE, bool), healthy)  # FP
    _write_run(tmp_path / "runs" / "case_c", tmp_path / "truth" / "case_c", np.zeros(SHAPE, bool),
               np.zeros(SHAPE, np.float32))  # no tumor, nothing predicted: a true negative
    missed = np.zeros(SHAPE, bool)
    missed |= _ball((20, 50, 50), 5)
    _write_run(tmp_path / "runs" / "case_d", tmp_path / "truth" / "case_d", missed, np.zeros(SHAPE, np.float32))
    ev = evaluate(tmp_path / "runs", tmp_path / "truth")
    pl = ev.tumors["liver_tumor"]["at_run_threshold"]
    assert pl["threshold"] == 0.5
    assert pl["per_lesion"]["tiny"] == {"lesions": 3, "detected": 2, "sensitivity": 0.6667}
    assert pl["per_lesion"]["small"] == {"lesions": 2, "detected": 1, "sensitivity": 0.5}  # case_d's 10 mm one missed
    assert pl["per_lesion"]["large"] == {"lesions": 1, "detected": 0, "sensitivity": 0.0}
    assert pl["patients"] == {"with_tumor": 2, "true_positive": 1, "sensitivity": 0.5,
                              "without_tumor": 2, "true_negative": 1, "specificity": 0.5}
    saved = json.loads((tmp_path / "runs" / "evaluation" / "evaluation.json").read_text())
    assert saved["tumors"]["liver_tumor"]["at_run_threshold"] == pl
    assert main(["evaluate", str(tmp_path / "runs"), "--truth", str(tmp_path / "truth"), "-o",
                 str(tmp_path / "e2")]) == 0
    out = capsys.readouterr().out
    assert "patients: sensitivity 1/2 (0.50), specificity 1/2 (0.50)" in out
    table = [line for line in out.splitlines() if line.strip().startswith(("tiny", "small", "medium", "large"))]
    assert [line.split()[:3] for line in table] == [["tiny", "3", "2"], ["small", "2", "1"], ["medium", "1", "1"],
                                                    ["large", "1", "0"]]
