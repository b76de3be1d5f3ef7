"""Unit: what a client may ask: bodies, and the descriptor budget behind the connection cap."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hps.limits import FD_RESERVE, MAX_BODY, Limits, refuses_body
from tests.support.server import REPO


@pytest.mark.parametrize(("method", "length", "refused"), [
    (b"GET", 0, False), (b"GET", 1, True), (b"HEAD", None, True),
    (b"POST", MAX_BODY, False), (b"POST", MAX_BODY + 1, True), (b"POST", None, True),
])
def test_bodies(method: bytes, length: int | None, refused: bool) -> None:
    """GET and HEAD may carry no body, POST one up to MAX_BODY; a chunked body (no length) is
    refused."""
    assert refuses_body(method, length) is refused


def test_the_budget_is_twice_the_connections_by_default() -> None:
    assert Limits(max_connections=10).descriptor_budget == 20
    assert Limits(max_connections=10, descriptors=15).descriptor_budget == 15


CHILD = """
import resource, sys
from hps.limits import descriptor_budget
soft, hard = (int(n) for n in sys.argv[1:])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
print(*descriptor_budget(1000), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


@pytest.mark.parametrize(("soft", "hard", "expected"), [
    # Raised to twice the connections plus the reserve, when the hard limit allows.
    (FD_RESERVE + 100, 10_000, (1000, 2000, 2000 + FD_RESERVE)),
    # Else the cap is lowered to what the hard limit leaves, half of it per connection.
    (FD_RESERVE + 100, FD_RESERVE + 100, (50, 100, FD_RESERVE + 100)),
])
def test_the_cap_follows_the_descriptor_limit(soft: int, hard: int, expected: tuple) -> None:
    """In a child: the limits are the process's own, and lowering them is for good."""
    done = subprocess.run([sys.executable, "-c", CHILD, str(soft), str(hard)], cwd=REPO,
                          capture_output=True, text=True, timeout=30, check=True)
    assert tuple(int(n) for n in done.stdout.split()) == expected
