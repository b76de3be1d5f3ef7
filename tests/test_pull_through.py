"""Pull-through against a real OCI registry: one real ``twistd hps``, the rest in memory.

Between the server and Debian's ``docker-registry`` sits a counting proxy
(tests/support/counting.py), so the tests see exactly which requests reach the
registry, and can make it answer 500 or hang. The black-box test runs a real
process (real threads, sockets, a restart); the others run the real
``make_service`` in memory (tests/support/memory.py): the registry fetch, which
production gives a daemon thread, waits in the harness's pool, and time moves with
the harness's clock, so a hung registry and ``--upstream-wait`` cost no real seconds.
Upstream's rules with a fake registry are in tests/test_upstream.py.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hps.upstream import PER_REGISTRY
from tests.support.counting import CountingProxy, counting_proxy
from tests.support.memory import Connection, Harness
from tests.support.registry import Registry, running_registry
from tests.support.server import Response, Server, Tree, wasm_bytes

MODULE = "/plugins/ai-proxy/{}/plugin.wasm"


@pytest.fixture(scope="module")
def proxy(registry: Registry) -> Iterator[CountingProxy]:
    with counting_proxy(registry.host) as running:
        yield running


def upstream_args(proxy: CountingProxy, cache: Path, *extra: str) -> list[str]:
    return ["--upstream", f"oci://{proxy.host}/plugins/${{name}}:${{version}}",
            "--upstream-allow", "ai-*", "--upstream-allow", "mcp-server",
            "--upstream-plain-http", "--cache-dir", str(cache), "--drain-delay", "0", *extra]


def upstream_knobs(proxy: CountingProxy) -> dict:
    """The same settings as :func:`upstream_args`, for the in-memory harness."""
    return {"upstream": [f"oci://{proxy.host}/plugins/${{name}}:${{version}}"],
            "upstream_allow": ["ai-*", "mcp-server"], "upstream_plain_http": True}


def herd(server: Server, path: str, count: int) -> list[Response]:
    """``count`` GETs of ``path`` on as many connections of a real process, released at once."""
    gate = threading.Barrier(count)
    replies: list[Response] = []

    def one() -> None:
        gate.wait(10)
        replies.append(server.request(path, timeout=20))

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(replies) == count
    return replies


def together(server: Harness, paths: list[str]) -> list[Connection]:
    """One GET per path, each on its own in-memory connection, all in before the server runs."""
    connections = [server.connect() for _ in paths]
    for connection, path in zip(connections, paths, strict=True):
        connection.send(f"GET {path} HTTP/1.1\r\nHost: hps.test\r\n\r\n".encode(), settle=False)
    server.settle()
    return connections


class Slot(threading.BoundedSemaphore):
    """A registry's slot for fetches (see RegistrySource.slot) that tells who queues for it."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.queued = threading.Semaphore(0)

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        if super().acquire(blocking=False):
            return True
        self.queued.release()
        return super().acquire(blocking, timeout)

    __enter__ = acquire


def files_under(path: Path) -> list[str]:
    return sorted(str(Path(d, f).relative_to(path)) for d, _, fs in os.walk(path) for f in fs)


def nothing_written(cache: Path) -> bool:
    return not (cache / "plugins").exists() or files_under(cache / "plugins") == []


@pytest.mark.process
def test_a_herd_costs_one_fetch_and_the_cache_survives_a_restart(
        registry: Registry, proxy: CountingProxy, tree: Tree, tmp_path: Path, serve) -> None:
    module = wasm_bytes(300_000, seed=13)
    registry.push_wasm("plugins/ai-proxy", "2.0.3", module)
    tree.add("key-auth", "2.0.0")
    cache = tmp_path / "cache"
    proxy.reset()
    server = serve("--root", str(tree.root), *upstream_args(proxy, cache))
    replies = herd(server, MODULE.format("2.0.3"), 100)
    assert [r.status for r in replies] == [200] * 100
    assert {r.body for r in replies} == {module}
    assert {r.header("ETag") for r in replies} == {f'"{Tree.sha256(module)[:40]}"'}
    assert (proxy.count("manifests"), proxy.count("blobs"), proxy.count()) == (1, 1, 2)
    assert (cache / "plugins" / "ai-proxy" / "2.0.3" / "plugin.wasm").read_bytes() == module
    # hps pull's own write: the module and its .gz sibling, nothing else.
    assert files_under(cache / "plugins") == ["ai-proxy/2.0.3/plugin.wasm",
                                               "ai-proxy/2.0.3/plugin.wasm.gz"]
    assert gzip.decompress(
        (cache / "plugins" / "ai-proxy" / "2.0.3" / "plugin.wasm.gz").read_bytes()) == module
    metadata = server.get("/plugins/ai-proxy/2.0.3/metadata.txt")
    assert metadata.status == 200 and Tree.sha256(module).encode() in metadata.body
    gateway = server.get(MODULE.format("2.0.3"), Accept_Encoding="gzip")  # as Go's client asks
    assert gateway.header("Content-Encoding") == "gzip" and gzip.decompress(gateway.body) == module
    assert proxy.count() == 2  # from the cache tree now
    scrape = server.get("/metrics").body.decode()
    assert 'hps_upstream_fetches_total{outcome="fetched"} 1.0' in scrape
    server.stop()

    proxy.reset("fail")  # the registry is gone: the cache tree alone must serve it
    again = serve("--root", str(tree.root), *upstream_args(proxy, cache))
    reply = again.get(MODULE.format("2.0.3"))
    assert reply.status == 200 and reply.body == module
    assert proxy.count() == 0
    index = json.loads(again.get("/plugins/index.json").body)
    assert {p["name"] for p in index["plugins"]} == {"ai-proxy", "key-auth"}
    proxy.reset()


def test_a_sick_registry_is_503_in_time_and_nothing_is_written(
        proxy: CountingProxy, tree: Tree, tmp_path: Path, harness, pauses: list[float]) -> None:
    tree.add("key-auth", "2.0.0")
    server = harness(tree.root, upstream_wait=1, **upstream_knobs(proxy))
    proxy.reset("fail")
    reply = server.get(MODULE.format("3.0.0"))  # the fetch runs (and fails) as the server settles
    assert reply.status == 503 and reply.header("Retry-After") == "5"
    assert proxy.count() == 2 and pauses == [0.5]  # hps pull's client: one retry, after a backoff
    assert "pull-through: ai-proxy 3.0.0 failed" in server.log()

    server.hold_threads = True  # the registry hangs: no fetch gets anywhere until released
    proxy.reset("hang")
    herd_of_ten = together(server, [MODULE.format("3.0.1")] * 10)
    server.advance(0.99)
    assert [c.received() for c in herd_of_ten] == [b""] * 10
    server.advance(0.02)  # --upstream-wait 1 is over
    assert {(r.status, r.header("Retry-After")) for r in map(Connection.take, herd_of_ten)} == {
        (503, "5")}
    # Six more distinct misses: all 503 in time, the registry still hanging.
    six = together(server, [MODULE.format(f"3.1.{n}") for n in range(6)])
    server.advance(1.01)
    assert {c.take().status for c in six} == {503}
    assert server.get("/healthz").status == 200 and server.get("/readyz").status == 200
    assert server.get("/plugins/key-auth/2.0.0/plugin.wasm").status == 200
    # The seven fetches run on real threads, as in production: only 4 talk to one registry,
    # the other 3 queue for a slot.
    slot = server.site.resource.upstream.source.slots[proxy.host] = Slot(PER_REGISTRY)
    fetches = server.reactor.pool.run_in_threads()
    assert proxy.wait_for(4) and all(slot.queued.acquire(timeout=10) for _ in range(3))
    assert proxy.count() == 4 == PER_REGISTRY
    proxy.release()
    for thread in fetches:
        thread.join(30)
    server.hold_threads = False
    server.settle()
    assert proxy.count() == 7 * 2  # seven fetches (the herd's was shared), each retried once
    for version in ("3.0.1", *(f"3.1.{n}" for n in range(6))):
        assert f"pull-through: ai-proxy {version} failed" in server.log()
    assert nothing_written(tmp_path / "cache")
    proxy.reset()


def test_what_the_registry_lacks_or_holds_bad_is_never_written_or_served(
        registry: Registry, proxy: CountingProxy, tree: Tree, tmp_path: Path, harness,
        pauses: list[float]) -> None:
    """A herd asking for a version no registry has, versions that must never reach a
    registry, and modules that are not Wasm, corrupt or huge."""
    registry.push_wasm("plugins/ai-html", "1.0.0", b"<html>not a module</html>")
    registry.push_wasm("plugins/ai-cache", "1.0.0", wasm_bytes(5000, seed=3))
    tree.add("ai-proxy", "1.0.0")
    server = harness(tree.root, **upstream_knobs(proxy))
    proxy.reset()
    replies = [c.take() for c in together(server, [MODULE.format("9.9.9")] * 30)]
    assert {r.status for r in replies} == {404}
    assert proxy.count() == 1  # one manifest request for the herd, then the negative cache
    assert b"versions here: 1.0.0" in replies[0].body
    assert server.get(MODULE.format("9.9.9")).status == 404 and proxy.count() == 1
    # A path that is not one version never reaches upstream; a "+build" version is
    # grammatical but no OCI tag can spell it: 404, nothing sent. (Names outside the
    # allow-list: tests/test_upstream.py.)
    for path in ("/plugins/ai-proxy/1.0.0%2F..%2F2/plugin.wasm",
                 "/plugins/ai-proxy/1.0.0+b1/plugin.wasm"):
        assert server.get(path).status == 404, path
    assert proxy.count() == 1

    proxy.reset()
    assert server.get("/plugins/ai-html/1.0.0/plugin.wasm").status == 404  # not Wasm
    proxy.reset("corrupt")  # the blob fails its digest
    reply = server.get("/plugins/ai-cache/1.0.0/plugin.wasm")
    assert reply.status == 503 and reply.header("Retry-After") == "5"
    proxy.reset("huge")  # the manifest says 300 MiB: refused before any blob is read
    assert server.get("/plugins/ai-cache/1.0.0/plugin.wasm").status == 503
    assert proxy.count("blobs") == 0
    assert nothing_written(tmp_path / "cache")
    proxy.reset()
    assert server.get("/plugins/ai-cache/1.0.0/plugin.wasm").status == 200  # healthy again
    assert pauses == []  # a bad module is a verdict, not a hiccup: never retried


def test_credentials_come_from_where_hps_pull_finds_them(
        tree: Tree, tmp_path: Path, harness, monkeypatch: pytest.MonkeyPatch) -> None:
    module = wasm_bytes(4000, seed=21)
    path = "/plugins/ai-guard/1.0.0/plugin.wasm"
    with running_registry(tmp_path / "locked", users={"hps": "s3cret"}) as locked:
        locked.push_wasm("plugins/ai-guard", "1.0.0", module)
        knobs = {"upstream": [f"oci://{locked.host}/plugins/${{name}}:${{version}}"],
                 "upstream_allow": ["ai-*"], "upstream_plain_http": True}
        monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.docker/config.json of the host's
        for name in ("DOCKER_CONFIG", "HPS_REGISTRY_USERNAME", "HPS_REGISTRY_PASSWORD"):
            monkeypatch.delenv(name, raising=False)
        anonymous = harness(tree.root, cache_dir=str(tmp_path / "c1"), **knobs)  # empty tree
        assert anonymous.get(path).status == 503  # refused by the registry: an operator error
        docker = tmp_path / ".docker" / "config.json"
        docker.parent.mkdir()
        docker.write_text(json.dumps(
            {"auths": {locked.host: {"auth": base64.b64encode(b"hps:s3cret").decode()}}}))
        from_file = harness(tree.root, cache_dir=str(tmp_path / "c2"), **knobs)
        reply = from_file.get(path)
        assert reply.status == 200 and reply.body == module
        docker.write_text("{}")
        monkeypatch.setenv("HPS_REGISTRY_USERNAME", "hps")
        monkeypatch.setenv("HPS_REGISTRY_PASSWORD", "s3cret")
        from_env = harness(tree.root, cache_dir=str(tmp_path / "c3"), **knobs)
        reply = from_env.get(path)
        assert reply.status == 200 and reply.body == module


def test_drift_is_visible_without_pull_through(tree: Tree, harness) -> None:
    tree.add("key-auth", "2.0.0")
    server = harness(tree.root)
    for path in ("/plugins/key-auth/2.0.1/plugin.wasm",) * 2 + (
            "/plugins/key-auth/1.0.0/metadata.txt", "/plugins/mcp-server/1.0.0/plugin.wasm"):
        assert server.get(path).status == 404
    body = server.get("/plugins/key-auth/2.0.1/plugin.wasm").body.decode()
    assert "versions here: 2.0.0" in body and "aliases: ['2.0.1']" in body
    assert server.metrics()['hps_misses_total{plugin="key-auth",version="2.0.1"}'] == 3
    index = json.loads(server.get("/plugins/index.json").body)
    assert [(m["name"], m["version"], m["requests"]) for m in index["missing"]] == [
        ("key-auth", "2.0.1", 3), ("mcp-server", "1.0.0", 1), ("key-auth", "1.0.0", 1)]
    landing = server.get("/").body.decode()
    assert "Pull-through is off" in landing and "Recently asked for but not here" in landing
    assert "mcp-server" in landing


def test_a_scan_of_many_versions_keeps_the_metric_bounded(tree: Tree, harness) -> None:
    tree.add("key-auth", "2.0.0")
    server = harness(tree.root)
    client = server.connect()
    for n in range(300):
        client.send(f"GET /plugins/scan/0.0.{n}/plugin.wasm HTTP/1.1\r\nHost: x\r\n\r\n"
                    .encode())
        assert client.take().status == 404
    misses = [key for key in server.metrics() if key.startswith("hps_misses_total{")]
    assert len(misses) == 100
    assert 'hps_misses_total{plugin="scan",version="0.0.299"}' in misses
    assert 'hps_misses_total{plugin="scan",version="0.0.0"}' not in misses


def test_beyond_the_bound_the_least_recently_served_goes_and_its_download_finishes(
        registry: Registry, proxy: CountingProxy, tree: Tree, tmp_path: Path, harness) -> None:
    """Through make_service: served means served over HTTP; the bound is set to 2 here."""
    modules = {version: wasm_bytes(200_000, seed=40 + n)
               for n, version in enumerate(("4.0.0", "4.0.1", "4.0.2"))}
    for version, module in modules.items():
        registry.push_wasm("plugins/ai-proxy", version, module)
    tree.add("key-auth", "2.0.0")
    image = files_under(tree.root)
    server = harness(tree.root, **upstream_knobs(proxy))
    server.site.resource.upstream.max_cached = 2
    before = server.metrics().get("hps_upstream_evictions_total", 0.0)
    cache = tmp_path / "cache" / "plugins" / "ai-proxy"
    proxy.reset()
    for version in ("4.0.0", "4.0.1"):
        assert server.get(MODULE.format(version)).body == modules[version]
    # A download of 4.0.1 under way: its client stops reading, most of the body unsent.
    slow = server.connect()
    slow.stop_reading()
    slow.send(f"GET {MODULE.format('4.0.1')} HTTP/1.1\r\nHost: hps.test\r\n\r\n".encode())
    assert slow.received() == b""
    assert server.get(MODULE.format("4.0.0")).status == 200  # fetched first, served last
    assert server.get(MODULE.format("4.0.2")).body == modules["4.0.2"]  # evicts 4.0.1
    assert sorted(os.listdir(cache)) == ["4.0.0", "4.0.2"]
    assert os.listdir(tmp_path / "cache" / ".evicted") == []  # deleted by a pool thread
    assert files_under(tree.root) == image
    assert server.get("/plugins/ai-proxy/4.0.1/metadata.txt").status == 200  # a miss: fetched
    slow.resume_reading()
    reply = slow.take()
    assert reply.status == 200 and reply.body == modules["4.0.1"]  # from the unlinked file
    assert proxy.count() == 2 * 4  # manifest and blob for 4.0.0, 4.0.1, 4.0.2, then 4.0.1
    assert sorted(os.listdir(cache)) == ["4.0.1", "4.0.2"]  # 4.0.0 was served before 4.0.2
    assert server.metrics()["hps_upstream_evictions_total"] == before + 2
    assert ("pull-through: evicted ai-proxy 4.0.1, the least recently served (the cache tree "
            "holds at most 2 modules)") in server.log()
    assert "ai-proxy 4.0.0, the least recently served" in server.log()
