#!/usr/bin/env python3
"""A/B two commits of hps on the request path, in one run.

A script, not a test: ``python bench/ab.py BEFORE AFTER [--rounds 6] [--duration 3]``.
Each commit is checked out into a temporary worktree and started as ``twistd hps`` (default
flags) over the same tree (a 150 KB module with its ``.gz`` sibling), both servers up at
once on CPU 0. ``wrk -t1 -c32`` on CPU 1 alternates between them, identity and gzip, the
order flipped every round, so a noisy machine slows both alike. Reports the median r/s
and the server CPU per response (``/proc/<pid>/stat`` utime + stime over the cell).
Everything targets 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.run import Maker, free_port, stop, wait_http, write_module  # noqa: E402
from tests.support.server import twistd_path  # noqa: E402

SIZE = 150_000
PATH = "/plugins/p150kb/1.0.0/plugin.wasm"
TICKS = os.sysconf("SC_CLK_TCK")


class Build:
    """One commit, checked out and serving."""

    def __init__(self, rev: str, tmp: Path, root: Path) -> None:
        self.rev = rev
        self.tree = tmp / f"src-{rev.replace('/', '_')}"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q",
                        str(self.tree), rev], check=True)
        self.sha = subprocess.run(["git", "-C", str(self.tree), "rev-parse", "--short", "HEAD"],
                                  capture_output=True, text=True, check=True).stdout.strip()
        self.port = free_port()
        cache = tempfile.mkdtemp(prefix="cache-", dir=tmp)
        log = open(tmp / f"{self.sha}.log", "ab")  # noqa: SIM115 - lives as long as the server
        command = ["taskset", "-c", "0", twistd_path(), "-n", "--pidfile=", "hps",
                   "--root", str(root), "--cache-dir", cache,
                   "--listen", f"tcp:{self.port}:interface=127.0.0.1"]
        started = time.monotonic()
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
                                        env=dict(os.environ, PYTHONPATH=str(self.tree)))
        self.url = f"http://127.0.0.1:{self.port}"
        wait_http(self.url + "/readyz", started)
        self.cells: dict[bool, list[tuple[float, float]]] = {False: [], True: []}

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def measure(self, gzip_client: bool, duration: int) -> None:
        before = self.cpu()
        command = ["taskset", "-c", "1", "wrk", "-t1", "-c32", f"-d{duration}s"]
        if gzip_client:
            command += ["-H", "Accept-Encoding: gzip"]
        out = subprocess.run([*command, self.url + PATH], capture_output=True, text=True,
                             check=True, timeout=duration + 60).stdout
        requests = int(out.split(" requests in ", 1)[0].rsplit(None, 1)[1])
        rate = float(out.split("Requests/sec:", 1)[1].split()[0])
        self.cells[gzip_client].append((rate, (self.cpu() - before) / max(requests, 1) * 1e6))

    def close(self) -> None:
        stop(self)
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(self.tree)],
                       check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hps-ab-"))
    root = tmp / "tree" / "plugins"
    write_module(root, "p150kb", Maker().module(SIZE, SIZE), True)
    builds: list[Build] = []
    try:
        builds = [Build(args.before, tmp, root), Build(args.after, tmp, root)]
        for build in builds:  # warm: variants checked, files open
            build.measure(False, 1)
            build.measure(True, 1)
            build.cells = {False: [], True: []}
        for round_ in range(args.rounds):
            for build in builds if round_ % 2 == 0 else builds[::-1]:
                for gzip_client in (False, True):
                    build.measure(gzip_client, args.duration)
        load = os.getloadavg()[0]
        print(f"150 KB, {args.rounds} alternating rounds of wrk -t1 -c32 -d{args.duration}s, "
              f"load average {load:.1f}\n")
        print("| build | identity r/s | µs CPU / response | gzip r/s | µs CPU / response |")
        print("|---|---|---|---|---|")
        for build in builds:
            row = [f"{build.rev} ({build.sha})"]
            for gzip_client in (False, True):
                rates, costs = zip(*build.cells[gzip_client], strict=True)
                row += [f"{statistics.median(rates):,.0f}", f"{statistics.median(costs):.1f}"]
            print("| " + " | ".join(row) + " |")
    finally:
        for build in builds:
            build.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
