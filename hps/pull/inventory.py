"""Which properties files make the inventory, and the default one.

Two kinds of file, both in upstream's ``name=oci://registry/repo:tag`` format:

- *exact* (``--properties``): each line is pulled at its tag (or digest);
- *upstream* (``--upstream-properties``): upstream's ``plugins.properties``, pulled as
  upstream's image build does (``pull_plugins.py --download-v2``): each tagged
  line at its own tag and also at ``1.0.0`` and ``2.0.0`` of the same repository.

With neither flag, ``hps pull`` uses the default inventory of where it runs:
this repository's root (``plugins/plugins.properties`` as upstream,
``plugins/console.properties`` exact) or an upstream checkout
(``./plugins.properties`` as upstream).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from hps.pull.errors import InputError
from hps.pull.properties import Entry, parse_properties, read_text

UPSTREAM_TAGS = ("1.0.0", "2.0.0")
REPO_UPSTREAM = Path("plugins/plugins.properties")
REPO_CONSOLE = Path("plugins/console.properties")
CHECKOUT_UPSTREAM = Path("plugins.properties")


@dataclass(frozen=True)
class Source:
    path: Path
    upstream: bool = False  # also pull every tagged line at UPSTREAM_TAGS


def default_sources(base: Path = Path()) -> list[Source]:
    """The default inventory of this repository, or of an upstream checkout."""
    if (base / REPO_UPSTREAM).exists():
        sources = [Source(base / REPO_UPSTREAM, upstream=True)]
        if (base / REPO_CONSOLE).exists():
            sources.append(Source(base / REPO_CONSOLE))
        return sources
    if (base / CHECKOUT_UPSTREAM).exists():
        return [Source(base / CHECKOUT_UPSTREAM, upstream=True)]
    raise InputError(
        f"no inventory here: neither {REPO_UPSTREAM} (this repository) nor"
        f" ./{CHECKOUT_UPSTREAM} (an upstream checkout); give --properties FILE"
    )


def load_entries(sources: list[Source]) -> list[Entry]:
    """Every line of every source; lines win over the versions upstream's build adds."""
    listed: list[Entry] = []
    added: list[Entry] = []
    for source in sources:
        lines = parse_properties(read_text(source.path, "properties"), str(source.path))
        listed += lines
        if source.upstream:
            added += [extra for entry in lines for extra in _upstream_versions(entry)]
    keys = {entry.key for entry in listed}
    return listed + [entry for entry in added if entry.key not in keys]


def _upstream_versions(entry: Entry) -> Iterator[Entry]:
    if not entry.ref.tag:
        return  # a digest-only line names one module, not a repository of versions
    for tag in UPSTREAM_TAGS:
        if tag != entry.version:
            yield replace(
                entry,
                version=tag,
                ref=replace(entry.ref, tag=tag, digest=None),
                pin=None,
                source=f"{entry.source} (at {tag}, as upstream's build)",
            )
