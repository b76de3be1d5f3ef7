"""A hostile HTTP/2 client (the ``h2`` library) over TLS + ALPN, in memory.

It does what a browser never does: holds flow-control windows at zero while
pinging, resets streams in batches, and writes frames exactly when the test says.
:func:`connect_h2` connects it to an in-memory server (``tests/support/memory.py``)
listening on ``ssl:``: TLS on both ends, ALPN picks ``h2`` through the server's
own negotiation, and bytes move when the harness settles.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.python.failure import Failure

from tests.support.memory import Connection, Harness


class H2Client(Protocol):
    def __init__(self, window: int | None = None) -> None:
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        if window is not None:  # every stream's receive window (0: the server may send nothing)
            self.conn.local_settings = h2.settings.Settings(
                client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window,
                                             h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self.auto_window = window is None
        self.bodies: dict[int, bytearray] = {}
        self.frames: dict[int, list[int]] = {}
        """Per stream: the payload size of each DATA frame received."""
        self.order: list[int] = []
        """Streams in the order their responses ended."""
        self.status: dict[int, int] = {}
        self.headers: dict[int, list[tuple[bytes, bytes]]] = {}
        self.ended: set[int] = set()
        self.reset: set[int] = set()
        self.closed = False
        self.connection: Connection | None = None

    def connectionMade(self) -> None:
        self.conn.initiate_connection()
        self.flush()

    def dataReceived(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            self.handle(event)
        self.flush()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closed = True

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.transport.write(data)

    def get(self, path: str, send: bool = True, fields: tuple[tuple[str, str], ...] = (),
            method: str = "GET", end_stream: bool = True) -> int:
        stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream, [(":method", method), (":path", path),
                                        (":scheme", "https"), (":authority", "localhost"),
                                        *fields],
                               end_stream=end_stream)
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

    def handle(self, event: object) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            self.status[event.stream_id] = int(dict(event.headers)[b":status"])
            self.headers[event.stream_id] = list(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            self.bodies.setdefault(event.stream_id, bytearray()).extend(event.data)
            self.frames.setdefault(event.stream_id, []).append(len(event.data))
            if self.auto_window and event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                    event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.ended.add(event.stream_id)
            self.order.append(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self.reset.add(event.stream_id)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.closed = True

    def close(self) -> None:
        """The client hangs up (TLS close, then the socket)."""
        assert self.connection is not None
        self.connection.close()


def connect_h2(server: Harness, window: int | None = None) -> H2Client:
    """A new :class:`H2Client` on ``server`` (listening on ``ssl:``), TLS done, ALPN h2."""
    client = H2Client(window)
    client.connection = server.connect(
        client=client, tls=CertificateOptions(acceptableProtocols=[b"h2"]))
    assert client.transport.negotiatedProtocol == b"h2", "ALPN did not pick h2"
    return client


def connect_wide(server: Harness) -> H2Client:
    """:func:`connect_h2` with windows that never limit the server (2 GiB, stream and
    connection), as a gateway's are in effect (Go opens 4 MiB a stream, 1 GiB in all). The
    server has them before the first request, as it has a gateway's SETTINGS."""
    client = connect_h2(server, window=2**31 - 1)
    client.conn.increment_flow_control_window(2**31 - 1 - 65535)
    client.flush()
    server.settle()
    return client
