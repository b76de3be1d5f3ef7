"""Black box: a real Prometheus scrapes a real ``twistd hps`` with deploy/monitoring/'s rules
loaded, so every series the alerts read exists, and a module replaced under the same version
(then SIGHUP) is named by index.json, /metrics, and the firing HpsArtifactChanged alert.

Prometheus comes from Debian's ``prometheus`` package; it runs on 127.0.0.1 with a temporary
storage directory, scrapes every second, and is stopped by its PID. The alerts' own logic
(fire, stay silent) is promtool's test in tests/test_deploy.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.monitoring import metric_names, tool, write_rules
from tests.support.polling import poll
from tests.support.registry import free_port
from tests.support.server import Server, Tree, stop_process, wasm_bytes

JOB = "higress-plugin-server"  # the ServiceMonitor's job label: the Service's name
DEADLINE = 60.0


def within(seconds: float, check: Callable[[], Any], what: str) -> Any:
    """Poll a real process until ``check`` returns something truthy (bounded)."""
    found = poll(check, seconds, every=0.2)  # Prometheus scrapes on its own clock
    if not found:
        pytest.fail(f"{what}: not within {seconds:g} s")
    return found


class Prometheus:
    def __init__(self, directory: Path, target: str) -> None:
        self.port = free_port()
        write_rules(directory)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["rules.yaml"],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
        }
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
        self.log = directory / "prometheus.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [tool("prometheus"), f"--config.file={directory / 'prometheus.yml'}",
                 f"--storage.tsdb.path={directory / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                cwd=directory, stdout=out, stderr=subprocess.STDOUT)

    def api(self, path: str, **query: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return json.load(reply)["data"]
        except OSError:
            if self.process.poll() is not None:
                pytest.fail(f"prometheus exited:\n{self.log.read_text(errors='replace')}")
            return None

    def series(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        return data["result"] if data else []

    def firing(self, name: str) -> list[dict[str, str]]:
        data = self.api("alerts")
        return [a["labels"] for a in (data or {}).get("alerts", [])
                if a["labels"]["alertname"] == name and a["state"] == "firing"]

    def stop(self) -> None:
        stop_process(self.process, timeout=15)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[str], Prometheus]]:
    started: list[Prometheus] = []

    def start(target: str) -> Prometheus:
        directory = tmp_path / "prometheus"
        directory.mkdir()
        started.append(Prometheus(directory, target))
        return started[-1]

    yield start
    for each in started:
        each.stop()


def index_changed(server: Server) -> list[dict[str, str]]:
    return json.loads(server.get("/plugins/index.json").body)["changed"]


@pytest.mark.process
def test_prometheus_scrapes_every_series_the_alerts_read(tree: Tree, serve, prometheus,
                                                         tmp_path: Path) -> None:
    first, other = wasm_bytes(5000, seed=1), wasm_bytes(5000, seed=2)
    tree.add("key-auth", "1.0.0", first)
    closed = f"oci://127.0.0.1:{free_port()}/plugins/${{name}}:${{version}}"  # nothing listens
    server = serve("--root", str(tree.root), "--cache-dir", str(tmp_path / "cache"),
                   "--upstream", closed, "--upstream-allow", "ai-*", "--upstream-plain-http")
    assert index_changed(server) == []
    # Series that exist only once something happened: a miss, a failed pull-through (503).
    assert server.get("/plugins/basic-auth/9.9.9/plugin.wasm").status == 404
    assert server.get("/plugins/ai-proxy/1.0.0/plugin.wasm").status == 503

    # Other bytes under the same version, then a reload.
    tree.add("key-auth", "1.0.0", other)
    server.process.send_signal(signal.SIGHUP)
    server.wait_log("key-auth 1.0.0: other bytes under the same URL")
    expected = {"name": "key-auth", "version": "1.0.0", "first": Tree.sha256(first),
                "now": Tree.sha256(other)}
    within(10, lambda: index_changed(server) == [expected], "index.json names the change")
    scrape = server.get("/metrics").body.decode()
    assert 'hps_artifact_changed{plugin="key-auth",version="1.0.0"} 1.0' in scrape
    assert 'hps_artifact_changes_total{plugin="key-auth",version="1.0.0"} 1.0' in scrape
    assert server.log().count("other bytes under the same URL") == 1

    scraper = prometheus(f"127.0.0.1:{server.port}")
    within(DEADLINE, lambda: scraper.series(f'hps_artifact_changed{{job="{JOB}"}}'),
           "prometheus scrapes hps")
    names = set(scraper.api("label/__name__/values") or [])
    assert metric_names() <= names, metric_names() - names
    alert = within(DEADLINE, lambda: scraper.firing("HpsArtifactChanged"), "the alert fires")
    assert [(a["plugin"], a["version"], a["job"]) for a in alert] == [
        ("key-auth", "1.0.0", JOB)]
    assert server.process.poll() is None
