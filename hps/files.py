"""Open, verified files: the descriptors every response reads its bytes from.

A :class:`Source` is a file descriptor whose identity (device, inode, size,
mtime) was checked against the catalog when it was opened. Responses keep the
``Source`` they started with, so a module replaced on disk (rename over it)
mid-download still sends the bytes its ETag names; a module rewritten in place
changes its identity, which :meth:`Source.fresh` notices before every send.

The :class:`FileTable` keeps the last ``MAX_OPEN`` sources open, shared by
every response (nginx's ``open_file_cache``): one ``open`` per module instead
of one per request, and a module that becomes unreadable keeps being served
from the descriptor opened while it was readable.
"""

from __future__ import annotations

import os
from collections import OrderedDict

from hps.catalog import Identity, identity_of

MAX_OPEN = 256
"""Descriptors the table keeps open beyond those responses hold (LRU)."""

_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW


class Replaced(Exception):
    """The file on disk is no longer the one the catalog describes."""


class Source:
    """One open file descriptor, closed when the last holder lets go of it."""

    open = 0
    """Descriptors open in all sources: the connection cap counts them (hps.site)."""

    def __init__(self, fd: int, identity: Identity) -> None:
        self.fd, self.identity = fd, identity
        Source.open += 1

    def fresh(self) -> bool:
        """Are the file's bytes still the ones the catalog hashed (not rewritten in place)?"""
        try:
            return identity_of(os.fstat(self.fd)) == self.identity
        except OSError:
            return False

    def read(self, offset: int, count: int) -> bytes:
        return os.pread(self.fd, count, offset)

    def __del__(self) -> None:
        # Held by the table and by each response in flight; CPython closes on the last drop.
        Source.open -= 1
        os.close(self.fd)


def open_verified(path: str, identity: Identity) -> Source:
    """Open ``path`` and check it is the file with ``identity``; raise Replaced or OSError."""
    fd = os.open(path, _FLAGS)
    try:
        info = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if identity_of(info) != identity:
        os.close(fd)
        raise Replaced(path)
    return Source(fd, identity)


class FileTable:
    """The open sources, by (path, identity), least recently used dropped first."""

    def __init__(self, limit: int = MAX_OPEN) -> None:
        self.limit = limit
        self.entries: OrderedDict[tuple[str, Identity], Source] = OrderedDict()

    def get(self, path: str, identity: Identity) -> Source:
        """A fresh source for the file; raise Replaced (its bytes changed) or OSError."""
        key = (path, identity)
        source = self.entries.get(key)
        if source is not None:
            if source.fresh():
                self.entries.move_to_end(key)
                return source
            del self.entries[key]
            raise Replaced(path)
        source = open_verified(path, identity)
        self.entries[key] = source
        while len(self.entries) > self.limit:
            self.entries.popitem(last=False)
        return source

    def forget_except(self, keep: set[tuple[str, Identity]]) -> None:
        """Close (once no response holds them) the sources no artifact uses any more."""
        for key in [k for k in self.entries if k not in keep]:
            del self.entries[key]
