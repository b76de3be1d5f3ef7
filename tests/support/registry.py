"""A real OCI registry for tests: Debian's ``docker-registry`` on 127.0.0.1.

The fixture fails (never skips) when the binary is missing: the pull tests are
worth nothing against a fake. Helpers push artifacts through the registry's
HTTP API in both styles Higress uses: an OCI manifest with a Wasm layer, and
a Docker v2 image built ``FROM scratch`` with ``COPY main.wasm plugin.wasm``.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from hps.guard import hidden_or_temporary
from hps.pull.cli import main
from hps.pull.registry import Client
from tests.support.polling import poll

BINARY = "docker-registry"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def wasm(tag: str = "") -> bytes:
    """A module header plus a custom-looking payload, distinct per tag."""
    return b"\0asm\x01\0\0\0" + f"hps test module {tag}".encode()


@dataclass
class Registry:
    host: str  # 127.0.0.1:PORT, as it appears in oci:// references
    auth: str | None = None  # an Authorization header value for pushing

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def ref(self, repo: str, tag: str) -> str:
        return f"oci://{self.host}/{repo}:{tag}"

    def _request(self, method: str, url: str, data: bytes | None = None, ctype: str = ""):
        request = urllib.request.Request(url, data=data, method=method)
        if ctype:
            request.add_header("Content-Type", ctype)
        if self.auth:
            request.add_header("Authorization", self.auth)
        return urllib.request.urlopen(request, timeout=10)

    def push_blob(self, repo: str, data: bytes) -> str:
        digest = sha256(data)
        with self._request("POST", f"{self.url}/v2/{repo}/blobs/uploads/", b"") as reply:
            location = urllib.parse.urljoin(self.url, reply.headers["Location"])
        joiner = "&" if "?" in location else "?"
        url = f"{location}{joiner}digest={urllib.parse.quote(digest)}"
        with self._request("PUT", url, data, "application/octet-stream"):
            pass
        return digest

    def push_manifest(self, repo: str, ref: str, manifest: dict, media_type: str) -> str:
        body = json.dumps(manifest).encode()
        with self._request("PUT", f"{self.url}/v2/{repo}/manifests/{ref}", body, media_type):
            pass
        return sha256(body)

    def manifest(self, repo: str, ref: str, accept: str) -> tuple[str, dict]:
        """(media type, document) of the manifest or index at ``ref``."""
        request = urllib.request.Request(f"{self.url}/v2/{repo}/manifests/{ref}")
        request.add_header("Accept", accept)
        if self.auth:
            request.add_header("Authorization", self.auth)
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.headers["Content-Type"], json.loads(reply.read())

    def descriptor(self, repo: str, data: bytes, media_type: str) -> dict:
        return {"mediaType": media_type, "digest": self.push_blob(repo, data), "size": len(data)}

    def push_wasm(self, repo: str, tag: str, module: bytes, annotations: dict | None = None) -> str:
        """The ORAS style: an OCI manifest whose one layer is the module itself."""
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": self.descriptor(repo, b"{}", OCI_CONFIG),
            "layers": [self.descriptor(repo, module, WASM_LAYER)],
        }
        if annotations:
            manifest["annotations"] = annotations
        return self.push_manifest(repo, tag, manifest, OCI_MANIFEST)

    def push_image(self, repo: str, tag: str, files: dict[str, bytes]) -> str:
        """The Dockerfile style: ``FROM scratch`` + ``COPY main.wasm plugin.wasm``."""
        tar = tar_bytes(files)
        layer = gzip.compress(tar, mtime=0)
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [sha256(tar)]},
        }
        manifest = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": self.descriptor(repo, json.dumps(config).encode(), DOCKER_CONFIG),
            "layers": [self.descriptor(repo, layer, DOCKER_LAYER)],
        }
        return self.push_manifest(repo, tag, manifest, DOCKER_MANIFEST)


def tar_bytes(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def htpasswd_line(user: str, password: str) -> str:
    """A bcrypt htpasswd line (the registry accepts nothing else)."""
    try:
        import bcrypt
    except ImportError:
        bcrypt = None
    if bcrypt is not None:
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        return f"{user}:{hashed}"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # libxcrypt does bcrypt; removed from Python 3.13, hence bcrypt first
    hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
    if not hashed or not hashed.startswith("$2"):
        pytest.fail("cannot make a bcrypt hash: pip install bcrypt")
    return f"{user}:{hashed}"


def _config(port: int, htpasswd: Path | None) -> str:
    lines = [
        "version: 0.1",
        "log:",
        "  level: error",
        "  accesslog:",
        "    disabled: true",
        # In memory: the filesystem driver fsyncs ~30 times a push (4x slower on this disk),
        # and no test reads the registry's storage or outlives its process.
        "storage:",
        "  inmemory: {}",
        "  delete:",
        "    enabled: true",
        "http:",
        f"  addr: 127.0.0.1:{port}",
    ]
    if htpasswd:
        lines += ["auth:", "  htpasswd:", "    realm: hps-test", f"    path: {htpasswd}"]
    return "\n".join(lines) + "\n"


@contextmanager
def running_registry(workdir: Path, users: dict[str, str] | None = None) -> Iterator[Registry]:
    binary = shutil.which(BINARY)
    if binary is None:
        pytest.fail(f"{BINARY} not found: apt-get install docker-registry (the tests need it)")
    workdir.mkdir(parents=True, exist_ok=True)
    htpasswd = None
    if users:
        htpasswd = workdir / "htpasswd"
        htpasswd.write_text("".join(htpasswd_line(u, p) + "\n" for u, p in users.items()))
    port = free_port()
    config = workdir / "config.yml"
    config.write_text(_config(port, htpasswd))
    log = (workdir / "registry.log").open("wb")
    process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log)
    try:
        _wait_ready(process, port, workdir / "registry.log")
        auth = None
        if users:
            user, password = next(iter(users.items()))
            auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        yield Registry(f"127.0.0.1:{port}", auth)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _wait_ready(process: subprocess.Popen, port: int, log: Path) -> None:
    def answers() -> bool:
        if process.poll() is not None:
            pytest.fail(f"{BINARY} exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1):
                return True
        except urllib.error.HTTPError as exc:
            return exc.code == 401
        except OSError:
            return False

    if not poll(answers, 15):
        pytest.fail(f"{BINARY} did not answer /v2/ on port {port} within 15 s")


# Named ``*_fixture`` so a test module can import them (no conftest needed) while its
# test functions still take ``registry`` / ``workspace`` without shadowing an import.
@pytest.fixture(scope="module", name="registry")
def registry_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("registry")) as running:
        yield running


@pytest.fixture(name="pauses")
def pauses_fixture(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The backoff waits between attempts at a registry, recorded instead of slept."""
    waits: list[float] = []
    monkeypatch.setattr(Client, "pause", staticmethod(waits.append))
    return waits


# -- running hps pull in a temp workspace ----------------------------------------------


@dataclass
class Result:
    code: int
    err: str

    def failures(self) -> list[str]:
        return [line for line in self.err.splitlines() if "FAILED" in line]


class Workspace:
    """``plugins.properties`` and the lock live in ``root``; the tree is ``root/out``."""

    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.root = root
        self.out = root / "out"
        self.properties = root / "plugins.properties"
        self.lock = root / "plugins.lock.json"
        self.manifest = root / "manifest.yaml"
        self.capsys = capsys

    def pull(
        self, entries: dict[str, str] | None, manifest: str | None = None, *flags: str
    ) -> Result:
        if entries is not None:
            self.properties.write_text("".join(f"{n}={r}\n" for n, r in entries.items()))
        argv = ["--properties", str(self.properties), "--output", str(self.out)]
        argv += ["--plain-http", "--retries", "1", "--timeout", "5"]
        if manifest is not None:
            self.manifest.write_text(manifest)
            argv += ["--manifest", str(self.manifest)]
        self.capsys.readouterr()
        code = main([*argv, *flags])
        captured = self.capsys.readouterr()
        assert captured.out == ""
        return Result(code, captured.err)

    def module(self, name: str, version: str) -> bytes:
        return (self.out / name / version / "plugin.wasm").read_bytes()

    def locked(self) -> dict:
        return json.loads(self.lock.read_text())["plugins"]

    def leftovers(self) -> list[str]:
        """Temp or hidden files anywhere in the tree or beside the lock: must be none."""
        found = []
        for base in (self.out, self.root):
            if not base.exists():
                continue
            for directory, _, files in os.walk(base):
                found += [os.path.join(directory, f) for f in files if hidden_or_temporary(f)]
        return found


@pytest.fixture(name="workspace")
def workspace_fixture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Workspace:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("DOCKER_CONFIG", "HPS_REGISTRY_USERNAME", "HPS_REGISTRY_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    return Workspace(tmp_path, capsys)
