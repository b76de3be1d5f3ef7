"""``hps check``: will every gateway get the plugin it is configured for, and the bytes it pins?

The preflight before and after moving a cluster onto hps, for people (a table) and for CI
(``--json`` and the exit code). What the cluster asks for comes from its WasmPlugins, the
Console's URL pattern with the Console's plugin list, and the Controller's MCP URL
(:mod:`hps.fleet`); the answers come from a plugin tree (``--root``, the catalog's own
examination) or from a running server (``--server``: real GETs, :mod:`hps.probe`).

Exit 0 only when every URL aimed at hps is served (and matches its ``sha256`` when one is
pinned, and was never replaced under the same version); 1 with one line per problem
otherwise; 2 for bad input, each bad document named on its own line.

    hps check --wasmplugins cluster.yaml --server http://127.0.0.1:8080 \\
        --base-url http://higress-plugin-server.higress-system.svc
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import NoReturn

from hps import urls
from hps.fleet import (
    Aim,
    Target,
    Wanted,
    classify,
    console_list,
    from_console,
    from_mcp,
    from_wasmplugins,
    load_wasmplugins,
    read_input,
    tree_digest,
)
from hps.probe import Answer, Getter, changed_entries, http_getter, probe_module
from hps.pull.errors import InputError

JOBS = 16
"""Requests in flight against a server: enough to hide latency, few enough to be polite."""
PROBLEMS = ("missing", "unavailable", "not-wasm", "mismatch", "changed")
"""States of a URL aimed at hps that fail the check."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise InputError(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hps check", description="Check that every plugin URL the cluster will "
                "fetch is served by hps, with the bytes it pins.")
    given = p.add_argument_group("what the cluster asks for (any combination)")
    given.add_argument("--wasmplugins", metavar="FILE|-",
                       help="WasmPlugins: kubectl get wasmplugins -A -o yaml, multi-document "
                       "YAML or one object")
    given.add_argument("--console-pattern", metavar="PATTERN",
                       help="the Console's HIGRESS_ADMIN_WASM_PLUGIN_CUSTOM_IMAGE_URL_PATTERN "
                       "(with ${name} and ${version})")
    given.add_argument("--console-list", metavar="FILE",
                       help="the Console's plugin list (default: the one bundled with hps, "
                       "plugins/console.properties)")
    given.add_argument("--mcp-url", metavar="URL",
                       help="the Controller's MCP_SERVER_WASM_IMAGE_URL")
    against = p.add_argument_group("checked against (one of)")
    against.add_argument("--root", metavar="DIR", help="a plugin tree")
    against.add_argument("--server", metavar="URL", help="a running hps, e.g. "
                         "http://127.0.0.1:8080 (a port-forward)")
    p.add_argument("--base-url", metavar="URL",
                   help="where gateways reach hps: only URLs under it are aimed at hps "
                   "(default: with --root any host, with --server the server's URL)")
    p.add_argument("--json", action="store_true", help="print JSON (for CI) instead of a table")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="per request to --server (default %(default)s)")
    return p


@dataclass(frozen=True)
class Row:
    """One wanted URL and what the check found."""

    source: str
    url: str
    state: str  # ok, PROBLEMS, or for others: movable, differs, not-held, other
    name: str = ""
    version: str = ""
    hps_url: str = ""
    sha256: str = ""
    pin: str = ""
    detail: str = ""

    @property
    def problem(self) -> bool:
        return self.state in PROBLEMS


Lookup = Callable[[Target], Answer]


def evaluate(pairs: list[tuple[Wanted, Target]], lookup: Lookup, aim: Aim,
             changed: list[dict[str, str]]) -> list[Row]:
    """A row per wanted URL; ``lookup`` answers each distinct target once."""
    first_served = {(c["name"], c["version"]): c for c in changed}
    return [_row(wanted, target, lookup, aim, first_served) for wanted, target in pairs]


def _row(wanted: Wanted, target: Target, lookup: Lookup, aim: Aim,
         changed: dict[tuple[str, str], dict[str, str]]) -> Row:
    row = Row(wanted.source, wanted.url, "other", target.name, target.version,
              pin=wanted.sha256 or "", detail="not aimed at hps")
    if target.kind == "other":
        return row
    if target.problem:
        return _with(row, "missing", detail=target.problem)
    answer = lookup(target)
    if target.kind == "oci":
        return _oci_row(row, answer, aim.url_for(*target.key))
    row = _with(row, "ok", hps_url=wanted.url, sha256=answer.sha256 or "", detail="")
    if answer.sha256 is None:
        return _with(row, answer.kind, detail=answer.detail)
    if wanted.sha256 and wanted.sha256 != answer.sha256:
        return _with(row, "mismatch", detail=f"pinned sha256 {wanted.sha256}, served "
                     f"{answer.sha256}: the gateway refuses it")
    replaced = changed.get(target.key)
    if replaced is not None:
        return _with(row, "changed", detail=f"bytes changed after first being served "
                     f"(first {replaced['first']}, now {replaced['now']}): gateways that "
                     "restart get other bytes than those that do not")
    return row


def _oci_row(row: Row, answer: Answer, hps_url: str) -> Row:
    if answer.sha256 is None:
        return _with(row, "not-held", detail=answer.detail)
    if row.pin and row.pin != answer.sha256:
        return _with(row, "differs", hps_url=hps_url, sha256=answer.sha256,
                     detail=f"hps holds other bytes than the pinned {row.pin}")
    return _with(row, "movable", hps_url=hps_url, sha256=answer.sha256, detail="")


def _with(row: Row, state: str, **changes: str) -> Row:
    return Row(**{**asdict(row), "state": state, **changes})


# -- answers ---------------------------------------------------------------------------


def tree_lookup(root: str) -> Lookup:
    """Answers from a tree, each (name, version) examined once."""
    seen: dict[tuple[str, str], Answer] = {}

    def lookup(target: Target) -> Answer:
        if target.key not in seen:
            sha256, why = tree_digest(root, *target.key)
            seen[target.key] = Answer(sha256, "" if sha256 else "missing", why)
        return seen[target.key]

    return lookup


def server_lookup(get: Getter, pairs: list[tuple[Wanted, Target]], jobs: int = JOBS,
                  sleep: Callable[[float], None] = time.sleep) -> Lookup:
    """Answers from a server: every distinct path fetched once, ``jobs`` at a time."""
    paths = sorted({_path(t) for _, t in pairs if t.kind != "other" and not t.problem})
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="hps-check") as pool:
        answers = dict(zip(paths, pool.map(lambda p: probe_module(get, p, sleep), paths),
                           strict=True))
    return lambda target: answers[_path(target)]


def _path(target: Target) -> str:
    """The path asked of the server: an oci:// target where hps would serve it."""
    return target.path if target.kind == "hps" else urls.file_url(*target.key)


# -- the command -----------------------------------------------------------------------


def wanted_from(args: argparse.Namespace) -> list[Wanted]:
    wanted: list[Wanted] = []
    if args.wasmplugins:
        wanted += from_wasmplugins(load_wasmplugins(*read_input(args.wasmplugins)))
    if args.console_list and not args.console_pattern:
        raise InputError("--console-list goes with --console-pattern")
    if args.console_pattern:
        wanted += from_console(args.console_pattern, args.console_list or console_list())
    if args.mcp_url:
        wanted += from_mcp(args.mcp_url)
    if not wanted:
        raise InputError("nothing to check: give --wasmplugins, --console-pattern or --mcp-url")
    return wanted


def run(args: argparse.Namespace, get: Getter | None = None,
        sleep: Callable[[float], None] = time.sleep, jobs: int = JOBS) -> list[Row]:
    """The rows for ``args``; ``get`` replaces the HTTP client (tests: the in-memory server,
    one request at a time)."""
    if (args.root is None) == (args.server is None):
        raise InputError("give one of --root DIR or --server URL")
    if args.server is not None:
        Aim(args.server, "--server")  # the same checks as --base-url
    aim = Aim(args.base_url or args.server)
    pairs = classify(wanted_from(args), aim)
    if args.root is not None:
        if not os.path.isdir(args.root):
            raise InputError(f"--root {args.root!r} is not a directory")
        return evaluate(pairs, tree_lookup(args.root), aim, [])
    if args.timeout <= 0:
        raise InputError("--timeout must be > 0")
    get = get or http_getter(args.server, args.timeout)
    lookup = server_lookup(get, pairs, jobs, sleep)
    return evaluate(pairs, lookup, aim, changed_entries(get) or [])


def table(rows: list[Row]) -> str:
    """For people: who asks, for what, and what hps says."""
    head = ("SOURCE", "PLUGIN", "STATE", "DETAIL")
    lines = [(r.source, f"{r.name}/{r.version}" if r.name else "-", r.state,
              r.detail or r.hps_url or (f"sha256 {r.sha256[:16]}" if r.sha256 else ""))
             for r in rows]
    widths = [max(len(line[i]) for line in [head, *lines]) for i in range(3)]
    out = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False))
           + "  " + line[3] for line in [head, *lines]]
    return "\n".join(text.rstrip() for text in out) + "\n" + summary(rows) + "\n"


def summary(rows: list[Row]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    problems = sum(row.problem for row in rows)
    parts = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    return f"{len(rows)} URLs: {parts}; {problems} problem(s)"


def report(rows: list[Row]) -> dict:
    """For CI: every row, the problems, and one verdict."""
    return {"ok": not any(r.problem for r in rows), "summary": summary(rows),
            "rows": [{**asdict(r), "problem": r.problem} for r in rows]}


def problem_line(row: Row) -> str:
    return f"hps check: {row.state}: {row.source}: {row.url}: {row.detail}"


def main(argv: list[str]) -> int:
    try:
        args = parser().parse_args(argv)
        rows = run(args)
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    except InputError as exc:
        for line in str(exc).splitlines():
            print(f"hps check: {line}", file=sys.stderr)
        return 2
    sys.stdout.write(json.dumps(report(rows), indent=2) + "\n" if args.json else table(rows))
    for row in rows:
        if row.problem:
            print(problem_line(row), file=sys.stderr)
    return 1 if any(row.problem for row in rows) else 0
