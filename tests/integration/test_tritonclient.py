"""The official ``tritonclient.grpc`` client against a device node and an edge master.

tritonclient is never imported here: its protobuf definitions of ``inference.*`` collide with
Fogline's in one process, so ``triton_probe.py`` runs it in a subprocess and prints JSON.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.loadgen import ATOL, RTOL, Reference, start_region
from tests.processes import ProcessGroup

pytestmark = pytest.mark.integration

PROBE = Path(__file__).with_name("triton_probe.py")


def run_probe(x: np.ndarray, tmp_path: Path, *urls: str, tls: dict[str, str] | None = None) -> dict:
    """What tritonclient answered at each of ``urls``; over TLS (ssl=True) with ``tls`` (a state file's)."""
    if importlib.util.find_spec("tritonclient") is None:  # looks, does not import
        pytest.skip("tritonclient[grpc] (a dev dependency) is not installed")
    path = tmp_path / "x.npy"
    np.save(path, x)
    flags = ["--ca", tls["ca"], "--cert", tls["client_cert"], "--key", tls["client_key"]] if tls else []
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
