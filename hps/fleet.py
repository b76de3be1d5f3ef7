"""What the cluster will ask for: the plugin URLs of its WasmPlugins, the Console and the
Controller, each classified once.

WasmPlugins come as ``kubectl get wasmplugins -A -o yaml`` prints them (a ``List`` with
``items``), as a multi-document file, or as one object. Each URL is one of three things:

- an http(s) URL aimed at hps (``/plugins/<name>/<version>/plugin.wasm`` under the base
  URL, or on any host when no base is given): served or not, hps decides;
- an ``oci://`` reference not yet moved: named and versioned as ``hps pull`` serves it
  (the repository's last path segment, the tag; a digest-only reference at
  ``sha256:<hex>``, as digest lines land);
- anything else (another server, a file): hps has nothing to say about it.

A bad document is one line naming it (its index and ``namespace/name`` when known) and what
is wrong; every bad document is found before anything is checked.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

from hps import urls
from hps.catalog import Skip, examine
from hps.guard import MODULE_FILE, accept_name, accept_version
from hps.pull.errors import InputError
from hps.pull.properties import (
    Entry,
    Reference,
    parse_properties,
    parse_reference,
    read_text,
    reference_entry,
)

KIND = "WasmPlugin"
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
CONSOLE_LIST = "console.properties"
"""The Console's plugin list, shipped in the package (setup.py copies
``plugins/console.properties`` there) and read from the checkout when run from one."""


@dataclass(frozen=True)
class WasmPlugin:
    """One WasmPlugin document: where it was, who it is, and the object itself."""

    where: str  # "FILE: document 2" or "FILE: document 1 item 3"
    namespace: str | None
    name: str | None
    url: str
    sha256: str | None
    body: dict[str, Any] = field(compare=False, repr=False)

    @property
    def label(self) -> str:
        return f"{self.namespace or '-'}/{self.name or '-'}"


@dataclass(frozen=True)
class Wanted:
    """One URL something in the cluster will fetch, who asks, and the pin it expects."""

    source: str  # "wasmplugin higress-system/key-auth", "console key-auth", "mcp-url"
    url: str
    sha256: str | None = None
    plugin: WasmPlugin | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Target:
    """What a URL names, as far as hps is concerned."""

    kind: Literal["hps", "oci", "other"]
    name: str = ""
    version: str = ""
    path: str = ""  # for "hps": the path after the base URL
    problem: str = ""  # for "hps": why hps cannot serve it whatever its tree holds
    ref: Reference | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.version)


# -- reading WasmPlugins ---------------------------------------------------------------


def read_input(path: str) -> tuple[str, str]:
    """The text of FILE, or of stdin for ``-``, and the name to give it in messages."""
    if path == "-":
        return sys.stdin.read(), "<stdin>"
    return read_text(path, "WasmPlugins"), path


def load_wasmplugins(text: str, source: str) -> list[WasmPlugin]:
    """Every WasmPlugin in ``text``; raises :class:`InputError` with one line per bad one."""
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise InputError(f"{where}: not YAML: {getattr(exc, 'problem', None) or exc}") from None
    found: list[WasmPlugin] = []
    errors: list[str] = []
    for where, doc in _objects(documents, source):
        try:
            found.append(_wasmplugin(where, doc))
        except ValueError as exc:
            errors.append(f"{where}{_who(doc)}: {exc}")
    if errors:
        raise InputError("\n".join(errors))
    if not found:
        raise InputError(f"{source}: no WasmPlugin in it")
    return found


def _objects(documents: list[Any], source: str) -> Iterator[tuple[str, Any]]:
    """Each object with where it is; a ``List`` (``kubectl get -o yaml``) is opened."""
    for number, doc in enumerate(documents, 1):
        where = f"{source}: document {number}"
        if doc is None:
            continue  # an empty document: a leading or trailing ``---``
        if _is_list(doc):
            items = doc.get("items") or []
            if not isinstance(items, list):
                items = [_NotAList()]
            for index, item in enumerate(items, 1):
                yield f"{where} item {index}", item
        else:
            yield where, doc


def _is_list(doc: Any) -> bool:
    """``kind: List`` as kubectl prints it (or a typed ``WasmPluginList``)."""
    return isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List") \
        and "items" in doc


class _NotAList:
    """Stands for the items of a ``List`` whose ``items`` is no list."""


def _who(doc: Any) -> str:
    """`` (namespace/name)`` of a document, when it says."""
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    if not isinstance(meta, dict) or not meta.get("name"):
        return ""
    return f" ({meta.get('namespace') or '-'}/{meta['name']})"


def _wasmplugin(where: str, doc: Any) -> WasmPlugin:
    if isinstance(doc, _NotAList):
        raise ValueError("a List whose items is not a list")
    if not isinstance(doc, dict):
        raise ValueError(f"not an object ({type(doc).__name__})")
    if doc.get("kind") != KIND:
        raise ValueError(f"kind is {doc.get('kind')!r}, not {KIND}")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        raise ValueError("no spec")
    url = spec.get("url")
    if not isinstance(url, str) or not url.strip():
        raise ValueError("spec.url is missing or not a string")
    pin = spec.get("sha256") or None
    if pin is not None and not (isinstance(pin, str) and _SHA256.match(pin)):
        raise ValueError(f"spec.sha256 {pin!r} is not 64 lowercase hex digits"
                         " (the gateway compares it as such)")
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    namespace, name = meta.get("namespace"), meta.get("name")
    plugin = WasmPlugin(where, namespace and str(namespace), name and str(name), url.strip(),
                        pin, doc)
    if url.strip().startswith("oci://"):
        oci_target(plugin.url)  # a reference hps could never serve is bad input, found now
    return plugin


def from_wasmplugins(plugins: list[WasmPlugin]) -> list[Wanted]:
    return [Wanted(f"wasmplugin {p.label}", p.url, p.sha256, p) for p in plugins]


def pull_entries(plugins: list[WasmPlugin]) -> list[Entry]:
    """What ``hps pull --wasmplugins`` pulls: each ``oci://`` reference, served where
    :func:`oci_target` says, its pinned ``sha256`` checked before it is written."""
    entries = []
    for plugin in plugins:
        if plugin.url.startswith("oci://"):
            target = oci_target(plugin.url)
            assert target.ref is not None
            entries.append(reference_entry(target.name, target.ref,
                                           f"{plugin.where} ({plugin.label})", plugin.sha256))
    return entries


# -- the Console and the Controller ----------------------------------------------------


def console_list() -> Path:
    """The Console's plugin list this hps was built with: the packaged copy when installed,
    else the checkout's ``plugins/console.properties``."""
    packaged = resources.files("hps") / CONSOLE_LIST
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "plugins" / CONSOLE_LIST


def from_console(pattern: str, listing: str | Path) -> list[Wanted]:
    """The URLs the Console builds: its literal replace of ``${name}`` and ``${version}``."""
    if "${name}" not in pattern or "${version}" not in pattern:
        raise InputError(f"--console-pattern {pattern!r} lacks ${{name}} or ${{version}}")
    entries = parse_properties(read_text(listing, "Console plugin list"), str(listing))
    return [Wanted(f"console {e.name}",
                   pattern.replace("${name}", e.name).replace("${version}", e.version))
            for e in entries]


def from_mcp(url: str) -> list[Wanted]:
    return [Wanted("mcp-url", url)]


# -- what a URL names ------------------------------------------------------------------


class Aim:
    """Which http(s) URLs mean this hps: those under ``base`` (scheme, host, port and any
    path prefix), or with no base, any host whose path has hps's layout."""

    def __init__(self, base: str | None, flag: str = "--base-url") -> None:
        self.base = base.rstrip("/") if base else None
        if base is not None:
            parts = urlsplit(base)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise InputError(f"{flag} must be an http:// or https:// URL, not {base!r}")
            if parts.query or parts.fragment:
                raise InputError(f"{flag} must not carry a query or fragment")

    def url_for(self, name: str, version: str) -> str:
        """Where hps serves ``name``/``version``: under the base, or as a path."""
        return (self.base or "") + urls.file_url(name, version)

    def target(self, url: str) -> Target:
        if url.startswith("oci://"):
            return oci_target(url)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return Target("other")
        if self.base is not None:
            if not (url.startswith(self.base + "/") and _same_origin(url, self.base)):
                return Target("other")
            path = "/" + url[len(self.base):].lstrip("/")
            return _hps_target(path.split("#", 1)[0])
        split = urls.split_file_path(parts.path)
        if split is None or split[2] != MODULE_FILE:
            return Target("other")
        return _hps_target(parts.path)


def _same_origin(url: str, base: str) -> bool:
    a, b = urlsplit(url), urlsplit(base)
    return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)


def _hps_target(path: str) -> Target:
    split = urls.split_file_path(path)
    if split is None or split[2] != MODULE_FILE:
        return Target("hps", path=path, problem="not a module URL of hps"
                      " (/plugins/<name>/<version>/plugin.wasm)")
    name, version, _ = split
    if not (accept_name(name) and accept_version(version)):
        return Target("hps", name, version, path,
                      problem=f"{name}/{version} is not a plugin name and version hps serves")
    return Target("hps", name, version, path)


def oci_target(url: str) -> Target:
    """An ``oci://`` reference as ``hps pull`` serves it; ValueError (one line) when it
    names no name and version hps could serve."""
    try:
        ref = parse_reference(url)
    except ValueError as exc:
        raise ValueError(f"{url}: {exc}") from None
    name = ref.repository.rsplit("/", 1)[-1]
    version = ref.tag or ref.digest or ""
    if not accept_name(name):
        raise ValueError(f"{url}: {name!r} is not a plugin name hps serves")
    if not accept_version(version):
        raise ValueError(f"{url}: {version!r} is not a version hps serves"
                         " (hps pull --manifest can serve it under one)")
    return Target("oci", name, version, ref=ref)


def classify(wanted: list[Wanted], aim: Aim) -> list[tuple[Wanted, Target]]:
    """Each wanted URL with its target; a bad ``oci://`` URL from the Console or
    ``--mcp-url`` is bad input too."""
    errors, pairs = [], []
    for item in wanted:
        try:
            pairs.append((item, aim.target(item.url)))
        except ValueError as exc:
            errors.append(f"{item.source}: {exc}")
    if errors:
        raise InputError("\n".join(errors))
    return pairs


# -- the tree's answer -----------------------------------------------------------------


def tree_digest(root: str, name: str, version: str) -> tuple[str | None, str]:
    """The module's SHA-256 as the server would serve it from ``root`` (the catalog's own
    examination: in-root symlinks followed, anything it would skip refused), or None and why."""
    try:
        return examine(root, name, version).sha256, ""
    except FileNotFoundError:
        return None, f"the tree has no {name}/{version}"
    except Skip as why:
        return None, f"{name}/{version} is not served: {why}"
    except OSError as err:
        return None, f"{name}/{version} is unreadable: {err.strerror}"
