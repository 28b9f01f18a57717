"""The network's memory: a Kademlia DHT of small signed pointer records (blobs by digest
live in :mod:`prime.blobs`, which knows nothing of Kademlia).

- :mod:`records`      signed, owner-bound, size- and TTL-capped pointer records
- :mod:`storage`      Kademlia storage that keeps only valid records, within caps
- :mod:`protocol`     Kademlia protocol that drops and counts malformed datagrams
- :mod:`routing`      closest-first routing table, dead-peer memory, RTT estimate
- :mod:`crawling`     lookups that wait on no dead peer; values accepted only if verified
- :mod:`server`       joining, table refresh, quorum replication (kademlia.Server)
- :mod:`node`         ``DHTNode``: put / get verified records
- :mod:`peer`         one node's DHT peer and blob service under one identity
- :mod:`swarm`        provider records for peer-assisted blob distribution
"""

from prime.blobs.fetch import fetch_blob, fetch_from_any
from prime.blobs.service import BlobServer
from prime.blobs.store import BlobStore
from prime.dht.node import DHTConfig, DHTNode
from prime.dht.records import MAX_DHT_RECORD_BYTES, DHTRecord, dht_key, make_record, validate_record
from prime.dht.storage import StorageConfig, ValidatingStorage

__all__ = [
    "MAX_DHT_RECORD_BYTES",
    "DHTConfig",
    "DHTNode",
    "DHTRecord",
    "StorageConfig",
    "ValidatingStorage",
    "dht_key",
    "make_record",
    "validate_record",
]
