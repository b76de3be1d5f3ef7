"""The suite's own shape: real processes are few, marked, and the rest runs in memory.

A test that starts ``twistd hps`` (or the image) is marked ``process`` (the ``serve``
fixture refuses unmarked tests), so ``python -m pytest -m "not process"`` is the
in-memory loop, and the count below keeps black-box tests the exception.
"""

from __future__ import annotations

import pytest

MAX_PROCESS_TESTS = 12
"""Start-up and exit codes, SIGTERM, TLS + HTTP/2 with curl, the browser, inotify,
the image, and the black-box differentials (sendfile, pull-through)."""

STARTS_A_PROCESS = {"serve", "replayed_image"}


def process_tests(items: list[pytest.Item]) -> list[pytest.Item]:
    return [item for item in items if item.get_closest_marker("process")]


def test_real_processes_are_marked_and_few(request: pytest.FixtureRequest) -> None:
    items = request.session.items
    unmarked = [item.nodeid for item in items
                if STARTS_A_PROCESS & set(getattr(item, "fixturenames", ()))
                and not item.get_closest_marker("process")]
    assert unmarked == []
    marked = [item.nodeid for item in process_tests(items)]
    assert len(marked) <= MAX_PROCESS_TESTS, "\n".join(marked)
