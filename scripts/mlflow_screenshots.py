"""The README's MLflow screenshots: a tiny sweep of three methods into a fresh sqlite store, `mlflow ui` on
it, and headless Chromium's pictures of the two links cdb.sweep prints: the runs table and the charts of the
sweep's saved view (tracking.save_comparison_view), which compare the methods.

    .venv/bin/python scripts/mlflow_screenshots.py [OUT_DIR]     (default docs/images)

Needs Debian's Chromium (`sudo apt-get install -y chromium`). Writes OUT_DIR/mlflow_runs_table.png and
OUT_DIR/mlflow_compare.png (256-colour PNGs). The store, the runs and the logs go to a temporary folder,
removed at the end; the mlflow server and Chromium it starts are stopped by their process group ids.
Chromium is driven over its DevTools protocol, as a first-time user's browser with one click done: the
MLflow assistant panel (which opens itself on a first visit) closed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SWEEP = ["--scales", "tiny", "--methods", "contrastive,sft,dpo", "--max-steps", "12", "--set", "train.eval_every=3",
         "--set", "eval.suite=quick", "--set", "eval.tasks=[toxicity,faithfulness]", "--set", "eval.limit=4"]
"""The sweep of the pictures (README, "MLflow", shows the same command): evaluated on 4 items per task, so
that the headline metrics are there to see (numbers of a random-weight tiny model: the UI, not results)."""
WINDOW = (1600, 1000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], log: Path, **kwargs) -> subprocess.Popen:
    """A process in a session of its own, so that stop() ends it with everything it started."""
    with log.open("w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)


def stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def wait_for(what: str, ready, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            sys.exit(f"mlflow_screenshots: {what} not ready after {timeout:.0f} s")
        time.sleep(0.5)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except OSError:
        return False


def run_sweep(work: Path) -> tuple[str, str, str]:
    """(the runs-table and charts links cdb.sweep prints, the store's URI)."""
    uri = f"sqlite:///{work / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "cdb.sweep", *SWEEP, "--tracking-uri", uri, "--output-dir",
                           str(work / "sweep")], cwd=work, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"mlflow_screenshots: cdb.sweep failed ({proc.returncode}):\n{proc.stdout[-4000:]}{proc.stderr[-3000:]}")
    def printed(after: str) -> str:
        links = [w for line in proc.stdout.splitlines() if after in line for w in line.split() if w.startswith("http")]
        if not links:
            sys.exit(f"mlflow_screenshots: cdb.sweep printed no {after!r} link:\n{proc.stdout[-3000:]}")
        return links[-1]

    return printed("then open "), printed("MLflow charts: "), uri


class Page:
    """One Chromium tab over the DevTools protocol."""

    def __init__(self, ws):
        self.ws, self.next_id = ws, 0

    async def call(self, method: str, **params):
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json()
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    async def js(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    async def open(self, url: str, shows: str) -> None:
        """Go to `url` and wait until the page's text shows `shows`, then for the page to settle."""
        await self.call("Page.navigate", url=url)
        await self.wait_for_text(shows)

    async def wait_for_text(self, shows: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not await self.js(f"document.body !== null && document.body.innerText.includes({json.dumps(shows)})"):
            if time.monotonic() > deadline:
                sys.exit(f"mlflow_screenshots: the page never showed {shows!r}")
            await asyncio.sleep(0.5)
        await asyncio.sleep(3)  # charts and lazy columns

    async def close_assistant(self) -> None:
        """Close the MLflow assistant panel, which opens itself on a first visit and hides the page's right side."""
        if await self.js("""(() => {
                const close = document.querySelector('button[aria-label="Close"]');
                if (close && document.body.innerText.includes('MLflow Assistant')) close.click();
                return Boolean(close);
            })()"""):
            await asyncio.sleep(2)

    async def screenshot(self, path: Path) -> None:
        data = (await self.call("Page.captureScreenshot", format="png"))["data"]
        path.write_bytes(base64.b64decode(data))
        from PIL import Image

        Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)
        print(f"[screenshots] {path} ({path.stat().st_size // 1024} KB)")


async def shoot(page_ws: str, runs_link: str, charts_link: str, out: Path) -> None:
    """The pictures, through the Chromium tab whose DevTools socket is `page_ws`."""
    import aiohttp

    async with aiohttp.ClientSession() as session, session.ws_connect(page_ws, max_msg_size=0) as ws:
        page = Page(ws)
        await page.call("Emulation.setDeviceMetricsOverride", width=WINDOW[0], height=WINDOW[1],
                        deviceScaleFactor=1, mobile=False)
        await page.open(runs_link, "tiny-dpo")
        await page.close_assistant()
        await page.screenshot(out / "mlflow_runs_table.png")
        await page.open(charts_link, "Methods compared")
        await page.close_assistant()
        await page.screenshot(out / "mlflow_compare.png")


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else REPO / "docs" / "images").resolve()
    out.mkdir(parents=True, exist_ok=True)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        sys.exit("mlflow_screenshots: chromium not found; install Debian's: sudo apt-get install -y chromium")
    work = Path(tempfile.mkdtemp(prefix="cdb-shots-"))
    started: list[subprocess.Popen] = []
    try:
        print(f"[screenshots] cdb.sweep {' '.join(SWEEP)}")
        printed_runs, printed_charts, uri = run_sweep(work)

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        mlflow = Path(sys.executable).parent / "mlflow"
        started.append(start([str(mlflow), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)],
                             work / "mlflow.log", env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}))
        wait_for("mlflow ui", lambda: answers(f"{base}/health"))
        runs_link, charts_link = (base + link.removeprefix("http://127.0.0.1:5000") for link in (printed_runs, printed_charts))

        profile = work / "chromium"
        started.append(start([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                              "--disable-background-networking", "--disable-component-update", "--disable-sync",
                              "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                              "--remote-debugging-port=0", "about:blank"], work / "chromium.log"))
        port_file = profile / "DevToolsActivePort"
        wait_for("chromium", lambda: port_file.is_file() and port_file.read_text().strip() != "", timeout=60)
        devtools = f"http://127.0.0.1:{port_file.read_text().split()[0]}/json/list"
        with urllib.request.urlopen(devtools) as response:
            [tab] = [t for t in json.load(response) if t["type"] == "page"]
        asyncio.run(shoot(tab["webSocketDebuggerUrl"], runs_link, charts_link, out))
        print(f"[screenshots] runs table: {runs_link}\n[screenshots] charts: {charts_link}")
        return 0
    finally:
        for process in reversed(started):
            stop(process)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
