"""Unit: gzip variants on disk, checked, made and pruned (hps.variants), with a synchronous
runner; and, in memory, what pruning does to a server's cache and downloads."""

from __future__ import annotations

import gzip
import os
import random
import shutil
import time
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred
from twisted.logger import Logger, formatEvent

from hps.catalog import Catalog, scan
from hps.variants import (
    Bad,
    GzipVariants,
    Prepared,
    cached,
    check_sibling,
    compress,
    prepare,
    prune,
    usable_dir,
)
from tests.support.server import Tree, wasm_bytes

URL = "/plugins/demo/1.0.0/plugin.wasm"


@pytest.fixture
def module(tree: Tree):
    body = tree.add("demo", "1.0.0", size=200_000)
    artifact = scan(str(tree.root)).get("demo", "1.0.0")
    return artifact, body, Path(artifact.path + ".gz")


def test_a_matching_sibling_is_used(module) -> None:
    artifact, body, sibling = module
    sibling.write_bytes(gzip.compress(body, 9, mtime=0))
    found = check_sibling(artifact)
    assert found is not None and found.path == str(sibling)
    assert found.size == sibling.stat().st_size


@pytest.mark.parametrize("make", [
    lambda body: gzip.compress(body[:-1] + b"!", mtime=0),  # other bytes
    lambda body: gzip.compress(body, mtime=0) + b"trailing",  # more after the member
    lambda body: gzip.compress(body, mtime=0)[:-9],  # truncated
    lambda body: b"not gzip at all",
    lambda body: gzip.compress(body + bytes(50_000_000), mtime=0),  # a bomb: stops early
    lambda body: gzip.compress(os.urandom(300_000), 0, mtime=0),  # not smaller
])
def test_a_sibling_that_is_not_the_module_is_refused(module, make) -> None:
    artifact, body, sibling = module
    sibling.write_bytes(make(body))
    with pytest.raises(Bad):
        check_sibling(artifact)


def test_a_symlinked_sibling_is_not_followed(module, tmp_path: Path) -> None:
    artifact, body, sibling = module
    outside = tmp_path / "outside.gz"
    outside.write_bytes(gzip.compress(body, mtime=0))
    sibling.symlink_to(outside)
    assert check_sibling(artifact) is None


def test_without_a_sibling_the_module_is_compressed_into_the_cache(module,
                                                                   tmp_path: Path) -> None:
    artifact, body, _ = module
    directory = tmp_path / "gzip"
    directory.mkdir()
    result = prepare(artifact, str(directory))
    found = result.variant
    assert result == Prepared(found) and found is not None
    assert found.path == str(directory / f"{artifact.sha256}.gz")
    assert gzip.decompress(Path(found.path).read_bytes()) == body
    assert [p.name for p in directory.iterdir()] == [f"{artifact.sha256}.gz"]  # no temp left
    again = prepare(artifact, str(directory)).variant  # reused, not rewritten
    assert again is not None and again.identity == found.identity
    unlinked = prepare(artifact, None).variant
    assert unlinked is not None and unlinked.source is not None and unlinked.path == ""


def test_a_module_gzip_cannot_shrink_leaves_nothing_in_the_cache(tree: Tree,
                                                                  tmp_path: Path) -> None:
    tree.add("noise", "1.0.0", body=b"\0asm\x01\0\0\0" + os.urandom(100_000))
    artifact = scan(str(tree.root)).get("noise", "1.0.0")
    directory = tmp_path / "gzip"
    directory.mkdir()
    assert prepare(artifact, str(directory)) == Prepared()
    assert list(directory.iterdir()) == []  # the staged file went with the attempt


class Runner:
    """Runs each job when told, so the test sees the queue between jobs."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Deferred, object, tuple]] = []

    def __call__(self, function, *args) -> Deferred:
        d: Deferred = Deferred()
        self.jobs.append((d, function, args))
        return d

    def step(self) -> str:
        """Run the next job; the name of its module, or "prune"."""
        d, function, args = self.jobs.pop(0)
        d.callback(function(*args))
        return "prune" if function is prune else args[0].name


def test_a_waiting_request_moves_its_module_to_the_front(tree: Tree, tmp_path: Path) -> None:
    for i in range(4):
        tree.add(f"p{i}", "1.0.0", body=wasm_bytes(50_000, seed=i))
    catalog = scan(str(tree.root))
    runner = Runner()
    variants = GzipVariants(str(tmp_path / "cache"), run=runner)
    variants.on_swap(Catalog(root=str(tree.root)), catalog)
    assert runner.step() == "prune"  # first after a swap: it frees room for the new ones
    assert variants.pending == 4
    waited: list[object] = []
    variants.when_ready(catalog.get("p3", "1.0.0")).addCallback(waited.append)
    assert runner.step() == "p0"  # already running when the request came
    assert runner.step() == "p3" and waited == [None]
    assert variants.get(catalog.get("p3", "1.0.0")) is not None
    cancelled = variants.when_ready(catalog.get("p2", "1.0.0"))
    cancelled.cancel()  # a request that timed out: the job still finishes cleanly
    cancelled.addErrback(lambda _: None)
    while runner.jobs:
        runner.step()
    assert variants.pending == 0
    assert variants.when_ready(catalog.get("p1", "1.0.0")).called  # nothing to wait for


def foreign(body: bytes) -> bytes:
    """Other bytes a gzip trailer says are the module: the old size-only check took them."""
    other = gzip.compress(body[:-1] + b"!", mtime=0)
    assert other[-4:] == len(body).to_bytes(4, "little")
    return other


def test_a_cached_variant_is_reused_only_if_it_is_the_module(module, tmp_path: Path) -> None:
    artifact, body, _ = module
    directory = usable_dir(str(tmp_path / "cache"))
    assert directory == str(tmp_path / "cache" / "gzip")
    made = compress(artifact, directory)
    assert made is not None and cached(artifact, directory) == made
    variant = Path(made.path)
    for planted in (foreign(body), gzip.compress(body[:1000], mtime=0), b"\x1f\x8b" + bytes(30)):
        variant.write_bytes(planted)
        with pytest.raises(Bad):
            cached(artifact, directory)
        assert not variant.exists(), "refused, and deleted"
    assert cached(artifact, directory) is None


def test_a_symlink_in_the_cache_is_neither_followed_nor_deleted(module, tmp_path: Path) -> None:
    artifact, body, _ = module
    directory = tmp_path / "gzip"
    directory.mkdir()
    outside = tmp_path / "outside.gz"
    outside.write_bytes(foreign(body))
    link = directory / f"{artifact.sha256}.gz"
    link.symlink_to(outside)
    assert cached(artifact, str(directory)) is None
    assert link.is_symlink() and outside.read_bytes() == foreign(body)
    result = prepare(artifact, str(directory))  # atomic: the rename replaces the link itself
    assert result == Prepared(result.variant) and result.variant is not None
    assert not link.is_symlink() and gzip.decompress(link.read_bytes()) == body
    assert outside.read_bytes() == foreign(body)


def test_a_planted_variant_is_deleted_made_again_and_never_served(tree: Tree, harness,
                                                                   tmp_path: Path) -> None:
    body = tree.add("demo", "1.0.0", size=200_000)
    cache = tmp_path / "cache" / "gzip"
    cache.mkdir(parents=True)
    variant = cache / f"{Tree.sha256(body)}.gz"
    variant.write_bytes(foreign(body))
    server = harness(tree.root)
    reply = server.get(URL, Accept_Encoding="gzip")
    assert reply.status == 200 and reply.header("Content-Encoding") == "gzip"
    assert gzip.decompress(reply.body) == body and reply.body == variant.read_bytes()
    lines = [line for line in server.log().splitlines() if str(variant) in line]
    assert len(lines) == 1 and "does not decompress to the module's bytes" in lines[0]
    assert "compressing" in lines[0]


def test_a_module_gone_while_compressing_is_not_a_write_failure(tree: Tree,
                                                               tmp_path: Path) -> None:
    tree.add("a", "1.0.0", size=50_000)
    tree.add("b", "1.0.0", size=50_000)
    catalog = scan(str(tree.root))
    runner = Runner()
    variants = GzipVariants(str(tmp_path / "cache"), run=runner)
    warnings: list[str] = []
    variants.log = Logger(observer=lambda event: warnings.append(formatEvent(event)))
    variants.on_swap(Catalog(root=catalog.root), catalog)
    shutil.rmtree(tree.root / "a")  # evicted (pull-through) or reloaded away
    assert runner.step() == "prune"
    variants.directory = str(tmp_path / "missing")  # for "b": a real write failure (ENOENT too)
    assert runner.step() == "a"
    assert variants.get(catalog.get("a", "1.0.0")) is None
    assert not variants.write_failed and warnings == []
    assert runner.step() == "b"
    assert variants.write_failed and len(warnings) == 1 and "serving identity" in warnings[0]


def test_an_unwritable_cache_dir_is_noticed(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert usable_dir(str(blocker / "cache")) is None


def test_a_gzip_dir_not_the_servers_own_is_not_used(tmp_path: Path) -> None:
    """Someone who could write cache_dir planted ``gzip``: one warning, nothing written there."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "cache").mkdir(mode=0o777)
    (tmp_path / "cache" / "gzip").symlink_to(elsewhere)
    lines: list[str] = []
    log = Logger(observer=lambda event: lines.append(formatEvent(event)))
    assert usable_dir(str(tmp_path / "cache"), log) is None
    assert list(elsewhere.iterdir()) == []
    assert lines == [f"cannot use the gzip cache: {tmp_path / 'cache' / 'gzip'} is a symlink; "
                     "hps uses only a directory of its own there; gzip variants go to unlinked "
                     "temporary files"]


def test_incompressible_modules_have_no_variant(tree: Tree, tmp_path: Path) -> None:
    tree.add("noise", "1.0.0", body=b"\0asm\1\0\0\0" + random.Random(0).randbytes(4000))
    artifact = scan(str(tree.root)).get("noise", "1.0.0")
    assert prepare(artifact, str(tmp_path)) == Prepared()


def test_a_variant_whose_file_changed_is_made_again(module, tmp_path: Path) -> None:
    artifact, _, _ = module
    runner = Runner()
    variants = GzipVariants(str(tmp_path / "cache"), run=runner)
    catalog = scan(str(Path(artifact.path).parents[2]))
    variants.on_swap(Catalog(root=catalog.root), catalog)
    assert [runner.step(), runner.step()] == ["prune", "demo"]
    assert variants.get(artifact) is not None
    variants.drop(artifact)
    assert variants.get(artifact) is None and variants.pending == 1
    runner.step()
    assert variants.get(artifact) is not None


def test_without_gzip_no_variant_is_made_or_offered(tree: Tree, harness) -> None:
    """``--no-gzip`` builds no GzipVariants: nothing is compressed, and neither modules nor
    listings name a variant or Vary."""
    body = tree.add("demo", "1.0.0", size=100_000)
    server = harness(tree.root, gzip=False)
    assert server.site.resource.transfer.variants is None
    module = server.get("/plugins/demo/1.0.0/plugin.wasm", Accept_Encoding="gzip")
    listing = server.get("/plugins/index.json", Accept_Encoding="gzip")
    for reply in (module, listing):
        assert reply.header("Content-Encoding") is None and reply.header("Vary") is None
    assert module.body == body
    assert server.metrics()["hps_gzip_variants_pending"] == 0


def test_prune_deletes_only_unneeded_variants_and_stale_temporaries(tmp_path: Path) -> None:
    directory = tmp_path / "gzip"
    directory.mkdir()
    live, dead = "a" * 64, "b" * 64
    (directory / f"{live}.gz").write_bytes(b"live")
    (directory / f"{dead}.gz").write_bytes(b"dead!")
    old_temporary = directory / f".{dead}.gz.x1y2.tmp"
    old_temporary.write_bytes(b"crashed")
    hours_ago = time.time() - 7200
    os.utime(old_temporary, (hours_ago, hours_ago))
    outside = tmp_path / "outside.gz"
    outside.write_bytes(b"not ours")
    kept = {
        f".{live}.gz.z9.tmp",  # young: maybe another process writing right now
        "c" * 64 + ".gz",  # a symlink: neither followed nor deleted
        "d" * 64 + ".gz",  # a directory
        "notes.txt", "B" * 64 + ".gz", ".probe-x", f"{live}.gz",
    }
    (directory / f".{live}.gz.z9.tmp").write_bytes(b"writing")
    (directory / ("c" * 64 + ".gz")).symlink_to(outside)
    (directory / ("d" * 64 + ".gz")).mkdir()
    for name in ("notes.txt", "B" * 64 + ".gz", ".probe-x"):
        (directory / name).write_bytes(b"foreign")
    assert prune(str(directory), frozenset({live})) == (2, len(b"dead!") + len(b"crashed"))
    assert {p.name for p in directory.iterdir()} == kept
    assert outside.read_bytes() == b"not ours"
    assert prune(str(tmp_path / "missing"), frozenset()) == (0, 0)


def test_swaps_in_a_row_prune_once_never_beside_a_compression(tree: Tree,
                                                             tmp_path: Path) -> None:
    tree.add("a", "1.0.0", size=50_000)
    first = scan(str(tree.root))
    runner = Runner()
    variants = GzipVariants(str(tmp_path / "cache"), run=runner)
    variants.on_swap(Catalog(root=first.root), first)
    assert runner.step() == "prune" and len(runner.jobs) == 1  # "a" waits for it
    tree.add("b", "1.0.0", size=50_000)
    second = scan(str(tree.root))
    variants.on_swap(first, second)  # while "a" is being compressed...
    variants.on_swap(second, second)  # ...twice
    assert len(runner.jobs) == 1, "one job at a time"
    assert [runner.step(), runner.step(), runner.step()] == ["a", "prune", "b"]
    assert not runner.jobs
    variants.on_swap(second, Catalog(root=second.root, loaded=False))
    assert not runner.jobs, "an unloaded snapshot prunes nothing"


def test_a_replaced_module_loses_its_variant_but_its_download_completes(tree: Tree, harness,
                                                                         tmp_path: Path) -> None:
    """Replaced (hot reload) while a gzip download of it waits on a reader: its variant file
    is deleted after the rescan's swap; the response, holding the open file, sends it whole."""
    old = tree.add("demo", "1.0.0", size=1_000_000)  # a gzip a few times the send buffer
    sibling = tree.root / "kept" / "1.0.0" / "plugin.wasm.gz"
    tree.add("kept", "1.0.0", size=100_000)
    sibling.write_bytes(gzip.compress(tree.root.joinpath("kept/1.0.0/plugin.wasm").read_bytes()))
    packed_sibling = sibling.read_bytes()
    server = harness(tree.root)
    cache = tmp_path / "cache" / "gzip"
    (cache / "notes.txt").write_bytes(b"foreign")
    variant = cache / f"{Tree.sha256(old)}.gz"
    assert {p.name for p in cache.iterdir()} == {variant.name, "notes.txt"}
    packed = variant.read_bytes()
    client = server.connect()
    client.stop_reading()
    client.send(f"GET {URL} HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n".encode())
    assert 0 < client.transport.buffered() < len(packed) and client.transport.taken == 0
    new = tree.add("demo", "1.0.0", body=wasm_bytes(300_000, seed=7))
    before = server.metrics().get("hps_gzip_variants_pruned_total", 0.0)
    server.rescan()
    assert server.metrics()["hps_gzip_variants_pruned_total"] == before + 1
    assert {p.name for p in cache.iterdir()} == {f"{Tree.sha256(new)}.gz", "notes.txt"}
    assert sibling.read_bytes() == packed_sibling  # the tree is never pruned
    assert f"deleted 1 files ({len(packed)} bytes) no served module needs" in server.log()
    client.resume_reading()
    reply = client.take()
    assert reply.status == 200 and reply.complete and reply.header("Content-Encoding") == "gzip"
    assert reply.body == packed and gzip.decompress(reply.body) == old
    assert gzip.decompress(server.get(URL, Accept_Encoding="gzip").body) == new
    assert server.get("/plugins/kept/1.0.0/plugin.wasm",
                      Accept_Encoding="gzip").body == packed_sibling
    server.rescan()  # nothing left to delete: no second line
    assert server.log().count("no served module needs") == 1


def test_a_restart_prunes_what_the_new_tree_does_not_use(tree: Tree, harness,
                                                         tmp_path: Path) -> None:
    kept = tree.add("kept", "1.0.0", size=100_000)
    gone = tree.add("gone", "1.0.0", size=100_000)
    cache = tmp_path / "cache" / "gzip"
    harness(tree.root).close()  # the shutdown's unloaded snapshot deletes nothing
    assert {p.name for p in cache.iterdir()} == {f"{Tree.sha256(kept)}.gz",
                                                f"{Tree.sha256(gone)}.gz"}
    shutil.rmtree(tree.root / "gone")
    server = harness(tree.root)
    assert [p.name for p in cache.iterdir()] == [f"{Tree.sha256(kept)}.gz"]
    assert server.get("/plugins/kept/1.0.0/plugin.wasm", Accept_Encoding="gzip").body == (
        cache / f"{Tree.sha256(kept)}.gz").read_bytes()
