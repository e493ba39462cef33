"""Headless Chromium driven through the DevTools protocol over a pipe (``--remote-debugging-pipe``): real clicks,
typing, downloads and screenshots of a local page, with the standard library only (no websocket client, no
Selenium/Playwright). Messages are JSON, each ended by a NUL byte, on the browser's file descriptors 3 (in) and
4 (out).
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """One headless Chromium with one page (``self.session``); use as a context manager."""

    def __init__(self, profile: Path, *, width: int = 1280, height: int = 900, timeout_s: float = 60.0):
        self.timeout_s = timeout_s
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # The browser reads commands on fd 3 and writes answers on fd 4: map our pipe ends there in the child
        # (through fresh copies, so that a pipe end already numbered 3 or 4 is not overwritten first). The child
        # keeps its inheritable descriptors (close_fds=False would close 3 and 4 after this runs); the pipes
        # themselves are not inheritable, only these copies are.
        def child_fds():
            commands, answers = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(commands, 3)
            os.dup2(answers, 4)

        command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                   "--disable-dev-shm-usage", "--remote-debugging-pipe", f"--user-data-dir={profile}",
                   f"--window-size={width},{height}", "about:blank"]
        # The sandbox needs user namespaces, which root in a container does not get (hence --no-sandbox).
        self.proc = subprocess.Popen(command, preexec_fn=child_fds, close_fds=False,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events = []
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        self.call("Page.enable", session=True)
        self.call("Runtime.enable", session=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.call("Browser.close")
        except Exception:  # noqa: BLE001 - the browser may already be gone; it is killed below
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)

    # ------------------------------------------------------------------------------------------ protocol
    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError(f"Chromium exited (code {self.proc.poll()})")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: bool = False, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout_s
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, predicate=lambda params: True) -> dict:
        deadline = time.monotonic() + self.timeout_s
        while True:
            for n, event in enumerate(self.events):
                if event.get("method") == method and predicate(event.get("params", {})):
                    del self.events[: n + 1]
                    return event["params"]
            self.events.append(self._read_message(deadline))

    # ----------------------------------------------------------------------------------------- actions
    def open(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", session=True, url=url)
        self.wait_event("Page.loadEventFired")

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click (pressed and released) at the centre of the element, scrolled into view."""
        box = self.js(f"(function(){{const e=document.querySelector({json.dumps(selector)});"
                      "e.scrollIntoView({block:'center'});const r=e.getBoundingClientRect();"
                      "return [r.left+r.width/2, r.top+r.height/2];})()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", session=True, type=kind, x=box[0], y=box[1], button="left",
                      clickCount=1)

    def type(self, text: str) -> None:
        """Text into the focused element, as a keyboard would send it (input events included)."""
        self.call("Input.insertText", session=True, text=text)

    def allow_downloads(self, folder: Path) -> None:
        self.call("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(folder), eventsEnabled=True)

    def wait_download(self) -> dict:
        return self.wait_event("Browser.downloadProgress", lambda p: p.get("state") in ("completed", "canceled"))

    def screenshot(self, png: Path, *, full_page: bool = False) -> Path:
        params = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            size = self.call("Page.getLayoutMetrics", session=True)["cssContentSize"]
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        data = self.call("Page.captureScreenshot", session=True, **params)["data"]
        png.write_bytes(base64.b64decode(data))
        return png
