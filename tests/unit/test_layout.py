"""The tree's boundaries hold: blob storage and transfer do not depend on the DHT."""

from __future__ import annotations

import subprocess
import sys


def test_blobs_import_nothing_of_kademlia_or_the_dht():
    code = ("import sys, prime.blobs, prime.blobs.fetch, prime.blobs.service, prime.blobs.store, prime.blobs.wire; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'kademlia' or m.startswith('prime.dht')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
