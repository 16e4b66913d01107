"""Open a page in headless Chromium over the DevTools protocol (``--remote-debugging-pipe``) and say what a
reader would see: console errors, uncaught exceptions and failed loads, every image's decoded size, and a
full-page screenshot. A test tool (``tests/report/test_html.py``), not part of the package.

    python tests/tools/chromium.py page.html shot.png
"""
from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

INSTALL = "install chromium: apt-get install chromium (or make install)"
IMAGES = ("JSON.stringify([...document.images].map(i => ({alt: i.alt, complete: i.complete, "
          "width: i.naturalWidth, height: i.naturalHeight})))")


def find() -> str | None:
    """The Chromium executable, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageCheck:
    errors: list[str] = field(default_factory=list)      # console errors, exceptions, failed loads
    images: list[dict] = field(default_factory=list)     # alt, complete, width, height (natural, decoded)
    screenshot: Path | None = None
    title: str = ""


class _Pipe:
    """DevTools messages over the pipe: JSON, each ended by a NUL byte; chromium reads fd 3 and writes fd 4."""

    def __init__(self, proc: subprocess.Popen, write_fd: int, read_fd: int, deadline: float) -> None:
        self.proc, self.w, self.r, self.deadline = proc, write_fd, read_fd, deadline
        self.buf, self.next_id, self.events = b"", 0, []

    def _message(self) -> dict:
        while b"\0" not in self.buf:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self.r], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self.r, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium closed the pipe (exit {self.proc.poll()})")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        while True:
            m = self._message()
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_for(self, method: str) -> dict:
        for i, m in enumerate(self.events):
            if m.get("method") == method:
                return self.events.pop(i)
        while True:
            m = self._message()
            if m.get("method") == method:
                return m
            self.events.append(m)


def _errors(events: list[dict]) -> list[str]:
    out = []
    for m in events:
        p = m.get("params", {})
        if m.get("method") == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.append("exception: " + str(d.get("exception", {}).get("description") or d.get("text")))
        elif m.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append("console.error: " + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
        elif m.get("method") == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}".strip())
    return out


def _pipe_fds(read: int, write: int):
    """In the child: the pipe ends on the descriptors chromium reads (3) and writes (4), kept across exec (the
    parent's other descriptors are not inheritable: Python opens them close-on-exec)."""
    def place() -> None:
        os.dup2(read, 3)
        os.dup2(write, 4)
        os.set_inheritable(3, True)
        os.set_inheritable(4, True)

    return place


def check_page(page: Path, screenshot: Path, timeout: float = 30.0, width: int = 1280) -> PageCheck:
    """Load ``page`` (a file) and report what it showed; raises FileNotFoundError (with how to install it)
    when there is no Chromium."""
    exe = find()
    if exe is None:
        raise FileNotFoundError(INSTALL)
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()
    with tempfile.TemporaryDirectory() as profile:
        args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
                "--disable-extensions", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                f"--window-size={width},900", "about:blank"]
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                close_fds=False, preexec_fn=_pipe_fds(to_chrome_r, from_chrome_w))
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        pipe = _Pipe(proc, to_chrome_w, from_chrome_r, time.monotonic() + timeout)
        try:
            return _visit(pipe, page, screenshot, width)
        finally:
            try:
                pipe.call("Browser.close")
            except (RuntimeError, TimeoutError, OSError):
                pass
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            os.close(to_chrome_w)
            os.close(from_chrome_r)


def _visit(pipe: _Pipe, page: Path, screenshot: Path, width: int) -> PageCheck:
    targets = pipe.call("Target.getTargets")["targetInfos"]
    target = next(t["targetId"] for t in targets if t["type"] == "page")
    session = pipe.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    for domain in ("Page", "Runtime", "Log"):
        pipe.call(f"{domain}.enable", session)
    pipe.call("Page.navigate", session, url=page.resolve().as_uri())
    pipe.wait_for("Page.loadEventFired")
    check = PageCheck()
    check.images = json.loads(pipe.call("Runtime.evaluate", session, expression=IMAGES,
                                        returnByValue=True)["result"]["value"])
    check.title = pipe.call("Runtime.evaluate", session, expression="document.title",
                            returnByValue=True)["result"]["value"]
    size = pipe.call("Page.getLayoutMetrics", session)["cssContentSize"]
    shot = pipe.call("Page.captureScreenshot", session, format="png", captureBeyondViewport=True,
                     clip={"x": 0, "y": 0, "width": max(width, size["width"]), "height": size["height"], "scale": 1})
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    check.screenshot = screenshot
    check.errors = _errors(pipe.events)
    return check


if __name__ == "__main__":
    result = check_page(Path(sys.argv[1]), Path(sys.argv[2]))
    print(json.dumps({"errors": result.errors, "images": result.images, "title": result.title}, indent=1))
