"""The JSON lock: what each plugin resolved to, so a later ``--locked`` pull is exact."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hps.pull.errors import InputError
from hps.pull.tree import write_bytes

LOCK_VERSION = 1


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


def read_lock(path: Path) -> dict[str, Record]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read lock {str(path)!r}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise InputError(f"lock {str(path)!r} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("lockVersion") != LOCK_VERSION:
        raise InputError(f"lock {str(path)!r}: want an object with lockVersion {LOCK_VERSION}")
    plugins = doc.get("plugins")
    if not isinstance(plugins, dict):
        raise InputError(f"lock {str(path)!r}: 'plugins' must be an object")
    return {name: _record(path, name, item) for name, item in plugins.items()}


def _record(path: Path, name: str, item: Any) -> Record:
    if not isinstance(item, dict) or any(KEYS[key] not in item for key in REQUIRED):
        raise InputError(f"lock {str(path)!r}: plugins.{name} lacks {[KEYS[k] for k in REQUIRED]}")
    values = {attr: item[key] for attr, key in KEYS.items() if key in item}
    values.setdefault("manifest_digest", None)
    values.setdefault("layer_digest", None)
    values.setdefault("size", 0)
    return Record(**values)


def write_lock(path: Path, records: dict[str, Record]) -> None:
    plugins = {
        name: {KEYS[attr]: getattr(records[name], attr) for attr in KEYS}
        for name in sorted(records)
    }
    doc = {"lockVersion": LOCK_VERSION, "plugins": plugins}
    write_bytes(path, (json.dumps(doc, indent=2) + "\n").encode())
