"""Fetch one module by reference into one path, verified and atomic.

The unit of work shared by ``hps pull`` (one call per ``(name, version)``) and
anything else that needs one module from a registry (a pull-through server):
same authentication, digest, size and Wasm checks, same atomic write with a
``.gz`` sibling. On any failure the target is left as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from hps.pull.auth import Credentials, from_docker_config, from_environment
from hps.pull.errors import DigestMismatch, PullError
from hps.pull.gate import Gate
from hps.pull.properties import Reference, parse_reference
from hps.pull.registry import Client
from hps.pull.tree import make_dirs, refuse_change, write_module_file


@dataclass(frozen=True)
class Options:
    """How to talk to registries."""

    plain_http: bool = False
    credentials: Credentials | None = None  # None: HPS_REGISTRY_* env, else ~/.docker/config.json
    timeout: float = 30.0
    retries: int = 3
    registry: str | None = None  # rewrite every reference to this HOST[:PORT] (a mirror)
    namespace: str | None = None  # ... and this first repository component
    on_bytes: Callable[[int], None] | None = None
    scratch: str | None = None  # where unverified blobs are staged; None: the system temp dir
    gate: Gate | None = None  # shut on Ctrl-C: a download that ends later writes nothing


@dataclass(frozen=True)
class Fetched:
    """What was written, and the digests that proved it."""

    path: Path
    size: int
    sha256: str  # hex, of the module bytes: a WasmPlugin's ``sha256``
    manifest_digest: str
    layer_digest: str


def client_for(ref: Reference, options: Options) -> Client:
    return Client(
        ref.registry,
        ref.repository,
        plain_http=options.plain_http,
        credentials=options.credentials or from_environment() or from_docker_config(ref.registry),
        timeout=options.timeout,
        retries=options.retries,
        on_bytes=options.on_bytes,
        scratch=options.scratch,
    )


def fetch_to(
    reference: Reference | str,
    path: Path,
    options: Options = Options(),
    *,
    pin: str | None = None,
    layer_pin: str | None = None,
    expect_sha256: str | None = None,
    root: Path | None = None,
    replace: bool = True,
) -> Fetched:
    """Resolve ``reference`` (tag and/or digest), verify it, write ``path`` and ``path.gz``.

    ``pin`` is the manifest digest the registry must return (default: the
    reference's own digest), ``layer_pin`` the layer digest and ``expect_sha256``
    the module's hex SHA-256 that must match before anything is written. Raises
    :class:`~hps.pull.errors.PullError` (one line) on any failure, ``OSError`` if
    ``path`` cannot be written. Directories are made only once the module is
    verified; under ``root`` (a served tree) a directory symlink on the way is
    replaced by a real directory instead of written through. Without ``replace``, a
    module already at ``path`` with other bytes is left as it is
    (:class:`~hps.pull.errors.Changed`).
    """
    if isinstance(reference, str):
        try:
            reference = parse_reference(reference)
        except ValueError as exc:
            raise PullError(str(exc)) from None
    ref = reference.moved(options.registry, options.namespace)
    client = client_for(ref, options)
    module = client.fetch_module(
        ref.tag or ref.digest or "", pin=pin or ref.digest, layer_pin=layer_pin
    )
    with module.file:
        if expect_sha256 and module.sha256 != expect_sha256:
            raise DigestMismatch(
                f"module sha256 {module.sha256} differs from the expected {expect_sha256}"
            )
        if not replace:
            refuse_change(path, module.sha256)
        with options.gate.through(path) if options.gate else nullcontext():
            make_dirs(root or path.parent, path.parent)
            write_module_file(path, module.file)
    return Fetched(path, module.size, module.sha256, module.manifest_digest, module.layer_digest)
