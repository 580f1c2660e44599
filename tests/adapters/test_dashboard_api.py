"""The masters' dashboard documents (``/v1/dashboard``), from real in-process masters and device nodes
over real gRPC and REST: every process appears with its health, each tier's traffic is charted, a device
that leaves turns down with an event, and ``since`` answers only what is new."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from cloud_master import CloudMaster, CloudSettings
from device_node import DeviceNode, DeviceSettings
from edge_master import EdgeMaster, EdgeSettings
from fogline import Client
from fogline.servers.dashboard import DashboardSettings
from tests.adapters.conftest import MAX_MESSAGE_BYTES
from tests.polling import until

FAST = DashboardSettings(sample_s=0.2, settle_s=0.5, ghost_s=30.0)
MLP_INPUT = {"input": np.ones((1, 64), np.float32)}


@dataclass
class Fleet:
    cloud: CloudMaster
    edges: dict[str, EdgeMaster]
    devices: dict[str, DeviceNode]


@pytest.fixture
async def fleet(sample_models: Path) -> AsyncIterator[Fleet]:
    """A cloud master, and two regions of an edge master with one device node each, sampled fast."""
    cloud = CloudMaster(CloudSettings(cloud_id="cloud-t", heartbeat_interval_s=0.1, member_ttl_s=1.0,
                                      max_message_bytes=MAX_MESSAGE_BYTES, dashboard=FAST))
    await cloud.start()
    fleet = Fleet(cloud, {}, {})
    try:
        for region in ("eu", "us"):
            edge = fleet.edges[region] = EdgeMaster(EdgeSettings(
                edge_id=f"edge-{region}", region=region, cloud=cloud.endpoints["control"], heartbeat_interval_s=0.1,
                member_ttl_s=1.0, max_message_bytes=MAX_MESSAGE_BYTES, dashboard=FAST))
            await edge.start()
            device = fleet.devices[region] = DeviceNode(DeviceSettings(
                model_repository=sample_models, node_id=f"dev-{region}", region=region,
                master=edge.endpoints["control"], max_message_bytes=MAX_MESSAGE_BYTES))
            await device.start()
            await until(lambda r=region: r in cloud.routing.regions and "mlp" in cloud.routing.regions[r].pool.models())
            # NOTE: a dashboard counts a process's traffic from its first reading of it on: wait for that.
            await until(lambda e=edge, r=region: _shows_healthy(e.endpoints["http"], f"dev-{r}"),
                        what=f"dev-{region} on its edge's dashboard")
        yield fleet
    finally:
        for region in fleet.edges:
            if region in fleet.devices:
                await fleet.devices[region].drain()
            await fleet.edges[region].drain()
        await cloud.drain()


async def dashboard(http: str, query: str = "") -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(f"http://{http}/v1/dashboard{query}") as reply:
        return reply.status, await reply.json()


def by_id(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["id"]: n for n in doc["nodes"]}


def served(doc: dict[str, Any], tier: str, model: str) -> float:
    """Requests a second, summed over the document's points, of ``model`` on ``tier``."""
    return sum(sum(s["rps"]) for s in doc["series"] if s["tier"] == tier and s["model"] == model)


async def test_the_cloud_dashboard_shows_every_process_healthy_and_the_traffic_of_every_tier(fleet: Fleet) -> None:
    async with Client(fleet.cloud.endpoints["grpc"]) as via_cloud, Client(fleet.edges["eu"].endpoints["grpc"]) as eu:
        for _ in range(10):
            await via_cloud.infer("mlp", MLP_INPUT)
            await eu.infer("mlp", MLP_INPUT)

    last: dict[str, Any] = {}

    async def shown() -> dict[str, Any] | None:
        status, doc = await dashboard(fleet.cloud.endpoints["http"])
        assert status == 200
        nodes = by_id(doc)
        ids = {"cloud-t", "eu", "us", "edge-eu", "edge-us", "dev-eu", "dev-us"}
        healthy = ids <= nodes.keys() and all(nodes[i]["health"] == "healthy" for i in ids)
        # every request counted once where it ran: 10 through the cloud, 20 on the edges and devices
        counted = {tier: round(served(doc, tier, "mlp") * FAST.sample_s) for tier in ("cloud", "edge", "device")}
        traffic = counted == {"cloud": 10, "edge": 20, "device": 20}
        last.update(counted=counted, health={i: n["health"] for i, n in nodes.items()})
        return doc if healthy and traffic else None

    try:
        doc = await until(shown, timeout_s=15, what="every process healthy and traffic on every tier")
    except AssertionError as err:
        raise AssertionError(f"{err}; last seen: {last}") from None
    nodes = by_id(doc)
    assert doc["scope"] == "cloud" and doc["region"] is None
    assert nodes["dev-eu"]["parent"] == "edge-eu" and nodes["edge-eu"]["parent"] == "eu"
    assert nodes["eu"]["parent"] == "cloud-t" and nodes["cloud-t"]["parent"] is None
    assert nodes["edge-eu"]["circuit"] == "closed" and nodes["dev-eu"]["circuit"] == "closed"
    assert "mlp" in nodes["dev-eu"]["versions"]
    assert doc["routes"].get("placement", 0) >= 20
    line = next(s for s in doc["series"] if s["tier"] == "device" and s["model"] == "mlp")
    assert len(line["t"]) == len(line["rps"]) == len(line["p50_ms"]) == len(line["p99_ms"]) == len(line["error_rate"])
    assert any(p is not None and p > 0 for p in line["p99_ms"])
    assert all(e == 0 for e in line["error_rate"])


async def test_an_edge_dashboard_shows_only_its_region(fleet: Fleet) -> None:
    async def shown() -> dict[str, Any] | None:
        _, doc = await dashboard(fleet.edges["eu"].endpoints["http"])
        return doc if "dev-eu" in by_id(doc) else None

    doc = await until(shown, timeout_s=10, what="the edge's device on its page")
    assert doc["scope"] == "edge" and doc["region"] == "eu" and doc["id"] == "edge-eu"
    assert not {"dev-us", "edge-us"} & by_id(doc).keys()


async def test_a_device_that_leaves_turns_down_on_the_cloud_page_with_its_leave_event(fleet: Fleet) -> None:
    await until(lambda: _shows_healthy(fleet.cloud.endpoints["http"], "dev-us"), timeout_s=10,
                what="dev-us healthy on the page")
    await fleet.devices.pop("us").drain()

    async def down() -> dict[str, Any] | None:
        _, doc = await dashboard(fleet.cloud.endpoints["http"])
        node = by_id(doc).get("dev-us")
        left = any(e["kind"] == "leave" and e["node"] == "dev-us" for e in doc["events"])
        return doc if node is not None and node["health"] == "down" and left else None

    doc = await until(down, timeout_s=10, what="dev-us down, and its leave among the events")
    assert by_id(doc)["dev-eu"]["health"] == "healthy"
    assert by_id(doc)["edge-us"]["health"] == "unhealthy"  # no device left: its edge is not ready


async def _shows_healthy(http: str, node_id: str) -> bool:
    _, doc = await dashboard(http)
    return by_id(doc).get(node_id, {}).get("health") == "healthy"


async def test_since_answers_only_what_is_new_and_a_bad_since_is_a_400(fleet: Fleet) -> None:
    _, whole = await dashboard(fleet.cloud.endpoints["http"])
    assert whole["events"], "the master's start, at least"
    _, later = await dashboard(fleet.cloud.endpoints["http"], f"?since={whole['now']!r}")
    assert all(e["t"] > whole["now"] for e in later["events"])
    assert all(t > whole["now"] - FAST.settle_s for s in later["series"] for t in s["t"])
    status, error = await dashboard(fleet.cloud.endpoints["http"], "?since=yesterday")
    assert status == 400 and "since must be a number" in error["error"]
    status, _ = await dashboard(fleet.cloud.endpoints["http"], "?since=nan")
    assert status == 400


def _rollout(history: list[dict[str, Any]], state: str) -> dict[str, Any]:
    return {"id": "r1", "model": "cnn", "version": "2", "state": state, "percent": 50, "step": 1,
            "steps": [10, 50, 100], "failure": "gate p99_ratio failed" if state == "rolled_back" else "",
            "history": history}


async def test_rollout_steps_and_the_gate_that_rolled_one_back_are_events() -> None:
    from datetime import datetime, timezone

    from fogline.adapters.metrics import Metrics
    from fogline.servers.dashboard import Dashboard, FleetView, node

    now = datetime.now(timezone.utc).isoformat()
    entries = [{"at": "2020-01-01T00:00:00+00:00", "event": "started", "percent": 10, "detail": ""},  # before us
               {"at": now, "event": "step", "percent": 50, "detail": ""}]
    view = FleetView(nodes=[node("c", "cloud", None)], scraped=[], regions=[], rollouts=[_rollout(entries, "running")])
    board = Dashboard(Metrics("cloud"), lambda: view, scope="cloud", id="c", settings=FAST)
    await board.tick()
    view.rollouts = [_rollout([*entries, {"at": now, "event": "rolled_back", "percent": 50,
                                          "detail": "gate p99_ratio failed"}], "rolled_back")]
    await board.tick()
    doc = await board.document()
    said = [(e["kind"], e["text"]) for e in doc["events"]]
    assert said == [("rollout", "cnn v2: step at 50 %"), ("gate", "cnn v2: rolled_back at 50 % (gate p99_ratio failed)")]
    assert doc["rollouts"] == [{"model": "cnn", "version": "2", "state": "rolled_back", "percent": 50, "step": 1,
                                "steps": [10, 50, 100], "reason": "gate p99_ratio failed", "waiting": None}]
    await board.stop()
