"""The dashboard of a real ``fogline up`` (the secure default: HTTPS with the stack's own CA) under traffic,
in headless Chromium: the cloud's page shows every process of the stack healthy, a device that dies turns
red and comes back, with its leave and return in the events; an edge's page shows its region only.

A killed child is restarted within about a second, too soon to be seen dead: the test stops ``fogline
up`` itself (SIGSTOP) before it kills a device, and always lets it go on (SIGCONT)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from selenium.webdriver.chrome.webdriver import WebDriver

from fogline.sdk.client import SyncClient
from tests.browser import artefact_dir, chromium, node_attributes, wait_js, wait_page
from tests.integration.loadgen import make_inputs
from tests.integration.stackrun import Up, client_tls, running_stack

pytestmark = pytest.mark.integration

PAGE_TIMEOUT_S = 20.0
CALL_TIMEOUT_S = 5.0
BAD = ("unhealthy", "down")
T = TypeVar("T")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, sample_models: Path, digits_models: Path) -> Iterator[Up]:
    with running_stack(tmp_path_factory.mktemp("dashboard"), sample_models, digits_models) as up:
        yield up


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    # NOTE: the stack's CA is made for this run; the browser is told to accept it rather than trust it
    with chromium(tmp_path_factory.mktemp("chromium"), accept_insecure_certs=True) as driver:
        yield driver


class Traffic:
    """A caller in a thread sending ``mlp`` to each edge until stopped; errors (a device dying) are counted."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self.inputs = make_inputs("mlp", 8, seed=5)
        self.stopping = threading.Event()
        self.answered = self.failed = 0
        self.thread = threading.Thread(target=self.run, name="dashboard-traffic", daemon=True)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(CALL_TIMEOUT_S * 3)

    def run(self) -> None:
        edges = [region["edge"]["grpc"] for region in self.state["regions"].values()]
        clients = [SyncClient(edge, timeout_s=CALL_TIMEOUT_S, tls=client_tls(self.state)) for edge in edges]
        try:
            while not self.stopping.is_set():
                for client, x in zip(clients, self.inputs, strict=False):
                    self.send(client, x)
        finally:
            for client in clients:
                client.close()

    def send(self, client: SyncClient, x: np.ndarray) -> None:
        try:
            client.infer("mlp", {"input": x})
            self.answered += 1
        except Exception:  # NOTE: a request to a dying device may fail; the page is what is tested
            self.failed += 1


@pytest.fixture(scope="module")
def traffic(stack: Up) -> Iterator[Traffic]:
    with Traffic(stack.state()) as running:
        yield running


def page_url(member: dict[str, Any], state: dict[str, Any]) -> str:
    return f"{'https' if state.get('tls') else 'http'}://{member['http']}/ui/"


def processes(state: dict[str, Any]) -> dict[str, int]:
    """Every process of the stack: id -> pid (the cloud, the worker, each edge and device)."""
    members = [state["cloud"], state["worker"],
               *(m for region in state["regions"].values() for m in (region["edge"], *region["devices"]))]
    return {m["id"]: m["pid"] for m in members}


def all_healthy(browser: WebDriver, ids: set[str]) -> dict[str, dict[str, str]] | None:
    nodes = node_attributes(browser)
    return nodes if all(nodes.get(i, {}).get("health") == "healthy" for i in ids) else None


def wait_nodes(browser: WebDriver, predicate: Callable[[], T | None], what: str) -> T:
    return wait_page(browser, predicate, PAGE_TIMEOUT_S, what)


def events_of(browser: WebDriver, node_id: str) -> list[str]:
    """The kinds of the events about ``node_id`` on the page, oldest first."""
    return list(browser.execute_script(
        "return [...document.querySelectorAll('#events li[data-kind]')]"
        ".filter((li) => li.dataset.node === arguments[0]).map((li) => li.dataset.kind).reverse();", node_id))


def test_an_edge_page_shows_its_region_only(stack: Up, traffic: Traffic, browser: WebDriver) -> None:
    state = stack.state()
    region, other = list(state["regions"])[:2]
    edge = state["regions"][region]["edge"]
    browser.get(page_url(edge, state))
    ids = {edge["id"], *(d["id"] for d in state["regions"][region]["devices"])}
    nodes = wait_nodes(browser, lambda: all_healthy(browser, ids), f"{sorted(ids)} healthy on the edge's page")
    elsewhere = {state["cloud"]["id"], other, state["regions"][other]["edge"]["id"],
                 *(d["id"] for d in state["regions"][other]["devices"])}
    assert not elsewhere & set(nodes), f"the edge of {region} shows {sorted(elsewhere & set(nodes))}"
    # NOTE: besides its region, an edge shows the GPU workers it sends a cascade's hard inputs to
    assert {nodes[n]["kind"] for n in set(nodes) - ids - {region}} <= {"worker"}, nodes
    assert browser.find_element("id", "scope").text == f"edge of region {region}"


def test_the_cloud_page_shows_every_process_and_a_dead_device_until_it_is_back(
        stack: Up, traffic: Traffic, browser: WebDriver) -> None:
    state = stack.state()
    pids = processes(state)
    browser.get(page_url(state["cloud"], state))
    nodes = wait_nodes(browser, lambda: all_healthy(browser, set(pids)), "every process healthy on the cloud's page")
    assert {nodes[m]["kind"] for m in pids} == {"cloud", "worker", "edge", "device"}
    assert set(state["regions"]) <= set(nodes)
    wait_js(browser, "return document.querySelectorAll('.chart-card canvas').length > 0", PAGE_TIMEOUT_S, "charts")

    victim = state["regions"][next(iter(state["regions"]))]["devices"][0]["id"]
    os.kill(state["pid"], signal.SIGSTOP)  # NOTE: else the supervisor restarts the device within a second
    try:
        os.kill(pids[victim], signal.SIGKILL)
        wait_nodes(browser, lambda: node_attributes(browser).get(victim, {}).get("health") in BAD,
                   f"{victim} to turn unhealthy or down")
        shot = artefact_dir() / "dashboard-device-down.png"
        browser.save_screenshot(str(shot))
        print(f"screenshot of {victim} down: {shot}")
    finally:
        os.kill(state["pid"], signal.SIGCONT)
    wait_nodes(browser, lambda: node_attributes(browser).get(victim, {}).get("health") == "healthy",
               f"{victim} healthy again")

    def gone_and_back() -> bool:
        # NOTE: back before its registration expired, it restarted without leaving; else it left, then joined.
        kinds = events_of(browser, victim)
        return "restart" in kinds or ("leave" in kinds and "join" in kinds[kinds.index("leave"):])
    wait_nodes(browser, gone_and_back, f"the events to show {victim} gone and back (restart, or leave then join)")
    assert stack.process.poll() is None
