"""Unit: gzip variants on disk, checked and made (hps.variants), with a synchronous runner."""

from __future__ import annotations

import gzip
import os
import random
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred

from hps.catalog import Catalog, scan
from hps.variants import (
    Bad,
    GzipVariants,
    cached,
    check_sibling,
    compress,
    prepare,
    usable_dir,
)
from tests.support.server import Tree, wasm_bytes


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
    found, bad, failed = prepare(artifact, str(directory))
    assert bad is failed is None and found is not None
    assert found.path == str(directory / f"{artifact.sha256}.gz")
    assert gzip.decompress(Path(found.path).read_bytes()) == body
    assert [p.name for p in directory.iterdir()] == [f"{artifact.sha256}.gz"]  # no temp left
    again, _, _ = prepare(artifact, str(directory))  # reused, not rewritten
    assert again is not None and again.identity == found.identity
    unlinked, _, _ = prepare(artifact, None)
    assert unlinked is not None and unlinked.source is not None and unlinked.path == ""


def test_a_module_gzip_cannot_shrink_leaves_nothing_in_the_cache(tree: Tree,
                                                                  tmp_path: Path) -> None:
    tree.add("noise", "1.0.0", body=b"\0asm\x01\0\0\0" + os.urandom(100_000))
    artifact = scan(str(tree.root)).get("noise", "1.0.0")
    directory = tmp_path / "gzip"
    directory.mkdir()
    assert prepare(artifact, str(directory)) == (None, None, None)
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
        d, function, args = self.jobs.pop(0)
        artifact = args[0]
        d.callback(function(*args))
        return artifact.name


def test_a_waiting_request_moves_its_module_to_the_front(tree: Tree, tmp_path: Path) -> None:
    for i in range(4):
        tree.add(f"p{i}", "1.0.0", body=wasm_bytes(50_000, seed=i))
    catalog = scan(str(tree.root))
    runner = Runner()
    variants = GzipVariants(str(tmp_path / "cache"), run=runner)
    variants.on_swap(Catalog(root=str(tree.root)), catalog)
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


def test_a_cached_variant_is_trusted_only_if_its_trailer_gives_the_size(module,
                                                                        tmp_path: Path) -> None:
    artifact, body, _ = module
    directory = usable_dir(str(tmp_path / "cache"))
    assert directory == str(tmp_path / "cache" / "gzip")
    made = compress(artifact, directory)
    assert made is not None and cached(artifact, directory) is not None
    Path(made.path).write_bytes(gzip.compress(body[:1000], mtime=0))
    assert cached(artifact, directory) is None, "a truncated or foreign file"


def test_an_unwritable_cache_dir_is_noticed(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert usable_dir(str(blocker / "cache")) is None


def test_incompressible_modules_have_no_variant(tree: Tree, tmp_path: Path) -> None:
    tree.add("noise", "1.0.0", body=b"\0asm\1\0\0\0" + random.Random(0).randbytes(4000))
    artifact = scan(str(tree.root)).get("noise", "1.0.0")
    assert prepare(artifact, str(tmp_path)) == (None, None, None)


def test_a_variant_whose_file_changed_is_made_again(module, tmp_path: Path) -> None:
    artifact, _, _ = module
    runner = Runner()
    variants = GzipVariants(str(tmp_path / "cache"), run=runner)
    catalog = scan(str(Path(artifact.path).parents[2]))
    variants.on_swap(Catalog(root=catalog.root), catalog)
    runner.step()
    assert variants.get(artifact) is not None
    variants.drop(artifact)
    assert variants.get(artifact) is None and variants.pending == 1
    runner.step()
    assert variants.get(artifact) is not None


def test_disabled_variants_do_nothing(module, tmp_path: Path) -> None:
    artifact, _, _ = module
    variants = GzipVariants(str(tmp_path), enabled=False, run=Runner())
    catalog = scan(str(Path(artifact.path).parents[2]))
    variants.on_swap(Catalog(root=catalog.root), catalog)
    assert variants.pending == 0 and variants.get(artifact) is None
    assert not variants.preparing(artifact)
