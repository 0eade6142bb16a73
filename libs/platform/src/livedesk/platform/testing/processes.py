"""Running a service as a real child process, as Kubernetes would."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO

import aiohttp

from livedesk.platform.testing.waiting import wait_until

__all__ = ["ServiceProcess", "free_port"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServiceProcess:
    """``python -m <module>`` with ``env``; output goes to ``log_path``."""

    def __init__(self, module: str, env: dict[str, str], log_path: Path, http_port: int) -> None:
        self.module = module
        self.env = {**os.environ, "LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1", **env}
        self.log_path = log_path
        self.http_port = http_port
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:<port> of the service's HTTP server."""
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> ServiceProcess:
        """Start the process (not waiting for readiness)."""
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module], env=self.env, stdout=self._log, stderr=self._log
        )
        return self

    async def wait_ready(self, timeout: float = 90.0) -> None:
        """Poll /readyz until 200; fails early, with the log, if the process exits.

        The generous default is for a busy 2-core machine, where several pods
        importing and migrating at once take tens of seconds; a healthy pod
        is ready in about a second.
        """

        async def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.module} exited with {self.proc.returncode}:\n{self.output()[-4000:]}"
                )
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"{self.base_url}/readyz") as resp,
                ):
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until(ready, timeout=timeout, interval=0.1, what=f"{self.module} ready")

    def output(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self) -> list[dict[str, object]]:
        """The process's JSON log lines, parsed (other lines skipped)."""
        events = []
        for line in self.output().splitlines():
            with contextlib.suppress(ValueError):
                parsed = json.loads(line)
                if isinstance(parsed, dict):
                    events.append(parsed)
        return events

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait for the exit code (SIGKILL after ``timeout``)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            self._close_log()

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop_quietly(self) -> None:
        """Best-effort stop for fixture teardown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self._close_log()
