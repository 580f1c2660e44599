"""Every tier started through its deploy/ script: with Consul discovery, against the Consul stand-in
(or a real `consul agent -dev` when CONSUL_BIN or a consul binary is there), the SDK finds an edge
master in Consul, a new device gets traffic within 5 s, a killed device leaves routing long before
Consul would drop it, traffic survives a Consul outage, and KV changes apply live; and secure by
default: on the default FOGLINE_HOST=0.0.0.0 a stack runs with real certificates (devices enrolling
with a join token) and mTLS, and plaintext only with FOGLINE_ALLOW_INSECURE=1."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from fogline.errors import UnavailableError
from fogline.local.launch import Launched, LaunchError, wait_ready
from fogline.sdk.client import TLS, Client
from fogline.sdk.edges import find_edges
from tests.consul_fixture import ConsulAgent, consul_agent, consul_standin  # noqa: F401  (fixtures)
from tests.integration.loadgen import Load, make_inputs
from tests.polling import poll, wait_for
from tests.processes import get_json

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
X = {"input": np.ones((1, 64), np.float32)}
INPUTS = {"mlp": make_inputs("mlp", 8, seed=5)}


def consul_settings(agent: ConsulAgent) -> dict[str, str]:
    """Consul discovery on loopback (where plaintext needs no FOGLINE_ALLOW_INSECURE)."""
    return {"FOGLINE_HOST": "127.0.0.1", "FOGLINE_DISCOVERY": "consul", "CONSUL_HTTP_ADDR": agent.address,
            "FOGLINE_CONSUL_CHECK_INTERVAL_S": str(agent.check_interval_s)}


def launch_script(workdir: Path, tier: str, name: str, agent: ConsulAgent | None, settings: dict[str, str]) -> Launched:
    """Start ``deploy/fogline-<tier>.sh <env file>`` with ``settings`` in the env file (mode 600: it may
    hold a join token), with Consul discovery at ``agent`` or else embedded; the script execs fogline,
    so the process is the tier's own."""
    ready, log_file, env_file = (workdir / f"{name}{suffix}" for suffix in (".ready.json", ".log", ".env"))
    values = {"FOGLINE_GRPC_PORT": "0", "FOGLINE_HTTP_PORT": "0", "FOGLINE_CONTROL_PORT": "0",
              "FOGLINE_ADMIN_PORT": "0", "FOGLINE_ENROL_PORT": "0", "FOGLINE_ID": name,
              "FOGLINE_READY_FILE": str(ready), **(consul_settings(agent) if agent else {}), **settings}
    env_file.touch(mode=0o600)
    env_file.write_text("# written by the test\n" + "".join(f"{k}={v}\n" for k, v in values.items()))
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"),
           "FOGLINE_BIN": f"{sys.executable} -m fogline"}
    if agent and agent.token:
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


def spawn(started: list[Launched], workdir: Path, tier: str, name: str, agent: ConsulAgent | None,
          **settings: Any) -> Launched:
    launched = launch_script(workdir, tier, name, agent, {k: str(v) for k, v in settings.items()})
    started.append(launched)
    return launched


async def start(started: list[Launched], workdir: Path, tier: str, name: str, agent: ConsulAgent | None,
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


# --- Secure by default ------------------------------------------------------------------------------


def certs(*args: str | Path) -> str:
    """Run ``fogline certs ...`` as an operator would; its stdout."""
    done = subprocess.run([sys.executable, "-m", "fogline", "certs", *map(str, args)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


class Fleet:
    """A fleet CA made with ``fogline certs init``, and certificates issued from it for 127.0.0.1."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca_dir = root / "ca"
        certs("init", self.ca_dir)

    def issue(self, service: str, member_id: str, region: str = "") -> dict[str, str]:
        """The FOGLINE_TLS_* settings of a certificate for ``member_id`` in ``<root>/tls/<id>``."""
        out = self.root / "tls" / member_id
        certs("issue", "--ca", self.ca_dir, "--service", service, "--id", member_id,
              *(["--region", region] if region else []), "--host", "127.0.0.1", "--out", out)
        return self.files(member_id)

    def files(self, member_id: str) -> dict[str, str]:
        out = self.root / "tls" / member_id
        return {"FOGLINE_TLS_CERT": str(out / "cert.pem"), "FOGLINE_TLS_KEY": str(out / "key.pem"),
                "FOGLINE_TLS_CA": str(out / "ca.pem")}

    def only_ca(self, member_id: str) -> dict[str, str]:
        """The settings of a node that enrols: the fleet CA is there, its certificate is not yet."""
        out = self.root / "tls" / member_id
        out.mkdir(parents=True)
        (out / "ca.pem").write_bytes((self.ca_dir / "ca.pem").read_bytes())
        return self.files(member_id)

    def client(self) -> dict[str, str]:
        """A user's client certificate, as ``get_json(tls=...)`` takes it."""
        files = self.issue("client", "user")
        return {"ca": files["FOGLINE_TLS_CA"], "client_cert": files["FOGLINE_TLS_CERT"],
                "client_key": files["FOGLINE_TLS_KEY"]}


def private_file(path: Path, text: str) -> Path:
    path.touch(mode=0o600)
    path.write_text(text)
    return path


def admin_get(address: str, path: str, ca: str, token: str | None) -> tuple[int, Any]:
    """GET an admin route over HTTPS (trusting the fleet CA), with the admin token if given."""
    request = urllib.request.Request(f"https://{address}{path}",
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5, context=ssl.create_default_context(cafile=ca)) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, None


def container_healthcheck(tier: str) -> str:
    """The Python code the HEALTHCHECK of ``deploy/containers/Containerfile.<tier>`` runs."""
    line = next(line for line in (DEPLOY / "containers" / f"Containerfile.{tier}").read_text().splitlines()
                if line.startswith("HEALTHCHECK"))
    words = shlex.split(line.split(" CMD ", 1)[1])
    assert words[1] == "-c"
    return words[2]


async def test_a_secure_stack_starts_from_the_scripts_on_all_interfaces_with_real_certificates(
        tmp_path: Path, sample_models: Path, scripts: list[Launched]) -> None:
    fleet = Fleet(tmp_path)
    # NOTE: FOGLINE_HOST is left at its default, 0.0.0.0: the scripts (and the processes) allow it with TLS.
    everywhere = {"FOGLINE_ADVERTISE_HOST": "127.0.0.1"}
    admin_token = "admin-" + os.urandom(16).hex()
    token_file = private_file(tmp_path / "admin.token", admin_token)
    cloud = await start(scripts, tmp_path, "cloud", "cloud-1", None, **everywhere, **fleet.issue("cloud", "cloud-1"),
                        FOGLINE_CA_DIR=fleet.ca_dir, FOGLINE_ADMIN_TOKEN_FILE=token_file)
    worker = spawn(scripts, tmp_path, "worker", "worker-1", None, **everywhere, **fleet.issue("worker", "worker-1"),
                   FOGLINE_CLOUD_CONTROL=cloud.endpoints["control"], FOGLINE_MODELS=sample_models,
                   FOGLINE_MODEL_NAMES="mlp")
    edge = await start(scripts, tmp_path, "edge", "edge-a", None, **everywhere, **fleet.issue("edge", "edge-a", "a"),
                       FOGLINE_REGION="a", FOGLINE_CLOUD_CONTROL=cloud.endpoints["control"])
    # Both devices enrol at their edge master (which forwards to the cloud master, holding the CA) with
    # one join token: dev-1 reads it from a file, dev-2 from FOGLINE_JOIN_TOKEN in its env file.
    join_token = certs("token", "--ca", fleet.ca_dir, "--service", "device", "--region", "a", "--ttl", "10m",
                       "--uses", "2").strip()
    device = {**everywhere, "FOGLINE_REGION": "a", "FOGLINE_MODELS": sample_models,
              "FOGLINE_EDGE_CONTROL": edge.endpoints["control"], "FOGLINE_ENROL": edge.endpoints["enrol"]}
    dev_1 = spawn(scripts, tmp_path, "device", "dev-1", None, **device, **fleet.only_ca("dev-1"),
                  FOGLINE_JOIN_TOKEN_FILE=private_file(tmp_path / "join.token", join_token + "\n"))
    dev_2 = spawn(scripts, tmp_path, "device", "dev-2", None, **device, **fleet.only_ca("dev-2"),
                  FOGLINE_JOIN_TOKEN=join_token)
    for launched in (worker, dev_1, dev_2):
        await asyncio.to_thread(wait_ready, launched)
    user = fleet.client()

    def edge_sees(devices: set[str], workers: set[str]) -> bool:
        body = get_json(f"{edge.http}/v1/status", tls=user)
        return ({d["id"] for d in body["devices"]} == devices
                and {w["id"] for w in body["cloud"]["workers"]} == workers)

    await poll(lambda: edge_sees({"dev-1", "dev-2"}, {"worker-1"}), 20, "the edge to find dev-1, dev-2 and worker-1")
    await poll(lambda: {e["id"] for e in get_json(f"{cloud.http}/v1/status", tls=user)["edges"]} == {"edge-a"}, 20,
               "the cloud master to find edge-a")
    for enrolled in ("dev-1", "dev-2"):
        assert (tmp_path / "tls" / enrolled / "cert.pem").is_file()
        assert (tmp_path / "tls" / enrolled / "key.pem").stat().st_mode & 0o777 == 0o600

    tls = TLS(ca=user["ca"], cert=user["client_cert"], key=user["client_key"])
    async with Client(edge.grpc, timeout_s=5.0, tls=tls) as client:
        assert (await client.infer("mlp", X)).node in {"dev-1", "dev-2"}
        assert (await client.infer("mlp", X, tier="cloud")).node == "worker-1"
    # FOGLINE_CLIENT_AUTH defaults to require: a client without a fleet certificate is turned away.
    async with Client(edge.grpc, timeout_s=2.0, tls=TLS(ca=user["ca"])) as client:
        with pytest.raises(UnavailableError):
            await client.infer("mlp", X)

    # The admin API of the cloud master: HTTPS, behind the token of FOGLINE_ADMIN_TOKEN_FILE.
    assert admin_get(cloud.endpoints["admin"], "/v1/admin/members", user["ca"], None)[0] == 401
    status, members = admin_get(cloud.endpoints["admin"], "/v1/admin/members", user["ca"], admin_token)
    assert status == 200 and {m["id"] for m in members} == {"edge-a", "worker-1"}

    # The container image's health check speaks HTTPS to a TLS process.
    probe = subprocess.run([sys.executable, "-c", container_healthcheck("edge")], capture_output=True, text=True,
                           timeout=30, check=False,
                           env={**os.environ, "FOGLINE_TLS_CA": user["ca"],
                                "FOGLINE_HTTP_PORT": edge.endpoints["http"].rsplit(":", 1)[1]})
    assert probe.returncode == 0, probe.stderr

    for launched in scripts:
        assert join_token not in launched.log(), f"{launched.name} logged the join token"
        assert admin_token not in launched.log(), f"{launched.name} logged the admin token"


async def test_plaintext_on_all_interfaces_only_with_allow_insecure(tmp_path: Path, scripts: list[Launched]) -> None:
    refused = spawn(scripts, tmp_path, "edge", "edge-r", None, FOGLINE_ADVERTISE_HOST="127.0.0.1", FOGLINE_REGION="a")
    assert wait_for(lambda: refused.process.poll() is not None, 30, "the script to refuse") and \
        refused.process.returncode == 2
    assert "FOGLINE_TLS_CERT, FOGLINE_TLS_KEY and FOGLINE_TLS_CA are not set, and FOGLINE_HOST=0.0.0.0" in refused.log()
    with pytest.raises(LaunchError):
        wait_ready(refused, 1)

    lab = await start(scripts, tmp_path, "edge", "edge-lab", None, FOGLINE_ADVERTISE_HOST="127.0.0.1",
                      FOGLINE_REGION="a", FOGLINE_ALLOW_INSECURE="1")
    assert "WARNING: FOGLINE_ALLOW_INSECURE=1: fogline edge listens on 0.0.0.0 WITHOUT TLS." in lab.log()
    assert get_json(f"{lab.http}/v1/status")["id"] == "edge-lab"
