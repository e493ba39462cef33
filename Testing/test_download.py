"""Weights download and cache, against a local HTTP server with Range support (no internet needed)."""
from __future__ import annotations

import hashlib
import http.server
import json
import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest

from AtlasSegLib import download
from AtlasSegLib.card import card_from_dict
from AtlasSegLib.errors import Cancelled, InputError

MiB = 1 << 20
PAYLOAD = bytes(range(256)) * (3 * MiB // 256) + b"tail"  # 3 MiB + 4 bytes: not a whole number of chunks
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class FileServer:
    """Serves one payload at /weights.pth on 127.0.0.1 (random port), with single-range ``Range`` support.

    Behaviour switches: ``cut_after`` (send that many bytes of the first response, then drop the connection),
    ``status`` (answer every request with that HTTP error), ``delay_s`` (sleep before answering),
    ``ignore_range`` (always send the whole file with 200), ``throttle_s`` (pause between 256 KiB pieces).
    ``log`` records each request's Range header and the body bytes sent.
    """

    def __init__(self, payload: bytes):
        self.payload = payload
        self.cut_after = None
        self.status = None
        self.delay_s = 0.0
        self.ignore_range = False
        self.throttle_s = 0.0
        self.log = []
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                entry = {"range": self.headers.get("Range"), "sent": 0}
                with server._lock:
                    server.log.append(entry)
                    cut = server.cut_after
                    server.cut_after = None  # only the first response is cut
                if server.delay_s:
                    time.sleep(server.delay_s)
                if server.status:
                    body = b"server error"
                    self.send_response(server.status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                data, start, total = server.payload, 0, len(server.payload)
                rng = entry["range"]
                if rng and not server.ignore_range:
                    start = int(rng.split("=", 1)[1].split("-", 1)[0])
                    if start >= total:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{total}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if cut is not None:
                    body = body[:cut]
                    self.close_connection = True
                piece = 256 * 1024
                for i in range(0, len(body), piece):
                    self.wfile.write(body[i:i + piece])
                    entry["sent"] += len(body[i:i + piece])
                    if server.throttle_s:
                        time.sleep(server.throttle_s)
                self.wfile.flush()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/weights.pth"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = FileServer(PAYLOAD)
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    home = tmp_path / "cache"
    monkeypatch.setenv("ATLASSEG_HOME", str(home))
    return home


def make_raw(url: str, *, sha256=PAYLOAD_SHA, size=len(PAYLOAD), model_id="test-model") -> dict:
    return {
        "id": model_id, "title": "Test model", "version": "1",
        "architecture": {"type": "monai", "name": "UNet"},
        "preprocessing": {"orientation": "RAS", "spacing_mm": [1.5, 1.5, 1.5], "hu_window": [-175, 250]},
        "inference": {"roi_size": [96, 96, 96], "activation": "sigmoid"},
        "classes": [{"channel": 0, "name": "liver"}],
        "license": "test",
        "weights": {"url": url, "filename": "weights.pth", "size": size, "sha256": sha256},
    }


def make_card(url, **kwargs):
    return card_from_dict(make_raw(url, **kwargs))


def partial_files(home: Path) -> list:
    return sorted(p.name for p in home.rglob("*") if p.name.endswith((".partial", ".tmp")))


def manifest(home: Path) -> dict:
    return json.loads((home / "models" / "manifest.json").read_text())["models"]


def test_fetch_downloads_verifies_and_caches(server, cache_home):
    card = make_card(server.url)
    calls = []
    path = download.fetch(card, progress=lambda done, total: calls.append((done, total)))
    assert path == cache_home / "models" / "test-model" / "weights.pth"
    assert path.read_bytes() == PAYLOAD
    assert calls[-1] == (len(PAYLOAD), len(PAYLOAD))
    entry = manifest(cache_home)["test-model"]
    assert entry["sha256"] == PAYLOAD_SHA and entry["size"] == len(PAYLOAD) and entry["source"] == "verified"
    assert download.is_cached(card) and download.cached_path(card) == path
    assert partial_files(cache_home) == []
    # Cached: no second request.
    assert download.fetch(card) == path
    assert len(server.log) == 1


def test_interrupted_download_resumes_with_range_and_sends_only_the_rest(server, cache_home):
    card = make_card(server.url)
    server.cut_after = int(1.5 * MiB)
    with pytest.raises(download.DownloadError, match="resumes") as info:
        download.fetch(card, timeout=(5, 5))
    assert "atlasseg models import test-model /path/to/weights.pth" in str(info.value)
    assert not download.is_cached(card)
    partial = cache_home / "models" / "test-model" / "weights.pth.partial"
    kept = partial.stat().st_size
    assert 0 < kept < len(PAYLOAD)

    path = download.fetch(card, timeout=(5, 5))
    assert path.read_bytes() == PAYLOAD
    second = server.log[-1]
    assert second["range"] == f"bytes={kept}-"
    assert second["sent"] == len(PAYLOAD) - kept
    assert not partial.exists()


def test_server_ignoring_range_restarts_from_zero(server, cache_home):
    card = make_card(server.url)
    server.cut_after = MiB + 10
    with pytest.raises(download.DownloadError):
        download.fetch(card, timeout=(5, 5))
    server.ignore_range = True
    assert download.fetch(card).read_bytes() == PAYLOAD
    assert server.log[-1]["sent"] == len(PAYLOAD)


def test_complete_partial_is_finished_without_downloading_again(server, cache_home):
    card = make_card(server.url)
    folder = cache_home / "models" / "test-model"
    folder.mkdir(parents=True)
    (folder / "weights.pth.partial").write_bytes(PAYLOAD)  # killed between the last write and the rename
    assert download.fetch(card).read_bytes() == PAYLOAD
    assert server.log == []


def test_wrong_checksum_is_rejected_and_nothing_is_cached(server, cache_home):
    card = make_card(server.url, sha256="0" * 64)
    with pytest.raises(download.ChecksumError, match="sha256"):
        download.fetch(card)
    assert not download.is_cached(card)
    assert not (cache_home / "models" / "test-model" / "weights.pth").exists()
    assert partial_files(cache_home) == []


def test_wrong_size_offered_by_server_is_rejected(server, cache_home):
    card = make_card(server.url, size=len(PAYLOAD) + 1)
    with pytest.raises(download.ChecksumError, match="bytes"):
        download.fetch(card)
    assert partial_files(cache_home) == [] and not download.is_cached(card)


def test_http_500_gives_clear_error_with_import_command(server):
    card = make_card(server.url)
    server.status = 500
    with pytest.raises(download.DownloadError) as info:
        download.fetch(card)
    msg = str(info.value)
    assert "HTTP 500" in msg and server.url in msg
    assert f"{len(PAYLOAD):,} bytes" in msg and PAYLOAD_SHA in msg
    assert "atlasseg models import test-model /path/to/weights.pth" in msg


def test_read_timeout_gives_clear_error(server):
    card = make_card(server.url)
    server.delay_s = 1.5
    start = time.monotonic()
    with pytest.raises(download.DownloadError, match="did not answer in time") as info:
        download.fetch(card, timeout=(2, 0.3))
    assert time.monotonic() - start < 1.4
    assert "atlasseg models import" in str(info.value)


def test_unreachable_server_gives_clear_error():
    # A port that was just free: nothing listens there.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    card = make_card(f"http://127.0.0.1:{port}/weights.pth")
    with pytest.raises(download.DownloadError, match="cannot connect") as info:
        download.fetch(card, timeout=(2, 2))
    assert "atlasseg models import test-model" in str(info.value)


def test_cancel_keeps_partial_for_resume(server, cache_home):
    card = make_card(server.url)
    seen = []
    with pytest.raises(Cancelled):
        download.fetch(card, progress=lambda d, t: seen.append(d), cancel=lambda: len(seen) >= 2)
    assert (cache_home / "models" / "test-model" / "weights.pth.partial").stat().st_size > 0
    assert not download.is_cached(card)
    assert download.fetch(card).read_bytes() == PAYLOAD
    assert server.log[-1]["range"] is not None


def _fetch_in_child(raw: dict, home: str, queue) -> None:
    os.environ["ATLASSEG_HOME"] = home
    try:
        path = download.fetch(card_from_dict(raw), timeout=(5, 10))
        queue.put(("ok", str(path), hashlib.sha256(Path(path).read_bytes()).hexdigest()))
    except Exception as exc:  # report any failure to the parent instead of dying silently
        queue.put(("error", repr(exc), ""))


def test_concurrent_fetches_from_two_processes_share_one_valid_file(server, cache_home):
    server.throttle_s = 0.05  # ~0.6 s per transfer, so the two processes overlap
    raw = make_raw(server.url)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_fetch_in_child, args=(raw, str(cache_home), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert [r[0] for r in results] == ["ok", "ok"], results
    assert results[0][1] == results[1][1]
    assert results[0][2] == results[1][2] == PAYLOAD_SHA
    full_sends = [e for e in server.log if e["sent"] == len(PAYLOAD)]
    assert 1 <= len(full_sends) <= 2
    assert manifest(cache_home)["test-model"]["sha256"] == PAYLOAD_SHA
    assert partial_files(cache_home) == []


def test_fetch_waits_for_another_download_of_the_same_model_and_honours_cancel(server, cache_home):
    card = make_card(server.url)
    # flock locks belong to the open file, so a second open in this process contends like another process.
    with download._FileLock(cache_home / "models" / "test-model" / ".lock"):
        with pytest.raises(Cancelled, match="waiting"):
            download.fetch(card, cancel=lambda: True)
    assert server.log == []


def test_import_file_installs_a_matching_file(tmp_path, cache_home):
    card = make_card("http://127.0.0.1:9/unused.pth")
    src = tmp_path / "downloads" / "weights.pth"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    path = download.import_file(card, src)
    assert path == cache_home / "models" / "test-model" / "weights.pth"
    assert path.read_bytes() == PAYLOAD and src.exists()
    assert download.cached_path(card) == path
    entry = manifest(cache_home)["test-model"]
    assert entry["source"] == "verified" and entry["origin"].startswith("imported from")


def test_import_file_rejects_wrong_checksum_and_size(tmp_path, cache_home):
    card = make_card("http://127.0.0.1:9/unused.pth")
    bad = tmp_path / "weights.pth"
    bad.write_bytes(PAYLOAD[:-1] + b"X")
    with pytest.raises(InputError, match="sha256"):
        download.import_file(card, bad)
    bad.write_bytes(PAYLOAD[:-1])
    with pytest.raises(InputError, match="bytes"):
        download.import_file(card, bad)
    with pytest.raises(InputError, match="not a file"):
        download.import_file(card, tmp_path / "missing.pth")
    assert not download.is_cached(card)
    assert partial_files(cache_home) == []


def test_trust_on_first_use_records_sha256_and_enforces_it_later(server, tmp_path, cache_home):
    card = make_card(server.url, sha256=None, size=None)
    path = download.fetch(card)
    entry = manifest(cache_home)["test-model"]
    assert entry["source"] == "trust-on-first-use"
    assert entry["sha256"] == PAYLOAD_SHA and entry["size"] == len(PAYLOAD)
    assert download.cached_path(card) == path
    # A different file for the same model no longer matches what was recorded.
    other = tmp_path / "other.pth"
    other.write_bytes(b"not the same weights")
    with pytest.raises(InputError, match=PAYLOAD_SHA):
        download.import_file(card, other)
    assert download.cached_path(card).read_bytes() == PAYLOAD


def test_cached_path_ignores_partial_and_unrecorded_files(server, cache_home):
    card = make_card(server.url)
    folder = cache_home / "models" / "test-model"
    folder.mkdir(parents=True)
    (folder / "weights.pth.partial").write_bytes(PAYLOAD[:100])
    assert download.cached_path(card) is None
    (folder / "weights.pth").write_bytes(b"garbage")  # e.g. copied by hand, never verified
    assert download.cached_path(card) is None
    assert download.fetch(card).read_bytes() == PAYLOAD


def test_cache_dir_per_platform(monkeypatch, tmp_path):
    monkeypatch.delenv("ATLASSEG_HOME")
    monkeypatch.setattr(download.Path, "home", classmethod(lambda cls: tmp_path))
    monkeypatch.setattr(download.sys, "platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert download.cache_dir() == tmp_path / "xdg" / "atlasseg"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert download.cache_dir() == tmp_path / ".cache" / "atlasseg"
    monkeypatch.setattr(download.sys, "platform", "darwin")
    assert download.cache_dir() == tmp_path / "Library" / "Caches" / "AtlasSeg"
    monkeypatch.setattr(download.sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "Local"))
    assert download.cache_dir() == tmp_path / "Local" / "AtlasSeg" / "Cache"
    monkeypatch.setenv("ATLASSEG_HOME", str(tmp_path / "mine"))
    assert download.cache_dir() == tmp_path / "mine"


def test_list_models_describes_every_builtin_card(cache_home):
    rows = {r.id: r for r in download.list_models()}
    unet = rows["suprem-unet"]
    assert unet.num_classes == 32 and unet.size == 233_188_229
    assert unet.sha256_status == "published" and not unet.cached and "Apache" in unet.license
    assert rows["difftumor-liver-unet"].sha256_status == "unknown"
    assert rows["difftumor-liver-unet"].num_classes == 2


def test_bundled_weights_need_no_download(tmp_path, cache_home):
    raw = make_raw("unused")
    raw["weights"] = {"file": "bundled.pt"}
    card = card_from_dict(raw, path=tmp_path / "card.json")
    with pytest.raises(InputError, match="reinstall"):
        download.fetch(card)
    (tmp_path / "bundled.pt").write_bytes(b"weights")
    assert download.fetch(card) == download.cached_path(card) == (tmp_path / "bundled.pt").resolve()
    with pytest.raises(InputError, match="nothing to import"):
        download.import_file(card, tmp_path / "bundled.pt")


# ------------------------------------------------------------------ import load-check, models remove
def test_import_of_junk_for_a_model_without_published_checksum_is_refused(tmp_path, cache_home, capsys):
    # suprem-segresnet publishes no sha256: without a load check, random bytes became the default model and the
    # next 'segment' failed with torch's text.
    from AtlasSegLib.cli import main

    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(4096))
    assert main(["models", "import", "suprem-segresnet", str(junk)]) == 2
    err = capsys.readouterr().err
    assert "not a loadable PyTorch checkpoint" in err and "nothing was installed" in err
    assert not download.is_cached("suprem-segresnet")
    assert list((cache_home / "models").rglob("*.pth")) == [] if (cache_home / "models").exists() else True
    # A checkpoint of another shape (a smaller SegResNet) is refused naming the first mismatching tensor.
    import torch
    from monai.networks.nets import SegResNet

    other = tmp_path / "other.pth"
    torch.save({"net": {f"module.{k}": v for k, v in SegResNet(init_filters=8, out_channels=32).state_dict().items()}},
               other)
    assert main(["models", "import", "suprem-segresnet", str(other)]) == 2
    assert "do not match model card suprem-segresnet" in capsys.readouterr().err
    assert not download.is_cached("suprem-segresnet")


def test_import_of_a_checkpoint_with_the_cards_keys_and_shapes_installs_it_and_remove_drops_it(tmp_path, cache_home,
                                                                                                capsys):
    import torch

    from AtlasSegLib.card import builtin_card
    from AtlasSegLib.cli import main
    from AtlasSegLib.networks import construct

    card = builtin_card("suprem-segresnet")
    good = tmp_path / "supervised_suprem_segresnet_2100.pth"
    torch.save({"net": {f"module.{k}": v for k, v in construct(card).state_dict().items()}}, good)
    assert main(["models", "import", "suprem-segresnet", str(good)]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert download.cached_path("suprem-segresnet") == path and path.is_file()

    assert main(["models", "remove", "suprem-segresnet"]) == 0
    assert str(path) in capsys.readouterr().out
    assert not path.exists() and not download.is_cached("suprem-segresnet")
    assert "suprem-segresnet" not in manifest(cache_home)
    # Nothing cached any more, and a model whose weights ship with AtlasSeg: nothing to remove, exit 2.
    assert main(["models", "remove", "suprem-segresnet"]) == 2
    assert "not cached" in capsys.readouterr().err
    assert main(["models", "remove", "atlasseg-demo"]) == 2
    assert "ships" in capsys.readouterr().err
