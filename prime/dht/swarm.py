"""Peer-assisted blob distribution: fetch from peers that already hold a blob, then serve it.

When every trainer fetches the new model from the coordinator, the coordinator's
upload is the round's bottleneck. Here a node that holds a verified blob serves it
too (:func:`serve_held`, or a node's own running server with
:meth:`BlobServer.limit_uploads`) and says so in the DHT (:func:`announce_provider`);
later fetchers look the providers up (:func:`find_providers`) and
:func:`fetch_with_peers` spreads them over those peers, keeping the origin (the
coordinator) as the last resort. ``TrainerNode`` does this for models of at least
``network.peer_assist_min_bytes`` (:mod:`prime.trainer.modelfetch`).

Load spreads without coordination: each fetcher tries the peers in its own random
order, and a provider at its ``max_clients`` refuses at once, so the fetcher moves
on. With an origin that serves few clients at a time, the blob fans out as a tree.
Every copy is verified against the digest while received (:func:`fetch_blob`), so a
lying peer costs a retry, never a bad blob.

Self-contained: only :mod:`prime.blobs.service`, :mod:`prime.blobs.store` and :class:`DHTNode`'s
public ``put``/``get``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from prime.core.errors import BlobError, DHTError
from prime.core.identity import Identity
from prime.core.net import parse_hostport
from prime.blobs.fetch import fetch_blob
from prime.blobs.service import BlobServer
from prime.blobs.wire import DEFAULT_MAX_BLOB_BYTES, DEFAULT_TIMEOUT_S
from prime.blobs.store import BlobStore, check_digest
from prime.dht.node import DHTNode

log = logging.getLogger(__name__)

Address = tuple[str, int]
ProviderSource = Iterable[Address] | Callable[[], Awaitable[Iterable[Address]]]

#: Concurrent transfers a seeding peer serves by default: few, so fetchers fan out.
DEFAULT_SEED_CLIENTS = 2
DEFAULT_DEADLINE_S = 300.0
_BACKOFF_S = (0.05, 0.5)  # first and longest wait when every provider refused (each wait is a DHT lookup)


class Fetched(NamedTuple):
    """Where a fetched blob lies, and who sent it (None: it was already held)."""

    path: Path
    source: Address | None


def order_providers(providers: Iterable[Address], origin: Iterable[Address] = (), *,
                    exclude: Iterable[Address] = (), rng: random.Random | None = None) -> list[Address]:
    """Peers in random order (spreads load across independent fetchers), then the origin(s).

    Duplicates and ``exclude`` (this node's own server) are dropped; an origin listed
    among the providers still goes last.
    """
    rng = rng or random.Random()
    skip, origins = set(exclude), list(dict.fromkeys(origin))
    peers = [p for p in dict.fromkeys(providers) if p not in skip and p not in origins]
    rng.shuffle(peers)
    return peers + [o for o in origins if o not in skip]


async def fetch_with_peers(
    providers: ProviderSource,
    digest: str,
    store: BlobStore,
    *,
    origin: Iterable[Address] = (),
    exclude: Iterable[Address] = (),
    max_bytes: int = DEFAULT_MAX_BLOB_BYTES,
    timeout: float = DEFAULT_TIMEOUT_S,
    deadline: float = DEFAULT_DEADLINE_S,
    rng: random.Random | None = None,
) -> Fetched:
    """Fetch ``digest`` into ``store`` from a peer that holds it, else from ``origin``.

    ``providers`` is a list of peers, or an async callable returning the current list
    (asked again after every round of refusals, so peers that finished meanwhile are
    found). Each pass tries every peer in random order, then the origin; when all
    refuse (busy, gone, or a bad copy), it waits a short jittered backoff and tries
    again, until ``deadline`` seconds have passed. ``timeout`` bounds each connect and
    read, as in :func:`fetch_blob`. Returns the path and the provider that sent it;
    raises ``BlobError`` naming each provider's failure.
    """
    check_digest(digest)
    if store.has(digest):
        return Fetched(store.path(digest), None)
    rng = rng or random.Random()
    origin, exclude = list(origin), list(exclude)
    give_up = time.monotonic() + deadline
    backoff = _BACKOFF_S[0]
    failures: dict[Address, str] = {}
    while True:
        current = await providers() if callable(providers) else providers
        for host, port in order_providers(current, origin, exclude=exclude, rng=rng):
            try:
                path = await fetch_blob(host, port, digest, store, max_bytes=max_bytes, timeout=timeout)
                return Fetched(path, (host, port))
            except BlobError as exc:  # busy, gone, stalled, lying about size or bytes: next one
                failures[(host, port)] = str(exc)
                log.debug("blob %s not fetched from %s:%d: %s", digest[:12], host, port, exc)
        if time.monotonic() + backoff > give_up:
            detail = "; ".join(f"{h}:{p}: {why}" for (h, p), why in failures.items()) or "no providers found"
            raise BlobError(f"could not fetch blob {digest} within {deadline:.0f}s: {detail}")
        await asyncio.sleep(backoff * (0.5 + rng.random()))
        backoff = min(backoff * 2, _BACKOFF_S[1])


async def serve_held(
    store: BlobStore,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    max_clients: int = DEFAULT_SEED_CLIENTS,
    max_bytes_per_second: float | None = None,
    max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> BlobServer:
    """Serve every verified blob in ``store`` to other peers; close the server when done seeding.

    A small ``max_clients`` keeps one peer from taking the whole crowd: the rest are
    refused at once and try another provider.
    """
    return await BlobServer.start(store, host, port, max_blob_bytes=max_blob_bytes, timeout=timeout,
                                  max_clients=max_clients, max_bytes_per_second=max_bytes_per_second)


# -- provider records in the DHT --------------------------------------------------------


def provider_record_name(digest: str) -> str:
    """The DHT record name under which a node says it serves ``digest``."""
    return f"blobs/{check_digest(digest)}/provider"


async def announce_provider(dht: DHTNode, identity: Identity, digest: str, address: Address,
                            ttl_s: float = 600.0) -> None:
    """Publish, signed by ``identity``, that ``address`` serves ``digest`` (for ``ttl_s`` seconds)."""
    await dht.put(identity, provider_record_name(digest), {"address": f"{address[0]}:{address[1]}"}, ttl_s=ttl_s)


async def find_providers(dht: DHTNode, owners: Iterable[bytes], digest: str) -> list[Address]:
    """Addresses that any of ``owners`` (public keys) announced for ``digest``; unreachable ones skipped.

    Records are owner-bound, so a node can only ever announce itself: a forged
    record is refused by the DHT before it gets here.
    """
    name = provider_record_name(digest)
    owners = list(owners)
    values = await asyncio.gather(*(dht.get(owner, name) for owner in owners), return_exceptions=True)
    found: list[Address] = []
    for owner, value in zip(owners, values):
        if isinstance(value, BaseException):
            if not isinstance(value, DHTError):
                raise value
            continue
        if not isinstance(value, dict) or not isinstance(value.get("address"), str):
            continue
        try:
            found.append(parse_hostport(value["address"]))
        except ValueError:
            log.debug("provider record of %s has a bad address %r", owner.hex()[:12], value["address"])
    return found


def provider_lookup(dht: DHTNode, owners: Sequence[bytes], digest: str, *, sample: int | None = None,
                    rng: random.Random | None = None) -> Callable[[], Awaitable[list[Address]]]:
    """A ``providers`` callable for :func:`fetch_with_peers` that asks the DHT each time.

    With ``sample``, each call asks a fresh random ``sample`` of the owners, so a large
    crowd costs a bounded number of DHT gets per pass yet every owner is asked in time.
    """
    rng = rng or random.Random()
    owners = list(owners)

    async def lookup() -> list[Address]:
        asked = owners if sample is None or sample >= len(owners) else rng.sample(owners, sample)
        return await find_providers(dht, asked, digest)

    return lookup
