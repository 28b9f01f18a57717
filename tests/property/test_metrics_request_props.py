"""The /metrics server's request router: any bytes from the network get one of three answers,
and only a GET of /metrics (or /) is a scrape."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from prime.observability.collectors import node_registry
from prime.observability.server import MetricsServer, route


@given(st.binary(max_size=300))
def test_any_bytes_route_to_one_of_three_answers(request):
    assert route(request) in ("metrics", "bad_method", "not_found")


@given(st.sampled_from([b"/metrics", b"/"]), st.binary(max_size=40).filter(lambda b: b" " not in b),
       st.binary(max_size=60))
def test_a_get_of_metrics_is_a_scrape_whatever_follows(path, query, rest):
    assert route(b"GET " + path + b"?" + query + b" " + rest) == "metrics"
    assert route(b"POST " + path + b" " + rest) == "bad_method"


@settings(max_examples=15, deadline=None)
@given(st.binary(min_size=1, max_size=200))
def test_hostile_requests_cost_nothing(junk):
    async def main() -> None:
        registry, _ = node_registry("dht", "n")
        server = await MetricsServer.start(registry, "127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(junk + b"\r\n\r\n")
            await writer.drain()
            answer = await reader.read()
            writer.close()
            assert answer == b"" or answer.startswith(b"HTTP/1.1 ")
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
            assert (await reader.read()).startswith(b"HTTP/1.1 200 OK")
            writer.close()
        finally:
            await server.close()

    asyncio.run(main())
