"""``hps wasmplugin``: print a Higress WasmPlugin for one artifact of the tree.

The gateway checks a WasmPlugin's ``sha256`` against the module it downloads,
and re-downloads an http URL only when the resource changes. Pinning the
checksum from the very file the server serves makes a swapped or corrupted
module fail loudly instead of loading quietly, and lets a new build roll out by
changing the resource. The digest comes from the tree, not from the network, so
this works on a bastion host before the server is even deployed.

    hps wasmplugin key-rate-limit 1.0.0 --base-url http://higress-plugin-server.higress-system.svc
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import yaml

from hps import urls
from hps.catalog import NotAModule, examine_module
from hps.guard import MODULE_FILE, accept_name, accept_version, within_root

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
        description="Print a Higress WasmPlugin (YAML) for one artifact, its sha256 "
        "taken from the plugin tree.",
    )
    p.add_argument("name", help="plugin name, e.g. key-rate-limit")
    p.add_argument("version", help="plugin version, e.g. 1.0.0")
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
        default=DEFAULT_NAMESPACE,
        help="namespace of the WasmPlugin (default %(default)s)",
    )
    p.add_argument("--phase", choices=PHASES, default="UNSPECIFIED_PHASE", help="filter phase")
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
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WasmPluginError(f"--base-url must be an http:// or https:// URL, not {base_url!r}")
    if parts.query or parts.fragment:
        raise WasmPluginError("--base-url must not carry a query or fragment")
    return base_url.rstrip("/") + urls.file_url(name, version)


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
    if not _DNS_LABEL.match(args.namespace):
        raise WasmPluginError(f"invalid namespace {args.namespace!r}")
    url = artifact_url(args.base_url, args.name, args.version)
    sha256 = module_digest(module_path(args.root, args.name, args.version))
    spec: dict[str, Any] = {"url": url, "sha256": sha256, "phase": args.phase}
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
            "namespace": args.namespace,
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


def main(argv: list[str]) -> int:
    try:
        args = parser().parse_args(argv)
        resource = wasmplugin(args)
    except WasmPluginError as err:
        print(f"hps wasmplugin: {err}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    source = f"{args.name}/{args.version}/{MODULE_FILE}"
    sys.stdout.write(render(resource, source))
    return 0
