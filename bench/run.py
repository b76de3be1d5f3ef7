#!/usr/bin/env python3
"""Benchmark hps against nginx (upstream image config) and stock ``twistd web``.

A script, not a test: ``python bench/run.py [--rounds 3] [--duration 5]``.
Needs ``nginx-light``, ``wrk`` and ``taskset`` (util-linux). Servers run on CPU 0,
wrk on CPU 1. Prints a markdown report; ``--write`` also updates bench/README.md.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.support.server import twistd_path, wasm_bytes  # noqa: E402

SIZES = {"150KB": 150_000, "400KB": 400_000, "8MB": 8_000_000}
SERVERS = ("hps", "nginx", "stock")
NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    sendfile on;
    keepalive_timeout 65;
    access_log {tmp}/nginx-access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ autoindex on; }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_tree(root: Path, sizes: dict[str, int]) -> None:
    for label, size in sizes.items():
        target = root / f"p{label.lower()}" / "1.0.0" / "plugin.wasm"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(wasm_bytes(size, seed=size))


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO))


def wait_http(url: str, timeout: float = 30) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return time.monotonic() - start
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"{url} never answered 200")


def start(kind: str, root: Path, tmp: Path, port: int) -> subprocess.Popen:
    """hps serves ``root`` at /plugins/; the others serve its parent, so URLs match."""
    log = open(tmp / f"{kind}.log", "ab")  # noqa: SIM115 - lives as long as the server
    pin = ["taskset", "-c", "0"]
    listen = f"tcp:{port}:interface=127.0.0.1"
    if kind == "hps":
        cmd = [twistd_path(), "-n", "--pidfile=", "hps", "--root", str(root), "--listen", listen]
    elif kind == "stock":
        cmd = [twistd_path(), "-n", "--pidfile=", "web", "--listen", listen,
               "--path", str(root.parent)]
    else:
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, root=root.parent))
        cmd = ["nginx", "-c", str(conf), "-p", str(tmp)]
    return subprocess.Popen(pin + cmd, stdout=log, stderr=subprocess.STDOUT, env=env(),
                            cwd=tmp)


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wrk(url: str, connections: int, duration: int, gzip: bool) -> tuple[float, float | None]:
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    if gzip:
        cmd += ["-H", "Accept-Encoding: gzip"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return rate, float(p99.group(1)) * scale[p99.group(2)] if p99 else None


def warm(port: int) -> None:
    """One request per URL and encoding: hps loads and gzips bodies on first use."""
    for label in SIZES:
        for headers in ({}, {"Accept-Encoding": "gzip"}):
            url = f"http://127.0.0.1:{port}/plugins/p{label.lower()}/1.0.0/plugin.wasm"
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers)) as r:
                r.read()
    time.sleep(1.5)


def throughput(root: Path, tmp: Path, rounds: int, duration: int) -> dict:
    results: dict = {}
    for round_no in range(rounds):
        order = SERVERS[round_no % 3:] + SERVERS[:round_no % 3]  # alternate who goes first
        for kind in order:
            port = free_port()
            process = start(kind, root, tmp, port)
            try:
                wait_http(f"http://127.0.0.1:{port}/plugins/p150kb/1.0.0/plugin.wasm")
                warm(port)
                for label in SIZES:
                    url = f"http://127.0.0.1:{port}/plugins/p{label.lower()}/1.0.0/plugin.wasm"
                    for gz in (False, True):
                        rate, _ = wrk(url, 32, duration, gz)
                        results.setdefault((kind, label, gz, 32), []).append((rate, None))
                url = f"http://127.0.0.1:{port}/plugins/p150kb/1.0.0/plugin.wasm"
                results.setdefault((kind, "150KB", False, 1000), []).append(
                    wrk(url, 1000, duration, False))
            finally:
                stop(process)
            print(f"round {round_no + 1}: {kind} done", file=sys.stderr)
    return results


def vm(pid: int, key: str = "VmRSS") -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{key}:\s+(\d+)", text).group(1)) / 1024


def server_pid(process: subprocess.Popen) -> int:
    return process.pid  # taskset execs the server in place


def idle_rss(tmp: Path) -> tuple[float, float, int]:
    """Start-up time and idle RSS of hps over 200 artifacts (~150 MB)."""
    root = tmp / "idle" / "plugins"
    sizes = [150_000, 400_000, 1_200_000, 1_250_000]
    total = 0
    for i in range(200):
        size = sizes[i % 4]
        target = root / f"plugin-{i:03d}" / "1.0.0" / "plugin.wasm"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(wasm_bytes(size, seed=i))
        total += size
    port = free_port()
    process = start("hps", root, tmp, port)
    try:
        ready = wait_http(f"http://127.0.0.1:{port}/readyz")
        time.sleep(2)
        return ready, vm(server_pid(process)), total
    finally:
        stop(process)


def stalled_rss(kind: str, tmp: Path, clients: int = 1000, hold: float = 8) -> tuple[float, float]:
    """Peak RSS while ``clients`` sockets GET a 4 MB file and never read."""
    root = tmp / "stall" / "plugins"
    target = root / "big" / "1.0.0" / "plugin.wasm"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(wasm_bytes(4_000_000, seed=4))
    port = free_port()
    process = start(kind, root, tmp, port)
    pid = server_pid(process)
    request = (b"GET /plugins/big/1.0.0/plugin.wasm HTTP/1.1\r\nHost: bench\r\n"
               b"User-Agent: stall\r\n\r\n")
    sockets: list[socket.socket] = []
    try:
        wait_http(f"http://127.0.0.1:{port}/plugins/big/1.0.0/plugin.wasm")
        time.sleep(1.5)  # hps: the body is cached after the first request
        before = vm(pid)
        peak = before
        for _ in range(clients):
            s = socket.create_connection(("127.0.0.1", port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            s.sendall(request)
            sockets.append(s)
            peak = max(peak, vm(pid)) if len(sockets) % 50 == 0 else peak
        deadline = time.monotonic() + hold
        while time.monotonic() < deadline:
            peak = max(peak, vm(pid))
            time.sleep(0.1)
        return before, peak
    finally:
        for s in sockets:
            s.close()
        stop(process)


def median(values: list[float]) -> float:
    return statistics.median(values)


def report(results: dict, idle: tuple, stalls: dict, rounds: int, duration: int) -> str:
    lines = [
        f"Rounds: {rounds} × {duration} s per cell (median shown), `wrk -t1`, servers on CPU 0,",
        "wrk on CPU 1, loopback. Ratios are hps/nginx and hps/stock.",
        "",
        "| size | client | hps r/s | nginx r/s | stock r/s | hps/nginx | hps/stock |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in SIZES:
        for gz in (False, True):
            rate = {k: median([r for r, _ in results[(k, label, gz, 32)]]) for k in SERVERS}
            lines.append(
                f"| {label} | {'gzip' if gz else 'identity'} | {rate['hps']:,.0f} | "
                f"{rate['nginx']:,.0f} | {rate['stock']:,.0f} | "
                f"{rate['hps'] / rate['nginx']:.2f} | {rate['hps'] / rate['stock']:.2f} |")
    c1000 = {k: results[(k, "150KB", False, 1000)] for k in SERVERS}
    rate = {k: median([r for r, _ in v]) for k, v in c1000.items()}
    p99 = {k: median([p for _, p in v if p is not None]) for k, v in c1000.items()}
    lines += [
        "",
        "1,000 connections, 150 KB, identity:",
        "",
        "| server | r/s | p99 ms |",
        "|---|---|---|",
    ] + [f"| {k} | {rate[k]:,.0f} | {p99[k]:.1f} |" for k in SERVERS] + [
        "",
        f"p99 hps/nginx: {p99['hps'] / p99['nginx']:.2f}",
        "",
        f"Start-up with 200 artifacts ({idle[2] / 1e6:.0f} MB): ready in {idle[0]:.2f} s; "
        f"idle RSS {idle[1]:.1f} MiB.",
        "",
        "1,000 clients GET a 4 MB file and never read (RSS MiB, before → peak):",
        "",
    ] + [f"- {k}: {b:.1f} → {p:.1f}" for k, (b, p) in stalls.items()]
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
        root = tmp / "plugins"
        build_tree(root, SIZES)
        idle = idle_rss(tmp)
        stalls = {k: stalled_rss(k, tmp) for k in ("hps", "stock")}
        results = throughput(root, tmp, args.rounds, args.duration)
    text = report(results, idle, stalls, args.rounds, args.duration)
    print(text)
    if args.write:
        readme = REPO / "bench" / "README.md"
        old = readme.read_text() if readme.exists() else "<!-- results -->\n"
        head = old.split("<!-- results -->")[0]
        # Only the figures are replaced: the analysis after the end marker is written by hand.
        tail = old.split("<!-- /results -->")[1] if "<!-- /results -->" in old else "\n"
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        readme.write_text(f"{head}<!-- results -->\n\nLatest run ({stamp}):\n\n{text}\n"
                          f"<!-- /results -->{tail}")


if __name__ == "__main__":
    main()
