"""The image, built and run for real.

The Dockerfile is built with buildah (no Docker daemon here) on a Debian base made from
Debian's own packages by mmdebstrap, with the wheels built on this host (``WHEELHOUSE``) and
the default inventory pulled from a loopback registry under its own namespace
(``PLUGIN_REGISTRY``, ``PLUGIN_NAMESPACE``, ``PLUGIN_PLAIN_HTTP``), once with
``USE_LOCAL_PLUGINS=false`` and once with ``true`` (the second build reuses the first one's
layers up to the pull). Each image then runs the way Higress's Helm chart runs the plugin
server: no command, no args, no volumes, its own user; once with a read-only root
(``readOnlyRootFilesystem``, nothing mounted: the server must cope without its cache directory)
and once with a writable one (the chart sets no securityContext). The test downloads modules
and checks their SHA-256, runs the image's HEALTHCHECK, sends SIGTERM and wants exit 0, and
reports the image's size and build time.

It needs root, buildah and mmdebstrap (``apt-get install buildah mmdebstrap``). Missing tools
fail it. It skips, with the reason, only where buildah cannot run at all (not root, or no
mount namespaces) and never under CI.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hps.config import Config
from hps.pull.properties import Key
from tests.support.inventory import seed_default_inventory
from tests.support.oci import Buildah, debian_python, image_spec, in_network, start
from tests.support.polling import poll
from tests.support.registry import Registry, running_registry
from tests.support.server import REPO

BASE = "localhost/hps-test-debian-python"
TOOLS = ("buildah", "mmdebstrap", "unshare", "nsenter", "mount")
SERVER_UID = 10001
PORT = 8080
NAMESPACE = "mirror"  # an internal mirror keeps its own namespace (PLUGIN_NAMESPACE)
# The build context: what .dockerignore lets through (checked by test_deploy.py), plus the
# Dockerfile and .dockerignore themselves, so buildah applies the real allow-list.
CONTEXT_FILES = ("Dockerfile", ".dockerignore", "setup.py", "README.md",
                 "twisted/plugins/hps_plugin.py")  # fmt: skip
CONTEXT_DIRS = ("hps", "plugins")
LOCAL_MODULE = b"\0asm\x01\0\0\0" + b"a module built by the user, not pulled"

pytestmark = [pytest.mark.timeout(900), pytest.mark.process]


def cannot_build(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI runs as root and must build the image")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def buildah() -> Iterator[Buildah]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: apt-get install buildah mmdebstrap")
    if os.geteuid() != 0:
        cannot_build("buildah builds with chroot isolation as root here; this user is not root")
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, text=True,
                           check=False)  # fmt: skip
    if probe.returncode != 0:
        cannot_build(f"no mount namespaces here, so buildah cannot run: {probe.stderr.strip()}")
    # Not under pytest's basetemp: another pytest run's clean-up must never walk into
    # buildah's mounted layers.
    tool = Buildah(Path(tempfile.mkdtemp(prefix="hps-test-buildah-")))
    try:
        yield tool
    finally:
        tool.close()


@dataclass
class Inventory:
    registry: Registry
    modules: dict[Key, bytes]  # what each (name, version) must serve


@pytest.fixture(scope="module")
def inventory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Inventory]:
    with running_registry(tmp_path_factory.mktemp("registry")) as registry:
        yield Inventory(registry, seed_default_inventory(registry, namespace=NAMESPACE))


def local_key(modules: dict[Key, bytes]) -> Key:
    """A (name, version) of the inventory with no bundled sample, to override locally."""
    return next(key for key in sorted(modules) if not (REPO / "plugins" / key[0]).exists())


def sample_keys(modules: dict[Key, bytes]) -> list[Key]:
    """Inventory keys the repository also holds a (no-op) sample module for."""
    return [key for key in sorted(modules)
            if (REPO / "plugins" / key[0] / key[1] / "plugin.wasm").is_file()]  # fmt: skip


GLIBC_MINOR = 36  # bookworm's glibc, the newest manylinux tag its pip accepts


def pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if result.returncode != 0:
        pytest.fail(f"pip {args[0]} failed:\n{result.stderr[-3000:]}")


def make_wheelhouse(target: Path, context: Path, python: tuple[int, int]) -> None:
    """Wheels for the base image's Python, made on this host (the build reaches no index):
    hps's own wheel, then its dependencies for that Python and platform."""
    pip("wheel", "--no-deps", "--wheel-dir", str(target), str(context))
    (hps_wheel,) = target.glob("hps-*.whl")
    machine = platform.machine()
    # pip takes each platform tag literally: list every manylinux glibc can load.
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(GLIBC_MINOR, 4, -1)]
    tags += [f"manylinux2014_{machine}", f"manylinux1_{machine}"]
    pip("download", "--only-binary=:all:", "--dest", str(target), "--implementation", "cp",
        "--python-version", f"{python[0]}.{python[1]}", *(f"--platform={tag}" for tag in tags),
        str(hps_wheel), "setuptools", "wheel")  # fmt: skip


@pytest.fixture(scope="module")
def context(buildah: Buildah, inventory: Inventory,
            tmp_path_factory: pytest.TempPathFactory) -> Path:  # fmt: skip
    """The build context, with the base image built and the wheelhouse filled."""
    context = tmp_path_factory.mktemp("context")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "dropin.cache")
    for name in CONTEXT_FILES:
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, context / name)
    for name in CONTEXT_DIRS:
        shutil.copytree(REPO / name, context / name, ignore=ignore)
    name, version = local_key(inventory.modules)
    (context / "plugins" / name / version).mkdir(parents=True)
    (context / "plugins" / name / version / "plugin.wasm").write_bytes(LOCAL_MODULE)
    python = debian_python(buildah, BASE)
    make_wheelhouse(context / "wheelhouse", context, python)
    return context


@dataclass
class Built:
    tag: str
    seconds: float
    size: str
    config: dict


@pytest.fixture(scope="module")
def images(buildah: Buildah, context: Path, inventory: Inventory,
           tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Built]:  # fmt: skip
    """Both builds, USE_LOCAL_PLUGINS false then true (the second reuses the first's layers)."""
    built: dict[bool, Built] = {}
    logs = tmp_path_factory.mktemp("build-logs")
    for use_local in (False, True):
        tag = f"localhost/hps-test:use-local-{str(use_local).lower()}"
        args = {"PYTHON_IMAGE": BASE, "WHEELHOUSE": "wheelhouse",
                "PLUGIN_REGISTRY": inventory.registry.host, "PLUGIN_NAMESPACE": NAMESPACE,
                "PLUGIN_PLAIN_HTTP": "true",
                "USE_LOCAL_PLUGINS": str(use_local).lower()}  # fmt: skip
        started = time.monotonic()
        buildah.bud(context, tag, args, logs / f"{use_local}.log")
        seconds = time.monotonic() - started
        built[use_local] = Built(tag, seconds, buildah.size(tag), buildah.config(tag))
    return built


@dataclass
class Running:
    process: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str, gzip: bool = False) -> dict:
        """GET on the container's port 8080, from inside its network namespace; a gzip body
        is unpacked, as the gateway's Go client does."""
        code = (
            "import gzip, hashlib, json, urllib.request, urllib.error\n"
            f"request = urllib.request.Request('http://127.0.0.1:{PORT}{path}')\n"
            f"if {gzip}: request.add_header('Accept-Encoding', 'gzip')\n"
            "try:\n"
            "    reply = urllib.request.urlopen(request, timeout=5)\n"
            "except urllib.error.HTTPError as err:\n"
            "    reply = err\n"
            "body = reply.read()\n"
            "encoding = reply.headers.get('Content-Encoding', '')\n"
            "if encoding == 'gzip': body = gzip.decompress(body)\n"
            "print(json.dumps({'status': reply.status, 'encoding': encoding,"
            " 'sha256': hashlib.sha256(body).hexdigest(), 'text': body.decode('latin-1')}))\n"
        )
        result = in_network(self.process.pid, code)
        if result.returncode != 0:
            return {"status": None, "error": result.stderr.strip().splitlines()[-1:]}
        return json.loads(result.stdout)

    def wait_ready(self, deadline: float) -> None:
        last: dict = {}

        def ready() -> bool:
            nonlocal last
            if self.process.poll() is not None:
                pytest.fail(f"the image exited {self.process.returncode}:\n{self.output()}")
            last = self.get("/readyz")
            return last["status"] == 200

        if not poll(ready, deadline - time.monotonic(), every=0.2):
            pytest.fail(f"/readyz never answered 200 (last: {last}):\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture
def run_image(buildah: Buildah, tmp_path: Path) -> Iterator:
    """Start an image as the Helm chart would; stop and remove everything afterwards."""
    containers: list[str] = []
    processes: list[subprocess.Popen[bytes]] = []

    def run(built: Built, read_only: bool) -> tuple[Running, Path]:
        container = buildah("from", "--quiet", built.tag).strip()
        containers.append(container)
        rootfs = buildah("mount", container).strip()
        log = tmp_path / f"{container}.log"
        process = start(image_spec(built.config, rootfs, read_only=read_only), log)
        processes.append(process)
        return Running(process, log), Path(rootfs)

    yield run
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    for container in containers:
        buildah("umount", container)
        buildah("rm", container)


def run_healthcheck(built: Built, rootfs: Path, server: Running, tmp_path: Path) -> int:
    """The image's HEALTHCHECK, as the engine runs it: in the container, as its user."""
    test = built.config["Healthcheck"]["Test"]
    assert test[0] == "CMD", test
    spec = image_spec(built.config, str(rootfs), argv=test[1:], read_only=True)
    check = start(spec, tmp_path / "healthcheck.log", network_of=server.process.pid)
    return check.wait(timeout=60)


def report(built: Built, use_local: bool, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print(f"\n[image] USE_LOCAL_PLUGINS={str(use_local).lower()}: "
              f"{built.size}, built in {built.seconds:.1f} s "
              f"(Debian {BASE}, buildah layers reused: {use_local})")  # fmt: skip


@pytest.mark.parametrize("use_local", [False, True], ids=["pulled", "use-local"])
def test_image_builds_serves_and_stops(
    use_local: bool, images: dict[bool, Built], inventory: Inventory, run_image,
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    built = images[use_local]
    report(built, use_local, capsys)
    config = built.config
    assert config["User"] == f"{SERVER_UID}:{SERVER_UID}"
    assert f"{PORT}/tcp" in config["ExposedPorts"]
    assert config["Healthcheck"]["Test"][:2] == ["CMD", "python"]

    # The Helm chart: no args, no volumes. With a read-only root the cache directory is not
    # writable; with a writable root it is the server user's.
    read_only = not use_local
    server, rootfs = run_image(built, read_only=read_only)
    server.wait_ready(time.monotonic() + 60)
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert set(uids) == {str(SERVER_UID)}, status

    # Every module of the default inventory, pulled from the loopback registry; the local
    # module wins over the download only with USE_LOCAL_PLUGINS=true; the repository's
    # no-op samples are never in the image.
    expected = dict(inventory.modules)
    key = local_key(expected)
    if use_local:
        expected[key] = LOCAL_MODULE
    index = json.loads(server.get("/plugins/index.json")["text"])
    served = {(p["name"], v["version"]) for p in index["plugins"] for v in p["versions"]}
    assert set(expected) <= served, sorted(set(expected) - served)[:5]
    for name, version in [key, *sample_keys(expected)[:2], sorted(expected)[-1]]:
        # As the gateway asks (gzip accepted), and as curl does.
        for gzip in (True, False):
            reply = server.get(f"/plugins/{name}/{version}/plugin.wasm", gzip=gzip)
            assert reply["status"] == 200, (name, version, reply)
            assert reply["sha256"] == hashlib.sha256(expected[name, version]).hexdigest(), (
                name, version, reply["encoding"])  # fmt: skip

    assert run_healthcheck(built, rootfs, server, tmp_path) == 0, server.output()

    # cache_dir is the server's: with a writable root (the chart's way) it writes there.
    cache = rootfs / Config.cache_dir.lstrip("/")
    assert cache.is_dir() and cache.stat().st_uid == SERVER_UID
    written = {p.name: p.stat().st_uid for p in cache.iterdir()}
    assert written == ({} if read_only else {"gzip": SERVER_UID, "record": SERVER_UID}), (
        "read-only root, or nothing written")

    server.process.send_signal(signal.SIGTERM)
    code = server.process.wait(timeout=60)
    output = server.output()
    assert code == 0, output
    assert "Traceback" not in output, output
