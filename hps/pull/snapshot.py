"""Upstream's production mode: a Higress snapshot plus an unmanaged lock, read unchanged.

``pull_plugins.py --snapshot snapshot.json --unmanaged-lock unmanaged-plugins.lock.json``
serves every snapshot plugin that has a ``consumers.pluginServer`` mapping at
``<httpPath>/<version>/`` (and under its ``inventoryKey`` and ``aliases``), pulled by
digest, and every properties line the snapshot does not manage from the digest the
unmanaged lock pins, checked against its ``wasmSha256``. This module turns both
files into a :class:`Plan` and makes every one of upstream's checks, and ours
(names, versions, digests), before a single byte is downloaded: each failure is
one :class:`InputError` naming the entry and the reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hps.guard import accept_name, accept_version
from hps.pull.errors import InputError
from hps.pull.lock import Record, load_json
from hps.pull.properties import DIGEST, Entry, Key, NameAlias, Plan, Reference, parse_reference
from hps.pull.tree import write_bytes
from hps.urls import INVENTORY_FILE

SCHEMA_VERSION = 1
SNAPSHOT_FIELDS = ("logicalId", "image", "version", "ociRef", "digest")
LOCK_FIELDS = (
    "logicalKey",
    "servedPath",
    "servedVersion",
    "repository",
    "tag",
    "digest",
    "wasmSha256",
)
_HEX = re.compile(r"[0-9a-f]{64}\Z")


@dataclass(frozen=True)
class Served:
    """One name upstream's ``snapshot-inventory.json`` lists, and the entry holding its bytes."""

    name: str
    key: Key
    digest: str


def read_json(path: Path, what: str) -> dict[str, Any]:
    doc = load_json(path, what)
    if not isinstance(doc, dict) or doc.get("schemaVersion") != SCHEMA_VERSION:
        raise InputError(f"{what} {str(path)!r}: unsupported schema (want schemaVersion 1)")
    return doc


def snapshot_plan(
    snapshot: dict[str, Any], source: str, properties: list[Entry], lock: dict[str, Any]
) -> tuple[Plan, list[Served]]:
    """The plan for a snapshot and the unmanaged inventory, every check made."""
    plan = Plan()
    served: list[Served] = []
    for index, item in enumerate(_plugins(snapshot, source)):
        if not _mapping(item):
            continue  # not served by a plugin server: upstream skips it too
        entry, names = _managed(f"{source}: plugins[{index}]", item)
        plan.add(entry)
        for name in names:
            if any(s.name == name for s in served):
                raise InputError(
                    f"{entry.source}: plugin-server mapping {name!r} is ambiguous"
                    " (inventoryKey or alias used twice)"
                )
            served.append(Served(name, entry.key, entry.pin or ""))
            if name != entry.name:
                plan.name_aliases[f"{name}/{entry.version}"] = NameAlias(
                    name, entry.name, ((entry.version, entry.version),)
                )
    if not served:
        raise InputError(f"{source}: no plugin has a consumers.pluginServer mapping")
    for entry in _unmanaged(properties, {s.name for s in served}, lock):
        plan.add(entry)
    for alias in plan.name_aliases.values():
        for version, _ in alias.links:
            if (alias.name, version) in plan.entries:
                raise InputError(
                    f"{source}: plugin-server mapping {alias.name}/{version} is ambiguous"
                    f" (also served from {plan.entries[alias.name, version].ref})"
                )
    return plan, served


def _plugins(snapshot: dict[str, Any], source: str) -> list[dict[str, Any]]:
    plugins = snapshot.get("plugins")
    if not isinstance(plugins, list) or not all(isinstance(p, dict) for p in plugins):
        raise InputError(f"{source}: 'plugins' must be a list of objects")
    return plugins


def _mapping(item: dict[str, Any]) -> Any:
    consumers = item.get("consumers")
    return consumers.get("pluginServer") if isinstance(consumers, dict) else None


def _managed(where: str, item: dict[str, Any]) -> tuple[Entry, list[str]]:
    mapping = _mapping(item)
    name = item.get("logicalId")
    where = f"{where} ({name})" if isinstance(name, str) else where
    if any(not isinstance(item.get(k), str) or not item[k] for k in SNAPSHOT_FIELDS):
        raise InputError(f"{where}: lacks an immutable identity {list(SNAPSHOT_FIELDS)}")
    if not isinstance(mapping, dict):
        raise InputError(f"{where}: consumers.pluginServer must be an object")
    key, path, aliases = (
        mapping.get("inventoryKey"),
        mapping.get("httpPath"),
        mapping.get("aliases"),
    )
    aliases = [] if aliases is None else aliases
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in [key, path, *aliases]):
        raise InputError(f"{where}: plugin-server mapping is missing inventoryKey or httpPath")
    for served in (key, path, *aliases):
        if not accept_name(served):
            raise InputError(f"{where}: {served!r} is not a plugin name the server can serve")
    version, oci_ref, digest = item["version"], item["ociRef"], item["digest"]
    if "/" not in oci_ref or not oci_ref.endswith(":" + version):
        raise InputError(f"{where}: OCI tag and version disagree ({oci_ref} vs {version})")
    if not accept_version(version):
        raise InputError(f"{where}: version {version!r} is not one the server can serve")
    if not DIGEST.match(digest):
        raise InputError(f"{where}: digest must be sha256:<64 lowercase hex>, got {digest!r}")
    ref = _reference(where, oci_ref.removesuffix(":" + version), digest)
    names = list(dict.fromkeys([key, *aliases]))
    return Entry(path, version, ref, pin=digest, source=where), names


def _reference(where: str, repository: str, digest: str) -> Reference:
    try:
        return parse_reference(f"{repository}@{digest}")
    except ValueError as exc:
        raise InputError(f"{where}: {exc}") from None


def _unmanaged(properties: list[Entry], managed: set[str], lock: dict[str, Any]) -> list[Entry]:
    """Each properties line the snapshot does not manage, pinned by the unmanaged lock."""
    plugins = lock.get("plugins")
    if not isinstance(plugins, dict):
        raise InputError("unmanaged lock: 'plugins' must be an object")
    unmanaged = {e.name: e for e in properties if e.name not in managed}
    missing, extra = sorted(set(unmanaged) - set(plugins)), sorted(set(plugins) - set(unmanaged))
    if missing or extra:
        raise InputError(
            f"unmanaged lock inventory mismatch: missing={missing} (in the properties, not the"
            f" lock) extra={extra} (in the lock, not the properties or managed by the snapshot)"
        )
    return [_pinned(name, unmanaged[name], plugins[name]) for name in sorted(unmanaged)]


def _pinned(name: str, line: Entry, item: Any) -> Entry:
    where = f"unmanaged lock: plugins.{name}"
    if not isinstance(item, dict) or any(
        not isinstance(item.get(k), str) or not item[k] for k in LOCK_FIELDS
    ):
        raise InputError(f"{where}: incomplete (want {list(LOCK_FIELDS)})")
    if line.ref.tag is None or line.ref.digest:
        raise InputError(f"{line.source}: {name}: an unmanaged line must be repository:tag")
    tag = line.ref.tag
    if item["logicalKey"] != name or item["servedPath"] != name or item["servedVersion"] != tag:
        raise InputError(f"{where}: changes its served identity (want {name}/{tag})")
    repository = f"{line.ref.registry}/{line.ref.repository}"
    if item["repository"] != repository or item["tag"] != tag:
        raise InputError(
            f"{where}: drifts from properties ({item['repository']}:{item['tag']}"
            f" vs {line.source}: {repository}:{tag})"
        )
    if not DIGEST.match(item["digest"]) or not _HEX.match(item["wasmSha256"]):
        raise InputError(f"{where}: digest or wasmSha256 is not a valid immutable hash")
    ref = _reference(where, repository, item["digest"])
    return Entry(name, tag, ref, pin=item["digest"], sha256=item["wasmSha256"], source=where)


def write_inventory(output: Path, served: list[Served], records: dict[Key, Record]) -> Path:
    """Upstream's ``snapshot-inventory.json``: each served name's version, digest and hash."""
    doc = {
        s.name: {"digest": s.digest, "version": s.key[1], "wasmSha256": records[s.key].wasm_sha256}
        for s in sorted(served, key=lambda s: s.name)
        if s.key in records
    }
    path = output / INVENTORY_FILE
    write_bytes(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
    return path
