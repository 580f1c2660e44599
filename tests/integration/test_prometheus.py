"""A real Prometheus scrapes a real ``fogline up`` (mTLS) through the configuration the stack writes:

- every process of the stack is a target found through the targets file, labelled with its tier, id and
  region, and scraped over HTTPS (the stack's CA, the users' client certificate), all of them up;
- after traffic through an edge and the cloud, ``fogline_requests_total`` has series from every tier;
- every metric the Grafana dashboard queries is one Prometheus scraped, and every query it makes runs;
- a device killed with SIGKILL is restarted by the stack, stays in the targets file on the same endpoint,
  and Prometheus scrapes it again.

Prometheus runs the stack's configuration with a 1 s scrape interval (``fogline up`` writes 5 s)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fogline.core.escalation.catalog import load_catalog
from fogline.local import digits
from fogline.local.prometheus import (
    CONFIG_FILE,
    HEADER,
    TARGETS_FILE,
    prometheus_config,
    render_yaml,
    scrape_targets,
)
from fogline.local.samples import build_cnn
from fogline.sdk.client import SyncClient
from tests.integration.loadgen import make_inputs
from tests.integration.stackrun import Up, alive, client_tls, running_stack
from tests.polling import wait_for
from tests.unit.test_grafana_dashboard import dashboard_metrics, exprs, load_dashboard

pytestmark = pytest.mark.integration

SCRAPE_INTERVAL_S = 1.0
TIMEOUT_S = 10.0
TIERS = {"cloud", "worker", "edge", "device"}
VICTIM = "region-b-device-0"
GRAFANA_VALUES = {"$tier": ".*", "$model": ".*", "$__rate_interval": "1m"}
"""What Grafana puts for the dashboard's variables, to run its queries here."""


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        pytest.skip("prometheus binary not found: apt-get install prometheus (Debian), or run "
                    "tools/install_system_deps.sh")
    return found


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, sample_models: Path,
          digits_models: Path) -> Iterator[Up]:
    with running_stack(tmp_path_factory.mktemp("prometheus"), sample_models, digits_models) as up:
        yield up


class Prometheus:
    """A ``prometheus`` process on 127.0.0.1 (a port of its own choosing) and its HTTP API."""

    def __init__(self, binary: str, config: Path, root: Path) -> None:
        self.log = root / "prometheus.log"
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}",
                 "--web.listen-address=127.0.0.1:0"], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.url = ""

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_listening(self, timeout_s: float = 20.0) -> None:
        """Until it says where it listens (it logs the port it bound), then until it is ready."""
        def listening() -> str | None:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.process.returncode}:\n{self.output()}")
            found = re.search(r'msg="Listening on" address=(127\.0\.0\.1:\d+)', self.output())
            return found.group(1) if found else None
        self.url = "http://" + wait_for(listening, timeout_s, "prometheus to listen", interval_s=0.05)
        wait_for(self._ready, timeout_s, "prometheus to be ready", interval_s=0.05)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        """The ``data`` of a GET of its HTTP API; fails on an error answer."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5) as reply:
                body = json.load(reply)
        except urllib.error.HTTPError as err:
            body = json.load(err)
        assert body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    def targets(self) -> dict[str, dict[str, Any]]:
        """The active targets by their ``instance_id`` label."""
        return {t["labels"]["instance_id"]: t for t in self.api("targets", state="active")["activeTargets"]}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture(scope="module")
def prometheus(prometheus_binary: str, stack: Up, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """Prometheus on the stack's configuration, its scrape interval shortened to 1 s."""
    root = tmp_path_factory.mktemp("prometheus-server")
    config = root / CONFIG_FILE
    config.write_text(render_yaml(prometheus_config(stack.workdir / TARGETS_FILE, stack.state()["tls"],
                                                    scrape_interval_s=SCRAPE_INTERVAL_S)))
    server = Prometheus(prometheus_binary, config, root)
    try:
        server.wait_listening()
        yield server
    finally:
        server.stop()


def member_ids(state: dict[str, Any]) -> set[str]:
    return {state["cloud"]["id"], state["worker"]["id"],
            *(m["id"] for r in state["regions"].values() for m in (r["edge"], *r["devices"]))}


def all_up(prometheus: Prometheus, ids: set[str]) -> dict[str, dict[str, Any]] | None:
    targets = prometheus.targets()
    return targets if set(targets) == ids and all(t["health"] == "up" for t in targets.values()) else None


def fogline(up: Up, *args: str) -> None:
    """A ``fogline`` command against the stack; fails the test if it fails."""
    done = subprocess.run([sys.executable, "-m", "fogline", *args, "--state", str(up.state_file)],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def send_traffic(up: Up, digits_models: Path) -> None:
    """Requests through an edge (device models, a hard digit the cascade escalates) and the cloud master."""
    state = up.state()
    rule = load_catalog(digits_models / digits.CATALOG_FILE).entries["digits"].rule
    assert rule is not None
    threshold = rule.max_prob_below
    split = digits.load_split(digits_models)
    hard = split.x_test[digits.small_probabilities(digits_models, split.x_test).max(axis=1) < threshold][:1]
    with SyncClient(state["edge"]["grpc"], timeout_s=TIMEOUT_S, tls=client_tls(state)) as client:
        for x in make_inputs("mlp", 10, seed=1):
            client.infer("mlp", {"input": x})
        client.infer("digits", {"input": hard})
    with SyncClient(state["cloud"]["grpc"], timeout_s=TIMEOUT_S, tls=client_tls(state)) as client:
        for x in make_inputs("cnn", 3, seed=2):
            client.infer("cnn", {"input": x})


def start_rollout(up: Up, tmp: Path) -> None:
    """A rollout of a second cnn version that stays at its first step (for the fogline_rollout_* gauges)."""
    build_cnn(tmp / "cnn-2", logit_scale=1.02)
    fogline(up, "models", "push", "cnn", str(tmp / "cnn-2" / "1" / "model.onnx"), "--version", "2")
    fogline(up, "rollout", "start", "cnn", "--version", "2", "--steps", "10,100", "--bake-s", "600")


def scrape_time(target: dict[str, Any]) -> float:
    """A target's ``lastScrape`` (RFC 3339, nanoseconds) as a Unix time."""
    found = re.fullmatch(r"(.+T[\d:]+)(?:\.(\d+))?(Z|[+-][\d:]+)", target["lastScrape"])
    assert found, target["lastScrape"]
    whole, fraction, zone = found.groups()
    stamp = dt.datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone))
    return stamp.timestamp() + float(f"0.{fraction or 0}")


def test_the_written_config_scrapes_every_process_over_mtls(stack: Up) -> None:
    state = stack.state()
    written = (stack.workdir / CONFIG_FILE).read_text()
    assert written == HEADER + render_yaml(prometheus_config(stack.workdir / TARGETS_FILE, state["tls"]))
    assert 'scheme: "https"' in written and "insecure_skip_verify" not in written
    targets = json.loads((stack.workdir / TARGETS_FILE).read_text())
    assert targets == scrape_targets(state) and len(targets) == len(member_ids(state)) == 8
    assert f"Prometheus config: {stack.workdir / CONFIG_FILE}" in stack.output()
    if shutil.which("promtool"):
        checked = subprocess.run(["promtool", "check", "config", str(stack.workdir / CONFIG_FILE)],
                                 capture_output=True, text=True, timeout=30, check=False)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_prometheus_scrapes_every_tier_and_every_metric_of_the_dashboard(
        prometheus: Prometheus, stack: Up, digits_models: Path, tmp_path: Path) -> None:
    state = stack.state()
    targets = wait_for(lambda: all_up(prometheus, member_ids(state)), 30, "every process to be a target, up")
    assert targets["region-a-device-1"]["labels"].items() >= {"tier": "device", "region": "region-a"}.items()
    assert targets["cloud"]["scrapeUrl"].startswith("https://127.0.0.1:")
    send_traffic(stack, digits_models)
    start_rollout(stack, tmp_path)

    def tiers() -> set[str]:
        series = prometheus.api("query", query="fogline_requests_total")["result"]
        return {s["metric"]["tier"] for s in series}
    wait_for(lambda: tiers() >= TIERS, 15, "fogline_requests_total from every tier", interval_s=0.2)

    wanted = dashboard_metrics()
    wait_for(lambda: wanted <= set(prometheus.api("label/__name__/values")), 15,
             f"every metric of the dashboard to be scraped: {sorted(wanted)}", interval_s=0.2)
    cloud_routes = prometheus.api("query", query='fogline_routes_total{exported_tier="cloud"}')["result"]
    assert {s["metric"]["tier"] for s in cloud_routes} == {"edge"}, "the target's tier, the route's exported_tier"
    for expr in exprs(load_dashboard()):
        for variable, value in GRAFANA_VALUES.items():
            expr = expr.replace(variable, value)
        prometheus.api("query", query=expr)  # fails on a query Prometheus cannot run


def test_a_killed_device_stays_a_target_and_is_scraped_again_once_restarted(
        prometheus: Prometheus, stack: Up) -> None:
    state = stack.state()
    wait_for(lambda: all_up(prometheus, member_ids(state)), 30, "every process to be a target, up")
    before = {t["labels"]["instance_id"]: t for t in json.loads((stack.workdir / TARGETS_FILE).read_text())}
    victim = next(d for d in state["devices"] if d["id"] == VICTIM)
    stack.child_pids()
    os.kill(victim["pid"], signal.SIGKILL)

    def restarted() -> float | None:
        now = next(d for d in stack.state()["devices"] if d["id"] == VICTIM)
        return time.time() if now.get("pid") != victim["pid"] and now.get("http") and alive(now["pid"]) else None
    back_at = wait_for(restarted, 20, f"{VICTIM} to be restarted", interval_s=0.05)
    after = {t["labels"]["instance_id"]: t for t in json.loads((stack.workdir / TARGETS_FILE).read_text())}
    assert after == before, "the same targets, the restarted device on its same endpoint"

    def scraped_again() -> bool:
        target = prometheus.targets()[VICTIM]
        return target["health"] == "up" and scrape_time(target) > back_at
    wait_for(scraped_again, 15, f"Prometheus to scrape the restarted {VICTIM}", interval_s=0.2)
    assert all_up(prometheus, member_ids(state))
