"""Pytest fixtures for a Consul agent (import them into a test module or a conftest).

``consul_agent`` is a real ``consul agent -dev`` when a ``consul`` binary is on PATH or named by
``CONSUL_BIN``, and otherwise the stand-in of ``tests/consul_standin.py``; ``consul_standin`` is always
the stand-in (for tests that stop and restart the agent or need its short reaper). Both yield a
:class:`ConsulAgent`. Each agent is stopped (the real one killed) at teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fogline.adapters.consul.client import ConsulSettings
from tests.consul_standin import ConsulStandIn

ACL_TOKEN = "a2f3c1d0-5e6b-4c7a-9d8e-0f1e2d3c4b5a"
REAL_AGENT_START_S = 30.0


@dataclass
class ConsulAgent:
    """A running agent: where it is, its management token (if ACLs are on) and what it can do quickly."""

    address: str
    token: str | None = None
    standin: ConsulStandIn | None = None
    check_interval_s: float = 0.1
    """The shortest check interval the agent honours (Consul: 1s)."""

    @property
    def real(self) -> bool:
        return self.standin is None

    def settings(self, **overrides: Any) -> ConsulSettings:
        values: dict[str, Any] = {"address": self.address, "token": self.token, **overrides}
        return ConsulSettings(**values)


def consul_binary() -> str | None:
    """The Consul binary to test against: ``CONSUL_BIN``, else ``consul`` on PATH, else None."""
    return os.environ.get("CONSUL_BIN") or shutil.which("consul")


@contextlib.asynccontextmanager
async def standin_agent(*, acl_token: str | None = None,
                        agent_tls: tuple[bytes, bytes, bytes] | None = None) -> AsyncIterator[ConsulAgent]:
    """A stand-in with fast checks: 50 ms minimum interval, 200 ms minimum deregister-after, reaper every 50 ms;
    ``agent_tls``: the (CA, certificate, key) its TLS checks present."""
    standin = ConsulStandIn(acl_token=acl_token, min_check_interval_s=0.05, min_deregister_after_s=0.2,
                            reap_interval_s=0.05, agent_tls=agent_tls)
    await standin.start()
    try:
        yield ConsulAgent(address=standin.address, token=acl_token, standin=standin)
    finally:
        await standin.stop()


def _free_ports(n: int) -> list[int]:
    # NOTE: a subprocess cannot be handed a bound socket; the ports could be taken before it binds them.
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@contextlib.asynccontextmanager
async def real_agent(binary: str, workdir: Path, *, acl_token: str | None = None) -> AsyncIterator[ConsulAgent]:
    """``consul agent -dev`` (Consul 1.14 or later) on free ports, ready once it has a leader; killed after."""
    http, serf_lan, serf_wan, server, grpc, grpc_tls = _free_ports(6)
    config: dict[str, Any] = {
        "bind_addr": "127.0.0.1", "client_addr": "127.0.0.1", "log_level": "warn",
        "ports": {"http": http, "serf_lan": serf_lan, "serf_wan": serf_wan, "server": server, "dns": -1,
                  "grpc": grpc, "grpc_tls": grpc_tls},
    }
    if acl_token:
        config["acl"] = {"enabled": True, "default_policy": "deny",
                         "tokens": {"initial_management": acl_token, "agent": acl_token}}
    config_file = workdir / "consul.json"
    config_file.write_text(json.dumps(config))
    with open(workdir / "consul.log", "wb") as log:
        process = subprocess.Popen([binary, "agent", "-dev", "-config-file", str(config_file)],
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        await _wait_for_leader(f"http://127.0.0.1:{http}", process)
        yield ConsulAgent(address=f"127.0.0.1:{http}", token=acl_token, check_interval_s=1.0)
    finally:
        process.kill()
        process.wait(10)


async def _wait_for_leader(url: str, process: subprocess.Popen[bytes]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + REAL_AGENT_START_S
    async with aiohttp.ClientSession() as session:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"consul agent exited with {process.returncode}; see consul.log")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{url}/v1/status/leader") as response:
                    if response.status == 200 and (await response.json()):
                        return
            if loop.time() > deadline:
                raise RuntimeError(f"consul agent at {url} has no leader after {REAL_AGENT_START_S}s")
            await asyncio.sleep(0.1)


@pytest.fixture
async def consul_agent(tmp_path: Path) -> AsyncIterator[ConsulAgent]:
    """A real Consul dev agent if one is installed, else the stand-in."""
    binary = consul_binary()
    if binary:
        async with real_agent(binary, tmp_path) as agent:
            yield agent
    else:
        async with standin_agent() as agent:
            yield agent


@pytest.fixture
async def consul_acl_agent(tmp_path: Path) -> AsyncIterator[ConsulAgent]:
    """Like ``consul_agent``, with ACLs on (default deny) and ``ACL_TOKEN`` as the management token."""
    binary = consul_binary()
    if binary:
        async with real_agent(binary, tmp_path, acl_token=ACL_TOKEN) as agent:
            yield agent
    else:
        async with standin_agent(acl_token=ACL_TOKEN) as agent:
            yield agent


@pytest.fixture
async def consul_standin() -> AsyncIterator[ConsulAgent]:
    """Always the stand-in, for tests that stop, restart or reap faster than Consul allows."""
    async with standin_agent() as agent:
        yield agent
