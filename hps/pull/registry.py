"""A small OCI distribution v2 client: fetch one image's Wasm module, verified.

Plain ``urllib`` on a worker thread: zero dependencies, blocking code that is
easy to follow, and streaming to temporary files so a 256 MiB module never
sits in memory. Every manifest and blob is hashed and compared with the digest
that names it; the caller gets an anonymous temporary file holding a module
that starts with ``\\0asm``.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import json
import os
import re
import socket
import ssl
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from hps.catalog import MIN_MODULE
from hps.guard import is_wasm_module
from hps.pull.auth import Credentials
from hps.pull.errors import AuthNeeded, DigestMismatch, NotFound, NotWasm, PullError, Unreachable

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"
TAR_LAYERS = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
    }
)
MAX_MODULE = 256 * 1024 * 1024
MAX_MANIFEST = 4 * 1024 * 1024
CHUNK = 1024 * 1024
# Same rule as the gateway's fetcher: 5xx is worth another try, except these.
NOT_RETRIED = frozenset({501, 505, 511})
TRANSIENT = (
    urllib.error.URLError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
    socket.timeout,
)


@dataclass
class Module:
    """A verified module in an anonymous temporary file, positioned at 0."""

    file: IO[bytes]
    size: int
    sha256: str
    manifest_digest: str
    layer_digest: str


class _Retry(Exception):
    """A transient failure: 5xx, a dropped connection, a timeout."""


class _KeepAuthOnSameHost(urllib.request.HTTPRedirectHandler):
    """Registries redirect blobs to storage (S3, CDN) that must not see our token."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        auth = req.unredirected_hdrs.get("Authorization")
        if (
            new is not None
            and auth
            and urllib.parse.urlsplit(newurl).netloc == urllib.parse.urlsplit(req.full_url).netloc
        ):
            new.add_unredirected_header("Authorization", auth)
        return new


class Client:
    """One registry and repository; not shared between threads."""

    pause = staticmethod(time.sleep)
    """How the backoff between attempts waits: tests record the waits instead of sleeping."""

    def __init__(
        self,
        registry: str,
        repository: str,
        *,
        plain_http: bool = False,
        credentials: Credentials | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        on_bytes: Callable[[int], None] | None = None,
        scratch: str | None = None,
    ) -> None:
        self.registry = registry
        self.host, self.repository = _docker_hub(registry, repository)
        self.base = f"{'http' if plain_http else 'https'}://{self.host}/v2/{self.repository}"
        self.credentials = credentials
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.on_bytes = on_bytes or (lambda n: None)
        # Where unverified blobs are staged (anonymous files): the system temp dir unless
        # the caller has a bigger, writable place (a pod's /tmp is a few MiB of memory).
        self.scratch = scratch
        self.authorization: str | None = None
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=_tls_context()), _KeepAuthOnSameHost()
        )

    # -- the one public operation -------------------------------------------------

    def fetch_module(
        self, reference: str, *, pin: str | None = None, layer_pin: str | None = None
    ) -> Module:
        """Resolve ``reference`` (tag or digest) to a verified Wasm module."""
        manifest, digest = self.manifest(reference, pin=pin)
        if _media_type(manifest) in INDEX_TYPES:
            child = pick_platform(manifest, f"{self.registry}/{self.repository}")
            manifest, _ = self.manifest(child["digest"], pin=child["digest"])
        layer = pick_layer(manifest)
        if layer_pin and layer["digest"] != layer_pin:
            raise DigestMismatch(f"layer is {layer['digest']}, the lock says {layer_pin}")
        blob = self.blob(layer["digest"], layer.get("size"))
        try:
            module, size, sha = extract_module(blob, layer["mediaType"], self.scratch)
        except BaseException:
            blob.close()
            raise
        if module is not blob:
            blob.close()
        return Module(module, size, sha, digest, layer["digest"])

    # -- manifests and blobs --------------------------------------------------------

    def manifest(self, reference: str, *, pin: str | None = None) -> tuple[dict[str, Any], str]:
        accept = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))
        what = f"manifest {reference}" if reference.startswith("sha256:") else f"tag {reference}"

        def attempt() -> tuple[bytes, str]:
            with self._open(f"{self.base}/manifests/{reference}", accept, what) as reply:
                body = reply.read(MAX_MANIFEST + 1)
                return body, reply.headers.get("Content-Type", "")

        body, content_type = self._retrying(what, attempt)
        if len(body) > MAX_MANIFEST:
            raise PullError(f"{what}: manifest larger than {MAX_MANIFEST} bytes")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        expected = pin or (reference if reference.startswith("sha256:") else None)
        if expected and digest != expected:
            raise DigestMismatch(f"{what} has digest {digest}, pinned {expected}")
        try:
            manifest = json.loads(body)
        except ValueError:
            raise PullError(f"{what}: manifest is not JSON") from None
        if not isinstance(manifest, dict):
            raise PullError(f"{what}: manifest is not a JSON object")
        manifest.setdefault("mediaType", content_type.split(";")[0].strip())
        return manifest, digest

    def blob(self, digest: str, size: int | None) -> IO[bytes]:
        """Stream a blob to an anonymous temp file while hashing it; checked against ``digest``."""
        if size is not None and size > MAX_MODULE:
            raise PullError(f"layer {digest} is {size} bytes, over the {MAX_MODULE} byte cap")

        def attempt() -> tuple[IO[bytes], int, str]:
            out = tempfile.TemporaryFile(dir=self.scratch)  # noqa: SIM115 - the caller closes it
            try:
                with self._open(f"{self.base}/blobs/{digest}", "*/*", f"blob {digest}") as reply:
                    return (out, *_copy_capped(reply, out, MAX_MODULE, self.on_bytes))
            except BaseException:
                out.close()
                raise

        out, got_size, sha = self._retrying(f"blob {digest}", attempt)
        if size is not None and got_size != size:
            out.close()
            raise DigestMismatch(f"blob {digest} is {got_size} bytes, the manifest says {size}")
        if "sha256:" + sha != digest:
            out.close()
            raise DigestMismatch(f"blob {digest} hashes to sha256:{sha}")
        return out

    # -- HTTP, auth and retries -------------------------------------------------------

    def _retrying(self, what: str, attempt: Callable[[], Any]) -> Any:
        last = ""
        for number in range(self.retries + 1):
            if number:
                self.pause(self.backoff * 2 ** (number - 1))
            try:
                return attempt()
            except _Retry as exc:
                last = str(exc)
            except TRANSIENT as exc:
                last = f"registry unreachable: {self.host}: {_reason(exc)}"
        if last.startswith("registry unreachable"):
            raise Unreachable(last)
        raise PullError(
            f"{what}: {last} from {self.registry}/{self.repository}"
            f" (after {self.retries + 1} attempts)"
        )

    def _open(
        self, url: str, accept: str, what: str, *, challenged: bool = False
    ) -> http.client.HTTPResponse:
        request = urllib.request.Request(url, headers={"Accept": accept, "User-Agent": "hps-pull"})
        if self.authorization:
            request.add_unredirected_header("Authorization", self.authorization)
        try:
            return self.opener.open(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            status, challenge = exc.code, exc.headers.get("WWW-Authenticate", "")
            exc.close()
        if status == 401 and not challenged:
            self.authorization = self._answer(challenge)
            return self._open(url, accept, what, challenged=True)
        raise self._status_error(status, what)

    def _status_error(self, status: int, what: str) -> Exception:
        where = f"{self.registry}/{self.repository}"
        if status == 404:
            return NotFound(f"{what} not found in {where}")
        if status == 401:
            return AuthNeeded(f"{where}: authentication needed (credentials missing or refused)")
        if status == 403:
            return AuthNeeded(f"{where}: access denied (HTTP 403)")
        if (status >= 500 and status not in NOT_RETRIED) or status == 429:
            return _Retry(f"HTTP {status}")
        return PullError(f"{what}: HTTP {status} from {self.host}")

    def _answer(self, challenge: str) -> str:
        """Turn a ``WWW-Authenticate`` challenge into an ``Authorization`` value."""
        scheme, _, rest = challenge.partition(" ")
        params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if scheme.lower() == "basic" and self.credentials:
            return self.credentials.basic()
        if scheme.lower() == "bearer" and params.get("realm"):
            return "Bearer " + self._token(params)
        raise AuthNeeded(
            f"{self.registry}/{self.repository}: authentication needed; give credentials"
            " (--username, HPS_REGISTRY_USERNAME or ~/.docker/config.json)"
        )

    def _token(self, params: dict[str, str]) -> str:
        query = {"scope": params.get("scope") or f"repository:{self.repository}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        url = (
            params["realm"]
            + ("&" if "?" in params["realm"] else "?")
            + urllib.parse.urlencode(query)
        )
        headers = {"User-Agent": "hps-pull"}
        if self.credentials:
            headers["Authorization"] = self.credentials.basic()
        try:
            with self.opener.open(
                urllib.request.Request(url, headers=headers), timeout=self.timeout
            ) as reply:
                answer = json.loads(reply.read(MAX_MANIFEST))
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code in (401, 403):
                raise AuthNeeded(
                    f"{self.registry}/{self.repository}: token service refused"
                    f" (HTTP {exc.code}); credentials needed"
                ) from None
            raise _Retry(f"token service HTTP {exc.code}") from None
        except ValueError:
            raise PullError(f"token service at {params['realm']} did not answer JSON") from None
        token = (
            (answer.get("token") or answer.get("access_token"))
            if isinstance(answer, dict)
            else None
        )
        if not isinstance(token, str) or not token:
            raise PullError(f"token service at {params['realm']} gave no token")
        return token


# -- pure pieces ------------------------------------------------------------------------


def _tls_context() -> ssl.SSLContext:
    """Shared: loading the CA store costs ~60 ms per context, and a context is thread-safe."""
    return _tls_context_for(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.cache
def _tls_context_for(cafile: str | None, capath: str | None) -> ssl.SSLContext:
    return ssl.create_default_context()  # reads SSL_CERT_FILE/DIR itself; they key the cache


def _docker_hub(registry: str, repository: str) -> tuple[str, str]:
    if registry in ("docker.io", "index.docker.io"):
        return "registry-1.docker.io", repository if "/" in repository else f"library/{repository}"
    return registry, repository


def _media_type(manifest: dict[str, Any]) -> str:
    media = manifest.get("mediaType") or ""
    if not media and "manifests" in manifest:
        return OCI_INDEX
    return media


ATTESTATION = "attestation-manifest"
WASM_PLATFORMS = (("wasip1", "wasm"), ("wasi", "wasm"), ("wasip2", "wasm"))
PREFERRED = (*WASM_PLATFORMS, ("linux", "amd64"))


def _platform(entry: dict[str, Any]) -> tuple[str, str]:
    plat = entry.get("platform") if isinstance(entry.get("platform"), dict) else {}
    return str(plat.get("os")), str(plat.get("architecture"))


def _is_attestation(entry: dict[str, Any]) -> bool:
    annotations = entry.get("annotations") if isinstance(entry.get("annotations"), dict) else {}
    return annotations.get("vnd.docker.reference.type") == ATTESTATION or _platform(entry) == (
        "unknown",
        "unknown",
    )


def pick_platform(index: dict[str, Any], where: str) -> dict[str, Any]:
    """The same child on every machine: a Wasm module has no CPU architecture.

    Attestations (``unknown/unknown``) are skipped; of the rest, a Wasm platform
    wins, then ``linux/amd64``, then the index's first entry. Never this machine's
    platform, so amd64 and arm64 builds of the image serve identical bytes.
    """
    entries = [
        m
        for m in index.get("manifests") or []
        if isinstance(m, dict) and isinstance(m.get("digest"), str) and not _is_attestation(m)
    ]
    if not entries:
        raise PullError(f"{where}: index has no image entry (only attestations or nothing)")
    for wanted in PREFERRED:
        for entry in entries:
            if _platform(entry) == wanted:
                return entry
    return entries[0]


def pick_layer(manifest: dict[str, Any]) -> dict[str, Any]:
    """The one Wasm layer, else the one tar+gzip layer."""
    layers = [layer for layer in manifest.get("layers") or [] if isinstance(layer, dict)]
    for wanted in ({WASM_LAYER}, TAR_LAYERS):
        found = [
            layer
            for layer in layers
            if layer.get("mediaType") in wanted and isinstance(layer.get("digest"), str)
        ]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise NotWasm(f"image has {len(found)} candidate layers; want exactly one")
    types = sorted({str(layer.get("mediaType")) for layer in layers})
    raise NotWasm(f"not a Wasm image: no Wasm or tar+gzip layer (layers: {types or 'none'})")


def extract_module(
    blob: IO[bytes], media_type: str, scratch: str | None = None
) -> tuple[IO[bytes], int, str]:
    """The module, its size and SHA-256: the blob, or the one ``*.wasm`` in a tar+gzip layer."""
    blob.seek(0)
    module, size, sha = _measure(blob) if media_type == WASM_LAYER else _from_tar(blob, scratch)
    module.seek(0)
    if size < MIN_MODULE or not is_wasm_module(module.read(4)):
        if module is not blob:
            module.close()
        why = f"{size} bytes" if size < MIN_MODULE else "no \\0asm magic"
        raise NotWasm(f"not a Wasm module ({why})")
    module.seek(0)
    return module, size, sha


def _from_tar(blob: IO[bytes], scratch: str | None) -> tuple[IO[bytes], int, str]:
    try:
        with tarfile.open(fileobj=blob, mode="r:gz") as archive:
            wasm = [m for m in archive.getmembers() if m.isfile() and m.name.endswith(".wasm")]
            if len(wasm) != 1:
                names = [m.name for m in wasm][:5]
                raise NotWasm(f"layer holds {len(wasm)} *.wasm files {names}; want exactly one")
            if wasm[0].size > MAX_MODULE:
                raise PullError(
                    f"{wasm[0].name} is {wasm[0].size} bytes, over the {MAX_MODULE} byte cap"
                )
            source = archive.extractfile(wasm[0])
            out = tempfile.TemporaryFile(dir=scratch)  # noqa: SIM115 - the caller closes it
            try:
                return (out, *_copy_capped(source, out, MAX_MODULE, lambda n: None))
            except BaseException:
                out.close()
                raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise NotWasm(f"layer is not a readable tar+gzip: {exc}") from None


def _copy_capped(
    source: IO[bytes], out: IO[bytes], cap: int, on_bytes: Callable[[int], None]
) -> tuple[int, str]:
    """Copy while hashing, so nothing is read twice; returns size and SHA-256 hex."""
    digest = hashlib.sha256()
    total = 0
    while chunk := source.read(CHUNK):
        total += len(chunk)
        if total > cap:
            raise PullError(f"more than {cap} bytes; refusing")
        digest.update(chunk)
        out.write(chunk)
        on_bytes(len(chunk))
    out.seek(0)
    return total, digest.hexdigest()


def _measure(file: IO[bytes]) -> tuple[IO[bytes], int, str]:
    file.seek(0)
    digest = hashlib.sha256()
    size = 0
    while chunk := file.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    file.seek(0)
    return file, size, digest.hexdigest()


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    return getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
