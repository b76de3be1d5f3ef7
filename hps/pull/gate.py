"""The door between downloads and the tree, shut when a pull is interrupted.

A download under way cannot be stopped from another thread (it may wait on a
registry's socket until ``--timeout``), but its write can be refused. Shutting
the gate waits for the writes already through it, so afterwards the tree no
longer changes and the lock can describe it while those downloads are abandoned.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hps.pull.errors import PullError


class Interrupted(PullError):
    """The pull was interrupted before this module was written."""


class Gate:
    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._shut = False
        self._writing: set[Path] = set()
        self.written: set[Path] = set()  # every path a write completed for, through the gate

    @contextmanager
    def through(self, path: Path) -> Iterator[None]:
        """Write ``path`` inside this block, or raise :class:`Interrupted` if shut."""
        with self._changed:
            if self._shut:
                raise Interrupted("interrupted before it was written")
            self._writing.add(path)
        try:
            yield
            with self._changed:
                self.written.add(path)
        finally:
            with self._changed:
                self._writing.discard(path)
                self._changed.notify_all()

    def shut(self) -> None:
        """No write starts after this returns, and none is under way."""
        with self._changed:
            self._shut = True
            self._changed.wait_for(lambda: not self._writing)
