"""A hostile HTTP/2 client over TLS + ALPN, built on the ``h2`` library.

It does what a browser never does: holds flow-control windows at zero while
pinging, resets streams in batches, and writes frames exactly when the test says.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time

import h2.config
import h2.connection
import h2.events
import h2.settings


class H2Client:
    def __init__(self, port: int, window: int | None = None, timeout: float = 10) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        if window is not None:  # every stream's receive window (0: the server may send nothing)
            self.conn.local_settings = h2.settings.Settings(
                client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window,
                                             h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self.conn.initiate_connection()
        self.flush()
        self.bodies: dict[int, bytearray] = {}
        self.status: dict[int, int] = {}
        self.ended: set[int] = set()
        self.reset: set[int] = set()
        self.closed = False
        self.auto_window = window is None

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def get(self, path: str, send: bool = True) -> int:
        stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream, [(":method", "GET"), (":path", path),
                                        (":scheme", "https"), (":authority", "localhost")],
                               end_stream=True)
        self.bodies[stream] = bytearray()
        if send:
            self.flush()
        return stream

    def cancel(self, *streams: int, send: bool = True) -> None:
        """RST_STREAM (CANCEL) for every stream, in one write."""
        for stream in streams:
            self.conn.reset_stream(stream, error_code=8)
        if send:
            self.flush()

    def ping(self) -> None:
        self.conn.ping(b"12345678")
        self.flush()

    def pump(self, seconds: float = 0.2) -> None:
        """Read and handle frames for ``seconds`` (or until the server closes)."""
        deadline = time.monotonic() + seconds
        while not self.closed and time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except (ConnectionError, ssl.SSLError, OSError):
                data = b""
            if not data:
                self.closed = True
                return
            for event in self.conn.receive_data(data):
                self.handle(event)
            self.flush()

    def handle(self, event: object) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            self.status[event.stream_id] = int(dict(event.headers)[b":status"])
        elif isinstance(event, h2.events.DataReceived):
            self.bodies.setdefault(event.stream_id, bytearray()).extend(event.data)
            if self.auto_window and event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                    event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.ended.add(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self.reset.add(event.stream_id)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.closed = True

    def wait(self, done, timeout: float = 15) -> bool:
        deadline = time.monotonic() + timeout
        while not done() and not self.closed and time.monotonic() < deadline:
            self.pump(0.1)
        return bool(done())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
