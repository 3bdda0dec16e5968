"""Run the real ``vltool serve`` in a subprocess for a test: a free 127.0.0.1 port, wait for /health, stop it.

Usage::

    with served(chat_model, "--api-key", "k") as server:
        httpx.get(f"{server.url}/health")
        server.log()  # what the server printed so far (stdout and stderr together)

``served`` yields a :class:`Server` whose ``str()`` is its base URL (``http://127.0.0.1:PORT``),
so ``f"{server}/v1/models"`` also works.
"""

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

STARTUP_TIMEOUT_S = 180


@dataclass
class Server:
    """A running ``vltool serve``: its base URL, process and log file."""

    url: str
    process: subprocess.Popen
    log_path: Path

    def __str__(self) -> str:
        return self.url

    def log(self) -> str:
        """Everything the server has printed so far."""
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    """A TCP port nobody listens on at the moment (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def served(model: str | Path, *extra_args: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    """Start ``vltool serve MODEL --host 127.0.0.1 --port P EXTRA_ARGS``; yield it once /health answers.

    Args:
        model: the model directory (e.g. the ``chat_model`` fixture).
        extra_args: more ``vltool serve`` flags.
        env: variables added to the environment of the server (e.g. ``VLTOOL_API_KEY``).

    Raises:
        RuntimeError: the server exited or did not answer /health in time; the message holds its log.
    """
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="vltool_serve_") as folder:
        log_path = Path(folder) / "server.log"
        command = [sys.executable, "-m", "vltool.cli.app", "serve", str(model), "--host", "127.0.0.1"]
        command += ["--port", str(port), "--device", "cpu", *extra_args]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                stdin=subprocess.DEVNULL,
            )
        server = Server(f"http://127.0.0.1:{port}", process, log_path)
        try:
            _wait_for_health(server)
            yield server
        finally:
            _stop(process)


def _wait_for_health(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"vltool serve exited with code {server.process.returncode}:\n{server.log()[-4000:]}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"vltool serve did not answer /health in {STARTUP_TIMEOUT_S} s:\n{server.log()[-4000:]}")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM (uvicorn shuts down gracefully), then SIGKILL if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
