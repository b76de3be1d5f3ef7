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
from hps.pull.tree import link_module, read_local, write_module
from tests.support.registry import sha256, tar_bytes, wasm

TAR_GZ = sorted(TAR_LAYERS)[0]


class Exploding(io.BytesIO):
    def read(self, size: int = -1) -> bytes:
        if self.tell():
            raise OSError(28, "No space left on device")
        return super().read(4)


def test_write_module_failure_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    write_module(tmp_path, "a", "1.0.0", io.BytesIO(wasm("old")))
    with pytest.raises(OSError):
        write_module(tmp_path, "a", "1.0.0", Exploding(wasm("new") * 1000))
    assert os.listdir(tmp_path / "a/1.0.0") == ["plugin.wasm"]
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
    write_module(tmp_path, "a", "2.0.0", io.BytesIO(wasm("two")))
    write_module(tmp_path, "a", "1.0.0", io.BytesIO(wasm("one")))
    link = link_module(tmp_path, "a", "1.0.0", "a", "2.0.0")
    assert os.readlink(link) == "../2.0.0/plugin.wasm"
    assert link.read_bytes() == wasm("two")
    assert os.listdir(link.parent) == ["plugin.wasm"]


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


@pytest.mark.parametrize(
    ("data", "media", "expected"),
    [
        (b"MZ\x90\x00", WASM_LAYER, "no \\\\0asm magic"),
        (b"not gzip at all", TAR_GZ, "not a readable tar"),
        (gzip.compress(tar_bytes({"p.wasm": b"ELF"})), TAR_GZ, "no \\\\0asm magic"),
        (gzip.compress(tar_bytes({"a.wasm": wasm(), "b.wasm": wasm()})), TAR_GZ, "holds 2"),
    ],
)
def test_extract_refuses(data: bytes, media: str, expected: str) -> None:
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


def test_pick_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hps.pull.registry.current_platform", lambda: ("linux", "arm64"))
    amd = {"digest": "sha256:a", "platform": {"os": "linux", "architecture": "amd64"}}
    arm = {"digest": "sha256:b", "platform": {"os": "linux", "architecture": "arm64"}}
    assert pick_platform({"manifests": [amd]}, "r") == amd  # the only one, whatever it says
    assert pick_platform({"manifests": [amd, arm]}, "r") == arm
    with pytest.raises(PullError, match="none for linux/arm64"):
        pick_platform({"manifests": [amd, amd]}, "r")


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
