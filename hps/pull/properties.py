"""Parse the upstream ``plugins.properties`` and the manifest YAML into a plan.

The properties file says only ``name=oci://registry/repo:tag``; the manifest
adds what it cannot say: a pinned digest, the served version of a digest-only
reference, extra versions a Console may ask for, and names served from another
plugin's image. Everything wrong here is an :class:`InputError` (exit 2),
found before a single byte is downloaded.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from hps.guard import DIGEST, OCI_TAG, accept_name, accept_version
from hps.pull.errors import InputError

_REPO = re.compile(
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*\Z"
)
REGISTRY_HOST = re.compile(r"[A-Za-z0-9.-]+(?::[0-9]{1,5})?\Z")
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

    def moved(self, registry: str | None = None, namespace: str | None = None) -> Reference:
        """The same image in another registry and/or namespace (an internal mirror).

        Like the Console's image registry/namespace settings: the namespace is the
        repository's first path component (``plugins`` in ``plugins/mcp-server/all-in-one``).
        """
        repository = self.repository
        if namespace:
            head, slash, rest = repository.partition("/")
            repository = f"{namespace}/{rest if slash else head}"
        return replace(self, registry=registry or self.registry, repository=repository)


Key = tuple[str, str]
"""``(name, version)``: what the server serves at ``/plugins/<name>/<version>/plugin.wasm``."""


@dataclass(frozen=True)
class Entry:
    """One image to pull, the version it is served as, and extra versions linked to it."""

    name: str
    version: str
    ref: Reference
    pin: str | None = None  # manifest digest the registry must return
    aliases: tuple[str, ...] = ()  # extra versions, symlinked to ``version``
    source: str = ""  # where the entry came from, for messages
    sha256: str | None = None  # the module's hex SHA-256, when an input pins it

    @property
    def key(self) -> Key:
        return (self.name, self.version)

    @property
    def label(self) -> str:
        return f"{self.name}/{self.version}"


@dataclass(frozen=True)
class NameAlias:
    """A name served from another entry's module (``json-converter`` → ``jsonrpc-converter``).

    ``links`` maps each served version to the target's version holding the bytes.
    """

    name: str
    target: str
    links: tuple[tuple[str, str], ...]


@dataclass
class Plan:
    entries: dict[Key, Entry] = field(default_factory=dict)
    name_aliases: dict[str, NameAlias] = field(default_factory=dict)

    def add(self, entry: Entry) -> None:
        """Add one entry; the same ``(name, version)`` from two places must agree."""
        other = self.entries.get(entry.key)
        if other is None:
            self.entries[entry.key] = entry
        elif (other.ref, other.pin) != (entry.ref, entry.pin):
            raise InputError(
                f"{entry.source}: {entry.label} is {entry.ref},"
                f" but {other.source} serves it from {other.ref}"
            )

    def of(self, name: str) -> list[Entry]:
        return [entry for entry in self.entries.values() if entry.name == name]


def parse_reference(text: str) -> Reference:
    """``oci://host[:port]/repo[:tag][@sha256:…]``; the ``oci://`` prefix is optional."""
    rest = text.strip().removeprefix("oci://")
    rest, _, digest = rest.partition("@")
    if digest and not DIGEST.match(digest):
        raise ValueError(f"bad digest {digest!r} (want sha256:<64 hex>)")
    host, slash, path = rest.partition("/")
    if not slash or not REGISTRY_HOST.match(host):
        raise ValueError(f"{text!r} does not name a registry host (want oci://host/repo:tag)")
    repo, tag = path, None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        repo, _, tag = path.rpartition(":")
        if not OCI_TAG.match(tag):
            raise ValueError(f"bad tag {tag!r}")
    if not _REPO.match(repo):
        raise ValueError(f"bad repository {repo!r}")
    if tag is None and not digest:
        raise ValueError(f"{text!r} has neither a tag nor a digest")
    return Reference(host, repo, tag, digest or None)


def reference_entry(name: str, ref: Reference, source: str, sha256: str | None = None) -> Entry:
    """``name`` pulled from ``ref``, served at its tag, or at its digest when it has no tag
    (where upstream puts a digest-only line: ``<name>/sha256:<hex>/plugin.wasm``)."""
    return Entry(name, ref.tag or ref.digest or "", ref, pin=ref.digest, source=source,
                 sha256=sha256)


def expand(template: str, name: str, version: str) -> Reference:
    """The ``Reference`` a pull-through template names for one plugin version; ValueError
    when bad."""
    if version.startswith("sha256:"):  # upstream serves a digest-only line at its digest
        template = template.replace(":${version}", "@${version}")
    return parse_reference(template.replace("${name}", name).replace("${version}", version))


def parse_properties(text: str, source: str = "<properties>") -> list[Entry]:
    """The upstream format: ``name=reference`` lines, ``#`` comments, blank lines.

    The served version is the tag, or the digest for a digest-only line (where
    upstream puts it: ``<name>/sha256:<hex>/plugin.wasm``).
    """
    found: dict[Key, Entry] = {}
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
        try:
            ref = parse_reference(value)
        except ValueError as exc:
            raise InputError(f"{where}: {name}: {exc}") from None
        entry = reference_entry(name, ref, where)
        if entry.key in found:
            raise InputError(f"{where}: plugin {name!r} version {entry.version!r} listed twice")
        found[entry.key] = entry
    return list(found.values())


def read_text(path: str | Path, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML would let a repeated key silently win; a manifest must say each thing once."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # SafeLoader itself refuses an unhashable key
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _UniqueKeyLoader.construct_mapping
)


def load_manifest(text: str, source: str = "<manifest>") -> dict[str, dict[str, Any]]:
    """The manifest YAML: ``plugins: {name[/version]: {image, digest, version, aliases, …}}``."""
    try:
        doc = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
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


def split_key(key: str) -> tuple[str, str | None]:
    """A manifest key: ``name`` or ``name/version`` (when a name is served at several)."""
    name, slash, version = key.partition("/")
    return name, (version if slash else None)


def _check_manifest_item(source: str, key: Any, spec: Any) -> None:
    where = f"{source}: plugins.{key}"
    name, version = split_key(key) if isinstance(key, str) else (key, None)
    if not isinstance(name, str) or not accept_name(name):
        raise InputError(f"{source}: bad plugin name {key!r}")
    if version is not None and not accept_version(version):
        raise InputError(f"{source}: bad version in {key!r}")
    if spec is None:
        return
    if not isinstance(spec, dict):
        raise InputError(f"{where}: expected a mapping")
    unknown = set(spec) - MANIFEST_KEYS
    if unknown:
        raise InputError(
            f"{where}: unknown keys {sorted(map(str, unknown))}; allowed: {sorted(MANIFEST_KEYS)}"
        )
    for item in ("image", "digest", "version", "from"):
        if item in spec and not isinstance(spec[item], str):
            raise InputError(f"{where}.{item}: expected a string (quote versions like '1.0')")
    if "digest" in spec and not DIGEST.match(spec["digest"]):
        raise InputError(f"{where}.digest: want sha256:<64 hex>, got {spec['digest']!r}")
    if "version" in spec and not accept_version(spec["version"]):
        raise InputError(f"{where}.version: bad version {spec['version']!r}")
    for item in ("aliases", "versions"):
        if item in spec:
            _versions(where + "." + item, spec[item])
    if "from" in spec and ({"image", "digest", "version", "aliases"} & set(spec)):
        raise InputError(f"{where}: 'from' takes only 'versions'")
    if "from" in spec and (version is not None or not spec.get("versions")):
        raise InputError(
            f"{where}: 'from' needs 'versions' (the versions this name is served under)"
            " and a plain name as its key"
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


def build_plan(entries: Iterable[Entry], manifest: dict[str, dict[str, Any]]) -> Plan:
    """Merge the two sources; the manifest wins where both speak."""
    plan = Plan()
    for entry in entries:
        plan.add(entry)
    for key, spec in manifest.items():
        if "from" not in spec:
            _merge(plan, key, spec)
    for key, spec in manifest.items():
        if "from" in spec:
            plan.name_aliases[key] = _name_alias(plan, key, spec)
    _check_aliases(plan)
    return plan


def _merge(plan: Plan, key: str, spec: dict[str, Any]) -> None:
    where = f"manifest: plugins.{key}"
    name, selected = split_key(key)
    matching = [e for e in plan.of(name) if selected is None or e.version == selected]
    if len(matching) > 1:
        versions = ", ".join(sorted(e.version for e in matching))
        raise InputError(
            f"{where}: {name} is served at several versions ({versions});"
            f" key the item as '{name}/<version>'"
        )
    entry = matching[0] if matching else None
    if "image" in spec:
        try:
            ref = parse_reference(spec["image"])
        except ValueError as exc:
            raise InputError(f"{where}.image: {exc}") from None
        version = selected or ref.tag or ref.digest or ""
        entry = Entry(name, version, ref, pin=ref.digest, source=where)
    if entry is None:
        raise InputError(f"{where}: not in the properties and has no 'image'")
    pin = spec.get("digest", entry.pin)
    if entry.pin and pin != entry.pin:
        raise InputError(f"{where}.digest: {pin} contradicts the reference's {entry.pin}")
    version = spec.get("version", entry.version)
    aliases = _versions(where + ".aliases", spec.get("aliases", []))
    for old in matching:
        del plan.entries[old.key]
    merged = replace(
        entry,
        version=version,
        pin=pin,
        aliases=tuple(v for v in aliases if v != version),
        source=where,
    )
    if merged.key in plan.entries:
        raise InputError(
            f"{where}: {merged.label} is already pulled from {plan.entries[merged.key].ref}"
        )
    plan.entries[merged.key] = merged


def _name_alias(plan: Plan, name: str, spec: dict[str, Any]) -> NameAlias:
    where = f"manifest: plugins.{name}"
    target = spec["from"]
    if plan.of(name):
        raise InputError(f"{where}: pulled from an image and also 'from' {target}")
    candidates = {entry.version for entry in plan.of(target)}
    if not candidates:
        raise InputError(f"{where}.from: {target!r} is not a plugin being pulled")
    links = []
    for version in _versions(where + ".versions", spec["versions"]):
        if version in candidates:
            links.append((version, version))
        elif len(candidates) == 1:
            links.append((version, next(iter(candidates))))
        else:
            raise InputError(
                f"{where}.versions: {target} is pulled at {sorted(candidates)}, not {version!r};"
                " list only versions it has"
            )
    return NameAlias(name, target, tuple(links))


def _check_aliases(plan: Plan) -> None:
    """A version alias must not hide a pulled module of the same name and version."""
    for entry in plan.entries.values():
        for alias in entry.aliases:
            other = plan.entries.get((entry.name, alias))
            if other is not None:
                raise InputError(
                    f"{entry.source}: alias {entry.name}/{alias} is also pulled from {other.ref}"
                )
