"""/metrics speaks Prometheus text, with hps_* names, after real traffic; the access log.

In memory: counters are process-wide (one registry, as in a real process), so each
test compares a scrape taken before its traffic with one taken after.
"""

from __future__ import annotations

import json
import re

import pytest

from hps.metrics import artifact_of
from tests.support.server import Tree


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: value - before.get(key, 0.0) for key, value in after.items()
            if value != before.get(key, 0.0)}


def test_metrics_after_some_requests(tree: Tree, harness) -> None:
    """Requests, bytes, downloads and misses are counted per route and artifact, and a stalled
    download shows while it lasts."""
    body = tree.add("key-auth", "1.0.0", size=10_000)
    tree.add("basic-auth", "2.0.0", size=300_000)  # more than a transport buffers
    server = harness(tree.root)
    before = server.metrics()
    for _ in range(3):
        assert server.get("/plugins/key-auth/1.0.0/plugin.wasm").body == body
    server.get("/plugins/nope/1.0.0/plugin.wasm")
    server.get("/plugins/key-auth/1.0.0/metadata.txt")
    server.get("/plugins/index.json")
    server.get("/healthz")
    reply = server.get("/metrics")
    assert reply.status == 200
    assert reply.header("Content-Type").startswith("text/plain; version=")
    text = reply.body.decode()
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert names and all(name.startswith("hps_") for name in names)
    after = server.metrics()
    moved = delta(before, after)
    for key, value in {
        'hps_requests_total{route="artifact",status="200"}': 3,
        'hps_requests_total{route="notfound",status="404"}': 1,
        'hps_requests_total{route="metadata",status="200"}': 1,
        'hps_requests_total{route="index",status="200"}': 1,
        'hps_requests_total{route="health",status="200"}': 1,
        'hps_sent_bytes_total{route="artifact"}': 3 * len(body),
        'hps_downloads_total{plugin="key-auth",version="1.0.0"}': 3,
        'hps_misses_total{plugin="nope",version="1.0.0"}': 1,
    }.items():
        assert moved.get(key) == value, key
    assert after["hps_catalog_artifacts"] == 2
    assert after["hps_gzip_variants_pending"] == 0
    stalled = server.connect()
    stalled.stop_reading()
    stalled.send(b"GET /plugins/basic-auth/2.0.0/plugin.wasm HTTP/1.1\r\nHost: x\r\n\r\n")
    during = server.metrics()  # a download in flight and its connection are counted live
    assert during["hps_responses_in_flight"] - after["hps_responses_in_flight"] == 1
    assert during["hps_connections_open"] - after["hps_connections_open"] == 1
    stalled.close()
    assert server.metrics()["hps_responses_in_flight"] == after["hps_responses_in_flight"]
    server.stop()
    assert server.metrics()["hps_draining"] == 1


def test_reloads_are_counted(tree: Tree, harness) -> None:
    tree.add("key-auth", "1.0.0")
    server = harness(tree.root)
    before = server.metrics()
    tree.add("key-auth", "2.0.0")
    server.rescan()
    after = server.metrics()
    assert after["hps_catalog_reloads_total"] - before["hps_catalog_reloads_total"] == 1
    assert after["hps_catalog_reload_errors_total"] == before["hps_catalog_reload_errors_total"]
    assert after["hps_catalog_artifacts"] == 2


def test_readiness_and_missing_versions_are_gauges(tree: Tree, harness) -> None:
    """What the alerts read (deploy/monitoring/): hps_ready as /readyz says it, and
    hps_version_missing for a version asked for until the tree has it."""
    tree.add("key-auth", "1.0.0")
    server = harness(tree.root, hold_threads=True)  # the first scan waits
    assert server.get("/readyz").status == 503 and server.metrics()["hps_ready"] == 0
    server.hold_threads = False
    server.settle()
    assert server.get("/readyz").status == 200 and server.metrics()["hps_ready"] == 1
    missing = 'hps_version_missing{plugin="key-auth",version="2.0.1"}'
    assert server.get("/plugins/key-auth/2.0.1/plugin.wasm").status == 404
    assert server.metrics()[missing] == 1
    tree.add("key-auth", "2.0.1")
    server.rescan()
    assert missing not in server.metrics()
    assert server.metrics()['hps_misses_total{plugin="key-auth",version="2.0.1"}'] == 1
    server.stop()
    assert server.metrics()["hps_ready"] == 0  # draining


def test_access_log_json_ignores_forwarded_unless_trusted(tree: Tree, harness) -> None:
    tree.add("key-auth", "1.0.0")
    plain = harness(tree.root, access_log="json")
    plain.get("/healthz", X_Forwarded_For="203.0.113.9")
    (line,) = plain.access_lines()
    entry = json.loads(line)
    assert entry["client"] == "127.0.0.1" and entry["time"] == "2023-11-14T22:13:20Z"
    assert entry["status"] == 200
    trusting = harness(tree.root, access_log="combined", trust_forwarded=True)
    trusting.get("/healthz", X_Forwarded_For="198.51.100.1, 203.0.113.9")
    (line,) = trusting.access_lines()
    assert line.startswith('203.0.113.9 - - [14/Nov/2023:22:13:20 +0000] "GET /healthz HTTP/1.1" '
                           '200 3 '), line
    quiet = harness(tree.root, access_log="off")
    quiet.get("/healthz")
    assert quiet.access_lines() == []


def test_a_download_cut_by_the_client_is_logged_and_counted(tree: Tree, harness) -> None:
    size = 1 << 20
    tree.add("key-auth", "1.0.0", size=size)
    server = harness(tree.root, gzip=False)
    before = server.metrics()
    client = server.connect()
    client.stop_reading()
    client.send(b"GET /plugins/key-auth/1.0.0/plugin.wasm HTTP/1.1\r\nHost: x\r\n\r\n")
    client.close()
    (line,) = [line for line in server.access_lines() if "plugin.wasm" in line]
    sent = int(re.search(r'" 200 (\d+) ', line).group(1))
    assert 0 < sent < size
    moved = delta(before, server.metrics())
    assert moved['hps_requests_total{route="artifact",status="200"}'] == 1
    assert 'hps_downloads_total{plugin="key-auth",version="1.0.0"}' not in moved


@pytest.mark.parametrize(("method", "path", "status", "kind"), [
    ("GET", "/", 200, "landing"), ("GET", "/healthz", 200, "health"),
    ("GET", "/readyz", 200, "ready"), ("GET", "/plugins/a/1.0.0/plugin.wasm", 200, "artifact"),
    ("GET", "/plugins/a/1.0.0/metadata.txt", 200, "metadata"),
    ("GET", "/plugins/index.json", 200, "index"), ("GET", "/plugins/a/index.json", 200, "index"),
    ("GET", "/plugins/a/", 200, "listing"),
    ("GET", "/plugins/a/2.0.0/plugin.wasm", 404, "notfound"),
    ("GET", "/plugins", 301, "redirect"), ("DELETE", "/favicon.ico", 405, "other"),
])
def test_the_route_label_is_the_kind_the_router_chose(tree: Tree, harness, method: str,
                                                     path: str, status: int, kind: str) -> None:
    tree.add("a", "1.0.0")
    server = harness(tree.root)
    before = server.metrics()
    assert server.request(path, method=method).status == status
    moved = delta(before, server.metrics())
    assert moved[f'hps_requests_total{{route="{kind}",status="{status}"}}'] == 1, moved


def test_artifact_of() -> None:
    """Only a module URL names a (plugin, version) for the per-artifact counters."""
    assert artifact_of(b"/plugins/a/1.0.0/plugin.wasm?x") == ("a", "1.0.0")
    assert artifact_of(b"/plugins/a/plugin.wasm") == ("", "")
    assert artifact_of(b"/other/a/1.0.0/plugin.wasm") == ("", "")
