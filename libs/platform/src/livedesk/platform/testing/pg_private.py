"""PostgreSQL servers of the tests' own: a temporary directory, a free port, gone afterwards.

The shared server's configuration is never changed. A test needing what it
does not allow (replication connections: Debian's pg_hba.conf has no
``replication`` line) runs :func:`private_primary` instead, an ``initdb``
cluster on a free port that allows them. The same pieces run the streaming
replicas of :mod:`livedesk.platform.testing.pg_replica`. PostgreSQL refuses
to run as root, so when the tests do, its programs run as the OS user owning
the cluster (``postgres`` for a new one).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from livedesk.platform.testing.processes import free_port

__all__ = [
    "LocalServer",
    "NoServerBinaries",
    "cluster_owner",
    "local_server",
    "private_primary",
    "run",
    "server_bindir",
    "start_server",
]

_DEBIAN = Path("/usr/lib/postgresql")

# Trust on loopback and the socket only, replication included: the server
# lives as long as one test on a port nobody else knows.
_HBA = """\
local all all trust
local replication all trust
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
"""


class NoServerBinaries(RuntimeError):
    """No PostgreSQL server programs (postgres, pg_ctl, initdb) are installed."""


@dataclass
class LocalServer:
    """A server in ``root`` (data in ``root/data``) on ``port``, run by ``run_as``."""

    root: Path
    port: int
    bindir: Path
    run_as: str | None
    user: str = "postgres"

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        """The DSN of ``database`` on this server."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        """Stop the server (fast shutdown); harmless when it is not running."""
        for mode in ("fast", "immediate"):  # immediate only if fast did not work
            if not (self.data_dir / "postmaster.pid").exists():
                return
            subprocess.run(
                [str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"],
                user=self.run_as,
                capture_output=True,
                check=False,
                timeout=60,
            )


def server_bindir(version_num: str | None = None) -> Path:
    """The directory of the server programs of that major version (newest installed if None).

    ``version_num`` is ``server_version_num`` (e.g. 150020). Debian keeps each
    major version in /usr/lib/postgresql/N/bin; elsewhere they are on PATH.
    """
    if version_num is not None:
        majors = [int(version_num) // 10000]
    else:
        found = (p.name for p in _DEBIAN.glob("*") if p.name.isdigit())
        majors = sorted((int(n) for n in found), reverse=True)
    for major in majors:
        debian = _DEBIAN / str(major) / "bin"
        if (debian / "postgres").exists():
            return debian
    found_on_path = shutil.which("postgres") or shutil.which("pg_ctl")
    if found_on_path is None:
        raise NoServerBinaries("no PostgreSQL server binaries (postgres, pg_ctl) found")
    return Path(found_on_path).parent


def cluster_owner(data_directory: str | None) -> str | None:
    """The OS user to run PostgreSQL as: the cluster's owner when we are root, else us."""
    if os.geteuid() != 0:
        return None
    if data_directory and os.path.exists(data_directory):
        return pwd.getpwuid(os.stat(data_directory).st_uid).pw_name
    return "postgres"


async def run(args: list[str], run_as: str | None) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL program as ``run_as``, its output captured."""
    # A thread: initdb and pg_basebackup take seconds and must not block the event loop.
    return await asyncio.to_thread(
        subprocess.run, args, user=run_as, capture_output=True, text=True, check=False,
        timeout=300,
    )  # fmt: skip


@asynccontextmanager
async def local_server(
    bindir: Path, run_as: str | None, *, prefix: str, user: str = "postgres"
) -> AsyncIterator[LocalServer]:
    """A temporary directory (owned by ``run_as``) and a free port for a server.

    Fill ``data_dir`` (initdb, pg_basebackup), then :func:`start_server`. On
    exit the server is stopped, whatever happened, and the directory deleted.
    """
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        if run_as is not None:
            shutil.chown(root, run_as, pwd.getpwnam(run_as).pw_gid)
        server = LocalServer(root, free_port(), bindir, run_as, user)
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def start_server(server: LocalServer, settings: Mapping[str, str]) -> None:
    """Start ``server`` (pg_ctl -w) with our own config files plus ``settings``.

    Our own files, outside the data directory: a copied cluster may have none
    (Debian keeps them in /etc) or ones naming another port and paths.
    RuntimeError with the server's log when it does not start.
    """
    root = server.root
    files = {
        root / "server.conf": "".join(
            f"{name} = {value}\n"
            for name, value in {
                "data_directory": f"'{server.data_dir}'",
                "hba_file": f"'{root / 'pg_hba.conf'}'",
                "ident_file": f"'{root / 'pg_ident.conf'}'",
                "port": str(server.port),
                "listen_addresses": "'127.0.0.1'",
                "unix_socket_directories": f"'{root}'",
                # A throwaway server: small, and no flushes to a disk others use.
                "shared_buffers": "'16MB'",
                "fsync": "off",
                **settings,
            }.items()
        ),
        root / "pg_hba.conf": _HBA,
        root / "pg_ident.conf": "",
    }
    for path, text in files.items():
        path.write_text(text)
        if server.run_as is not None:
            shutil.chown(path, server.run_as)
    log = root / "log"
    started = await run(
        [str(server.bindir / "pg_ctl"), "-D", str(server.data_dir), "-l", str(log),
         "-o", f"-c config_file={root / 'server.conf'}", "-w", "-t", "120", "start"],
        server.run_as,
    )  # fmt: skip
    if started.returncode != 0:
        output = log.read_text(errors="replace") if log.exists() else ""
        raise RuntimeError(
            f"PostgreSQL in {root} did not start: {started.stderr}{started.stdout}\n{output}"
        )


@asynccontextmanager
async def private_primary(version_num: str | None = None) -> AsyncIterator[str]:
    """A new cluster (``initdb``) allowing replication, running until the block ends; its URL.

    ``postgresql://postgres@127.0.0.1:PORT/postgres``: superuser ``postgres``,
    trust on 127.0.0.1, ``wal_level=replica``, 4 WAL senders, fsync off.
    ``version_num``: the major version to run (``server_version_num``; the
    newest installed if None). Stopped and deleted on exit. Raises
    NoServerBinaries when no PostgreSQL server is installed.
    """
    bindir = server_bindir(version_num)
    run_as = cluster_owner(None)
    async with local_server(bindir, run_as, prefix="livedesk-pg-") as server:
        made = await run(
            [str(bindir / "initdb"), "-D", str(server.data_dir), "-U", "postgres",
             "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync", "--no-instructions"],
            run_as,
        )  # fmt: skip
        if made.returncode != 0:
            raise RuntimeError(f"initdb failed: {made.stderr.strip()}")
        await start_server(
            server, {"wal_level": "replica", "max_wal_senders": "4", "max_connections": "50"}
        )
        yield server.url()
