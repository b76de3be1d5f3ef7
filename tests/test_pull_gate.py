"""The gate a Ctrl-C shuts: no write starts after it, and none is cut in half."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from hps.pull.gate import Gate, Interrupted


def test_a_shut_gate_refuses_writes_and_remembers_what_it_let_through() -> None:
    gate = Gate()
    with gate.through(Path("a/1.0.0/plugin.wasm")):
        pass
    with pytest.raises(RuntimeError), gate.through(Path("b/1.0.0/plugin.wasm")):
        raise RuntimeError("the write failed")
    gate.shut()
    with pytest.raises(Interrupted), gate.through(Path("c/1.0.0/plugin.wasm")):
        pytest.fail("a shut gate let a write start")
    assert gate.written == {Path("a/1.0.0/plugin.wasm")}


def test_shutting_waits_for_the_write_under_way() -> None:
    gate = Gate()
    inside, release, shut = threading.Event(), threading.Event(), threading.Event()

    def write() -> None:
        with gate.through(Path("a/1.0.0/plugin.wasm")):
            inside.set()
            release.wait(10)

    writer = threading.Thread(target=write)
    writer.start()
    assert inside.wait(10)
    closer = threading.Thread(target=lambda: (gate.shut(), shut.set()))
    closer.start()
    # A bounded wait for something that must not happen while the write is held.
    assert not shut.wait(0.2)
    release.set()
    assert shut.wait(10)
    writer.join(10)
    closer.join(10)
    assert gate.written == {Path("a/1.0.0/plugin.wasm")}
