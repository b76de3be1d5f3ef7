"""The URL space's layout, in one place: ``/plugins/<name>/<version>/<file>``.

What a name and a version may be is :mod:`hps.guard`'s (the tree on disk and
``hps pull`` use the same grammar); where they sit in a URL, which files a version
has, and how a URL is spelled from them is here. The router, the fast path, the
metrics, the pages, the catalog and ``hps wasmplugin`` all use these, so the
layout changes in one place.
"""

from __future__ import annotations

import re

from hps.guard import MODULE_FILE, accept_name, accept_version

PLUGINS = "plugins"
"""The first path segment of everything the tree serves."""
LISTING = f"/{PLUGINS}/"
METADATA_FILE = "metadata.txt"
INDEX_FILE = "index.json"
INVENTORY_FILE = "snapshot-inventory.json"
"""Upstream's inventory of the tree (``hps pull --snapshot`` writes it at the root), served
at ``/plugins/snapshot-inventory.json``: the one file outside ``<name>/<version>/`` that is."""
INVENTORY_URL = f"{LISTING}{INVENTORY_FILE}"
PLUGIN_FILES = (MODULE_FILE, METADATA_FILE)
"""The files each ``<name>/<version>/`` has."""

_PLAIN = re.compile(rb"[A-Za-z0-9._~:+-]+\Z")
"""Segment characters that need no percent-decoding (RFC 3986 unreserved, ``:`` and ``+``)."""
_MODULE_PREFIX = LISTING.encode()
_MODULE_SUFFIX = MODULE_FILE.encode()


def plugin_url(name: str) -> str:
    return f"{LISTING}{name}/"


def version_url(name: str, version: str) -> str:
    return f"{LISTING}{name}/{version}/"


def file_url(name: str, version: str, file: str = MODULE_FILE) -> str:
    """``/plugins/<name>/<version>/<file>``; the module's when no file is named."""
    return f"{LISTING}{name}/{version}/{file}"


def index_url(name: str | None = None) -> str:
    """The JSON index of every plugin, or of one."""
    return f"{plugin_url(name) if name else LISTING}{INDEX_FILE}"


def split_file_path(path: str) -> tuple[str, str, str] | None:
    """(name, version, file) of a path ``/plugins/<name>/<version>/<file>`` (any query cut
    off), None for any other shape. Names and versions are not judged here."""
    parts = path.split("?", 1)[0].split("/")
    if len(parts) == 5 and parts[0] == "" and parts[1] == PLUGINS and all(parts[2:]):
        return parts[2], parts[3], parts[4]
    return None


def module_target(target: bytes) -> tuple[str, str] | None:
    """(name, version) when a raw request target is exactly a module's URL, spelled in
    characters that need no decoding, with a name and a version of the grammar; else None
    (twisted.web then decodes and judges the target itself, to the same effect)."""
    if not target.startswith(_MODULE_PREFIX):
        return None
    parts = target[len(_MODULE_PREFIX):].split(b"/")
    if len(parts) != 3 or parts[2] != _MODULE_SUFFIX:
        return None
    name, version = parts[0], parts[1]
    if not (_PLAIN.match(name) and _PLAIN.match(version)) or name[:1] == b"." \
            or version[:1] == b".":
        return None
    text_name, text_version = name.decode(), version.decode()
    if accept_name(text_name) and accept_version(text_version):
        return text_name, text_version
    return None
