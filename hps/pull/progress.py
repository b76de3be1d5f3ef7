"""What the operator sees while pulling: a live line on a terminal, log lines otherwise."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


class Progress:
    """Thread-safe: workers report bytes and outcomes, one writer draws them."""

    def __init__(self, total: int, stream: TextIO | None = None, live: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.total = total
        self.done = 0
        self.failed = 0
        self.bytes = 0
        self.active: list[str] = []
        self._lock = threading.Lock()
        self._drawn = 0.0

    def started(self, name: str) -> None:
        with self._lock:
            self.active.append(name)
            self._draw(force=True)

    def received(self, count: int) -> None:
        with self._lock:
            self.bytes += count
            self._draw()

    def finished(self, name: str, message: str, ok: bool = True) -> None:
        with self._lock:
            if name in self.active:
                self.active.remove(name)
            self.done += 1
            self.failed += not ok
            if ok:
                self._line(message)
            self._draw(force=True)

    def note(self, message: str) -> None:
        with self._lock:
            self._line(message)
            self._draw(force=True)

    def close(self) -> None:
        with self._lock:
            if self.live:
                self.stream.write("\r\x1b[K")
                self.stream.flush()

    def _line(self, message: str) -> None:
        prefix = "\r\x1b[K" if self.live else ""
        self.stream.write(f"{prefix}hps pull: {message}\n")
        self.stream.flush()

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.live or (not force and now - self._drawn < 0.1):
            return
        self._drawn = now
        failed = f", {self.failed} failed" if self.failed else ""
        current = ", ".join(self.active[:3]) + (" …" if len(self.active) > 3 else "")
        self.stream.write(
            f"\r\x1b[K[{self.done}/{self.total}{failed}] {human(self.bytes)} {current}"[:200]
        )
        self.stream.flush()
