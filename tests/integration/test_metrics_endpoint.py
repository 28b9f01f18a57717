"""``LocalNetwork(metrics=True)`` gives every process a /metrics port; a second node asking for
a port that is taken fails at start, naming it."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from prime.core.net import free_port
from prime.demo import LocalNetwork

pytestmark = pytest.mark.slow


def test_dht_node_serves_metrics_and_a_taken_port_is_refused(tmp_path):
    with LocalNetwork(tmp_path, trainers=1, rounds=1, metrics=True) as net:
        net.start_infrastructure()
        port = net.metrics_ports["dht"]
        deadline = time.monotonic() + 60
        while True:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline and net.procs["dht"].poll() is None, net.log_tail("dht")
                time.sleep(0.2)
        assert f'prime_node_info{{node="127.0.0.1:{net.dht_port}",role="dht"}} 1.0' in text
        assert "prime_dht_records 0.0" in text and "# TYPE prime_dht_records_refused_total counter" in text

        run = subprocess.run([sys.executable, "-m", "prime", "dht-node", "--listen", f"127.0.0.1:{free_port()}",
                              "--metrics-port", str(port)], capture_output=True, text=True, timeout=60)
        assert run.returncode == 2
        assert run.stderr.strip() == (f"error: --metrics-port {port}: port {port} on 127.0.0.1 is already in use; "
                                      f"choose a free port (or stop what holds it)")
        assert "listening" not in run.stdout  # refused before the node started
        assert net.procs["dht"].poll() is None  # the node holding the port is untouched
