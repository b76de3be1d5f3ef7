"""HTTP/2 against a hostile client (the ``h2`` library over TLS + ALPN), in memory.

The server is the real one on a fake reactor (tests/support/memory.py) listening on
``ssl:``; the client speaks TLS and HTTP/2 to it. The real-process TLS + HTTP/2 smoke
test is tests/test_tls.py (curl).
"""

from __future__ import annotations

from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher

from hps._twisted import inner_channel
from hps.bodies import STALL_SECONDS
from hps.files import Source
from hps.http2 import (
    FRAME_PAYLOAD,
    LOG_EVERY,
    MAX_STREAMS,
    WRITE_BYTES,
    Outbox,
    PluginH2Connection,
    StatelessEncoder,
    data_frames,
    frame_head,
    headers_frame,
    restated,
    same_mark,
    table_mark,
)
from hps.site import SWEEP_SECONDS
from tests.support.certificates import self_signed
from tests.support.h2client import connect_h2, connect_wide
from tests.support.memory import Harness
from tests.support.server import Tree

BIG = "/plugins/big/1.0.0/plugin.wasm"
SMALL = "/plugins/small/1.0.0/plugin.wasm"
BIG_SIZE = 1 << 20
"""Many times the client's window (64 KiB) and the server's per-stream backlog."""


@pytest.fixture
def h2site(tree: Tree, harness, tmp_path: Path):
    """``h2site(**knobs)``: an in-memory server on ``ssl:`` serving ``big`` and ``small``."""
    def start(**knobs: object) -> tuple[Harness, bytes]:
        body = tree.add("big", "1.0.0", size=BIG_SIZE)
        tree.add("small", "1.0.0", size=100_000)
        key, cert = self_signed(tmp_path)
        server = harness(tree.root, listen=[f"ssl:8443:privateKey={key}:certKey={cert}"],
                         **knobs)
        assert len(server.site.state.catalog) == 2
        return server, body
    return start


def quiet(server: Harness) -> None:
    log = server.log()
    assert "Traceback" not in log and "Unhandled" not in log, log


def test_cancels_and_bodies_reset_only_their_own_streams(h2site) -> None:
    """Streams opened and cancelled in one write, then a request body that never ends,
    each beside a download that must finish whole."""
    server, body = h2site()
    client = connect_h2(server)
    big = client.get(BIG)
    for _ in range(5):
        server.turn()
    for burst in (2, 2, 2, 200):  # each opened and cancelled, all in the same write
        for _ in range(burst):
            client.cancel(client.get(SMALL, send=False), send=False)
        client.flush()
        server.turn()
        assert big not in client.ended, "the download is still under way beside them"
    server.settle()
    assert big in client.ended and bytes(client.bodies[big]) == body and not client.closed
    client.close()
    quiet(server)

    client = connect_h2(server)
    big = client.get(BIG)
    post = client.conn.get_next_available_stream_id()
    client.conn.send_headers(post, [(":method", "POST"), (":path", "/"), (":scheme", "https"),
                                    (":authority", "localhost")])
    for _ in range(4):  # 32 KiB of a body that never ends (past MAX_BODY, within the window)
        client.conn.send_data(post, b"x" * 8192)
    client.flush()
    server.settle()
    assert post in client.reset and post not in client.ended
    assert big in client.ended and bytes(client.bodies[big]) == body and not client.closed
    client.close()
    quiet(server)


def accounting(server: Harness) -> dict[str, float]:
    """What the server holds (its own books, as the cap sees them), and its metrics."""
    scrape = server.metrics()  # on a connection of its own, closed when it returns
    return {"connections": len(server.site.connections) + len(server.site.probes),
            "descriptors": server.site.descriptors_in_use(), "files": Source.open,
            "in flight": server.site.in_flight,
            "open (metric)": scrape["hps_connections_open"],
            "in flight (metric)": scrape["hps_responses_in_flight"],
            "cut (metric)": scrape.get('hps_responses_aborted_total{reason="send_timeout"}', 0)}


CLIENTS = 3


def test_window_zero_streams_are_cut_by_the_send_deadline_and_leave_nothing_open(
        h2site) -> None:
    """Connections at the stream cap (100), every window 0 while the client PINGs."""
    send_timeout = 2.0
    server, body = h2site(send_timeout=send_timeout)
    warm = connect_h2(server)
    stream = warm.get(BIG)
    server.settle()
    assert bytes(warm.bodies[stream]) == body
    warm.close()
    before = accounting(server)
    clients = [connect_h2(server, window=0) for _ in range(CLIENTS)]
    for client in clients:
        assert client.conn.remote_settings.max_concurrent_streams == MAX_STREAMS
        for _ in range(MAX_STREAMS):
            client.get(BIG, send=False)
        client.flush()
    server.settle()
    began = server.reactor.seconds()
    held = accounting(server)
    assert held["connections"] == before["connections"] + CLIENTS
    assert held["in flight"] == before["in flight"] + CLIENTS * MAX_STREAMS
    while not all(len(c.reset) == MAX_STREAMS for c in clients):
        assert server.reactor.seconds() - began <= send_timeout + 2 * SWEEP_SECONDS, (
            f"only {sum(len(c.reset) for c in clients)} streams cut")
        for client in clients:
            client.ping()
        server.advance(0.1, step=0.1)
        if server.reactor.seconds() - began < send_timeout:
            assert not any(c.reset for c in clients), "cut by the send deadline, not before"
    assert all(not c.ended and not c.closed for c in clients)
    assert all(len(c.bodies[s]) == 0 for c in clients for s in c.bodies), "window 0: no bytes"
    cut = accounting(server)
    assert cut["connections"] == held["connections"] and cut["in flight"] == before["in flight"]
    assert cut["cut (metric)"] == before["cut (metric)"] + CLIENTS * MAX_STREAMS
    for client in clients:
        client.close()
    after = accounting(server)
    assert after == dict(before, **{"cut (metric)": cut["cut (metric)"]}), (before, after)
    quiet(server)


def test_a_stream_without_window_leaves_the_server_idle_until_the_window_opens(
        h2site, tree: Tree) -> None:
    """Responses queued on streams whose window is 0 wait for a WINDOW_UPDATE without
    busy-polling (twisted.web reschedules its send loop with callLater(0) meanwhile: a
    core per such client until the send deadline), then finish whole."""
    server, _ = h2site()
    client = connect_h2(server, window=0)
    health, download = client.get("/healthz"), client.get(SMALL)
    server.settle()
    assert client.status == {health: 200, download: 200} and not client.ended
    now = server.reactor.seconds()
    assert [call for call in server.reactor.getDelayedCalls() if call.getTime() <= now] == []
    client.auto_window = True
    for stream in (health, download):
        client.conn.increment_flow_control_window(1 << 20, stream_id=stream)
    client.flush()
    server.settle()
    assert {health, download} <= client.ended and bytes(client.bodies[health]) == b"ok\n"
    assert bytes(client.bodies[download]) == (tree.root / "small/1.0.0/plugin.wasm").read_bytes()


def test_a_window_opened_by_settings_resumes_the_download(h2site) -> None:
    """RFC 9113 6.9.2: raising SETTINGS_INITIAL_WINDOW_SIZE opens every open stream's
    window, with no WINDOW_UPDATE; the sender flow control paused resumes at once."""
    server, body = h2site()
    client = connect_h2(server, window=0)
    big = client.get(BIG)
    server.settle()
    assert client.status == {big: 200} and not client.ended
    client.auto_window = True
    client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 4 << 20})
    client.flush()
    server.settle()  # no clock movement: not the send deadline, not a poll
    assert big in client.ended and bytes(client.bodies[big]) == body


def test_protocol_errors_close_the_connection_with_one_line_every_few_seconds() -> None:
    clock = MemoryReactorClock()
    lines: list[str] = []

    def observe(event: dict) -> None:
        if "HTTP/2 protocol error" in (event.get("log_format") or ""):
            lines.append(formatEvent(event))

    def fail_one() -> StringTransport:
        connection = PluginH2Connection(clock)
        connection.callLater = clock.callLater
        transport = StringTransport()
        connection.makeConnection(transport)
        connection.protocol_error(ValueError("bad state"))
        return transport

    PluginH2Connection.last_logged, PluginH2Connection.quiet = float("-inf"), 0
    globalLogPublisher.addObserver(observe)
    try:
        assert all(fail_one().disconnecting for _ in range(3))
        clock.advance(LOG_EVERY)
        fail_one()
    finally:
        globalLogPublisher.removeObserver(observe)
    assert len(lines) == 2 and "(2 more not logged)" in lines[1]


def test_a_probe_slot_past_the_cap_answers_probes_only_on_http2_too(h2site) -> None:
    server, _ = h2site(max_connections=1)
    stalled = connect_h2(server, window=0)  # the one connection, answering (window 0)
    download = stalled.get(BIG)
    server.settle()
    assert stalled.status[download] == 200 and download not in stalled.ended
    probe = connect_h2(server)
    health, refused = probe.get("/healthz"), probe.get(SMALL)
    server.settle()
    assert {health, refused} <= probe.ended
    assert probe.status[health] == 200 and bytes(probe.bodies[health]) == b"ok\n"
    assert probe.status[refused] == 503
    assert list(server.site.probes) == [probe.connection.server.wrappedProtocol]
    probe.close()
    stalled.close()
    assert not server.site.connections and not server.site.probes


# -- the send loop ---------------------------------------------------------------------------

def server_side(client) -> PluginH2Connection:
    return inner_channel(client.connection.server.wrappedProtocol)


def test_a_body_leaves_in_record_sized_frames_many_per_write_and_no_timer_per_frame(
        h2site) -> None:
    """twisted.web wrote each DATA frame on its own and waited a callLater(0) between
    frames; a 16,384-byte frame took two TLS records."""
    server, body = h2site()
    client = connect_wide(server)
    connection = server_side(client)
    writes: list[int] = []
    turns: list[float] = []
    write, call_later = connection.transport.write, server.reactor.callLater

    def counted_write(data: bytes) -> None:
        writes.append(len(data))
        write(data)

    def counted_call(delay: float, *args: object, **kwargs: object):
        turns.append(delay)
        return call_later(delay, *args, **kwargs)

    connection.transport.write = counted_write
    server.reactor.callLater = counted_call
    try:
        stream = client.get(BIG)
        server.settle()
    finally:
        del connection.transport.write
        server.reactor.callLater = call_later
    assert bytes(client.bodies[stream]) == body
    frames = client.frames[stream]
    assert frames.count(FRAME_PAYLOAD) == BIG_SIZE // FRAME_PAYLOAD
    assert max(frames) == FRAME_PAYLOAD and FRAME_PAYLOAD + 9 == 16384, "one TLS record"
    data_writes = [n for n in writes if n > 1024]
    assert len(data_writes) <= len(frames) / 6, (len(data_writes), len(frames))
    assert max(writes) <= WRITE_BYTES + 2 * 16384
    assert turns.count(0) <= len(frames) / 6, (turns.count(0), len(frames))


def test_a_window_that_opens_mid_stream_gets_exactly_what_it_allows(h2site) -> None:
    server, body = h2site()
    client = connect_h2(server, window=100_000)
    client.conn.increment_flow_control_window(1 << 30)  # the connection's: not the limit
    client.flush()
    stream = client.get(BIG)
    server.settle()
    assert len(client.bodies[stream]) == 100_000 and stream not in client.ended
    now = server.reactor.seconds()
    assert [c for c in server.reactor.getDelayedCalls() if c.getTime() <= now] == [], (
        "waiting for a window is not a busy loop")
    client.conn.increment_flow_control_window(50_000, stream_id=stream)
    client.flush()
    server.settle()
    assert len(client.bodies[stream]) == 150_000
    assert max(client.frames[stream]) <= FRAME_PAYLOAD
    client.auto_window = True
    client.conn.increment_flow_control_window(BIG_SIZE, stream_id=stream)
    client.flush()
    server.settle()
    assert stream in client.ended and bytes(client.bodies[stream]) == body
    assert not server_side(client).outboxes, "nothing left queued"


def test_many_streams_on_one_connection_all_finish_whole(h2site, tree: Tree) -> None:
    server, body = h2site()
    small = (tree.root / "small/1.0.0/plugin.wasm").read_bytes()
    client = connect_h2(server)  # default 64 KiB windows, topped up as it reads
    streams = {client.get(BIG if i % 3 == 0 else SMALL, send=False): i for i in range(30)}
    client.flush()
    server.settle()
    assert client.ended >= set(streams)
    for stream, i in streams.items():
        assert bytes(client.bodies[stream]) == (body if i % 3 == 0 else small)
    connection = server_side(client)
    assert not connection.outboxes and not connection.streams
    quiet(server)


def test_bodies_take_turns_in_arrival_order_and_a_cancelled_waiter_leaves_nothing(
        h2site) -> None:
    server, body = h2site()
    gate = server.site.bodies
    gate.limit = 2
    clients = [connect_wide(server) for _ in range(3)]
    for client in clients:
        client.connection.stop_reading()  # slow links: every body takes a while
    asked = []  # (client, stream), in the order they reach the server
    for _ in range(2):
        for client in clients:
            asked.append((client, client.get(BIG)))
            server.turn()
    assert len(gate.active) == 2 and len(gate.waiting) == 4
    cancelled = asked[3]
    cancelled[0].cancel(cancelled[1])
    for client in clients:
        client.connection.transport.reading = True
    granted = server.settle_granting()  # (connection, stream), in the order of their turns
    served = [pair for pair in asked if pair != cancelled]
    assert granted == [(server_side(c), s) for c, s in served], "turns in arrival order"
    assert all(bytes(c.bodies[s]) == body for c, s in served)
    assert not cancelled[0].bodies[cancelled[1]] and cancelled[1] not in cancelled[0].ended
    assert not gate.active and not gate.waiting
    assert server.metrics()["hps_h2_bodies_waiting"] == 0
    quiet(server)


def test_a_stalled_body_gives_its_turn_to_the_next_and_the_deadline_still_ends_it(
        h2site) -> None:
    send_timeout = 5.0
    server, body = h2site(send_timeout=send_timeout)
    gate = server.site.bodies
    gate.limit = 1
    stalled = connect_h2(server, window=0)
    stuck = stalled.get(BIG)
    server.settle()
    waiting = connect_wide(server)
    second = waiting.get(BIG)
    server.settle()
    assert list(gate.waiting) and not waiting.bodies[second], "one turn, held by the stalled"
    server.advance(STALL_SECONDS + 2 * SWEEP_SECONDS)
    assert second in waiting.ended and bytes(waiting.bodies[second]) == body
    assert stuck not in stalled.ended and stuck not in stalled.reset
    server.advance(send_timeout)
    assert stuck in stalled.reset, "cut by the send deadline"
    assert not gate.active and not gate.waiting


def test_data_frames_match_what_h2_itself_would_send() -> None:
    """hps.http2.data_frames does h2's send_data bookkeeping itself: same bytes, same
    windows, the same refusal once the stream is closed (a canary for h2's internals)."""
    def pair() -> h2.connection.H2Connection:
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        client.initiate_connection()
        client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
        client.increment_flow_control_window(1 << 20)
        server.initiate_connection()
        client.send_headers(1, [(":method", "GET"), (":path", "/"), (":scheme", "https"),
                                (":authority", "x")], end_stream=True)
        server.receive_data(client.data_to_send())
        server.send_headers(1, [(":status", "200")])
        server.data_to_send()
        return server

    payload = bytes(range(256)) * 300  # 76,800 bytes: four whole frames and a short one
    theirs, ours = pair(), pair()
    for start in range(0, len(payload), FRAME_PAYLOAD):
        theirs.send_data(1, payload[start:start + FRAME_PAYLOAD])
    outbox, out = Outbox(), []
    outbox.put(payload[:40_000])
    outbox.put(payload[40_000:])
    data_frames(ours, 1, outbox, len(payload), out)
    assert b"".join(out) == theirs.data_to_send() and outbox.unsent == 0
    assert ours.outbound_flow_control_window == theirs.outbound_flow_control_window
    assert ours.local_flow_control_window(1) == theirs.local_flow_control_window(1)
    ours.end_stream(1)
    outbox.put(b"late")
    with pytest.raises(h2.exceptions.StreamClosedError):
        data_frames(ours, 1, outbox, 4, [])


RESPONSE = [(b":status", b"200"), (b"server", b"hps"), (b"date", b"Mon, 07 Dec 2026 05:14:47 GMT"),
            (b"content-type", b"application/wasm"), (b"etag", b'"7c58"'),
            (b"content-length", b"150000")]


def test_header_blocks_leave_the_peer_table_empty_and_are_encoded_once() -> None:
    """A block decodes to its fields, adds nothing to either side's dynamic table, and the
    same fields on another connection reuse the block already built."""
    first, second, decoder = StatelessEncoder(), StatelessEncoder(), hpack.Decoder()
    block = first.encode(iter(RESPONSE))
    assert decoder.decode(block, raw=True) == RESPONSE
    assert decoder.decode(block, raw=True) == RESPONSE  # no entry the second needs
    assert len(decoder.header_table.dynamic_entries) == 0
    assert len(first.header_table.dynamic_entries) == 0
    assert second.encode(RESPONSE) is block
    assert block[0] == 0x88  # ":status: 200" is static entry 8, indexed


def test_a_table_size_change_goes_first_in_the_next_block_only() -> None:
    """RFC 7541 4.2: the update the peer's SETTINGS asked for starts the next block."""
    encoder, decoder = StatelessEncoder(), hpack.Decoder()
    plain = encoder.encode(RESPONSE)
    encoder.header_table_size = 0
    updated = encoder.encode(RESPONSE)
    assert updated != plain and updated[0] == 0x20  # dynamic table size update to 0
    decoder.max_allowed_table_size = 0
    assert decoder.decode(updated, raw=True) == RESPONSE
    assert encoder.encode(RESPONSE) is plain


def test_a_headers_frame_matches_what_h2_itself_would_send() -> None:
    """hps.http2.headers_frame makes the frame and the state changes of h2's send_headers
    (with the same encoder): a canary for h2's state machines."""
    def pair() -> h2.connection.H2Connection:
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        server.encoder = StatelessEncoder()
        client.initiate_connection()
        server.initiate_connection()
        client.send_headers(1, [(":method", "GET"), (":path", "/"), (":scheme", "https"),
                                (":authority", "x")], end_stream=True)
        server.receive_data(client.data_to_send())
        server.data_to_send()
        return server

    theirs, ours = pair(), pair()
    theirs.send_headers(1, RESPONSE)
    frame = headers_frame(ours, 1, ours.encoder.encode(RESPONSE))
    assert frame == theirs.data_to_send()
    assert ours.streams[1].state_machine.state == theirs.streams[1].state_machine.state
    assert ours.state_machine.state == theirs.state_machine.state
    ours.end_stream(1)
    with pytest.raises(h2.exceptions.ProtocolError):
        headers_frame(ours, 1, b"")


def started(client_window: int = 1 << 20) -> tuple[h2.connection.H2Connection,
                                                   h2.connection.H2Connection]:
    """A client and a server h2 connection past the preface; the client's windows (both)
    ``client_window``."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: client_window})
    client.increment_flow_control_window(client_window - 65535)
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())  # the SETTINGS ACK
    return client, server


REQUEST = [(b":method", b"GET"), (b":scheme", b"https"),
           (b":path", b"/plugins/small/1.0.0/plugin.wasm"), (b":authority", b"hps"),
           (b"user-agent", b"Go-http-client/2.0"), (b"accept-encoding", b"gzip")]


@pytest.mark.parametrize("size", [1, FRAME_PAYLOAD, 2 * FRAME_PAYLOAD, 76_800])
def test_data_frames_end_the_stream_as_h2s_send_data_with_end_stream_does(size: int) -> None:
    """data_frames(..., end=True) puts END_STREAM on the last DATA frame exactly as h2's
    send_data(..., end_stream=True) for the same split: same bytes, the stream closed in
    h2's books, the same windows left; and the stream then takes nothing more."""
    def pair() -> h2.connection.H2Connection:
        client, server = started()
        client.send_headers(1, REQUEST, end_stream=True)
        server.receive_data(client.data_to_send())
        server.send_headers(1, [(":status", "200")])
        server.data_to_send()
        return server

    payload = bytes(range(256)) * (size // 256 + 1)
    payload = payload[:size]
    theirs, ours = pair(), pair()
    starts = range(0, size, FRAME_PAYLOAD)
    for start in starts:
        theirs.send_data(1, payload[start:start + FRAME_PAYLOAD],
                         end_stream=start == starts[-1])
    out: list[bytes | memoryview] = []
    data_frames(ours, 1, Outbox.of(payload), size, out, end=True)
    sent = b"".join(out)
    assert sent == theirs.data_to_send()
    assert sent[4] == (0 if size > FRAME_PAYLOAD else 1), "END_STREAM on the last frame only"
    assert ours.streams[1].state_machine.state == theirs.streams[1].state_machine.state
    assert ours.streams[1].closed and theirs.streams[1].closed
    assert ours.outbound_flow_control_window == theirs.outbound_flow_control_window
    assert ours.streams[1].outbound_flow_control_window == (
        theirs.streams[1].outbound_flow_control_window) == (1 << 20) - size
    with pytest.raises(h2.exceptions.StreamClosedError):
        theirs.send_data(1, b"late")
    with pytest.raises(h2.exceptions.StreamClosedError):
        data_frames(ours, 1, Outbox.of(b"late"), 4, [])
    assert ours.open_inbound_streams == theirs.open_inbound_streams == 0  # both forgotten
    with pytest.raises(KeyError):  # what the send loop catches for a forgotten stream
        data_frames(ours, 1, Outbox.of(b"late"), 4, [])


def test_data_frames_without_end_leave_the_stream_open_for_the_rest() -> None:
    client, server = started()
    client.send_headers(1, REQUEST, end_stream=True)
    server.receive_data(client.data_to_send())
    server.send_headers(1, [(":status", "200")])
    outbox, out = Outbox.of(b"x" * 100), []
    data_frames(server, 1, outbox, 60, out)
    data_frames(server, 1, outbox, 40, out, end=True)
    frames = b"".join(out)
    assert (frames[4], frames[9 + 60 + 4]) == (0, 1), "END_STREAM on the second frame only"
    assert server.streams[1].closed and outbox.unsent == 0


def frame_kinds(data: bytes) -> list[tuple[int, int, int]]:
    """Each frame's (type, flags, length) in ``data``, which holds whole frames only."""
    kinds, at = [], 0
    while at < len(data):
        length = int.from_bytes(data[at:at + 3], "big")
        kinds.append((data[at + 3], data[at + 4], length))
        at += 9 + length
    assert at == len(data)
    return kinds


BIG_FIELDS = [*REQUEST, *((b"x-big-%d" % n, (b"v%03d" % n) * 250) for n in range(40))]
"""About 40 KB restated (no Huffman, no index): a HEADERS and two CONTINUATION frames."""


COOKIES = [*REQUEST, (b"cookie", b"a=1"), (b"x-e", b""), (b"cookie", b"b=2")]


@pytest.mark.parametrize("fields", [REQUEST, COOKIES, BIG_FIELDS],
                         ids=["request", "cookies", "continuations"])
def test_a_restated_request_reaches_h2_whole_and_leaves_its_table_as_it_was(
        fields: list[tuple[bytes, bytes]]) -> None:
    """What take_whole hands h2 for a request it decoded itself: h2 gets exactly those
    fields with END_STREAM (as it would from the client's own block), and its decoder's
    table stays as hps's decode left it, so the client's next block (which may index
    what this one added) decodes right."""
    client, server = started()
    client.send_headers(1, REQUEST, end_stream=True)  # fills both tables
    server.receive_data(client.data_to_send())
    table = server.decoder.header_table
    assert table.dynamic_entries
    assert server.decoder.decode(client.encoder.encode(fields), raw=True) == fields  # hps's
    entries, maxsize = list(table.dynamic_entries), table.maxsize

    data = restated(3, fields, server.max_inbound_frame_size)
    kinds = frame_kinds(data)
    assert [kind for kind, _, _ in kinds] == [1] + [9] * (len(kinds) - 1)  # CONTINUATIONs
    ends = [0] * (len(kinds) - 1) + [0x4]  # END_HEADERS on the last frame only
    assert [flags for _, flags, _ in kinds] == [0x1 | ends[0], *ends[1:]]  # END_STREAM first
    assert all(length <= 16_384 for *_, length in kinds)
    assert (len(kinds) > 2) == (fields is BIG_FIELDS)
    events = server.receive_data(data)
    assert [type(event) for event in events] == [h2.events.RequestReceived,
                                                 h2.events.StreamEnded]
    assert events[0].stream_id == 3 and events[0].stream_ended is events[1]
    restated_fields = events[0].headers
    assert [a is b for a, b in zip(table.dynamic_entries, entries, strict=True)] == [
        True] * len(entries) and table.maxsize == maxsize

    client.send_headers(5, fields, end_stream=True)  # its encoder indexes what it sent
    events = server.receive_data(client.data_to_send())
    assert events[0].stream_id == 5 and events[0].headers == restated_fields
    if b"cookie" not in dict(fields):
        assert restated_fields == fields
    else:  # h2 joins cookies into one field, last (RFC 9113 8.2.3), whichever way they come
        assert restated_fields[-1] == (b"cookie", b"a=1; b=2")


def test_the_table_mark_moves_with_every_change_and_only_then() -> None:
    """table_mark/same_mark tell when a block changed an HPACK table (so a cached decode
    of a repeated block may be reused): an entry added, the table cleared by an entry too
    big for it, a resize, an equal entry that evicts another (the same length, size and
    first entry by value); not a block of only indexed fields and literals not indexed."""
    encoder, decoder = hpack.Encoder(), hpack.Decoder()
    table = decoder.header_table

    def changed(block: bytes) -> bool:
        before = table_mark(table)
        decoder.decode(block, raw=True)
        return not same_mark(before, table_mark(table))

    assert changed(encoder.encode([(b"x-a", b"1")]))  # literal with incremental indexing
    assert not changed(encoder.encode([(b"x-a", b"1")]))  # now indexed: 0xbe
    assert not changed(StatelessEncoder().encode(RESPONSE))  # never indexed
    assert not changed(b"\x00\x03x-b\x012" + b"\x82")  # without indexing; static :method
    assert not changed(encoder.encode([(b":method", b"GET"), (b"x-a", b"1")]))
    assert changed(encoder.encode([(b"x-huge", b"h" * 5000)]))  # bigger than the table: clear
    assert not table.dynamic_entries
    assert not changed(encoder.encode([(b"x-huge", b"h" * 5000)]))  # empty, and stays so
    assert changed(encoder.encode([(b"x-a", b"1")]))
    encoder.header_table_size = 2048
    assert changed(encoder.encode([(b":method", b"GET")]))  # a size update, nothing added
    assert table.maxsize == 2048 and len(table.dynamic_entries) == 1
    # Room for two entries (36 bytes each): x-a, then x-b, added.
    assert changed(b"\x3f\x29\x40\x03x-a\x011\x40\x03x-b\x012")
    before = list(table.dynamic_entries)
    # x-b again evicts x-a: as long, as big, an equal first entry, yet index 63 moved.
    assert changed(b"\x40\x03x-b\x012")
    after = list(table.dynamic_entries)
    assert (len(after), after[0], table.maxsize) == (len(before), before[0], 72)
    assert decoder.decode(b"\xbf", raw=True) == [(b"x-b", b"2")] != [before[1]]


@pytest.mark.parametrize("frame", [2, 16, 100, 16_384])
def test_a_restated_block_may_be_cut_at_any_frame_size(frame: int) -> None:
    """(h2 takes at most 64 CONTINUATION frames a block; take_whole cuts at h2's inbound
    frame size, at least 16,384, where the 64 KiB header list limit allows four.)"""
    server = started()[1]
    data = restated(1, REQUEST, frame)
    assert max(length for *_, length in frame_kinds(data)) <= frame
    events = server.receive_data(data)
    assert events[0].headers == REQUEST and events[0].stream_ended is not None
    assert not server.decoder.header_table.dynamic_entries


def test_a_request_h2_refuses_is_refused_on_the_whole_path_too(h2site) -> None:
    """A lone HEADERS frame that take_whole decodes itself, on a connection whose windows
    let answer_whole send the small body at once: the outcome must be h2's, which ends the
    connection (PROTOCOL_ERROR) for Cookie "a" + "" (joined, "a; " has a trailing space)."""
    server, _ = h2site()
    client = connect_h2(server, window=1 << 20)
    client.conn.increment_flow_control_window(1 << 20)
    client.flush()
    server.settle()
    stream = client.get(SMALL, fields=(("cookie", "a"), ("cookie", "")))
    server.settle()
    assert stream not in client.status, "answered, where h2 would have refused"
    assert client.closed


class Refusing:
    """A QuickRequests that answers nothing: take_whole decodes, then restates to h2."""

    def __init__(self) -> None:
        self.asked: list[list[tuple[bytes, bytes]]] = []

    def stream(self, connection: PluginH2Connection, event: object) -> None:
        return None

    def whole(self, connection: PluginH2Connection, stream_id: int,
              fields: list[tuple[bytes, bytes]]) -> bool:
        self.asked.append(fields)
        return False


class Decoding(PluginH2Connection):
    decoded = 0

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        self.decoded += 1
        return super().decode(block)


def lone_headers(block: bytes, stream_id: int = 1) -> bytes:
    return frame_head(len(block), 1, 0x5, stream_id) + block  # END_STREAM + END_HEADERS


@pytest.mark.parametrize(("block", "decodes"), [
    (b"\xff\x7f", False),  # an index past both tables
    (b"\x3f\xe1\x3f" + hpack.Encoder().encode(REQUEST), False),  # a table bigger than allowed
    (b"\x82\x86\x84\x41\x85\xff\xff\xff\xff\xff", False),  # a Huffman string cut short
    # over h2's 64 KiB header list, from 1 KB: one entry indexed 69 times
    (hpack.Encoder().encode([*REQUEST, *[(b"x-a", b"v" * 1000)] * 70]), False),
    (hpack.Encoder().encode([*REQUEST, (b"X-Upper", b"1")]), True),  # h2 refuses the name
], ids=["index", "table-size", "huffman", "header-list", "uppercase"])
def test_a_bad_block_take_whole_decodes_ends_the_connection_as_h2_would(
        block: bytes, decodes: bool) -> None:
    """The same bytes out (GOAWAY, its last stream and code) and the connection closed,
    whether h2 parses the frame or take_whole decodes it first (and, if it decodes,
    restates it to h2)."""
    outcomes = []
    for quick in (None, Refusing()):
        clock = MemoryReactorClock()
        connection = Decoding(clock, quick=quick)
        connection.callLater = clock.callLater
        transport = StringTransport()
        connection.makeConnection(transport)
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        connection.dataReceived(client.data_to_send())
        transport.clear()
        connection.dataReceived(lone_headers(block))
        assert connection.decoded == (quick is not None), "take_whole decoded it, or h2"
        outcomes.append((transport.value(), transport.disconnecting,
                         connection.conn.state_machine.state))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0][3] == 7 and outcomes[0][1], "GOAWAY, and the connection closes"
    assert quick is not None and len(quick.asked) == decodes


class Answering:
    """A QuickRequests that answers every request whole with ``body``."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, connection: PluginH2Connection, event: object) -> None:
        return None

    def whole(self, connection: PluginH2Connection, stream_id: int,
              fields: list[tuple[bytes, bytes]]) -> bool:
        return connection.answer_whole(stream_id, b"200", RESPONSE[1:], self.body)


def test_answer_whole_sends_and_books_what_h2_would_for_the_same_response() -> None:
    """A request answered by take_whole/answer_whole against the same request through h2
    (send_headers, then send_data with END_STREAM, cut the same way, and the closed
    stream forgotten): the same bytes, connection state, windows and highest stream;
    then a DATA frame for the closed stream, the next request and stream 1 reused meet
    the same fate."""
    body = bytes(range(256)) * 234  # 59,904 bytes: within the client's default windows
    request = lone_headers(hpack.Encoder().encode(REQUEST))
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    preface = client.data_to_send()

    clock = MemoryReactorClock()
    ours = PluginH2Connection(clock, quick=Answering(body))
    ours.callLater = clock.callLater
    transport = StringTransport()
    ours.makeConnection(transport)
    ours.dataReceived(preface)
    transport.clear()
    ours.dataReceived(request)
    sent = transport.value()

    theirs = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    theirs.encoder = StatelessEncoder()
    theirs.initiate_connection()
    theirs.receive_data(preface)
    theirs.data_to_send()
    events = theirs.receive_data(request)
    assert events[0].headers == REQUEST
    theirs.send_headers(1, RESPONSE)
    for start in range(0, len(body), FRAME_PAYLOAD):
        theirs.send_data(1, body[start:start + FRAME_PAYLOAD],
                         end_stream=start + FRAME_PAYLOAD >= len(body))
    assert theirs.open_inbound_streams == 0 and not theirs.streams  # forgotten

    assert sent == theirs.data_to_send()
    mine = ours.conn
    assert not ours.streams and not mine.streams, "no stream object, here or in h2"
    assert sent[3] == 1, "HEADERS first: take_whole answered, h2 never saw the request"
    assert (mine.state_machine.state, mine.highest_inbound_stream_id,
            mine.outbound_flow_control_window) == (
        theirs.state_machine.state, theirs.highest_inbound_stream_id,
        theirs.outbound_flow_control_window) == (
        h2.connection.ConnectionState.SERVER_OPEN, 1, 65535 - len(body))
    late = frame_head(4, 0, 0x1, 1) + b"late"  # DATA on the closed stream
    assert mine.receive_data(late) == theirs.receive_data(late) == []
    assert mine.data_to_send() == theirs.data_to_send() != b""  # RST_STREAM(STREAM_CLOSED)
    following = lone_headers(hpack.Encoder().encode(REQUEST), 3)
    assert [repr(event) for event in mine.receive_data(following)] == [
        repr(event) for event in theirs.receive_data(following)]
    assert mine.streams.keys() == theirs.streams.keys() == {3}
    for conn in (mine, theirs):  # stream 1 again: h2 ends the connection, STREAM_CLOSED
        with pytest.raises(h2.exceptions.StreamClosedError):
            conn.receive_data(request)
    assert mine.data_to_send() == theirs.data_to_send()


_POOL = [(b":method", b"GET"), (b":path", b"/plugins/a/1.0.0/plugin.wasm"), (b"x-a", b"1"),
         (b"x-a", b"2"), (b"user-agent", b"Go-http-client/2.0"), (b"x-big", b"b" * 3000)]
_FIELDS = st.lists(st.tuples(st.sampled_from(_POOL), st.booleans()), max_size=5)
_STEPS = st.lists(st.one_of(
    st.tuples(st.sampled_from(["ours", "h2"]), _FIELDS),  # decoded here, or by h2 itself
    st.tuples(st.just("again"), st.none()),  # the last block decoded here, verbatim
    st.tuples(st.just("resize"), st.sampled_from([0, 64, 2048, 4096]))), max_size=12)


@settings(max_examples=200, deadline=None)
@given(_STEPS)
def test_decode_remembers_a_block_only_while_it_would_decode_the_same(steps: list) -> None:
    """PluginH2Connection.decode, which hands back its last list for the same bytes while
    the table mark stands, against a plain HPACK decoder fed the same blocks, some of
    them decoded by h2 (its own decoder, past decode): the same fields every time, and
    the same table after."""
    ours = PluginH2Connection(MemoryReactorClock())
    reference, encoder = hpack.Decoder(), hpack.Encoder()
    block = b""
    for kind, value in steps:
        if kind == "resize":
            encoder.header_table_size = value
            continue
        here = block
        if kind != "again":
            here = encoder.encode([hpack.NeverIndexedHeaderTuple(*field) if never else field
                                   for field, never in value])
        decode = ours.conn.decoder.decode if kind == "h2" else ours.decode
        try:
            expected = reference.decode(here, raw=True)
        except hpack.HPACKError as err:  # bytes repeated after the table moved on
            with pytest.raises(type(err)):
                ours.decode(here)
            return
        assert (decode(here, raw=True) if kind == "h2" else decode(here)) == expected
        table = ours.conn.decoder.header_table
        assert (list(table.dynamic_entries), table.maxsize) == (
            list(reference.header_table.dynamic_entries), reference.header_table.maxsize)
        if kind != "h2":
            block = here
