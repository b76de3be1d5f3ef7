"""The bundled sample tree: real modules, reproducible, and the upstream list.

The README's first command serves ``plugins/``; these tests keep that tree
honest: every artifact is a WebAssembly module a runtime accepts, the bytes are
exactly what ``tools/make_samples.py`` builds, and ``plugins.properties`` is
the upstream list in upstream's format.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent
PLUGINS = REPO / "plugins"
PROPERTIES = PLUGINS / "plugins.properties"
UPSTREAM_ENTRIES = 43
# name=oci://registry/repository:tag, the only shape upstream's file uses.
_LINE = re.compile(
    r"([a-z0-9][a-z0-9._-]*)=oci://([A-Za-z0-9.-]+(?::\d+)?)/([a-z0-9./_-]+):(\S+)\Z"
)


def wasmtime_module() -> ModuleType:
    """wasmtime is a test requirement: its absence must fail, not skip, or the
    suite would go green without ever proving the modules are valid."""
    try:
        import wasmtime
    except ImportError as exc:  # pragma: no cover - exercised only when misinstalled
        pytest.fail(f"wasmtime is required (pip install 'hps[test]'): {exc}")
    return wasmtime


def sample_files(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.glob("*/*/plugin.wasm"))
    }


def test_tree_has_several_names_and_versions() -> None:
    files = sample_files(PLUGINS)
    names = {key.split("/")[0] for key in files}
    assert len(files) >= 5
    assert len(names) >= 4
    assert len(files) > len(names), "one name should be served at several versions"
    assert len(set(files.values())) == len(files), "every sample must be distinct"


@pytest.mark.parametrize("relpath", sorted(sample_files(PLUGINS)))
def test_sample_compiles_and_looks_like_proxy_wasm(relpath: str) -> None:
    wasmtime = wasmtime_module()
    data = (PLUGINS / relpath).read_bytes()
    assert data[:4] == b"\0asm"
    module = wasmtime.Module(wasmtime.Engine(), data)
    exports = {export.name for export in module.exports}
    assert {"memory", "proxy_abi_version_0_2_1", "proxy_on_memory_allocate", "_start"} <= exports
    name, version = relpath.split("/")[:2]
    assert f"{name} {version}".encode() in data, "the data segment names the plugin"


def test_make_samples_reproduces_committed_bytes(tmp_path: Path) -> None:
    wasmtime_module()
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "make_samples.py"), "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert sample_files(tmp_path) == sample_files(PLUGINS)
    # Atomic writes leave no temp files behind.
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "plugin.wasm"]
    assert leftovers == []


def properties_entries() -> list[re.Match[str]]:
    entries = []
    for raw in PROPERTIES.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        assert match, f"not name=oci://registry/repo:tag: {line!r}"
        entries.append(match)
    return entries


def test_properties_is_the_upstream_list() -> None:
    entries = properties_entries()
    names = [match.group(1) for match in entries]
    assert len(entries) == UPSTREAM_ENTRIES
    assert len(set(names)) == len(names), "duplicate plugin names"
    assert {match.group(2) for match in entries} == {"higress-registry.cn-hangzhou.cr.aliyuncs.com"}
    # The two upstream entries served from an image named otherwise.
    images = {match.group(1): match.group(3) for match in entries}
    assert images["json-converter"] == "plugins/jsonrpc-converter"
    assert images["mcp-server"] == "mcp-server/all-in-one"
