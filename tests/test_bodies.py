"""HTTP/2 and TLS HTTP/1.1 bodies take turns, a few at once, the rest in arrival order:
the gate alone, then HTTP/1.1 over TLS through the real site in memory.

The same rules through the real server and an HTTP/2 client: tests/test_http2.py.
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from hps import metrics
from hps._twisted import inner_channel
from hps.bodies import STALL_SECONDS, TURN_WAIT, BodyGate
from hps.site import SWEEP_SECONDS
from tests.support.certificates import self_signed
from tests.support.memory import Connection, Harness
from tests.support.server import Tree


def waker(woken: list[str], key: str):
    return lambda: woken.append(key)


def sample(name: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name)


def test_a_few_at_once_then_the_longest_waiting_on_a_later_turn() -> None:
    clock, woken = Clock(), []
    gate = BodyGate(clock, limit=2)
    waited = sample("hps_h2_bodies_waited_total")
    assert gate.admit("a", waker(woken, "a")) and gate.admit("b", waker(woken, "b"))
    for key in "cde":
        assert not gate.admit(key, waker(woken, key))
    assert not gate.admit("c", waker(woken, "c")), "asking again keeps its place"
    assert list(gate.waiting) == ["c", "d", "e"]
    assert sample("hps_h2_bodies_waited_total") == waited + 3, "each body counted once"
    sending = sample("hps_h2_bodies_sending")
    assert (sending, sample("hps_h2_bodies_waiting")) == (2, 3)
    gate.release("a")
    assert woken == [] and gate.holds("c"), "the turn is taken at once, woken later"
    clock.advance(0)
    assert woken == ["c"]
    gate.release("d")  # gave up while waiting (a reset stream): no turn to hand on
    gate.release("b")
    clock.advance(0)
    assert woken == ["c", "e"] and set(gate.active) == {"c", "e"} and not gate.waiting
    gate.release("c")
    gate.release("e")
    gate.release("e")  # twice (the sender and the stream's end): harmless
    assert not gate.active and not gate.waiting


def test_a_stalled_body_gives_its_turn_to_the_next_and_waits_at_the_back() -> None:
    clock, woken = Clock(), []
    gate = BodyGate(clock, limit=1)
    stalled = sample("hps_h2_bodies_stalled_total")
    assert gate.admit("slow", waker(woken, "slow"))
    gate.requeue_if_stalled("slow", progress=0.0)
    assert gate.holds("slow"), "nobody waits: keep sending"
    assert not gate.admit("next", waker(woken, "next"))
    clock.advance(STALL_SECONDS / 2)
    gate.requeue_if_stalled("slow", progress=0.0)
    assert gate.holds("slow"), "not stalled long enough since it got its turn"
    clock.advance(STALL_SECONDS)
    gate.requeue_if_stalled("slow", progress=clock.seconds() - 0.1)
    assert gate.holds("slow"), "it made progress lately"
    gate.requeue_if_stalled("slow", progress=0.0)
    clock.advance(0)
    assert woken == ["next"] and gate.holds("next") and list(gate.waiting) == ["slow"]
    assert sample("hps_h2_bodies_stalled_total") == stalled + 1
    assert not gate.admit("slow", waker(woken, "slow")), "it asks again: woken in its turn"
    gate.release("next")
    clock.advance(0)
    assert woken == ["next", "slow"] and gate.holds("slow")


# -- HTTP/1.1 over TLS, through the real site in memory --------------------------------------

BIG = "/plugins/big/1.0.0/plugin.wasm"
GET_BIG = f"GET {BIG} HTTP/1.1\r\nHost: hps.test\r\n\r\n".encode()


@pytest.fixture
def tls_site(tree: Tree, harness, tmp_path: Path):
    """``tls_site(limit, tls=True, **knobs)``: an in-memory server (``ssl:`` or plain TCP)
    serving a 1 MiB ``big`` module, with ``limit`` bodies at once; returns it and the body."""
    def start(limit: int, tls: bool = True, **knobs: object) -> tuple[Harness, bytes]:
        body = tree.add("big", "1.0.0", size=1 << 20)
        key, cert = self_signed(tmp_path)
        listen = f"ssl:8443:privateKey={key}:certKey={cert}" if tls else "tcp:8080"
        server = harness(tree.root, listen=[listen], **knobs)
        server.site.bodies.limit = limit
        return server, body
    return start


def download(server: Harness, reading: bool = True) -> Connection:
    """A TLS (or plain) client asks for ``big``; one that is not ``reading`` takes nothing."""
    client = server.connect()
    if not reading:
        client.stop_reading()
    return client.send(GET_BIG)


def channel_of(client: Connection) -> object:
    """The server's HTTP/1.1 channel for ``client`` (under the server's TLS): the body's key."""
    return inner_channel(client.server.wrappedProtocol)


def head_and_body(client: Connection) -> tuple[bytes, bytes]:
    head, _, body = client.received().partition(b"\r\n\r\n")
    return head, body


def test_tls_bodies_take_turns_in_arrival_order_and_their_heads_wait_with_them(
        tls_site) -> None:
    server, body = tls_site(limit=2)
    gate = server.site.bodies
    waited = sample("hps_h2_bodies_waited_total")
    slow = [download(server, reading=False) for _ in range(2)]  # hold the two turns
    later = [download(server) for _ in range(2)]
    assert list(gate.waiting) == [channel_of(c) for c in later], "arrival order"
    assert [c.received() for c in later] == [b"", b""], "no head before the turn"
    assert sample("hps_h2_bodies_waited_total") == waited + 2
    slow[0].transport.reading = True  # slow[1] keeps its turn throughout
    granted = server.settle_granting()
    assert granted == [channel_of(c) for c in (*slow, *later)], "turns in arrival order"
    for client in (slow[0], *later):
        head, sent = head_and_body(client)
        assert head.startswith(b"HTTP/1.1 200 ") and sent == body
    slow[1].resume_reading()
    assert head_and_body(slow[1])[1] == body
    assert not gate.active and not gate.waiting


def test_the_tls_fast_path_takes_a_free_turn_and_never_queues() -> None:
    """``take`` grants a free turn at once and otherwise leaves no place in the queue (the
    fast path then hands the request to twisted.web, which queues it in arrival order)."""
    gate = BodyGate(Clock(), limit=1)
    assert gate.take("a") and gate.take("a") and list(gate.active) == ["a"]
    assert not gate.take("b") and not gate.waiting
    assert not gate.admit("c", lambda: None) and list(gate.waiting) == ["c"]
    gate.release("a")
    assert list(gate.active) == ["c"]
    assert not gate.take("d"), "the queue goes first"


def test_a_tls_fast_path_download_holds_its_turn_until_its_last_byte(tls_site) -> None:
    server, body = tls_site(limit=1)
    gate = server.site.bodies
    client = download(server, reading=False)
    assert list(gate.active) == [channel_of(client)]
    assert channel_of(client).fast_reply is not None, "the fast path answers it"
    client.resume_reading()
    assert head_and_body(client)[1] == body and not gate.active


def test_a_tls_body_without_a_turn_in_time_is_answered_503_and_retry_after(tls_site) -> None:
    """TURN_WAIT on the clock: a turn that comes just in time serves the body; none by
    then, 503 + Retry-After on a connection that stays open, and the queue forgets it."""
    server, body = tls_site(limit=0)  # no turn comes, until the test opens one
    gate = server.site.bodies
    turned_away = sample("hps_bodies_turned_away_total") or 0
    in_time = download(server)
    server.advance(TURN_WAIT - 1)
    assert in_time.received() == b""
    gate.limit = 1
    gate.grant()  # a turn frees 4 s after it asked
    server.settle()
    head, sent = head_and_body(in_time)
    assert head.startswith(b"HTTP/1.1 200 ") and sent == body
    gate.limit = 0
    late = download(server)
    server.advance(TURN_WAIT - SWEEP_SECONDS)
    assert late.received() == b"", "still waiting, within TURN_WAIT"
    server.advance(2 * SWEEP_SECONDS)
    head, text = head_and_body(late)
    assert head.startswith(b"HTTP/1.1 503 ") and b"\r\nRetry-After: 1" in head, head
    assert text == b"not available yet, retry\n" and not late.closed
    assert channel_of(late) not in gate.waiting and not gate.holds(channel_of(late))
    assert sample("hps_bodies_turned_away_total") == turned_away + 1
    late.send(GET_BIG)  # the retry on the same connection queues afresh
    assert list(gate.waiting) == [channel_of(late)]


def test_tls_answers_without_a_body_end_their_turn_and_head_never_waits(tls_site) -> None:
    server, _ = tls_site(limit=1)
    gate = server.site.bodies
    etag = head_and_body(download(server))[0].split(b"ETag: ")[1].split(b"\r\n")[0]
    client = server.connect().send(f"GET {BIG} HTTP/1.1\r\nHost: hps.test\r\n"
                                   f"If-None-Match: {etag.decode()}\r\n\r\n".encode())
    assert client.received().startswith(b"HTTP/1.1 304 ")
    assert not gate.active and not gate.waiting, "the 304's turn ended with it"
    holder = download(server, reading=False)
    head = server.connect().send(f"HEAD {BIG} HTTP/1.1\r\nHost: hps.test\r\n\r\n".encode())
    assert head.received().startswith(b"HTTP/1.1 200 "), "HEAD sends no body: no turn"
    assert list(gate.active) == [channel_of(holder)] and not gate.waiting


def test_a_tls_client_that_leaves_while_waiting_leaves_the_queue(tls_site) -> None:
    server, body = tls_site(limit=1)
    gate = server.site.bodies
    holder = download(server, reading=False)
    leaving, staying = download(server), download(server)
    leaving.close()
    assert list(gate.waiting) == [channel_of(staying)]
    holder.resume_reading()
    assert head_and_body(staying)[1] == body
    assert not gate.active and not gate.waiting
    assert server.metrics()["hps_h2_bodies_waiting"] == 0


def test_a_stalled_tls_body_gives_its_turn_back_and_the_deadline_still_ends_it(
        tls_site) -> None:
    send_timeout = 5.0
    server, body = tls_site(limit=1, send_timeout=send_timeout)
    gate = server.site.bodies
    stalled = sample("hps_h2_bodies_stalled_total")
    stuck = download(server, reading=False)
    waiting = download(server)
    assert gate.holds(channel_of(stuck)) and head_and_body(waiting)[1] == b""
    server.advance(STALL_SECONDS + 2 * SWEEP_SECONDS)
    assert head_and_body(waiting)[1] == body, "the turn went to the waiting body"
    assert sample("hps_h2_bodies_stalled_total") == stalled + 1
    assert not stuck.transport.aborted
    server.advance(send_timeout)
    assert stuck.transport.aborted, "cut by the send deadline"
    assert not gate.active and not gate.waiting


def test_plain_tcp_bodies_never_wait_for_a_turn(tls_site) -> None:
    server, body = tls_site(limit=0, tls=False)
    waited = sample("hps_h2_bodies_waited_total")
    client = download(server)
    assert head_and_body(client)[1] == body
    assert not server.site.bodies.waiting and sample("hps_h2_bodies_waited_total") == waited


def test_a_tls_request_waiting_for_its_turn_holds_one_timer_and_few_deferreds(
        tls_site) -> None:
    """A herd queues hundreds of requests at once: each waits on one timer (TURN_WAIT) and
    its request's end, not on a chain of Deferreds and closures; a client that leaves takes
    its timer with it."""
    server, _ = tls_site(limit=0)
    reactor = server.site.reactor

    def deferreds() -> int:
        gc.collect()
        return sum(isinstance(o, Deferred) for o in gc.get_objects())

    timers, before = len(reactor.getDelayedCalls()), deferreds()
    waiting = [download(server) for _ in range(20)]
    assert len(server.site.bodies.waiting) == 20
    assert len(reactor.getDelayedCalls()) - timers == 20, "one TURN_WAIT timer each"
    assert deferreds() - before <= 2 * 20, "the request's own notifyFinish, and ours"
    waiting[0].close()
    assert len(reactor.getDelayedCalls()) - timers == 19
    assert len(server.site.bodies.waiting) == 19
