"""``hps wasmplugin``: print a Higress WasmPlugin for one artifact of the tree, or move a
cluster's WasmPlugins onto hps (``--rewrite``).

The gateway checks a WasmPlugin's ``sha256`` against the module it downloads,
and re-downloads an http URL only when the resource changes. Pinning the
checksum from the very file the server serves makes a swapped or corrupted
module fail loudly instead of loading quietly, and lets a new build roll out by
changing the resource. The digest comes from the tree, not from the network, so
this works on a bastion host before the server is even deployed.

    hps wasmplugin key-rate-limit 1.0.0 --base-url http://higress-plugin-server.higress-system.svc

``--rewrite`` reads WasmPlugins as ``kubectl get wasmplugins -A -o yaml`` prints them and
prints, ready for ``kubectl apply -f -``, each one whose ``oci://`` URL the tree serves, its
``url`` aimed at hps and its ``sha256`` pinned from the tree, every other field as it was.

    kubectl get wasmplugins -A -o yaml | hps wasmplugin --rewrite - --base-url URL \
        | kubectl apply -f -
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml

from hps.catalog import NotAModule, examine_module
from hps.fleet import Aim, WasmPlugin, load_wasmplugins, oci_target, read_input, tree_digest
from hps.guard import MODULE_FILE, accept_name, accept_version, within_root
from hps.pull.errors import InputError

API_VERSION = "extensions.higress.io/v1alpha1"
PHASES = ("UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS")
DEFAULT_NAMESPACE = "higress-system"
DEFAULT_ROOT = "plugins"
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")


class WasmPluginError(Exception):
    """Bad input; the message is one line for the operator."""


class _Parser(argparse.ArgumentParser):
    """argparse prints usage and exits; we want one line and exit 2 like every error."""

    def error(self, message: str) -> NoReturn:
        raise WasmPluginError(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="hps wasmplugin",
        usage="%(prog)s NAME VERSION --base-url URL [options]\n"
        "       %(prog)s --rewrite FILE|- --base-url URL [--root DIR] [--partial]",
        description="Print a Higress WasmPlugin (YAML) for one artifact, its sha256 "
        "taken from the plugin tree; or move existing WasmPlugins onto hps (--rewrite).",
    )
    p.add_argument("name", nargs="?", help="plugin name, e.g. key-rate-limit")
    p.add_argument("version", nargs="?", help="plugin version, e.g. 1.0.0")
    p.add_argument(
        "--rewrite",
        metavar="FILE|-",
        help="WasmPlugins (kubectl get wasmplugins -A -o yaml): print each whose oci:// URL "
        "the tree serves, aimed at hps and pinned",
    )
    p.add_argument(
        "--partial",
        action="store_true",
        help="with --rewrite: exit 0 even when the tree cannot serve some of them",
    )
    p.add_argument(
        "--base-url",
        required=True,
        metavar="URL",
        help="where gateways reach hps, e.g. http://higress-plugin-server.higress-system.svc",
    )
    p.add_argument(
        "--root",
        default=DEFAULT_ROOT,
        metavar="DIR",
        help="plugin tree holding <name>/<version>/plugin.wasm (default %(default)s)",
    )
    p.add_argument(
        "--namespace",
        help=f"namespace of the WasmPlugin (default {DEFAULT_NAMESPACE})",
    )
    p.add_argument("--phase", choices=PHASES, help="filter phase (default UNSPECIFIED_PHASE)")
    p.add_argument("--priority", type=int, metavar="N", help="order within the phase")
    return p


def module_path(root: str, name: str, version: str) -> Path:
    """The artifact's file, refused unless it is a sane name in the tree."""
    if not accept_name(name):
        raise WasmPluginError(f"invalid plugin name {name!r}")
    if not accept_version(version):
        raise WasmPluginError(f"invalid plugin version {version!r}")
    if not os.path.isdir(root):
        raise WasmPluginError(f"root {root!r} is not a directory")
    path = Path(root, name, version, MODULE_FILE)
    if not path.is_file():
        raise WasmPluginError(f"no artifact {name} {version}: {path} not found")
    # An alias symlink may point elsewhere in the tree, never out of it: the
    # server would not serve such a file, so no resource may pin it.
    if not within_root(str(path), root):
        raise WasmPluginError(f"{path} resolves outside the root {root!r}")
    return path


def module_digest(path: Path) -> str:
    """SHA-256 of the module, streamed; refused unless it is WebAssembly (the catalog's test)."""
    try:
        with path.open("rb") as handle:
            return examine_module(handle).sha256
    except NotAModule:
        raise WasmPluginError(f"{path} is not a WebAssembly module") from None
    except OSError as err:
        raise WasmPluginError(f"cannot read {path}: {err.strerror}") from None


def artifact_url(base_url: str, name: str, version: str) -> str:
    """The URL the gateway fetches: the server's fixed layout under the base."""
    return Aim(base_url).url_for(name, version)


def resource_name(name: str, version: str) -> str:
    """``<name>-<version>`` made a valid object name (versions may hold ``+`` or capitals)."""
    text = re.sub(r"[^a-z0-9.-]+", "-", f"{name}-{version}".lower()).strip("-.")
    return text[:253].rstrip("-.")


def label_value(text: str) -> str:
    """Label values are at most 63 characters of ``[A-Za-z0-9._-]``, alphanumeric at
    both ends; a version such as ``2.0.0+build.5`` must be bent to fit."""
    value = re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)


def wasmplugin(args: argparse.Namespace) -> dict[str, Any]:
    namespace = args.namespace or DEFAULT_NAMESPACE
    if not _DNS_LABEL.match(namespace):
        raise WasmPluginError(f"invalid namespace {namespace!r}")
    url = artifact_url(args.base_url, args.name, args.version)
    sha256 = module_digest(module_path(args.root, args.name, args.version))
    spec: dict[str, Any] = {"url": url, "sha256": sha256,
                            "phase": args.phase or "UNSPECIFIED_PHASE"}
    if args.priority is not None:
        spec["priority"] = args.priority
    # Enabled nowhere until the operator adds matchRules or a default config:
    # applying the printed resource as-is must not change live traffic.
    spec["defaultConfigDisable"] = True
    return {
        "apiVersion": API_VERSION,
        "kind": "WasmPlugin",
        "metadata": {
            "name": resource_name(args.name, args.version),
            "namespace": namespace,
            "labels": {
                "higress.io/wasm-plugin-name": label_value(args.name),
                "higress.io/wasm-plugin-version": label_value(args.version),
            },
        },
        "spec": spec,
    }


def render(resource: dict[str, Any], source: str) -> str:
    header = f"# Generated by hps wasmplugin from {source}; sha256 pins that exact module.\n"
    return header + yaml.safe_dump(resource, sort_keys=False, default_flow_style=False)


def check_mode(args: argparse.Namespace) -> None:
    """One artifact (NAME VERSION and its options) or --rewrite, never a mix."""
    if args.rewrite is None:
        if args.partial:
            raise WasmPluginError("--partial goes with --rewrite")
        if not (args.name and args.version):
            raise WasmPluginError("give NAME VERSION, or --rewrite FILE|-")
        return
    mixed = [flag for flag, value in (("NAME VERSION", args.name), ("--namespace", args.namespace),
             ("--phase", args.phase), ("--priority", args.priority)) if value is not None]
    if mixed:
        raise WasmPluginError(f"--rewrite keeps each WasmPlugin as it is; it takes no {mixed[0]}")


@dataclass
class Rewrite:
    moved: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # one line each: which, and why
    left: int = 0  # WasmPlugins not on oci:// (already moved, or elsewhere): not printed


def rewrite(plugins: list[WasmPlugin], root: str, base_url: str) -> Rewrite:
    """Each WasmPlugin on ``oci://`` whose name and version the tree serves, aimed at hps."""
    aim = Aim(base_url)
    if not os.path.isdir(root):
        raise WasmPluginError(f"root {root!r} is not a directory")
    done = Rewrite()
    for plugin in plugins:
        if not plugin.url.startswith("oci://"):
            done.left += 1
            continue
        target = oci_target(plugin.url)
        sha256, why = tree_digest(root, *target.key)
        if sha256 is not None and plugin.sha256 and plugin.sha256 != sha256:
            why = f"the tree's {target.name}/{target.version} is sha256 {sha256}, " \
                f"not the pinned {plugin.sha256}"
            sha256 = None
        if sha256 is None:
            done.refused.append(f"{plugin.where} ({plugin.label}): {plugin.url}: {why}")
        else:
            done.moved.append(aimed(plugin.body, aim.url_for(*target.key), sha256))
    return done


def aimed(body: dict[str, Any], url: str, sha256: str) -> dict[str, Any]:
    """``body`` with ``spec.url`` and ``spec.sha256`` replaced, every key where it was
    (``sha256`` right after ``url`` when it is new)."""
    spec: dict[str, Any] = {}
    for key, value in body["spec"].items():
        if key == "url":
            spec["url"] = url
            spec["sha256"] = sha256
        elif key != "sha256":
            spec[key] = value
    return {key: spec if key == "spec" else value for key, value in body.items()}


def render_rewrite(done: Rewrite, root: str) -> str:
    if not done.moved:
        return ""
    header = (f"# Rewritten by hps wasmplugin --rewrite from the tree {root}: url aimed at hps, "
              "sha256 pinned from the module it serves.\n")
    return header + yaml.safe_dump_all(done.moved, sort_keys=False, explicit_start=True,
                                       default_flow_style=False)


def main_rewrite(args: argparse.Namespace) -> int:
    done = rewrite(load_wasmplugins(*read_input(args.rewrite)), args.root, args.base_url)
    sys.stdout.write(render_rewrite(done, args.root))
    for line in done.refused:
        print(f"hps wasmplugin: cannot move {line}", file=sys.stderr)
    print(f"hps wasmplugin: {len(done.moved)} rewritten, {len(done.refused)} the tree cannot "
          f"serve, {done.left} not on oci:// (left as they are)", file=sys.stderr)
    return 1 if done.refused and not args.partial else 0


def main(argv: list[str]) -> int:
    try:
        args = parser().parse_args(argv)
        check_mode(args)
        if args.rewrite is not None:
            return main_rewrite(args)
        resource = wasmplugin(args)
    except (WasmPluginError, InputError) as err:
        for line in str(err).splitlines():
            print(f"hps wasmplugin: {line}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    source = f"{args.name}/{args.version}/{MODULE_FILE}"
    sys.stdout.write(render(resource, source))
    return 0
