"""The pieces of ``hps pull`` that need no registry: tree writes, layers, progress."""

from __future__ import annotations

import gzip
import io
import os
import tempfile
from pathlib import Path

import pytest

from hps.pull.errors import NotWasm, PullError
from hps.pull.progress import Progress
from hps.pull.registry import (
    TAR_LAYERS,
    WASM_LAYER,
    extract_module,
    pick_layer,
    pick_platform,
)
from hps.pull.tree import link_module, read_local, remove_temporaries, write_module
from tests.support.registry import sha256, tar_bytes, wasm

TAR_GZ = sorted(TAR_LAYERS)[0]


class Exploding(io.BytesIO):
    def read(self, size: int = -1) -> bytes:
        if self.tell():
            raise OSError(28, "No space left on device")
        return super().read(4)


def test_write_module_failure_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    write_module(tmp_path, "a", "1.0.0", io.BytesIO(wasm("old")), gzip_sibling=True)
    with pytest.raises(OSError):
        write_module(tmp_path, "a", "1.0.0", Exploding(wasm("new") * 1000), gzip_sibling=True)
    assert sorted(os.listdir(tmp_path / "a/1.0.0")) == ["plugin.wasm", "plugin.wasm.gz"]
    assert (tmp_path / "a/1.0.0/plugin.wasm").read_bytes() == wasm("old")
    assert oct((tmp_path / "a/1.0.0/plugin.wasm").stat().st_mode & 0o777) == "0o644"


def test_write_module_replaces_a_directory_symlink_instead_of_writing_through(
    tmp_path: Path,
) -> None:
    write_module(tmp_path, "target", "1.0.0", io.BytesIO(wasm("target")))
    (tmp_path / "a").mkdir()
    (tmp_path / "a/1.0.0").symlink_to("../target/1.0.0")
    write_module(tmp_path, "a", "1.0.0", io.BytesIO(wasm("a")))
    assert not (tmp_path / "a/1.0.0").is_symlink()
    assert (tmp_path / "target/1.0.0/plugin.wasm").read_bytes() == wasm("target")


def test_link_module_swaps_a_real_file_for_a_relative_link(tmp_path: Path) -> None:
    write_module(tmp_path, "a", "2.0.0", io.BytesIO(wasm("two")), gzip_sibling=True)
    write_module(tmp_path, "a", "1.0.0", io.BytesIO(wasm("one")))
    link = link_module(tmp_path, "a", "1.0.0", "a", "2.0.0")
    assert os.readlink(link) == "../2.0.0/plugin.wasm"
    assert link.read_bytes() == wasm("two")
    assert sorted(os.listdir(link.parent)) == ["plugin.wasm", "plugin.wasm.gz"]
    assert os.readlink(link.parent / "plugin.wasm.gz") == "../2.0.0/plugin.wasm.gz"
    assert gzip.decompress((link.parent / "plugin.wasm.gz").read_bytes()) == wasm("two")


def test_read_local_refuses_links_out_of_the_tree(tmp_path: Path) -> None:
    outside = tmp_path / "outside.wasm"
    outside.write_bytes(wasm("outside"))
    root = tmp_path / "root"
    (root / "a/1.0.0").mkdir(parents=True)
    (root / "a/1.0.0/plugin.wasm").symlink_to(outside)
    with pytest.raises(PullError, match="outside"):
        read_local(root, "a", "1.0.0")
    assert read_local(root, "b", "1.0.0") is None


def _file(data: bytes):
    out = tempfile.TemporaryFile()  # noqa: SIM115 - the code under test owns it
    out.write(data)
    out.seek(0)
    return out


def test_extract_from_a_wasm_layer_and_from_a_tar_layer() -> None:
    module, size, sha = extract_module(_file(wasm("raw")), WASM_LAYER)
    assert (module.read(), size, "sha256:" + sha) == (
        wasm("raw"),
        len(wasm("raw")),
        sha256(wasm("raw")),
    )
    layer = gzip.compress(tar_bytes({"etc/x.txt": b"x", "plugin.wasm": wasm("tar")}))
    module, size, sha = extract_module(_file(layer), TAR_GZ)
    assert module.read() == wasm("tar") and "sha256:" + sha == sha256(wasm("tar"))


def tgz(files: dict[str, bytes]) -> bytes:
    """A tar+gzip layer, the same bytes every time (pytest-xdist workers must collect the
    same test ids, and gzip's header holds the time by default)."""
    return gzip.compress(tar_bytes(files), mtime=0)


@pytest.mark.parametrize(
    ("data", "media", "expected"),
    [
        (b"MZ\x90\x00\0\0\0\0", WASM_LAYER, "no \\\\0asm magic"),
        (b"\0asm\x01\0\0", WASM_LAYER, "7 bytes"),  # under 8 bytes is no module
        (b"not gzip at all", TAR_GZ, "not a readable tar"),
        (tgz({"p.wasm": b"ELF"}), TAR_GZ, "3 bytes"),
        (tgz({"p.wasm": b"\x7fELF\x02\x01\x01\0"}), TAR_GZ, "no \\\\0asm"),
        (tgz({"a.wasm": wasm(), "b.wasm": wasm()}), TAR_GZ, "holds 2"),
    ],
)
def test_extract_refuses(data: bytes, media: str, expected: str) -> None:
    """A layer that is not one Wasm module (no magic, too short, not a tar, two modules) is
    refused with NotWasm saying why."""
    with pytest.raises(NotWasm, match=expected):
        extract_module(_file(data), media)


def test_pick_layer_prefers_the_wasm_layer() -> None:
    wasm_layer = {"mediaType": WASM_LAYER, "digest": "sha256:1"}
    tar_layer = {"mediaType": TAR_GZ, "digest": "sha256:2"}
    assert pick_layer({"layers": [tar_layer, wasm_layer]}) == wasm_layer
    assert pick_layer({"layers": [tar_layer]}) == tar_layer
    with pytest.raises(NotWasm, match="2 candidate layers"):
        pick_layer({"layers": [tar_layer, tar_layer]})
    with pytest.raises(NotWasm, match="no Wasm or tar"):
        pick_layer({"layers": [{"mediaType": "text/plain", "digest": "sha256:3"}]})


def test_pick_platform_is_the_same_on_every_machine() -> None:
    def child(digest: str, os_name: str, arch: str, **annotations: str) -> dict:
        entry = {"digest": digest, "platform": {"os": os_name, "architecture": arch}}
        return {**entry, "annotations": annotations} if annotations else entry

    amd = child("sha256:a", "linux", "amd64")
    arm = child("sha256:b", "linux", "arm64")
    wasi = child("sha256:c", "wasip1", "wasm")
    attestation = child("sha256:d", "unknown", "unknown")
    labelled = child(
        "sha256:e", "linux", "riscv64", **{"vnd.docker.reference.type": "attestation-manifest"}
    )
    mips = child("sha256:f", "linux", "mips")
    assert pick_platform({"manifests": [arm]}, "r") == arm  # the only one, whatever it says
    assert pick_platform({"manifests": [arm, amd]}, "r") == amd  # never this machine's
    assert pick_platform({"manifests": [arm, amd, wasi]}, "r") == wasi
    assert pick_platform({"manifests": [attestation, labelled, mips, arm]}, "r") == mips
    with pytest.raises(PullError, match="no image entry"):
        pick_platform({"manifests": [attestation, labelled]}, "r")


def test_gz_sibling_is_deterministic_and_replaces_a_stale_one(tmp_path: Path) -> None:
    (tmp_path / "a/1.0.0").mkdir(parents=True)
    (tmp_path / "a/1.0.0/plugin.wasm.gz").write_bytes(gzip.compress(b"foreign", mtime=1))
    module = wasm("gz") * 100
    write_module(tmp_path, "a", "1.0.0", io.BytesIO(module), gzip_sibling=True)
    first = (tmp_path / "a/1.0.0/plugin.wasm.gz").read_bytes()
    assert gzip.decompress(first) == module
    assert first[3] == 0 and first[4:8] == b"\0\0\0\0"  # no FNAME flag, mtime 0
    assert first[8] == 2  # XFL: best compression
    os.utime(tmp_path / "a/1.0.0/plugin.wasm", (1, 1))
    write_module(tmp_path, "b", "1.0.0", io.BytesIO(module), gzip_sibling=True)
    assert (tmp_path / "b/1.0.0/plugin.wasm.gz").read_bytes() == first


def test_remove_temporaries_of_a_killed_pull(tmp_path: Path) -> None:
    write_module(tmp_path / "out", "a", "1.0.0", io.BytesIO(wasm("a")))
    ours = [
        tmp_path / "out/a/1.0.0/.plugin.wasm.k2j3_x.tmp",
        tmp_path / "out/a/1.0.0/.plugin.wasm.gz.abc123.tmp",
        tmp_path / ".plugins.lock.json.q1w2e3.tmp",
    ]
    theirs = [tmp_path / "out/a/1.0.0/.notes.tmp", tmp_path / "out/a/1.0.0/keep.tmp"]
    for path in ours + theirs:
        path.write_bytes(b"x")
    assert sorted(remove_temporaries(tmp_path / "out", tmp_path)) == sorted(ours)
    assert all(p.exists() for p in theirs) and not any(p.exists() for p in ours)


def test_progress_on_a_terminal_redraws_one_line() -> None:
    stream = io.StringIO()
    progress = Progress(total=2, stream=stream, live=True)
    progress.started("a")
    progress.received(2048)
    progress.finished("a", "pulled a 1.0.0")
    progress.finished("b", "boom", ok=False)
    progress.close()
    text = stream.getvalue()
    assert "\r\x1b[K[0/2] 0 B a" in text
    assert "hps pull: pulled a 1.0.0\n" in text
    assert "[2/2, 1 failed]" in text
    assert "boom" not in text  # failures are listed once, at the end


def test_progress_in_a_log_is_plain_lines() -> None:
    stream = io.StringIO()
    progress = Progress(total=1, stream=stream, live=False)
    progress.started("a")
    progress.received(10)
    progress.finished("a", "pulled a 1.0.0")
    progress.close()
    assert stream.getvalue() == "hps pull: pulled a 1.0.0\n"
