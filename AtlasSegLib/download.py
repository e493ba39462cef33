"""Model weights: download, verification and the local cache.

Weights are untrusted data of hundreds of MB. They are streamed to a per-model ``.partial`` file while their
sha256 is computed, checked against the size and sha256 published in the model card, and only then renamed
(atomically) to their final name, so a file under its final name is always complete and verified; an
interrupted download resumes from the partial file with an HTTP ``Range`` request. A per-model file lock
keeps two processes from downloading the same model at once (the second waits and then finds it cached).

Cache layout (root: :func:`cache_dir`)::

    <root>/models/manifest.json              model id -> filename, size, sha256, source, fetched_at, origin
    <root>/models/<model id>/<filename>      verified weights
    <root>/models/<model id>/<filename>.partial   interrupted download (never used as weights)

``source`` in the manifest is ``"verified"`` when the file matched a published sha256 and
``"trust-on-first-use"`` when none is published: the sha256 computed on the first download is recorded, and
later downloads or imports of that model must match it.

Example:
    >>> path = fetch("suprem-unet", progress=lambda done, total: None)   # doctest: +SKIP
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

from . import __version__
from .card import ModelCard, builtin_card, builtin_card_ids
from .errors import AtlasSegError, Cancelled, InputError

__all__ = [
    "ChecksumError",
    "DownloadError",
    "ModelInfo",
    "cache_dir",
    "cached_path",
    "clear",
    "fetch",
    "import_file",
    "is_cached",
    "list_models",
    "models_dir",
]

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
"""Download / hashing chunk size (1 MiB)."""
MANIFEST_NAME = "manifest.json"
PARTIAL_SUFFIX = ".partial"
SOURCE_VERIFIED = "verified"
SOURCE_TOFU = "trust-on-first-use"

ByteProgress = Callable[[int, Optional[int]], None]
"""Called as ``progress(done_bytes, total_bytes)``; ``total_bytes`` is None when unknown."""
CancelCheck = Callable[[], bool]
CardOrId = Union[ModelCard, str]


class DownloadError(AtlasSegError):
    """Weights could not be downloaded (offline, blocked, timed out, HTTP error, incomplete transfer).

    The message names the URL, the expected size and sha256, and the command that installs a file
    downloaded by other means. The CLI exits with code 3 (documented in the README and ``atlasseg --help``).
    """

    exit_code = 3


class ChecksumError(DownloadError):
    """Downloaded bytes do not match the published (or first recorded) size / sha256. Nothing was cached."""


@dataclass(frozen=True)
class ModelInfo:
    """One row of :func:`list_models`."""

    id: str
    title: str
    num_classes: int
    size: Optional[int]
    license: str
    cached: bool
    sha256_status: str  # "published", "recorded on first use" or "unknown"
    path: Optional[Path] = None


@dataclass(frozen=True)
class _Spec:
    """What to download for a model and how to check it."""

    model_id: str
    url: Optional[str]
    filename: str
    size: Optional[int]
    sha256: Optional[str]


# --------------------------------------------------------------------------------------------------------
# Cache locations and the manifest


def cache_dir() -> Path:
    """Root of the AtlasSeg cache.

    ``$ATLASSEG_HOME`` if set; otherwise ``%LOCALAPPDATA%\\AtlasSeg\\Cache`` (Windows),
    ``~/Library/Caches/AtlasSeg`` (macOS) or ``$XDG_CACHE_HOME/atlasseg`` / ``~/.cache/atlasseg`` (Linux and
    other POSIX). The folder is not created here.
    """
    env = os.environ.get("ATLASSEG_HOME")
    if env:
        return Path(env).expanduser()
    home = Path.home()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA")
        return (Path(base) if base else home / "AppData" / "Local") / "AtlasSeg" / "Cache"
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "AtlasSeg"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg and os.path.isabs(xdg) else home / ".cache") / "atlasseg"


def models_dir() -> Path:
    """``<cache_dir()>/models``: the model files and their manifest."""
    return cache_dir() / "models"


def _model_dir(model_id: str) -> Path:
    return models_dir() / model_id


def _read_manifest() -> dict:
    path = models_dir() / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        # Writes are atomic, so this means outside damage; the files themselves are re-verified on use.
        logger.warning("ignoring unreadable model manifest %s: %s", path, exc)
        return {}
    models = data.get("models") if isinstance(data, dict) else None
    return models if isinstance(models, dict) else {}


def _manifest_entry(model_id: str) -> Optional[dict]:
    entry = _read_manifest().get(model_id)
    return entry if isinstance(entry, dict) else None


def _update_manifest(model_id: str, entry: Optional[dict]) -> None:
    """Set (or with None remove) one model's entry: read-modify-write under the manifest lock, atomic write."""
    root = models_dir()
    root.mkdir(parents=True, exist_ok=True)
    with _FileLock(root / ".manifest.lock"):
        models = _read_manifest()
        if entry is None:
            models.pop(model_id, None)
        else:
            models[model_id] = entry
        text = json.dumps({"version": 1, "models": models}, indent=1, sort_keys=True) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".tmp", dir=root)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, root / MANIFEST_NAME)
        except BaseException:
            _unlink_quietly(Path(tmp))
            raise


# --------------------------------------------------------------------------------------------------------
# Locking


class _FileLock:
    """Exclusive inter-process lock on a lock file (``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows).

    OS locks are released when their process dies, so a crashed download never leaves a stale lock behind
    (unlike lock files created with O_EXCL). Waiting polls so that ``cancel`` is honoured.
    """

    def __init__(self, path: Path, cancel: Optional[CancelCheck] = None, poll_s: float = 0.1):
        self.path = Path(path)
        self.cancel = cancel
        self.poll_s = poll_s
        self._fh = None

    def __enter__(self) -> "_FileLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+b")  # noqa: SIM115 - closed in __exit__
        waited = False
        while True:
            try:
                _lock_nonblocking(fh)
                break
            except OSError:
                if self.cancel is not None and self.cancel():
                    fh.close()
                    raise Cancelled("cancelled while waiting for another AtlasSeg process to finish "
                                    "downloading the same model") from None
                if not waited:
                    logger.info("waiting for another process to release %s", self.path)
                    waited = True
                time.sleep(self.poll_s)
        self._fh = fh
        return self

    def __exit__(self, *exc) -> None:
        try:
            _unlock(self._fh)
        finally:
            self._fh.close()
            self._fh = None


if sys.platform == "win32":
    import msvcrt

    def _lock_nonblocking(fh) -> None:
        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)

    def _unlock(fh) -> None:
        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _lock_nonblocking(fh) -> None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fh) -> None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------------------
# Cards


def _as_card(card_or_id: CardOrId) -> ModelCard:
    if isinstance(card_or_id, ModelCard):
        return card_or_id
    if isinstance(card_or_id, str):
        return builtin_card(card_or_id)
    raise InputError(f"expected a model id or a ModelCard, got {type(card_or_id).__name__}")


def _spec(card: ModelCard) -> _Spec:
    weights = card.weights or {}
    url = weights.get("url")
    filename = weights.get("filename") or (url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] if url else None)
    if not filename or filename in (".", "..") or "/" in filename or "\\" in filename:
        raise InputError(f"model {card.id}: the card's weights need a plain 'filename' (or a 'url' ending in "
                         f"one); got {filename!r}")
    sha = weights.get("sha256")
    return _Spec(model_id=card.id, url=url, filename=filename, size=weights.get("size"),
                 sha256=sha.lower() if sha else None)


def _bundled_path(card: ModelCard) -> Optional[Path]:
    """Where the weights shipped beside the card (``weights.file``) should be, or None for downloaded ones."""
    rel = (card.weights or {}).get("file")
    if not rel:
        return None
    base = card.base_dir if card.base_dir is not None else Path.cwd()
    return (base / rel).resolve()


def _final_path(spec: _Spec) -> Path:
    return _model_dir(spec.model_id) / spec.filename


def _partial_path(spec: _Spec) -> Path:
    return _model_dir(spec.model_id) / (spec.filename + PARTIAL_SUFFIX)


def _lock_path(spec: _Spec) -> Path:
    return _model_dir(spec.model_id) / ".lock"


# --------------------------------------------------------------------------------------------------------
# Queries


def cached_path(card: CardOrId) -> Optional[Path]:
    """The verified weights file of a model, or None when it must be fetched.

    Cheap (no hashing): the file must exist under its final name, be recorded in the manifest with the same
    size, and, when the card publishes a sha256, have been verified against that same sha256. Partial and
    temporary files never count.
    """
    card = _as_card(card)
    bundled = _bundled_path(card)
    if bundled is not None:
        return bundled if bundled.is_file() else None
    spec = _spec(card)
    path = _final_path(spec)
    entry = _manifest_entry(spec.model_id)
    if entry is None or entry.get("filename") != spec.filename:
        return None
    if spec.sha256 is not None and entry.get("sha256") != spec.sha256:
        return None
    if spec.size is not None and entry.get("size") != spec.size:
        return None
    try:
        size = path.stat().st_size
    except OSError:
        return None
    return path if size == entry.get("size") else None


def is_cached(card: CardOrId) -> bool:
    """Whether :func:`cached_path` finds verified weights for the model."""
    return cached_path(card) is not None


def list_models() -> list:
    """Every built-in model with what a user needs before downloading it.

    Returns:
        A list of :class:`ModelInfo` sorted by id: id, title, number of classes (default class table), size
        in bytes (None if unknown), license, whether it is cached, and the sha256 status: ``"published"``,
        ``"recorded on first use"``, ``"unknown"``, or ``"bundled"`` for weights shipped with AtlasSeg
        (``cached`` then says whether that file is present).
    """
    manifest = _read_manifest()
    rows = []
    for model_id in builtin_card_ids():
        card = builtin_card(model_id)
        bundled = _bundled_path(card)
        if bundled is not None:
            present = bundled.is_file()
            rows.append(ModelInfo(id=model_id, title=card.title, num_classes=len(card.classes),
                                  size=bundled.stat().st_size if present else None, license=card.license,
                                  cached=present, sha256_status="bundled", path=bundled if present else None))
            continue
        spec = _spec(card)
        entry = manifest.get(model_id) if isinstance(manifest.get(model_id), dict) else None
        if spec.sha256:
            status = "published"
        elif entry and entry.get("sha256"):
            status = "recorded on first use"
        else:
            status = "unknown"
        path = cached_path(card)
        rows.append(ModelInfo(id=model_id, title=card.title, num_classes=len(card.classes),
                              size=spec.size if spec.size is not None else (entry or {}).get("size"),
                              license=card.license, cached=path is not None, sha256_status=status, path=path))
    return rows


# --------------------------------------------------------------------------------------------------------
# Fetch


def _cached(card, progress) -> Optional[Path]:
    """The verified cached weights (reported as a finished download), or None."""
    found = cached_path(card)
    if found is not None:
        _report(progress, found.stat().st_size, found.stat().st_size)
    return found


def fetch(card_or_id: CardOrId, *, progress: Optional[ByteProgress] = None, cancel: Optional[CancelCheck] = None,
          timeout=(10, 60), session=None) -> Path:
    """Return the verified weights file of a model, downloading it into the cache if needed.

    Args:
        card_or_id: a :class:`ModelCard` or a built-in model id.
        progress: called as ``progress(done_bytes, total_bytes)`` after every chunk (``total_bytes`` None if
            unknown); a resumed download starts at the bytes already there.
        cancel: polled between chunks (and while waiting for another process); returning True stops the
            download with :class:`~AtlasSegLib.errors.Cancelled`, keeping the partial file for a later resume.
        timeout: ``requests`` timeout, ``(connect_s, read_s)`` or one number; the read timeout is the longest
            silence tolerated between two reads, not a limit on the whole download.
        session: a ``requests.Session`` to use (proxies, retries, tests); one is created otherwise.

    Returns:
        Path of the verified file, ``<cache>/models/<model id>/<filename>``.

    Raises:
        DownloadError: network failure, HTTP error or incomplete transfer (the partial file is kept, the next
            call resumes); the message says how to install a file downloaded by hand.
        ChecksumError: the bytes do not match the published or recorded size / sha256 (partial deleted).
        Cancelled: ``cancel()`` returned True.
        InputError: the card has no download URL.
    """
    card = _as_card(card_or_id)
    found = _cached(card, progress)
    if found is not None:
        return found
    bundled = _bundled_path(card)
    if bundled is not None:
        raise InputError(f"model {card.id} ships its weights with AtlasSeg at {bundled}, but that file is "
                         "missing; reinstall AtlasSeg (or the extension) to restore it")
    spec = _spec(card)
    if not spec.url:
        raise InputError(f"model {spec.model_id} has no download URL in its card; install its weights with: "
                         f"{_import_command(spec)}")
    with _FileLock(_lock_path(spec), cancel=cancel):
        # Another process may have finished the same download while this one waited for the lock.
        found = _cached(card, progress)
        if found is not None:
            return found
        adopted = _adopt_unrecorded(spec)
        if adopted is not None:
            return adopted
        own_session = session is None
        if own_session:
            # here: requests (about 0.1 s) loads only when a download starts, not for 'models list' or a run
            import requests

            session = requests.Session()
        try:
            digest, size = _download(spec, session, progress, cancel, timeout)
        finally:
            if own_session:
                session.close()
        partial = _partial_path(spec)
        source = _check_bytes(spec, digest, size, partial, error=ChecksumError)
        final = _final_path(spec)
        os.replace(partial, final)
        _record(spec, digest, size, source, origin=spec.url)
        logger.info("model %s downloaded and verified (%s): %s", spec.model_id, source, final)
        return final


def _download(spec: _Spec, session, progress, cancel, timeout):
    """Stream the URL into the partial file, resuming it if present. Returns (sha256 hex, size)."""
    # here: requests (about 0.1 s) loads only when a download starts, not for 'models list' or a run
    import requests

    partial = _partial_path(spec)
    partial.parent.mkdir(parents=True, exist_ok=True)
    for _attempt in range(2):  # the second pass restarts from zero when a resume is impossible
        offset = partial.stat().st_size if partial.is_file() else 0
        if spec.size is not None and offset > spec.size:
            logger.warning("partial download %s is larger than the model (%d > %d bytes); restarting",
                           partial, offset, spec.size)
            partial.unlink()
            offset = 0
        hasher = hashlib.sha256()
        if offset:
            _hash_file(partial, hasher)
        if spec.size is not None and offset == spec.size:
            return hasher.hexdigest(), offset  # complete already: only the rename was missing
        headers = {"Accept-Encoding": "identity", "User-Agent": f"AtlasSeg/{__version__}"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            logger.info("resuming %s at byte %d", spec.url, offset)
        else:
            logger.info("downloading %s", spec.url)
        try:
            with session.get(spec.url, headers=headers, stream=True, timeout=timeout) as resp:
                status = resp.status_code
                if status == 416 and offset:
                    if _content_range_total(resp.headers.get("Content-Range")) == offset:
                        return hasher.hexdigest(), offset
                    logger.warning("server refused to resume %s (HTTP 416); restarting", spec.url)
                    partial.unlink()
                    continue
                if status == 206 and offset:
                    start = _content_range_start(resp.headers.get("Content-Range"))
                    if start != offset:
                        logger.warning("server resumed %s at %s instead of %d; restarting", spec.url, start, offset)
                        partial.unlink()
                        continue
                    mode, total = "ab", _content_range_total(resp.headers.get("Content-Range"))
                elif status == 200:
                    if offset:
                        logger.info("server ignored the Range request for %s; restarting from zero", spec.url)
                        offset, hasher = 0, hashlib.sha256()
                    mode, total = "wb", _int_or_none(resp.headers.get("Content-Length"))
                else:
                    raise _download_error(spec, f"the server answered HTTP {status} {resp.reason or ''}".rstrip(),
                                          offset)
                if spec.size is not None and total is not None and total != spec.size:
                    _unlink_quietly(partial)  # the server now offers another file: the partial is useless
                    raise ChecksumError(_message(spec, f"the server offers {total:,} bytes instead of the "
                                                       f"published {spec.size:,}; nothing was cached"))
                total = spec.size if spec.size is not None else total
                done = offset
                _report(progress, done, total)
                try:
                    with open(partial, mode) as fh:
                        for chunk in resp.iter_content(chunk_size=CHUNK_BYTES):
                            if cancel is not None and cancel():
                                raise Cancelled(f"download of {spec.model_id} cancelled; {done:,} bytes kept, "
                                                "the next download resumes from there")
                            fh.write(chunk)
                            hasher.update(chunk)
                            done += len(chunk)
                            _report(progress, done, total)
                        fh.flush()
                        os.fsync(fh.fileno())
                except requests.exceptions.RequestException:
                    raise  # a network failure (requests' errors are OSErrors too), handled below
                except OSError as exc:
                    raise DownloadError(f"cannot write {partial}: {exc}; free some disk space or set "
                                        "ATLASSEG_HOME to a folder with room for the model") from exc
        except requests.exceptions.RequestException as exc:
            done_now = partial.stat().st_size if partial.is_file() else 0
            raise _download_error(spec, _describe(exc, timeout), done_now) from exc
        if total is not None and done < total:
            raise _download_error(spec, f"the connection closed after {done:,} of {total:,} bytes", done)
        return hasher.hexdigest(), done
    raise _download_error(spec, "the server cannot resume the download and restarting failed", 0)


def _adopt_unrecorded(spec: _Spec) -> Optional[Path]:
    """A final-named file with no manifest entry (process killed between rename and manifest write).

    Verified by hashing before use; a file that does not verify is deleted.
    """
    path = _final_path(spec)
    if not path.is_file():
        return None
    hasher = hashlib.sha256()
    size = _hash_file(path, hasher)
    try:
        source = _check_bytes(spec, hasher.hexdigest(), size, path, error=ChecksumError)
    except ChecksumError as exc:
        logger.warning("deleted an unverifiable cached file: %s", exc)
        return None
    _record(spec, hasher.hexdigest(), size, source, origin=spec.url)
    return path


# --------------------------------------------------------------------------------------------------------
# Import


def import_file(card_or_id: CardOrId, path, *, progress: Optional[ByteProgress] = None,
                cancel: Optional[CancelCheck] = None) -> Path:
    """Install a weights file obtained by other means (browser, another computer) into the cache.

    The file is copied into the cache folder under a temporary name while being hashed, checked against the
    card's size and sha256 (or the sha256 recorded on first use), then renamed; the original is left as is.

    Args:
        card_or_id: a :class:`ModelCard` or a built-in model id.
        path: the downloaded file.
        progress: ``progress(done_bytes, total_bytes)`` during the copy.
        cancel: polled between chunks; True stops with :class:`~AtlasSegLib.errors.Cancelled`.

    Returns:
        The path of the installed file (as :func:`fetch` would return it).

    Raises:
        InputError: the file is missing or its size / sha256 does not match.
    """
    card = _as_card(card_or_id)
    if _bundled_path(card) is not None:
        raise InputError(f"model {card.id} ships its weights with AtlasSeg; there is nothing to import")
    spec = _spec(card)
    src = Path(path).expanduser()
    if not src.is_file():
        raise InputError(f"cannot import weights for {spec.model_id}: {src} is not a file")
    size = src.stat().st_size
    if spec.size is not None and size != spec.size:
        raise InputError(f"{src} has {size:,} bytes but model {spec.model_id} ({spec.filename}) has "
                         f"{spec.size:,}; download it again from {spec.url}")
    folder = _model_dir(spec.model_id)
    folder.mkdir(parents=True, exist_ok=True)
    with _FileLock(_lock_path(spec), cancel=cancel):
        fd, tmp_name = tempfile.mkstemp(prefix=".import-", suffix=".tmp", dir=folder)
        tmp = Path(tmp_name)
        try:
            hasher = hashlib.sha256()
            done = 0
            with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
                while True:
                    if cancel is not None and cancel():
                        raise Cancelled(f"import of {spec.model_id} cancelled; nothing was installed")
                    chunk = inp.read(CHUNK_BYTES)
                    if not chunk:
                        break
                    out.write(chunk)
                    hasher.update(chunk)
                    done += len(chunk)
                    _report(progress, done, size)
                out.flush()
                os.fsync(out.fileno())
            source = _check_bytes(spec, hasher.hexdigest(), done, tmp, error=InputError, what=str(src))
            if source != SOURCE_VERIFIED:
                _load_check(card, tmp, src)  # no published checksum: the file must at least be this model's
            final = _final_path(spec)
            os.replace(tmp, final)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        _unlink_quietly(_partial_path(spec))
        _record(spec, hasher.hexdigest(), done, source, origin=f"imported from {src.resolve()}")
    logger.info("model %s imported (%s): %s", spec.model_id, source, final)
    return final


# --------------------------------------------------------------------------------------------------------
# Helpers


def _load_check(card: ModelCard, path: Path, src: Path) -> None:
    """Load ``path`` as ``card``'s network (the checkpoint's keys and tensor shapes against the card's): a file
    without a published checksum is otherwise taken on trust, junk included. Raises InputError."""
    from .networks import load_model  # torch: only here, for a file that needs it

    try:
        load_model(card, path)
    except InputError as exc:
        reason = str(exc).replace(f"weights file {path}", "the file").replace(f"weights {path}", "the file")
        raise InputError(f"cannot import {src} as the weights of {card.id}: {reason}; nothing was installed. Download "
                         f"the file again from {_spec(card).url or 'its source'}") from None


def remove(card_or_id: CardOrId) -> list:
    """Delete a model's cached weights (and partial downloads) and forget its recorded checksum. Returns the paths
    removed. Raises InputError when the model ships with AtlasSeg or nothing of it is cached."""
    card = _as_card(card_or_id)
    if _bundled_path(card) is not None:
        raise InputError(f"model {card.id} ships its weights with AtlasSeg; there is nothing to remove")
    spec = _spec(card)
    folder = _model_dir(spec.model_id)
    if not folder.is_dir() and _manifest_entry(spec.model_id) is None:
        raise InputError(f"model {card.id} is not cached; nothing to remove ('atlasseg models list' shows what is)")
    removed = []
    with _FileLock(_lock_path(spec)):
        for path in sorted(folder.iterdir()):
            if path.name == ".lock" or not path.is_file():
                continue
            _unlink_quietly(path)
            removed.append(path)
    _update_manifest(spec.model_id, None)
    if not removed:
        raise InputError(f"model {card.id} is not cached; nothing to remove ('atlasseg models list' shows what is)")
    return removed


def _check_bytes(spec: _Spec, digest: str, size: int, path: Path, *, error, what: Optional[str] = None) -> str:
    """Check size and sha256; return the manifest source. On mismatch delete ``path`` and raise ``error``."""
    what = what or f"the download of {spec.url}"
    expected = spec.sha256
    source = SOURCE_VERIFIED
    if expected is None:
        entry = _manifest_entry(spec.model_id)
        # Trust on first use: once a sha256 was recorded, every later copy must match it.
        if entry and entry.get("sha256") and entry.get("filename") == spec.filename:
            expected = entry["sha256"]
        source = SOURCE_TOFU
    problem = None
    if spec.size is not None and size != spec.size:
        problem = f"has {size:,} bytes instead of {spec.size:,}"
    elif expected is not None and digest != expected:
        problem = f"has sha256 {digest} instead of {expected}"
    if problem:
        _unlink_quietly(path)
        raise error(f"{what} {problem} (model {spec.model_id}); it was deleted and nothing was cached. "
                    "The file is damaged or not the published one: download it again, and if this "
                    "persists, report it")
    return source


def _record(spec: _Spec, digest: str, size: int, source: str, origin: str) -> None:
    previous = _manifest_entry(spec.model_id)
    if source == SOURCE_TOFU and not (previous and previous.get("sha256") == digest):
        logger.warning("model %s has no published sha256; recorded %s on first use", spec.model_id, digest)
    _update_manifest(spec.model_id, {
        "filename": spec.filename,
        "size": size,
        "sha256": digest,
        "source": source,
        "fetched_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "origin": origin,
    })


def _hash_file(path: Path, hasher) -> int:
    size = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK_BYTES), b""):
            hasher.update(chunk)
            size += len(chunk)
    return size


def _report(progress: Optional[ByteProgress], done: int, total: Optional[int]) -> None:
    if progress is not None:
        progress(done, total)


def _import_command(spec: _Spec) -> str:
    return f"atlasseg models import {spec.model_id} /path/to/{spec.filename}"


def _message(spec: _Spec, reason: str) -> str:
    size = f"{spec.size:,} bytes" if spec.size is not None else "size not published"
    sha = f"sha256 {spec.sha256}" if spec.sha256 else "sha256 not published"
    return (f"could not download model {spec.model_id} from {spec.url}: {reason}. "
            f"Expected file: {spec.filename} ({size}, {sha}). If this computer cannot reach that address, "
            f"download the file another way (a browser, another computer) and install it with: "
            f"{_import_command(spec)}")


def _download_error(spec: _Spec, reason: str, kept_bytes: int) -> DownloadError:
    msg = _message(spec, reason)
    if kept_bytes:
        msg += f". {kept_bytes:,} bytes are kept: running the download again resumes from there"
    return DownloadError(msg)


def _describe(exc: Exception, timeout) -> str:
    """Short user-facing reason for a ``requests`` exception."""
    # here: requests (about 0.1 s) loads only when a download starts, not for 'models list' or a run
    import requests

    text = str(exc)
    if isinstance(exc, requests.exceptions.Timeout) or "timed out" in text.lower():
        if isinstance(timeout, (tuple, list)):
            limits = f"{timeout[0]} s to connect, {timeout[1]} s between reads"
        else:
            limits = f"{timeout} s"
        return f"the server did not answer in time ({limits})"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "the connection broke off during the transfer"
    if isinstance(exc, requests.exceptions.SSLError):
        return f"secure connection failed ({exc.__class__.__name__}); a proxy or firewall may intercept it"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "cannot connect (offline, or blocked by a firewall or proxy?)"
    return f"{exc.__class__.__name__}: {text}"


_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


def _content_range_start(value: Optional[str]) -> Optional[int]:
    match = _CONTENT_RANGE.match(value or "")
    return int(match.group(1)) if match and match.group(1) is not None else None


def _content_range_total(value: Optional[str]) -> Optional[int]:
    match = _CONTENT_RANGE.match(value or "")
    return int(match.group(3)) if match and match.group(3) != "*" else None


def _int_or_none(value: Optional[str]) -> Optional[int]:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning("could not delete %s: %s", path, exc)


def clear(card_or_id: CardOrId) -> None:
    """Remove a model's cached weights, partial download and manifest entry."""
    card = _as_card(card_or_id)
    spec = _spec(card)
    with _FileLock(_lock_path(spec)):
        folder = _model_dir(spec.model_id)
        _update_manifest(spec.model_id, None)
        for path in (_final_path(spec), _partial_path(spec)):
            _unlink_quietly(path)
        for tmp in folder.glob(".import-*.tmp"):
            _unlink_quietly(tmp)
