from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from device_node import DeviceNode, DeviceSettings
from edge_master import EdgeMaster, EdgeSettings
from tests.polling import until

MAX_MESSAGE_BYTES = 1024 * 1024


@pytest.fixture
async def device(sample_models: Path) -> AsyncIterator[DeviceNode]:
    """A stand-alone device node in this process, on port 0, with a 1 MiB message limit."""
    node = DeviceNode(DeviceSettings(model_repository=sample_models, node_id="dev-a",
                                     max_message_bytes=MAX_MESSAGE_BYTES))
    await node.start()
    yield node
    await node.drain()


@pytest.fixture
async def edge(sample_models: Path) -> AsyncIterator[EdgeMaster]:
    """An edge master with one registered device node, both in this process."""
    master = EdgeMaster(EdgeSettings(edge_id="edge-r", region="r", max_message_bytes=MAX_MESSAGE_BYTES))
    await master.start()
    node = DeviceNode(DeviceSettings(model_repository=sample_models, node_id="dev-a", region="r",
                                     master=master.endpoints["control"], max_message_bytes=MAX_MESSAGE_BYTES))
    await node.start()
    await until(lambda: "dev-a" in master.pool.endpoints)
    yield master
    await node.drain()
    await master.drain()
