"""Rollout state mirrored into Consul KV (``--discovery consul``): ``<kv_prefix>/rollouts/<model>``.

The cloud master's file store stays the record (it is written first, and read on start); after
every change of state each model's rollout is also put into KV as JSON, in the background, so that
whoever runs the fleet from Consul sees the rollouts where the rest of its configuration lives. A
failed write is logged and kept in ``error``; the next change writes every model again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from fogline.adapters.consul.client import ConsulSettings, call_consul, open_client
from fogline.core.lifecycle.rollout import RolloutStore
from fogline.errors import FoglineError

log = logging.getLogger(__name__)


class ConsulMirroredStore:
    """A :class:`~fogline.core.lifecycle.rollout.RolloutStore` that also mirrors what it saves into KV."""

    def __init__(self, inner: RolloutStore, settings: ConsulSettings, prefix: str, *, timeout_s: float = 5.0) -> None:
        self.inner = inner
        self.settings = settings
        self.prefix = prefix.strip("/")
        self.timeout_s = timeout_s
        self.error = ""
        self._latest: dict[str, dict[str, Any]] = {}
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def load(self) -> list[dict[str, Any]]:
        return self.inner.load()

    def save(self, rollouts: list[dict[str, Any]]) -> None:
        self.inner.save(rollouts)
        self._latest = {str(r["model"]): r for r in rollouts}
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush(), name="rollouts-to-consul")
        else:
            self._again = True

    def key(self, model: str) -> str:
        return f"{self.prefix}/rollouts/{model}"

    async def _flush(self) -> None:
        client = open_client(self.settings)
        try:
            while True:
                self._again = False
                for model, rollout in list(self._latest.items()):
                    await call_consul(self.settings, f"write the rollout of {model!r}",
                                      client.kv.put(self.key(model), json.dumps(rollout)), timeout_s=self.timeout_s)
                self.error = ""
                if not self._again:
                    return
        except FoglineError as err:
            self.error = err.message
            log.warning("rollout state not mirrored into Consul KV: %s", err)
        finally:
            await client.close()

    async def close(self) -> None:
        """Let a write in progress finish."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
