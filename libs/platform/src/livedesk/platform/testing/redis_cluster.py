"""A real Redis Cluster of the tests' own: three masters, no replicas, on free ports.

``redis-server`` processes with ``cluster-enabled yes`` in a temporary
directory, joined with ``redis-cli --cluster create``. :func:`redis_cluster`
waits (polling, with a deadline) until every node reports
``cluster_state:ok`` with all 16384 slots, and on exit stops exactly the
processes it started (by PID) and removes the directory.

Starting is synchronous (the cluster takes a few seconds to form), so a
module- or session-scoped fixture can share one cluster between tests; the
helpers that act on it (:meth:`RedisClusterProcesses.move_slot`,
:meth:`~RedisClusterProcesses.kill_clients`) are coroutines that open their
own short-lived connections, so they work from any test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.crc import key_slot

from livedesk.platform.testing.processes import free_port
from livedesk.platform.testing.waiting import wait_until

__all__ = ["ClusterNodeProcess", "RedisClusterProcesses", "redis_cluster"]

SLOTS = 16384


@dataclass
class ClusterNodeProcess:
    """One ``redis-server`` of the cluster."""

    port: int
    bus_port: int
    proc: subprocess.Popen[bytes]
    directory: Path
    node_id: str = ""

    def log(self) -> str:
        """The server's log so far."""
        path = self.directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _slot_owner_port(ranges: list[Any], slot: int) -> int | None:
    for start, end, primary, *_ in ranges:
        if int(start) <= slot <= int(end):
            return int(primary[1])
    return None


@dataclass
class RedisClusterProcesses:
    """A running cluster: its nodes, and what tests do to it."""

    nodes: list[ClusterNodeProcess]
    directory: Path

    @property
    def url(self) -> str:
        """``redis://`` URL of the first node: a cluster client discovers the rest from it."""
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    @property
    def startup_nodes(self) -> str:
        """Every node as ``host:port``, comma-separated."""
        return ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def node(self, port: int) -> ClusterNodeProcess:
        """The node listening on ``port``."""
        return next(n for n in self.nodes if n.port == port)

    async def _command(self, node: ClusterNodeProcess, *args: Any) -> Any:
        async with aioredis.Redis(host="127.0.0.1", port=node.port) as client:
            return await client.execute_command(*args)  # type: ignore[no-untyped-call]

    async def owner_of_slot(self, slot: int) -> ClusterNodeProcess:
        """The node that serves ``slot``, as the first node says (CLUSTER SLOTS)."""
        port = _slot_owner_port(await self._command(self.nodes[0], "CLUSTER SLOTS"), slot)
        if port is None:
            raise LookupError(f"slot {slot} is not served")
        return self.node(port)

    async def owner(self, key: str) -> ClusterNodeProcess:
        """The node that serves ``key``'s slot."""
        return await self.owner_of_slot(key_slot(key.encode()))

    async def move_slot(self, slot: int, to: ClusterNodeProcess) -> None:
        """Move an empty ``slot`` (no keys) to node ``to``, as ``redis-cli --cluster reshard``.

        The old owner then drops its sharded subscriptions of that slot (a
        ``sunsubscribe`` to each subscriber): what clients see in a reshard.
        """
        source = await self.owner_of_slot(slot)
        if source is to:
            return
        await self._command(to, "CLUSTER SETSLOT", slot, "IMPORTING", source.node_id)
        await self._command(source, "CLUSTER SETSLOT", slot, "MIGRATING", to.node_id)
        keys = int(await self._command(source, "CLUSTER COUNTKEYSINSLOT", slot))
        if keys:
            raise RuntimeError(f"slot {slot} holds {keys} keys: move_slot only moves empty slots")
        # Target first, then the source, then the others (the order redis-cli uses).
        for node in [to, source, *(n for n in self.nodes if n not in (to, source))]:
            await self._command(node, "CLUSTER SETSLOT", slot, "NODE", to.node_id)
        await self.wait_agreed(slot, to)

    async def wait_agreed(
        self, slot: int | None = None, owner: ClusterNodeProcess | None = None
    ) -> None:
        """Wait until every node says the cluster is ok (and, given ``slot``, ``owner`` has it)."""

        async def agreed() -> bool:
            for node in self.nodes:
                info = await self._command(node, "CLUSTER INFO")  # parsed to a dict
                if info["cluster_state"] != "ok" or int(info["cluster_slots_ok"]) != SLOTS:
                    return False
                if slot is not None and owner is not None:
                    ranges = await self._command(node, "CLUSTER SLOTS")
                    if _slot_owner_port(ranges, slot) != owner.port:
                        return False
            return True

        await wait_until(agreed, timeout=20, interval=0.1, what="cluster agreement")

    async def kill_clients(self, node: ClusterNodeProcess, client_type: str = "pubsub") -> int:
        """``CLIENT KILL TYPE <client_type>`` on ``node``: how many connections it cut."""
        return int(await self._command(node, "CLIENT KILL TYPE", client_type))

    def stop(self, node: ClusterNodeProcess) -> None:
        """Stop ``node`` (SIGTERM to its PID); its cluster config stays for :meth:`start`."""
        _stop(node.proc)

    async def start(self, node: ClusterNodeProcess) -> None:
        """Start a stopped ``node`` again, same ports and config; wait until the cluster is ok."""
        binary = shutil.which("redis-server")
        assert binary is not None
        node.proc = _launch(binary, node.port, node.bus_port, node.directory)
        await wait_until(
            lambda: asyncio.to_thread(_answers, node), timeout=15, what="node answering"
        )
        await self.wait_agreed()

    async def pause(self, node: ClusterNodeProcess, milliseconds: int) -> None:
        """``CLIENT PAUSE <ms> ALL`` on ``node``: it takes no client's command meanwhile."""
        await self._command(node, "CLIENT PAUSE", milliseconds, "ALL")

    async def subscriber_count(self, node: ClusterNodeProcess, channel: str) -> int:
        """Connections subscribed to shard channel ``channel`` on ``node`` (PUBSUB SHARDNUMSUB)."""
        reply = await self._command(node, "PUBSUB SHARDNUMSUB", channel)
        return int(reply[0][1])  # redis-py pairs the reply up: [(channel, count)]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _poll(probe: Any, timeout: float, what: str) -> None:
    """``wait_until`` for synchronous start-up code: ``probe()`` until truthy or the deadline."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        time.sleep(0.05)


def _start_node(binary: str, root: Path) -> ClusterNodeProcess:
    port, bus_port = free_port(), free_port()
    directory = root / str(port)
    directory.mkdir()
    return ClusterNodeProcess(port, bus_port, _launch(binary, port, bus_port, directory), directory)


def _launch(binary: str, port: int, bus_port: int, directory: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(directory), "--logfile", "redis.log",
            "--cluster-enabled", "yes", "--cluster-port", str(bus_port),
            "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _answers(node: ClusterNodeProcess) -> bool:
    if node.proc.poll() is not None:
        raise RuntimeError(f"redis-server exited with {node.proc.returncode}:\n{node.log()}")
    try:
        with redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=2) as client:
            return bool(client.ping())
    except redis.ConnectionError:
        return False


def _cluster_ok(node: ClusterNodeProcess) -> bool:
    with redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=2) as client:
        info = client.execute_command("CLUSTER INFO")
        return info["cluster_state"] == "ok" and int(info["cluster_slots_ok"]) == SLOTS


@contextlib.contextmanager
def redis_cluster(
    directory: Path | None = None, masters: int = 3
) -> Iterator[RedisClusterProcesses]:
    """Start a cluster of ``masters`` masters (no replicas); stopped and removed on exit.

    Raises RuntimeError when ``redis-server`` / ``redis-cli`` are not
    installed (tests check ``shutil.which`` to skip instead).
    """
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        raise RuntimeError("redis-server and redis-cli are needed for a Redis Cluster")
    root = Path(tempfile.mkdtemp(prefix="redis-cluster-", dir=directory))
    nodes: list[ClusterNodeProcess] = []
    try:
        for _ in range(masters):
            nodes.append(_start_node(server, root))
        _poll(lambda: all(_answers(n) for n in nodes), 15, "cluster nodes answering")
        create = subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            timeout=60,
            check=False,
        )  # fmt: skip
        if create.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{create.stdout.decode()}")
        _poll(lambda: all(_cluster_ok(n) for n in nodes), 20, "cluster_state:ok on every node")
        for node in nodes:
            with redis.Redis(host="127.0.0.1", port=node.port) as client:
                node.node_id = client.execute_command("CLUSTER MYID").decode()
        yield RedisClusterProcesses(nodes, root)
    finally:
        for node in nodes:
            _stop(node.proc)
        shutil.rmtree(root, ignore_errors=True)
