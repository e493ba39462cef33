"""Inference backends: what runs the network on each sliding-window batch (torch or OpenVINO) and in which precision.

MONAI's ``sliding_window_inference`` (window placement, gaussian blending, padding) is the same for every
backend; a backend only replaces the predictor called per window batch (``Runner.__call__``).

Choice (``choose``):

=========  ==========  ====================================================================================
backend    device      precision ``auto``
=========  ==========  ====================================================================================
auto       CUDA        torch with fp16 autocast
auto       CPU         OpenVINO when installed (bf16 where the CPU reports BF16 in its
                       ``OPTIMIZATION_CAPABILITIES`` and the network passes ``low_precision_check``, else
                       fp32); torch fp32 when OpenVINO is not installed
torch      any         fp16 autocast on CUDA, fp32 on CPU (bf16 autocast on request)
openvino   CPU only    as for auto on CPU
=========  ==========  ====================================================================================

OpenVINO models are converted once per set of weights (``ov.convert_model`` of the loaded torch module, fp32 IR,
dynamic batch) and cached under ``<cache_dir()>/openvino/<key>/`` where the key hashes the weights (every
tensor of the state dict), the network class, the window size and the OpenVINO version. A new conversion is
*checked* before use: the fp32 compiled model and the torch module run on the same deterministic window and the
largest logit difference must be ≤ ``CHECK_RTOL`` × max(1, largest |logit|); the result is stored beside the
model (``check.json``) so the check, like the conversion, runs once. A model that fails to convert or fails the
check is run by torch, with the reason recorded (``Runner.note``, report.json ``model.backend_note``).
Writing is atomic: a conversion goes to a temporary folder that is renamed into place.

INT8 (``--precision int8``, and the ``balanced``/``fast`` quality presets where it passes): NNCF post-training
quantization of the checked fp32 IR (``quantized``), once per set of weights, calibrated on
``CALIBRATION_WINDOWS`` windows of real anatomy (the foreground windows of the first CT the model runs on; the
source is recorded in ``quantize.json``), cached under ``<cache_dir()>/openvino/int8-<key>/`` where the key adds
the NNCF version and ``INT8_FORMAT`` to the fp32 key. It is **checked before use on the CT it is about to run on**
(each ``atlasseg segment``; in a batch, the first case, as the runner is made once per batch) by
``check_int8``: the INT8 and fp32 OpenVINO models predict ``INT8_CHECK_WINDOWS`` foreground windows (not the
calibration ones) and, per class, the Dice of the thresholded outputs (sigmoid ≥ the card's threshold, or the
argmax for softmax models), pooled over those windows and weighted by the gaussian blending weight, must be
≥ ``INT8_DICE_BOUND`` for every class with at least ``INT8_MIN_VOXELS`` voxels in either prediction.
Otherwise fp32 OpenVINO runs and the reason is recorded (report.json ``model.backend_note``, ``model.int8_check``).
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from importlib.metadata import version as metadata_version
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .download import cache_dir
from .errors import InputError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "openvino")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
AUTO_MIN_WINDOWS = 32
"""``--backend auto`` converts a network to OpenVINO only for runs of at least this many windows (a first
conversion costs tens of windows' time: ~10 s for the demo model, minutes for the SuPreM U-Net on two cores);
smaller runs use torch unless the conversion is already cached."""
CHECK_RTOL = 5e-3
"""Converted fp32 OpenVINO logits may differ from torch fp32 by at most this × max(1, max |logit|). OpenVINO sums
in another order: measured 0.3–2e-3 relative on the registry networks (SuPreM U-Net 0.014 on logits up to 6.5 on
the parity window); a wrong conversion (e.g. batch norm with running statistics) is off by ~100 %."""
LOWP_RTOL = 0.1
"""bf16/fp16 OpenVINO logits may differ from the checked fp32 OpenVINO model's by at most this × max(1, max
|logit|) on the check window, else fp32 runs. Measured on the SuPreM parity weights with a CPU that has AVX-512
BF16: U-Net 0.038 relative (0.22 on logits up to 6.0), Swin UNETR 3.3 (40 on logits up to 12: 25 % of its
thresholded voxels flip; its attention does not survive bf16 in OpenVINO's CPU plugin)."""
CONVERSION_FORMAT = 1
"""Part of the cache key: bump when ``_convert`` changes what it writes, so cached conversions are redone."""
INT8_FORMAT = 1
"""Part of the INT8 cache key: bump when ``quantized`` changes what it writes."""
CALIBRATION_WINDOWS = 6
"""Windows NNCF's post-training quantization collects activation ranges on (4 already gave 1.8× fp32 speed)."""
INT8_CHECK_WINDOWS = 3
INT8_DICE_BOUND = 0.98
"""Lowest per-class Dice (INT8 vs fp32 thresholded outputs, pooled over the check windows) for INT8 to run.
OpenVINO's INT8 3D U-Nets lose about 0.1 % Dice; the demo model measured ≥ 0.99 on the phantoms and the real CT."""
INT8_MIN_VOXELS = 200
"""Classes with fewer voxels than this in both predictions of the check windows are not judged (a few boundary
voxels would decide their Dice)."""
_OV_HINT = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}  # int8: ops NNCF left unquantized in f32
_TORCH_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}


def openvino_version() -> Optional[str]:
    """The installed OpenVINO's version, or None when it cannot be imported."""
    try:
        import openvino as ov  # here: loading OpenVINO's runtime takes ~1 s; torch-only runs never pay for it
    except Exception:  # noqa: BLE001 - a broken install (missing shared library) is as good as none
        return None
    return ov.__version__


def nncf_version() -> Optional[str]:
    """The installed NNCF's version (INT8 quantization), or None. Imported only when asked (it is slow)."""
    try:
        return metadata_version("nncf")
    except Exception:  # noqa: BLE001
        return None


def cpu_capabilities() -> tuple:
    """OpenVINO's CPU ``OPTIMIZATION_CAPABILITIES`` (e.g. ('FP32', 'BF16', 'INT8')); () without OpenVINO."""
    try:
        import openvino as ov  # here: as in openvino_version, only runs that may use OpenVINO load it

        with keep_signal_stack():  # OpenVINO's CPU plugin swaps the thread's signal stack (keep_signal_stack)
            return tuple(str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # noqa: BLE001
        return ()


@dataclass(frozen=True)
class Choice:
    backend: str  # "torch" or "openvino"
    precision: str  # "fp32", "bf16" or "fp16"
    note: Optional[str] = None  # why the choice differs from what was asked (e.g. OpenVINO not installed)


def choose(backend: str, precision: str, device: torch.device) -> Choice:
    """Resolve ``--backend``/``--precision`` for ``device``. Raises InputError for a combination that cannot run."""
    if backend not in BACKENDS:
        raise InputError(f"--backend must be one of {', '.join(BACKENDS)}, not '{backend}'")
    if precision not in PRECISIONS:
        raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}, not '{precision}'")
    note = None
    if precision == "int8":
        if device.type == "cuda" or backend == "torch":
            raise InputError("--precision int8 runs with OpenVINO on the CPU (--backend auto or openvino, --device "
                             "cpu); on a GPU use fp16 (auto)")
        if openvino_version() is None or nncf_version() is None:
            raise InputError("--precision int8 needs OpenVINO and NNCF: pip install openvino nncf "
                             "(or use --precision auto)")
        return Choice("openvino", "int8", None)
    if device.type == "cuda":
        if backend == "openvino":
            raise InputError("--backend openvino runs on the CPU only; use --device cpu, or --backend torch/auto "
                             "on the GPU")
        return Choice("torch", "fp16" if precision == "auto" else precision)
    if backend in ("auto", "openvino") and openvino_version() is None:
        if backend == "openvino":
            raise InputError("--backend openvino was asked for, but OpenVINO is not installed: "
                             "pip install openvino (or use --backend torch)")
        backend, note = "torch", "OpenVINO is not installed (pip install openvino): torch runs the network"
    if backend == "torch":
        if precision == "fp16":
            raise InputError("--precision fp16 on the CPU needs --backend openvino on a CPU with FP16 support; "
                             "torch on the CPU runs fp32 or bf16")
        return Choice("torch", "fp32" if precision == "auto" else precision, note)
    caps = cpu_capabilities()
    if precision == "auto":
        precision = "bf16" if "BF16" in caps else "fp32"
    elif precision != "fp32" and precision.upper() not in caps:
        raise InputError(f"--precision {precision}: this CPU has no {precision.upper()} support in OpenVINO "
                         f"(capabilities: {', '.join(caps) or 'none reported'}); use --precision fp32 or auto")
    return Choice("openvino", precision, None)


# --------------------------------------------------------------------------------------------------- runners
class Runner:
    """Callable predictor for MONAI's sliding window: (B, 1, *roi) float32 tensor -> (B, C, *roi) float32."""

    provisional = False  # chosen for one small run only: a larger run may choose again
    backend = "torch"
    precision = "fp32"
    note: Optional[str] = None
    device = torch.device("cpu")

    def begin(self, shape) -> None:
        """Called before a sliding-window pass over an array of ``shape`` (I, J, K); nothing to do for a network."""

    def predict(self, x: torch.Tensor, coords) -> torch.Tensor:
        """The prediction for windows ``x`` at ``coords`` (MONAI's per-window slices); the network ignores where."""
        return self(x)

    int8_check: Optional[dict] = None  # the INT8 self-check on this run's CT, when INT8 was asked for

    def info(self) -> dict:
        d = {"backend": self.backend, "precision": self.precision}
        if self.note:
            d["backend_note"] = self.note
        if self.int8_check is not None:
            d["int8_check"] = self.int8_check
        return d


class TorchRunner(Runner):
    def __init__(self, net: torch.nn.Module, device: torch.device, precision: str = "fp32", note=None):
        self.net = net
        self.device = device
        self.precision = precision
        self.note = note
        net.to(device)

    def to_cpu(self) -> "TorchRunner":
        """The same network on the CPU, fp32 (the CUDA out-of-memory fallback)."""
        return TorchRunner(self.net, torch.device("cpu"), "fp32" if self.precision == "fp16" else self.precision,
                           self.note)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.precision == "fp32":
            return self.net(x)
        with torch.autocast(self.device.type, dtype=_TORCH_DTYPE[self.precision]):
            return self.net(x).float()


class OpenVINORunner(Runner):
    backend = "openvino"

    def __init__(self, xml: Path, precision: str, *, note=None):
        import openvino as ov  # here: an optional dependency, loaded only when an OpenVINO runner is made

        self.precision = precision
        self.note = note
        self.xml = Path(xml)
        self._core = ov.Core()
        try:  # OpenVINO's own cache of compiled blobs: later runs skip most of compile_model
            compiled_dir = ov_cache_dir() / "compiled"
            compiled_dir.mkdir(parents=True, exist_ok=True)
            self._core.set_property({"CACHE_DIR": str(compiled_dir)})
        except (OSError, RuntimeError) as exc:
            log.debug("no OpenVINO compiled-model cache: %s", exc)
        self._model = self._core.read_model(str(self.xml))
        self._compiled = {}  # batch size -> compiled model (static shapes are faster on the CPU plugin)

    def _compiled_for(self, batch: int):
        if batch not in self._compiled:
            model = self._model.clone()
            shape = list(model.input(0).get_partial_shape())
            shape[0] = batch
            model.reshape({0: [batch] + [int(str(s)) for s in shape[1:]]})
            config = {"INFERENCE_PRECISION_HINT": _OV_HINT[self.precision], "PERFORMANCE_HINT": "LATENCY"}
            with keep_signal_stack():  # see keep_signal_stack: compile_model swaps the thread's signal stack
                self._compiled[batch] = self._core.compile_model(model, "CPU", config)
        return self._compiled[batch]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        compiled = self._compiled_for(int(x.shape[0]))
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        # share_outputs=False: OpenVINO copies the output into a new array of its own (writable, owned), so it
        # survives the next inference and MONAI may scale it in place; no second copy (113 MB per SuPreM window).
        out = compiled(arr, share_outputs=False)[0]
        return torch.from_numpy(out if out.dtype == np.float32 else out.astype(np.float32))


# ----------------------------------------------------------------------------------------- conversion cache
def weights_key(net: torch.nn.Module, roi) -> str:
    """Hash of the network's weights (every state-dict tensor, by name), class, window size, OpenVINO and torch
    versions and ``CONVERSION_FORMAT``."""
    h = hashlib.sha256()
    h.update(f"{type(net).__module__}.{type(net).__qualname__}|{tuple(int(r) for r in roi)}|"
             f"{openvino_version()}|{torch.__version__.split('+')[0]}|{CONVERSION_FORMAT}".encode())
    for name, t in sorted(net.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{t.numel()}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32]


def ov_cache_dir() -> Path:
    return cache_dir() / "openvino"


def _check_input(roi, seed: int = 1234) -> torch.Tensor:
    """A deterministic CT-like window: smoothed noise in [0, 1] (so normalisation layers see texture)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((1, 1) + tuple(int(r) for r in roi), generator=g)
    x = torch.nn.functional.avg_pool3d(x, 5, stride=1, padding=2)
    x = (x - x.min()) / (x.max() - x.min())
    return x


def _convert(net: torch.nn.Module, roi, folder: Path) -> dict:
    """Convert ``net`` into ``folder``/model.xml (fp32 weights) and check it against torch; returns the check."""
    import openvino as ov  # here: an optional dependency, loaded only when a conversion runs

    x = _check_input(roi)
    t0 = time.perf_counter()
    net = net.cpu().eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter (TracerWarning); the check below is what counts
        model = ov.convert_model(net, example_input=x, input=[ov.PartialShape([-1, 1] + [int(r) for r in roi])])
    ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=False)
    t_convert = time.perf_counter() - t0
    with keep_signal_stack():  # see keep_signal_stack: compile_model swaps the thread's signal stack
        compiled = ov.Core().compile_model(str(folder / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = np.asarray(compiled(x.numpy())[0], dtype=np.float32)
    with torch.inference_mode():
        ref = net(x).float().numpy()
    if got.shape != ref.shape:
        return {"ok": False, "reason": f"converted output shape {got.shape} differs from torch {ref.shape}",
                "rtol": CHECK_RTOL}
    diff = float(np.abs(got - ref).max())
    scale = max(1.0, float(np.abs(ref).max()))
    ok = bool(np.isfinite(diff) and diff <= CHECK_RTOL * scale)
    check = {"ok": ok, "max_abs_diff": diff, "max_abs_logit": float(np.abs(ref).max()), "rtol": CHECK_RTOL,
             "convert_s": round(t_convert, 2), "openvino": openvino_version(), "torch": torch.__version__}
    if not ok:
        check["reason"] = (f"OpenVINO fp32 logits differ from torch by {diff:.3g} (allowed {CHECK_RTOL * scale:.3g})")
    return check


def _cached_entry(final: Path):
    """(model.xml or None, check) of a usable cache entry, or None when there is none (or a stale/damaged one)."""
    try:
        check = json.loads((final / "check.json").read_text())
    except (OSError, ValueError):
        return None
    if check.get("ok") is False and check.get("rtol") == CHECK_RTOL:
        return None, check  # failed before with today's tolerance: torch, without converting again
    if check.get("ok") and (final / "model.xml").is_file() and (final / "model.bin").is_file():
        return final / "model.xml", check
    return None


def converted(net: torch.nn.Module, roi) -> tuple:
    """(path of the cached OpenVINO model or None, check dict). Converts and checks on first use only."""
    key = weights_key(net, roi)
    root = ov_cache_dir()
    final = root / key
    entry = _cached_entry(final)
    if entry is not None:
        return entry
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    try:
        log.info("converting the network to OpenVINO (once for these weights)")
        try:
            check = _convert(net, roi, tmp)
        except Exception as exc:  # noqa: BLE001 - any conversion failure means: run it with torch
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            check = {"ok": False, "reason": f"OpenVINO conversion failed: {type(exc).__name__}: {first[:300]}",
                     "openvino": openvino_version(), "rtol": CHECK_RTOL}
            for f in tmp.iterdir():
                f.unlink()
        (tmp / "check.json").write_text(json.dumps(check, indent=1))
        try:
            os.replace(tmp, final)  # atomic; fails when the folder exists (another process, or a stale entry)
        except OSError:
            entry = _cached_entry(final)
            if entry is not None:  # another process finished first: use its conversion
                return entry
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return (final / "model.xml" if check["ok"] else None), check


def low_precision_check(xml: Path, precision: str, roi) -> dict:
    """Whether the compiled ``precision`` (bf16/fp16) model gives the fp32 model's logits on the check window
    (``LOWP_RTOL``). Run once per conversion and precision: the result is kept beside the model
    (``check-<precision>.json``, rewritten when ``LOWP_RTOL`` changes); a damaged or unwritable record only means
    the check runs again next time."""
    record = Path(xml).parent / f"check-{precision}.json"
    try:
        cached = json.loads(record.read_text())
        if cached.get("rtol") == LOWP_RTOL and "ok" in cached:
            return cached
    except (OSError, ValueError):
        pass
    x = _check_input(roi).numpy()
    t0 = time.perf_counter()
    ref = OpenVINORunner(xml, "fp32")(torch.from_numpy(x)).numpy()
    got = OpenVINORunner(xml, precision)(torch.from_numpy(x)).numpy()
    diff = float(np.abs(got - ref).max())
    scale = max(1.0, float(np.abs(ref).max()))
    ok = bool(np.isfinite(diff) and diff <= LOWP_RTOL * scale)
    check = {"ok": ok, "precision": precision, "max_abs_diff": round(diff, 5), "max_abs_logit": round(scale, 5),
             "rtol": LOWP_RTOL, "check_s": round(time.perf_counter() - t0, 2)}
    if not ok:
        check["reason"] = (f"OpenVINO {precision} logits differ from fp32 by {diff:.3g} on the check window "
                           f"(allowed {LOWP_RTOL * scale:.3g})")
    try:
        tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(check, indent=1))
        os.replace(tmp, record)
    except OSError as exc:
        log.debug("could not keep the %s check: %s", precision, exc)
    return check


def _openvino_runner(xml: Path, precision: str, roi, note: Optional[str] = None) -> "OpenVINORunner":
    """An OpenVINO runner in ``precision``; bf16/fp16 only where ``low_precision_check`` passes, else fp32 with
    the reason in its note (auto picks bf16 on CPUs that have it, so a network bf16 breaks must not run in it)."""
    if precision in ("bf16", "fp16"):
        check = low_precision_check(xml, precision, roi)
        if not check["ok"]:
            log.warning("%s; OpenVINO fp32 runs the network instead", check["reason"])
            reason = f"{check['reason']}; OpenVINO fp32 runs the network"
            return OpenVINORunner(xml, "fp32", note=f"{note}; {reason}" if note else reason)
    return OpenVINORunner(xml, precision, note=note)


def is_converted(net: torch.nn.Module, roi) -> bool:
    """Whether this network's conversion (or its failed check) is already in the cache."""
    return (ov_cache_dir() / weights_key(net, roi) / "check.json").is_file()


# --------------------------------------------------------------------------------------------------- INT8
def int8_key(net: torch.nn.Module, roi) -> str:
    """The fp32 conversion's key with the NNCF version and ``INT8_FORMAT``."""
    h = hashlib.sha256(f"{weights_key(net, roi)}|nncf {nncf_version()}|{INT8_FORMAT}".encode())
    return h.hexdigest()[:32]


def is_quantized(net: torch.nn.Module, roi) -> bool:
    return (ov_cache_dir() / f"int8-{int8_key(net, roi)}" / "quantize.json").is_file()


def quantized(net: torch.nn.Module, roi, calibration, *, source: str = "") -> tuple:
    """(path of the cached INT8 OpenVINO model or None, info dict). Quantizes the checked fp32 conversion with
    NNCF on first use only, on ``calibration`` (windows, each (1, 1, *roi) float32, as the network sees them);
    ``source`` says where they came from (recorded in ``quantize.json``). A cached model is reused whatever the
    calibration of this call: quantization is once per set of weights, the per-run check judges it."""
    xml32, check = converted(net, roi)
    if xml32 is None:
        return None, {"ok": False, "reason": check.get("reason", "the fp32 conversion failed its check")}
    final = ov_cache_dir() / f"int8-{int8_key(net, roi)}"
    try:
        info = json.loads((final / "quantize.json").read_text())
        if (final / "model.xml").is_file() and (final / "model.bin").is_file():
            return final / "model.xml", info
    except (OSError, ValueError):
        pass
    # here: NNCF takes seconds to import and only a first quantization needs it (optional dependency)
    import nncf
    import openvino as ov  # (the same: optional)

    tmp = Path(tempfile.mkdtemp(prefix=f".int8-{final.name}-", dir=ov_cache_dir()))
    try:
        log.info("quantizing the network to INT8 with NNCF (once for these weights, %d windows)", len(calibration))
        t0 = time.perf_counter()
        data = [np.ascontiguousarray(w, dtype=np.float32) for w in calibration]
        try:
            with _quiet_nncf(), keep_signal_stack():
                model = nncf.quantize(ov.Core().read_model(str(xml32)), nncf.Dataset(data), subset_size=len(data))
            ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
        except Exception as exc:  # noqa: BLE001 - any quantization failure means: fp32 runs
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return None, {"ok": False, "reason": f"NNCF quantization failed: {type(exc).__name__}: {first[:300]}"}
        info = {"calibration_windows": len(data), "calibration_source": source,
                "quantize_s": round(time.perf_counter() - t0, 2), "nncf": nncf_version(),
                "openvino": openvino_version(), "format": INT8_FORMAT}
        (tmp / "quantize.json").write_text(json.dumps(info, indent=1))
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first, or a damaged entry: replace the latter
            if not (final / "quantize.json").is_file():
                shutil.rmtree(final, ignore_errors=True)
                os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final / "model.xml", info


class _SignalStack(ctypes.Structure):  # POSIX stack_t
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@contextlib.contextmanager
def keep_signal_stack():
    """Put back the calling thread's alternate signal stack after a block that may replace it.

    OpenVINO's CPU plugin (``compile_model``, ``get_property``, and so NNCF's quantization) installs an alternate
    signal stack (sigaltstack) of its own on the calling thread and frees that memory later, without putting
    Python's back; Python's handlers run on that stack, so the next Ctrl-C or SIGTERM after a compiled model was
    dropped (an INT8 check that fell back, a finished batch case) crashed the process with a segmentation fault
    instead of cancelling the run and cleaning up (found by the test suite: a SIGINT after an in-process batch).
    No-op where sigaltstack is unavailable."""
    libc = None
    if sys.platform != "win32":
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            saved = _SignalStack()
            if libc.sigaltstack(None, ctypes.byref(saved)) != 0:
                libc = None
        except (OSError, AttributeError):
            libc = None
    try:
        yield
    finally:
        if libc is not None:
            now = _SignalStack()
            libc.sigaltstack(None, ctypes.byref(now))
            if (now.ss_sp, now.ss_size, now.ss_flags) != (saved.ss_sp, saved.ss_size, saved.ss_flags):
                log.debug("restoring the alternate signal stack a library replaced")
                libc.sigaltstack(ctypes.byref(saved), None)


@contextlib.contextmanager
def _quiet_nncf():
    """Keep NNCF off stdout, which carries the CLI's data (tables, --json, --progress-json lines): its logger
    prints INFO lines to stdout and its progress bars (rich) write there too. Its messages go to AtlasSeg's log
    instead (the ``-v`` log; warnings still reach stderr), the progress bars nowhere."""
    nncf_log = logging.getLogger("nncf")
    handlers, propagate = list(nncf_log.handlers), nncf_log.propagate
    for h in handlers:
        nncf_log.removeHandler(h)
    nncf_log.propagate = True
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        nncf_log.propagate = propagate
        for h in handlers:
            nncf_log.addHandler(h)


def thresholded(logits: np.ndarray, activation: str, threshold: float) -> np.ndarray:
    """(B, C, ...) logits -> (B, C, ...) bool masks as the pipeline thresholds them (sigmoid ≥ threshold, or the
    argmax class for softmax)."""
    if activation == "softmax":
        arg = logits.argmax(axis=1)
        return arg[:, None] == np.arange(logits.shape[1]).reshape((1, -1) + (1,) * (logits.ndim - 2))
    t = min(max(float(threshold), 1e-6), 1 - 1e-6)
    return logits >= np.log(t / (1 - t))  # sigmoid(x) ≥ t  <=>  x ≥ logit(t)


def _blend_weights(roi) -> np.ndarray:
    """MONAI's gaussian importance map of a window (sigma 1/8 of its size, as ``mode="gaussian"`` blends), peak 1:
    a window's border voxels weigh little in the blended output, so they weigh little in the check."""
    w = np.ones((), np.float32)
    for n in roi:
        x = np.arange(n, dtype=np.float32) - (n - 1) / 2.0
        w = np.multiply.outer(w, np.exp(-0.5 * (x / (0.125 * n)) ** 2).astype(np.float32))
    return w


def check_int8(reference: Runner, candidate: Runner, windows, *, activation: str = "sigmoid",
               threshold: float = 0.5, names: Optional[dict] = None, bound: Optional[float] = None) -> dict:
    """Per-class Dice of ``candidate``'s thresholded outputs against ``reference``'s on ``windows`` (each
    (1, 1, *roi)), pooled over the windows, each voxel weighted by MONAI's gaussian blending weight (the final
    masks are the blend: a flip at a window's border, where other windows decide, hardly reaches them).
    ``ok`` when every judged class (≥ ``INT8_MIN_VOXELS`` voxels in
    either) reaches ``bound`` (default ``INT8_DICE_BOUND``). ``names``: channel -> structure name for the
    record; softmax channel 0 (background) is not judged."""
    bound = INT8_DICE_BOUND if bound is None else float(bound)
    inter = union_sum = counts = None
    t0 = time.perf_counter()
    with torch.inference_mode():
        for w in windows:
            x = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
            a = thresholded(reference(x).numpy(), activation, threshold)
            b = thresholded(candidate(x).numpy(), activation, threshold)
            axes = (0,) + tuple(range(2, a.ndim))
            w = _blend_weights(a.shape[2:])  # a voxel counts as much as the window decides it in the blend
            i, s = ((a & b) * w).sum(axis=axes), (a * w).sum(axis=axes) + (b * w).sum(axis=axes)
            n = np.maximum(a.sum(axis=axes), b.sum(axis=axes))
            inter, union_sum, counts = ((i, s, n) if inter is None else (inter + i, union_sum + s, counts + n))
    per_class, skipped = {}, []
    for c in range(len(inter)):
        name = (names or {}).get(c, str(c))
        if (activation == "softmax" and c == 0) or (names is not None and c not in names):
            continue
        if counts[c] < INT8_MIN_VOXELS:
            skipped.append(name)
            continue
        per_class[name] = round(2.0 * float(inter[c]) / float(union_sum[c]), 5)
    worst = min(per_class.values()) if per_class else None
    ok = bool(per_class) and worst >= bound
    out = {"ok": ok, "min_dice": worst, "bound": bound, "windows": len(windows), "dice": per_class,
           "not_judged": skipped, "check_s": round(time.perf_counter() - t0, 2)}
    if not per_class:
        out["reason"] = (f"no class had {INT8_MIN_VOXELS} voxels in the {len(windows)} check windows, so INT8 "
                         "could not be judged")
    elif not ok:
        low = min(per_class, key=per_class.get)
        out["reason"] = f"INT8 vs fp32 Dice of {low} is {worst:.4f} on this CT's check windows (bound {bound})"
    return out


def make_runner(net: torch.nn.Module, roi, device: torch.device, backend: str = "auto",
                precision: str = "auto", *, windows: Optional[int] = None, calibration=None, check=None,
                calibration_source: str = "", fallback: str = "fp32") -> Runner:
    """The predictor that runs ``net`` on windows of size ``roi`` as asked (see the module docstring).

    ``windows``: how many windows the run has; with ``backend="auto"`` a run of fewer than ``AUTO_MIN_WINDOWS``
    does not pay for a first conversion (torch runs it; the runner is marked ``provisional``).

    ``precision="int8"``: ``calibration`` (windows for a first quantization) and ``check`` (dict: ``windows``
    and ``check_int8``'s keywords) are required; INT8 runs only when ``check_int8`` passes on them, else fp32
    OpenVINO (``fallback``: the precision to run instead, e.g. what ``auto`` picks when a quality preset asked
    for INT8) with the reason in ``note`` and the check in ``int8_check``."""
    choice = choose(backend, precision, device)
    int8_spec = dict(check or {})
    if choice.backend == "torch":
        return TorchRunner(net, device, choice.precision, choice.note)
    if (backend == "auto" and choice.precision != "int8" and windows is not None and windows < AUTO_MIN_WINDOWS
            and not is_converted(net, roi)):
        runner = TorchRunner(net, device, "fp32", f"{windows} windows: a first OpenVINO conversion would take longer "
                             "than it saves; torch fp32 runs them (--backend openvino to convert anyway)")
        runner.provisional = True
        return runner
    xml, check = converted(net, roi)
    if xml is None:
        reason = check.get("reason", "conversion check failed")
        log.warning("%s; torch runs the network instead", reason)
        return TorchRunner(net, device, "fp32", f"{reason}; torch fp32 runs the network")
    if choice.precision != "int8":
        return _openvino_runner(xml, choice.precision, roi)
    fp32 = OpenVINORunner(xml, "fp32")

    def instead(reason: str, record: dict) -> Runner:
        log.warning("%s; OpenVINO %s runs the network instead", reason, fallback)
        runner = fp32 if fallback == "fp32" else _openvino_runner(
            xml, fallback, roi, note=f"{reason}; OpenVINO {fallback} runs the network")
        if runner is fp32:
            runner.note = f"{reason}; OpenVINO fp32 runs the network"
        runner.int8_check = record
        return runner

    xml8, info = quantized(net, roi, calibration, source=calibration_source)
    if xml8 is None:
        return instead(info["reason"], info)
    int8 = OpenVINORunner(xml8, "int8")
    result = check_int8(fp32, int8, int8_spec.pop("windows"), **int8_spec)
    result["quantization"] = info
    if not result["ok"]:
        return instead(result["reason"], result)
    int8.int8_check = result
    return int8

