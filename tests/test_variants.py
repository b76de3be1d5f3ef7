"""Unit: gzip variants on disk, checked and made (hps.variants), with a synchronous runner."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred

from hps.catalog import Catalog, scan
from hps.variants import Bad, GzipVariants, check_sibling, prepare
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
