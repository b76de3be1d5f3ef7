"""Unit: HTTP/2 bodies take turns, a few at once, the rest in arrival order.

The same rules through the real server and an HTTP/2 client: tests/test_http2.py.
"""

from __future__ import annotations

from twisted.internet.task import Clock

from hps import metrics
from hps.bodies import STALL_SECONDS, BodyGate


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
