"""Test doubles for the DHT protocol."""

from __future__ import annotations


class RecordingTransport:
    """Stands in for the UDP socket: takes datagrams, delivers nothing."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))

    def is_closing(self) -> bool:
        return False
