"""Whether a port can be listened on, asked before a server binds it, so that a taken port is one
clear :class:`~fogline.errors.PortInUseError` instead of a library's log lines."""

from __future__ import annotations

import socket

from fogline.errors import PortInUseError


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now, with SO_REUSEADDR as ours do (so sockets
    in TIME-WAIT from an earlier run do not count)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def check_port(host: str, port: int, flag: str) -> None:
    """Raise :class:`PortInUseError` naming ``flag`` if ``port`` (not 0) is taken on ``host``."""
    if port and not port_free(host, port):
        raise PortInUseError(host, port, flag)
