"""A network peer: DHT node (UDP) and blob service (TCP) on one address.

Trainers and coordinators both are peers: they publish small signed pointer
records in the DHT and serve the blobs those records name. One ``HOST:PORT``
serves both protocols (UDP and TCP share the number), which is what
``--coordinators HOST:PORT`` and ``--listen HOST:PORT`` refer to.
"""

from __future__ import annotations

from pathlib import Path

from prime.core.errors import DHTError, PrimeError
from prime.core.identity import Identity
from prime.core.net import free_port
from prime.core.retry import with_retries
from prime.blobs.service import BlobServer, simulated_uplink
from prime.blobs.store import BlobStore
from prime.dht.node import DHTNode


class Peer:
    def __init__(self, dht: DHTNode, blobs: BlobStore, blob_server: BlobServer) -> None:
        self.dht = dht
        self.blobs = blobs
        self.blob_server = blob_server

    @classmethod
    async def create(
        cls,
        data_dir: str | Path,
        *,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        bootstrap: list[tuple[str, int]] = (),
        timeout: float = 5.0,
        max_blob_bytes: int,
    ) -> "Peer":
        host, port = listen
        port = port or free_port(host)
        blobs = BlobStore(Path(data_dir) / "blobs")
        blob_server = await BlobServer.start(blobs, host=host, port=port, max_blob_bytes=max_blob_bytes,
                                             max_bytes_per_second=simulated_uplink())
        try:
            others = [addr for addr in bootstrap if addr != (host, port)]
            dht = await DHTNode.create(host=host, port=port, bootstrap=others, timeout=timeout)
        except BaseException:
            await blob_server.close()
            raise
        if others and not dht.peers:
            await dht.close()
            await blob_server.close()
            raise DHTError(f"no DHT peer answered at {', '.join(f'{h}:{p}' for h, p in others)}; are they running?")
        return cls(dht, blobs, blob_server)

    @property
    def address(self) -> tuple[str, int]:
        return self.blob_server.address

    @property
    def address_str(self) -> str:
        host, port = self.address
        return f"{host}:{port}"

    async def put_quietly(self, identity: Identity, name: str, value: dict, *, ttl_s: float, max_retries: int,
                          what: str) -> bool:
        """A DHT put retried with backoff that never raises: for pointers the bus also carries.

        Callers run it in the background, so a dead peer's RPC timeout never stalls a round;
        ``with_retries`` logs the final failure once. Returns whether the put succeeded.
        """
        try:
            await with_retries(lambda: self.dht.put(identity, name, value, ttl_s=ttl_s),
                               what=f"DHT put of the {what}", max_retries=max_retries)
            return True
        except PrimeError:
            return False

    def metrics(self) -> dict:
        """DHT and blob-service counters, for the node's metrics file."""
        return {"dht": self.dht.metrics, "blob_server": self.blob_server.metrics}

    async def close(self) -> None:
        await self.dht.close()
        await self.blob_server.close()
