"""A real headless Chromium for the dashboard's tests, driven by Selenium through the system's chromedriver.

Selenium Manager never runs (so nothing is downloaded): the browser is Debian's ``chromium`` and the driver
its ``chromedriver``, both found on PATH; without them the test is skipped, saying what to install. Each
browser has a fresh profile in a temporary directory and no network of its own (no QUIC, background
networking, component updates or sync)::

    @pytest.fixture(scope="module")
    def browser(tmp_path_factory):
        with chromium(tmp_path_factory.mktemp("chromium")) as driver:
            yield driver
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

MISSING = ("chromium/chromedriver not found: apt-get install chromium chromium-driver (Debian), "
           "or run tools/install_system_deps.sh")
WINDOW_WIDTH_PX = 1280
WINDOW_HEIGHT_PX = 900
CHROMIUM_ARGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
    "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    f"--window-size={WINDOW_WIDTH_PX},{WINDOW_HEIGHT_PX}",
)
REPO_ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def chromium_paths() -> tuple[str, str]:
    """The chromium binary and its chromedriver on PATH; the test is skipped when either is missing."""
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip(MISSING)
    return binary, driver


def chromium_options(binary: str, user_data_dir: Path, *, accept_insecure_certs: bool) -> webdriver.ChromeOptions:
    """Headless Chromium at 1280x900 with a fresh profile in ``user_data_dir``, keeping the console log."""
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (*CHROMIUM_ARGS, f"--user-data-dir={user_data_dir}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.accept_insecure_certs = accept_insecure_certs
    return options


@contextmanager
def chromium(user_data_dir: Path, *, accept_insecure_certs: bool = False) -> Iterator[WebDriver]:
    """A headless Chromium (see :func:`chromium_options`), always quit on exit."""
    binary, driver_path = chromium_paths()
    options = chromium_options(binary, user_data_dir, accept_insecure_certs=accept_insecure_certs)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        driver.set_page_load_timeout(20)
        yield driver
    finally:
        driver.quit()


def console_errors(driver: WebDriver) -> list[str]:
    """The browser console's SEVERE entries since the last call (reading the log empties it)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]


def wait_js(driver: WebDriver, script: str, timeout_s: float, what: str) -> Any:
    """Run the JavaScript ``script`` (``return ...``) in the page until it returns something truthy; that."""
    return wait_page(driver, lambda: driver.execute_script(script), timeout_s, what)


def wait_page(driver: WebDriver, predicate: Callable[[], T | None], timeout_s: float, what: str) -> T:
    """Call ``predicate`` (which reads the page through ``driver``) until it is truthy; its value."""
    value = WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(
        lambda _: predicate(), f"timed out after {timeout_s}s waiting for {what}")
    assert value is not None  # until() returns only a truthy value
    return value


def node_element(driver: WebDriver, node_id: str) -> WebElement | None:
    """The page's box for node ``node_id`` (by its data-node-id), or None."""
    element = driver.execute_script(
        "return [...document.querySelectorAll('.node[data-node-id]')]"
        ".find((n) => n.dataset.nodeId === arguments[0]) || null;", node_id)
    return element if isinstance(element, WebElement) else None


def node_attributes(driver: WebDriver) -> dict[str, dict[str, str]]:
    """Every node box on the page: id -> its data-kind, data-health and data-circuit."""
    return dict(driver.execute_script(
        "const out = {};"
        "for (const n of document.querySelectorAll('.node[data-node-id]'))"
        "  out[n.dataset.nodeId] = {kind: n.dataset.kind, health: n.dataset.health, circuit: n.dataset.circuit};"
        "return out;"))


def artefact_dir() -> Path:
    """Where a test saves what a person may want to look at: ``$FOGLINE_TEST_ARTEFACTS``, else
    ``<repo>/test-artefacts``; created if needed."""
    folder = Path(os.environ.get("FOGLINE_TEST_ARTEFACTS") or REPO_ROOT / "test-artefacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
