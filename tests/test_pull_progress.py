"""Unit: what the operator sees while pulling, on a terminal and in a log."""

from __future__ import annotations

import io

import pytest

from hps.pull.progress import Progress, human


@pytest.mark.parametrize(("size", "text"), [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
    (5 << 20, "5.0 MiB"), (3 << 30, "3.0 GiB"),
])
def test_human_sizes(size: int, text: str) -> None:
    """Sizes in progress lines: whole bytes (B), then KiB, MiB and GiB with one decimal."""
    assert human(size) == text


def test_a_log_gets_one_line_per_outcome_and_no_live_line() -> None:
    out = io.StringIO()
    progress = Progress(2, stream=out, live=False)
    progress.started("a")
    progress.received(4096)
    progress.finished("a", "a 1.0.0: pulled")
    progress.finished("b", "b 1.0.0: not found", ok=False)
    progress.note("lock written")
    progress.close()
    assert out.getvalue() == "hps pull: a 1.0.0: pulled\nhps pull: lock written\n"
    assert (progress.done, progress.failed, progress.bytes) == (2, 1, 4096)


def test_a_terminal_gets_a_live_line_that_is_cleared_at_the_end() -> None:
    out = io.StringIO()
    progress = Progress(3, stream=out, live=True)
    for name in ("a", "b", "c", "d"):
        progress.started(name)
    progress.finished("a", "a: pulled", ok=False)
    text = out.getvalue()
    assert "\r\x1b[K[0/3] 0 B a, b, c …" in text
    assert text.endswith("\r\x1b[K[1/3, 1 failed] 0 B b, c, d")
    progress.close()
    assert out.getvalue().endswith("\r\x1b[K")


def test_the_stream_decides_when_live_is_not_said() -> None:
    assert not Progress(1, stream=io.StringIO()).live
