"""The URL space: which path reaches which page, and nothing else.

The root is a leaf that sees the whole decoded path, runs it past the guard,
then matches it against the few routes the server has. Every refusal ends in
the same 404 page, so a hostile path and a missing plugin look alike.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request

from hps import listings, metrics, pages, urls
from hps.artifact import ArtifactResource
from hps.catalog import Artifact, Catalog
from hps.guard import MODULE_FILE, Verdict, accept_name, accept_version, judge_path
from hps.misses import Misses
from hps.replies import SHORT, TEXT, answer_when, not_found, reply, retry_later, text
from hps.served import Change, ServedRecord
from hps.state import ServerState
from hps.transfer import Policy, Transfer
from hps.upstream import RETRY_AFTER, Missing, Upstream

ALLOWED = b"GET, HEAD"
HTML = "text/html; charset=utf-8"
JSON = "application/json"
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")

Page = Callable[[Request], bytes | int]
Route = tuple[str, Page]
"""The route's kind (the ``route`` label of hps's metrics) and its page."""
FILE_ROUTES = {MODULE_FILE: "artifact", urls.METADATA_FILE: "metadata"}


def redirect(location: str) -> Page:
    def page(request: Request) -> bytes:
        request.setHeader(b"location", location.encode())
        return text(request, http.MOVED_PERMANENTLY, f"see {location}\n", SHORT)
    return page


def base_url(request: Request) -> str:
    """``scheme://host`` as the client addressed us; Host is checked, not trusted."""
    scheme = "https" if request.isSecure() else "http"
    host = (request.getHeader(b"host") or b"").decode("latin-1")
    if not _HOST.fullmatch(host):
        address = request.getHost()
        host = f"[{address.host}]" if ":" in address.host else address.host
        host = f"{host}:{address.port}"
    return f"{scheme}://{host}"


class Root(Resource):
    """Routes every request; only GET and HEAD exist here."""

    isLeaf = True
    log = Logger()
    def __init__(self, state: ServerState, transfer: Transfer | None = None,
                 misses: Misses | None = None, upstream: Upstream | None = None,
                 clock: IReactorTime | None = None, served: ServedRecord | None = None) -> None:
        super().__init__()
        if clock is None:
            from twisted.internet import reactor as clock
        config = state.config
        self.transfer = transfer or Transfer(Policy.from_config(
            config.cache_max_age, config.immutable))
        self.listings = listings.Listings(
            clock, extra=lambda: misses.generation if misses is not None else 0,
            compress=self.transfer.variants is not None)
        self.state = state
        self.misses = misses
        self.upstream = upstream
        self.served = served

    def render(self, request: Request) -> bytes | int:
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", ALLOWED)
            return text(request, http.NOT_ALLOWED, "method not allowed\n")
        verdict, segments = judge_path(request.postpath)
        if verdict is Verdict.MALFORMED:
            return text(request, http.BAD_REQUEST, "bad request\n")
        kind, page = (self.route(segments) if verdict is Verdict.OK else None) or (
            "notfound", not_found)
        if not self.state.catalog.loaded and segments[:1] == [urls.PLUGINS]:
            # Nothing is known yet, so nothing is final: the gateway never retries a 404.
            page = retry_later
        request.route = kind  # type: ignore[attr-defined]  # a PluginRequest: metrics read it
        return page(request)

    def route(self, segments: list[str]) -> Route | None:
        catalog = self.state.catalog
        match segments:
            case [""]:
                return "landing", self.landing
            case ["healthz"]:
                return "health", lambda request: text(request, http.OK, "ok\n")
            case ["readyz"]:
                return "ready", self.readiness
            case ["metrics"]:
                return "metrics", lambda request: reply(request, http.OK, *metrics.exposition())
            case [urls.PLUGINS]:
                return "redirect", redirect(urls.LISTING)
            case [urls.PLUGINS, ""]:
                return "listing", self.listing(catalog, ("plugins",), HTML, heavy=True,
                                               make=lambda: pages.plugins_page(catalog))
            case [urls.PLUGINS, urls.INDEX_FILE]:
                missing, changed = self.missing(), self.changed()  # read on the reactor thread
                return "index", self.listing(
                    catalog, ("index",), JSON, heavy=True,
                    make=lambda: pages.index_json(catalog, missing=missing, changed=changed))
            case [urls.PLUGINS, urls.INVENTORY_FILE] if catalog.inventory is not None:
                body = catalog.inventory.body  # served like a listing: ETag, 304, gzip
                return "listing", self.listing(catalog, ("inventory",), JSON, make=lambda: body)
            case [urls.PLUGINS, name, version, file] if file in urls.PLUGIN_FILES and (
                    catalog.get(name, version) is None
                    and accept_name(name) and accept_version(version)):
                return FILE_ROUTES[file], self.miss(name, version, file)
            case [urls.PLUGINS, name, *rest] if catalog.versions(name):
                return self.route_plugin(name, rest)
        return None

    def route_plugin(self, name: str, rest: list[str]) -> Route | None:
        catalog = self.state.catalog
        match rest:
            case []:
                return "redirect", redirect(urls.plugin_url(name))
            case [""]:
                return "listing", self.listing(catalog, ("plugin", name), HTML,
                                               make=lambda: pages.plugin_page(catalog, name))
            case [urls.INDEX_FILE]:
                return "index", self.listing(catalog, ("index", name), JSON,
                                             make=lambda: pages.index_json(catalog, [name]))
        artifact = catalog.get(name, rest[0])
        if artifact is None:
            return None
        match rest[1:]:
            case []:
                return "redirect", redirect(urls.version_url(name, artifact.version))
            case [""]:
                return "listing", self.listing(catalog, ("version", name, artifact.version),
                                               HTML, make=lambda: pages.version_page(artifact))
            case [file] if file in urls.PLUGIN_FILES:
                return FILE_ROUTES[file], self.file_page(artifact, file)
        return None

    def file_page(self, artifact: Artifact, file: str) -> Page:
        """``plugin.wasm`` or ``metadata.txt`` of one artifact."""
        if file == MODULE_FILE:
            return ArtifactResource(artifact, self.transfer).render
        body = pages.metadata_text(artifact)
        return lambda request: reply(request, http.OK, body, TEXT, SHORT)

    def miss(self, name: str, version: str, file: str) -> Page:
        """A well-formed plugin URL the catalog lacks: counted, then pulled through or 404."""
        def page(request: Request) -> bytes | int:
            if self.misses is not None:
                self.misses.record(name, version)
            if self.upstream is None or not self.upstream.admits(name, version):
                return self.not_here(request, name, version)
            return self.pull_through(request, name, version, file)
        return page

    def pull_through(self, request: Request, name: str, version: str, file: str) -> int:
        """Wait on the pull-through service's Deferred; never talk to a registry here."""
        assert self.upstream is not None

        def answer(outcome: Artifact | Failure) -> bytes | int:
            if isinstance(outcome, Artifact):
                return self.file_page(outcome, file)(request)
            if outcome.check(Missing):
                return self.not_here(request, name, version)
            return retry_later(request, RETRY_AFTER)  # slow, or failed: the log says which

        # Cancelling drops this waiter only: the fetch goes on for the others.
        return answer_when(request, self.upstream.wait(name, version), answer)

    def not_here(self, request: Request, name: str, version: str) -> bytes:
        body = pages.not_here_text(self.state.catalog, name, version)
        return text(request, http.NOT_FOUND, body, SHORT)

    def missing(self) -> list | None:
        return self.misses.missing(self.state.catalog) if self.misses is not None else None

    def changed(self) -> tuple[Change, ...]:
        """Swapped in with the catalog (hps.served), so a page built per snapshot is current."""
        return self.served.changed if self.served is not None else ()

    def landing(self, request: Request) -> bytes:
        source = (self.upstream.templates, self.upstream.allow) if self.upstream else None
        body = pages.landing_page(self.state.catalog, base_url(request),
                                  missing=self.missing() or [], pull_through=source,
                                  changed=self.changed())
        return reply(request, http.OK, body, "text/html; charset=utf-8", SHORT)

    def readiness(self, request: Request) -> bytes:
        reason = self.state.unready_reason()
        if reason is None:
            return text(request, http.OK, "ready\n")
        body = json.dumps({"ready": False, "reason": reason}).encode() + b"\n"
        return reply(request, http.SERVICE_UNAVAILABLE, body, "application/json")

    def listing(self, catalog: Catalog, key: tuple[str, ...], content_type: str,
                make: Callable[[], bytes], heavy: bool = False) -> Page:
        """A page built once per catalog snapshot (see :mod:`hps.listings`)."""
        return lambda request: listings.answer(
            request, self.listings.get(catalog, key, make, content_type, heavy))
