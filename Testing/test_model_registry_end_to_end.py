"""Every built-in model, end to end on real CT, through the command line exactly as a user runs it.

For each built-in card except the demo model (whose weights ship with the package and are tested elsewhere),
a checkpoint is written in the *published* layout of its released weights (MODELS.md): SuPreM = a dict with
the weights under ``'net'`` next to training stand-ins (``epoch``, ``optimizer``, ``scheduler``), every key
prefixed ``module.`` (DistributedDataParallel); DiffTumor = the weights under ``'state_dict'``, no prefix.
The weights are seeded random, the names and shapes are the released ones. The checkpoint then goes through
``atlasseg segment CT -o OUT --model ID --weights FILE --fast --device cpu`` and the output folder is checked
against what a user (and the Slicer module) relies on: one uint8 mask per class of the class table the
checkpoint selects, all on the input CT's grid, ``card.json`` and ``report.json`` that describe that run,
and a probability map (or a note saying why there is none) for every tumor.

Cost: the input is a 48 x 48 x 30 voxel (3 mm) crop of a real abdominal CT, so with ``--fast`` every model
runs a single 96³ window (SuPreM at 3 mm: 48 x 48 x 30; DiffTumor at 1.5 mm: 95 x 95 x 59). Each checkpoint
runs once per module (module-scoped fixtures); the SuPreM U-Net and Swin UNETR forwards (10-30 s each on two
CPU cores) are marked ``slow``.

MONAI networks are built from the constructor arguments published in MODELS.md (written out below), not from
our cards, so a card whose architecture drifted from the released weights fails here at load time.
"""
from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from AtlasSegLib.card import builtin_card, builtin_card_ids
from AtlasSegLib.cli import main

# --- Published facts (MODELS.md), written out independently of the cards ------------------------------------

TEMPLATE_32 = [
    "spleen", "kidney_right", "kidney_left", "gall_bladder", "esophagus", "liver", "stomach", "aorta", "postcava",
    "portal_vein_and_splenic_vein", "pancreas", "adrenal_gland_right", "adrenal_gland_left", "duodenum",
    "hepatic_vessel", "lung_right", "lung_left", "colon", "intestine", "rectum", "bladder", "prostate",
    "femur_left", "femur_right", "celiac_trunk", "kidney_tumor", "liver_tumor", "pancreas_tumor",
    "hepatic_vessel_tumor", "lung_tumor", "colon_tumor", "kidney_cyst"]
ATLAS_1_1 = [
    "aorta", "gall_bladder", "kidney_left", "kidney_right", "liver", "pancreas", "postcava", "spleen", "stomach",
    "adrenal_gland_left", "adrenal_gland_right", "bladder", "celiac_trunk", "colon", "duodenum", "esophagus",
    "femur_left", "femur_right", "hepatic_vessel", "intestine", "lung_left", "lung_right",
    "portal_vein_and_splenic_vein", "prostate", "rectum"]
ATLAS_1_0 = ATLAS_1_1[:9]
TUMOR_NAMES = {"kidney_tumor", "liver_tumor", "pancreas_tumor", "hepatic_vessel_tumor", "lung_tumor",
               "colon_tumor", "kidney_cyst"}

SEGRESNET_KWARGS = dict(spatial_dims=3, blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1], init_filters=16,
                        in_channels=1, out_channels=32, dropout_prob=0.0)
DIFFTUMOR_KWARGS = {
    "unet": ("UNet", dict(spatial_dims=3, in_channels=1, out_channels=3, channels=(16, 32, 64, 128, 256),
                          strides=(2, 2, 2, 2), num_res_units=2)),
    "nnunet": ("DynUNet", dict(spatial_dims=3, in_channels=1, out_channels=3, kernel_size=[[3, 3, 3]] * 5,
                               strides=[[1, 1, 1]] + [[2, 2, 2]] * 4, upsample_kernel_size=[[2, 2, 2]] * 4,
                               norm_name="instance", deep_supervision=False)),
}
DIFFTUMOR_ORGANS = ("liver", "pancreas", "kidney")
SUPREM_UNIVERSAL = {"suprem-unet": "suprem_unet", "suprem-swinunetr": "suprem_swinunetr"}
SLOW_MODELS = set(SUPREM_UNIVERSAL)  # one 96³ forward of these takes 10-30 s on two CPU cores

MODEL_IDS = (["suprem-segresnet", "suprem-unet", "suprem-swinunetr"]
             + [f"difftumor-{organ}-{arch}" for organ in DIFFTUMOR_ORGANS for arch in ("unet", "nnunet")])

CROP_SIZE = (48, 48, 30)  # voxels of the 3 mm source CT: one 96³ window for every model with --fast


# --- Checkpoints in the published layouts -------------------------------------------------------------------

def network_state(model_id: str, *, rows: int = 32, seed: int = 0) -> dict:
    """A seeded random state dict with the released key names and shapes (no ``module.`` prefix).

    ``rows``: the class count the checkpoint selects: rows of the SuPreM universal head's ``organ_embedding``,
    output channels of the SuPreM SegResNet."""
    torch.manual_seed(seed)
    if model_id in SUPREM_UNIVERSAL:
        from AtlasSegLib.suprem import build_network

        net = build_network(SUPREM_UNIVERSAL[model_id], rows)
        net.organ_embedding.normal_()  # the released buffer holds text embeddings, not zeros
        return net.state_dict()
    import monai.networks.nets as nets

    if model_id == "suprem-segresnet":
        return nets.SegResNet(**dict(SEGRESNET_KWARGS, out_channels=rows)).state_dict()
    arch = model_id.rsplit("-", 1)[1]
    name, kwargs = DIFFTUMOR_KWARGS[arch]
    return getattr(nets, name)(**kwargs).state_dict()


def published_checkpoint(model_id: str, state: dict) -> dict:
    """``state`` wrapped the way the released files of ``model_id`` are (MODELS.md)."""
    if model_id.startswith("suprem-"):
        return {"net": {f"module.{k}": v for k, v in state.items()}, "epoch": 2100,
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
                "scheduler": {"last_epoch": 2100}}
    return {"state_dict": dict(state)}


def save_checkpoint(model_id: str, path: Path, **kwargs) -> Path:
    torch.save(published_checkpoint(model_id, network_state(model_id, **kwargs)), path)
    return path


def expected_classes(model_id: str, rows: int = 32) -> list:
    if model_id.startswith("suprem-"):
        return {32: TEMPLATE_32, 25: ATLAS_1_1, 9: ATLAS_1_0}[rows]
    organ = model_id.split("-")[1]
    return [organ, f"{organ}_tumor"]


# --- Running the CLI ----------------------------------------------------------------------------------------

@dataclass
class Run:
    model_id: str
    code: int
    stdout: str
    stderr: str
    out: Path
    ct: Path


def run_cli(model_id: str, ct: Path, weights: Path, out: Path) -> Run:
    """``atlasseg segment`` in-process, as a user types it; stdout/stderr captured (works in any fixture scope)."""
    argv = ["segment", str(ct), "-o", str(out), "--model", model_id, "--weights", str(weights), "--fast",
            "--device", "cpu", "--quiet"]
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        code = main(argv)
    return Run(model_id, code, o.getvalue(), e.getvalue(), out, ct)


@pytest.fixture(scope="module")
def crop_ct(tmp_path_factory, ctdata) -> Path:
    """A 48 x 48 x 30 voxel crop of the real 3 mm abdominal CT, centred on the body in-plane, all slices.

    RegionOfInterest keeps spacing and direction and moves the origin to the first kept voxel, so the crop is
    a real CT with an exact, non-trivial geometry (LPS-flipped directions, offset origin)."""
    src = sitk.ReadImage(str(ctdata / "totalseg_abdomen_sm" / "example_ct_sm.nii.gz"))
    body = sitk.GetArrayViewFromImage(src) > -500  # (k, j, i)
    centre = [int(np.mean(np.nonzero(body.any(axis=other))[0])) for other in ((0, 1), (0, 2))]  # i, j
    size = [min(c, n) for c, n in zip(CROP_SIZE, src.GetSize())]
    start = [int(np.clip(centre[0] - size[0] // 2, 0, src.GetSize()[0] - size[0])),
             int(np.clip(centre[1] - size[1] // 2, 0, src.GetSize()[1] - size[1])), 0]
    crop = sitk.RegionOfInterest(src, size, start)
    path = tmp_path_factory.mktemp("crop") / "ct_crop.nii.gz"
    sitk.WriteImage(crop, str(path), useCompression=True)
    return path


@pytest.fixture(scope="module", params=[pytest.param(m, marks=pytest.mark.slow) if m in SLOW_MODELS else m
                                        for m in MODEL_IDS])
def model_run(request, tmp_path_factory, crop_ct) -> Run:
    """One published-layout checkpoint of each built-in model, segmented once for all tests of this module."""
    model_id = request.param
    tmp = tmp_path_factory.mktemp(model_id)
    weights = save_checkpoint(model_id, tmp / "weights.pth")
    return run_cli(model_id, crop_ct, weights, tmp / "out")


def _read(path: Path) -> sitk.Image:
    return sitk.ReadImage(str(path))


def _assert_on_input_grid(img: sitk.Image, ct: sitk.Image, what: str) -> None:
    assert img.GetSize() == ct.GetSize(), what
    assert img.GetSpacing() == ct.GetSpacing(), what
    assert img.GetOrigin() == ct.GetOrigin(), what
    assert img.GetDirection() == ct.GetDirection(), what


def _assert_class_table_written(run: Run, names: list) -> None:
    """Exit 0; one uint8 0/1 mask per class on the input grid; card.json and report.json describe this run."""
    assert run.code == 0, f"{run.model_id}: exit {run.code}: {run.stderr[-2000:]}"
    seg = run.out / "segmentations"
    assert sorted(p.name for p in seg.iterdir()) == sorted(f"{n}.nii.gz" for n in names)
    ct = _read(run.ct)
    for name in names:
        img = _read(seg / f"{name}.nii.gz")
        assert img.GetPixelID() == sitk.sitkUInt8, name
        _assert_on_input_grid(img, ct, name)
        assert set(np.unique(sitk.GetArrayViewFromImage(img))) <= {0, 1}, name
    card = json.loads((run.out / "card.json").read_text())
    assert [c["name"] for c in card["classes"]] == names
    report = json.loads((run.out / "report.json").read_text())
    assert report["model"]["id"] == run.model_id
    assert sorted(s["name"] for s in report["structures"]) == sorted(names)


# --- The registry, end to end -------------------------------------------------------------------------------

def test_every_builtin_model_except_the_demo_is_covered_here():
    """A card added to the registry without an end-to-end test here would ship untested."""
    assert sorted(MODEL_IDS) == sorted(i for i in builtin_card_ids() if i != "atlasseg-demo")


def test_segment_writes_one_mask_per_class_of_the_checkpoint_table_on_the_input_grid(model_run):
    """The published checkpoint loads through --model/--weights and yields exactly the checkpoint's class table:
    one uint8 0/1 mask per class, each with the size, spacing, origin and direction of the input CT (what the
    Slicer module and AbdomenAtlas tools load without resampling)."""
    _assert_class_table_written(model_run, expected_classes(model_run.model_id))


def test_report_and_card_describe_the_run(model_run):
    """report.json and card.json are how a run is traced later (which model, which settings, which classes)."""
    assert model_run.code == 0, model_run.stderr[-2000:]
    report = json.loads((model_run.out / "report.json").read_text())
    card = json.loads((model_run.out / "card.json").read_text())
    assert report["model"]["id"] == card["id"] == model_run.model_id
    assert report["settings"]["fast"] is True and report["settings"]["device"] == "cpu"
    assert report["input"]["grid"]["size"] == list(_read(model_run.ct).GetSize())
    assert (model_run.out / "combined_labels.nii.gz").is_file()
    assert builtin_card(model_run.model_id).title in model_run.stdout  # the summary names the model that ran


def test_each_tumor_has_a_probability_map_on_the_input_grid_or_a_note(model_run):
    """Tumor thresholds are changed later from the stored probabilities; where none is stored (e.g. the gating
    organ was not found) the report must say why, or the user sees an unexplained empty tumor."""
    assert model_run.code == 0, model_run.stderr[-2000:]
    report = json.loads((model_run.out / "report.json").read_text())
    tumors = [n for n in expected_classes(model_run.model_id) if n in TUMOR_NAMES]
    assert sorted(report["tumors"]) == sorted(tumors)
    ct = _read(model_run.ct)
    for name in tumors:
        info = report["tumors"][name]
        if info["probability_file"] is None:
            assert isinstance(info["note"], str) and info["note"].strip(), f"{name}: no probabilities and no note"
            assert not (model_run.out / "probabilities" / f"{name}.nii.gz").exists()
            continue
        assert info["probability_file"] == f"probabilities/{name}.nii.gz"
        prob = _read(model_run.out / info["probability_file"])
        meta = json.loads((model_run.out / "probabilities" / f"{name}.json").read_text())
        assert prob.GetPixelID() == sitk.sitkUInt8
        assert list(prob.GetSize()) == meta["box_size_ijk"]
        assert prob.GetSpacing() == ct.GetSpacing() and prob.GetDirection() == ct.GetDirection()
        np.testing.assert_allclose(prob.GetOrigin(), ct.TransformIndexToPhysicalPoint(meta["box_start_ijk"]),
                                   atol=1e-4)
        assert all(s + z <= n for s, z, n in zip(meta["box_start_ijk"], meta["box_size_ijk"], ct.GetSize()))


def test_tumor_without_its_organ_is_empty_and_the_report_says_why(tmp_path, crop_ct):
    """DiffTumor keeps tumor only inside its organ. When the model finds no organ, the tumor mask must be empty
    and the report must explain the missing probability map (the random-weight runs above always find organs,
    so this path needs its own checkpoint: the output bias makes every voxel background)."""
    state = network_state("difftumor-liver-unet")
    state["model.2.1.conv.unit0.conv.bias"] = torch.tensor([50.0, -50.0, -50.0])  # last conv: bg, liver, tumor
    torch.save(published_checkpoint("difftumor-liver-unet", state), tmp_path / "w.pt")
    run = run_cli("difftumor-liver-unet", crop_ct, tmp_path / "w.pt", tmp_path / "out")
    _assert_class_table_written(run, ["liver", "liver_tumor"])
    for name in ("liver", "liver_tumor"):
        assert not sitk.GetArrayViewFromImage(_read(run.out / "segmentations" / f"{name}.nii.gz")).any(), name
    info = json.loads((run.out / "report.json").read_text())["tumors"]["liver_tumor"]
    assert info["probability_file"] is None and info["count"] == 0
    assert "liver" in info["note"]
    assert not (run.out / "probabilities" / "liver_tumor.nii.gz").exists()


# --- SuPreM: the checkpoint's class count picks the class table ---------------------------------------------

@pytest.mark.parametrize("model_id, rows, names", [
    pytest.param("suprem-unet", 25, ATLAS_1_1, marks=pytest.mark.slow, id="unet-AbdomenAtlas1.1"),
    pytest.param("suprem-unet", 9, ATLAS_1_0, marks=pytest.mark.slow, id="unet-AbdomenAtlas1.0"),
    pytest.param("suprem-segresnet", 25, ATLAS_1_1, id="segresnet-AbdomenAtlas1.1"),
])
def test_checkpoint_class_count_selects_the_abdomenatlas_class_table(model_id, rows, names, tmp_path, crop_ct):
    """Released SuPreM checkpoints exist with 25 (AbdomenAtlas 1.1) and 9 (1.0) classes: the U-Net/Swin count
    is the rows of ``organ_embedding``, the SegResNet count its output channels. Their channel order differs
    from the 32-class template, so the wrong table would write every organ under another organ's name."""
    weights = save_checkpoint(model_id, tmp_path / "w.pth", rows=rows, seed=rows)
    run = run_cli(model_id, crop_ct, weights, tmp_path / "out")
    _assert_class_table_written(run, names)
    report = json.loads((run.out / "report.json").read_text())
    assert report["tumors"] == {}  # the AbdomenAtlas tables have no tumor classes


@pytest.mark.parametrize("model_id", ["suprem-unet", "suprem-segresnet"])
def test_checkpoint_with_unknown_class_count_exits_2_naming_the_known_tables(model_id, tmp_path, crop_ct):
    """13 classes match no published class table: guessing one would mislabel every structure, so refuse
    (exit 2, nothing written) and say which counts are known."""
    weights = save_checkpoint(model_id, tmp_path / "w13.pth", rows=13)
    run = run_cli(model_id, crop_ct, weights, tmp_path / "out")
    assert run.code == 2, run.stderr
    assert "13 classes" in run.stderr and "9, 25, 32" in run.stderr
    assert not run.out.exists()


# --- Checkpoints in the wrong layout or with wrong shapes ---------------------------------------------------

def test_difftumor_checkpoint_in_suprem_layout_is_refused_naming_the_expected_key(tmp_path, crop_ct):
    """The DiffTumor cards accept only the published layout ('state_dict', no prefix). A file saved the SuPreM
    way ('net', 'module.') is most likely the wrong model's file: the message must name the key it expected
    and exit 2, not fail later or load something else."""
    state = network_state("difftumor-liver-unet")
    assert builtin_card("difftumor-liver-unet").checkpoint == {"keys": ["state_dict"], "strip_prefix": []}
    torch.save({"net": {f"module.{k}": v for k, v in state.items()}, "epoch": 1}, tmp_path / "w.pt")
    run = run_cli("difftumor-liver-unet", crop_ct, tmp_path / "w.pt", tmp_path / "out")
    assert run.code == 2, run.stderr
    assert "'state_dict'" in run.stderr and "net" in run.stderr
    assert not run.out.exists()


def test_difftumor_state_dict_with_ddp_prefix_is_refused_naming_the_key(tmp_path, crop_ct):
    """The card strips no prefix (the released DiffTumor files have none), so 'module.' keys are unexpected
    keys and the message names the first one."""
    state = network_state("difftumor-liver-unet")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pt")
    run = run_cli("difftumor-liver-unet", crop_ct, tmp_path / "w.pt", tmp_path / "out")
    assert run.code == 2, run.stderr
    assert "unexpected key" in run.stderr and f"'module.{next(iter(state))}'" in run.stderr


def test_difftumor_bare_state_dict_is_accepted(tmp_path, crop_ct):
    """A checkpoint that is the state dict itself (how people re-save weights) loads without the wrapper key."""
    torch.save(network_state("difftumor-kidney-unet"), tmp_path / "w.pt")
    run = run_cli("difftumor-kidney-unet", crop_ct, tmp_path / "w.pt", tmp_path / "out")
    _assert_class_table_written(run, ["kidney", "kidney_tumor"])


@pytest.mark.parametrize("model_id", ["suprem-segresnet", "suprem-unet", "difftumor-pancreas-nnunet"])
def test_checkpoint_with_one_wrong_shape_exits_2_naming_the_key(model_id, tmp_path, crop_ct):
    """A truncated or mismatched checkpoint must not load partially (strict load): exit 2 and name the tensor,
    so the user can tell a corrupt file from the wrong model. One case per loading path: MONAI network with
    the class count read from the checkpoint, SuPreM universal head, MONAI network with a fixed output."""
    state = network_state(model_id)
    candidates = [k for k, v in state.items() if v.ndim >= 2 and "organ_embedding" not in k
                  and "conv_final" not in k]
    key = candidates[len(candidates) // 2]
    bad = state[key]
    state[key] = torch.zeros((bad.shape[0] + 1,) + tuple(bad.shape[1:]))
    torch.save(published_checkpoint(model_id, state), tmp_path / "w.pth")
    run = run_cli(model_id, crop_ct, tmp_path / "w.pth", tmp_path / "out")
    assert run.code == 2, run.stderr
    assert f"'{key}'" in run.stderr and "shape" in run.stderr
    assert str(tuple(state[key].shape)) in run.stderr and str(tuple(bad.shape)) in run.stderr
    assert not run.out.exists()
