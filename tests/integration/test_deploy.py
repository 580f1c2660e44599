"""Every tier started through its deploy/ script with Consul discovery, against the Consul stand-in
(or a real `consul agent -dev` when CONSUL_BIN or a consul binary is there): the SDK finds an edge
master in Consul, a new device gets traffic within 5 s, a killed device leaves routing long before
Consul would drop it, traffic survives a Consul outage, and KV changes apply live."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from fogline.local.launch import Launched, wait_ready
from fogline.sdk.client import Client
from fogline.sdk.edges import find_edges
from tests.consul_fixture import ConsulAgent, consul_agent, consul_standin  # noqa: F401  (fixtures)
from tests.integration.loadgen import Load, make_inputs
from tests.polling import poll
from tests.processes import get_json

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
X = {"input": np.ones((1, 64), np.float32)}
INPUTS = {"mlp": make_inputs("mlp", 8, seed=5)}


def launch_script(workdir: Path, tier: str, name: str, agent: ConsulAgent, settings: dict[str, str]) -> Launched:
    """Start ``deploy/fogline-<tier>.sh <env file>`` with ``settings`` in the env file; the script execs
    fogline, so the process is the tier's own."""
    ready, log_file, env_file = (workdir / f"{name}{suffix}" for suffix in (".ready.json", ".log", ".env"))
    values = {"FOGLINE_HOST": "127.0.0.1", "FOGLINE_GRPC_PORT": "0", "FOGLINE_HTTP_PORT": "0",
              "FOGLINE_CONTROL_PORT": "0", "FOGLINE_ID": name, "FOGLINE_READY_FILE": str(ready),
              "FOGLINE_DISCOVERY": "consul", "CONSUL_HTTP_ADDR": agent.address,
              "FOGLINE_CONSUL_CHECK_INTERVAL_S": str(agent.check_interval_s), **settings}
    env_file.write_text("# written by the test\n" + "".join(f"{k}={v}\n" for k, v in values.items()))
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"),
           "FOGLINE_BIN": f"{sys.executable} -m fogline"}
    if agent.token:
        env["CONSUL_HTTP_TOKEN"] = agent.token
    with open(log_file, "wb") as log:
        process = subprocess.Popen(["bash", str(DEPLOY / f"fogline-{tier}.sh"), str(env_file)], env=env,
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return Launched(name, process, log_file, ready)


@pytest.fixture
def scripts(tmp_path: Path) -> Iterator[list[Launched]]:
    started: list[Launched] = []
    yield started
    for launched in started:
        if launched.process.poll() is None:
            launched.process.kill()
        launched.process.wait(10)


def spawn(started: list[Launched], workdir: Path, tier: str, name: str, agent: ConsulAgent,
          **settings: Any) -> Launched:
    launched = launch_script(workdir, tier, name, agent, {k: str(v) for k, v in settings.items()})
    started.append(launched)
    return launched


async def start(started: list[Launched], workdir: Path, tier: str, name: str, agent: ConsulAgent,
                **settings: Any) -> Launched:
    """Spawn and wait until it serves (off the event loop: the stand-in agent runs on it)."""
    launched = spawn(started, workdir, tier, name, agent, **settings)
    await asyncio.to_thread(wait_ready, launched)
    return launched


async def kv_put(agent: ConsulAgent, key: str, value: str) -> None:
    headers = {"X-Consul-Token": agent.token} if agent.token else {}
    async with aiohttp.ClientSession() as http, http.put(f"http://{agent.address}/v1/kv/{key}", data=value,
                                                         headers=headers) as reply:
        assert reply.status == 200, await reply.text()


async def test_every_tier_starts_from_its_script_and_finds_its_peers_in_consul(
        tmp_path: Path, sample_models: Path, consul_agent: ConsulAgent, scripts: list[Launched]) -> None:  # noqa: F811
    agent = consul_agent
    cloud = await start(scripts, tmp_path, "cloud", "cloud-1", agent)
    worker = spawn(scripts, tmp_path, "worker", "worker-1", agent, FOGLINE_MODELS=sample_models,
                   FOGLINE_MODEL_NAMES="mlp")
    edge = await start(scripts, tmp_path, "edge", "edge-a", agent, FOGLINE_REGION="a")
    await start(scripts, tmp_path, "device", "dev-1", agent, FOGLINE_REGION="a", FOGLINE_MODELS=sample_models)
    await asyncio.to_thread(wait_ready, worker)

    def edge_sees(devices: set[str], workers: set[str]) -> bool:
        body = get_json(f"{edge.http}/v1/status")
        return ({d["id"] for d in body["devices"]} == devices
                and {w["id"] for w in body["cloud"]["workers"]} == workers)

    await poll(lambda: edge_sees({"dev-1"}, {"worker-1"}), 20, "the edge to find dev-1 and worker-1")
    await poll(lambda: {e["id"] for e in get_json(f"{cloud.http}/v1/status")["edges"]} == {"edge-a"}
               and {w["id"] for w in get_json(f"{cloud.http}/v1/status")["workers"]} == {"worker-1"},
               20, "the cloud master to find edge-a and worker-1")

    # The SDK finds the edge master in Consul.
    addresses = await find_edges(agent.settings(), region="a")
    assert addresses == [edge.grpc]
    async with Client(addresses, timeout_s=3.0) as client:
        assert (await client.infer("mlp", X)).node == "dev-1"
        assert (await client.infer("mlp", X, tier="cloud")).node == "worker-1"

        load = Load(client, INPUTS, concurrency=4, max_requests=100_000, max_seconds=60).start()
        # A new device, started by its script, gets traffic within 5 s of the start.
        launched = time.monotonic()
        spawn(scripts, tmp_path, "device", "dev-2", agent, FOGLINE_REGION="a", FOGLINE_MODELS=sample_models)
        await load.wait_until(lambda lo: lo.by_node(since=launched)["dev-2"] > 0, 10, "dev-2 to get traffic")
        assert time.monotonic() - launched < 5.0

        # A device killed with SIGKILL leaves routing at once; Consul still lists it (critical) for a minute.
        scripts[-1].process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        await load.wait_until(lambda lo: lo.by_node(since=time.monotonic() - 0.3)["dev-1"] >= 20
                              and not lo.by_node(since=time.monotonic() - 0.3)["dev-2"], 10,
                              "traffic to leave dev-2")
        assert time.monotonic() - killed < 3.0
        async with aiohttp.ClientSession() as http, http.get(f"http://{agent.address}/v1/agent/services",
                                                             headers={"X-Consul-Token": agent.token or ""}) as r:
            assert "dev-2" in await r.json()  # not yet deregistered by Consul
        await load.finish()
        assert not load.failures(), load.failures()[:5]

        # The catalog in Consul KV applies live: a new name, no restart.
        await kv_put(agent, "fogline/catalog", '[models.alias]\nplacement = "device"\ndevice_model = "mlp"\n')

        async def alias_served() -> bool:
            try:
                return (await client.infer("alias", X)).model == "alias"
            except Exception:
                return False

        async with asyncio.timeout(10):
            while not await alias_served():
                await asyncio.sleep(0.05)
    # ... and the policy too.
    await kv_put(agent, "fogline/policy", "device_queue_limit = 7\n")
    await poll(lambda: get_json(f"{edge.http}/v1/status")["discovery"]["policy"]["device_queue_limit"] == 7, 10,
               "the policy to apply")


async def test_traffic_survives_a_consul_outage_and_a_device_added_after_it_is_found(
        tmp_path: Path, sample_models: Path, consul_standin: ConsulAgent, scripts: list[Launched]) -> None:  # noqa: F811
    agent = consul_standin
    assert agent.standin is not None
    edge = await start(scripts, tmp_path, "edge", "edge-a", agent, FOGLINE_REGION="a")
    await start(scripts, tmp_path, "device", "dev-1", agent, FOGLINE_REGION="a", FOGLINE_MODELS=sample_models)
    await poll(lambda: len(get_json(f"{edge.http}/v1/status")["devices"]) == 1, 20, "the edge to find dev-1")
    async with Client(edge.grpc, timeout_s=3.0) as client:
        load = Load(client, INPUTS, concurrency=4, max_requests=100_000, max_seconds=60).start()
        await agent.standin.stop()
        stopped = time.monotonic()
        await poll(lambda: get_json(f"{edge.http}/v1/status")["discovery"]["connected"] is False, 20,
                   "the edge to notice Consul is gone")
        await load.wait_until(lambda lo: lo.by_node(since=time.monotonic() - 0.5)["dev-1"] >= 50, 10,
                              "traffic to go on without Consul")
        assert time.monotonic() - stopped > 0
        await agent.standin.start()
        added = time.monotonic()
        spawn(scripts, tmp_path, "device", "dev-2", agent, FOGLINE_REGION="a", FOGLINE_MODELS=sample_models)
        await load.wait_until(lambda lo: lo.by_node(since=added)["dev-2"] > 0, 20, "dev-2 to get traffic")
        await load.finish()
    assert not load.failures(), load.failures()[:5]
    body = get_json(f"{edge.http}/v1/status")["discovery"]
    assert body["connected"] is True
    async with aiohttp.ClientSession() as http, http.get(f"{edge.http}/metrics") as reply:
        metrics = await reply.text()
    assert 'fogline_discovery_connected{watch="device@a"} 1.0' in metrics
