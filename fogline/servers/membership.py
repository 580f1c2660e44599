"""A process's membership in its parent, joined on start and left on drain the same way by every
tier: the device node and GPU worker in their master, the edge master in the cloud master, any of
them in Consul.

Draining leaves first, so that the parent stops routing here while this process can still answer;
only then does the process stop serving, and the control plane is closed last::

    self.membership = join(control, self._member, self._load)
    ...
    await leave_and_stop(self.membership, self._stop_serving)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fogline.adapters.consul.discovery import ConsulDiscovery
from fogline.adapters.grpc.control import GrpcControlClient
from fogline.adapters.tls.material import TlsMaterial
from fogline.core.control.membership import ControlPlane, MembershipLoop
from fogline.core.control.registry import Load, Member


def parent_control(consul: ConsulDiscovery | None, parent: str | None, *, material: TlsMaterial | None = None,
                   server_name: str | None = None) -> ControlPlane | None:
    """Consul's control plane with Consul, else the parent master's at ``parent`` (mTLS with
    ``material``, checking the master's certificate carries ``server_name``), else none (stand-alone)."""
    if consul is not None:
        return consul.control_plane(grpc_use_tls=material is not None)
    return GrpcControlClient(parent, material=material, server_name=server_name) if parent else None


def join(control: ControlPlane, member: Callable[[], Member], load: Callable[[], Load]) -> MembershipLoop:
    """Start registering and heartbeating through ``control``."""
    membership = MembershipLoop(control, member, load)
    membership.start()
    return membership


async def leave_and_stop(membership: MembershipLoop | None, stop_serving: Callable[[], Awaitable[None]]) -> None:
    """Leave the parent, then ``stop_serving`` (refuse new calls, finish running ones), then close the
    control plane; with no membership, only stop serving."""
    if membership is not None:
        await membership.leave()
    await stop_serving()
    if membership is not None:
        await membership.close()
