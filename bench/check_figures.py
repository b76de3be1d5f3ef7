"""Figures for ``hps check`` and ``hps wasmplugin --rewrite`` at a cluster's scale.

    flock /tmp/hps-bench.lock python bench/check_figures.py [--rounds 3]

Builds a tree holding the Console's 52 (name, version) pairs (plugins/console.properties),
1 MB modules (``run.Maker``) each with the ``plugin.wasm.gz`` ``hps pull`` writes, and a
``kubectl get wasmplugins -A -o yaml`` dump of 100 WasmPlugins (the shapes of
tests/support/wasmplugins.py) that meets it in every way:

- 60 on http URLs aimed at hps: most served, 3 on alias versions (symlinks), 12 pinned
  right, 3 pinned wrong, 2 on versions the tree lacks;
- 40 on ``oci://``: 30 the tree holds (``hps check`` says where hps would serve them), 10 it
  does not.

Then times, as an operator runs them (``python -m hps.cli``, process start included), the
median of ``--rounds``:

- ``hps check`` over the dump plus the Console's 52 URLs against a running ``twistd hps``
  (once right after it is ready, while it checks the gzip siblings in the background, then
  after),
  and the same command against nginx serving the same tree (the reference: same requests,
  same client; nginx knows no aliases by name, but follows the symlinks);
- the same check against the tree (``--root``);
- the round trip: ``--rewrite`` of the dump, then ``hps check`` of its output against the
  server, which must pass.

Everything listens on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# bench/run.py, which also puts the repository on sys.path
from run import REPO, Maker, start, stop, variants_done

from hps.pull.properties import parse_properties
from tests.support.wasmplugins import console_made, docs_example, kubectl_list

BASE = "http://higress-plugin-server.higress-system.svc"
REGISTRY = "oci://higress-registry.cn-hangzhou.cr.aliyuncs.com/plugins"
PATTERN = BASE + "/plugins/${name}/${version}/plugin.wasm"
ALIASES = {3: "1.0.1", 17: "1.0.1", 29: "1.0.1"}
WRONG_PINS = {7, 23, 41}
MISSING = {13, 37}


def console_pairs() -> list[tuple[str, str]]:
    path = REPO / "plugins" / "console.properties"
    return [(e.name, e.version) for e in parse_properties(path.read_text(), str(path))]


def build(tmp: Path) -> tuple[Path, Path]:
    """The tree and the dump."""
    root, maker = tmp / "plugins", Maker()
    pairs = console_pairs()
    sha: dict[tuple[str, str], str] = {}
    for index, (name, version) in enumerate(pairs):
        target = root / name / version / "plugin.wasm"
        target.parent.mkdir(parents=True)
        data = maker.module(1_000_000, 7000 + index)
        target.write_bytes(data)
        # What `hps pull` writes beside each module (gzip -9, mtime 0): served from the start.
        target.with_name("plugin.wasm.gz").write_bytes(gzip.compress(data, 9, mtime=0))
        sha[name, version] = hashlib.sha256(data).hexdigest()
    items = []
    for i in range(100):
        name, version = pairs[i % len(pairs)]
        resource = f"{name}-{i}"
        if i < 60:
            pin = sha[name, version] if i % 5 == 0 else None
            if i in ALIASES:
                alias = root / name / ALIASES[i]
                if not alias.exists():
                    alias.symlink_to(version)
                version = ALIASES[i]
            if i in WRONG_PINS:
                pin = "0" * 64
            if i in MISSING:
                version = f"9.9.{i}"
            url = f"{BASE}/plugins/{name}/{version}/plugin.wasm"
            items.append(console_made(name, version, url, pin, resource=resource))
        else:
            tag = version if i < 90 else f"0.9.{i}"
            items.append(docs_example(resource, f"{REGISTRY}/{name}:{tag}",
                                      namespace=f"team-{i % 4}"))
    dump = tmp / "wasmplugins.yaml"
    dump.write_text(kubectl_list(items))
    return root, dump


def hps(*args: str, stdin: str | None = None) -> tuple[float, subprocess.CompletedProcess]:
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "hps.cli", *args], input=stdin, cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)
    return time.monotonic() - began, done


def states(stdout: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in json.loads(stdout)["rows"]:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return dict(sorted(counts.items()))


def timed(rounds: int, *args: str, stdin: str | None = None) -> tuple[str, dict, int]:
    runs = [hps(*args, stdin=stdin) for _ in range(rounds)]
    done = runs[-1][1]
    walls = sorted(t for t, _ in runs)
    return (f"{statistics.median(walls):.2f} ({walls[0]:.2f}-{walls[-1]:.2f})",
            states(done.stdout), done.returncode)


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    options.add_argument("--rounds", type=int, default=3)
    rounds = options.parse_args().rounds
    with tempfile.TemporaryDirectory(prefix="hps-check-") as scratch:
        tmp = Path(scratch)
        tmp.chmod(0o755)  # nginx's worker runs as nobody when started by root
        root, dump = build(tmp)
        inputs = ["--wasmplugins", str(dump), "--console-pattern", PATTERN, "--json"]
        servers: dict = {}
        try:
            for kind in ("hps", "best"):  # one by one: a failed start still stops the first
                servers[kind] = start(kind, root, tmp)
            figures = {}
            against = {kind: ["--server", server.url(""), "--base-url", BASE]
                       for kind, server in servers.items()}
            # Right after start, hps checks the .gz siblings in the background (the check
            # asks with Accept-Encoding: gzip, as the gateway does); then once that is done.
            figures["hps, just started"] = timed(1, "check", *inputs, *against["hps"])
            variants_done(servers["hps"])
            figures["hps"] = timed(rounds, "check", *inputs, *against["hps"])
            figures["nginx"] = timed(rounds, "check", *inputs, *against["best"])
            figures["tree"] = timed(rounds, "check", *inputs, "--root", str(root),
                                    "--base-url", BASE)
            took, moved = hps("wasmplugin", "--rewrite", str(dump), "--base-url", BASE,
                              "--root", str(root), "--partial")
            figures["rewrite"] = (f"{took:.2f}", {}, moved.returncode)
            figures["round trip"] = timed(rounds, "check", "--wasmplugins", "-", "--json",
                                          "--server", servers["hps"].url(""), "--base-url",
                                          BASE, stdin=moved.stdout)
        finally:
            for server in servers.values():
                stop(server)
    print(f"100 WasmPlugins + {len(console_pairs())} Console URLs, median of {rounds}:")
    print("| run | wall s | exit | states |\n|---|---|---|---|")
    for label, (wall, found, code) in figures.items():
        print(f"| {label} | {wall} | {code} | {found} |")
    print(f"rewrite: {moved.stderr.strip().splitlines()[-1]}")
    ratio = float(figures["hps"][0].split()[0]) / float(figures["nginx"][0].split()[0])
    print(f"hps/nginx wall-time ratio (medians): {ratio:.2f}")


if __name__ == "__main__":
    main()
