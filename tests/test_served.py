"""The record of first-served digests: a module replaced under the same version is named by
the server (log, metrics, index.json, landing page), and a restart over the same cache_dir
still knows the first bytes.

The whole server runs in memory (tests/support/memory.py); a reload is the harness's rescan,
a restart a new server over the same ``cache_dir``. The record's own rules (bound, bad
files, a cache directory it cannot use, pull-through) are driven through ``on_swap``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from twisted.internet.defer import maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent, globalLogPublisher

from hps.catalog import examine, scan, unloaded
from hps.config import Config
from hps.served import MAX_ABSENT, RECORD_DIR, RECORD_FILE, Change, ServedRecord
from hps.state import ServerState
from hps.upstream import Upstream
from tests.support.memory import Harness
from tests.support.server import Tree, wasm_bytes

A, B = wasm_bytes(3000, seed=1), wasm_bytes(3000, seed=2)
SHA_A, SHA_B = Tree.sha256(A), Tree.sha256(B)
CHANGED = '{plugin="key-auth",version="1.0.0"}'


def index(server: Harness) -> dict:
    reply = server.get("/plugins/index.json")
    assert reply.status == 200
    return json.loads(reply.body)


def warnings(server: Harness) -> list[str]:
    return [line for line in server.events if "under the same URL" in line]


def test_a_replaced_module_is_named_and_a_restart_still_knows(tree: Tree, harness,
                                                               tmp_path: Path) -> None:
    tree.add("key-auth", "1.0.0", A)
    tree.add("basic-auth", "2.0.0")
    first = harness(tree.root)
    assert index(first)["changed"] == []
    before = first.metrics()
    assert f"hps_artifact_changed{CHANGED}" not in before

    tree.add("key-auth", "1.0.0", B)  # other bytes, same version: the same URL
    first.rescan()
    assert first.get("/plugins/key-auth/1.0.0/plugin.wasm").body == B  # served as it is
    expected = [{"name": "key-auth", "version": "1.0.0", "first": SHA_A, "now": SHA_B}]
    assert index(first)["changed"] == expected
    assert warnings(first) == [
        f"key-auth 1.0.0: other bytes under the same URL: first served sha256 {SHA_A}, now "
        f"{SHA_B}; gateways that cached the URL keep the first (see docs/operations.md)"]
    after = first.metrics()
    assert after[f"hps_artifact_changed{CHANGED}"] == 1
    assert (after[f"hps_artifact_changes_total{CHANGED}"]
            - before.get(f"hps_artifact_changes_total{CHANGED}", 0)) == 1
    landing = first.get("/").body.decode()
    assert "Bytes changed under the same URL" in landing and SHA_A in landing
    assert SHA_B in landing
    first.rescan()  # nothing new: no second line
    assert len(warnings(first)) == 1
    first.close()

    # A restart over the same cache_dir: the first digest is still the first.
    assert ("key-auth", "1.0.0", SHA_A[:4], SHA_B[:4]) in stored(tmp_path / "cache")
    second = harness(tree.root)
    assert index(second)["changed"] == expected
    assert second.metrics()[f"hps_artifact_changed{CHANGED}"] == 1
    assert warnings(second) == []  # said by the run that saw it change

    # The way to end it without a new digest: put the first bytes back.
    tree.add("key-auth", "1.0.0", A)
    second.rescan()
    assert index(second)["changed"] == []
    assert f"hps_artifact_changed{CHANGED}" not in second.metrics()
    assert any(f"the first bytes are back under its URL (sha256 {SHA_A}, was {SHA_B})" in line
               for line in second.events)


def test_deleting_the_record_accepts_the_new_bytes(tree: Tree, harness, tmp_path: Path) -> None:
    tree.add("key-auth", "1.0.0", A)
    first = harness(tree.root)
    tree.add("key-auth", "1.0.0", B)
    first.rescan()
    assert len(index(first)["changed"]) == 1
    first.close()
    (tmp_path / "cache" / RECORD_DIR / RECORD_FILE).unlink()  # docs/operations.md: acknowledge
    second = harness(tree.root)
    assert index(second)["changed"] == []
    assert json.loads((tmp_path / "cache" / RECORD_DIR / RECORD_FILE).read_text())["served"] == [
        {"name": "key-auth", "version": "1.0.0", "first": SHA_B, "now": SHA_B}]


def test_the_per_plugin_index_has_no_changed_key(tree: Tree, harness) -> None:
    tree.add("key-auth", "1.0.0", A)
    server = harness(tree.root)
    assert "changed" not in json.loads(server.get("/plugins/key-auth/index.json").body)


# -- the record on its own ----------------------------------------------------------------


def recording(cache: Path, limit: int = MAX_ABSENT) -> tuple[ServedRecord, list[str]]:
    record = ServedRecord(str(cache), maybeDeferred, limit=limit)
    lines: list[str] = []
    record.log = Logger(observer=lambda event: lines.append(formatEvent(event)))
    return record, lines


def stored(cache: Path) -> list[tuple[str, str, str, str]]:
    document = json.loads((cache / RECORD_DIR / RECORD_FILE).read_text())
    return [(e["name"], e["version"], e["first"][:4], e["now"][:4]) for e in document["served"]]


def test_gone_pairs_are_kept_up_to_the_bound_oldest_gone_first(tmp_path: Path) -> None:
    tree, cache = Tree(tmp_path / "tree"), tmp_path / "cache"
    record, _ = recording(cache, limit=2)
    old = unloaded(str(tree.root))
    for version in ("1", "2", "3", "4"):
        tree.add("p", version)
        new = scan(str(tree.root))
        record.on_swap(old, new)
        old = new
        os.unlink(tree.root / "p" / version / "plugin.wasm")
    record.on_swap(old, scan(str(tree.root)))  # every version gone now
    assert [key for key in record.entries] == [("p", "3"), ("p", "4")]
    assert [e[:2] for e in stored(cache)] == [("p", "3"), ("p", "4")]


def test_a_bad_record_file_is_one_line_and_a_new_record(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / RECORD_DIR).mkdir(parents=True)
    path = cache / RECORD_DIR / RECORD_FILE
    lines: list[str] = []
    observer = lambda event: lines.append(formatEvent(event))  # noqa: E731
    globalLogPublisher.addObserver(observer)  # the file is read as the record is made
    try:
        path.write_text('{"format": 1, "served": [{"name": "../x"}]}')
        assert ServedRecord(str(cache), maybeDeferred).entries == {}
        path.write_text("not json")
        assert ServedRecord(str(cache), maybeDeferred).entries == {}
    finally:
        globalLogPublisher.removeObserver(observer)
    assert len(lines) == 2 and all("starting a new record of served digests" in x for x in lines)
    assert "entry 0 is not a name, version and two sha256 digests" in lines[0]


def test_an_unusable_cache_dir_keeps_the_record_in_memory(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.write_text("a file, not a directory")
    tree = Tree(tmp_path / "tree")
    tree.add("key-auth", "1.0.0", A)
    record = ServedRecord(str(cache), maybeDeferred)
    assert record.path is None
    first = scan(str(tree.root))
    record.on_swap(unloaded(str(tree.root)), first)
    tree.add("key-auth", "1.0.0", B)
    record.on_swap(first, scan(str(tree.root)))
    assert record.changed == (Change("key-auth", "1.0.0", SHA_A, SHA_B),)


def test_writes_never_overlap_and_the_last_state_lands(tmp_path: Path) -> None:
    """Swaps during a write wait for it, then coalesce into one more write."""
    from twisted.internet.defer import Deferred

    from hps import served

    pending: list[tuple[Deferred, tuple]] = []

    def run(work, *args):  # a thread that finishes when the test says
        d: Deferred = Deferred()
        pending.append((d, args))
        return d

    tree, cache = Tree(tmp_path / "tree"), tmp_path / "cache"
    record = ServedRecord(str(cache), run)
    old = unloaded(str(tree.root))
    for version in ("1", "2", "3"):
        tree.add("p", version)
        new = scan(str(tree.root))
        record.on_swap(old, new)
        old = new
    assert len(pending) == 1  # the first write; the next two swaps wait for it
    d, args = pending.pop()
    served.write(*args)
    d.callback(None)
    assert len(pending) == 1 and [k for k, _ in pending[0][1][1]] == [
        ("p", "1"), ("p", "2"), ("p", "3")]


def test_a_pull_through_that_brings_other_bytes_is_named(tmp_path: Path) -> None:
    """Fetched, evicted, fetched again from a registry whose tag moved meanwhile."""
    root, cache = tmp_path / "tree", tmp_path / "cache"
    root.mkdir()
    tree_cache = cache / "plugins"
    bodies = [A, B]

    class Source:
        def fetch(self, name: str, version: str):
            target = tree_cache / name / version / "plugin.wasm"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(bodies.pop(0))
            return succeed(examine(str(tree_cache), name, version))

    clock = Clock()
    state = ServerState(config=Config(root=str(root)), catalog=scan(str(root)))
    record, lines = recording(cache)
    state.on_swap.append(record.on_swap)
    upstream = Upstream(state, Source(), clock, ["ai-*"], str(tree_cache))
    upstream.wait("ai-proxy", "1.0.0")
    upstream.evict(("ai-proxy", "1.0.0"))
    assert state.catalog.get("ai-proxy", "1.0.0") is None and record.changed == ()
    upstream.wait("ai-proxy", "1.0.0")
    assert record.changed == (Change("ai-proxy", "1.0.0", SHA_A, SHA_B),)
    assert [line for line in lines if "other bytes" in line] == [
        f"ai-proxy 1.0.0: other bytes under the same URL: first served sha256 {SHA_A}, now "
        f"{SHA_B}; gateways that cached the URL keep the first (see docs/operations.md)"]
