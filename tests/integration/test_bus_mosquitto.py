"""The control plane against a real Mosquitto broker: passwords, TLS, Last Will, heartbeats.

The embedded amqtt broker is what tests and single machines use; production points
at Mosquitto. Each test starts its own ``mosquitto -c <conf>`` on 127.0.0.1 (no
anonymous access, a password file, optionally a TLS listener with a self-signed
certificate for IP 127.0.0.1) and kills it at teardown.

Without the ``mosquitto`` binary these tests skip, except under ``CI`` (which
installs it), where they fail so that a broken install cannot hide a regression.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from prime.bus.client import BusClient
from prime.bus.liveness import LivenessTracker
from prime.bus.topics import Topics
from prime.core.errors import BusError
from tests.integration.netutil import self_signed_cert, watch_until, went_offline

USER = "prime-node"
PASSWORD = "s3cr:t@p/ss w0rd"  # URL-special characters: exercises quoting end to end
SBIN = os.pathsep.join(["/usr/sbin", "/usr/local/sbin", "/sbin"])


def _binary(name: str, install_hint: str) -> str:
    """The path of a broker tool; skip without it, but fail under CI (which installs it)."""
    path = shutil.which(name) or shutil.which(name, path=SBIN)
    if path is None:
        reason = f"needs the {name!r} binary: {install_hint}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI must install it; not skipping)", pytrace=False)
        pytest.skip(reason)
    return path


@dataclass(frozen=True)
class Mosquitto:
    port: int
    tls_port: int | None = None
    ca_file: Path | None = None

    def url(self, user: str | None = USER, password: str | None = PASSWORD, *, tls: bool = False) -> str:
        cred = ""
        if user is not None:
            cred = quote(user, safe="")
            if password is not None:
                cred += ":" + quote(password, safe="")
            cred += "@"
        if tls:
            assert self.tls_port is not None
            return f"mqtts://{cred}127.0.0.1:{self.tls_port}"
        return f"mqtt://{cred}127.0.0.1:{self.port}"


def _wait_accepting(proc: subprocess.Popen, ports: list[int], log: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    pending = list(ports)
    while pending:
        if proc.poll() is not None:
            raise AssertionError(f"mosquitto exited with {proc.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", pending[0]), timeout=0.5).close()
            pending.pop(0)
            continue
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"mosquitto not accepting on {pending} after {timeout}s:\n{log.read_text()}")
        time.sleep(0.02)


def _run_mosquitto(tmp: Path, port_factory: Callable[[], int], *, tls: bool) -> Iterator[Mosquitto]:
    mosquitto = _binary("mosquitto", "apt-get install mosquitto")
    passwd = _binary("mosquitto_passwd", "apt-get install mosquitto")
    tmp = tmp / "mosquitto"
    tmp.mkdir()
    pwfile = tmp / "passwd"
    subprocess.run([passwd, "-b", "-c", str(pwfile), USER, PASSWORD], check=True, capture_output=True)
    broker = Mosquitto(port_factory())
    lines = [
        # Started as root, mosquitto drops to user "mosquitto", which cannot read a
        # 0700 tmp dir; keep the current user (ignored when not root).
        f"user {getpass.getuser()}",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {pwfile}",
        "persistence false",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        f"listener {broker.port} 127.0.0.1",
    ]
    if tls:
        _binary("openssl", "apt-get install openssl")
        cert, key = self_signed_cert(tmp)
        broker = Mosquitto(broker.port, port_factory(), cert)
        lines += [
            f"listener {broker.tls_port} 127.0.0.1",
            f"cafile {cert}",
            f"certfile {cert}",
            f"keyfile {key}",
        ]
    conf = tmp / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    log = tmp / "mosquitto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [mosquitto, "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait_accepting(proc, [p for p in (broker.port, broker.tls_port) if p is not None], log)
        yield broker
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def mosquitto(tmp_path: Path, port_factory) -> Iterator[Mosquitto]:
    """Mosquitto with a password file on a plain listener."""
    yield from _run_mosquitto(tmp_path, port_factory, tls=False)


@pytest.fixture
def mosquitto_tls(tmp_path: Path, port_factory) -> Iterator[Mosquitto]:
    """Mosquitto with a password file on a plain and a TLS listener."""
    yield from _run_mosquitto(tmp_path, port_factory, tls=True)


async def first_message(bus: BusClient, timeout: float = 5.0) -> tuple[str, bytes]:
    async def first() -> tuple[str, bytes]:
        async for message in bus.messages():
            return message
        raise AssertionError("message stream ended")

    return await asyncio.wait_for(first(), timeout)


def assert_no_password(exc: BaseException) -> None:
    text = f"{exc!s} {exc!r}"
    assert PASSWORD not in text and quote(PASSWORD, safe="") not in text, text


# -- username / password ------------------------------------------------------------------


async def test_roundtrip_with_password(mosquitto: Mosquitto) -> None:
    url = mosquitto.url()
    async with BusClient(url, "sub") as sub, BusClient(url, "pub") as pub:
        await sub.subscribe("prime/mq/+")
        await pub.publish("prime/mq/x", b"hello")
        assert await first_message(sub) == ("prime/mq/x", b"hello")


async def test_retained_message_reaches_a_late_subscriber(mosquitto: Mosquitto) -> None:
    topics = Topics("job-mq")
    async with BusClient(mosquitto.url(), "coordinator") as pub:
        await pub.publish(topics.announce, b"round 7", retain=True)
    async with BusClient(mosquitto.url(), "late-joiner") as late:
        await late.subscribe(topics.announce)
        assert await first_message(late) == (topics.announce, b"round 7")


# A process that registers a Will and idles until it is killed.
WILL_NODE = """
import asyncio, os
from prime.bus.client import BusClient, LastWill

async def main():
    will = LastWill("prime/mq/will/victim", b"victim died", False)
    async with BusClient(os.environ["PRIME_TEST_BUS_URL"], "victim", will=will):
        print("connected", flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


async def spawn(code: str, url: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=subprocess.PIPE, env={**os.environ, "PRIME_TEST_BUS_URL": url}
    )


async def kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


async def test_last_will_is_delivered_when_a_client_is_sigkilled(mosquitto: Mosquitto) -> None:
    async with BusClient(mosquitto.url(), "watcher") as watcher:
        await watcher.subscribe("prime/mq/will/+")
        proc = await spawn(WILL_NODE, mosquitto.url())
        try:
            assert proc.stdout is not None
            assert await asyncio.wait_for(proc.stdout.readline(), 10) == b"connected\n"
            os.kill(proc.pid, signal.SIGKILL)  # no DISCONNECT: the broker must publish the Will
            await proc.wait()
            assert await first_message(watcher) == ("prime/mq/will/victim", b"victim died")
        finally:
            await kill(proc)


@pytest.mark.parametrize("user,password", [(USER, "wrong-password"), (None, None), ("intruder", PASSWORD)])
async def test_bad_or_missing_credentials_are_refused(mosquitto: Mosquitto, user, password) -> None:
    bus = BusClient(mosquitto.url(user, password), "intruder", max_retries=5, timeout=2)
    started = time.monotonic()
    with pytest.raises(BusError, match="refused") as info:
        await bus.connect()
    assert_no_password(info.value)
    assert "password" in str(info.value)  # tells the operator where to look
    # A refusal is final: no retries with backoff against the same credentials.
    assert bus.metrics.failed_attempts == 1 and time.monotonic() - started < 2


# -- TLS ----------------------------------------------------------------------------------


async def test_mqtts_roundtrip_with_password_and_ca_file(mosquitto_tls: Mosquitto) -> None:
    url, ca = mosquitto_tls.url(tls=True), mosquitto_tls.ca_file
    async with BusClient(url, "tls-sub", ca_file=ca) as sub, BusClient(url, "tls-pub", ca_file=ca) as pub:
        await sub.subscribe("prime/mq/tls")
        await pub.publish("prime/mq/tls", b"secret")
        assert await first_message(sub) == ("prime/mq/tls", b"secret")
    with pytest.raises(BusError, match="refused") as info:  # TLS does not replace the password
        await BusClient(mosquitto_tls.url(USER, "nope", tls=True), "tls-x", ca_file=ca, max_retries=0).connect()
    assert_no_password(info.value)


async def test_mqtts_without_the_ca_is_refused(mosquitto_tls: Mosquitto) -> None:
    bus = BusClient(mosquitto_tls.url(tls=True), "tls-untrusting", max_retries=0, timeout=2)
    with pytest.raises(BusError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed") as info:
        await bus.connect()
    assert_no_password(info.value)


# -- signed heartbeats --------------------------------------------------------------------

TOPICS = Topics("job-mq-live")

HEARTBEAT_NODE = """
import asyncio, os
from prime.bus import BusClient, Heartbeat, Topics
from prime.core.identity import Identity

async def main():
    ident = Identity.generate("victim")
    hb = Heartbeat(ident, Topics("job-mq-live"), interval=0.2)
    async with BusClient(os.environ["PRIME_TEST_BUS_URL"], ident.network_id, will=hb.will) as bus:
        hb.start(bus)
        print(ident.public_key_hex, flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_heartbeats_then_will_through_mosquitto_tls(mosquitto_tls: Mosquitto) -> None:
    url, ca = mosquitto_tls.url(tls=True), mosquitto_tls.ca_file
    tracker = LivenessTracker(timeout_s=30)
    async with BusClient(url, "watcher", ca_file=ca) as watcher:
        await watcher.subscribe(TOPICS.liveness_all)
        # The node uses the plain listener; the watcher TLS: both meet in one broker.
        proc = await spawn(HEARTBEAT_NODE, mosquitto_tls.url())
        try:
            assert proc.stdout is not None
            key = bytes.fromhex((await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip())
            await watch_until(watcher, tracker, lambda: tracker.is_alive(key))
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()

            await watch_until(watcher, tracker, lambda: went_offline(tracker, key))
            assert not tracker.is_alive(key) and key not in tracker.alive()
            assert tracker.dropped_total == 0
        finally:
            await kill(proc)
