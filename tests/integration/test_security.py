"""Acceptance tests of Fogline's security, with real processes and real TLS handshakes.

A secure ``fogline up`` (one per module, free ports, seeded models) is attacked while it serves:
plaintext on every gRPC port, a certificate of another CA, and a genuinely fleet-signed certificate of
a compromised device that tries to impersonate, evict, poison and flood its edge master. The admin API
holds to its token. Then a small hand-started region (cloud master holding the CA, an edge master
with API keys, a device with a hand-issued certificate) shows enrolment with join tokens, renewal,
rotation on disk and API keys. Last, no secret used in the module appears in any log, status page or
metric of either.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from fogline.adapters.tls.certs import FleetCA, identity_of, serial_of, verify_chain, write_identity
from fogline.adapters.tls.material import TlsFiles, write_private
from fogline.core.security.identity import Identity
from fogline.core.security.tokens import JoinTokens, token_id
from fogline.errors import PermissionDeniedError, UnauthenticatedError, UnavailableError
from fogline.local.launch import Launched
from fogline.local.stack import DEVICE_MODELS
from fogline.sdk.client import TLS, Client
from tests.integration.attacker import (
    PLAINTEXT,
    ControlAttacker,
    Credentials,
    Heartbeats,
    control,
    dead_address,
    member,
    plaintext_health,
    presented_serial,
)
from tests.integration.loadgen import ATOL, RTOL, Load, Reference, check_results, make_inputs
from tests.integration.stackrun import Up, client_tls, running_stack
from tests.integration.test_tritonclient import mlp_answers, run_probe
from tests.polling import poll, until, wait_for
from tests.processes import ProcessGroup, get_json

pytestmark = pytest.mark.integration

INPUTS = {"mlp": make_inputs("mlp", 16, seed=21), "cnn": make_inputs("cnn", 8, seed=22)}
TIMEOUT_S = 5.0
OK, DENIED, UNAVAILABLE = grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAVAILABLE
INTRUDER = Identity(service="device", id="intruder", region="region-a")
REGION = "r1"
ENROLLED_TTL_S = 6


# --- Secrets used in the module (checked last: none may leak) -------------------------------------


@dataclass
class Secrets:
    """Every secret the module handles, by what it is; private keys as their PEM files' bodies."""

    values: dict[str, str] = field(default_factory=dict, repr=False)

    def add(self, what: str, value: str | bytes) -> None:
        """Remember a secret (a key, PEM, is remembered by the base64 lines of its body)."""
        text = value.decode() if isinstance(value, bytes) else value
        if "-----BEGIN" in text:
            for i, line in enumerate(pem_body_lines(text)):
                self.values[f"{what} (line {i + 1} of its body)"] = line
        else:
            self.values[what] = text.strip()

    def add_key_files(self, root: Path) -> None:
        """Every private key under ``root``: ``key.pem`` files and CA keys."""
        for path in [*root.rglob("key.pem"), *root.rglob("*.key")]:
            self.add(f"private key {path.relative_to(root)}", path.read_bytes())


def pem_body_lines(pem: str) -> list[str]:
    """The base64 lines between the PEM markers of every block in ``pem`` (long enough to be unique)."""
    lines, inside = [], False
    for line in pem.splitlines():
        if line.startswith("-----BEGIN"):
            inside = True
        elif line.startswith("-----END"):
            inside = False
        elif inside and len(line.strip()) >= 16:
            lines.append(line.strip())
    return lines


@pytest.fixture(scope="module")
def secrets() -> Secrets:
    """The secrets the module's tests handle, for the last test to look for."""
    return Secrets()


# --- The secure stack ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, sample_models: Path, digits_models: Path) -> Iterator[Up]:
    """One secure ``fogline up`` on free ports, with the models already built."""
    with running_stack(tmp_path_factory.mktemp("secure-stack"), sample_models, digits_models) as up:
        yield up


def processes_of(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Every process of a stack's state: cloud, worker, edges, devices."""
    edges = [r["edge"] for r in state["regions"].values()]
    return [state["cloud"], state["worker"], *edges, *state["devices"]]


def grpc_ports(state: dict[str, Any]) -> dict[str, str]:
    """Every gRPC port of the stack, by ``<process> <kind>``."""
    return {f"{p['id']} {kind}": p[kind] for p in processes_of(state)
            for kind in ("grpc", "control", "enrol") if kind in p}


def ssl_context(tls: dict[str, str], *, client_cert: bool = True) -> ssl.SSLContext:
    """Trust the fleet CA (a state file's ``tls``), and present the users' client certificate."""
    context = ssl.create_default_context(cafile=tls["ca"])
    if client_cert:
        context.load_cert_chain(tls["client_cert"], tls["client_key"])
    return context


def get_text(url: str, tls: dict[str, str]) -> str:
    """GET ``url`` (HTTPS, the users' client certificate) as text."""
    with urllib.request.urlopen(url, timeout=5, context=ssl_context(tls)) as reply:
        return str(reply.read().decode("utf-8", "replace"))


def admin(address: str, path: str, tls: dict[str, str], *, method: str = "GET", token: str | None = None,
          body: Any = None, client_cert: bool = False) -> tuple[int, Any]:
    """One admin API request: (HTTP status, JSON answer). Without ``client_cert`` no certificate is sent."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    data = None
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    request = urllib.request.Request(f"https://{address}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5, context=ssl_context(tls, client_cert=client_cert)) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def admin_token(state: dict[str, Any]) -> str:
    return Path(state["tls"]["admin_token_file"]).read_text().strip()


def members_at(master: dict[str, Any], state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A master's members as its admin API lists them, by id."""
    status, members = admin(master["admin"], "/v1/admin/members", state["tls"], token=admin_token(state))
    assert status == 200, (status, members)
    return {m["id"]: m for m in members}


def routed_devices(edge: dict[str, Any], tls: dict[str, str]) -> set[str]:
    """The devices an edge master routes to, as its /v1/status says."""
    return {d["id"] for d in get_json(f"https://{edge['http']}/v1/status", tls=tls)["devices"] if d["healthy"]}


def intruder_credentials(state: dict[str, Any], secrets: Secrets) -> Credentials:
    """A compromised device's genuine fleet certificate: spiffe://fogline/device/region-a/intruder."""
    cert, key = FleetCA.load(Path(state["tls"]["ca_dir"])).issue(INTRUDER, ttl_s=3600, hosts=["127.0.0.1"])
    assert key is not None
    secrets.add("the intruder's private key", key)
    return Credentials(ca=Path(state["tls"]["ca"]).read_bytes(), cert=cert, key=key)


async def served_since(load: Load, since: float, count: int, timeout_s: float, what: str) -> None:
    """Wait until ``count`` requests that started after ``since`` succeeded (none may fail)."""
    await load.wait_until(lambda lo: sum(o.started >= since for o in lo.ok()) >= count, timeout_s, what)


# --- 1. Plaintext and the SDK ----------------------------------------------------------------------


async def test_plaintext_is_refused_on_every_grpc_and_https_port(stack: Up) -> None:
    state = stack.state()
    ports = grpc_ports(state)
    kinds = {name.rsplit(" ", 1)[1] for name in ports if name.startswith("cloud ")}
    assert kinds == {"grpc", "control", "enrol"}, ports
    for region in state["regions"].values():
        assert {f"{region['edge']['id']} {k}" for k in ("grpc", "control", "enrol")} <= set(ports), ports
    codes = await asyncio.gather(*(plaintext_health(address) for address in ports.values()))
    answered = dict(zip(ports, codes, strict=True))
    assert {name: code for name, code in answered.items() if code is not UNAVAILABLE} == {}
    assert len(answered) == 3 + 3 * 2 + 4 + 1

    web = [p[kind] for p in processes_of(state) for kind in ("http", "admin") if kind in p]
    for address in web:
        with pytest.raises((OSError, http.client.HTTPException)):
            urllib.request.urlopen(f"http://{address}/healthz", timeout=5).close()


async def test_the_sdk_with_the_client_certificate_is_answered_and_without_one_refused(
        stack: Up, reference: Reference) -> None:
    state = stack.state()
    endpoints = {"edge": state["edge"]["grpc"], "device": state["devices"][0]["grpc"], "cloud": state["cloud"]["grpc"]}
    for where, endpoint in endpoints.items():
        async with Client(endpoint, timeout_s=TIMEOUT_S, tls=client_tls(state)) as client:
            for model, xs in INPUTS.items():
                for x in xs[:2]:
                    result = await client.infer(model, {"input": x})
                    np.testing.assert_allclose(result.outputs["logits"], reference(model, x), rtol=RTOL, atol=ATOL,
                                               err_msg=f"{model} via the {where}")
                    assert result.tier == "device", (where, result.parameters)

    only_ca = TLS(ca=state["tls"]["ca"])
    async with Client(state["devices"][0]["grpc"], timeout_s=TIMEOUT_S, tls=only_ca) as client:
        with pytest.raises(UnavailableError):
            await client.infer("mlp", {"input": INPUTS["mlp"][0]})


# --- 2. tritonclient over TLS ----------------------------------------------------------------------


def test_tritonclient_over_tls_against_edge_device_and_cloud(stack: Up, reference: Reference,
                                                             tmp_path: Path) -> None:
    state = stack.state()
    edge, device, cloud = state["edge"]["grpc"], state["devices"][0]["grpc"], state["cloud"]["grpc"]
    x = np.random.default_rng(9).standard_normal((2, 64)).astype(np.float32)
    expected = reference("mlp", x)
    answers = run_probe(x, tmp_path, edge, device, cloud, tls=state["tls"])
    assert set(answers) == {edge, device, cloud}
    every_device = {d["id"] for d in state["devices"]}
    region_a = {d["id"] for d in state["regions"]["region-a"]["devices"]}
    for url, answer in answers.items():
        where = {edge: "edge master", device: "device node", cloud: "cloud master"}[url]
        for params in mlp_answers(answer, expected, where):
            assert params["fogline.tier"] == "device", (where, params)
            if url == device:
                assert params["fogline.node"] == state["devices"][0]["id"], (where, params)
            elif url == edge:
                assert params["fogline.node"] in region_a and params["fogline.route"] == "placement", (where, params)
            else:
                assert params["fogline.node"] in every_device, (where, params)


# --- 3. The attacks, under traffic -----------------------------------------------------------------


async def strangers_fail_the_handshake(state: dict[str, Any], tmp_path: Path, secrets: Secrets) -> None:
    """No TLS, or a certificate of another CA (for a real device's identity): refused in the handshake."""
    edge, cloud = state["edge"], state["cloud"]
    foreign = FleetCA.init(tmp_path / "foreign-ca")
    secrets.add("the foreign CA's key", (tmp_path / "foreign-ca" / "ca.key").read_bytes())
    cert, key = foreign.issue(Identity(service="device", id="region-a-device-0", region="region-a"), ttl_s=3600,
                              hosts=["127.0.0.1"])
    assert key is not None
    secrets.add("the foreign certificate's key", key)
    forged = Credentials(ca=Path(state["tls"]["ca"]).read_bytes(), cert=cert, key=key)
    real_device = member("region-a-device-0", region="region-a", address=dead_address())
    for credentials, what in ((PLAINTEXT, "no TLS"), (forged, "a certificate of another CA")):
        async with control(edge["control"], credentials) as at_edge, \
                control(cloud["control"], credentials) as at_cloud:
            assert (await at_edge.register(real_device)).code is UNAVAILABLE, what
            assert (await at_edge.deregister("region-a-device-0")).code is UNAVAILABLE, what
            assert (await at_cloud.register(member("intruder", service="worker"))).code is UNAVAILABLE, what
            assert (await at_cloud.watch("intruder", "region-a")).code is UNAVAILABLE, what
    write_identity(tmp_path / "forged", cert, key, foreign.cert_pem)
    forged_tls = TLS(ca=state["tls"]["ca"], cert=tmp_path / "forged" / "cert.pem", key=tmp_path / "forged" / "key.pem")
    async with Client(edge["grpc"], timeout_s=TIMEOUT_S, tls=forged_tls) as client:
        with pytest.raises(UnavailableError):
            await client.infer("mlp", {"input": INPUTS["mlp"][0]})


async def a_stolen_certificate_acts_for_itself_only(state: dict[str, Any], intruder: Credentials) -> None:
    """The intruder cannot be a real device, a worker or an edge, nor evict, poison or watch; nor can users."""
    edge, cloud = state["edge"], state["cloud"]
    async with control(edge["control"], intruder) as at_edge, control(cloud["control"], intruder) as at_cloud:
        impostor = member("region-a-device-0", region="region-a", address=dead_address())
        answer = await at_edge.register(impostor)
        assert answer.code is DENIED, answer
        for service, region in (("worker", ""), ("edge", "region-a")):
            answer = await at_cloud.register(member("intruder", service=service, region=region, address=dead_address()))
            assert answer.code is DENIED, (service, answer)
        evictions = [await at_edge.deregister("region-a-device-0") for _ in range(50)]
        assert [a.code for a in evictions] == [DENIED] * 50, {a.details for a in evictions}
        answer = await at_edge.heartbeat("region-a-device-0", models=["junk"])
        assert answer.code is DENIED, answer
        answer = await at_cloud.watch("intruder", "region-a")
        assert answer.code is DENIED, answer
    users = Credentials.files(state["tls"]["ca"], state["tls"]["client_cert"], state["tls"]["client_key"])
    async with control(edge["control"], users) as as_user:
        answer = await as_user.register(member("user", region="region-a", address=dead_address()))
        assert answer.code is DENIED, answer


async def an_intruder_at_a_dead_port_never_takes_traffic(state: dict[str, Any], attacker: ControlAttacker,
                                                         load: Load) -> Heartbeats:
    """It may register itself, but is never checked, so never routed to; it cannot register others."""
    edge = state["edge"]
    answer = await attacker.register(member(INTRUDER.id, region="region-a", address=dead_address(), models=["mlp"]))
    assert answer.code is OK, answer
    beats = Heartbeats(attacker, INTRUDER.id).start()
    registered = time.monotonic()
    listed = await poll(lambda: members_at(edge, state).get(INTRUDER.id), 5, "the intruder in the edge's members")
    assert listed["checked"] is False, listed
    await served_since(load, registered, 200, 30, "traffic after the intruder registered")
    assert members_at(edge, state)[INTRUDER.id]["checked"] is False
    assert INTRUDER.id not in routed_devices(edge, state["tls"])
    assert INTRUDER.id not in set(load.by_node())
    for i in range(10):
        answer = await attacker.register(member(f"intruder-{i}", region="region-a", address=dead_address()))
        assert answer.code is DENIED, (i, answer)
    return beats


async def test_attacks_on_the_control_plane_fail_while_region_a_serves(
        stack: Up, reference: Reference, tmp_path: Path, secrets: Secrets) -> None:
    state = stack.state()
    edge = state["edge"]
    real = {d["id"] for d in state["regions"]["region-a"]["devices"]}
    intruder = intruder_credentials(state, secrets)
    async with Client(edge["grpc"], timeout_s=TIMEOUT_S, tls=client_tls(state)) as client:
        load = Load(client, INPUTS, concurrency=4, max_requests=1_000_000, max_seconds=100).start()
        await load.wait_until(lambda lo: real <= set(lo.by_node()), 15, "traffic on both devices of region-a")
        await strangers_fail_the_handshake(state, tmp_path, secrets)
        await a_stolen_certificate_acts_for_itself_only(state, intruder)
        async with control(edge["control"], intruder) as attacker:
            beats = await an_intruder_at_a_dead_port_never_takes_traffic(state, attacker, load)
            try:
                names = [f"m{i:05d}" for i in range(40_000)]
                answer = await attacker.register(member(INTRUDER.id, region="region-a", address=dead_address(),
                                                        models=names))
                assert answer.code is grpc.StatusCode.INVALID_ARGUMENT, answer
                flooded = time.monotonic()
                await served_since(load, flooded, 100, 20, "traffic after the flood of model names")
                assert real <= routed_devices(edge, state["tls"])
            finally:
                await beats.stop()
        outcomes = await load.finish()
    check_results(outcomes, INPUTS, reference)
    assert {o.node for o in outcomes} <= real, {o.node for o in outcomes}

    members = members_at(edge, state)
    assert all(members[d]["checked"] and members[d]["models"] == len(DEVICE_MODELS) for d in real), members
    assert routed_devices(edge, state["tls"]) == real
    await poll(lambda: topology_is_real(state), 10, "the cloud's topology to show the real fleet only")


def topology_is_real(state: dict[str, Any]) -> bool:
    """The cloud's /v1/topology: every edge healthy, with its real devices only, all healthy."""
    topology = get_json(f"https://{state['cloud']['http']}/v1/topology", tls=state["tls"])
    for name, region in state["regions"].items():
        edges = topology["regions"].get(name, {}).get("edges", [])
        if [e["id"] for e in edges] != [region["edge"]["id"]] or not edges[0]["healthy"]:
            return False
        devices = {d["id"]: d["healthy"] for d in edges[0]["devices"]}
        if devices != {d["id"]: True for d in region["devices"]}:
            return False
    return True


# --- 4. The admin API ------------------------------------------------------------------------------


async def test_the_admin_api_takes_the_admin_token_and_evicts_members(stack: Up, secrets: Secrets) -> None:
    state = stack.state()
    edge, cloud, tls = state["edge"], state["cloud"], state["tls"]
    token = admin_token(state)
    secrets.add("the admin token", token)
    path = "/v1/admin/members"
    assert admin(edge["admin"], path, tls)[0] == 401
    assert admin(edge["admin"], path, tls, token="not-the-admin-token")[0] == 401
    assert admin(edge["admin"], path, tls, client_cert=True)[0] == 403  # a fleet certificate, not an admin's
    status, members = admin(edge["admin"], path, tls, token=token)
    assert status == 200 and {d["id"] for d in state["regions"]["region-a"]["devices"]} <= {m["id"] for m in members}
    assert admin(edge["admin"], f"{path}/region-a-device-0", tls, method="DELETE")[0] == 401

    intruder = intruder_credentials(state, secrets)
    async with control(edge["control"], intruder) as attacker:
        assert (await attacker.register(member(INTRUDER.id, region="region-a", address=dead_address()))).code is OK
        beats = Heartbeats(attacker, INTRUDER.id).start()
        try:
            await poll(lambda: INTRUDER.id in members_at(edge, state), 5, "the intruder in the edge's members")
            assert admin(edge["admin"], f"{path}/{INTRUDER.id}", tls, method="DELETE", token=token) == \
                (200, {"evicted": INTRUDER.id})
            assert INTRUDER.id not in members_at(edge, state)
            evicted = len(beats.answers)
            await until(lambda: any(not known for _, known in beats.answers[evicted:]), 5,
                        "a heartbeat of the evicted intruder to be answered known=false")
            assert INTRUDER.id not in members_at(edge, state)
        finally:
            await beats.stop()
    assert admin(edge["admin"], f"{path}/{INTRUDER.id}", tls, method="DELETE", token=token)[0] == 404

    status, made = admin(cloud["admin"], "/v1/admin/tokens", tls, method="POST", token=token,
                         body={"service": "device", "region": "region-a", "ttl_s": 600, "uses": 1})
    assert status == 200, made
    secrets.add("a join token made by the admin API", made["token"])
    status, live = admin(cloud["admin"], "/v1/admin/tokens", tls, token=token)
    assert status == 200 and token_id(made["token"]) in {t["id"] for t in live}, live
    assert made["token"] not in json.dumps(live)
    assert admin(cloud["admin"], "/v1/admin/tokens", tls, method="POST", body={"service": "device"})[0] == 401


# --- The hand-started secure region ----------------------------------------------------------------


@dataclass
class Region:
    """A cloud master holding the CA (enrolled certificates live 6 s), an edge master of region r1 with
    API keys, and a device with a hand-issued certificate."""

    root: Path
    ca_dir: Path
    processes: ProcessGroup
    cloud: Launched
    edge: Launched
    device: Launched
    client: TLS
    tls: dict[str, str]
    ops_key: str = field(repr=False)
    alice_key: str = field(repr=False)

    def alive(self) -> list[Launched]:
        return [p for p in self.processes.processes if p.process.poll() is None and p.endpoints]


def fogline_cli(*args: str | Path) -> str:
    """Run ``python -m fogline ARGS``; its stdout, stripped."""
    done = subprocess.run([sys.executable, "-m", "fogline", *map(str, args)], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, f"fogline {' '.join(map(str, args))} failed:\n{done.stderr}"
    return done.stdout.strip()


def tls_flags(files: TlsFiles) -> list[str]:
    return ["--tls-cert", str(files.cert), "--tls-key", str(files.key), "--tls-ca", str(files.ca)]


def issue(ca: FleetCA, root: Path, identity: Identity) -> TlsFiles:
    """A certificate for ``identity`` in ``root/<id>/``."""
    cert, key = ca.issue(identity, ttl_s=3600, hosts=["127.0.0.1"])
    assert key is not None
    return write_identity(root / identity.id, cert, key, ca.cert_pem)


def edge_status(region: Region) -> dict[str, Any]:
    status: dict[str, Any] = get_json(f"https://{region.edge.endpoints['http']}/v1/status", tls=region.tls)
    return status


def region_routes(region: Region) -> set[str]:
    """The devices the region's edge master routes to."""
    return {d["id"] for d in edge_status(region)["devices"] if d["healthy"]}


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory, sample_models: Path, secrets: Secrets) -> Iterator[Region]:
    """The hand-started region: a CA from ``fogline certs init``, the edge's certificate from ``fogline certs
    issue``, the others issued in-process, API keys from ``fogline keys create``."""
    root = tmp_path_factory.mktemp("secure-region")
    ca_dir = root / "ca"
    fogline_cli("certs", "init", ca_dir)
    fogline_cli("certs", "issue", "--ca", ca_dir, "--service", "edge", "--region", REGION, "--id", "edge-r1",
                "--host", "127.0.0.1", "--ttl", "1d", "--out", root / "edge-r1")
    edge_files = TlsFiles(root / "edge-r1" / "cert.pem", root / "edge-r1" / "key.pem", root / "edge-r1" / "ca.pem")
    ca = FleetCA.load(ca_dir)
    cloud_files = issue(ca, root, Identity(service="cloud", id="cloud"))
    device_files = issue(ca, root, Identity(service="device", id="d-issued", region=REGION))
    user = issue(ca, root, Identity(service="client", id="user"))
    keys = root / "api-keys.toml"
    alice = fogline_cli("keys", "create", keys, "--name", "alice", "--model", "mlp")
    ops = fogline_cli("keys", "create", keys, "--name", "ops")
    secrets.add("the API key of alice", alice)
    secrets.add("the API key of ops", ops)
    processes = ProcessGroup(root / "run")
    try:
        cloud = processes.cloud("cloud", *tls_flags(cloud_files), "--ca-dir", str(ca_dir),
                                "--enrolled-cert-ttl-s", str(ENROLLED_TTL_S))
        edge = processes.edge("edge-r1", REGION, *tls_flags(edge_files), "--api-keys", str(keys), cloud=cloud)
        device = processes.device("d-issued", sample_models, edge, REGION, *tls_flags(device_files))
        tls = {"ca": str(user.ca), "client_cert": str(user.cert), "client_key": str(user.key)}
        made = Region(root, ca_dir, processes, cloud, edge, device, TLS(ca=user.ca, cert=user.cert, key=user.key),
                      tls, ops, alice)
        wait_for(lambda: region_routes(made) == {"d-issued"}, 30, "d-issued to be routed to by edge-r1")
        yield made
    finally:
        processes.stop_all()


# --- 6. Join tokens: enrolment and renewal ---------------------------------------------------------


def token_file(region: Region, name: str, token: str, secrets: Secrets) -> Path:
    secrets.add(f"the join token {name}", token)
    path = region.root / f"{name}.token"
    write_private(path, token.encode())
    return path


def enrolling_device(region: Region, node_id: str, token: Path, models: Path, *, wait: bool) -> Launched:
    """A device with a join token and no certificate yet (its files are to be written in root/<id>/)."""
    files = region.root / node_id
    return region.processes.start(
        node_id, "device", "--region", REGION, "--id", node_id, "--models", str(models),
        "--master", region.edge.endpoints["control"], "--tls-cert", str(files / "cert.pem"),
        "--tls-key", str(files / "key.pem"), "--tls-ca", str(region.ca_dir / "ca.pem"),
        "--join-token-file", str(token), "--enrol", region.edge.endpoints["enrol"], wait=wait)


def refused(device: Launched, code: str, region: Region) -> None:
    """The device exited with 2, its log saying ``code``, and wrote no certificate."""
    wait_for(lambda: device.process.poll() is not None, 30, f"{device.name} to exit")
    assert device.process.returncode == 2, (device.process.returncode, device.log_tail())
    assert code in device.log(), device.log_tail()
    assert not (region.root / device.name / "cert.pem").exists()


class SerialWatch:
    """When the serial of a certificate file changed, as seen by polling it."""

    def __init__(self, cert: Path) -> None:
        self.cert = cert
        self.seen: list[tuple[float, int]] = [(time.monotonic(), serial_of(cert.read_bytes()))]

    def changes(self) -> int:
        """Poll once; how many times the serial has changed so far."""
        try:
            serial = serial_of(self.cert.read_bytes())
        except (OSError, ValueError):
            return len(self.seen) - 1  # NOTE: caught between two writes: look again next time
        if serial != self.seen[-1][1]:
            self.seen.append((time.monotonic(), serial))
        return len(self.seen) - 1


async def test_a_device_enrols_with_a_join_token_and_renews_its_certificate(
        region: Region, sample_models: Path, reference: Reference, secrets: Secrets) -> None:
    token = fogline_cli("certs", "token", "--ca", region.ca_dir, "--service", "device", "--region", REGION,
                        "--ttl", "1h")
    first = token_file(region, "first", token, secrets)
    enrolled = enrolling_device(region, "d-enrolled", first, sample_models, wait=True)
    try:
        cert = region.root / "d-enrolled" / "cert.pem"
        assert identity_of(cert.read_bytes()) == Identity(service="device", id="d-enrolled", region=REGION)
        verify_chain(cert.read_bytes(), (region.ca_dir / "ca.pem").read_bytes())
        await poll(lambda: "d-enrolled" in region_routes(region), 15, "d-enrolled to be routed to by edge-r1")

        expired = JoinTokens(region.ca_dir / "tokens", clock=lambda: time.time() - 7200).create(
            service="device", region=REGION, ttl_s=60)
        worker = fogline_cli("certs", "token", "--ca", region.ca_dir, "--service", "worker", "--ttl", "1h")
        attempts = {  # all at once: each is a process start
            "UNAUTHENTICATED": [enrolling_device(region, "d-reused", first, sample_models, wait=False),
                                enrolling_device(region, "d-expired", token_file(region, "expired", expired, secrets),
                                                 sample_models, wait=False)],
            "PERMISSION_DENIED": [enrolling_device(region, "d-worker", token_file(region, "worker", worker, secrets),
                                                   sample_models, wait=False)]}

        async with Client(region.edge.grpc, timeout_s=TIMEOUT_S, tls=region.client, api_key=region.ops_key) as client:
            load = Load(client, INPUTS, concurrency=4, max_requests=1_000_000, max_seconds=60).start()
            await load.wait_until(lambda lo: lo.by_node()["d-enrolled"] >= 10, 15, "traffic on d-enrolled")
            for code, devices in attempts.items():
                for device in devices:
                    await asyncio.to_thread(refused, device, code, region)
            watch = SerialWatch(cert)
            await until(lambda: watch.changes() >= 2, 20, "two renewals of d-enrolled's certificate",
                        interval_s=0.02)
            renewed = time.monotonic()
            await load.wait_until(lambda lo: sum(o.node == "d-enrolled" and o.started >= renewed for o in lo.ok()) >= 10,
                                  15, "traffic on d-enrolled after its renewals")
            outcomes = await load.finish()
        check_results(outcomes, INPUTS, reference)
        assert identity_of(cert.read_bytes()) == Identity(service="device", id="d-enrolled", region=REGION)
        assert enrolled.process.poll() is None
        gaps = [round(b[0] - a[0], 3) for a, b in zip(watch.seen, watch.seen[1:], strict=False)]
        # the enrolled lifetime is 6 s: renewed at 2/3 of it, about every 4 s
        assert gaps[-1] >= 2.0, f"d-enrolled's certificate was renewed {gaps[-1]} s after the previous renewal " \
                                f"(gaps {gaps}); expected about {ENROLLED_TTL_S * 2 / 3:g} s"
    finally:
        enrolled.process.terminate()
        enrolled.process.wait(20)


# --- 7. Rotation on disk ---------------------------------------------------------------------------


async def test_a_rotated_edge_certificate_serves_new_connections_without_a_restart(
        region: Region, reference: Reference) -> None:
    pids = {p.name: p.pid for p in (region.cloud, region.edge, region.device)}
    files = region.root / "edge-r1"
    served = lambda address: presented_serial(address, region.tls["ca"], region.tls["client_cert"],  # noqa: E731
                                              region.tls["client_key"])
    old = serial_of((files / "cert.pem").read_bytes())
    assert served(region.edge.grpc) == old
    async with Client(region.edge.grpc, timeout_s=TIMEOUT_S, tls=region.client, api_key=region.ops_key) as client:
        load = Load(client, INPUTS, concurrency=4, max_requests=1_000_000, max_seconds=60).start()
        await load.wait_until(lambda lo: len(lo.ok()) >= 20, 15, "traffic through edge-r1")
        cert, key = FleetCA.load(region.ca_dir).issue(Identity(service="edge", id="edge-r1", region=REGION),
                                                      ttl_s=3600, hosts=["127.0.0.1"])
        assert key is not None
        write_private(files / "key.pem", key)
        write_private(files / "cert.pem", cert, mode=0o644)
        new = serial_of(cert)
        assert new != old
        await poll(lambda: served(region.edge.grpc) == new, 10, "edge-r1's gRPC port to present the new certificate")
        await poll(lambda: served(region.edge.endpoints["http"]) == new, 10,
                   "edge-r1's HTTPS port to present the new certificate")
        rotated = time.monotonic()
        await served_since(load, rotated, 100, 20, "traffic after the rotation")
        await poll(lambda: "edge-r1" in {e["id"] for e in get_json(f"{region.cloud.http}/v1/status",
                                                                   tls=region.tls)["edges"]},
                   5, "edge-r1 to stay a member of the cloud master")
        outcomes = await load.finish()
    check_results(outcomes, INPUTS, reference)
    assert {p.name: p.pid for p in (region.cloud, region.edge, region.device)} == pids
    for p in (region.cloud, region.edge, region.device):
        assert p.process.poll() is None, f"{p.name} exited: {p.log_tail()}"
        assert json.loads(p.ready_file.read_text())["pid"] == p.pid


# --- 8. API keys -----------------------------------------------------------------------------------


async def test_the_edge_takes_api_keys_and_forwards_without_them(region: Region, reference: Reference) -> None:
    x = INPUTS["mlp"][0]
    for key in (None, "fogline-ak-" + "x" * 43):
        async with Client(region.edge.grpc, timeout_s=TIMEOUT_S, tls=region.client, api_key=key) as client:
            with pytest.raises(UnauthenticatedError):
                await client.infer("mlp", {"input": x})
    async with Client(region.edge.grpc, timeout_s=TIMEOUT_S, tls=region.client, api_key=region.alice_key) as client:
        with pytest.raises(PermissionDeniedError):
            await client.infer("cnn", {"input": INPUTS["cnn"][0]})
        for x in INPUTS["mlp"][:4]:
            result = await client.infer("mlp", {"input": x})
            np.testing.assert_allclose(result.outputs["logits"], reference("mlp", x), rtol=RTOL, atol=ATOL)
            assert result.tier == "device" and result.node == "d-issued", result.parameters


# --- 5. No secret anywhere (last) ------------------------------------------------------------------


def stack_texts(stack: Up) -> dict[str, str]:
    """Every log of the stack, and every process's status and metrics, and the cloud's topology."""
    state = stack.state()
    texts = {f"log {p.name}": p.read_text(errors="replace") for p in sorted((stack.workdir / "logs").glob("*"))}
    texts["up.log"] = stack.output()
    for p in processes_of(state):
        for page in ("/v1/status", "/metrics"):
            texts[f"{p['id']} {page}"] = get_text(f"https://{p['http']}{page}", state["tls"])
    texts["cloud /v1/topology"] = get_text(f"https://{state['cloud']['http']}/v1/topology", state["tls"])
    return texts


def region_texts(region: Region) -> dict[str, str]:
    """Every log of the hand-started region, and its live processes' status and metrics, and topology."""
    texts = {f"region log {p.name}": p.read_text(errors="replace") for p in sorted(region.processes.workdir.glob("*.log"))}
    for p in region.alive():
        for page in ("/v1/status", "/metrics"):
            texts[f"region {p.name} {page}"] = get_text(f"https://{p.endpoints['http']}{page}", region.tls)
    texts["region cloud /v1/topology"] = get_text(f"https://{region.cloud.endpoints['http']}/v1/topology", region.tls)
    return texts


def test_zz_no_secret_in_any_log_status_page_or_metric(stack: Up, region: Region, secrets: Secrets) -> None:
    secrets.add("the admin token", admin_token(stack.state()))
    secrets.add_key_files(stack.workdir / "tls")
    secrets.add_key_files(region.root)
    assert any("ca.key" in what for what in secrets.values), "the CA keys are among the secrets"
    texts = {**stack_texts(stack), **region_texts(region)}
    assert len([t for t in texts if t.startswith("log ")]) == 8, sorted(texts)
    leaks = [f"{what} in {where}" for where, text in texts.items()
             for what, secret in secrets.values.items() if secret in text]
    assert leaks == [], f"{len(leaks)} secrets leaked (shown by name only): {leaks[:20]}"
