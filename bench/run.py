#!/usr/bin/env python3
"""Benchmark hps against nginx at its best for this job, and nginx as upstream configures it.

A script, not a test: ``python bench/run.py [--rounds 3] [--duration 5] [--write]``.
Needs ``nginx-light``, ``wrk`` and ``taskset`` (util-linux). Servers run on CPU 0, load
on CPU 1. Prints a markdown report; ``--write`` also updates bench/README.md. See
bench/README.md for the method. Everything targets 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.support.server import WASM_HEADER, twistd_path, wasm_bytes  # noqa: E402

SERVERS = ("hps", "best", "upstream")
"""hps (default flags), nginx-best (sendfile, tcp_nopush, open_file_cache, gzip_static),
nginx as the upstream plugin-server image configures it (sendfile, no gzip)."""
SIZES = {"150KB": 150_000, "8MB": 8_000_000}
MANY = 200
NGINX = """
worker_processes 1;
daemon off;{main}
pid {tmp}/nginx-{name}.pid;
error_log {tmp}/nginx-{name}-error.log;
events {{ worker_connections {connections}; }}
http {{
    include /etc/nginx/mime.types;
    types {{ application/wasm wasm; }}
    default_type application/octet-stream;
    access_log {access_log};
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    {extra}
    server {{
        {listen}
        root {root};{location}
    }}
}}
"""
"""One nginx serving ``root`` from 127.0.0.1, for every bench script (they differ in the
fields, not in the frame)."""


def nginx_conf(tmp: Path, name: str, root: Path, listen: str, extra: str, *,
               connections: int = 4096, main: str = "", access_log: str = "off",
               location: str = "") -> str:
    return NGINX.format(tmp=tmp, name=name, root=root, listen=listen, extra=extra,
                        connections=connections, main=main, access_log=access_log,
                        location=location)


NGINX_EXTRA = {
    "best": """sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    open_file_cache max=1000 inactive=60s;
    open_file_cache_valid 60s;
    gzip_static on;""",
    "upstream": """sendfile on;
    keepalive_timeout 65;""",
}
RANDOM_LUA = """
math.randomseed(os.time())
request = function()
  return wrk.format(nil, string.format("/plugins/m%03d/1.0.0/plugin.wasm", math.random(0, 199)))
end
"""


# -- trees -----------------------------------------------------------------------------------

class Maker:
    """Wasm-shaped modules, fast: rotations of one generated megabyte (unique per module)."""

    def __init__(self) -> None:
        self.base = wasm_bytes(1 << 20, seed=1)[len(WASM_HEADER):]

    def module(self, size: int, index: int) -> bytes:
        shift = (index * 7919) % len(self.base)
        turned = self.base[shift:] + self.base[:shift]
        body = WASM_HEADER + index.to_bytes(4, "big") + turned * (size // len(turned) + 1)
        return body[:size]


def write_module(root: Path, name: str, data: bytes, sibling: bool) -> None:
    target = root / name / "1.0.0" / "plugin.wasm"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    if sibling:  # what `hps pull` writes: gzip -9, mtime 0
        (target.parent / "plugin.wasm.gz").write_bytes(gzip.compress(data, 9, mtime=0))


def build_trees(tmp: Path) -> tuple[Path, Path]:
    """``tree/plugins``: p150kb, p8mb, p4mb and m000..m199 (1 MB), each with a .gz sibling;
    ``mixed/plugins``: 200 modules, 150 MB in all, without siblings."""
    maker = Maker()
    main = tmp / "tree" / "plugins"
    for label, size in {**SIZES, "4MB": 4_000_000}.items():
        write_module(main, f"p{label.lower()}", maker.module(size, size), True)
    for i in range(MANY):
        write_module(main, f"m{i:03d}", maker.module(1_000_000, 1000 + i), True)
    mixed = tmp / "mixed" / "plugins"
    sizes = [150_000, 400_000, 1_200_000, 1_250_000]
    for i in range(MANY):
        write_module(mixed, f"plugin-{i:03d}", maker.module(sizes[i % 4], 5000 + i), False)
    return main, mixed


def self_signed(tmp: Path) -> tuple[Path, Path]:
    from tests.support.certificates import self_signed as make
    return make(tmp)


# -- servers ---------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Running:
    process: subprocess.Popen
    port: int
    started: float
    tls_port: int | None = None
    ready_after: float = 0.0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def status(self, key: str) -> float:
        text = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(rf"{key}:\s+(\d+)", text).group(1)) / 1024


def start(kind: str, root: Path, tmp: Path, tls: tuple[Path, Path] | None = None,
          extra: tuple[str, ...] = ()) -> Running:
    """A fresh server (hps with a fresh cache dir) on CPU 0, serving ``root`` at /plugins/."""
    port = free_port()
    log = open(tmp / f"{kind}.log", "ab")  # noqa: SIM115 - lives as long as the server
    pin = ["taskset", "-c", "0"]
    tls_port = None
    if kind == "hps":
        cache = tempfile.mkdtemp(prefix="cache-", dir=tmp)
        cmd = [twistd_path(), "-n", "--pidfile=", "hps", "--root", str(root), "--cache-dir", cache,
               "--listen", f"tcp:{port}:interface=127.0.0.1"]
        if tls:
            tls_port = free_port()
            cmd += ["--listen", f"ssl:{tls_port}:interface=127.0.0.1:privateKey={tls[0]}"
                                f":certKey={tls[1]}"]
        cmd += extra
    else:
        conf = tmp / f"nginx-{kind}.conf"
        conf.write_text(nginx_conf(
            tmp, kind, root.parent, f"listen 127.0.0.1:{port} backlog=1024;", NGINX_EXTRA[kind],
            access_log=f"{tmp}/nginx-{kind}-access.log",
            location="\n        location / { autoindex on; }"))
        cmd = ["nginx", "-c", str(conf), "-p", str(tmp)]
    started = time.monotonic()
    process = subprocess.Popen(pin + cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
                               env=dict(os.environ, PYTHONPATH=str(REPO)))
    running = Running(process, port, started, tls_port)
    running.ready_after = wait_http(running.url("/readyz" if kind == "hps" else "/plugins/"),
                                    started)
    return running


def wait_http(url: str, since: float, timeout: float = 60) -> float:
    while time.monotonic() - since < timeout:
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return time.monotonic() - since
        except OSError:
            time.sleep(0.01)
    raise SystemExit(f"{url} never answered 200")


def variants_done(server: Running, timeout: float = 120) -> float:
    since = time.monotonic()
    while time.monotonic() - since < timeout:
        with urllib.request.urlopen(server.url("/metrics"), timeout=5) as reply:
            if re.search(rb"^hps_gzip_variants_pending 0\.0$", reply.read(), re.M):
                return time.monotonic() - since
        time.sleep(0.1)
    raise SystemExit("gzip variants never finished")


def stop(server: Running) -> None:
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(40)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


# -- load ------------------------------------------------------------------------------------

def wrk(url: str, duration: int, gzip_client: bool, script: Path | None = None,
        connections: int = 32) -> float:
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{duration}s"]
    if gzip_client:
        cmd += ["-H", "Accept-Encoding: gzip"]
    if script:
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True,
                         timeout=duration + 60).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def throughput(root: Path, tmp: Path, rounds: int, duration: int) -> dict:
    """Per round and server: the first runs after start (cold), then warm cells."""
    script = tmp / "random.lua"
    script.write_text(RANDOM_LUA)
    results: dict = {}
    for round_no in range(rounds):
        order = SERVERS[round_no % 3:] + SERVERS[:round_no % 3]  # alternate who goes first
        for kind in order:
            server = start(kind, root, tmp)
            try:
                url = server.url("/plugins/p150kb/1.0.0/plugin.wasm")
                for gz in (False, True):
                    results.setdefault((kind, "cold 150KB", gz), []).append(
                        wrk(url, duration, gz))
                for label in SIZES:
                    url = server.url(f"/plugins/p{label.lower()}/1.0.0/plugin.wasm")
                    for gz in (False, True):
                        results.setdefault((kind, label, gz), []).append(wrk(url, duration, gz))
                for gz in (False, True):
                    results.setdefault((kind, "random 200 × 1 MB", gz), []).append(
                        wrk(server.url("/"), duration, gz, script))
            finally:
                stop(server)
            print(f"round {round_no + 1}: {kind} done", file=sys.stderr)
    return results


def clients(server: Running, paths: list[str], *flags: str, tls: bool = False) -> dict:
    port = server.tls_port if tls else server.port
    cmd = ["taskset", "-c", "1", sys.executable, str(REPO / "bench" / "clients.py"),
           "--port", str(port), *flags] + [f"--path={p}" for p in paths]
    if tls:
        cmd.append("--tls")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if out.returncode:
        raise SystemExit(f"clients failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


@dataclass
class MemoryCase:
    label: str
    target: float
    before: float = 0.0
    peak: float = 0.0
    outcome: dict = field(default_factory=dict)


def memory(root: Path, tmp: Path, tls: tuple[Path, Path]) -> list[MemoryCase]:
    """Peak RSS (VmHWM) of a fresh server through 1,000 waiting or slow clients."""
    big = ["/plugins/p4mb/1.0.0/plugin.wasm"]
    spread = [f"/plugins/m{i:03d}/1.0.0/plugin.wasm" for i in range(MANY)]
    wait = ("--mode", "wait", "--wait", "3")
    slow = ("--mode", "slow", "--rcvbuf", "8192", "--interval", "0.1", "--hold", "10")
    cases = [
        ("hps", "1,000 waiting, 4 MB, identity", 80, big, wait, False),
        ("hps", "1,000 waiting, 4 MB, gzip", 80, big, (*wait, "--gzip"), False),
        ("hps", "1,000 waiting, 200 modules, gzip", 80, spread, (*wait, "--gzip"), False),
        ("hps", "1,000 waiting, 4 MB, TLS", 128, big, wait, True),
        ("best", "nginx-best: 1,000 waiting, 4 MB, identity", 0, big, wait, False),
        ("hps", "1,000 slow readers (8 KiB window), 4 MB", 128, big, slow, False),
        ("hps", "1,000 slow readers (8 KiB window), 4 MB, TLS", 128, big, slow, True),
    ]
    out = []
    for kind, label, target, paths, flags, over_tls in cases:
        # The Python TLS client needs up to ~0.1 s per handshake on this shared machine: the
        # head deadline (from accept, handshake included) and the send deadline (no progress
        # while the first clients wait for the last to connect) must not cut them.
        extra = ("--header-timeout", "300", "--send-timeout", "300") if over_tls else ()
        server = start(kind, root, tmp, tls if over_tls else None, extra)
        try:
            if kind == "hps":
                variants_done(server)
            case = MemoryCase(label, target, before=server.status("VmRSS"))
            case.outcome = clients(server, paths, *flags, tls=over_tls)
            case.peak = server.status("VmHWM")
            out.append(case)
        finally:
            stop(server)
        print(f"memory: {label} done", file=sys.stderr)
    return out


def start_up(tree: Path, mixed: Path, tmp: Path) -> dict:
    """Ready time and idle RSS over 200 modules (150 MB); how many first downloads are gzip."""
    facts: dict = {}
    server = start("hps", mixed, tmp)
    try:
        facts["ready"] = server.ready_after
        facts["first_compressed"] = first_downloads(server, [
            f"/plugins/plugin-{i:03d}/1.0.0/plugin.wasm" for i in range(MANY)])
        facts["compress_seconds"] = variants_done(server)
        time.sleep(2)
        facts["idle_rss"] = server.status("VmRSS")
    finally:
        stop(server)
    server = start("hps", tree, tmp)
    try:
        facts["first_siblings"] = first_downloads(server, [
            f"/plugins/m{i:03d}/1.0.0/plugin.wasm" for i in range(MANY)])
    finally:
        stop(server)
    return facts


def first_downloads(server: Running, paths: list[str]) -> tuple[int, int, float]:
    """GET each path once with Accept-Encoding: gzip, right after ready: (gzip, all, s)."""
    started, gzipped = time.monotonic(), 0
    for path in paths:
        request = urllib.request.Request(server.url(path), headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(request, timeout=30) as reply:
            reply.read()
            gzipped += reply.headers.get("Content-Encoding") == "gzip"
    return gzipped, len(paths), time.monotonic() - started


# -- report ----------------------------------------------------------------------------------

def verdict(ok: bool) -> str:
    return "yes" if ok else "**no**"


def report(results: dict, mem: list[MemoryCase], facts: dict, rounds: int,
           duration: int) -> str:
    def rate(kind: str, label: str, gz: bool) -> float:
        return statistics.median(results[(kind, label, gz)])

    lines = [
        f"Rounds: {rounds} × {duration} s per cell (median shown), `wrk -t1 -c32`, servers on "
        "CPU 0, wrk on CPU 1, loopback. *best* = nginx with sendfile, tcp_nopush, "
        "open_file_cache and gzip_static (a .gz beside every module); *upstream* = nginx as "
        "the upstream image configures it (sendfile, no gzip). Ratios from the same run.",
        "",
        "| case | client | hps r/s | best r/s | upstream r/s | hps/best | target | met | "
        "hps/upstream |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    targets = {"150KB": 0.9, "8MB": 1.0, "random 200 × 1 MB": 0.8, "cold 150KB": 0.9}
    for label in ("cold 150KB", *SIZES, "random 200 × 1 MB"):
        for gz in (False, True):
            hps, best, up = (rate(k, label, gz) for k in SERVERS)
            extra = ""
            if gz:
                extra = f" (target ≥ 1.5: {verdict(hps / up >= 1.5)})"
            lines.append(
                f"| {label} | {'gzip' if gz else 'identity'} | {hps:,.0f} | {best:,.0f} | "
                f"{up:,.0f} | {hps / best:.2f} | ≥ {targets[label]} | "
                f"{verdict(hps / best >= targets[label])} | {hps / up:.2f}{extra} |")
    lines += [
        "",
        "Memory: peak RSS (`VmHWM`) of a fresh server, default flags; clients in one process "
        "on CPU 1 (`bench/clients.py`).",
        "",
        "| case | RSS before MiB | peak MiB | target | met | completed |",
        "|---|---|---|---|---|---|",
    ]
    for case in mem:
        target = f"≤ {case.target}" if case.target else "reference"
        met = verdict(case.peak <= case.target) if case.target else ""
        done = f"{case.outcome['completed']}/{case.outcome['clients']}"
        if case.outcome.get("errors"):
            done += f" ({', '.join(case.outcome['errors'])})"
        lines.append(f"| {case.label} | {case.before:.1f} | {case.peak:.1f} | {target} | {met} "
                     f"| {done} |")
    gz, total, seconds = facts["first_compressed"]
    gz2, total2, seconds2 = facts["first_siblings"]
    lines += [
        "",
        f"Start-up over 200 modules (150 MB, no .gz siblings, empty cache dir): ready in "
        f"{facts['ready']:.2f} s (target ≤ 2: {verdict(facts['ready'] <= 2)}); idle RSS "
        f"{facts['idle_rss']:.1f} MiB once every variant was made (target ≤ 48: "
        f"{verdict(facts['idle_rss'] <= 48)}).",
        "",
        f"First gzip-accepting download of each module right after ready: {gz}/{total} gzip "
        f"without siblings (the server compressed them, {seconds:.1f} s for all 200 "
        f"downloads); {gz2}/{total2} gzip with `.gz` siblings ({seconds2:.1f} s).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="update bench/README.md")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    with tempfile.TemporaryDirectory(prefix="hps-bench-") as name:
        tmp = Path(name)
        tmp.chmod(0o755)  # nginx's worker runs as nobody when started by root
        tree, mixed = build_trees(tmp)
        tls = self_signed(tmp)
        facts = start_up(tree, mixed, tmp)
        mem = memory(tree, tmp, tls)
        results = throughput(tree, tmp, args.rounds, args.duration)
    text = report(results, mem, facts, args.rounds, args.duration)
    print(text)
    if args.write:
        readme = REPO / "bench" / "README.md"
        old = readme.read_text() if readme.exists() else "<!-- results -->\n"
        head = old.split("<!-- results -->")[0]
        # Only the figures are replaced: the analysis after the end marker is written by hand.
        tail = old.split("<!-- /results -->")[1] if "<!-- /results -->" in old else "\n"
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        readme.write_text(f"{head}<!-- results -->\n\nLatest run ({stamp}):\n\n{text}\n"
                          f"<!-- /results -->{tail}")


if __name__ == "__main__":
    main()
