"""How much memory the process may use, and how much it holds now.

The limit is the memory cgroup's (what gets the pod OOM-killed), read the way
container runtimes and Go's and Java's runtimes read it: the process's own cgroup
from ``/proc/self/cgroup``, located under its mount from ``/proc/self/mountinfo``,
and the smallest limit from there up to the mount's root (a parent's limit binds
its children too). Both layouts exist in the wild:

- cgroup v2: ``memory.max`` (``max`` when unlimited);
- cgroup v1, controller ``memory``: ``memory.limit_in_bytes`` (unlimited is a huge
  number, ``PAGE_COUNTER_MAX`` pages).

``fs_root`` is a parameter so tests can build both layouts from fake files.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

UNLIMITED = 1 << 60
"""At or above this a v1 limit means none (v1 writes 0x7FFFFFFFFFFFF000 for unlimited)."""

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30, "ti": 1 << 40}
OFF = ("0", "none", "off")
AUTO = "auto"


@dataclass(frozen=True)
class Limit:
    """A memory limit in bytes (None: no bound) and where it came from, for the log."""

    bytes: int | None
    source: str


def parse_size(text: str) -> int | None:
    """``256Mi``, ``1G``, ``1.5Gi``, ``268435456`` (bytes); ``0``/``none``/``off``: None.

    Kubernetes' quantity suffixes (``Ki``, ``Mi``, ``Gi``: powers of 2; ``k``, ``M``,
    ``G``: powers of 10), optionally followed by ``B``; raises ValueError otherwise."""
    value = text.strip().lower()
    if value in OFF:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?", value)
    if not match:
        raise ValueError(f"{text!r} is not a size (bytes, or a number with Ki, Mi, Gi, "
                         "k, M, G), nor 0/none")
    size = int(float(match.group(1)) * _UNITS[match.group(2) or ""])
    if size <= 0:
        raise ValueError(f"{text!r} is not a size")
    return size


def size_problem(text: str) -> str | None:
    """The config check of ``memory_limit``: ``auto``, or a size, or off."""
    if text.strip().lower() == AUTO:
        return None
    try:
        parse_size(text)
    except ValueError as err:
        return str(err)
    return None


def resolve(setting: str, fs_root: str = "/") -> Limit:
    """The limit ``memory_limit`` asks for: the cgroup's for ``auto``, else its own."""
    if setting.strip().lower() != AUTO:
        size = parse_size(setting)
        return Limit(size, "--memory-limit" if size else "--memory-limit (off)")
    return cgroup_limit(fs_root)


def cgroup_limit(fs_root: str = "/") -> Limit:
    """The memory cgroup's limit for this process, or ``Limit(None, why)``."""
    root = Path(fs_root)
    try:
        groups = (root / "proc/self/cgroup").read_text()
        mounts = (root / "proc/self/mountinfo").read_text()
    except OSError:
        return Limit(None, "no /proc/self/cgroup")
    for version, relative, mount_root, mount_point in _memory_groups(groups, mounts):
        name = "memory.max" if version == 2 else "memory.limit_in_bytes"
        found = _smallest(root, mount_point, _inside(relative, mount_root), name)
        if found is not None:
            size, where = found
            return Limit(size, f"cgroup v{version} {where}")
        return Limit(None, f"cgroup v{version}: no limit set")
    return Limit(None, "no memory cgroup mounted")


def _memory_groups(groups: str, mounts: str) -> list[tuple[int, str, str, str]]:
    """(version, cgroup path, mount root, mount point) of the memory controller, v1 first
    (a hybrid host mounts both, and v1 holds the memory controller there)."""
    paths: dict[int, str] = {}
    for line in groups.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            paths.setdefault(2, parts[2])
        elif "memory" in parts[1].split(","):
            paths[1] = parts[2]
    found = []
    for line in mounts.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        kind, _source, options = line.split(" - ", 1)[1].split()[:3]
        version = 2 if kind == "cgroup2" else 1 if kind == "cgroup" else 0
        if version == 1 and "memory" not in options.split(","):
            continue
        if version in paths:
            found.append((version, paths[version], _unescape(fields[3]), _unescape(fields[4])))
    return sorted(found)


def _inside(path: str, mount_root: str) -> str:
    """The cgroup's path below its mount: a container sees its own cgroup as the root."""
    if mount_root != "/" and (path == mount_root or path.startswith(mount_root + "/")):
        return path[len(mount_root):] or "/"
    return path


def _smallest(root: Path, mount_point: str, relative: str,
              name: str) -> tuple[int, str] | None:
    """The smallest limit in ``name`` from the cgroup's directory up to the mount point."""
    base = root / mount_point.lstrip("/")
    parts = [p for p in relative.split("/") if p]
    best: tuple[int, str] | None = None
    for depth in range(len(parts), -1, -1):
        directory = base.joinpath(*parts[:depth])
        try:
            text = (directory / name).read_text().strip()
        except OSError:
            continue  # not this deep (a container's view of a host path), or not readable
        size = None if text == "max" else int(text) if text.isdigit() else None
        if size is not None and size < UNLIMITED and (best is None or size < best[0]):
            where = "/" + os.path.relpath(directory / name, root)
            best = (size, where)
    return best


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def rss() -> int:
    """Resident bytes of this process now (``/proc/self/statm``); 0 where unreadable."""
    try:
        with open("/proc/self/statm", "rb") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (2.33+): the C heap's counts, in bytes."""

    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _libc(name: str) -> Callable[..., object] | None:
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):  # not glibc (musl has neither call)
        return None


_TRIM = _libc("malloc_trim")
_MALLINFO2 = _libc("mallinfo2")
if _MALLINFO2 is not None:
    _MALLINFO2.restype = _MallInfo2  # type: ignore[attr-defined]

TRIM_STEP = 4 << 20
"""Freed C heap, grown by this much since the last trim, that is given back at once."""


def heap_info() -> _MallInfo2 | None:
    """glibc's ``mallinfo2()`` now; None where there is no such call."""
    return None if _MALLINFO2 is None else _MALLINFO2()  # type: ignore[return-value]


def heap_free() -> int | None:
    """Bytes free inside glibc's heap (``mallinfo2().fordblks``): freed by the process
    but resident until trimmed; None where there is no such call."""
    info = heap_info()
    return None if info is None else int(info.fordblks)


class HeapSlack:
    """Gives the C heap's freed pages back after a burst of frees (:func:`trim`).

    Python's own objects live in arenas it maps itself, so they never reuse what the C
    heap freed: when a herd's TLS handshakes end, OpenSSL frees their handshake state
    (18 MiB at once for 1,000 clients, measured) while the requests that follow grow
    Python's arenas, and without a trim the process stays resident for both (1,000 waiting
    TLS clients peaked 9 MiB lower with it, bench/README.md). A trim leaves the freed
    chunks free (their pages are given back, and come back on reuse), so the free count
    does not fall: what triggers the next trim is the free count grown by ``step`` over
    its lowest since the last one."""

    def __init__(self, free: Callable[[], int | None] = heap_free,
                 trim: Callable[[], bool] = lambda: trim(),
                 step: int = TRIM_STEP) -> None:
        self.free, self.trim, self.step = free, trim, step
        self.floor: int | None = None
        self.trims = 0

    def check(self) -> bool:
        """Trim if enough was freed since the last trim; True when it did."""
        free = self.free()
        if free is None:
            return False
        if self.floor is None or free < self.floor:
            self.floor = free
        if free - self.floor < self.step or not self.trim():
            return False
        self.floor = self.free()
        self.trims += 1
        return True


def trim() -> bool:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``): after a
    herd, OpenSSL's freed buffers otherwise stay resident, and the idle size measured
    then would count them. False where there is no such call."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
