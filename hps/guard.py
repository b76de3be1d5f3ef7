"""Pure decisions about what a URL or a file in the tree may be.

Nothing here knows Twisted or HTTP: each function takes plain values and says
yes or no, so the catalog, the router and ``hps pull`` share one definition of
a sane name, version and module.
"""

from __future__ import annotations

import os
import re
from enum import Enum

WASM_MAGIC = b"\0asm"
MODULE_FILE = "plugin.wasm"
MAX_SEGMENT = 128
MAX_PATH = 1024

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*\Z")
# semver-ish: 1, 1.0, 1.0.0, 1.0.0-rc.1, 2.0.0+build.5, v1.2.3
_VERSION = re.compile(r"v?[0-9]+(\.[0-9]+){0,3}([-+][0-9A-Za-z][0-9A-Za-z.+-]*)?\Z")
# Any OCI tag (latest, 2.0.0_rc1) and a digest: upstream serves a line's tag, or its
# digest for a digest-only line, as the version. Neither can start with "." or be "..".
# The OCI grammar, also what hps pull accepts in a reference (hps.pull.properties).
OCI_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\Z")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")


class Verdict(Enum):
    """What to do with one URL path segment."""

    OK = "ok"
    NOT_FOUND = "not found"
    MALFORMED = "malformed"


def accept_name(name: str) -> bool:
    """A plugin name: lower-case letters, digits, ``.``, ``_``, ``-``."""
    return len(name) <= MAX_SEGMENT and _NAME.match(name) is not None


def accept_version(version: str) -> bool:
    """A version as the Console, OCI tags or upstream's digest-only lines spell it."""
    return len(version) <= MAX_SEGMENT and any(
        pattern.match(version) is not None for pattern in (_VERSION, OCI_TAG, DIGEST)
    )


def is_wasm_module(head: bytes) -> bool:
    """True when the bytes start with the WebAssembly magic number."""
    return head[:4] == WASM_MAGIC


def judge_segment(raw: bytes) -> tuple[Verdict, str]:
    """Decide one already percent-decoded path segment.

    Malformed input (not UTF-8, control bytes, NUL) is a client error; anything
    that merely cannot name something we serve (dot segments, separators
    smuggled in by ``%2F`` or ``%5C``, over-long) is just not found, so hostile
    paths and missing plugins look alike from outside.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return Verdict.MALFORMED, ""
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        return Verdict.MALFORMED, ""
    if len(raw) > MAX_SEGMENT or text.startswith(".") or "/" in text or "\\" in text:
        return Verdict.NOT_FOUND, ""
    return Verdict.OK, text


def judge_path(segments: list[bytes]) -> tuple[Verdict, list[str]]:
    """Decide a whole decoded path; the worst segment verdict wins."""
    if sum(len(s) + 1 for s in segments) > MAX_PATH:
        return Verdict.MALFORMED, []
    texts: list[str] = []
    worst = Verdict.OK
    for raw in segments:
        verdict, text = judge_segment(raw)
        if verdict is Verdict.MALFORMED:
            return verdict, []
        if verdict is Verdict.NOT_FOUND:
            worst = verdict
        texts.append(text)
    return worst, texts if worst is Verdict.OK else []


def within_root(path: str, root: str) -> bool:
    """True when ``path``, with every symlink resolved, stays inside ``root``."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root + os.sep)


def hidden_or_temporary(filename: str) -> bool:
    """Names a writer uses while a file is incomplete, and dotfiles."""
    return filename.startswith((".", "~", "#")) or filename.endswith(
        (".tmp", ".part", ".partial", ".swp", "~")
    )
