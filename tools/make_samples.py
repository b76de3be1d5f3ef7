#!/usr/bin/env python3
"""Build the bundled sample plugin tree from WebAssembly text.

The checkout ships ``plugins/<name>/<version>/plugin.wasm`` so that
``pip install . && twistd -n hps`` serves something real with no registry at
hand. The bytes are committed; this script is how they were made, and the test
suite re-runs it to prove they still match.

Each module is a tiny, valid proxy-wasm shaped module: it exports ``memory``,
``proxy_abi_version_0_2_1`` and the few callbacks Envoy looks for first, and a
data segment that names the plugin, so every artifact is distinct and a person
can tell them apart with ``strings``. They do nothing at request time: they are
fixtures for the server, not plugins for a gateway.

Usage: ``python tools/make_samples.py [--output DIR]`` (default: ``plugins/``
next to this script's parent directory).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

# Several names, and one name at two versions, because the Console asks for
# versions that drift between releases and the server must tell them apart.
SAMPLES: tuple[tuple[str, str], ...] = (
    ("ai-proxy", "1.0.0"),
    ("basic-auth", "1.0.0"),
    ("basic-auth", "2.0.0"),
    ("key-auth", "2.0.0"),
    ("key-rate-limit", "1.0.0"),
    ("mcp-server", "1.0.0"),
)

MODULE_FILE = "plugin.wasm"
REPO_ROOT = Path(__file__).resolve().parent.parent

# A bump allocator is enough for proxy_on_memory_allocate: the host only asks
# for buffers it fills and hands back, and these modules never free anything.
_WAT_TEMPLATE = """\
(module $hps_sample
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 1024) "{label}")

  (func (export "proxy_abi_version_0_2_1"))

  (func (export "_start"))

  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $heap))
    (global.set $heap
      (i32.and
        (i32.add (i32.add (local.get $ptr) (local.get $size)) (i32.const 7))
        (i32.const -8)))
    (block $fits
      (br_if $fits
        (i32.le_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536))))
      (drop
        (memory.grow
          (i32.add
            (i32.shr_u (i32.sub (global.get $heap) (i32.const 1)) (i32.const 16))
            (i32.sub (i32.const 1) (memory.size))))))
    (local.get $ptr))

  (func (export "proxy_on_context_create") (param i32 i32))

  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (i32.const 1))

  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (i32.const 1))
)
"""


def module_text(name: str, version: str) -> str:
    """The WebAssembly text of one sample; the label makes each module unique."""
    label = f"hps sample plugin: {name} {version}"
    # The label goes inside a WAT string literal: keep it to plain printable ASCII.
    if not all(ch.isascii() and ch.isprintable() and ch not in '"\\' for ch in label):
        raise ValueError(f"unsafe sample label {label!r}")
    return _WAT_TEMPLATE.format(label=label)


def build_module(name: str, version: str) -> bytes:
    """Assemble one sample; imported lazily so ``--help`` works without wasmtime."""
    from wasmtime import wat2wasm

    return bytes(wat2wasm(module_text(name, version)))


def write_atomically(path: Path, data: bytes) -> None:
    """Temp file in the same directory, fsync, rename: a server reading the
    tree concurrently sees either the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A dot-prefixed temp name is never taken for an artifact by the catalog.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".plugin.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_samples(output: Path) -> list[Path]:
    """Write every sample under ``output``; returns the paths written."""
    written = []
    for name, version in SAMPLES:
        target = output / name / version / MODULE_FILE
        write_atomically(target, build_module(name, version))
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO_ROOT / "plugins",
        help="tree to write <name>/<version>/plugin.wasm into (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        paths = make_samples(args.output)
    except (OSError, ValueError, ImportError) as exc:
        print(f"make_samples: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(f"{path.stat().st_size:6d} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
