"""Broker URL parsing and client construction errors (no sockets)."""

from __future__ import annotations

import pytest

from prime.bus.client import BusClient, LastWill, parse_bus_url
from prime.core.errors import ConfigError


def test_plain_url() -> None:
    u = parse_bus_url("mqtt://broker.example:1884")
    assert (u.host, u.port, u.tls, u.username, u.password) == ("broker.example", 1884, False, None, None)
    assert u.redacted() == "mqtt://broker.example:1884"


def test_default_ports() -> None:
    assert parse_bus_url("mqtt://h").port == 1883
    assert parse_bus_url("mqtts://h").port == 8883
    assert parse_bus_url("MQTTS://h/").tls


def test_user_and_password_are_parsed_and_never_shown() -> None:
    u = parse_bus_url("mqtts://alice:s%40cr%3At@h.example:8884")
    assert (u.username, u.password, u.tls, u.port) == ("alice", "s@cr:t", True, 8884)
    assert "s@cr" not in str(u) and "s%40" not in u.redacted()
    assert u.redacted() == "mqtts://alice:***@h.example:8884"
    assert parse_bus_url("mqtt://bob@h").redacted() == "mqtt://bob@h:1883"


def test_ipv6_host() -> None:
    u = parse_bus_url("mqtt://[::1]:1999")
    assert (u.host, u.port) == ("::1", 1999)
    assert u.redacted() == "mqtt://[::1]:1999"


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("", "empty"),
        ("localhost:1883", "scheme"),
        ("http://h:1883", "scheme 'http'"),
        ("ws://h:80", "websockets"),
        ("mqtt://:1883", "no host"),
        ("mqtt://h:99999", "malformed"),
        ("mqtt://h:port", "malformed"),
        ("mqtt://h:0", "1..65535"),
        ("mqtt://h:1883/topic", "path"),
        ("mqtt://h:1883?x=1", "query"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        parse_bus_url(url)
    assert "mqtt://" in str(info.value)  # every message shows the expected form or the URL


def test_bad_url_error_hides_password() -> None:
    with pytest.raises(ConfigError) as info:
        parse_bus_url("mqtt://alice:hunter2@h:notaport")
    assert "hunter2" not in str(info.value)


async def test_client_construction_checks() -> None:
    with pytest.raises(ConfigError, match="client id"):
        BusClient("mqtt://h", "")
    with pytest.raises(ConfigError, match="mqtts"):
        BusClient("mqtt://h", "c", ca_file="/etc/hostname")
    with pytest.raises(ConfigError, match="does not exist"):
        BusClient("mqtts://h", "c", ca_file="/nonexistent/ca.pem")
    with pytest.raises(ValueError, match="wildcard"):
        BusClient("mqtt://h", "c", will=("a/+", b"x", False))
    bus = BusClient("mqtts://u:p@h", "c", will=("a/b", b"x", True))
    assert bus.will == LastWill("a/b", b"x", True)
    assert "p@" not in repr(bus.url.redacted())


def test_suback_failure_codes_are_recognised() -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    from prime.bus.client import _refused

    assert _refused(ReasonCode(PacketTypes.SUBACK, identifier=0x80))
    assert _refused(0x80)
    assert not _refused(ReasonCode(PacketTypes.SUBACK, identifier=1))
    assert not _refused(0)
