"""The dashboard page in a real headless Chromium, served by a real aiohttp app: ``add_ui_routes`` plus a
``/v1/dashboard`` that answers contract-shaped JSON from a feed the test changes between polls.

The page must show every node with its attributes, turn a failing node red within seconds, draw a chart
per series, list events newest first (capped), render hostile strings as text, fit 1280 px, say "stale"
when polls fail, and log no console error (no CSP violation). The static routes serve only the page's
files, with their security headers."""

from __future__ import annotations

import asyncio
import copy
import http.client
import itertools
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from selenium.webdriver.chrome.webdriver import WebDriver

from fogline.adapters.http.ui import SECURITY_HEADERS, UI_FILES, add_ui_routes
from tests.browser import chromium, console_errors, node_attributes, node_element, wait_js

HOSTILE_ID = "<img src=x onerror=alert(1)>"
HISTORY_S = 120  # seconds of points the feed holds (the page keeps up to 15 min)
SERIES = [(tier, model) for tier in ("cloud", "worker", "edge", "device") for model in ("digits", "mlp")]
RED = "rgb(207, 34, 46)"  # --bad in dashboard.css
GREEN = "rgb(26, 127, 55)"  # --healthy
WAIT_S = 8.0  # a poll a second: a change shows within a couple of polls


def node(node_id: str, kind: str, parent: str | None, *, region: str | None = None, health: str = "healthy",
         circuit: str | None = "closed", versions: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """One entry of the contract's ``nodes``."""
    return {"id": node_id, "kind": kind, "parent": parent, "region": region, "health": health, "circuit": circuit,
            "load": {"in_flight": 2, "queue_depth": 1}, "versions": versions or {}, "address": "127.0.0.1:1"}


def fleet(devices_per_region: int = 2) -> list[dict[str, Any]]:
    """A cloud, a worker and two regions, each with an edge and its devices; one breaker of each state."""
    nodes = [node("cloud", "cloud", None, circuit=None, versions={"digits-large": ["1"], "cnn": ["1", "2"]}),
             node("worker-0", "worker", "cloud", circuit="half_open", versions={"digits-large": ["1"]})]
    for region in ("region-a", "region-b"):
        nodes += [node(region, "region", "cloud", region=region, circuit=None),
                  node(f"{region}-edge", "edge", region, region=region, circuit="open" if region == "region-b" else "closed")]
        nodes += [node(f"{region}-device-{i}", "device", f"{region}-edge", region=region,
                       versions={"digits-small": ["1"], "mlp": ["1", "2"]}) for i in range(devices_per_region)]
    nodes[-1]["circuit"] = "ejected"
    return nodes


def point_values(t: float) -> dict[str, float | None]:
    """A series point that changes with time; every seventh second had no successful request."""
    quiet = int(t) % 7 == 0
    return {"rps": 10 + 5 * math.sin(t / 10), "error_rate": 0.02 if int(t) % 5 == 0 else 0.0,
            "p50_ms": None if quiet else 1.5 + math.sin(t / 7), "p99_ms": None if quiet else 6 + 2 * math.cos(t / 9)}


def series(now: float, since: float | None) -> list[dict[str, Any]]:
    """The contract's ``series``: a point per complete second of the last HISTORY_S, those after ``since``."""
    last = math.floor(now) - 1
    times = [float(t) for t in range(last - HISTORY_S + 1, last + 1) if since is None or t > since]
    points = [point_values(t) for t in times]
    return [{"tier": tier, "model": model, "t": times, **{field: [p[field] for p in points] for field in points[0]}}
            for tier, model in SERIES] if times else []


class DashboardFeed:
    """What ``/v1/dashboard`` answers (contract-shaped), and the ``since`` of every poll it was asked."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self, nodes: list[dict[str, Any]] | None = None) -> None:
        with self.lock:
            self.nodes = nodes if nodes is not None else fleet()
            self.events: list[dict[str, Any]] = []
            self.polls: list[tuple[float | None, float]] = []  # (since asked, now answered)
            self.failing = False

    def set_health(self, node_id: str, health: str) -> None:
        with self.lock:
            next(n for n in self.nodes if n["id"] == node_id)["health"] = health

    def add_event(self, kind: str, node_id: str, text: str) -> None:
        with self.lock:
            self.events.append({"seq": len(self.events) + 1, "t": time.time(), "kind": kind, "node": node_id,
                                "text": text, "future_field": "ignored"})

    def answer(self, since: float | None) -> dict[str, Any] | None:
        now = time.time()
        with self.lock:
            if self.failing:
                return None
            self.polls.append((since, now))
            events = [e for e in self.events if since is None or e["t"] > since]
            return {"scope": "cloud", "id": "cloud", "region": None, "now": now, "window_s": 900, "step_s": 1.0,
                    "nodes": copy.deepcopy(self.nodes), "series": series(now, since), "unknown_field": [1, 2],
                    "routes": {"placement": 600, "overflow": 0, "failover": 3, "cascade-easy": 300,
                               "cascade-hard": 97, "degraded": 0, "hint": 0},
                    "escalation": [{"model": "digits", "rate": 0.244, "requests": 397}],
                    "events": copy.deepcopy(events[-200:]),
                    "rollouts": [{"model": "digits-small", "version": "2", "state": "running", "percent": 25,
                                  "step": 1, "steps": [5, 25, 50, 100], "reason": None}]}


@contextmanager
def serving(feed: DashboardFeed) -> Iterator[str]:
    """The page and ``/v1/dashboard`` on 127.0.0.1, port 0, on an event loop in a thread of its own (the
    test drives the browser synchronously); its base URL."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="dashboard-server", daemon=True)
    thread.start()
    try:
        runner, port = asyncio.run_coroutine_threadsafe(start_server(feed), loop).result(10)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def start_server(feed: DashboardFeed) -> tuple[web.AppRunner, int]:
    async def dashboard(request: web.Request) -> web.Response:
        since = request.query.get("since")
        body = feed.answer(None if since is None else float(since))
        return web.json_response(body) if body is not None else web.json_response({"error": "down"}, status=503)

    app = web.Application()
    add_ui_routes(app)
    app.router.add_get("/v1/dashboard", dashboard)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, int(runner.addresses[0][1])


@pytest.fixture(scope="module")
def feed() -> DashboardFeed:
    return DashboardFeed()


@pytest.fixture(scope="module")
def base_url(feed: DashboardFeed) -> Iterator[str]:
    with serving(feed) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    with chromium(tmp_path_factory.mktemp("chromium")) as driver:
        yield driver


def open_page(browser: WebDriver, base_url: str, feed: DashboardFeed, nodes: list[dict[str, Any]] | None = None) -> None:
    """Load the page afresh on a reset feed, and wait until it is live and shows the nodes."""
    browser.get("about:blank")  # NOTE: first, so that no poll of the last page reaches the reset feed
    feed.reset(nodes)
    browser.get(base_url + "/")
    wait_js(browser, "return document.getElementById('live').dataset.state === 'live'", WAIT_S, "the page to be live")
    wait_js(browser, f"return document.querySelectorAll('.node').length === {len(feed.nodes)}", WAIT_S,
               "every node to appear")


def polls_after(feed: DashboardFeed, count: int) -> None:
    """Wait until the page has polled ``count`` more times."""
    target = len(feed.polls) + count
    deadline = time.monotonic() + WAIT_S + count
    while len(feed.polls) < target:
        assert time.monotonic() < deadline, f"the page polled {len(feed.polls)} times, not {target}"
        time.sleep(0.05)


def health_of(browser: WebDriver, node_id: str) -> str:
    return str(browser.execute_script(
        "const n = [...document.querySelectorAll('.node')].find((n) => n.dataset.nodeId === arguments[0]);"
        "return n ? n.dataset.health + ' ' + getComputedStyle(n).borderLeftColor : '';", node_id))


def test_every_node_appears_with_its_kind_health_and_circuit(browser: WebDriver, base_url: str,
                                                             feed: DashboardFeed) -> None:
    open_page(browser, base_url, feed)
    assert browser.current_url == base_url + "/ui/"
    expected = {n["id"]: {"kind": n["kind"], "health": n["health"], "circuit": n["circuit"] or "none"} for n in feed.nodes}
    assert node_attributes(browser) == expected
    assert browser.find_element("id", "scope").text == "cloud"
    assert browser.find_element("id", "master-id").text == "cloud"
    device = node_element(browser, "region-a-device-0")
    assert device is not None
    assert "digits-small v1" in device.text and "mlp v1, v2" in device.text and "in flight 2" in device.text
    # the tree: each device sits inside its edge's branch, each edge inside its region's
    parents = browser.execute_script(
        "const out = {};"
        "for (const n of document.querySelectorAll('.node')) {"
        "  const up = n.parentElement.parentElement.closest('.branch');"
        "  out[n.dataset.nodeId] = up ? up.querySelector(':scope > .node').dataset.nodeId : null; }"
        "return out;")
    assert parents == {n["id"]: n["parent"] for n in feed.nodes}
    badges = browser.execute_script("return [...document.querySelectorAll('.node .badge')].map((b) => b.dataset.circuit).sort();")
    assert badges == ["ejected", "half_open", "open"]


def test_a_node_that_turns_unhealthy_or_down_turns_red_within_seconds(browser: WebDriver, base_url: str,
                                                                     feed: DashboardFeed) -> None:
    open_page(browser, base_url, feed)
    assert health_of(browser, "region-a-device-1") == f"healthy {GREEN}"
    feed.set_health("region-a-device-1", "down")
    feed.set_health("region-b-edge", "unhealthy")
    wait_js(browser, "return [...document.querySelectorAll('.node')].filter((n) =>"
               " ['region-a-device-1', 'region-b-edge'].includes(n.dataset.nodeId) && n.dataset.health !== 'healthy').length === 2",
               WAIT_S, "the two nodes to turn unhealthy")
    assert health_of(browser, "region-a-device-1") == f"down {RED}"
    assert health_of(browser, "region-b-edge") == f"unhealthy {RED}"
    feed.set_health("region-a-device-1", "healthy")
    wait_js(browser, "return [...document.querySelectorAll('.node')].some((n) =>"
               " n.dataset.nodeId === 'region-a-device-1' && n.dataset.health === 'healthy')", WAIT_S,
               "region-a-device-1 to be healthy again")
    assert health_of(browser, "region-a-device-1") == f"healthy {GREEN}"


def test_charts_draw_a_canvas_per_series_and_the_page_polls_with_since(browser: WebDriver, base_url: str,
                                                                      feed: DashboardFeed) -> None:
    open_page(browser, base_url, feed)
    wait_js(browser, f"return document.querySelectorAll('.chart-card').length === {len(SERIES)}", WAIT_S,
               "a chart card per series")
    canvases = browser.execute_script(
        "return [...document.querySelectorAll('.chart-card')].map((c) =>"
        " [c.dataset.tier, c.dataset.model, c.querySelectorAll('.chart canvas').length]);")
    assert sorted(map(tuple, canvases)) == sorted((tier, model, 3) for tier, model in SERIES)
    summary = browser.find_element("css selector", ".chart-card .chart-summary").text
    assert "rps" in summary and "p99" in summary
    polls_after(feed, 3)
    with feed.lock:
        polls = list(feed.polls)
    assert polls[0][0] is None  # the first poll asks for the whole window
    assert all(since == previous_now for (_, previous_now), (since, _) in itertools.pairwise(polls))
    gaps_s = [b[1] - a[1] for a, b in itertools.pairwise(polls)]
    assert all(0.9 < gap < 4 for gap in gaps_s), gaps_s  # about once a second


def test_routes_escalation_and_rollouts_are_shown(browser: WebDriver, base_url: str, feed: DashboardFeed) -> None:
    open_page(browser, base_url, feed)
    wait_js(browser, "return document.querySelector('#routes tr[data-route=\"placement\"]')"
               " && document.querySelector('#routes tr[data-route=\"placement\"]').textContent.includes('600')",
               WAIT_S, "the routes table")
    rows = browser.execute_script("return [...document.querySelectorAll('#routes tbody tr')].map((r) =>"
                                  " [...r.cells].slice(0, 3).map((c) => c.textContent));")
    assert rows[:6] == [["placement", "600", "60.0 %"], ["overflow", "0", "0.0 %"], ["failover", "3", "0.3 %"],
                        ["cascade-easy", "300", "30.0 %"], ["cascade-hard", "97", "9.7 %"], ["degraded", "0", "0.0 %"]]
    assert browser.find_element("css selector", "#escalation tbody tr").text.split() == ["digits", "24.4", "%", "397"]
    rollout = browser.find_element("css selector", "#rollouts tbody tr").text
    assert rollout.startswith("digits-small 2 running 25 %") and "step 2 of 4" in rollout


def test_events_appear_newest_first_and_are_capped(browser: WebDriver, base_url: str, feed: DashboardFeed) -> None:
    open_page(browser, base_url, feed)
    feed.add_event("leave", "region-a-device-0", "region-a-device-0 left (silent 3.0 s)")
    polls_after(feed, 1)
    feed.add_event("join", "region-a-device-0", "region-a-device-0 joined")
    wait_js(browser, "return document.querySelectorAll('#events li[data-kind]').length === 2", WAIT_S, "two events")
    kinds = browser.execute_script("return [...document.querySelectorAll('#events li')].map((li) => li.dataset.kind);")
    assert kinds == ["join", "leave"]
    assert "region-a-device-0 left (silent 3.0 s)" in browser.find_element("id", "events").text
    for i in range(250):
        feed.add_event("breaker", "region-b-edge", f"breaker event {i}")
    wait_js(browser, "return document.querySelector('#events li .text').textContent === 'breaker event 249'", WAIT_S,
               "the newest of 250 events on top")
    assert browser.execute_script("return document.querySelectorAll('#events li').length;") == 200


def test_hostile_strings_are_shown_as_text_and_create_no_element(browser: WebDriver, base_url: str,
                                                                 feed: DashboardFeed) -> None:
    nodes = fleet()
    nodes.append(node(HOSTILE_ID, "device", "region-a-edge", region="region-a",
                      versions={"<b>model</b>": ["<i>1</i>"]}))
    open_page(browser, base_url, feed, nodes)
    feed.add_event("leave", HOSTILE_ID, f"{HOSTILE_ID} left <script>alert(2)</script>")
    wait_js(browser, "return document.querySelectorAll('#events li[data-kind=\"leave\"]').length === 1", WAIT_S,
               "the hostile event")
    box = node_element(browser, HOSTILE_ID)
    assert box is not None
    assert box.find_element("css selector", ".node-id").text == HOSTILE_ID
    assert "<b>model</b> v<i>1</i>" in box.text
    assert f"{HOSTILE_ID} left <script>alert(2)</script>" in browser.find_element("id", "events").text
    created = browser.execute_script("return document.querySelectorAll('img, b, i, #events script, .tree script').length;")
    assert created == 0


def test_the_page_fits_1280_px_without_horizontal_scrolling(browser: WebDriver, base_url: str,
                                                            feed: DashboardFeed) -> None:
    nodes = fleet(devices_per_region=8)
    nodes.append(node("a-very-long-device-identifier-" * 4, "device", "region-b-edge", region="region-b"))
    open_page(browser, base_url, feed, nodes)
    wait_js(browser, f"return document.querySelectorAll('.chart-card canvas').length >= {3 * len(SERIES)}", WAIT_S,
               "the charts")
    width = browser.execute_script("return [window.innerWidth, document.documentElement.scrollWidth];")
    assert width[0] == 1280, width
    assert width[1] <= 1280, f"the page is {width[1]} px wide at 1280 px"


def test_the_indicator_turns_stale_when_polls_fail_and_live_when_they_succeed(browser: WebDriver, base_url: str,
                                                                            feed: DashboardFeed) -> None:
    open_page(browser, base_url, feed)
    feed.failing = True
    wait_js(browser, "return document.getElementById('live').dataset.state === 'stale'", WAIT_S, "stale")
    assert browser.find_element("id", "live").text == "stale"
    assert node_element(browser, "cloud") is not None  # what it last knew stays on the page
    feed.failing = False
    wait_js(browser, "return document.getElementById('live').dataset.state === 'live'", WAIT_S, "live again")


def test_the_page_logs_no_console_error(browser: WebDriver, base_url: str, feed: DashboardFeed) -> None:
    """Best effort: a CSP violation, a script error or a failed load of the page's own files is logged."""
    open_page(browser, base_url, feed)
    console_errors(browser)  # reading empties the log: only errors of this load count from here
    browser.get(base_url + "/ui/")
    wait_js(browser, "return document.querySelectorAll('.chart-card canvas').length > 0", WAIT_S, "the charts")
    polls_after(feed, 2)
    assert console_errors(browser) == []


# ---- the static routes, over plain HTTP: no browser normalises these paths ----

def raw_get(base_url: str, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    host, port = base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        connection.request(method, path)
        reply = connection.getresponse()
        return reply.status, dict(reply.getheaders()), reply.read()
    finally:
        connection.close()


@pytest.mark.parametrize("path", ["/ui/../pyproject.toml", "/ui/%2e%2e/pyproject.toml", "/ui/..%2fpyproject.toml",
                                  "/ui/vendor/..%2f..%2f..%2fpyproject.toml", "/ui/nope.js", "/ui/vendor/nope.js",
                                  "/ui/vendor/", "/ui/%2fetc%2fpasswd", "/ui/ui/index.html", "/ui/index.html/"])
def test_only_the_page_files_are_served(base_url: str, path: str) -> None:
    status, _, body = raw_get(base_url, path)
    assert status == 404, (path, body[:80])
    assert b"[tool." not in body and b"root:" not in body


def test_the_page_files_carry_their_type_and_the_security_headers(base_url: str) -> None:
    types = {"/ui/": "text/html", "/ui/dashboard.js": "text/javascript", "/ui/dashboard.css": "text/css",
             "/ui/vendor/uPlot.iife.min.js": "text/javascript", "/ui/vendor/uPlot.min.css": "text/css"}
    for path, content_type in types.items():
        status, headers, body = raw_get(base_url, path)
        assert status == 200 and headers["Content-Type"].startswith(content_type), (path, headers)
        assert {name: headers.get(name) for name in SECURITY_HEADERS} == SECURITY_HEADERS, path
        assert body == UI_FILES["index.html" if path == "/ui/" else path.removeprefix("/ui/")].body
    _, headers, _ = raw_get(base_url, "/ui/nope.js")
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_the_root_redirects_to_the_page_and_nothing_but_get_is_allowed(base_url: str) -> None:
    status, headers, _ = raw_get(base_url, "/")
    assert status == 302 and headers["Location"] == "/ui/"
    assert raw_get(base_url, "/ui/", "HEAD")[0] == 200
    for method in ("POST", "PUT", "DELETE"):
        assert raw_get(base_url, "/ui/", method)[0] == 405
        assert raw_get(base_url, "/ui/dashboard.js", method)[0] == 405


def test_the_allowlist_is_every_file_of_the_package_ui_folder() -> None:
    folder = Path(__file__).resolve().parents[2] / "fogline" / "servers" / "ui"
    on_disk = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    assert set(UI_FILES) == on_disk
    assert {"index.html", "dashboard.js", "dashboard.css", "vendor/uPlot.iife.min.js", "vendor/uPlot.min.css"} <= on_disk
