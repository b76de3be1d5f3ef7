"""The repository's default inventory, seeded into a loopback registry.

``seed_default_inventory(registry)`` pushes one tiny, distinct Wasm module for
every reference ``hps pull`` (no inventory flags, run in the repository root)
would pull, rewritten to ``registry`` as ``--registry`` does, and says which
bytes each ``(name, version)`` must then serve. Black-box tests and the image
build against a loopback registry share it.
"""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hps.pull.inventory import default_sources, load_entries
from hps.pull.properties import Key, Plan, Reference, build_plan
from tests.support.registry import OCI_CONFIG, OCI_MANIFEST, WASM_LAYER, Registry, wasm

REPO = Path(__file__).resolve().parents[2]
INVENTORY_FILES = ("plugins.properties", "console.properties")
"""The files in ``plugins/`` that make the default inventory."""


def default_plan(root: Path = REPO) -> Plan:
    """What ``hps pull`` with no inventory flags pulls when run in ``root``."""
    return build_plan(load_entries(default_sources(root)), {})


def module_for(ref: Reference) -> bytes:
    """A valid, tiny module, distinct per repository and tag (no randomness)."""
    return wasm(f"{ref.repository}:{ref.tag}")


def seed_default_inventory(
    registry: Registry, root: Path = REPO, namespace: str | None = None, jobs: int = 8
) -> dict[Key, bytes]:
    """Push a module for every reference of ``root``'s default inventory into ``registry``.

    References keep their repository (``plugins/key-auth``), or move to ``namespace``
    as ``hps pull --namespace`` does. Returns the bytes each ``(name, version)``
    must serve once ``hps pull --registry registry.host [--namespace NS]`` ran.
    """
    plan = default_plan(root)
    moved = {key: e.ref.moved(registry.host, namespace) for key, e in plan.entries.items()}
    if any(ref.digest for ref in moved.values()):
        raise ValueError("a digest-pinned reference cannot be seeded with made-up bytes")
    tags: dict[str, set[str]] = defaultdict(set)
    for ref in moved.values():
        tags[ref.repository].add(ref.tag or "")
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        # One repository per task: its config blob is pushed once, then each tag.
        list(pool.map(lambda repo: _push_repository(registry, repo, sorted(tags[repo])), tags))
    return {key: module_for(ref) for key, ref in moved.items()}


def _push_repository(registry: Registry, repository: str, tags: list[str]) -> None:
    config = registry.descriptor(repository, b"{}", OCI_CONFIG)
    for tag in tags:
        module = module_for(Reference(registry.host, repository, tag))
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config,
            "layers": [registry.descriptor(repository, module, WASM_LAYER)],
        }
        registry.push_manifest(repository, tag, manifest, OCI_MANIFEST)


def copy_inventory(destination: Path, root: Path = REPO) -> Path:
    """``root``'s inventory files into ``destination/plugins/``, as the image build copies them."""
    plugins = destination / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    for name in INVENTORY_FILES:
        source = root / "plugins" / name
        if source.exists():
            (plugins / name).write_bytes(source.read_bytes())
    return destination
