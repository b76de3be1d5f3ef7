"""Waiting on a real process: the one place the suite sleeps.

In memory, time moves only when a test moves the harness clock, so nothing there waits.
A real process (``twistd hps``, the registry, the image) answers at its own pace, so a
black-box test polls it for a condition it can see from outside, under a deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll(check: Callable[[], T], timeout: float, every: float = 0.05) -> T | None:
    """``check()`` until it returns something true, which is returned; None once
    ``timeout`` seconds have passed. ``check`` may fail the test itself (the process
    exited)."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() >= deadline:
            return None
        time.sleep(every)  # a real process's pace: nothing in memory gets here
