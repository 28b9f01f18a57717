"""Every inbound datagram is either answered or dropped with a counted reason; none raises."""

from __future__ import annotations

import ipaddress

import umsgpack
from hypothesis import given, settings
from hypothesis import strategies as st
from kademlia.node import Node

from prime.dht.protocol import ValidatingProtocol, _is_contact
from prime.dht.storage import ValidatingStorage
from tests.dhtutil import RecordingTransport

NODE_ID = bytes(range(20))


args = st.lists(
    st.binary(min_size=20, max_size=20) | st.binary(max_size=40) | st.integers(-5, 5) | st.text(max_size=5) | st.none(),
    max_size=4,
)
names = st.sampled_from(["ping", "stun", "store", "find_node", "find_value", "nope", "__init__", ""]) | st.text(max_size=8)
requests = st.builds(lambda n, a: umsgpack.packb([n, a]), names, args)
bodies = requests | st.binary(max_size=200) | st.builds(umsgpack.packb, args)
datagrams = st.builds(
    lambda kind, msg_id, body: kind + msg_id + body,
    st.sampled_from([b"\x00", b"\x01", b"\x02"]),
    st.binary(min_size=20, max_size=20),
    bodies,
) | st.binary(max_size=64)


@settings(max_examples=500, deadline=None)
@given(st.lists(datagrams, min_size=1, max_size=10))
def test_datagrams_are_answered_or_counted(batch: list[bytes]) -> None:
    protocol = ValidatingProtocol(Node(NODE_ID), ValidatingStorage(), ksize=20)
    transport = RecordingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    for datagram in batch:
        sent, dropped = len(transport.sent), sum(protocol.metrics.dropped.values())
        protocol.datagram_received(datagram, ("127.0.0.1", 40000))
        answered = len(transport.sent) - sent
        counted = sum(protocol.metrics.dropped.values()) - dropped
        assert answered + counted == 1, (datagram, protocol.metrics.dropped)
    assert len(protocol.storage) == 0


ip_texts = (
    st.ip_addresses().map(str)
    | st.text(alphabet="0123456789abcdef.:%x \x00", max_size=45)
    | st.text(max_size=20)
)


@settings(max_examples=2000, deadline=None)
@given(ip_texts)
def test_contact_ip_check_agrees_with_ipaddress_but_refuses_scope_ids(text: str) -> None:
    """The fast ``inet_pton`` check accepts exactly the literals ``ipaddress`` does, minus ``%scope``."""
    try:
        ipaddress.ip_address(text)
        expected = "%" not in text
    except ValueError:
        expected = False
    assert _is_contact([NODE_ID, text, 4000]) is expected
