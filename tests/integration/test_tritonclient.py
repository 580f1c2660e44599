"""The official ``tritonclient.grpc`` client against a device node and an edge master.

tritonclient is never imported here: its protobuf definitions of ``inference.*`` collide with
Fogline's in one process, so ``triton_probe.py`` runs it in a subprocess and prints JSON.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fogline.adapters.tls.certs import FleetCA, write_identity
from fogline.core.security.identity import Identity
from fogline.local.samples import build_cnn, build_sample_repository
from tests.integration.loadgen import ATOL, RTOL, Reference, start_region
from tests.processes import ProcessGroup

pytestmark = pytest.mark.integration

PROBE = Path(__file__).with_name("triton_probe.py")


def run_probe(x: np.ndarray, tmp_path: Path, *urls: str, tls: dict[str, str] | None = None,
              repository: bool = False) -> dict:
    """What tritonclient answered at each of ``urls``; over TLS (ssl=True) with ``tls`` (a state file's);
    with ``repository``, to the model-repository calls (see triton_probe.py)."""
    if importlib.util.find_spec("tritonclient") is None:  # looks, does not import
        pytest.skip("tritonclient[grpc] (a dev dependency) is not installed")
    path = tmp_path / "x.npy"
    np.save(path, x)
    flags = ["--ca", tls["ca"], "--cert", tls["client_cert"], "--key", tls["client_key"]] if tls else []
    flags += ["--repository"] if repository else []
    done = subprocess.run([sys.executable, str(PROBE), "--input", str(path), *flags, *urls],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"triton_probe failed ({done.returncode}):\n{done.stderr[-4000:]}"
    return json.loads(done.stdout)


def mlp_answers(answer: dict[str, Any], expected: np.ndarray, where: str) -> list[dict[str, Any]]:
    """Check what tritonclient got from one endpoint for ``mlp`` (live, ready, metadata, the binary and
    the typed inference equal to ``expected``, each answered in kind); the parameters of both replies."""
    assert answer["live"] is True and answer["ready"] is True and answer["model_ready"] is True, (where, answer)
    meta = answer["metadata"]
    assert meta["name"] == "mlp" and meta["versions"] == ["1"], (where, meta)
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}], (where, meta)
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}], (where, meta)
    parameters = []
    for kind in ("binary", "typed"):
        reply = answer[kind]
        assert reply["model_name"] == "mlp", (where, kind)
        got = np.array(reply["output"], dtype=np.float32)
        assert got.shape == expected.shape, (where, kind, got.shape)
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL, err_msg=f"{kind} infer via {where}")
        # Answered in kind: raw bytes for a raw request, typed contents for a typed one.
        assert reply["raw_reply"] is (kind == "binary"), (where, kind)
        parameters.append(reply["parameters"])
    return parameters


def test_tritonclient_against_device_and_edge(processes: ProcessGroup, sample_models: Path,
                                              reference: Reference, tmp_path: Path) -> None:
    edge, (device,) = start_region(processes, sample_models, devices=("d1",))
    x = np.random.default_rng(7).standard_normal((2, 64)).astype(np.float32)
    expected = reference("mlp", x)

    answers = run_probe(x, tmp_path, device.grpc, edge.grpc)
    assert "tritonclient" not in sys.modules  # it stayed in the subprocess
    assert set(answers) == {device.grpc, edge.grpc}

    for url, answer in answers.items():
        where = "device node" if url == device.grpc else "edge master"
        for params in mlp_answers(answer, expected, where):
            assert params["fogline.tier"] == "device" and params["fogline.node"] == "d1", (where, params)
            if url == edge.grpc:
                assert params["fogline.route"] == "placement", (where, params)


def fleet_files(ca: FleetCA, root: Path, identity: Identity) -> dict[str, str]:
    """A certificate of ``identity`` from ``ca`` in ``root/<id>/``, as a state file's ``tls`` names them."""
    cert, key = ca.issue(identity, ttl_s=3600, hosts=["127.0.0.1"])
    assert key is not None
    files = write_identity(root / identity.id, cert, key, ca.cert_pem)
    return {"ca": str(files.ca), "client_cert": str(files.cert), "client_key": str(files.key)}


def add_cnn_version_2(models: Path, scratch: Path) -> Path:
    """Version 2 of cnn (the sample with other weights: other outputs) in the repository ``models``."""
    build_cnn(scratch / "cnn-2", seed=11)
    (models / "cnn" / "2").mkdir()
    return Path(shutil.copy(scratch / "cnn-2" / "1" / "model.onnx", models / "cnn" / "2" / "model.onnx"))


def test_tritonclient_repository_calls_take_an_admin_certificate_and_refuse_others(
        processes: ProcessGroup, tmp_path: Path) -> None:
    ca = FleetCA.init(tmp_path / "ca")
    device_tls = fleet_files(ca, tmp_path, Identity(service="device", id="d1", region="test"))
    admin = fleet_files(ca, tmp_path, Identity(service="admin", id="ops"))
    user = fleet_files(ca, tmp_path, Identity(service="client", id="user"))
    models = build_sample_repository(tmp_path / "models")
    device = processes.device("d1", models, None, "test", "--tls-cert", device_tls["client_cert"],
                              "--tls-key", device_tls["client_key"], "--tls-ca", device_tls["ca"])
    add_cnn_version_2(models, tmp_path)  # after the start: the device serves version 1
    x = np.random.default_rng(3).standard_normal((1, 3, 64, 64)).astype(np.float32)

    refused = run_probe(x, tmp_path, device.grpc, tls=user, repository=True)[device.grpc]
    assert list(refused) == ["index"], refused  # stopped at the first call
    assert refused["index"]["status"] == "StatusCode.PERMISSION_DENIED", refused
    assert "spiffe://fogline/client/user is not an admin's" in refused["index"]["message"], refused

    steps = run_probe(x, tmp_path, device.grpc, tls=admin, repository=True)[device.grpc]
    assert all("ok" in step for step in steps.values()) and len(steps) == 5, steps
    assert steps["index"]["ok"] == [
        {"name": "cnn", "version": "1", "state": "READY", "reason": ""},
        {"name": "cnn", "version": "2", "state": "UNAVAILABLE", "reason": ""},
        {"name": "mlp", "version": "1", "state": "READY", "reason": ""}]
    assert steps["infer"]["ok"] == "2"  # load_model("cnn") swapped in the latest version
    assert [(m["name"], m["version"], m["state"]) for m in steps["index_after"]["ok"]] == [
        ("cnn", "1", "UNAVAILABLE"), ("cnn", "2", "READY"), ("mlp", "1", "UNAVAILABLE")]
