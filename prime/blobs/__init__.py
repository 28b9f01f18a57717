"""Blobs by digest: content-addressed storage and its transfer, independent of the DHT.

- :mod:`store`    content-addressed blobs on disk, written atomically
- :mod:`wire`     the request/response frames of the blob protocol (bounded decoders)
- :mod:`service`  blobs over TCP, streamed and verified while received (server side)
- :mod:`fetch`    the client: fetch by digest, from one address or the first that has it

The DHT (:mod:`prime.dht`) only says who holds a blob; nothing here imports Kademlia.
"""

from prime.blobs.fetch import fetch_blob, fetch_from_any
from prime.blobs.service import BlobServer
from prime.blobs.store import BlobStore

__all__ = ["BlobServer", "BlobStore", "fetch_blob", "fetch_from_any"]
