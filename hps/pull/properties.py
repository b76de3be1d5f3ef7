"""Parse the upstream ``plugins.properties`` and the manifest YAML into a plan.

The properties file says only ``name=oci://registry/repo:tag``; the manifest
adds what it cannot say: a pinned digest, the served version of a digest-only
reference, extra versions a Console may ask for, and names served from another
plugin's image. Everything wrong here is an :class:`InputError` (exit 2),
found before a single byte is downloaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from hps.guard import accept_name, accept_version
from hps.pull.errors import InputError

DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
_REPO = re.compile(
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*\Z"
)
_HOST = re.compile(r"[A-Za-z0-9.-]+(?::[0-9]{1,5})?\Z")
MANIFEST_KEYS = frozenset({"image", "digest", "version", "aliases", "from", "versions"})


@dataclass(frozen=True)
class Reference:
    """``registry/repository`` with a tag, a digest, or both."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        text = f"oci://{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


@dataclass(frozen=True)
class Entry:
    """One image to pull, and the versions its module is served under."""

    name: str
    ref: Reference
    version: str | None = None  # None: take it from the manifest's annotations
    pin: str | None = None  # manifest digest the registry must return
    aliases: tuple[str, ...] = ()  # extra versions, symlinked to ``version``


@dataclass(frozen=True)
class NameAlias:
    """A name served from another entry's module (``json-converter`` → ``jsonrpc-converter``)."""

    name: str
    target: str
    versions: tuple[str, ...]


@dataclass
class Plan:
    entries: dict[str, Entry] = field(default_factory=dict)
    name_aliases: dict[str, NameAlias] = field(default_factory=dict)


def parse_reference(text: str) -> Reference:
    """``oci://host[:port]/repo[:tag][@sha256:…]``; the ``oci://`` prefix is optional."""
    rest = text.strip().removeprefix("oci://")
    rest, _, digest = rest.partition("@")
    if digest and not DIGEST.match(digest):
        raise ValueError(f"bad digest {digest!r} (want sha256:<64 hex>)")
    host, slash, path = rest.partition("/")
    if not slash or not _HOST.match(host):
        raise ValueError(f"{text!r} does not name a registry host (want oci://host/repo:tag)")
    repo, tag = path, None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        repo, _, tag = path.rpartition(":")
        if not _TAG.match(tag):
            raise ValueError(f"bad tag {tag!r}")
    if not _REPO.match(repo):
        raise ValueError(f"bad repository {repo!r}")
    if tag is None and not digest:
        raise ValueError(f"{text!r} has neither a tag nor a digest")
    return Reference(host, repo, tag, digest or None)


def parse_properties(text: str, source: str = "<properties>") -> dict[str, Reference]:
    """The upstream format: ``name=reference`` lines, ``#`` comments, blank lines."""
    found: dict[str, Reference] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", "!")):
            continue
        where = f"{source}:{number}"
        name, eq, value = line.partition("=")
        name = name.strip()
        if not eq or not value.strip():
            raise InputError(f"{where}: expected name=oci://registry/repo:tag, got {raw.strip()!r}")
        if not accept_name(name):
            raise InputError(f"{where}: bad plugin name {name!r}")
        if name in found:
            raise InputError(f"{where}: plugin {name!r} listed twice")
        try:
            found[name] = parse_reference(value)
        except ValueError as exc:
            raise InputError(f"{where}: {name}: {exc}") from None
    return found


def read_text(path: str | Path, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None


def load_manifest(text: str, source: str = "<manifest>") -> dict[str, dict[str, Any]]:
    """The manifest YAML: ``plugins: {name: {image, digest, version, aliases, from, versions}}``."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise InputError(
            f"{where}: malformed YAML: {getattr(exc, 'problem', None) or exc}"
        ) from None
    if doc is None:
        return {}
    if not isinstance(doc, dict) or set(doc) - {"plugins"}:
        raise InputError(f"{source}: expected a mapping with one key, 'plugins'")
    plugins = doc.get("plugins") or {}
    if not isinstance(plugins, dict):
        raise InputError(f"{source}: 'plugins' must be a mapping of plugin name to settings")
    for name, spec in plugins.items():
        _check_manifest_item(source, name, spec)
    return {str(name): spec or {} for name, spec in plugins.items()}


def _check_manifest_item(source: str, name: Any, spec: Any) -> None:
    where = f"{source}: plugins.{name}"
    if not isinstance(name, str) or not accept_name(name):
        raise InputError(f"{source}: bad plugin name {name!r}")
    if spec is None:
        return
    if not isinstance(spec, dict):
        raise InputError(f"{where}: expected a mapping")
    unknown = set(spec) - MANIFEST_KEYS
    if unknown:
        raise InputError(
            f"{where}: unknown keys {sorted(map(str, unknown))}; allowed: {sorted(MANIFEST_KEYS)}"
        )
    for key in ("image", "digest", "version", "from"):
        if key in spec and not isinstance(spec[key], str):
            raise InputError(f"{where}.{key}: expected a string (quote versions like '1.0')")
    if "digest" in spec and not DIGEST.match(spec["digest"]):
        raise InputError(f"{where}.digest: want sha256:<64 hex>, got {spec['digest']!r}")
    for key in ("version",):
        if key in spec and not accept_version(spec[key]):
            raise InputError(f"{where}.{key}: bad version {spec[key]!r}")
    for key in ("aliases", "versions"):
        if key in spec:
            _versions(where + "." + key, spec[key])
    if "from" in spec and ({"image", "digest", "version", "aliases"} & set(spec)):
        raise InputError(f"{where}: 'from' takes only 'versions'")
    if "from" in spec and not spec.get("versions"):
        raise InputError(
            f"{where}: 'from' needs 'versions' (the versions this name is served under)"
        )
    if "versions" in spec and "from" not in spec:
        raise InputError(f"{where}: 'versions' goes with 'from'; use 'aliases' for extra versions")


def _versions(where: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list):
        raise InputError(f"{where}: expected a list of versions, e.g. ['1.0.0']")
    for item in value:
        if not isinstance(item, str) or not accept_version(item):
            raise InputError(f"{where}: bad version {item!r} (quote versions like '1.0')")
    return tuple(dict.fromkeys(value))


def build_plan(properties: dict[str, Reference], manifest: dict[str, dict[str, Any]]) -> Plan:
    """Merge the two sources; the manifest wins where both speak."""
    plan = Plan()
    for name, ref in properties.items():
        plan.entries[name] = Entry(name, ref, version=_tag_version(ref), pin=ref.digest)
    for name, spec in manifest.items():
        if "from" in spec:
            plan.name_aliases[name] = NameAlias(
                name, spec["from"], _versions(name, spec["versions"])
            )
        else:
            plan.entries[name] = _merge(name, plan.entries.get(name), spec)
    _check_plan(plan)
    return plan


def _tag_version(ref: Reference) -> str | None:
    return ref.tag if ref.tag and accept_version(ref.tag) else None


def _merge(name: str, entry: Entry | None, spec: dict[str, Any]) -> Entry:
    where = f"manifest: plugins.{name}"
    if "image" in spec:
        try:
            ref = parse_reference(spec["image"])
        except ValueError as exc:
            raise InputError(f"{where}.image: {exc}") from None
        entry = Entry(name, ref, version=_tag_version(ref), pin=ref.digest)
    if entry is None:
        raise InputError(f"{where}: not in the properties and has no 'image'")
    pin = spec.get("digest", entry.pin)
    if entry.pin and pin != entry.pin:
        raise InputError(f"{where}.digest: {pin} contradicts the reference's {entry.pin}")
    version = spec.get("version", entry.version)
    aliases = _versions(where + ".aliases", spec.get("aliases", []))
    return replace(
        entry, pin=pin, version=version, aliases=tuple(v for v in aliases if v != version)
    )


def _check_plan(plan: Plan) -> None:
    for entry in plan.entries.values():
        if entry.version is None and entry.ref.tag:
            raise InputError(
                f"{entry.name}: tag {entry.ref.tag!r} is not a version;"
                f" set plugins.{entry.name}.version in the manifest"
            )
    for alias in plan.name_aliases.values():
        if alias.name in plan.entries:
            raise InputError(
                f"manifest: plugins.{alias.name}: pulled from an image"
                f" and also 'from' {alias.target}"
            )
        if alias.target not in plan.entries:
            raise InputError(
                f"manifest: plugins.{alias.name}.from:"
                f" {alias.target!r} is not a plugin being pulled"
            )
