"""The HTTP/2 fast path (hps.h2fast) through the real site, in memory, over TLS + ALPN h2.

Every download here is checked against what twisted.web's own HTTP/2 path answers for
the same artifact: the same fields (but the Date), the same bytes, the same books.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from h2.settings import SettingCodes

from hps._twisted import inner_channel
from hps.catalog import unloaded
from hps.files import Source
from hps.h2fast import QuickStream
from tests.support.certificates import self_signed
from tests.support.h2client import H2Client, connect_h2, connect_wide
from tests.support.memory import Harness
from tests.support.server import Tree

MODULE = "/plugins/demo/1.0.0/plugin.wasm"
SIZE = 300_000
PLAIN = (("user-agent", "Go-http-client/2.0"), ("accept-encoding", "gzip"))
SLOW_PATH = (("if-none-match", '"no-such-tag"'),)
"""A condition that does not hold: twisted.web answers the same 200 as the fast path."""


@pytest.fixture
def h2(tree: Tree, harness, tmp_path: Path):
    def start(**knobs: object) -> tuple[Harness, bytes]:
        body = tree.add("demo", "1.0.0", size=SIZE)
        key, cert = self_signed(tmp_path)
        server = harness(tree.root, listen=[f"ssl:8443:privateKey={key}:certKey={cert}"],
                         **knobs)
        return server, body
    return start


def quick_streams(client: H2Client) -> list[QuickStream]:
    connection = inner_channel(client.connection.server.wrappedProtocol)
    return [s for s in connection.streams.values() if isinstance(s, QuickStream)]


def fields(client: H2Client, stream: int) -> list[tuple[bytes, bytes]]:
    return [pair for pair in client.headers[stream] if pair[0] != b"date"]


def test_a_plain_download_is_answered_as_twisted_web_answers_it(h2) -> None:
    """Same status, fields and bytes as twisted.web's HTTP/2 path, for both codings and
    for HEAD; the quick one never builds a twisted.web Request."""
    server, body = h2(gzip=False)
    client = connect_h2(server)
    quick = client.get(MODULE, fields=PLAIN)
    server.turn()
    assert quick_streams(client), "the fast path took the stream"
    slow = client.get(MODULE, fields=PLAIN + SLOW_PATH)
    head = client.get(MODULE, fields=PLAIN, method="HEAD")
    server.settle()
    assert client.status[quick] == client.status[slow] == client.status[head] == 200
    assert fields(client, quick) == fields(client, slow) == fields(client, head)
    assert (b"content-length", b"%d" % SIZE) in client.headers[quick]
    assert bytes(client.bodies[quick]) == bytes(client.bodies[slow]) == body
    assert not client.bodies[head] and head in client.ended
    assert not quick_streams(client), "nothing left once the streams ended"


def test_gzip_is_negotiated_as_on_every_other_path(h2, tree: Tree) -> None:
    import gzip

    server, body = h2()
    server.settle()  # the gzip variant is made
    client = connect_h2(server)
    zipped = client.get(MODULE, fields=PLAIN)
    identity = client.get(MODULE, fields=(("accept-encoding", "identity"),))
    slow = client.get(MODULE, fields=PLAIN + SLOW_PATH)
    server.settle()
    assert (b"content-encoding", b"gzip") in client.headers[zipped]
    assert fields(client, zipped) == fields(client, slow)
    assert gzip.decompress(bytes(client.bodies[zipped])) == body
    assert bytes(client.bodies[identity]) == body
    assert (b"content-encoding", b"gzip") not in client.headers[identity]


def test_downloads_are_logged_and_counted_like_any_other(h2) -> None:
    """The access line and the counters are twisted.web's for the same download."""
    server, body = h2(gzip=False)
    before = server.metrics()
    key = 'hps_downloads_total{plugin="demo",version="1.0.0"}'
    client = connect_h2(server)
    extra = (*PLAIN, ("referer", "r"), ("x-forwarded-for", "10.1.2.3"))
    quick = client.get(MODULE, fields=extra)
    server.settle()
    slow = client.get(MODULE, fields=extra + SLOW_PATH)
    server.settle()
    assert bytes(client.bodies[quick]) == bytes(client.bodies[slow]) == body
    after = server.metrics()
    assert after.get(key, 0) - before.get(key, 0) == 2
    assert server.site.in_flight == 0
    lines = [line for line in server.access_lines() if MODULE in line]
    assert len(lines) == 2 and lines[0] == lines[1], lines
    assert f'"GET {MODULE} HTTP/2" 200 {SIZE} "r" "Go-http-client/2.0"' in lines[0]


def test_what_it_cannot_answer_at_once_goes_to_twisted_web(h2, tree: Tree) -> None:
    """Ranges, conditions, request bodies, other paths and methods, a missing module and
    a catalog not loaded yet: each answered by twisted.web, as before."""
    server, body = h2(gzip=False)
    client = connect_h2(server)
    cases = {
        client.get(MODULE, fields=(("range", "bytes=0-9"),)): 206,
        client.get(MODULE, fields=(("if-none-match", "*"),)): 304,
        client.get("/plugins/demo/1.0.0/metadata.txt"): 200,
        client.get("/plugins/nothing/1.0.0/plugin.wasm"): 404,
        client.get("/plugins/demo/1.0.0/../1.0.0/plugin.wasm"): 404,
        client.get(MODULE, method="DELETE"): 405,
    }
    assert not quick_streams(client)
    server.settle()
    assert {stream: client.status.get(stream) for stream in cases} == cases
    assert bytes(client.bodies[next(iter(cases))]) == body[:10]

    with_body = client.get(MODULE, end_stream=False)
    server.turn()
    assert not quick_streams(client), "a request that may carry a body is twisted.web's"
    client.conn.end_stream(with_body)
    client.flush()
    server.settle()
    assert client.status[with_body] == 200 and bytes(client.bodies[with_body]) == body

    server.site.state.swap(unloaded(tree.root))
    loading = client.get(MODULE)
    server.settle()
    assert client.status[loading] == 503, "nothing final while the catalog loads"


def test_a_reset_mid_body_is_logged_as_cut_and_lets_go_of_everything(h2) -> None:
    server, body = h2(gzip=False)
    client = connect_h2(server)
    warm = client.get(MODULE)
    server.settle()
    assert bytes(client.bodies[warm]) == body
    files = Source.open  # the file table keeps the module open, as nginx's cache would
    client.auto_window = False  # 64 KiB windows, topped up only as the test says
    stream = client.get(MODULE)
    server.settle()
    assert 0 < len(client.bodies[stream]) < SIZE and quick_streams(client)
    client.cancel(stream)
    server.settle()
    assert not quick_streams(client) and server.site.in_flight == 0
    assert Source.open == files, "the module's descriptor was let go"
    assert server.site.bodies.active == {} and not server.site.bodies.waiting
    line = [line for line in server.access_lines() if MODULE in line][-1]
    assert "aborted" in line or " 200 " in line, line


def test_a_stream_that_stops_reading_is_cut_by_the_send_deadline(h2) -> None:
    send_timeout = 5.0
    server, _ = h2(gzip=False, send_timeout=send_timeout)
    client = connect_h2(server, window=0)
    stream = client.get(MODULE)
    server.settle()
    assert quick_streams(client) and not client.bodies[stream]
    server.advance(send_timeout + 2)
    assert stream in client.reset and server.site.in_flight == 0
    assert not quick_streams(client)


def test_a_probe_only_connection_never_takes_the_fast_path(h2) -> None:
    server, _ = h2(gzip=False, max_connections=1)
    first = connect_h2(server, window=0)  # holds the one regular slot, answering
    download = first.get(MODULE)
    server.settle()
    assert first.status[download] == 200 and quick_streams(first)
    probe = connect_h2(server)  # admitted beyond the cap: probes only
    stream = probe.get(MODULE)
    server.settle()
    assert probe.status[stream] == 503 and not quick_streams(probe)


def test_heads_go_at_once_while_bodies_wait_their_turn(h2) -> None:
    """A body without a turn has its 200 and length already; it follows when the turn
    comes."""
    server, body = h2(gzip=False)
    server.site.bodies.limit = 1
    slow = connect_h2(server, window=0)
    first = slow.get(MODULE)
    server.settle()
    client = connect_h2(server)
    second = client.get(MODULE)
    server.settle()
    assert slow.status[first] == 200 and client.status[second] == 200
    assert not client.bodies[second] and len(server.site.bodies.waiting) == 1
    slow.cancel(first)
    server.settle()
    assert bytes(client.bodies[second]) == body


def test_after_a_table_size_change_h2_encodes_the_next_head(h2, monkeypatch) -> None:
    """RFC 7541 4.2: the size update goes first in the next block, whoever writes it:
    h2 itself, once (then blocks are shared again)."""
    from hps.http2 import PluginH2Connection

    by_h2 = []
    write = PluginH2Connection.writeHeaders
    monkeypatch.setattr(PluginH2Connection, "writeHeaders",
                        lambda self, *args: by_h2.append(args) or write(self, *args))
    server, body = h2(gzip=False)
    client = connect_h2(server)
    client.conn.update_settings({SettingCodes.HEADER_TABLE_SIZE: 0})
    client.flush()
    server.settle()
    first, second = client.get(MODULE), client.get(MODULE)
    server.settle()
    assert client.status[first] == client.status[second] == 200
    assert fields(client, first) == fields(client, second)
    assert bytes(client.bodies[first]) == bytes(client.bodies[second]) == body
    assert len(by_h2) == 1


# -- whole responses (hps.http2.PluginH2Connection.take_whole / answer_whole / send_whole) --

SMALL = "/plugins/small/1.0.0/plugin.wasm"
SMALL_SIZE = 100_000


@pytest.fixture
def answered(monkeypatch) -> list[int]:
    """The streams answered before h2 saw their request."""
    from hps.http2 import PluginH2Connection

    streams: list[int] = []
    answer = PluginH2Connection.answer_whole

    def spy(self, stream_id: int, *args: object) -> bool:
        done = answer(self, stream_id, *args)
        if done:
            streams.append(stream_id)
        return done

    monkeypatch.setattr(PluginH2Connection, "answer_whole", spy)
    return streams


def small_site(h2, tree: Tree, **knobs: object) -> tuple[Harness, bytes]:
    server, demo = h2(gzip=False, **knobs)
    small = tree.add("small", "1.0.0", size=SMALL_SIZE)
    server.rescan()
    server.demo = demo
    return server, small


def test_a_small_download_leaves_whole_before_h2_parses_its_request(h2, tree: Tree,
                                                                     answered) -> None:
    """Same fields, bytes, access line and counters as twisted.web's HTTP/2 path; record-sized
    DATA frames with END_STREAM on the last (no empty frame), and no stream object."""
    from hps.http2 import FRAME_PAYLOAD

    server, small = small_site(h2, tree)
    key = 'hps_downloads_total{plugin="small",version="1.0.0"}'
    before = server.metrics()
    client = connect_wide(server)
    whole = client.get(SMALL, fields=PLAIN)
    server.settle()
    slow = client.get(SMALL, fields=PLAIN + SLOW_PATH)
    server.settle()
    assert answered == [whole]
    assert client.status[whole] == client.status[slow] == 200
    assert fields(client, whole) == fields(client, slow)
    assert bytes(client.bodies[whole]) == bytes(client.bodies[slow]) == small
    assert client.frames[whole] == [FRAME_PAYLOAD] * (SMALL_SIZE // FRAME_PAYLOAD) + [
        SMALL_SIZE % FRAME_PAYLOAD]
    assert whole in client.ended
    assert server.metrics().get(key, 0) - before.get(key, 0) == 2
    assert server.site.in_flight == 0 and not server.site.bodies.active
    lines = [line for line in server.access_lines() if SMALL in line]
    assert len(lines) == 2 and lines[0] == lines[1], lines
    connection = inner_channel(client.connection.server.wrappedProtocol)
    assert whole not in connection.conn.streams and not connection.streams


def test_every_path_keeps_the_hpack_tables_in_step_on_one_connection(h2, tree: Tree,
                                                                      answered) -> None:
    """The client's encoder indexes what it sends; requests answered whole, restated to h2
    (HEAD, a range, a body too big to go whole), repeated, with new fields and after the
    client resized its table, all on one connection, each answered right."""
    server, small = small_site(h2, tree)
    client = connect_wide(server)
    agent = (("user-agent", "Go-http-client/2.0"),)
    steps: list[tuple[int, int, bytes]] = []

    def ask(path: str, expect: int, body: bytes, **named: object) -> int:
        stream = client.get(path, **named)
        server.settle()
        steps.append((stream, expect, body))
        return stream

    first = ask(SMALL, 200, small, fields=agent)
    again = ask(SMALL, 200, small, fields=agent)  # all indexed now: decoded once
    ask(SMALL, 200, b"", fields=agent, method="HEAD")
    ask(SMALL, 206, small[:10], fields=(*agent, ("range", "bytes=0-9")))
    big = ask(MODULE, 200, server.demo, fields=agent)
    fresh = ask(SMALL, 200, small, fields=(("user-agent", "another/1.0"),
                                           ("x-forwarded-for", "10.0.0.1")))
    client.conn.encoder.header_table_size = 64  # the next block starts with the update
    resized = ask(SMALL, 200, small, fields=agent)
    last = ask(SMALL, 200, small, fields=agent)
    assert [(client.status.get(s), bytes(client.bodies[s])) for s, _, _ in steps] == [
        (status, body) for _, status, body in steps]
    assert answered == [first, again, fresh, resized, last]
    assert big not in answered and not client.closed


def test_a_whole_body_holds_its_turn_until_its_client_takes_the_bytes(h2, tree: Tree,
                                                                        answered) -> None:
    """At most ACTIVE_BODIES bodies in memory: one that sits in a transport its client does
    not read keeps its turn; the next waits, then goes once the bytes are taken."""
    server, small = small_site(h2, tree)
    server.site.bodies.limit = 1
    stalled = connect_wide(server)
    stalled.connection.stop_reading()
    first = stalled.get(SMALL)
    server.settle()
    assert answered == [first] and len(server.site.bodies.active) == 1
    other = connect_wide(server)
    second = other.get(SMALL)
    server.settle()
    assert len(answered) == 1, "no free turn: it waits as any body does"
    assert other.status[second] == 200 and not other.bodies[second]
    stalled.connection.resume_reading()
    assert bytes(stalled.bodies[first]) == bytes(other.bodies[second]) == small
    assert not server.site.bodies.active and not server.site.bodies.waiting


def test_a_whole_body_its_client_never_takes_gives_its_turn_and_is_cut(h2, tree: Tree) -> None:
    from hps.bodies import STALL_SECONDS

    send_timeout = 5.0
    server, small = small_site(h2, tree, send_timeout=send_timeout)
    server.site.bodies.limit = 1
    stalled = connect_wide(server)
    stalled.connection.stop_reading()
    stalled.get(SMALL)
    server.settle()
    other = connect_wide(server)
    second = other.get(SMALL)
    server.settle()
    assert not other.bodies[second]
    server.advance(STALL_SECONDS + 1)
    assert bytes(other.bodies[second]) == small, "the stalled body gave its turn"
    before = server.metrics().get('hps_responses_aborted_total{reason="send_timeout"}', 0)
    server.advance(send_timeout + 1)
    assert stalled.connection.transport.aborted
    assert server.metrics()['hps_responses_aborted_total{reason="send_timeout"}'] == before + 1
    assert not server.site.bodies.active and not server.site.bodies.waiting


def test_a_header_block_hpack_cannot_decode_ends_the_connection_politely(h2, tree: Tree) -> None:
    server, _ = small_site(h2, tree)
    client = connect_wide(server)
    ok = client.get(SMALL)
    server.settle()
    assert client.status[ok] == 200
    block = b"\x80"  # index 0: no such entry (RFC 7541 6.1)
    client.transport.write(len(block).to_bytes(3, "big") + b"\x01\x05" + (3).to_bytes(4, "big")
                           + block)
    server.settle()
    assert client.closed
    assert server.log().count("HTTP/2 protocol error") == 1
