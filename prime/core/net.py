"""Tiny address helpers shared by every subsystem (parsing only, no sockets kept open)."""

from __future__ import annotations

import socket


def parse_hostport(text: str, default_port: int | None = None) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (or ``HOST`` with a default port) into a tuple, with a clear error."""
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        host, port = text.strip(), ""
    if not port:
        if default_port is None:
            raise ValueError(f"{text!r} is not HOST:PORT")
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: port must be a number in 1..65535")
    return host or "127.0.0.1", int(port)


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both TCP and UDP right now (services share one number for both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                return port
    raise OSError("no free TCP+UDP port found")
