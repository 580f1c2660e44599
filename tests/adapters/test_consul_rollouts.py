"""Under Consul discovery the cloud master's rollouts are mirrored into Consul KV, the file staying the record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fogline.adapters.consul.client import open_client
from fogline.adapters.consul.rollouts import ConsulMirroredStore
from fogline.core.lifecycle.plan import ArtefactRef, VersionManifest
from fogline.core.lifecycle.rollout import JsonFileStore, RolloutController
from tests.consul_fixture import ConsulAgent, consul_agent
from tests.polling import until

__all__ = ["consul_agent"]  # the fixture, used by name

V1 = VersionManifest("cnn", "1")
V2 = VersionManifest("cnn", "2", (ArtefactRef("model.onnx", "sha256:" + "a" * 64, 10),), 'platform = "onnxruntime"\n')


async def test_every_change_of_a_rollout_lands_in_consul_kv(consul_agent: ConsulAgent, tmp_path: Path) -> None:
    store = ConsulMirroredStore(JsonFileStore(tmp_path / "rollouts.json"), consul_agent.settings(), "fogline")
    controller = RolloutController(store)
    client = open_client(consul_agent.settings())

    async def in_kv() -> dict[str, Any] | None:
        _, entry = await client.kv.get("fogline/rollouts/cnn")
        return json.loads(entry["Value"]) if entry else None

    try:
        controller.start("cnn", "2", canary=V2, stable=V1)
        running = await until(in_kv, 10, "the rollout in KV")
        assert running["state"] == "running" and running["version"] == "2"
        controller.pause("cnn")
        await until(lambda: _state(in_kv, "paused"), 10, "the pause in KV")
        controller.rollback("cnn")
        await until(lambda: _state(in_kv, "rolled_back"), 10, "the rollback in KV")
        await store.close()
        assert store.error == ""
        # the file is the record: a controller started from it alone sees the same
        assert RolloutController(JsonFileStore(tmp_path / "rollouts.json")).get("cnn").state == "rolled_back"
    finally:
        await client.close()


async def _state(read: Any, state: str) -> bool:
    found = await read()
    return found is not None and found["state"] == state
