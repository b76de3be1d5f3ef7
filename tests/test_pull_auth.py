"""``hps pull`` and registry authentication: basic (htpasswd) and the bearer-token flow."""

from __future__ import annotations

import base64
import io
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.registry import (
    Registry,
    Workspace,
    running_registry,
    wasm,
)

USER, PASSWORD = "hps", "s3cret"


@pytest.fixture(scope="module")
def locked_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("authreg"), {USER: PASSWORD}) as running:
        running.push_wasm("auth/a", "1.0.0", wasm("secret"))
        yield running


def _entries(registry: Registry) -> dict[str, str]:
    return {"a": registry.ref("auth/a", "1.0.0")}


def test_no_credentials_is_auth_needed(locked_registry: Registry, workspace: Workspace) -> None:
    result = workspace.pull(_entries(locked_registry))
    assert result.code == 1
    assert "FAILED a/1.0.0:" in result.err and "authentication needed" in result.err
    assert not workspace.out.exists() or not any(workspace.out.iterdir())


def test_wrong_password_is_auth_needed(
    locked_registry: Registry, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HPS_REGISTRY_USERNAME", USER)
    monkeypatch.setenv("HPS_REGISTRY_PASSWORD", "wrong")
    result = workspace.pull(_entries(locked_registry))
    assert result.code == 1
    assert "authentication needed" in result.err


def test_credentials_from_environment(
    locked_registry: Registry, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HPS_REGISTRY_USERNAME and HPS_REGISTRY_PASSWORD open a registry that needs a login."""
    monkeypatch.setenv("HPS_REGISTRY_USERNAME", USER)
    monkeypatch.setenv("HPS_REGISTRY_PASSWORD", PASSWORD)
    result = workspace.pull(_entries(locked_registry))
    assert result.code == 0, result.err
    assert workspace.module("a", "1.0.0") == wasm("secret")


def test_credentials_from_password_stdin(
    locked_registry: Registry, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--username with --password-stdin opens a registry that needs a login."""
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    result = workspace.pull(_entries(locked_registry), None, "--username", USER, "--password-stdin")
    assert result.code == 0, result.err


def test_credentials_from_docker_config(locked_registry: Registry, workspace: Workspace) -> None:
    """An auth entry in ~/.docker/config.json opens a registry that needs a login."""
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    config = Path.home() / ".docker" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps({"auths": {f"http://{locked_registry.host}": {"auth": auth}}}))
    result = workspace.pull(_entries(locked_registry))
    assert result.code == 0, result.err


class TokenProxy:
    """A registry front that speaks the bearer-token flow, like Docker Hub or Harbor.

    Blob requests are redirected to another host name (``localhost`` instead of
    ``127.0.0.1``), the way registries send blobs to object storage, which must
    never receive the registry's token. ``fail`` answers that many 503s first.
    """

    token = "t0k3n"

    def __init__(self, upstream: Registry) -> None:
        self.upstream = upstream
        self.fail = 0
        self.token_requests: list[str] = []
        self.storage_saw_auth: list[bool] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self.server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        # shutdown() waits for the loop to see its flag: poll often, not every 0.5 s.
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                proxy.handle(self)

        return Handler

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        path = request.path
        if path.startswith("/token"):
            self.token_requests.append(path)
            return self._reply(request, 200, json.dumps({"token": self.token}).encode())
        if path.startswith("/storage/"):
            self.storage_saw_auth.append("Authorization" in request.headers)
            return self._forward(request, path.removeprefix("/storage"))
        if self.fail > 0:
            self.fail -= 1
            return self._reply(request, 503, b"busy")
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            realm = f"http://{self.host}/token"
            challenge = f'Bearer realm="{realm}",service="hps-test",scope="repository:x:pull"'
            return self._reply(request, 401, b"{}", {"WWW-Authenticate": challenge})
        if "/blobs/" in path:
            location = f"http://localhost:{self.port}/storage{path}"
            return self._reply(request, 307, b"", {"Location": location})
        return self._forward(request, path)

    def _forward(self, request: BaseHTTPRequestHandler, path: str) -> None:
        accept = request.headers.get("Accept", "*/*")
        upstream = urllib.request.Request(self.upstream.url + path, headers={"Accept": accept})
        try:
            with urllib.request.urlopen(upstream, timeout=5) as reply:
                ctype = reply.headers.get("Content-Type", "application/octet-stream")
                self._reply(request, 200, reply.read(), {"Content-Type": ctype})
        except urllib.error.HTTPError as exc:
            self._reply(request, exc.code, exc.read())

    @staticmethod
    def _reply(
        request: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict | None = None
    ) -> None:
        request.send_response(status)
        for key, value in (headers or {}).items():
            request.send_header(key, value)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)


@pytest.fixture
def proxy(registry: Registry) -> Iterator[TokenProxy]:
    front = TokenProxy(registry)
    yield front
    front.server.shutdown()
    front.server.server_close()


def test_bearer_token_flow_and_no_token_on_foreign_redirects(
    registry: Registry, proxy: TokenProxy, workspace: Workspace
) -> None:
    registry.push_wasm("bearer/a", "1.0.0", wasm("bearer"))
    registry.push_image("bearer/b", "1.0.0", {"plugin.wasm": wasm("b")})
    result = workspace.pull(
        {n: f"oci://{proxy.host}/bearer/{n}:1.0.0" for n in "ab"}, None, "--jobs", "1"
    )
    assert result.code == 0, result.err
    assert workspace.module("a", "1.0.0") == wasm("bearer")
    assert workspace.module("b", "1.0.0") == wasm("b")
    assert proxy.token_requests and "service=hps-test" in proxy.token_requests[0]
    assert "scope=repository%3Ax%3Apull" in proxy.token_requests[0]
    assert proxy.storage_saw_auth == [False, False]


def test_5xx_is_retried(
    registry: Registry, proxy: TokenProxy, workspace: Workspace, pauses: list[float]
) -> None:
    registry.push_wasm("retry/a", "1.0.0", wasm("retry"))
    proxy.fail = 2
    result = workspace.pull({"a": f"oci://{proxy.host}/retry/a:1.0.0"}, None, "--retries", "2")
    assert result.code == 0, result.err
    assert proxy.fail == 0
    assert pauses == [0.5, 1.0]  # the backoff doubles between attempts


def test_persistent_5xx_fails_with_the_status(
    registry: Registry, proxy: TokenProxy, workspace: Workspace, pauses: list[float]
) -> None:
    proxy.fail = 100
    result = workspace.pull({"a": f"oci://{proxy.host}/retry/a:1.0.0"})
    assert result.code == 1
    # The line names the registry and repository, not just a status.
    assert f"HTTP 503 from {proxy.host}/retry/a (after 2 attempts)" in result.err
    assert pauses == [0.5]
