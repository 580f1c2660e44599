"""The cloud master as a real process: an edge master registers with it (``--cloud``), a device node
with the edge; a request through the cloud master runs on the device; SIGTERM drains it cleanly."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest

from fogline.sdk.client import Client
from tests.polling import wait_for
from tests.processes import ProcessGroup, get_json

pytestmark = pytest.mark.integration


def edges_with_models(cloud_http: str) -> list[dict]:
    return [e for e in get_json(f"{cloud_http}/v1/status")["edges"] if e["models"]]


async def test_a_request_through_the_cloud_master_runs_on_a_device(processes: ProcessGroup,
                                                                   sample_models: Path) -> None:
    cloud = processes.cloud()
    edge = processes.edge("edge-eu", "eu", cloud=cloud)
    processes.device("dev-eu", sample_models, edge, "eu")
    wait_for(lambda: edges_with_models(cloud.http), what="the edge's models at the cloud master")

    async with Client(cloud.grpc, timeout_s=5.0) as client:
        result = await client.infer("mlp", {"input": np.ones((2, 64), np.float32)},
                                    parameters={"fogline.region": "eu"})
    assert result.outputs["logits"].shape == (2, 10)
    assert (result.tier, result.node, result.parameters["fogline.region"]) == ("device", "dev-eu", "eu")

    topology = get_json(f"{cloud.http}/v1/topology")
    [entry] = topology["regions"]["eu"]["edges"]
    assert entry["id"] == "edge-eu" and entry["healthy"] is True
    assert [d["id"] for d in entry["devices"]] == ["dev-eu"]
    assert get_json(f"{cloud.http}/readyz")["ready"] is True

    cloud.process.send_signal(signal.SIGTERM)
    assert cloud.process.wait(15) == 0
