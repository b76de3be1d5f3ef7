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

The release is built by ``tools/build-image`` itself, as a user runs it: linux/amd64 and
linux/arm64 (its RUN steps under qemu-user-static through binfmt_misc, which the test
registers) from the same Dockerfile, on per-arch Debian bases, with one wheelhouse for both
platforms, into one OCI image index pushed to the loopback registry. The test reads the index
back (both platforms listed), pulls each image by its digest, reads its provenance labels
back, runs the arm64 image under emulation as UID 10001 and downloads a module, and compares
the two images' plugin trees byte for byte. The amd64 image of the release is the
``USE_LOCAL_PLUGINS=false`` image above.

The Debian bases' root filesystems are kept in ``tests/support/oci.CACHE``
(``/var/cache/hps-test``, or ``HPS_TEST_CACHE``), outside the clone, keyed by a hash of their
mmdebstrap recipe: the arm64 one takes minutes to make under qemu, so the first run on a
machine pays for it and later runs only unpack it.

It needs root, buildah, mmdebstrap and qemu-user-static with binfmt-support (``apt-get
install buildah mmdebstrap qemu-user-static binfmt-support``). Missing tools fail it. It skips,
with the reason, only where buildah cannot run at all (not root, or no mount namespaces) and
never under CI.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from hps.config import Config
from hps.pull.properties import Key
from tests.support.inventory import seed_default_inventory
from tests.support.oci import Buildah, debian_python, image_spec, in_network, start
from tests.support.polling import poll
from tests.support.registry import OCI_INDEX, Registry, running_registry
from tests.support.server import REPO

BASE = "localhost/hps-test-debian-python"
"""A local manifest list of one Debian base per platform: each build picks its own."""
PLATFORMS = ("amd64", "arm64")
TOOLS = ("buildah", "mmdebstrap", "unshare", "nsenter", "mount", "update-binfmts")
QEMU = Path("/usr/bin/qemu-aarch64-static")
BINFMT = Path("/proc/sys/fs/binfmt_misc")
BUILD_IMAGE = REPO / "tools" / "build-image"
RELEASE_REPOSITORY = "higress/plugin-server"
RELEASE_SOURCE = "https://example.invalid/hps.git"
LABEL = "org.opencontainers.image."
INVENTORY_LABEL = "io.higress.plugin-inventory-sha256"
SERVER_UID = 10001
PORT = 8080
NAMESPACE = "mirror"  # an internal mirror keeps its own namespace (PLUGIN_NAMESPACE)
# The build context: what .dockerignore lets through (checked by test_deploy.py), plus the
# Dockerfile and .dockerignore themselves, so buildah applies the real allow-list.
CONTEXT_FILES = ("Dockerfile", ".dockerignore", "setup.py", "README.md",
                 "twisted/plugins/hps_plugin.py")  # fmt: skip
CONTEXT_DIRS = ("hps", "plugins")
LOCAL_MODULE = b"\0asm\x01\0\0\0" + b"a module built by the user, not pulled"

# The first run on a machine makes the arm64 base under qemu (minutes) inside the first test.
pytestmark = [pytest.mark.timeout(1800), pytest.mark.process]


def cannot_build(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI runs as root and must build the image")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def buildah() -> Iterator[Buildah]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: apt-get install buildah mmdebstrap"
                    " binfmt-support")
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


GLIBC = "glibc-2.36"  # bookworm's, the newest manylinux tag its pip accepts


def emulation() -> None:
    """qemu-user-static registered for aarch64 in binfmt_misc (mounted first if it is not),
    as a foreign platform's build needs; fails with the fix when it cannot be."""
    if not QEMU.exists():
        pytest.fail(f"{QEMU} not found: apt-get install qemu-user-static binfmt-support")
    if not (BINFMT / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)],
                       capture_output=True, check=False)  # fmt: skip
    subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True,
                   check=False)  # fmt: skip
    entry = BINFMT / "qemu-aarch64"
    if not entry.exists() or not entry.read_text().startswith("enabled"):
        pytest.fail(f"qemu-aarch64 is not registered in {BINFMT} (mount binfmt_misc there, then"
                    " update-binfmts --enable qemu-aarch64)")


@pytest.fixture(scope="module")
def bases(buildah: Buildah) -> tuple[int, int]:
    """One Debian base per platform (cached root filesystems), and a local manifest list of
    them named BASE; returns their Python's version, which the wheels must match."""
    emulation()
    pythons = set()
    buildah("manifest", "create", BASE)
    for arch in PLATFORMS:
        pythons.add(debian_python(buildah, f"{BASE}-{arch}", arch))
        buildah("manifest", "add", BASE, f"containers-storage:{BASE}-{arch}")
    (python,) = pythons
    return python


@pytest.fixture(scope="module")
def context(inventory: Inventory, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The build context: the repository's files, plus one module to use locally (the
    release build adds the wheelhouse)."""
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
    return context


@dataclass
class Built:
    tag: str
    seconds: float
    size: str
    config: dict


def build_args(inventory: Inventory, use_local: bool) -> dict[str, str]:
    return {"PYTHON_IMAGE": BASE, "PLUGIN_REGISTRY": inventory.registry.host,
            "PLUGIN_NAMESPACE": NAMESPACE, "PLUGIN_PLAIN_HTTP": "true",
            "USE_LOCAL_PLUGINS": str(use_local).lower()}  # fmt: skip


def revision() -> str:
    """This checkout's commit (the test's context is a copy, not a checkout)."""
    result = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                            text=True, check=False)  # fmt: skip
    return result.stdout.strip() if result.returncode == 0 else "0" * 40


def inventory_sha256(context: Path) -> str:
    """The inventory label as docs/deploy.md defines it, computed here on its own: the SHA-256
    of ``sha256sum``'s lines for the inventory files present, in their order."""
    files = ("plugins/plugins.properties", "plugins/console.properties",
             "plugins/manifest.yaml", "plugins/plugins.lock.json")  # fmt: skip
    lines = "".join(f"{hashlib.sha256((context / f).read_bytes()).hexdigest()}  {f}\n"
                    for f in files if (context / f).is_file())  # fmt: skip
    return hashlib.sha256(lines.encode()).hexdigest()


@dataclass
class Release:
    """What tools/build-image pushed: the index as the registry serves it, each platform's
    image pulled back by its digest, and the labels it should carry."""

    media_type: str
    index: dict
    images: dict[str, Built]  # by architecture
    labels: dict[str, str]


@pytest.fixture(scope="module")
def release(buildah: Buildah, bases: tuple[int, int], context: Path, inventory: Inventory,
            tmp_path_factory: pytest.TempPathFactory) -> Release:  # fmt: skip
    """tools/build-image, as documented: both platforms, one wheelhouse, pushed as one index."""
    registry = inventory.registry
    args = [str(BUILD_IMAGE), "--context", str(context), "--wheels", ".".join(map(str, bases)),
            "--libc", GLIBC, "--network", "host", "--insecure", "--source", RELEASE_SOURCE,
            "--revision", revision()]  # fmt: skip
    for key, value in build_args(inventory, use_local=False).items():
        args += ["--build-arg", f"{key}={value}"]
    env = {**os.environ, "BUILDAH": " ".join(buildah.global_args), "BUILDAH_ISOLATION": "chroot",
           "PYTHON": sys.executable}  # fmt: skip
    log = tmp_path_factory.mktemp("release") / "build-image.log"
    with log.open("w") as out:
        code = subprocess.run([*args, f"{registry.host}/{RELEASE_REPOSITORY}:release"],
                              stdout=out, stderr=subprocess.STDOUT, env=env, timeout=1500,
                              check=False).returncode  # fmt: skip
    output = log.read_text()
    if code != 0:
        pytest.fail(f"tools/build-image exited {code}:\n{output[-5000:]}")
    seconds = {arch: float(s) for arch, s in re.findall(r"built linux/(\w+) in (\d+) s", output)}
    media_type, index = registry.manifest(RELEASE_REPOSITORY, "release", OCI_INDEX)
    images = {}
    for entry in index["manifests"]:
        pulled = f"{registry.host}/{RELEASE_REPOSITORY}@{entry['digest']}"
        buildah("pull", "--quiet", "--tls-verify=false", pulled)
        arch = entry["platform"]["architecture"]
        images[arch] = Built(pulled, seconds.get(arch, -1.0), buildah.size(pulled),
                             buildah.config(pulled))  # fmt: skip
    version = re.search(r'version="([^"]+)"', (context / "setup.py").read_text())
    assert version is not None
    labels = {f"{LABEL}source": RELEASE_SOURCE, f"{LABEL}revision": revision(),
              f"{LABEL}version": version[1], INVENTORY_LABEL: inventory_sha256(context)}
    return Release(media_type, index, images, labels)


@pytest.fixture(scope="module")
def images(buildah: Buildah, context: Path, inventory: Inventory, release: Release,
           tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Built]:  # fmt: skip
    """USE_LOCAL_PLUGINS false: the release's amd64 image; true: built beside it from the same
    base and wheelhouse (so it reuses the release build's layers up to the pull)."""
    tag = "localhost/hps-test:use-local-true"
    args = {**build_args(inventory, use_local=True), "WHEELHOUSE": "wheelhouse"}
    started = time.monotonic()
    buildah.bud(context, tag, args, tmp_path_factory.mktemp("build-logs") / "use-local.log")
    seconds = time.monotonic() - started
    return {False: release.images["amd64"],
            True: Built(tag, seconds, buildah.size(tag), buildah.config(tag))}


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
def mount_image(buildah: Buildah) -> Iterator:
    """``mount_image(built)``: a container of the image, its root filesystem mounted (path
    and container name); every one is removed afterwards."""
    containers: list[str] = []

    def mount(built: Built) -> tuple[Path, str]:
        container = buildah("from", "--quiet", built.tag).strip()
        containers.append(container)
        return Path(buildah("mount", container).strip()), container

    yield mount
    for container in containers:
        buildah("umount", container)
        buildah("rm", container)


@pytest.fixture
def run_image(mount_image, tmp_path: Path) -> Iterator:
    """Start an image as the Helm chart would; stop and remove everything afterwards."""
    processes: list[subprocess.Popen[bytes]] = []

    def run(built: Built, read_only: bool) -> tuple[Running, Path]:
        rootfs, container = mount_image(built)
        log = tmp_path / f"{container}.log"
        process = start(image_spec(built.config, str(rootfs), read_only=read_only), log)
        processes.append(process)
        return Running(process, log), rootfs

    yield run
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


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


def tree_of(top: Path) -> dict[str, tuple]:
    """Every entry under ``top``: a file's mode and SHA-256, a symlink's target, a directory's
    mode (symlinks not followed)."""
    entries: dict[str, tuple] = {}
    for here, dirs, files in os.walk(top):
        for name in dirs + files:
            path = Path(here, name)
            info = path.lstat()
            if path.is_symlink():
                entries[str(path.relative_to(top))] = ("link", os.readlink(path))
            elif path.is_dir():
                entries[str(path.relative_to(top))] = ("dir", info.st_mode)
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                entries[str(path.relative_to(top))] = ("file", info.st_mode, digest)
    return entries


AARCH64 = 0xB7
"""ELF e_machine of arm64."""


def elf_machine(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[18:20], "little")


def test_release_is_one_index_for_both_platforms_and_arm64_serves_the_same_bytes(
    release: Release, inventory: Inventory, run_image, mount_image,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    assert release.media_type == OCI_INDEX, release.media_type
    platforms = sorted((m["platform"]["os"], m["platform"]["architecture"])
                       for m in release.index["manifests"])  # fmt: skip
    assert platforms == [("linux", "amd64"), ("linux", "arm64")]

    # Provenance, read back from each pulled image with buildah inspect.
    for arch, built in release.images.items():
        labels = built.config["Labels"]
        assert {key: labels.get(key) for key in release.labels} == release.labels, arch
        created = datetime.strptime(labels[f"{LABEL}created"], "%Y-%m-%dT%H:%M:%SZ")
        age = datetime.now(timezone.utc).replace(tzinfo=None) - created
        assert timedelta(0) <= age < timedelta(hours=2), (arch, created)
        with capsys.disabled():
            print(f"\n[image] linux/{arch}: {built.size}, built in {built.seconds:.0f} s"
                  f" by tools/build-image; labels {json.dumps(labels, sort_keys=True)}")

    # The two plugin trees are the same bytes, modes and links.
    amd64, _ = mount_image(release.images["amd64"])
    arm64 = release.images["arm64"]
    server, rootfs = run_image(arm64, read_only=True)
    assert elf_machine((rootfs / "usr/bin/python3").resolve()) == AARCH64  # really arm64
    assert tree_of(rootfs / "srv/plugins") == tree_of(amd64 / "srv/plugins")

    # It runs under emulation, as UID 10001, and serves a module of the inventory.
    server.wait_ready(time.monotonic() + 180)
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert set(uids) == {str(SERVER_UID)}, status
    assert "aarch64" in os.readlink(f"/proc/{server.process.pid}/exe")  # qemu runs it
    name, version = sorted(inventory.modules)[-1]
    on_amd64 = (amd64 / "srv/plugins" / name / version / "plugin.wasm").read_bytes()
    assert on_amd64 == inventory.modules[name, version]
    for gzip in (True, False):
        reply = server.get(f"/plugins/{name}/{version}/plugin.wasm", gzip=gzip)
        assert reply["status"] == 200, reply
        assert reply["sha256"] == hashlib.sha256(on_amd64).hexdigest()
        assert reply["text"].encode("latin-1") == on_amd64

    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=120) == 0, server.output()
