"""This machine's measured seconds per network window, per model, backend and precision: the one owner of
``<cache_dir()>/window_times.json``. ``Segmenter.run`` (``pipeline``) records each run's time here and
``estimate`` reads it to predict a run's duration; a module of its own so that neither imports the other
(``estimate`` uses the pipeline's grid and crop). Best effort throughout: the file only feeds an estimate."""
from __future__ import annotations

import json
import os
from typing import Optional

from .download import cache_dir
from .io import atomic_write_text


def _times_file():
    return cache_dir() / "window_times.json"


def _key(card_id: str, backend: str, precision: str) -> str:
    return f"{card_id}|{backend}|{precision}|{os.cpu_count()} cpus"


def record_window_time(card_id: str, backend: str, precision: str, seconds: float, windows: int) -> None:
    """Remember this machine's seconds per window (running mean over runs, weighted by windows). Best effort:
    an unwritable cache only loses the estimate."""
    if windows <= 0 or seconds <= 0:
        return
    path = _times_file()
    try:
        table = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        table = {}
    entry = table.get(_key(card_id, backend, precision), {"seconds": 0.0, "windows": 0})
    entry = {"seconds": entry["seconds"] + float(seconds), "windows": entry["windows"] + int(windows)}
    table[_key(card_id, backend, precision)] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json.dumps(table, indent=1), path)
    except OSError:
        pass


def window_seconds(card_id: str, backend: str, precision: str) -> Optional[float]:
    """This machine's recorded seconds per window, or None."""
    try:
        entry = json.loads(_times_file().read_text()).get(_key(card_id, backend, precision))
    except (OSError, ValueError):
        return None
    return entry["seconds"] / entry["windows"] if entry and entry["windows"] else None
