"""Settings: defaults, a YAML file and command-line flags, merged and checked.

Every knob is one field of :class:`Config`; the YAML keys, the ``twistd hps``
flags and their help all derive from that one table, so a knob cannot exist in
one place and not the other. Any problem ends in :class:`ConfigError`, whose
message is one line meant for a person.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import yaml
from twisted.python import usage

from hps.pull.properties import expand


class ConfigError(Exception):
    """Bad settings; the message is a single line for the operator."""


def knob(default: Any, help: str, check: Callable[[Any], str | None] | None = None) -> Any:
    """Declare one setting: its default, its help text and an optional check."""
    return field(default=default, metadata={"help": help, "check": check})


def non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be zero or more"


def positive(value: float) -> str | None:
    return None if value > 0 else "must be more than zero"


def memory_size(value: str) -> str | None:
    from hps.memory import size_problem  # the one place that reads sizes

    return size_problem(value)


def upstream_template(value: str) -> str | None:
    """An ``oci://`` reference once ``${name}`` and ``${version}`` are filled in."""
    missing = [part for part in ("${name}", "${version}") if part not in value]
    if missing:  # without ${version}, every asked-for version would get the same module
        return f"{value!r} has no {missing[0]}"
    try:
        expand(value, "plugin", "1.0.0")
    except ValueError as err:
        return str(err)
    return None


def each(rule: Callable[[str], str | None]) -> Callable[[tuple[str, ...]], str | None]:
    """Check every item of a list knob with ``rule``; the first problem wins."""
    return lambda values: next((p for p in map(rule, values) if p), None)


def one_of(*choices: str) -> Callable[[str], str | None]:
    return lambda value: None if value in choices else f"must be one of {', '.join(choices)}"


@dataclass(frozen=True)
class Config:
    """The server's settings. Field name = YAML key; ``_`` → ``-`` = flag."""

    root: str = knob("plugins", "directory holding <name>/<version>/plugin.wasm")
    listen: tuple[str, ...] = knob(
        ("tcp:8080",), "Twisted endpoint (repeatable), e.g. tcp:8080:interface=127.0.0.1"
    )
    send_timeout: float = knob(30.0, "seconds a response may make no progress before it is cut",
                               positive)
    idle_timeout: float = knob(60.0, "seconds an idle keep-alive connection is kept", positive)
    header_timeout: float = knob(10.0, "seconds a client has to send a complete request head",
                                 positive)
    drain_delay: float = knob(5.0, "seconds between SIGTERM (readyz 503) and closing the ports",
                              non_negative)
    drain_timeout: float = knob(25.0, "seconds downloads in flight may take to finish on SIGTERM",
                                non_negative)
    max_connections: int = knob(4096, "open connections above which new ones get 503", positive)
    memory_limit: str = knob("auto", "bytes the process may hold (256Mi, 1G, ...; 0 or none: no "
                             "bound); auto reads the memory cgroup's limit; new connections "
                             "beyond what fits get 503 + Retry-After", memory_size)
    access_log: str = knob("combined", "access log format: combined, json or off", one_of(
        "combined", "json", "off"))
    trust_forwarded: bool = knob(False, "log the client from X-Forwarded-For (behind a proxy)")
    rescan_interval: float = knob(30.0, "seconds between full rescans of the tree (inotify is a "
                                  "hint, this is the fallback)", positive)
    cache_max_age: int = knob(300, "seconds clients and caches may reuse an artifact "
                              "(Cache-Control max-age)", non_negative)
    immutable: bool = knob(False, "declare that a name/version never changes its bytes "
                           "(Cache-Control immutable)")
    gzip: bool = knob(True, "serve a precompressed gzip variant (of modules and listings) to "
                      "clients that accept it")
    cache_dir: str = knob("/tmp/hps-cache", "writable directory for work the server keeps across "
                          "restarts (gzip variants, pulled-through modules, the digests each "
                          "version first served)")
    upstream: tuple[str, ...] = knob(
        (), "OCI reference template for a module the tree lacks (repeatable, tried in order), "
        "e.g. oci://registry.example/plugins/${name}:${version}", each(upstream_template))
    upstream_allow: tuple[str, ...] = knob((), "shell-style pattern of plugin names that may be "
                                           "pulled through (repeatable; none: pull-through off)")
    upstream_plain_http: bool = knob(False, "talk HTTP, not HTTPS, to the upstream registries")
    upstream_wait: float = knob(10.0, "seconds a request waits for a pull-through fetch before "
                                "it gets 503 + Retry-After", positive)

    @property
    def pull_through(self) -> bool:
        """Pull-through is on: a template to fetch from and names allowed to be fetched."""
        return bool(self.upstream and self.upstream_allow)

    def describe(self) -> str:
        return ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
REMOVED = {
    "memory_budget": "modules are sent from disk now (there is no body cache); delete it",
}
"""Keys earlier releases knew: a config carried over names what to do, not just "unknown"."""
LIST = "tuple[str, ...]"
"""The type of repeatable knobs: a YAML list, a flag given once per item."""
_BOOLS = {"true": True, "yes": True, "on": True, "1": True,
          "false": False, "no": False, "off": False, "0": False}


def flag_name(key: str) -> str:
    return key.replace("_", "-")


def _coerce(key: str, value: Any, from_text: bool) -> Any:
    """Turn a YAML value (or flag text) into the field's type, or say why not."""
    kind = FIELDS[key].type
    where = f"--{flag_name(key)}" if from_text else f"'{key}'"
    if kind == LIST:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
            raise ConfigError(f"{where} must be a list of non-empty strings")
        return tuple(items)
    if kind == "bool":
        if from_text and isinstance(value, str) and value.lower() in _BOOLS:
            return _BOOLS[value.lower()]
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, not {value!r}")
    if kind in ("int", "float"):
        number = int if kind == "int" else float
        if from_text:
            try:
                return number(value)
            except ValueError:
                raise ConfigError(f"{where} must be a number, not {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, not {value!r}")
        if kind == "int" and not isinstance(value, int):
            raise ConfigError(f"{where} must be a whole number, not {value!r}")
        return number(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # a size written as a YAML number (memory_limit: 268435456)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where} must be a non-empty string, not {value!r}")
    return value


def read_yaml(path: str) -> dict[str, Any]:
    """Read a config file into a mapping of known keys, or raise ConfigError."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise ConfigError(f"config {path} is not valid YAML{line}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of settings")
    unknown = sorted(str(k) for k in data if k not in FIELDS)
    for key in unknown:
        if key in REMOVED:
            raise ConfigError(f"{key!r} in {path} was removed: {REMOVED[key]}")
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in {path} (known: {', '.join(FIELDS)})")
    return {key: _coerce(key, value, from_text=False) for key, value in data.items()}


def build(path: str | None, flags: Mapping[str, Any]) -> Config:
    """Defaults, then the file, then flags; then every value checked."""
    values = read_yaml(path) if path else {}
    values.update({k: _coerce(k, v, from_text=True) for k, v in flags.items()})
    config = Config(**values)
    check(config)
    return config


def check(config: Config) -> None:
    for key, spec in FIELDS.items():
        rule = spec.metadata["check"]
        problem = rule(getattr(config, key)) if rule else None
        if problem:
            raise ConfigError(f"{flag_name(key)}: {problem}")
    if config.upstream_allow and not config.upstream:
        raise ConfigError("upstream-allow: needs at least one --upstream template")
    if config.pull_through and config.upstream_wait >= config.send_timeout:
        raise ConfigError("upstream-wait: must be less than send-timeout, which would cut the "
                          "waiting request first")
    if not os.path.isdir(config.root):
        raise ConfigError(f"root {config.root!r} is not a directory")
    if not os.access(config.root, os.R_OK | os.X_OK):
        raise ConfigError(f"root {config.root!r} is not readable")
    tree = cache_tree(config.cache_dir)
    if config.pull_through and nested(tree, config.root):
        raise ConfigError(f"cache-dir: the pull-through cache tree {tree!r} and root "
                          f"{config.root!r} must not nest (its bound on modules would not hold)")


def cache_tree(cache_dir: str) -> str:
    """Where pulled-through modules live: ``<cache_dir>/plugins`` (gzip variants are beside)."""
    return os.path.join(cache_dir, "plugins")


def nested(one: str, other: str) -> bool:
    """Are the two directories the same, or is either inside the other (symlinks resolved)?"""
    a, b = (os.path.join(os.path.realpath(path), "") for path in (one, other))
    return a.startswith(b) or b.startswith(a)


class Options(usage.Options):
    """``twistd hps`` flags, generated from :class:`Config`."""

    optParameters: ClassVar[list[list[Any]]] = [
        ["config", "c", None, "YAML file with the same settings as the flags"]
    ] + [
        [flag_name(k), None, None, f"{f.metadata['help']} [default: {f.default!r}]"]
        for k, f in FIELDS.items()
        if f.type not in ("bool", LIST)
    ]
    optFlags: ClassVar[list[list[Any]]] = [
        [flag_name(k), None, f.metadata["help"]]
        if not f.default
        else [f"no-{flag_name(k)}", None, f"turn off (on by default): {f.metadata['help']}"]
        for k, f in FIELDS.items()
        if f.type == "bool"
    ]

    def __init__(self) -> None:
        super().__init__()
        self.lists: dict[str, list[str]] = {}

    def flags_given(self) -> dict[str, Any]:
        """Only what the command line set, so the file's values survive."""
        given: dict[str, Any] = dict(self.lists)
        for key, spec in FIELDS.items():
            if spec.type == "bool":
                name = flag_name(key) if not spec.default else f"no-{flag_name(key)}"
                if self.get(name):
                    given[key] = not spec.default
            elif self.get(flag_name(key)) is not None:
                given[key] = self[flag_name(key)]
        return given

    def postOptions(self) -> None:
        try:
            self.config = build(self["config"], self.flags_given())
        except ConfigError as err:
            fail(err)


def _list_option(key: str, spec: dataclasses.Field) -> Callable[[Options, str], None]:
    """The ``opt_<key>`` handler of a repeatable flag: each use adds one item."""
    def option(self: Options, value: str) -> None:
        self.lists.setdefault(key, []).append(value)
    option.__doc__ = f"{spec.metadata['help']} [default: {list(spec.default)!r}]"
    return option


# usage.Options finds repeatable flags as ``opt_*`` methods; one per list knob, from the table.
for _key, _spec in FIELDS.items():
    if _spec.type == LIST:
        setattr(Options, f"opt_{_key}", _list_option(_key, _spec))


def fail(err: Exception) -> None:
    """End the process with one line on stderr: operators get no traceback."""
    # twistd may have redirected sys.stderr into its log by now; operators read the real one.
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"hps: {err}\n")
    stream.flush()
    raise SystemExit(2)
