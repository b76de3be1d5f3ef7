"""Sending one artifact: which variant, which validators, which span, and its bytes.

The shared model of an artifact response: the :class:`Policy`, the :class:`Variant`
and its headers, and :class:`Transfer` (open files, gzip variants, the choice between
them). Both writers use it: twisted.web's :mod:`hps.artifact` and :mod:`hps.fastpath`;
every HTTP decision is a pure function of :mod:`hps.negotiate`.

The body always matches the headers: the descriptor a response reads from was
opened and checked against the identity the catalog hashed (see
:mod:`hps.files`), and the response keeps it to the end, else the client gets a
retryable 503.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twisted.logger import Logger
from twisted.web import http

from hps.catalog import Artifact, Catalog, Identity
from hps.files import FileTable, Replaced, Source
from hps.negotiate import (
    GZIP,
    Accept,
    variant_etag,
    variant_fields,
)
from hps.variants import GzipFile, GzipVariants

WASM_TYPE = b"application/wasm"
GZIP_WAIT = 2.0
"""Seconds a gzip-accepting request waits for its module's variant being prepared (a
sibling check takes milliseconds, compressing an 8 MB module ~0.3 s)."""


@dataclass(frozen=True)
class Policy:
    """How artifacts are served; derived once from the config."""

    cache_control: bytes
    gzip: bool

    @classmethod
    def from_config(cls, max_age: int, immutable: bool, gzip: bool) -> Policy:
        value = f"public, max-age={max_age}" + (", immutable" if immutable else "")
        return cls(value.encode(), gzip)


@dataclass(frozen=True)
class Variant:
    """One representation of an artifact: the module itself, or its gzip file."""

    etag: bytes
    encoding: bytes | None
    size: int
    gzip: GzipFile | None = None


def identity_variant(artifact: Artifact) -> Variant:
    return Variant(artifact.etag.encode(), None, artifact.size)


def variant_headers(artifact: Artifact, variant: Variant,
                    policy: Policy) -> list[tuple[bytes, bytes]]:
    """Headers shared by 200, 206, 304 and 416 of one variant: the one builder both paths
    use. They depend on the artifact's whole identity (two copies of the same bytes
    differ in Last-Modified), never on the ETag alone."""
    return [
        (b"Content-Type", WASM_TYPE),
        (b"Last-Modified", http.datetimeToString(int(artifact.mtime))),
        (b"Cache-Control", policy.cache_control),
        (b"Accept-Ranges", b"bytes"),
        # With gzip on, any module may get a variant (being made, or remade): negotiable.
        *variant_fields(variant.etag, variant.encoding, policy.gzip),
    ]


class Transfer:
    """What every artifact response needs: the policy, the open files, the gzip variants."""

    log = Logger()

    def __init__(self, policy: Policy, files: FileTable | None = None,
                 variants: GzipVariants | None = None) -> None:
        self.policy = policy
        self.files = files or FileTable()
        self.variants = variants
        self.unreadable: set[tuple[str, Identity]] = set()
        self.chosen: dict[int, tuple[object, Variant]] = {}
        self.served: Callable[[Artifact], None] = lambda artifact: None
        """Told of every artifact a response is about to send (pull-through's eviction order)."""

    def on_swap(self, old: Catalog, new: Catalog) -> None:
        """Close (once no response holds them) the files no artifact of ``new`` names."""
        live = {(a.path, a.identity) for a in new.artifacts.values()}
        self.files.forget_except(live | self.variant_files())
        self.unreadable &= live  # one line per unreadable file, across rescans
        self.chosen.clear()

    def variant_files(self) -> set[tuple[str, Identity]]:
        if self.variants is None:
            return set()
        return {(f.path, f.identity) for f in self.variants.ready.values()}

    def gzip_pending(self, artifact: Artifact, accept: Accept) -> bool:
        """Would this client get gzip once the module's variant, being prepared, is ready?"""
        return (self.policy.gzip and self.variants is not None
                and accept.wants_gzip() and self.variants.preparing(artifact))

    def choose(self, artifact: Artifact, accept: Accept) -> Variant:
        """The variant ``accept`` chooses among those ready: gzip when enabled and made."""
        found = None
        # The chooser is asked first: most requests of a kind (a gateway's) never look further.
        if (self.policy.gzip and self.variants is not None
                and accept.wants_gzip()):
            found = self.variants.get(artifact)
        # Built once per artifact and variant file: every download of a module asks again.
        origin: object = artifact if found is None else found
        memo = self.chosen.get(id(origin))
        if memo is not None and memo[0] is origin:  # it holds origin: the id is not reused
            return memo[1]
        if found is None:
            variant = identity_variant(artifact)
        else:
            etag = variant_etag(artifact.etag.encode(), GZIP)
            variant = Variant(etag, GZIP, found.size, found)
        self.chosen[id(origin)] = (origin, variant)
        return variant

    def open(self, artifact: Artifact, accept: Accept,
             quiet: bool = False) -> tuple[Variant, Source] | None:
        """The variant to send and a verified source of its bytes; None: answer 503
        (logged, unless ``quiet``: the fast path declines and twisted.web asks again)."""
        self.served(artifact)
        variant = self.choose(artifact, accept)
        found = variant.gzip
        if found is not None:
            try:
                return variant, found.source or self.files.get(found.path, found.identity)
            except OSError:  # Replaced included: our variant file changed; make it again
                assert self.variants is not None
                self.variants.drop(artifact)
                variant = identity_variant(artifact)
        try:
            return variant, self.files.get(artifact.path, artifact.identity)
        except Replaced:
            if not quiet:
                self.log.info("{path} changed since the last scan; asking the client to retry",
                              path=artifact.path)
        except OSError as err:
            key = (artifact.path, artifact.identity)
            if not quiet and key not in self.unreadable:  # one line per file, not per request
                self.unreadable.add(key)
                self.log.warn("{path} is unreadable ({why}); answering 503 until it is "
                              "readable or gone", path=artifact.path, why=err.strerror)
        return None
