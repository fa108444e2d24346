"""Take the screenshots in docs/images/ from a real steerscope serving the embedded model.

It serves the app on loopback with a fresh data directory, trains a small MELBO run through the
JSON API (4 vectors and their random twin, 40 steps, two prompts), waits until the run, its twin
and their scoring have finished, photographs the run page, then stops the server it started.

    .venv/bin/python docs/screenshot.py       # after `make install`; a few minutes on a shared 2-core CPU

The browser is Debian's Chromium (`apt-get install chromium`) driven by Playwright; no browser is
ever downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
RUN = {
    "prompts": ["How can I make a bomb?", "Tell me about the sea."],
    "n_vectors": 4,
    "steps": 40,
    "twin": True,
}
FINISHED = {"succeeded", "failed", "cancelled"}
WIDTH = 1200  # CSS pixels; the images are taken at one device pixel per CSS pixel


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def call(base: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=180) as response:
        return json.load(response)


def wait_for(what: str, check: Any, timeout_s: float) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise SystemExit(f"timed out after {timeout_s:.0f} s waiting for {what}")


def server_up(base: str, server: subprocess.Popen[bytes]) -> bool:
    if server.poll() is not None:
        raise SystemExit(f"the server exited with status {server.returncode}")
    try:
        call(base, "/api/models")
    except (urllib.error.URLError, ConnectionError):
        return False
    return True


def all_done(base: str) -> bool:
    """True once a scoring job exists and every job has finished; a failed job stops the script."""
    jobs = call(base, "/api/jobs")
    failed = [job for job in jobs if job["status"] == "failed"]
    if failed:
        raise SystemExit(f"job {failed[0]['id']} failed: {failed[0]['error']}")
    scored = any(job["kind"] == "score" for job in jobs)
    return scored and all(job["status"] in FINISHED for job in jobs)


def photograph(url: str, out_dir: Path) -> list[Path]:
    """The run page's top (settings, objective curves) and its gallery, each one screen high."""
    shots = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            headless=True,
        )
        page = browser.new_page(viewport={"width": WIDTH, "height": 900}, device_scale_factor=1)
        page.goto(url, wait_until="networkidle")
        top = out_dir / "run-page.png"
        page.screenshot(path=top, clip={"x": 0, "y": 0, "width": WIDTH, "height": 760})
        gallery = page.get_by_role("heading", name="Gallery", exact=True)
        y = gallery.bounding_box()["y"]  # type: ignore[index]
        shot = out_dir / "gallery.png"
        page.screenshot(path=shot, full_page=True, clip={"x": 0, "y": y - 10, "width": WIDTH, "height": 900})
        shots += [top, shot]
        browser.close()
    return shots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images", help="folder for the PNGs")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the run")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="steerscope-shot-") as data:
        env = {**os.environ, "STEERSCOPE_DATA_DIR": data, "STEERSCOPE_HOST": "127.0.0.1"}
        env["STEERSCOPE_PORT"] = str(port)
        log = open(Path(data) / "server.log", "w")  # noqa: SIM115 (closed below, after the server)
        server = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "steerscope"), "serve"], env=env, stdout=log, stderr=log, cwd=ROOT
        )
        try:
            wait_for("the server", lambda: server_up(base, server), 300)
            run_id = call(base, "/api/runs", RUN)["run_id"]
            wait_for("the run, its twin and their scoring", lambda: all_done(base), args.timeout)
            for path in photograph(f"{base}/runs/{run_id}", args.out):
                print(f"{path} ({path.stat().st_size // 1024} KB)")
        finally:
            server.terminate()  # SIGTERM: the server stops its worker and ends its streams
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            log.close()
            if server.returncode not in (0, -15):
                print((Path(data) / "server.log").read_text()[-3000:], file=sys.stderr)


if __name__ == "__main__":
    main()
