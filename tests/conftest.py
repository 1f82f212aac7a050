"""Shared fixtures: a real collector process on a free port over a real LMDB in a temp dir.

`start_server(**changes)` is a builder: every test changes only what it is about (an env var,
the worker count, the data dir to restart over the same LMDB). `server` is the default one.

    def test_something(server):
        status, headers, body = server.request("POST", "/beacon", body=b"...")

    def test_restart(start_server):
        first = start_server(workers=2)
        first.kill()
        second = start_server(data_dir=first.data_dir)
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import hypothesis
import orjson
import pytest

# CI runs the property tests with a fixed seed (RUMLINE_HYPOTHESIS_PROFILE=ci in .ci/run):
# a landing must not depend on which random cases one run happens to draw. Local runs keep
# exploring new cases.
hypothesis.settings.register_profile("ci", derandomize=True)
hypothesis.settings.load_profile(os.environ.get("RUMLINE_HYPOTHESIS_PROFILE", "default"))

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    """A running `python -m collector serve` and how to talk to it."""

    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    log_path: Path
    env: dict[str, str] = field(repr=False)
    host: str = "127.0.0.1"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request on a fresh connection: (status, headers lower-cased, body)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            response = conn.getresponse()
            data = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        finally:
            conn.close()

    def get_json(self, path: str, headers: Mapping[str, str] | None = None) -> tuple[int, object]:
        status, _, body = self.request("GET", path, headers=headers)
        return status, orjson.loads(body) if body else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"collector exited with {self.process.returncode} before ready:\n{self.log()}"
                )
            try:
                if self.request("GET", "/readyz", timeout=1.0)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"collector not ready after {timeout}s:\n{self.log()}")

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait: the exit code (the collector drains and checkpoints first)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the whole process group (every front and the sessionizer), no cleanup."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=10)
        # Children may outlive the parent for a moment; make sure the port and LMDB are free.
        _wait_group_gone(self.process.pid)


def _wait_group_gone(pgid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            return
        time.sleep(0.02)


class StartServer(Protocol):
    def __call__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        workers: int = 1,
        data_dir: Path | None = None,
        port: int | None = None,
        args: tuple[str, ...] = (),
        wait: bool = True,
    ) -> ServerProcess: ...


def _launcher(
    tmp_path_factory: pytest.TempPathFactory, started: list[ServerProcess]
) -> StartServer:
    def start(
        *,
        env: Mapping[str, str] | None = None,
        workers: int = 1,
        data_dir: Path | None = None,
        port: int | None = None,
        args: tuple[str, ...] = (),
        wait: bool = True,
    ) -> ServerProcess:
        run_dir = tmp_path_factory.mktemp("collector")
        data_dir = data_dir or run_dir / "data"
        port = port or free_port()
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("RUMLINE_")}
        full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        full_env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "RUMLINE_SESSION_TIMEOUT": "2s",
                "RUMLINE_SERVER_SHUTDOWN_TIMEOUT": "10s",
                "RUMLINE_LOG_LEVEL": "info",
            }
        )
        full_env.update(env or {})
        log_path = run_dir / "collector.log"
        command = [
            sys.executable, "-m", "collector", "serve",
            "--host", "127.0.0.1", "--port", str(port),
            "--data-dir", str(data_dir), "--workers", str(workers), *args,
        ]  # fmt: skip
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                command, cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so kill() reaches every worker
            )  # fmt: skip
        server = ServerProcess(process, port, data_dir, log_path, full_env)
        started.append(server)
        if wait:
            server.wait_ready()
        return server

    return start


@pytest.fixture
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartServer]:
    """Builder of collector processes; every process it started is killed at teardown."""
    started: list[ServerProcess] = []
    yield _launcher(tmp_path_factory, started)
    for server in started:
        server.kill()


@pytest.fixture
def server(start_server: StartServer) -> ServerProcess:
    """One collector (`--workers 1`, session timeout 2s) ready to serve."""
    return start_server()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One default collector for a whole test module (tests keep apart by app name)."""
    started: list[ServerProcess] = []
    yield _launcher(tmp_path_factory, started)()
    for server in started:
        server.kill()
