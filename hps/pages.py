"""What people and tools read about the catalog: HTML pages and JSON indexes.

HTML is built with ``twisted.web.template`` so every name, version and Host
header is escaped by construction. Nothing here touches files: it only reads
catalog snapshots.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from twisted.web.template import Tag, flattenString, tags

from hps import urls
from hps.catalog import Artifact, Catalog, utc
from hps.guard import MODULE_FILE
from hps.misses import Miss
from hps.served import Change

STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; padding: 0 1rem;
       color: #1b1f24; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .3rem .6rem; border-bottom: 1px solid #d8dee4; }
td.size { text-align: right; white-space: nowrap; }
code, .hash { font-family: ui-monospace, monospace; font-size: 13px; word-break: break-all; }
pre { background: #f6f8fa; padding: .8rem; overflow-x: auto; }
"""


def render_html(title: str, body: Iterable[Tag]) -> bytes:
    """A whole HTML document; ``flattenString`` escapes every text and attribute."""
    page = tags.html(lang="en")(
        tags.head(tags.meta(charset="utf-8"), tags.title(title), tags.style(STYLE)),
        tags.body(tags.h1(title), *body),
    )
    out: list[bytes] = []
    flattenString(None, page).addCallback(out.append)
    return b"<!DOCTYPE html>\n" + out[0]


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    kib = size / 1024
    return f"{kib:.1f} KiB" if kib < 1024 else f"{kib / 1024:.1f} MiB"


def _crumbs(*parts: str) -> Tag:
    links: list[Tag | str] = [tags.a(href="/")("home"), " / ",
                              tags.a(href=urls.LISTING)(urls.PLUGINS)]
    for depth, part in enumerate(parts, 1):
        href = urls.plugin_url(part) if depth == 1 else urls.version_url(*parts[:2])
        links += [" / ", tags.a(href=href)(part)]
    return tags.p(class_="crumbs")(*links)


def _artifact_row(artifact: Artifact, label: str) -> Tag:
    alias = f" (alias of {artifact.alias_of})" if artifact.alias_of else ""
    return tags.tr(
        tags.td(tags.a(href=artifact.url)(label), alias),
        tags.td(class_="size")(human_size(artifact.size)),
        tags.td(class_="hash")(artifact.sha256),
        tags.td(artifact.last_modified),
    )


_HEAD = tags.tr(tags.th("module"), tags.th("size"), tags.th("SHA-256"), tags.th("modified"))


def plugins_page(catalog: Catalog) -> bytes:
    rows = [
        tags.tr(
            tags.td(tags.a(href=urls.plugin_url(name))(name)),
            tags.td(", ".join(a.version for a in catalog.versions(name))),
        )
        for name in catalog.names()
    ]
    return render_html("Plugins", [
        _crumbs(),
        tags.p(f"{len(catalog.names())} plugins, {len(catalog)} modules. ",
               tags.a(href=urls.index_url())(urls.INDEX_FILE)),
        tags.table(tags.tr(tags.th("plugin"), tags.th("versions")), *rows),
    ])


def plugin_page(catalog: Catalog, name: str) -> bytes:
    rows = [_artifact_row(a, f"{a.version}/{MODULE_FILE}") for a in catalog.versions(name)]
    return render_html(f"Plugin {name}", [
        _crumbs(name),
        tags.p(tags.a(href=urls.index_url(name))(urls.INDEX_FILE)),
        tags.table(_HEAD, *rows),
    ])


def version_page(artifact: Artifact) -> bytes:
    metadata = urls.file_url(artifact.name, artifact.version, urls.METADATA_FILE)
    return render_html(f"{artifact.name} {artifact.version}", [
        _crumbs(artifact.name, artifact.version),
        tags.table(_HEAD, _artifact_row(artifact, MODULE_FILE),
                   tags.tr(tags.td(tags.a(href=metadata)(urls.METADATA_FILE)))),
    ])


def console_lines(base_url: str) -> list[str]:
    """The settings an operator pastes into the Higress Console and Controller."""
    return [
        "HIGRESS_ADMIN_WASM_PLUGIN_CUSTOM_IMAGE_URL_PATTERN="
        f"{base_url}{urls.file_url('${name}', '${version}')}",
        f"MCP_SERVER_WASM_IMAGE_URL={base_url}{urls.file_url('mcp-server', '1.0.0')}",
    ]


def landing_page(catalog: Catalog, base_url: str, missing: list[Miss] | None = None,
                 pull_through: tuple[tuple[str, ...], tuple[str, ...]] | None = None,
                 changed: Iterable[Change] = ()) -> bytes:
    """``pull_through``: (templates, allowed name patterns), or None when it is off."""
    return render_html("Higress plugin server", [
        *_changed_table(list(changed)),
        tags.p(f"Serving {len(catalog.names())} plugins ({len(catalog)} modules). ",
               tags.a(href=urls.LISTING)(f"Browse {urls.LISTING}"), "."),
        *_inventory_link(catalog),
        _pull_through(pull_through),
        tags.h2("Wire Higress to this server"),
        tags.p("Set on the Higress Console (first line) and the Higress Controller (second):"),
        tags.pre(tags.code("\n".join(console_lines(base_url)))),
        *_missing_table(missing or []),
        tags.p("Health: ", tags.a(href="/healthz")("/healthz"), ", readiness: ",
               tags.a(href="/readyz")("/readyz"), "."),
    ])


def _inventory_link(catalog: Catalog) -> list[Tag]:
    if catalog.inventory is None:
        return []
    return [tags.p(class_="inventory")(
        "Built from upstream's snapshot: ",
        tags.a(href=urls.INVENTORY_URL)(urls.INVENTORY_FILE),
        " (each served name's version, digest and Wasm SHA-256).")]


def _pull_through(source: tuple[tuple[str, ...], tuple[str, ...]] | None) -> Tag:
    if source is None:
        return tags.p(class_="pull-through")("Pull-through is off: a version the tree lacks "
                                             "is a 404.")
    templates, allow = source
    return tags.p(class_="pull-through")(
        "Pull-through is on: a missing version of a plugin named ",
        *_joined(tags.code(p) for p in allow), " is fetched from ",
        *_joined(tags.code(t) for t in templates), " (tried in order), verified and kept.")


def _joined(items: Iterable[Tag]) -> list[Tag | str]:
    out: list[Tag | str] = []
    for item in items:
        out += [", ", item] if out else [item]
    return out


def _missing_table(missing: list[Miss]) -> list[Tag]:
    if not missing:
        return []
    rows = [tags.tr(tags.td(m.name), tags.td(m.version), tags.td(class_="size")(str(m.count)),
                    tags.td(_stamp(m.last)))
            for m in missing]
    return [
        tags.h2("Recently asked for but not here"),
        tags.table(class_="missing")(
            tags.tr(tags.th("plugin"), tags.th("version"), tags.th("requests"),
                    tags.th("last asked")), *rows),
    ]


def _changed_table(changed: list[Change]) -> list[Tag]:
    """First on the page: gateways that cached these URLs hold other bytes than new ones get."""
    if not changed:
        return []
    rows = [tags.tr(tags.td(c.name), tags.td(c.version), tags.td(class_="hash")(c.first),
                    tags.td(class_="hash")(c.now)) for c in changed]
    return [
        tags.h2("Bytes changed under the same URL"),
        tags.p("Gateways cache a module by URL and never fetch it again, so these versions "
               "now differ between gateways that restarted and those that did not. Put the "
               "first bytes back, or serve the new ones under a new version (see "
               "docs/operations.md)."),
        tags.table(class_="changed")(
            tags.tr(tags.th("plugin"), tags.th("version"), tags.th("first served SHA-256"),
                    tags.th("SHA-256 now")), *rows),
    ]


def _stamp(seconds: float) -> str:
    return utc(seconds).strftime("%Y-%m-%dT%H:%M:%SZ")


def not_here_text(catalog: Catalog, name: str, version: str) -> str:
    """The 404 for a well-formed plugin URL: what exists, and the manifest alias that
    would serve this version (see docs/pull.md)."""
    lines = [f"not found: {name} {version}"]
    have = catalog.versions(name)
    if not have:
        return "\n".join([*lines, f"no version of {name} is here", ""])
    lines.append(f"versions here: {', '.join(a.version for a in have)}")
    lines += ["to serve it, add this to the hps pull manifest (docs/pull.md) and pull again:",
              "  plugins:", f"    {name}:", *_alias_lines(have, version)]
    return "\n".join([*lines, ""])


def _version_entry(artifact: Artifact) -> dict:
    entry = {
        "version": artifact.version,
        "url": artifact.url,
        "size": artifact.size,
        "sha256": artifact.sha256,
        "md5": artifact.md5,
        "lastModified": artifact.last_modified,
    }
    if artifact.alias_of:
        entry["aliasOf"] = artifact.alias_of
    return entry


def _alias_lines(have: list[Artifact], version: str) -> list[str]:
    """A version alias of the newest real module; for a name alias, one more version."""
    real = [a for a in have if not a.alias_of or a.alias_of.startswith(f"{a.name}/")]
    if real:
        return [f"      aliases: ['{version}']  # served with {real[-1].version}'s module"]
    target = (have[-1].alias_of or "").split("/")[0]
    versions = ", ".join(f"'{v}'" for v in [*(a.version for a in have), version])
    return [f"      from: {target}", f"      versions: [{versions}]"]


def index_json(catalog: Catalog, names: Iterable[str] | None = None,
               missing: list[Miss] | None = None,
               changed: Iterable[Change] | None = None) -> bytes:
    """``{"plugins": [{"name", "versions": [...]}]}``, names sorted, versions ordered; with
    ``missing``, also ``"missing": [{"name", "version", "requests", "lastRequested"}]``;
    with ``changed``, also ``"changed": [{"name", "version", "first", "now"}]`` (the
    versions whose bytes differ from the SHA-256 they first served, :mod:`hps.served`)."""
    chosen = catalog.names() if names is None else names
    plugins = [
        {"name": name, "versions": [_version_entry(a) for a in catalog.versions(name)]}
        for name in chosen
    ]
    document: dict = {"plugins": plugins}
    if missing is not None:
        document["missing"] = [{"name": m.name, "version": m.version, "requests": m.count,
                                "lastRequested": _stamp(m.last)} for m in missing]
    if changed is not None:
        document["changed"] = [{"name": c.name, "version": c.version, "first": c.first,
                                "now": c.now} for c in changed]
    return json.dumps(document, indent=2).encode() + b"\n"


def metadata_text(artifact: Artifact) -> bytes:
    """Upstream's ``metadata.txt`` lines (times in UTC), plus SHA-256."""
    stamp = artifact.last_modified.rstrip("Z")
    return (
        f"Plugin Name: {artifact.name}\n"
        f"Size: {artifact.size} bytes\n"
        f"Last Modified: {stamp}\n"
        f"Created: {stamp}\n"
        f"MD5: {artifact.md5}\n"
        f"SHA256: {artifact.sha256}\n"
    ).encode()
