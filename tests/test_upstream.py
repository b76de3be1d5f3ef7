"""Unit: pull-through's coalescing, waits, negative cache and bounds, and drift counting.

Time is a ``MemoryReactorClock``; the registry side is a :class:`Fetches` source whose
Deferreds the test fires, so each rule is checked without threads or sleeps. The real
``RegistrySource`` against a real registry (in memory, and in one ``twistd hps``) is in
tests/test_pull_through.py.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, formatEvent
from twisted.python.failure import Failure

from hps import metrics
from hps import upstream as upstream_module
from hps.catalog import Artifact, examine, scan, scan_trees
from hps.config import Config, ConfigError, build
from hps.misses import MAX_PAIRS, Misses
from hps.pull.properties import expand
from hps.service import make_service
from hps.state import ServerState
from hps.upstream import (
    Missing,
    RegistrySource,
    Unavailable,
    Upstream,
    empty,
    make_upstream,
)
from tests.support.memory import Connection, Harness, Reactor
from tests.support.server import wasm_bytes

WAIT = 10.0
TEMPLATE = "oci://127.0.0.1:1/plugins/${name}:${version}"


class Fetches:
    """A source whose fetches the test settles by hand; counts every call."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.calls: list[tuple[str, str]] = []
        self.deferreds: list[Deferred] = []

    def fetch(self, name: str, version: str) -> Deferred:
        self.calls.append((name, version))
        self.deferreds.append(Deferred())
        return self.deferreds[-1]

    def succeed(self, index: int = -1, body: bytes | None = None) -> bytes:
        name, version = self.calls[index]
        data = body or wasm_bytes(2048, seed=len(self.calls))
        target = self.cache / name / version / "plugin.wasm"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        self.deferreds[index].callback(examine(str(self.cache), name, version))
        return data

    def fail(self, error: Exception, index: int = -1) -> None:
        self.deferreds[index].errback(Failure(error))


@pytest.fixture
def world(tmp_path: Path):
    root, cache = tmp_path / "tree", tmp_path / "cache"
    (root / "key-auth" / "2.0.0").mkdir(parents=True)
    (root / "key-auth" / "2.0.0" / "plugin.wasm").write_bytes(wasm_bytes(1000))
    clock = MemoryReactorClock()
    clock.advance(1_700_000_000)
    state = ServerState(config=Config(root=str(root)), catalog=scan(str(root)))
    source = Fetches(cache)
    upstream = Upstream(state, source, clock, ["key-auth", "ai-*"], str(cache), wait=WAIT,
                        max_pending=4, max_cached=3)
    return state, source, upstream, clock


def outcomes(deferreds: list[Deferred]) -> list:
    seen: list = []
    for d in deferreds:
        d.addBoth(lambda r: seen.append(r.value if isinstance(r, Failure) else r))
    return seen


def test_a_herd_costs_one_fetch_and_all_get_the_artifact(world) -> None:
    state, source, upstream, _clock = world
    rescans: list[None] = []
    upstream.rescan = lambda: rescans.append(None)
    seen = outcomes([upstream.wait("key-auth", "2.0.1") for _ in range(100)])
    assert source.calls == [("key-auth", "2.0.1")] and seen == []
    body = source.succeed()
    assert len(seen) == 100 and all(isinstance(a, Artifact) for a in seen)
    assert {a.sha256 for a in seen} == {state.catalog.get("key-auth", "2.0.1").sha256}
    assert Path(seen[0].path).read_bytes() == body
    assert len(rescans) == 1  # so a scan already under way cannot drop it for long
    # Now in the catalog: answered at once, no new fetch.
    assert outcomes([upstream.wait("key-auth", "2.0.1")]) == [seen[0]]
    assert len(source.calls) == 1 and not upstream.pending


def test_not_found_is_remembered_briefly(world) -> None:
    _, source, upstream, clock = world
    seen = outcomes([upstream.wait("ai-proxy", "9.9.9") for _ in range(20)])
    source.fail(Missing("no registry holds it"))
    assert len(seen) == 20 and all(isinstance(e, Missing) for e in seen)
    clock.advance(29)
    assert isinstance(outcomes([upstream.wait("ai-proxy", "9.9.9")])[0], Missing)
    assert len(source.calls) == 1
    clock.advance(2)  # the negative cache expired: ask the registry again
    upstream.wait("ai-proxy", "9.9.9")
    assert len(source.calls) == 2


def test_registry_errors_are_503_and_not_remembered(world) -> None:
    _, source, upstream, _clock = world
    seen = outcomes([upstream.wait("ai-proxy", "1.0.0"), upstream.wait("ai-proxy", "1.0.0")])
    source.fail(RuntimeError("HTTP 500 (after 2 attempts)"))
    assert [type(e) for e in seen] == [Unavailable, Unavailable]
    upstream.wait("ai-proxy", "1.0.0")
    assert len(source.calls) == 2


def test_waiters_get_503_after_the_bound_and_the_fetch_goes_on(world) -> None:
    state, source, upstream, clock = world
    seen = outcomes([upstream.wait("key-auth", "3.0.0")])
    clock.advance(WAIT - 0.1)
    assert seen == []
    clock.advance(0.2)
    assert isinstance(seen[0], Unavailable)
    late = outcomes([upstream.wait("key-auth", "3.0.0")])  # joins the same fetch
    assert len(source.calls) == 1
    source.succeed()
    assert isinstance(late[0], Artifact) and state.catalog.get("key-auth", "3.0.0")


def test_a_client_leaving_abandons_only_its_wait(world) -> None:
    _, source, upstream, _ = world
    first, second = upstream.wait("key-auth", "4.0.0"), upstream.wait("key-auth", "4.0.0")
    seen = outcomes([second])
    first.addErrback(lambda f: None)
    first.cancel()
    source.succeed()
    assert isinstance(seen[0], Artifact)


def test_a_source_that_answers_at_once(world) -> None:
    """A fetch that fails before wait() returns still answers its waiter and leaves nothing
    pending."""
    _, source, upstream, _ = world
    source.fetch = lambda name, version: fail(Missing("no"))
    assert isinstance(outcomes([upstream.wait("ai-proxy", "7.0.0")])[0], Missing)
    assert not upstream.pending


def test_outside_the_allow_list_or_grammar_never_reaches_the_registry(world) -> None:
    _, source, upstream, _ = world
    for name, version in [("basic-auth", "1.0.0"), ("ai-proxy", "-latest"),
                          ("AI-proxy", "1.0.0"), ("ai-proxy/../x", "1.0.0"),
                          ("ai-proxy", "1.0.0;rm")]:
        assert isinstance(outcomes([upstream.wait(name, version)])[0], Missing)
    assert source.calls == []


def test_the_tree_wins_a_conflict(world) -> None:
    state, source, upstream, _ = world
    mine = state.catalog.get("key-auth", "2.0.0")
    assert outcomes([upstream.wait("key-auth", "2.0.0")]) == [mine]  # no fetch at all
    seen = outcomes([upstream.wait("key-auth", "5.0.0")])
    # While the fetch runs, the tree gains the same version and a rescan swaps it in.
    target = Path(state.config.root) / "key-auth" / "5.0.0" / "plugin.wasm"
    target.parent.mkdir()
    target.write_bytes(wasm_bytes(500))
    state.swap(scan(state.config.root))
    source.succeed()
    assert seen[0].path == str(target) == state.catalog.get("key-auth", "5.0.0").path


def test_a_scan_of_both_trees_prefers_the_image_tree(tmp_path: Path) -> None:
    tree, cache = tmp_path / "tree", tmp_path / "cache"
    for root, version, seed in ((tree, "1.0.0", 1), (cache, "1.0.0", 2), (cache, "2.0.0", 3)):
        (root / "ai-proxy" / version).mkdir(parents=True, exist_ok=True)
        (root / "ai-proxy" / version / "plugin.wasm").write_bytes(wasm_bytes(900, seed=seed))
    (cache / "ai-proxy" / "2.0.0" / ".plugin.wasm.tmp").write_bytes(b"\0asm partial")
    both = scan_trees([str(tree), str(cache)])
    assert [a.version for a in both.versions("ai-proxy")] == ["1.0.0", "2.0.0"]
    assert both.get("ai-proxy", "1.0.0").path.startswith(str(tree))
    assert both.get("ai-proxy", "2.0.0").path.startswith(str(cache))
    assert both.root == str(tree)


def test_pending_fetches_are_bounded(world) -> None:
    _state, source, upstream, _ = world
    for n in range(4):
        upstream.wait("ai-proxy", f"1.0.{n}")
    assert isinstance(outcomes([upstream.wait("ai-proxy", "1.0.9")])[0], Unavailable)
    assert len(source.calls) == 4


# -- the cache tree's bound: the least recently served is evicted ------------------------


def logged(upstream: Upstream) -> list[str]:
    lines: list[str] = []
    upstream.log = Logger(observer=lambda event: lines.append(formatEvent(event)))
    return lines


def evictions() -> float:
    """``hps_upstream_evictions_total`` as scraped (the registry is process-wide)."""
    text = metrics.exposition()[0].decode()
    return float(next(line.split()[1] for line in text.splitlines()
                      if line.startswith("hps_upstream_evictions_total ")))


def fetched(upstream: Upstream, source: Fetches, version: str) -> bytes:
    seen = outcomes([upstream.wait("ai-proxy", version)])
    body = source.succeed()
    assert isinstance(seen[0], Artifact)
    return body


def versions(state: ServerState) -> list[str]:
    return [a.version for a in state.catalog.versions("ai-proxy")]


def test_beyond_the_bound_the_least_recently_served_is_evicted(world) -> None:
    state, source, upstream, _ = world
    cache, root = Path(upstream.cache_root), Path(state.config.root)
    lines, before = logged(upstream), evictions()
    for version in ("1.0.0", "1.0.1", "1.0.2"):  # the bound is 3: nothing evicted yet
        fetched(upstream, source, version)
    assert list(upstream.order) == [("ai-proxy", v) for v in ("1.0.0", "1.0.1", "1.0.2")]
    upstream.touch(state.catalog.get("ai-proxy", "1.0.0"))  # served: most recently used
    upstream.touch(state.catalog.get("key-auth", "2.0.0"))  # the image's tree: not in it
    fetched(upstream, source, "1.0.3")
    assert versions(state) == ["1.0.0", "1.0.2", "1.0.3"]
    assert sorted(p.name for p in (cache / "ai-proxy").iterdir()) == ["1.0.0", "1.0.2", "1.0.3"]
    assert list(Path(upstream.trash).iterdir()) == []  # deleted (inline here, a thread in hps)
    assert [str(p.relative_to(root)) for p in root.rglob("*")] == [
        "key-auth", "key-auth/2.0.0", "key-auth/2.0.0/plugin.wasm"]
    assert evictions() == before + 1
    assert [line for line in lines if "evicted" in line] == [
        "pull-through: evicted ai-proxy 1.0.1, the least recently served (the cache tree "
        "holds at most 3 modules)"]
    # Asked for again: a miss like any other, fetched again; now 1.0.2 makes room.
    fetched(upstream, source, "1.0.1")
    assert source.calls[-1] == ("ai-proxy", "1.0.1") and len(source.calls) == 5
    assert versions(state) == ["1.0.0", "1.0.1", "1.0.3"] and evictions() == before + 2


def test_a_module_with_a_fetch_pending_is_never_evicted(world) -> None:
    state, source, upstream, _ = world
    cache = Path(upstream.cache_root)
    first = outcomes([upstream.wait("ai-proxy", "1.0.0")])
    # Its thread wrote the file and a scan found it before the fetch settled here.
    (cache / "ai-proxy" / "1.0.0").mkdir(parents=True)
    (cache / "ai-proxy" / "1.0.0" / "plugin.wasm").write_bytes(wasm_bytes(700, seed=5))
    state.swap(scan_trees([state.config.root, str(cache)]))
    assert list(upstream.order) == [("ai-proxy", "1.0.0")]  # the least recently served
    for version in ("1.0.1", "1.0.2", "1.0.3"):
        fetched(upstream, source, version)
    assert versions(state) == ["1.0.0", "1.0.2", "1.0.3"]  # 1.0.1 went instead
    assert (cache / "ai-proxy" / "1.0.0" / "plugin.wasm").exists()
    source.succeed(0)
    assert isinstance(first[0], Artifact) and first[0].version == "1.0.0"
    assert versions(state) == ["1.0.0", "1.0.2", "1.0.3"]


def test_a_restart_orders_the_cache_tree_by_fetch_time(world, tmp_path: Path) -> None:
    state, source, _, clock = world
    cache = tmp_path / "cache"
    for age, version in enumerate(("3.0.0", "1.0.0", "2.0.0")):  # newest first
        target = cache / "ai-proxy" / version / "plugin.wasm"
        target.parent.mkdir(parents=True)
        target.write_bytes(wasm_bytes(600, seed=age))
        os.utime(target, (1_600_000_000 - age * 60,) * 2)
    state.swap(scan_trees([state.config.root, str(cache)]))
    again = Upstream(state, source, clock, ["ai-*"], str(cache), max_cached=3)
    assert [v for _, v in again.order] == ["2.0.0", "1.0.0", "3.0.0"]  # oldest file first
    fetched(again, source, "4.0.0")
    assert versions(state) == ["1.0.0", "3.0.0", "4.0.0"]
    # Whatever the paths, nothing from the image's tree is ever in the order.
    assert not Upstream(state, source, clock, ["*"], state.config.root).order


def test_a_directory_that_cannot_be_moved_is_warned_about_and_skipped_next(world) -> None:
    state, source, upstream, _ = world
    lines, before = logged(upstream), evictions()
    for version in ("1.0.0", "1.0.1", "1.0.2"):
        fetched(upstream, source, version)
    rescans: list[None] = []
    upstream.rescan = lambda: rescans.append(None)
    shutil.rmtree(Path(upstream.cache_root) / "ai-proxy" / "1.0.0")  # an operator was faster
    fetched(upstream, source, "1.0.3")
    assert evictions() == before and len(state.catalog.versions("ai-proxy")) == 4
    assert len(rescans) == 2  # the fetch's, and the failed eviction's: 1.0.0 is gone
    warned = [line for line in lines if "cannot evict" in line]
    assert len(warned) == 1 and warned[0].startswith(
        "pull-through: cannot evict ai-proxy 1.0.0: [Errno 2] No such file or directory")
    # The next fetch catches up on the bound with the others (a rescan drops 1.0.0).
    fetched(upstream, source, "1.0.4")
    assert versions(state) == ["1.0.0", "1.0.3", "1.0.4"] and evictions() == before + 2
    assert list(upstream.order)[-1] == ("ai-proxy", "1.0.4")


@pytest.mark.parametrize("planted", ["symlink", "open to all"])
def test_a_trash_not_hps_own_is_never_used(world, tmp_path: Path, planted: str) -> None:
    """Whoever can write cache_dir (/tmp/hps-cache on a shared host) got there first: hps
    neither moves modules into their directory nor deletes anything in it."""
    state, source, upstream, _ = world
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "precious.txt").write_text("keep me")
    (victim / "sub" / "x").write_text("x")
    (victim / "ai-proxy@1.0.0.0123456789ab").mkdir()  # even a name eviction gives
    if planted == "symlink":
        Path(upstream.trash).symlink_to(victim)
    else:
        victim.chmod(0o777)
        victim.rename(upstream.trash)
        victim = Path(upstream.trash)
    before = sorted(str(p.relative_to(victim)) for p in victim.rglob("*"))
    lines, evicted = logged(upstream), evictions()
    for version in ("1.0.0", "1.0.1", "1.0.2", "1.0.3"):
        fetched(upstream, source, version)
    assert sorted(str(p.relative_to(victim)) for p in victim.rglob("*")) == before
    assert evictions() == evicted and len(versions(state)) == 4  # not evicted, as a failed move
    warned = [line for line in lines if "cannot evict" in line]
    why = "is a symlink" if planted == "symlink" else "is writable by group or others"
    assert len(warned) == 1 and warned[0] == (
        f"pull-through: cannot evict ai-proxy 1.0.0: {upstream.trash} {why}; hps uses only "
        "a directory of its own there")
    assert empty(upstream.trash) == [f"{upstream.trash} {why}; hps uses only a directory "
                                     "of its own there"]
    assert sorted(str(p.relative_to(victim)) for p in victim.rglob("*")) == before


def test_what_a_crash_left_in_the_trash_is_deleted_at_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what eviction put there: names of its form, never through a symlink."""
    root, cache_dir = tmp_path / "tree", tmp_path / "cache"
    root.mkdir()
    trash = cache_dir / ".evicted"
    (trash / "ai-proxy@1.0.0.0123456789ab" / "sub").mkdir(parents=True, mode=0o700)
    (trash / "ai-proxy@1.0.0.0123456789ab" / "plugin.wasm").write_bytes(wasm_bytes(100))
    (trash / "ai-proxy@1.0.0.0123456789ab" / "sub" / "f").write_text("")
    outside = tmp_path / "outside"
    (outside / "kept").mkdir(parents=True)
    (trash / "ai-proxy@2.0.0.ba9876543210").symlink_to(outside)  # the link goes, not its target
    (trash / "notes.txt").write_text("not eviction's")
    monkeypatch.setattr(upstream_module, "in_threads", lambda reactor: maybeDeferred)
    config = Config(root=str(root), cache_dir=str(cache_dir), upstream=(TEMPLATE,),
                    upstream_allow=("ai-*",))
    state = ServerState(config=config, catalog=scan(str(root)))
    made = make_upstream(state, MemoryReactorClock(), lambda *args, **kwargs: Fetches(cache_dir))
    assert made is not None and made.trash == str(trash)
    assert sorted(p.name for p in trash.iterdir()) == ["notes.txt"]
    assert (outside / "kept").is_dir() and (cache_dir / "plugins").is_dir()


@pytest.mark.parametrize("planted", ["symlink", "open to all"])
def test_a_cache_tree_not_hps_own_stops_the_start(tree, tmp_path: Path, capfd,
                                                  planted: str) -> None:
    """Its modules would be served: never from a directory someone else can write."""
    cache_dir, elsewhere = tmp_path / "cache", tmp_path / "elsewhere"
    cache_dir.mkdir()
    elsewhere.mkdir()
    if planted == "symlink":
        (cache_dir / "plugins").symlink_to(elsewhere)
    else:
        elsewhere.chmod(0o777)
        elsewhere.rename(cache_dir / "plugins")
    config = build(None, {"root": str(tree.root), "cache_dir": str(cache_dir),
                          "upstream": [TEMPLATE], "upstream_allow": ["ai-*"]})
    with pytest.raises(SystemExit) as ended:
        make_service(config, Reactor())
    assert ended.value.code == 2
    err = capfd.readouterr().err.strip()
    why = "is a symlink" if planted == "symlink" else "is writable by group or others"
    assert err == (f"hps: cache-dir: the pull-through cache tree: {cache_dir / 'plugins'} "
                   f"{why}; hps uses only a directory of its own there")


def test_fetch_threads_are_named_for_their_module(tmp_path: Path) -> None:
    reactor = Reactor()
    source = RegistrySource([TEMPLATE], str(tmp_path), reactor)
    names: list[str] = []
    source.run(lambda name, version: threading.current_thread().name, "ai-proxy",
               "1.0.0").addCallback(names.append)
    for thread in [t for t in threading.enumerate() if t.name.startswith("upstream fetch")]:
        thread.join(10)
    reactor.run_from_threads()
    assert names == ["upstream fetch ai-proxy 1.0.0"]  # for py-spy and stack dumps

def test_a_scan_begun_before_an_eviction_does_not_bring_it_back(world) -> None:
    state, source, upstream, _ = world
    cache, trees = upstream.cache_root, [state.config.root, upstream.cache_root]
    for version in ("1.0.0", "1.0.1", "1.0.2"):
        fetched(upstream, source, version)
    stale = scan_trees(trees)  # found 1.0.0 before its directory moved
    fetched(upstream, source, "1.0.3")
    assert state.catalog.get("ai-proxy", "1.0.0") is None
    assert upstream.prune(stale).get("ai-proxy", "1.0.0") is None
    assert upstream.prune(stale).get("ai-proxy", "1.0.1") is not None
    fresh = scan_trees(trees)  # begun after: never finds it, and it is forgotten
    assert upstream.prune(fresh) is fresh and upstream.evicted == {}
    assert not os.path.exists(os.path.join(cache, "ai-proxy", "1.0.0"))


def test_misses_stay_bounded_and_so_do_metric_labels() -> None:
    clock = MemoryReactorClock()
    misses = Misses(clock)
    metrics.track_misses(lambda: [(m.name, m.version, m.count) for m in misses.recent()])
    for n in range(10_000):
        misses.record("scanner", f"0.0.{n}")
    misses.record("key-auth", "1.0.0")
    misses.record("key-auth", "1.0.0")
    assert len(misses.table) == MAX_PAIRS
    assert misses.recent()[0].name == "key-auth" and misses.recent()[0].count == 2
    text = metrics.exposition()[0].decode()
    lines = [line for line in text.splitlines() if line.startswith("hps_misses_total{")]
    assert len(lines) == MAX_PAIRS
    assert 'hps_misses_total{plugin="key-auth",version="1.0.0"} 2.0' in lines


def test_templates_and_knobs() -> None:
    """Upstream templates expand to references for valid versions only, and the pull-through
    knobs are checked when the config is built."""
    ref = expand("oci://127.0.0.1:5000/plugins/${name}:${version}", "ai-proxy", "1.0.0")
    assert (ref.registry, ref.repository, ref.tag) == ("127.0.0.1:5000", "plugins/ai-proxy",
                                                       "1.0.0")
    digest = "sha256:" + "a" * 64
    assert expand("oci://r/plugins/${name}:${version}", "ai-proxy", digest).digest == digest
    for version in ("1.0.0+b1", "-x"):
        with pytest.raises(ValueError):
            expand("oci://reg/plugins/${name}:${version}", "ai-proxy", version)
    config = build(None, {"root": "plugins", "upstream": ["oci://r/p/${name}:${version}"],
                          "upstream_allow": ["ai-*", "key-auth"]})
    assert config.upstream_allow == ("ai-*", "key-auth")
    # The wait must fit in the send timeout only when pull-through is on.
    assert build(None, {"root": "plugins", "send_timeout": 2}).send_timeout == 2
    for bad in ({"upstream": ["oci://r/p/fixed:1.0"]}, {"upstream": ["oci://r/${name}:latest"]},
                {"upstream": ["http://x y/${name}:${version}"]},
                {"upstream_allow": ["*"]}, {"upstream": ["oci://r/${name}:${version}"],
                                            "upstream_allow": ["*"], "upstream_wait": 30}):
        with pytest.raises(ConfigError):
            build(None, {"root": "plugins", **bad})


def test_ready_with_an_empty_tree_only_when_pull_through_is_on(tmp_path: Path) -> None:
    on = Config(root=str(tmp_path), upstream=("oci://r/p/${name}:${version}",),
                upstream_allow=("*",))
    assert ServerState(config=on, catalog=scan(str(tmp_path))).unready_reason() is None
    off = ServerState(config=Config(root=str(tmp_path)), catalog=scan(str(tmp_path)))
    assert off.unready_reason() == "catalog holds no artifact"


# -- through the real site, in memory (tests/support/memory.py) ---------------------------


@pytest.fixture
def site(tmp_path: Path, harness):
    """The server in memory with pull-through on, its registry a :class:`Fetches`."""
    root = tmp_path / "tree"
    (root / "key-auth" / "2.0.0").mkdir(parents=True)
    (root / "key-auth" / "2.0.0" / "plugin.wasm").write_bytes(wasm_bytes(1000))
    server = harness(root, upstream=[TEMPLATE], upstream_allow=["key-auth", "ai-*"],
                     upstream_wait=WAIT)
    upstream = server.site.resource.upstream
    upstream.source = source = Fetches(Path(upstream.cache_root))
    return server, source, server.site.resource.misses


def ask(server: Harness, path: str) -> Connection:
    return server.connect().send(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-\r\n\r\n".encode())


def test_http_waiters_share_one_fetch(site) -> None:
    site, source, misses = site
    path = "/plugins/ai-proxy/1.0.0/metadata.txt"
    clients = [ask(site, path) for _ in range(50)]
    assert all(c.received() == b"" for c in clients) and len(source.calls) == 1
    source.succeed(body=wasm_bytes(3000, seed=7))
    site.settle()
    for client in clients:
        head, _, body = client.received().partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK") and b"Size: 3000 bytes" in body
    assert misses.table[("ai-proxy", "1.0.0")].count == 50
    index = json.loads(ask(site, "/plugins/index.json").received().partition(b"\r\n\r\n")[2])
    assert index["missing"] == []  # pulled through: no longer missing


def test_http_slow_fetch_is_503_with_retry_after(site) -> None:
    site, _source, _ = site
    client = ask(site, "/plugins/key-auth/9.0.0/plugin.wasm")
    site.advance(WAIT + 0.1)
    head = client.received().partition(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 503") and b"Retry-After: 5" in head


def test_http_404_names_what_exists_and_the_alias(site) -> None:
    site, source, misses = site
    for path in ("/plugins/key-auth/2.0.1/plugin.wasm", "/plugins/basic-auth/1.0.0/plugin.wasm"):
        client = ask(site, path)
        if "key-auth" in path:
            source.fail(Missing("no registry holds it"))
            site.settle()
        head, _, _body = client.received().partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 404")
    assert source.calls == [("key-auth", "2.0.1")]  # basic-auth is not allowed
    text = ask(site, "/plugins/key-auth/2.0.1/plugin.wasm").received().decode()
    assert "versions here: 2.0.0" in text and "aliases: ['2.0.1']" in text
    assert "no version of basic-auth is here" in ask(
        site, "/plugins/basic-auth/1.0.0/plugin.wasm").received().decode()
    index = json.loads(ask(site, "/plugins/index.json").received().partition(b"\r\n\r\n")[2])
    assert [(m["name"], m["version"], m["requests"]) for m in index["missing"]] == [
        ("basic-auth", "1.0.0", 2), ("key-auth", "2.0.1", 2)]
    # index.json is cached per snapshot; a new miss shows once the 5 s rebuild limit allows.
    ask(site, "/plugins/mcp-server/1.0.0/plugin.wasm")
    assert len(json.loads(ask(site, "/plugins/index.json").received().partition(
        b"\r\n\r\n")[2])["missing"]) == 2
    site.advance(5)
    index = json.loads(ask(site, "/plugins/index.json").received().partition(b"\r\n\r\n")[2])
    assert index["missing"][0]["name"] == "mcp-server"
    landing = ask(site, "/").received().decode()
    assert "Recently asked for but not here" in landing and "basic-auth" in landing
    assert "Pull-through is on" in landing and "ai-*" in landing
    # Not a plugin URL, or not grammatical: plain 404, not counted.
    for path in ("/plugins/key-auth/2.0.1/other.txt", "/plugins/Key/1.0.0/plugin.wasm"):
        assert ask(site, path).received().startswith(b"HTTP/1.1 404")
    assert len(misses.table) == 3
