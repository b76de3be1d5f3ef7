"""A counting reverse proxy on 127.0.0.1 in front of the test registry.

It records every request that would reach the registry, and can play a sick
or lying registry: ``mode = "fail"`` answers 500, ``mode = "hang"`` holds the
request until :meth:`CountingProxy.release` (or a bounded wait) and then
answers 500; ``"corrupt"`` flips the last byte of every blob, ``"huge"`` makes
every manifest claim 300 MiB layers.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HUGE = 300 << 20
HANG_LIMIT = 30.0
"""A hung request gives up by itself after this long, so no test can wait forever."""


class CountingProxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, target: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.target = target
        self.mode = "pass"
        self.seen: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.recorded = threading.Condition(self.lock)
        self.released = threading.Event()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def record(self, method: str, path: str) -> None:
        with self.recorded:
            self.seen.append((method, path))
            self.recorded.notify_all()

    def count(self, kind: str = "") -> int:
        """Requests seen whose path holds ``/<kind>/`` (``manifests``, ``blobs``), or all."""
        with self.lock:
            return sum(1 for _, path in self.seen if f"/{kind}/" in path or not kind)

    def wait_for(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until ``count`` requests have been seen (False if they never came)."""
        with self.recorded:
            return self.recorded.wait_for(lambda: len(self.seen) >= count, timeout)

    def reset(self, mode: str = "pass") -> None:
        with self.lock:
            self.seen.clear()
        self.mode = mode
        self.released.clear()

    def release(self) -> None:
        self.released.set()


class _Handler(BaseHTTPRequestHandler):
    server: CountingProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.forward()

    def do_HEAD(self) -> None:
        self.forward()

    def forward(self) -> None:
        self.server.record(self.command, self.path)
        if self.server.mode == "hang":
            self.server.released.wait(HANG_LIMIT)
        if self.server.mode in ("fail", "hang"):
            self.answer(500, {"Content-Type": "text/plain"}, b"sick\n")
            return
        upstream = http.client.HTTPConnection(self.server.target, timeout=10)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            upstream.request(self.command, self.path, headers=headers)
            reply = upstream.getresponse()
            body = self.tamper(reply.read())
            keep = {k: v for k, v in reply.getheaders()
                    if k.lower() not in ("content-length", "connection", "transfer-encoding")}
            self.answer(reply.status, keep, body)
        finally:
            upstream.close()

    def tamper(self, body: bytes) -> bytes:
        if self.server.mode == "corrupt" and "/blobs/" in self.path and body:
            return body[:-1] + bytes([body[-1] ^ 0xFF])
        if self.server.mode == "huge" and "/manifests/" in self.path and body:
            manifest = json.loads(body)
            for layer in manifest.get("layers", []):
                layer["size"] = HUGE
            return json.dumps(manifest).encode()
        return body

    def answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


@contextmanager
def counting_proxy(target: str) -> Iterator[CountingProxy]:
    proxy = CountingProxy(target)
    # shutdown() waits for the loop to see its flag: poll often, not every 0.5 s.
    thread = threading.Thread(target=proxy.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.release()
        proxy.shutdown()
        proxy.server_close()
