"""Real OCI images without a Docker daemon: buildah on a throwaway store, and a tiny runtime.

``Buildah`` keeps every image and container in a temporary storage directory
(overlay driver: layers are cheap, so the second build of the same Dockerfile
reuses the first one's), and removes them all in ``close()``. ``debian_python``
builds a base image from Debian's own packages with mmdebstrap, as the issue
describes for machines with no registry of base images.

``start`` runs an image the way Kubernetes starts a container with no
``command``/``args``: its ENTRYPOINT + CMD, its Env, WorkingDir and User, in a
network namespace of its own (so its fixed port 8080 meets nothing else on this
machine; ``in_network`` runs a client there, as ``kubectl exec`` would). The root
filesystem is read-only unless asked otherwise (``readOnlyRootFilesystem``);
writable directories are tmpfs mounts (an ``emptyDir``). It is namespaces, a
chroot and setuid: what a container runtime does for these properties, without
cgroups, which the tests do not look at. This file is also the program run
inside those namespaces (``python oci.py SPEC``), so it imports only the
standard library.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEBIAN_SUITE = "bookworm"
# What the Dockerfile's steps run (sh, coreutils, grep, sed) plus python3, and python3-venv for
# the builder's `python3 -m venv` (pip from ensurepip). Unpacked, not configured ("extract"):
# configuring runs every maintainer script, under qemu for arm64 (~5 min on an idle machine,
# over 10 under load, most of it byte-compiling the standard library), and nothing here needs
# what they make but root's passwd entry and the mount points (see debian_python). No apt:
# nothing installs packages in the image.
DEBIAN_VARIANT = "extract"
DEBIAN_PACKAGES = "dash,coreutils,grep,sed,python3,python3-venv"


class ToolError(RuntimeError):
    """A build tool failed; the message holds its command and the end of its output."""


def _check(args: list[str], timeout: float, **kwargs: Any) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False,
                            **kwargs)  # fmt: skip
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-3000:]
        raise ToolError(f"{' '.join(args[:6])} ... exited {result.returncode}:\n{tail}")
    return result.stdout


@dataclass
class Buildah:
    """buildah on its own storage under ``workdir``; everything made here goes in close()."""

    workdir: Path
    driver: str = "overlay"

    @property
    def global_args(self) -> list[str]:
        store = ["--root", str(self.workdir / "storage"), "--runroot", str(self.workdir / "run")]
        return ["buildah", *store, "--storage-driver", self.driver]

    def __call__(self, *args: str, timeout: float = 300) -> str:
        return _check([*self.global_args, *args], timeout)

    def bud(self, context: Path, tag: str, build_args: dict[str, str], log: Path) -> None:
        """``docker build``: layers kept for the next build, HEALTHCHECK kept (docker format)."""
        args = [*self.global_args, "bud", "--isolation", "chroot", "--network", "host",
                "--layers", "--format", "docker", "-t", tag]  # fmt: skip
        for key, value in build_args.items():
            args += ["--build-arg", f"{key}={value}"]
        with log.open("w") as out:
            code = subprocess.run([*args, str(context)], stdout=out, stderr=subprocess.STDOUT,
                                  timeout=600, check=False).returncode  # fmt: skip
        if code != 0:
            raise ToolError(f"buildah bud exited {code}:\n{log.read_text()[-4000:]}")

    def config(self, image: str) -> dict[str, Any]:
        """The image's Docker config: Entrypoint, Cmd, Env, User, WorkingDir, Healthcheck."""
        return json.loads(self("inspect", "--type", "image", image))["Docker"]["config"]

    def size(self, image: str) -> str:
        """The image's unpacked size as ``docker images`` shows it (e.g. ``264 MB``)."""
        return str(json.loads(self("images", "--json", image))[0]["size"])

    def close(self) -> None:
        """Remove every container and image, then the storage itself."""
        for args in (("rm", "--all"), ("rmi", "--all", "--force")):
            subprocess.run([*self.global_args, *args], capture_output=True, timeout=120,
                           check=False)  # fmt: skip
        # Never delete through a layer still mounted: unmount whatever is left, deepest first.
        with open("/proc/mounts", encoding="utf-8") as mounts:
            points = [line.split()[1] for line in mounts]
        for point in sorted((p for p in points if p.startswith(f"{self.workdir}/")), reverse=True):
            subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)


CACHE = Path(os.environ.get("HPS_TEST_CACHE", "/var/cache/hps-test"))
"""Where base root filesystems are kept between runs, outside any clone (mmdebstrap downloads
and unpacks ~50 packages: tens of seconds per architecture). Each is keyed by a hash of its
recipe, so a changed recipe builds a new one; delete the directory to start afresh."""


def base_recipe(arch: str) -> list[str]:
    """The mmdebstrap arguments (without the target) of a Debian base for ``arch``."""
    slim = [f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "locale")]
    return ["--quiet", f"--arch={arch}", f"--variant={DEBIAN_VARIANT}",
            f"--include={DEBIAN_PACKAGES}", *slim, DEBIAN_SUITE]  # fmt: skip


def cached_base(arch: str) -> Path:
    """The base root filesystem for ``arch`` as a tarball in :data:`CACHE`, made when absent.
    A lock keeps two runs from making it twice; a half-made one is never renamed in."""
    recipe = base_recipe(arch)
    key = hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:16]
    tarball = CACHE / f"debian-{DEBIAN_SUITE}-{arch}-{key}.tar"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not tarball.exists():
            # mmdebstrap picks its output format by the name's suffix: keep ".tar" last.
            partial = tarball.with_name(f".partial-{os.getpid()}-{tarball.name}")
            try:
                _check(["mmdebstrap", *recipe, str(partial)], timeout=1200)
                os.replace(partial, tarball)
            finally:
                partial.unlink(missing_ok=True)
    return tarball


def debian_python(buildah: Buildah, name: str, arch: str = "amd64") -> tuple[int, int]:
    """Commit a Debian image for ``arch`` with python3 and venv from Debian's packages (no
    base image needed) as ``name``; return its Python's version, which the wheels must match."""
    tarball = cached_base(arch)
    container = buildah("from", "--arch", arch, "scratch").strip()
    try:
        rootfs = Path(buildah("mount", container).strip())
        _check(["tar", "--numeric-owner", "-xpf", str(tarball), "-C", str(rootfs)], timeout=300)
        # What configuring base-files and base-passwd would have made, and a runtime needs.
        for directory in ("proc", "sys", "run", "root"):
            (rootfs / directory).mkdir(exist_ok=True)
        (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (rootfs / "etc/group").write_text("root:x:0:\n")
        (python,) = [p.name for p in (rootfs / "usr/bin").glob("python3.*") if p.name[8:].isdigit()]
        buildah("umount", container)
        buildah("config", "--arch", arch, "--os", "linux", container)
        buildah("commit", "--quiet", container, name)
    finally:
        buildah("rm", container)
    major, minor = python.removeprefix("python").split(".")
    return int(major), int(minor)


@dataclass
class RunSpec:
    """What a container runtime needs to start one process of an image."""

    rootfs: str
    argv: list[str]
    env: dict[str, str]
    workdir: str = "/"
    user: str = "0:0"
    read_only: bool = True
    tmpfs: list[str] = field(default_factory=list)


def image_spec(config: dict[str, Any], rootfs: str, argv: list[str] | None = None,
               **options: Any) -> RunSpec:  # fmt: skip
    """ENTRYPOINT + CMD (no args, as the Higress chart runs it), or ``argv`` instead."""
    env = dict(item.split("=", 1) for item in config.get("Env") or [])
    command = argv if argv is not None else (config.get("Entrypoint") or []) + (
        config.get("Cmd") or [])
    return RunSpec(rootfs, command, env, config.get("WorkingDir") or "/",
                   config.get("User") or "0:0", **options)  # fmt: skip


def start(spec: RunSpec, log: Path, network_of: int | None = None) -> subprocess.Popen[bytes]:
    """Start ``spec`` in new mount and network namespaces, or in the network of the process
    ``network_of`` (``docker exec``). The pid returned is the image's process (exec, no fork)."""
    runner = [sys.executable, __file__, json.dumps(spec.__dict__)]
    if network_of is None:
        args = ["unshare", "--mount", "--net", "--propagation", "private", *runner]
    else:
        args = ["nsenter", f"--target={network_of}", "--net", "--",
                "unshare", "--mount", "--propagation", "private", *runner]  # fmt: skip
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)  # fmt: skip


def in_network(pid: int, code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` (this interpreter) in the network namespace of process ``pid``."""
    args = ["nsenter", f"--target={pid}", "--net", "--", sys.executable, "-c", code]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def _loopback_up() -> None:
    """``ip link set lo up`` in a fresh network namespace, without needing iproute2."""
    import fcntl
    import socket
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(sock, siocgifflags, request))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sh", b"lo", flags | iff_up))


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def _resolve(command: str, path: str) -> str:
    """``execvp`` inside the chroot, with the image's PATH rather than ours."""
    if "/" in command:
        return command
    for directory in path.split(":"):
        candidate = os.path.join(directory, command)
        if os.access(candidate, os.X_OK):
            return candidate
    raise SystemExit(f"{command}: not found on the image's PATH {path}")


def _exec(spec: dict[str, Any]) -> None:
    _loopback_up()
    root = spec["rootfs"]
    _mount("--bind", root, root)
    if spec["read_only"]:
        _mount("-o", "remount,bind,ro", root)
    _mount("-t", "proc", "proc", f"{root}/proc")
    _mount("--rbind", "/dev", f"{root}/dev")
    for target in spec["tmpfs"]:
        _mount("-t", "tmpfs", "-o", "mode=0777,size=64m", "tmpfs", f"{root}{target}")
    uid, _, gid = spec["user"].partition(":")
    os.chroot(root)
    os.chdir(spec["workdir"])
    os.setgroups([])
    os.setgid(int(gid or uid))
    os.setuid(int(uid))
    argv, env = spec["argv"], spec["env"]
    os.execve(_resolve(argv[0], env.get("PATH", "/usr/bin:/bin")), argv, env)


if __name__ == "__main__":
    _exec(json.loads(sys.argv[1]))
