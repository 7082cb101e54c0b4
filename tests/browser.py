"""Open a local HTML file in headless Chromium and report what a reader's browser would meet.

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe: JSON messages
separated by NUL bytes on file descriptors 3 and 4), so there is no port, no server and no
dependency beyond Debian's `chromium` package. Network is off for the page (file:// only).
"""
from __future__ import annotations

import base64
import json
import os
import select
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--remote-debugging-pipe", "--window-size=1280,2000"]


def find_chromium() -> str | None:
    for name in (os.environ.get("NOISESINK_CHROMIUM"), "chromium", "chromium-browser"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@dataclass
class Page:
    ready_state: str
    title: str
    images: list          # [alt, complete, naturalWidth, naturalHeight] per <img>
    errors: list          # console errors, uncaught exceptions, failed loads (as text)
    screenshot: bytes
    evaluated: dict = field(default_factory=dict)   # name -> value of the extra expressions


class _Pipe:
    def __init__(self, binary: str, profile: str):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # chromium reads commands on its fd 3 and answers on its fd 4: posix_spawn puts our pipe
        # ends there (from_chrome_w > to_chrome_r >= 3, so the first dup2 cannot clobber the
        # second); every other descriptor of ours is close-on-exec
        self.pid = os.posix_spawn(binary, [binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"], os.environ,
                                  file_actions=[(os.POSIX_SPAWN_DUP2, to_chrome_r, 3),
                                                (os.POSIX_SPAWN_DUP2, from_chrome_w, 4),
                                                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                                                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)])
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer, self._id, self.events = b"", 0, []

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_chrome], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise EOFError("chromium closed the pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60):
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, event: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            message = self._receive(deadline)
            self.events.append(message)
            if message.get("method") == event:
                return message

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (OSError, RuntimeError, TimeoutError, EOFError):
            pass
        deadline = time.monotonic() + 10
        while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                break
            time.sleep(0.05)
        os.close(self._to_chrome)
        os.close(self._from_chrome)


def _errors(events: list[dict]) -> list[str]:
    out = []
    for e in events:
        p = e.get("params", {})
        if e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append("console." + p["type"] + ": " + " ".join(str(a.get("value", a.get("description")))
                                                                for a in p.get("args", [])))
        elif e.get("method") == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.append("uncaught: " + str(d.get("exception", {}).get("description") or d.get("text")))
        elif e.get("method") == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}".strip())
    return out


def open_page(path: Path, expressions: dict[str, str] | None = None, binary: str | None = None) -> Page:
    """Load `path` (file://) in a fresh headless Chromium profile; after the load event, evaluate
    `expressions` (name -> JavaScript returning a JSON-able value), take a full-page screenshot,
    and collect every console error, uncaught exception and failed load."""
    binary = binary or find_chromium()
    if binary is None:
        raise FileNotFoundError("chromium not found")
    with tempfile.TemporaryDirectory(prefix="noisesink-chromium-") as profile:
        chrome = _Pipe(binary, profile)
        try:
            page = next(t for t in chrome.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
            s = chrome.call("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                chrome.call(f"{domain}.enable", session=s)
            chrome.call("Page.navigate", {"url": Path(path).resolve().as_uri()}, session=s)
            chrome.wait_for("Page.loadEventFired")

            def evaluate(js: str):
                r = chrome.call("Runtime.evaluate", {"expression": js, "returnByValue": True,
                                                     "awaitPromise": True}, session=s)
                if "exceptionDetails" in r:
                    d = r["exceptionDetails"]
                    raise RuntimeError(f"{js[:60]}...: {d.get('exception', {}).get('description') or d.get('text')}")
                return r["result"].get("value")

            images = evaluate("Promise.all([...document.images].map(i => i.decode().then(() => 1, () => 0)))"
                              ".then(() => [...document.images].map(i => [i.alt, i.complete, i.naturalWidth,"
                              " i.naturalHeight]))")
            values = {name: evaluate(js) for name, js in (expressions or {}).items()}
            shot = chrome.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                               session=s)
            return Page(ready_state=evaluate("document.readyState"), title=evaluate("document.title"),
                        images=images, errors=_errors(chrome.events), screenshot=base64.b64decode(shot["data"]),
                        evaluated=values)
        finally:
            chrome.close()
