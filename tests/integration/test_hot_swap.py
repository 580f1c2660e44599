"""Acceptance: a hot swap on every device of a region, a new cnn version, under load at concurrency 32
through the edge master: zero failed requests, every answer from the version that served it, and the
new version serving everywhere after. The p99 during the swap against steady state is printed, not
asserted: on a shared 2-core machine a window of ~60 requests puts p99 at its maximum, which one
scheduling hiccup moves (0.7x to 3.3x seen); a timing target is a benchmark's to measure, not a test's.

An edge master and two device nodes run as processes over mTLS (a fleet CA made here); the swap is
Triton's ``RepositoryModelLoad`` sent to both devices at once with an admin certificate.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from fogline._proto import inference_pb2 as pb
from fogline.adapters.tls.certs import FleetCA, write_identity
from fogline.adapters.tls.material import TlsFiles
from fogline.core.security.identity import Identity
from fogline.local.launch import Launched
from fogline.local.samples import build_sample_repository
from fogline.sdk.client import TLS, Client
from tests.integration.loadgen import ATOL, RTOL, Load, Outcome, make_inputs
from tests.integration.test_tritonclient import add_cnn_version_2
from tests.polling import wait_for
from tests.processes import ProcessGroup, get_json

pytestmark = pytest.mark.integration

REGION = "test"
CONCURRENCY = 32
STEADY_S = 4.0
"""How long steady state is measured before the swap."""
AFTERMATH_S = 0.5
"""Reported, not asserted: p99 from the swap's start to this long after it ended (first requests on the
new sessions included)."""
LOAD = "/inference.GRPCInferenceService/RepositoryModelLoad"


def issue(ca: FleetCA, root: Path, identity: Identity) -> TlsFiles:
    cert, key = ca.issue(identity, ttl_s=3600, hosts=["127.0.0.1"])
    assert key is not None
    return write_identity(root / identity.id, cert, key, ca.cert_pem)


def tls_flags(files: TlsFiles) -> list[str]:
    return ["--tls-cert", str(files.cert), "--tls-key", str(files.key), "--tls-ca", str(files.ca)]


def p99(latencies_s: list[float]) -> float:
    return float(np.percentile(latencies_s, 99))


async def swap(device: Launched, admin: TlsFiles) -> float:
    """RepositoryModelLoad of cnn (its latest version) on ``device``, as an admin; when it answered."""
    credentials = grpc.ssl_channel_credentials(admin.ca.read_bytes(), admin.key.read_bytes(), admin.cert.read_bytes())
    async with grpc.aio.secure_channel(device.grpc, credentials) as channel:
        load = channel.unary_unary(LOAD, request_serializer=pb.RepositoryModelLoadRequest.SerializeToString,
                                   response_deserializer=pb.RepositoryModelLoadResponse.FromString)
        await load(pb.RepositoryModelLoadRequest(model_name="cnn"), timeout=60)
    return time.monotonic()


def latencies(outcomes: list[Outcome], start: float, end: float) -> list[float]:
    """Latencies of the requests running at some point within [start, end]."""
    return [o.finished - o.started for o in outcomes if o.started < end and o.finished > start]


async def test_hot_swap_on_every_device_of_a_region_under_load(processes: ProcessGroup, tmp_path: Path) -> None:
    ca = FleetCA.init(tmp_path / "ca")
    admin = issue(ca, tmp_path, Identity(service="admin", id="ops"))
    user = issue(ca, tmp_path, Identity(service="client", id="user"))
    status_tls = {"ca": str(user.ca), "client_cert": str(user.cert), "client_key": str(user.key)}
    models = build_sample_repository(tmp_path / "models")
    edge = processes.edge("edge", REGION, *tls_flags(issue(ca, tmp_path, Identity(service="edge", id="edge",
                                                                                   region=REGION))))
    names = ("d1", "d2")
    devices = [processes.device(name, models, edge, REGION,
                                *tls_flags(issue(ca, tmp_path, Identity(service="device", id=name, region=REGION))))
               for name in names]
    wait_for(lambda: {d["id"] for d in get_json(f"{edge.http}/v1/status", tls=status_tls)["devices"]
                      if d["healthy"]} == set(names), 30, "both devices to be routed to by the edge")
    new_file = add_cnn_version_2(models, tmp_path)  # on disk now; the devices serve version 1
    inputs = {"cnn": make_inputs("cnn", 8, seed=4)}

    async with Client(edge.grpc, tls=TLS(ca=user.ca, cert=user.cert, key=user.key), timeout_s=30) as client:
        load = Load(client, inputs, concurrency=CONCURRENCY, max_requests=10**9, max_seconds=120).start()
        await load.wait_until(lambda ld: len(ld.outcomes) >= 4 * CONCURRENCY, 30, "warm-up requests")
        steady_from = time.monotonic()
        await asyncio.sleep(STEADY_S)  # NOTE: a measurement window, not a synchronisation
        swap_from = time.monotonic()
        swap_to = max(await asyncio.gather(*(swap(device, admin) for device in devices)))
        await load.wait_until(lambda ld: ld.outcomes[-1].started > swap_to + AFTERMATH_S, 30,
                              "requests after the swap")
        outcomes = await load.finish()

    failures = load.failures()
    assert not failures, f"{len(failures)} of {len(outcomes)} requests failed: {failures[:5]}"
    steady = [o.finished - o.started for o in outcomes if o.started >= steady_from and o.finished <= swap_from]
    during = latencies(outcomes, swap_from, swap_to)
    aftermath = latencies(outcomes, swap_from, swap_to + AFTERMATH_S)
    figures = (f"steady p99 {p99(steady) * 1000:.1f} ms over {len(steady)} requests; during the swap "
               f"({(swap_to - swap_from) * 1000:.0f} ms) p99 {p99(during) * 1000:.1f} ms over {len(during)} requests; "
               f"to {AFTERMATH_S}s after it p99 {p99(aftermath) * 1000:.1f} ms over {len(aftermath)}")
    print(figures)
    # NOTE: in a closed loop every worker has a request running at any moment: the window holds >= 32.
    assert len(during) >= CONCURRENCY, figures

    # Every device now serves version 2 alone, and responses say which version ran.
    for device in devices:
        status = get_json(f"{device.http}/v1/status", tls=status_tls)["models"]["cnn"]
        assert (status["serving"], status["versions"]) == ("2", ["2"]), (device.name, status)
    assert {o.result.version for o in outcomes if o.started > swap_to} == {"2"}
    assert {o.result.version for o in outcomes if o.finished < swap_from} == {"1"}
    check_versions(outcomes, inputs["cnn"], {"1": models / "cnn" / "1" / "model.onnx", "2": new_file})


def check_versions(outcomes: list[Outcome], samples: list[np.ndarray], files: dict[str, Path]) -> None:
    """Each answer is what ONNX Runtime gives in-process for the version the answer names."""
    import onnxruntime as ort

    sessions = {v: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for v, p in files.items()}
    expected = {(v, i): s.run(None, {"input": x})[0] for v, s in sessions.items() for i, x in enumerate(samples)}
    for o in outcomes:
        np.testing.assert_allclose(o.result.outputs["logits"], expected[(o.result.version, o.sample)], rtol=RTOL,
                                   atol=ATOL, err_msg=f"request #{o.seq} (version {o.result.version}) on {o.node}")
