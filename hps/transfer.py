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
    Variant,
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
    """How artifacts are cached by clients; derived once from the config."""

    cache_control: bytes

    @classmethod
    def from_config(cls, max_age: int, immutable: bool) -> Policy:
        value = f"public, max-age={max_age}" + (", immutable" if immutable else "")
        return cls(value.encode())


ArtifactVariant = Variant[GzipFile | None]
"""The module itself (``body`` None) or its gzip file."""


class Transfer:
    """What every artifact response needs: the policy, the open files, the gzip variants."""

    log = Logger()

    def __init__(self, policy: Policy, files: FileTable | None = None,
                 variants: GzipVariants | None = None) -> None:
        self.policy = policy
        self.files = files or FileTable()
        self.variants = variants
        """The gzip variants: None when gzip is off (the ``gzip`` knob's one home)."""
        self.unreadable: set[tuple[str, Identity]] = set()
        self.chosen: dict[tuple[int, int], tuple[Artifact, object, ArtifactVariant]] = {}
        """The one memo of what a response of an artifact sends: per (artifact, file)."""
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
        return (self.variants is not None and accept.wants_gzip()
                and self.variants.preparing(artifact))

    def choose(self, artifact: Artifact, accept: Accept) -> ArtifactVariant:
        """The variant ``accept`` chooses among those ready: gzip when on and made."""
        found = None
        # The chooser is asked first: most requests of a kind (a gateway's) never look further.
        if self.variants is not None and accept.wants_gzip():
            found = self.variants.get(artifact)
        return self.variant(artifact, found)

    def variant(self, artifact: Artifact, found: GzipFile | None) -> ArtifactVariant:
        """Built once per artifact and file: every download of a module asks again. Keyed
        by both, since copies of the same bytes share a gzip file but not Last-Modified."""
        key = (id(artifact), id(found))
        memo = self.chosen.get(key)
        if memo is not None and memo[0] is artifact and memo[1] is found:  # ids not reused
            return memo[2]
        etag, encoding, size = artifact.etag.encode(), None, artifact.size
        if found is not None:
            etag, encoding, size = variant_etag(etag, GZIP), GZIP, found.size
        fields = (
            (b"Content-Type", WASM_TYPE),
            (b"Last-Modified", http.datetimeToString(int(artifact.mtime))),
            (b"Cache-Control", self.policy.cache_control),
            (b"Accept-Ranges", b"bytes"),
            # With gzip on, any module may get a variant (being made, or remade): negotiable.
            *variant_fields(etag, encoding, self.variants is not None),
        )
        variant = Variant(etag, encoding, size, fields, found)
        self.chosen[key] = (artifact, found, variant)
        return variant

    def open(self, artifact: Artifact, accept: Accept,
             quiet: bool = False) -> tuple[ArtifactVariant, Source] | None:
        """The variant to send and a verified source of its bytes; None: answer 503
        (logged, unless ``quiet``: the fast path declines and twisted.web asks again)."""
        self.served(artifact)
        variant = self.choose(artifact, accept)
        found = variant.body
        if found is not None:
            try:
                return variant, found.source or self.files.get(found.path, found.identity)
            except OSError:  # Replaced included: our variant file changed; make it again
                assert self.variants is not None
                self.variants.drop(artifact)
                variant = self.variant(artifact, None)
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
