"""The JSON lock: what each ``(name, version)`` resolved to, so a later ``--locked`` pull is exact.

Every value is validated on read: a hand-edited lock that says ``versions: "1.0.0"``
would otherwise serve at ``<name>/1/``; each problem is one :class:`InputError` line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hps.guard import accept_name, accept_version
from hps.pull.errors import InputError
from hps.pull.properties import DIGEST, Key, parse_reference
from hps.pull.tree import write_bytes

LOCK_VERSION = 2
READABLE = (1, 2)  # version 1 was keyed by name alone: one version per name
SOURCES = ("registry", "local")
_HEX = re.compile(r"[0-9a-f]{64}\Z")


@dataclass
class Record:
    reference: str
    manifest_digest: str | None
    layer_digest: str | None
    wasm_sha256: str
    size: int
    versions: list[str]
    served_as: dict[str, list[str]] = field(default_factory=dict)
    source: str = "registry"  # or "local": --use-local kept a file already in the tree


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


# JSON spells keys like upstream's lock (wasmSha256); Python keeps snake_case.
KEYS = {f.name: _camel(f.name) for f in fields(Record)}
REQUIRED = ("reference", "wasm_sha256", "versions")


def lock_key(key: Key) -> str:
    return f"{key[0]}/{key[1]}"


def load_json(path: Path, what: str) -> Any:
    """A JSON input file, or one InputError line saying why not."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise InputError(f"{what} {str(path)!r} is not JSON: {exc}") from None


def read_lock(path: Path) -> dict[Key, Record]:
    doc = load_json(path, "lock")
    if not isinstance(doc, dict) or doc.get("lockVersion") not in READABLE:
        raise InputError(f"lock {str(path)!r}: want an object with lockVersion {LOCK_VERSION}")
    plugins = doc.get("plugins")
    if not isinstance(plugins, dict):
        raise InputError(f"lock {str(path)!r}: 'plugins' must be an object")
    records = {}
    for name, item in plugins.items():
        record = _record(f"lock {str(path)!r}: plugins.{name}", item)
        key = _key(f"lock {str(path)!r}: plugins.{name}", name, record, doc["lockVersion"])
        records[key] = record
    return records


def _key(where: str, text: str, record: Record, version: int) -> Key:
    name, _, served = text.partition("/") if version > 1 else (text, "", record.versions[0])
    if not accept_name(name) or served != record.versions[0]:
        raise InputError(f"{where}: want the key '<name>/<versions[0]>'")
    return (name, served)


def _record(where: str, item: Any) -> Record:
    if not isinstance(item, dict) or any(KEYS[key] not in item for key in REQUIRED):
        raise InputError(f"{where} lacks {[KEYS[k] for k in REQUIRED]}")
    values = {attr: item[key] for attr, key in KEYS.items() if key in item}
    values.setdefault("manifest_digest", None)
    values.setdefault("layer_digest", None)
    values.setdefault("size", 0)
    for attr, check, want in _CHECKS:
        if attr in values and not check(values[attr]):
            raise InputError(f"{where}.{KEYS[attr]}: want {want}, got {values[attr]!r}")
    return Record(**values)


def _is_reference(value: Any) -> bool:
    try:
        return isinstance(value, str) and bool(parse_reference(value))
    except ValueError:
        return False


def _version_list(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(v, str) and accept_version(v) for v in value)
    )


def _served_as(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and accept_name(k) and _version_list(v) for k, v in value.items()
    )


def _digest_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, str) and DIGEST.match(value) is not None)


_CHECKS = (
    ("reference", _is_reference, "an oci:// reference"),
    ("manifest_digest", _digest_or_none, "sha256:<64 hex> or null"),
    ("layer_digest", _digest_or_none, "sha256:<64 hex> or null"),
    ("wasm_sha256", lambda v: isinstance(v, str) and _HEX.match(v) is not None, "64 hex"),
    ("size", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a size"),
    ("versions", _version_list, "a non-empty list of versions"),
    ("served_as", _served_as, "an object of name: [versions]"),
    ("source", lambda v: v in SOURCES, f"one of {list(SOURCES)}"),
)


def write_lock(path: Path, records: dict[Key, Record]) -> None:
    plugins = {
        lock_key(key): {KEYS[attr]: getattr(records[key], attr) for attr in KEYS}
        for key in sorted(records)
    }
    doc = {"lockVersion": LOCK_VERSION, "plugins": plugins}
    write_bytes(path, (json.dumps(doc, indent=2) + "\n").encode())
