"""A real ``twistd hps`` process on 127.0.0.1, and a builder for plugin trees.

Black-box tests drive the server exactly as operators do: through the
``twistd`` script, flags, a port, and its log.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import random
import re
import signal
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from pathlib import Path

import pytest

from tests.support.polling import poll

REPO = Path(__file__).resolve().parents[2]
WASM_HEADER = b"\0asm\x01\0\0\0"
_LISTENING = re.compile(r"hps listening on (\S+):(\d+)")


def twistd_path() -> str:
    script = Path(sys.executable).parent / "twistd"
    if not script.exists():
        pytest.fail(f"twistd not found beside {sys.executable}: install twisted")
    return str(script)


_BYTES = [bytes([i]) for i in range(256)]


def wasm_bytes(size: int, seed: int = 0) -> bytes:
    """Wasm-shaped bytes: the magic, then text-like data that compresses as modules do
    (words from a 256-word vocabulary, each followed by a random byte)."""
    rng = random.Random(seed)
    words = [bytes(rng.choices(range(97, 123), k=rng.randint(2, 9))) for _ in range(256)]
    parts, have = [WASM_HEADER], len(WASM_HEADER)
    while have < size:
        count = (size - have) // 6 + 2  # >= 2: itemgetter of one index returns no tuple
        # Random bytes pick words and separators in C: tests use multi-megabyte bodies,
        # and a Python loop per word took ~0.25 s per megabyte.
        picked = itemgetter(*rng.randbytes(count))(words)
        separators = itemgetter(*rng.randbytes(count))(_BYTES)
        block = b"".join(chain.from_iterable(zip(picked, separators, strict=True)))
        parts.append(block)
        have += len(block)
    return b"".join(parts)[:size]


@dataclass
class Tree:
    """A plugin tree under a temp dir."""

    root: Path

    def add(self, name: str, version: str, body: bytes | None = None, size: int = 4096) -> bytes:
        data = body if body is not None else wasm_bytes(size, seed=self.seed(name, version))
        target = self.root / name / version / "plugin.wasm"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(".plugin.wasm.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        return data

    @staticmethod
    def seed(name: str, version: str) -> int:
        """The same on every run and machine (``hash()`` of a str changes per process)."""
        return zlib.crc32(f"{name}/{version}".encode())

    @staticmethod
    def sha256(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


@dataclass
class Server:
    process: subprocess.Popen
    lines: list[str] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)

    @property
    def port(self) -> int:
        return self.ports[0]

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def log(self) -> str:
        return "".join(self.lines)

    def request(self, path: str, method: str = "GET", headers: dict | None = None,
                body: bytes | None = None, timeout: float = 10) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            named = {key.lower() for key in headers or {}}
            conn.putrequest(method, path, skip_host="host" in named, skip_accept_encoding=True)
            for key, value in (headers or {}).items():
                conn.putheader(key, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            reply = conn.getresponse()
            return Response(reply.status, reply.headers, reply.read())
        finally:
            conn.close()

    def get(self, path: str, **headers: str) -> Response:
        return self.request(path, headers={k.replace("_", "-"): v for k, v in headers.items()})

    def wait_ready(self, timeout: float = 15) -> None:
        if not poll(lambda: self.request("/readyz").status == 200, timeout):
            pytest.fail(f"server not ready after {timeout}s:\n{self.log()}")

    def wait_log(self, pattern: str, timeout: float = 10) -> str:
        match = poll(lambda: re.search(pattern, self.log()), timeout)
        if match is None:
            pytest.fail(f"log never matched {pattern!r}:\n{self.log()}")
        return match.group(0)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        return stop_process(self.process, sig, timeout)


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM,
                 timeout: float = 30) -> int:
    """Send ``sig`` to a process this test started (by its PID), SIGKILL after ``timeout``."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def _pump(server: Server) -> None:
    assert server.process.stdout is not None
    for line in server.process.stdout:
        server.lines.append(line)
        match = _LISTENING.search(line)
        if match:
            server.ports.append(int(match.group(2)))
            server.started.set()
    server.started.set()


def server_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_twistd(
    *args: str, cwd: Path | None = None, timeout: float = 20
) -> subprocess.CompletedProcess:
    """Run ``twistd -n --pidfile= hps ARGS`` to completion (for start-up failures)."""
    return subprocess.run([twistd_path(), "-n", "--pidfile=", "hps", *args], cwd=cwd or REPO,
                          env=server_env(), capture_output=True, text=True, timeout=timeout)


def start_server(*args: str, cwd: Path | None = None, ready: bool = True,
                 listen: str = "tcp:0:interface=127.0.0.1", wrap: tuple[str, ...] = ()) -> Server:
    """Start ``twistd hps``; ``wrap`` is a command that runs it (e.g. ``setpriv ...``)."""
    command = [*wrap, twistd_path(), "-n", "--pidfile=", "hps", "--listen", listen, *args]
    process = subprocess.Popen(command, cwd=cwd or REPO, env=server_env(), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    server = Server(process)
    threading.Thread(target=_pump, args=(server,), daemon=True).start()
    if not server.started.wait(20) or not server.ports:
        server.stop(signal.SIGKILL)
        pytest.fail(f"twistd hps did not start: {' '.join(command)}\n{server.log()}")
    if ready:
        server.wait_ready()
    return server


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    root = tmp_path / "plugins"
    root.mkdir()
    return Tree(root)


@pytest.fixture
def serve(request: pytest.FixtureRequest) -> Iterator:
    """``serve(*args)`` starts a server; every one is stopped at teardown.

    Only for tests marked ``process``: real processes are few and counted
    (tests/test_suite.py), and ``-m "not process"`` must leave none behind."""
    if request.node.get_closest_marker("process") is None:
        pytest.fail("a test that starts twistd hps must be marked @pytest.mark.process")
    started: list[Server] = []

    def factory(*args: str, **kwargs) -> Server:
        server = start_server(*args, **kwargs)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop(signal.SIGKILL, timeout=5)
