"""/metrics speaks Prometheus text, with hps_* names, after real traffic."""

from __future__ import annotations

from tests.support.server import Tree


def test_metrics_after_some_requests(tree: Tree, serve) -> None:
    body = tree.add("key-auth", "1.0.0", size=10_000)
    tree.add("basic-auth", "2.0.0")
    server = serve("--root", str(tree.root))
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
    for line in (
        'hps_requests_total{route="artifact",status="200"} 3.0',
        'hps_requests_total{route="notfound",status="404"} 1.0',
        'hps_requests_total{route="metadata",status="200"} 1.0',
        'hps_requests_total{route="index",status="200"} 1.0',
        'hps_requests_total{route="health",status="200"} 1.0',
        f'hps_sent_bytes_total{{route="artifact"}} {3 * len(body)}.0',
        'hps_downloads_total{plugin="key-auth",version="1.0.0"} 3.0',
        "hps_catalog_artifacts 2.0",
        "hps_catalog_reloads_total 1.0",
        "hps_catalog_reload_errors_total 0.0",
        "hps_draining 0.0",
        "hps_responses_in_flight 1.0",
    ):
        assert line in text.splitlines(), line
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert names and all(name.startswith("hps_") for name in names)


def test_access_log_json_ignores_forwarded_unless_trusted(tree: Tree, serve) -> None:
    tree.add("key-auth", "1.0.0")
    plain = serve("--root", str(tree.root), "--access-log", "json")
    plain.get("/healthz", X_Forwarded_For="203.0.113.9")
    assert plain.wait_log(r'\{"time": "[^"]+Z", "client": "127\.0\.0\.1"')
    trusting = serve("--root", str(tree.root), "--access-log", "combined", "--trust-forwarded")
    trusting.get("/healthz", X_Forwarded_For="198.51.100.1, 203.0.113.9")
    assert trusting.wait_log(r'(?m)^203\.0\.113\.9 - - \[.+\] "GET /healthz HTTP/1\.1" 200 3 ')
