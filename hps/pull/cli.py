"""``hps pull``: argument parsing, input loading and the exit code.

Exit 0 when every entry was served, 1 when some failed (each named on one
line, the good ones still written), 2 for bad input found before pulling,
130 when interrupted (no traceback; the lock still describes the tree).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import NoReturn

from hps.fleet import load_wasmplugins, pull_entries, read_input
from hps.pull.auth import Credentials, from_environment
from hps.pull.errors import InputError
from hps.pull.fetch import Options
from hps.pull.inventory import (
    CHECKOUT_UPSTREAM,
    REPO_UPSTREAM,
    Source,
    default_sources,
    load_entries,
)
from hps.pull.lock import Record, read_lock
from hps.pull.progress import Progress
from hps.pull.properties import REGISTRY_HOST, Key, Plan, build_plan, load_manifest, read_text
from hps.pull.run import THREAD_PREFIX, Outcome, Settings, check_locked, default_jobs, run
from hps.pull.snapshot import Served, read_json, snapshot_plan, write_inventory

DEFAULT_OUTPUT = "plugins"
LOCK_NAME = "plugins.lock.json"
UNMANAGED_LOCK = "unmanaged-plugins.lock.json"
MAX_JOBS = 32
INTERRUPTED = 130
_NAMESPACE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise InputError(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hps pull", description="Fill a plugin tree from OCI registries.")
    p.add_argument(
        "--properties",
        action="append",
        metavar="FILE",
        type=Path,
        help="name=oci://registry/repo:tag lines, each pulled at its tag (repeatable)",
    )
    p.add_argument(
        "--upstream-properties",
        action="append",
        metavar="FILE",
        type=Path,
        help="upstream's plugins.properties: each line also at 1.0.0 and 2.0.0 (repeatable)."
        " With neither flag: this repository's default inventory, or ./plugins.properties",
    )
    p.add_argument(
        "--wasmplugins",
        metavar="FILE|-",
        help="also pull every oci:// reference these WasmPlugins name (kubectl get wasmplugins"
        " -A -o yaml), served at <repository's last segment>/<tag>; they win over the inventory",
    )
    p.add_argument(
        "--snapshot",
        metavar="FILE",
        type=Path,
        help="upstream's production mode: a Higress snapshot JSON (schemaVersion 1)",
    )
    p.add_argument(
        "--unmanaged-lock",
        metavar="FILE",
        type=Path,
        help=f"with --snapshot: pins for the properties lines it does not manage"
        f" (default {UNMANAGED_LOCK} beside the properties)",
    )
    p.add_argument(
        "--registry", metavar="HOST[:PORT]", help="pull every reference from this registry"
    )
    p.add_argument(
        "--namespace", metavar="NS", help="... and this namespace (first repository component)"
    )
    p.add_argument(
        "--manifest",
        metavar="FILE",
        type=Path,
        help="YAML: digests, versions, version and name aliases",
    )
    p.add_argument(
        "--output",
        metavar="DIR",
        type=Path,
        default=Path(DEFAULT_OUTPUT),
        help=f"the served tree (default {DEFAULT_OUTPUT}/)",
    )
    p.add_argument(
        "--lock",
        metavar="FILE",
        type=Path,
        help=f"JSON lock (default {LOCK_NAME} beside the first properties file)",
    )
    p.add_argument(
        "--locked", action="store_true", help="pull exactly the lock's digests; fail on any drift"
    )
    p.add_argument(
        "--use-local",
        action="store_true",
        help="keep an existing <output>/<name>/<version>/plugin.wasm (still validated)",
    )
    p.add_argument(
        "--replace",
        action="store_true",
        help="overwrite a version the tree already serves with other bytes (default: refuse;"
        " gateways that cached its URL keep the old bytes, see docs/operations.md)",
    )
    p.add_argument("--plain-http", action="store_true", help="talk HTTP, not HTTPS, to registries")
    p.add_argument(
        "--jobs",
        type=int,
        default=default_jobs(),
        metavar="N",
        help="parallel downloads (default %(default)s)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=3,
        metavar="N",
        help="retries on 5xx and network errors (default %(default)s)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="per request (default %(default)s)",
    )
    p.add_argument("--username", help="registry user (or HPS_REGISTRY_USERNAME)")
    p.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the registry password from stdin (or HPS_REGISTRY_PASSWORD)",
    )
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    if not 1 <= args.jobs <= MAX_JOBS:
        raise InputError(f"--jobs must be between 1 and {MAX_JOBS}")
    if args.retries < 0 or args.timeout <= 0:
        raise InputError("--retries must be >= 0 and --timeout > 0")
    # Empty means "not given", so a Dockerfile can pass "$PLUGIN_REGISTRY" unconditionally.
    args.registry = args.registry.removesuffix("/") if args.registry else None
    args.namespace = args.namespace or None
    if args.registry is not None and not REGISTRY_HOST.match(args.registry):
        raise InputError(f"--registry wants HOST[:PORT], got {args.registry!r}")
    if args.namespace is not None and not _NAMESPACE.match(args.namespace):
        raise InputError(f"--namespace wants a repository path component, got {args.namespace!r}")
    _check_mode(args)
    return Settings(
        output=args.output,
        lock=None if args.snapshot else args.lock or sources(args)[0].path.parent / LOCK_NAME,
        locked=args.locked,
        use_local=args.use_local,
        replace=args.replace,
        jobs=args.jobs,
        fetch=Options(
            plain_http=args.plain_http,
            credentials=_credentials(args),
            timeout=args.timeout,
            retries=args.retries,
            registry=args.registry,
            namespace=args.namespace,
        ),
    )


def _check_mode(args: argparse.Namespace) -> None:
    if args.unmanaged_lock and not args.snapshot:
        raise InputError("--unmanaged-lock goes with --snapshot")
    if args.snapshot:
        given = [
            flag
            for flag, value in (
                ("--upstream-properties", args.upstream_properties),
                ("--manifest", args.manifest),
                ("--lock", args.lock),
                ("--locked", args.locked),
                ("--use-local", args.use_local),
                ("--wasmplugins", args.wasmplugins),
            )
            if value
        ]
        if given:
            raise InputError(f"--snapshot pins everything itself; it takes no {', '.join(given)}")


def sources(args: argparse.Namespace) -> list[Source]:
    given = [Source(p) for p in args.properties or []]
    given += [Source(p, upstream=True) for p in args.upstream_properties or []]
    return given or default_sources()


def _credentials(args: argparse.Namespace) -> Credentials | None:
    if args.password_stdin and args.wasmplugins == "-":
        raise InputError("--password-stdin and --wasmplugins - cannot both read stdin")
    if args.password_stdin and not args.username:
        raise InputError("--password-stdin needs --username")
    if args.username:
        if not args.password_stdin:
            password = os.environ.get("HPS_REGISTRY_PASSWORD")
            if password is None:
                raise InputError("--username needs --password-stdin or HPS_REGISTRY_PASSWORD")
        else:
            password = sys.stdin.readline().rstrip("\r\n")
        return Credentials(args.username, password)
    return from_environment()


def load_plan(args: argparse.Namespace) -> Plan:
    manifest = {}
    if args.manifest:
        manifest = load_manifest(read_text(args.manifest, "manifest"), str(args.manifest))
    entries = load_entries(sources(args))
    if args.wasmplugins:
        # What the cluster runs wins over the inventory's idea of the same name and version.
        cluster = pull_entries(load_wasmplugins(*read_input(args.wasmplugins)))
        keys = {entry.key for entry in cluster}
        entries = [entry for entry in entries if entry.key not in keys] + cluster
    plan = build_plan(entries, manifest)
    if not plan.entries:
        raise InputError("nothing to pull: the properties and manifest name no plugin")
    return plan


def load_snapshot(args: argparse.Namespace) -> tuple[Plan, list[Served]]:
    """``--snapshot``: the snapshot, the unmanaged lock and the properties, all checked."""
    properties = args.properties or [_snapshot_properties()]
    lines = load_entries([Source(path) for path in properties])
    lock_path = args.unmanaged_lock or properties[0].parent / UNMANAGED_LOCK
    snapshot = read_json(args.snapshot, "snapshot")
    lock = read_json(lock_path, "unmanaged lock")
    return snapshot_plan(snapshot, str(args.snapshot), lines, lock)


def _snapshot_properties() -> Path:
    """Upstream's ``plugins.properties`` here, or this repository's."""
    for path in (CHECKOUT_UPSTREAM, REPO_UPSTREAM):
        if path.exists():
            return path
    raise InputError(f"--snapshot: no ./{CHECKOUT_UPSTREAM} or {REPO_UPSTREAM}; give --properties")


def previous_lock(settings: Settings, plan: Plan) -> dict[Key, Record]:
    if settings.lock is None or not (settings.locked or settings.lock.exists()):
        return {}
    previous = read_lock(settings.lock)
    if settings.locked:
        check_locked(plan, previous)
    return previous


def main(argv: list[str]) -> int:
    try:
        args = parser().parse_args(argv)
        settings = settings_from(args)
        finish: Callable[[Outcome], object] | None = None
        if args.snapshot:
            plan, served = load_snapshot(args)
            previous: dict[Key, Record] = {}
            finish = partial(_write_inventory, settings.output, served)
        else:
            plan = load_plan(args)
            previous = previous_lock(settings, plan)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except InputError as exc:
        for line in str(exc).splitlines():  # one line per bad WasmPlugin document
            print(f"hps pull: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hps pull: interrupted before pulling anything", file=sys.stderr)
        return INTERRUPTED
    return pull(plan, settings, previous, finish)


def _leave_abandoned_downloads() -> None:
    """Exit now if downloads abandoned on Ctrl-C still wait on a registry (until --timeout).

    Their writes are refused (hps.pull.gate) and the lock is written, but the interpreter
    would join their threads before exiting, so Ctrl-C would seem to hang.
    """
    if any(t.name.startswith(THREAD_PREFIX) and t.is_alive() for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(INTERRUPTED)


def _write_inventory(output: Path, served: list[Served], outcome: Outcome) -> None:
    write_inventory(output, served, outcome.records)


def pull(
    plan: Plan,
    settings: Settings,
    previous: dict[Key, Record],
    finish: Callable[[Outcome], object] | None = None,
) -> int:
    """Run the plan; ``finish`` writes what else describes the tree (snapshot inventory)."""
    progress = Progress(total=len(plan.entries))
    try:
        outcome = run(plan, settings, previous, progress)
        if finish:
            finish(outcome)
    except KeyboardInterrupt:  # after the downloads (aliases, lock): still one line
        progress.close()
        print("hps pull: interrupted", file=sys.stderr)
        return INTERRUPTED
    except OSError as exc:
        progress.close()
        print(
            f"hps pull: cannot write {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr
        )
        return 1
    progress.close()
    for label in sorted(outcome.failures):
        print(f"hps pull: FAILED {label}: {outcome.failures[label]}", file=sys.stderr)
    served = len(outcome.records)
    summary = f"hps pull: {served} pulled, {len(outcome.failures)} failed"
    if outcome.interrupted:
        print(f"{summary}; interrupted, the lock lists what the tree holds", file=sys.stderr)
        _leave_abandoned_downloads()
        return INTERRUPTED
    print(summary, file=sys.stderr)
    return 1 if outcome.failures else 0
