"""Build a model card's network and load its weights exactly (strict, by name, ``weights_only``)."""
from __future__ import annotations

import logging
import zipfile
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from . import suprem
from .card import ModelCard
from .errors import InputError

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    net: torch.nn.Module
    card: ModelCard  # with the class table chosen from the checkpoint
    weights: Optional[str]


def read_state_dict(path, card: ModelCard) -> dict:
    """The checkpoint's state dict: found under the card's keys ('net', 'state_dict', …), prefixes stripped.

    Raises InputError when the file is not a PyTorch checkpoint or holds no tensors."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weights file {path} does not exist")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged pickle fails with almost any error (KeyError, struct.error…)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not isinstance(exc, (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError,
                                AttributeError)):
            reason = f"damaged: {type(exc).__name__} {reason}"
        raise InputError(f"weights file {path} is not a loadable PyTorch checkpoint ({reason[:200]}); "
                         "give the .pth/.pt file of this model") from None
    state = obj
    if isinstance(obj, dict):
        for key in card.checkpoint["keys"]:
            if isinstance(obj.get(key), dict):
                state = obj[key]
                break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise InputError(f"weights file {path} holds no state dict of tensors (top level: {keys}); expected the "
                         f"weights directly or under one of {card.checkpoint['keys']}")
    prefixes = card.checkpoint["strip_prefix"]
    out = {}
    for name, tensor in state.items():
        for prefix in prefixes:
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        out[name] = tensor
    return out


def _size_from(state: dict, key: Optional[str], path) -> Optional[int]:
    if not key:
        return None
    if key not in state:
        raise InputError(f"weights file {path} has no '{key}' tensor, which this model's checkpoints always have; "
                         "is it a checkpoint of another model?")
    return int(state[key].shape[0])


def construct(card: ModelCard, num_outputs: Optional[int] = None) -> torch.nn.Module:
    """A freshly initialised network for ``card`` (``num_outputs`` overrides the output/class count)."""
    arch = card.architecture
    kwargs = dict(arch.get("kwargs", {}))
    if arch["type"] == "monai":
        # here: MONAI takes seconds to import; only cards of type monai need it
        import monai.networks.nets as nets

        cls = getattr(nets, arch["name"], None)
        if cls is None:
            raise InputError(f"model card {card.id}: MONAI has no network named '{arch['name']}'")
        if num_outputs is not None:
            kwargs["out_channels"] = num_outputs
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise InputError(f"model card {card.id}: cannot build {arch['name']} with {kwargs}: {exc}") from None
    if arch["type"] == "atlasseg":
        n = num_outputs if num_outputs is not None else len(card.classes)
        return suprem.build_network(arch["name"], num_classes=n, **kwargs)
    raise InputError(f"model card {card.id}: architecture type '{arch['type']}' cannot be constructed")


def load_model(card: ModelCard, weights=None) -> LoadedModel:
    """Build the card's network and load ``weights`` (or the weights file shipped beside the card)."""
    arch = card.architecture
    if arch["type"] == "torchscript":
        file = Path(weights) if weights else _beside_card(card, arch.get("file"))
        try:
            net = torch.jit.load(str(file), map_location="cpu")
        except (RuntimeError, ValueError) as exc:
            raise InputError(f"{file} is not a TorchScript model: {str(exc).strip().splitlines()[0][:200]}") from None
        return LoadedModel(net.eval(), card, str(file))

    if weights is None:
        shipped = card.weights.get("file")
        if not shipped:
            raise InputError(f"model {card.id} needs its weights: run 'atlasseg models fetch {card.id}' or pass "
                             "--weights FILE")
        weights = _beside_card(card, shipped)
    state = read_state_dict(weights, card)
    n_out = _size_from(state, arch.get("out_channels_from"), weights)
    n_table = _size_from(state, arch.get("class_table_from"), weights)
    if n_table is not None or n_out is not None:
        card = card.with_class_table(n_table if n_table is not None else n_out)
    n_classes = n_out if n_out is not None else n_table
    if n_classes is not None:
        too_high = [c.name for c in card.classes if c.channel >= n_classes]
        if too_high:
            raise InputError(f"weights {weights} have {n_classes} output channels, but the model card expects channels "
                             f"for {', '.join(too_high[:5])}; use a card whose class table matches the checkpoint")
    net = construct(card, n_out if n_out is not None else n_table)
    _load_strict(net, state, weights, card)
    return LoadedModel(net.eval(), card, str(weights))


def _beside_card(card: ModelCard, relative) -> Path:
    if not relative or card.base_dir is None:
        raise InputError(f"model card {card.id} names no weights file; pass --weights FILE")
    return (card.base_dir / relative).resolve()


def _load_strict(net: torch.nn.Module, state: dict, weights, card: ModelCard) -> None:
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            k = missing[0]
            parts.append(f"{len(missing)} missing key(s), first '{k}' (expected shape {tuple(expected[k].shape)})")
        if unexpected:
            k = unexpected[0]
            parts.append(f"{len(unexpected)} unexpected key(s), first '{k}' (shape {tuple(state[k].shape)})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatch(es), first '{k}': checkpoint {tuple(state[k].shape)} vs "
                         f"model {tuple(expected[k].shape)}")
        raise InputError(f"weights {weights} do not match model card {card.id}: " + "; ".join(parts))
    net.load_state_dict(state, strict=True)
