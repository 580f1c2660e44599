"""Take the dashboard screenshot of the docs: a real ``fogline up`` under load, seen by headless Chromium.

    python tools/dashboard_screenshot.py                       # writes docs/dashboard.png
    python tools/dashboard_screenshot.py --seconds 30 --out /tmp/dashboard.png

It starts ``fogline up`` on free ports in a temporary directory (the secure default: HTTPS with the
stack's own CA, which the browser is told to trust for this run), drives traffic for ``--seconds``
through the SDK (a few callers per region: the plain models ``mlp`` and ``cnn`` and the ``digits``
cascade on the edges, ``cnn`` on the cloud), then opens the cloud master's ``/ui/`` at 1280x900 and saves
the whole page as a PNG. The stack is stopped at the end, whatever happens. Needs Debian's ``chromium``
and ``chromedriver`` (``apt-get install chromium chromium-driver``); downloads nothing.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from fogline.local import digits
from fogline.sdk.client import TLS, SyncClient

ROOT = Path(__file__).resolve().parent.parent

FREE_PORTS = ("--edge-port", "0", "--edge-http-port", "0", "--cloud-port", "0", "--cloud-http-port", "0")
START_TIMEOUT_S = 300.0  # the first start trains the digits models
STOP_TIMEOUT_S = 30.0
WINDOW_PX = (1280, 900)
CALL_TIMEOUT_S = 5.0
CHROMIUM_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", f"--window-size={WINDOW_PX[0]},{WINDOW_PX[1]}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png", help="where to save the PNG")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to drive traffic first")
    parser.add_argument("--callers", type=int, default=3, help="callers per region")
    return parser.parse_args(argv)


@contextmanager
def running_stack(workdir: Path) -> Iterator[dict[str, Any]]:
    """``fogline up`` in ``workdir`` on free ports, until the block ends; its state file."""
    with open(workdir / "up.log", "ab") as log:
        command = [sys.executable, "-m", "fogline", "up", "--workdir", str(workdir / "stack"), *FREE_PORTS]
        quiet = {**os.environ, "FOGLINE_LOG_LEVEL": os.environ.get("FOGLINE_LOG_LEVEL", "WARNING")}
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=quiet)
        try:
            yield wait_up(process, workdir / "stack" / "stack.json", workdir / "up.log")
        finally:
            stop(process)


def wait_up(process: subprocess.Popen[bytes], state_file: Path, log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not state_file.is_file():
        if process.poll() is not None:
            raise SystemExit(f"fogline up exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        if time.monotonic() > deadline:
            raise SystemExit(f"fogline up did not start within {START_TIMEOUT_S:.0f} s")
        time.sleep(0.2)
    return dict(json.loads(state_file.read_text()))


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def client_tls(state: dict[str, Any]) -> TLS | None:
    tls = state.get("tls")
    return TLS(ca=tls["ca"], cert=tls["client_cert"], key=tls["client_key"]) if tls else None


Call = tuple[str, str, Callable[[], np.ndarray]]
"""(gRPC endpoint, model, a function giving one input)."""


def calls(state: dict[str, Any]) -> list[Call]:
    """What the callers send: per region the plain models and the cascade; ``cnn`` to the cloud too."""
    rng = np.random.default_rng(7)
    pixels = digits.load_split(Path(state["models"])).x_test.astype(np.float32)
    mlp = lambda: rng.standard_normal((1, 64)).astype(np.float32)  # noqa: E731
    cnn = lambda: rng.standard_normal((1, 3, 64, 64)).astype(np.float32)  # noqa: E731
    digit = lambda: pixels[rng.integers(len(pixels))][None, :]  # noqa: E731
    edges = [region["edge"]["grpc"] for region in state["regions"].values()]
    return [*((edge, model, make) for edge in edges for model, make in (("mlp", mlp), ("digits", digit),
                                                                          ("cnn", cnn))),
            (state["cloud"]["grpc"], "cnn", cnn)]


class Traffic:
    """Callers in threads, each sending one request after another (a mix of ``calls``) until stopped."""

    def __init__(self, state: dict[str, Any], callers: int) -> None:
        self.state, self.stopping = state, threading.Event()
        self.counts = {"ok": 0, "failed": 0}
        self.lock = threading.Lock()
        mix = calls(state)
        self.threads = [threading.Thread(target=self.run, args=(mix, seed), daemon=True)
                        for seed in range(callers * len(state["regions"]))]

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(CALL_TIMEOUT_S * 2)

    def run(self, mix: list[Call], seed: int) -> None:
        chooser = random.Random(seed)
        clients: dict[str, SyncClient] = {}
        try:
            while not self.stopping.is_set():
                endpoint, model, make = chooser.choice(mix)
                if endpoint not in clients:
                    clients[endpoint] = SyncClient(endpoint, timeout_s=CALL_TIMEOUT_S, tls=client_tls(self.state))
                self.send(clients[endpoint], model, make)
        finally:
            for client in clients.values():
                client.close()

    def send(self, client: SyncClient, model: str, make: Callable[[], np.ndarray]) -> None:
        try:
            client.infer(model, {"input": make()})
            outcome = "ok"
        except Exception:  # NOTE: a failed request is part of the picture; keep calling
            outcome = "failed"
        with self.lock:
            self.counts[outcome] += 1


def browser(profile: Path) -> Any:
    """Headless Chromium at 1280x900 through the system's chromedriver (no Selenium Manager)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:
        raise SystemExit("chromium/chromedriver not found: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (*CHROMIUM_ARGS, f"--user-data-dir={profile}"):
        options.add_argument(arg)
    options.accept_insecure_certs = True  # NOTE: the stack's own CA, made for this run
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def wait_page(driver: Any, nodes: int, timeout_s: float = 30.0) -> None:
    """Until the page is live and shows ``nodes`` nodes and some charts."""
    condition = (f"return document.getElementById('live').dataset.state === 'live'"
                 f" && document.querySelectorAll('.node').length >= {nodes}"
                 f" && document.querySelectorAll('.chart-card canvas').length > 0;")
    deadline = time.monotonic() + timeout_s
    while not driver.execute_script(condition):
        if time.monotonic() > deadline:
            raise SystemExit(f"the dashboard did not show {nodes} nodes and charts within {timeout_s:.0f} s")
        time.sleep(0.2)


def save_full_page(driver: Any, out: Path) -> None:
    """The whole page, 1280 px wide and as tall as its content, as a PNG at ``out``."""
    height = int(driver.execute_script("return document.documentElement.scrollHeight;"))
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": WINDOW_PX[0], "height": height, "deviceScaleFactor": 1, "mobile": False})
    driver.execute_async_script("const done = arguments[0]; requestAnimationFrame(() => setTimeout(done, 1200));")
    height = int(driver.execute_script("return document.documentElement.scrollHeight;"))
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": WINDOW_PX[0], "height": height, "scale": 1}})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(shot["data"]))


def members(state: dict[str, Any]) -> int:
    """How many nodes the cloud's page shows: the cloud, its worker, and each region, edge and device."""
    return 2 + sum(2 + len(region["devices"]) for region in state["regions"].values())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fogline-dashboard-") as tmp, running_stack(Path(tmp)) as state:
        scheme = "https" if state.get("tls") else "http"
        driver = browser(Path(tmp) / "chromium")
        try:
            with Traffic(state, args.callers) as traffic:
                driver.get(f"{scheme}://{state['cloud']['http']}/ui/")
                wait_page(driver, members(state))
                time.sleep(args.seconds)  # NOTE: not a synchronisation: how much history the picture shows
                save_full_page(driver, args.out)
            print(f"{args.out}: {traffic.counts['ok']} requests answered, {traffic.counts['failed']} failed")
        finally:
            driver.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
