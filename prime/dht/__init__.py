"""The network's memory: a Kademlia DHT of small signed pointer records, and blobs by digest.

- :mod:`records`      signed, owner-bound, size- and TTL-capped pointer records
- :mod:`storage`      Kademlia storage that keeps only valid records, within caps
- :mod:`protocol`     Kademlia protocol that drops and counts malformed datagrams
- :mod:`routing`      closest-first routing table, dead-peer memory, RTT estimate
- :mod:`crawling`     lookups that wait on no dead peer; values accepted only if verified
- :mod:`server`       joining, table refresh, quorum replication (kademlia.Server)
- :mod:`node`         ``DHTNode``: put / get verified records
- :mod:`blobstore`    content-addressed blobs on disk, written atomically
- :mod:`blobservice`  blobs over TCP, streamed and verified while received
"""

from prime.dht.blobfetch import fetch_blob, fetch_from_any
from prime.dht.blobservice import BlobServer
from prime.dht.blobstore import BlobStore
from prime.dht.node import DHTConfig, DHTNode
from prime.dht.records import MAX_DHT_RECORD_BYTES, DHTRecord, dht_key, make_record, validate_record
from prime.dht.storage import StorageConfig, ValidatingStorage

__all__ = [
    "MAX_DHT_RECORD_BYTES",
    "BlobServer",
    "BlobStore",
    "DHTConfig",
    "DHTNode",
    "DHTRecord",
    "StorageConfig",
    "ValidatingStorage",
    "dht_key",
    "fetch_blob",
    "fetch_from_any",
    "make_record",
    "validate_record",
]
