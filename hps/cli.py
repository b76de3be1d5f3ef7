"""The ``hps`` console script: tools around the server, not the server itself.

``twistd hps`` runs the server; ``hps`` fills and describes the tree it serves.
Each subcommand lives in its own module and exposes ``main(argv) -> int``, so
this file only dispatches and imports nothing heavy until a command is chosen.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "check": ("hps.check", "check that hps serves every plugin URL the cluster will fetch"),
    "pull": ("hps.pull.cli", "fill a plugin tree from OCI registries"),
    "wasmplugin": ("hps.wasmplugin", "print a Higress WasmPlugin for one artifact"),
}


def usage() -> str:
    lines = ["usage: hps COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<12} {summary}" for name, (_, summary) in COMMANDS.items()]
    lines.append("\nRun 'hps COMMAND --help' for its options; 'twistd hps --help' for the server.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    entry = COMMANDS.get(args[0])
    if entry is None:
        print(f"hps: unknown command {args[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(entry[0])
    return int(module.main(args[1:]))


if __name__ == "__main__":
    sys.exit(main())
