#!/usr/bin/env python3
"""TLS cases: hps against nginx (``listen ssl http2``) in the same run, one function per case.

A script, not a test::

    flock /tmp/hps-bench.lock python bench/tls.py [--cases h2,h1,herd] [--rounds 2]
        [--duration 5] [--baseline /path/to/other/checkout]

Needs ``nginx-light``, ``wrk``, ``nghttp2-client`` (h2load), ``golang-go`` (the herd
client, bench/herd) and ``taskset``. Servers run on CPU 0, load on CPU 1, everything on
127.0.0.1, and every server is stopped before the script exits. ``--baseline`` also runs
hps from another checkout (e.g. main before a change), so before and after share a run.

Cases (each a function below; more can be added the same way):

- ``h2``: h2load ``-c32 -m1`` over TLS + HTTP/2, 150 KB and 4 MB, identity and gzip:
  requests/s and server CPU per response (``/proc/<pid>/stat`` utime+stime around the run);
- ``h1``: the same cells with wrk ``-t1 -c32`` over TLS + HTTP/1.1;
- ``herd``: 1,000 Go clients built like the gateway's fetcher (bench/herd) fetch the 4 MB
  module at once over TLS, HTTP/2 and HTTP/1.1: verified count and wall time. The clients
  run on both CPUs (on one they starve, and miss their deadlines against any server).

Prints a markdown report. See bench/README.md for the method and the latest figures.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.run import (  # noqa: E402
    Maker,
    free_port,
    nginx_conf,
    self_signed,
    wait_http,
    write_module,
)
from tests.support.server import twistd_path  # noqa: E402

SIZES = {"150KB": 150_000, "4MB": 4_000_000}
CONNECTIONS = 32
HERD = 1000
NGINX_TLS = """sendfile on;
    keepalive_requests 1000000;
    open_file_cache max=1000 inactive=60s;
    gzip_static on;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_session_cache shared:SSL:10m;"""


@dataclass
class Server:
    label: str
    process: subprocess.Popen
    port: int
    tls_port: int

    def url(self, path: str, tls: bool = True) -> str:
        if tls:
            return f"https://127.0.0.1:{self.tls_port}{path}"
        return f"http://127.0.0.1:{self.port}{path}"

    def cpu_seconds(self) -> float:
        """utime + stime of the server process so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_hps(label: str, repo: Path, root: Path, tmp: Path, tls: tuple[Path, Path]) -> Server:
    port, tls_port = free_port(), free_port()
    cache = tempfile.mkdtemp(prefix="cache-", dir=tmp)
    cmd = ["taskset", "-c", "0", twistd_path(), "-n", "--pidfile=", "hps", "--root", str(root),
           "--cache-dir", cache, "--listen", f"tcp:{port}:interface=127.0.0.1",
           "--listen", f"ssl:{tls_port}:interface=127.0.0.1:privateKey={tls[0]}"
                       f":certKey={tls[1]}"]
    log = open(tmp / f"{label}.log", "ab")  # noqa: SIM115 - lives as long as the server
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
                               env=dict(os.environ, PYTHONPATH=str(repo)))
    server = Server(label, process, port, tls_port)
    wait_http(server.url("/readyz", tls=False), time.monotonic())
    variants_ready(server)
    return server


def variants_ready(server: Server, timeout: float = 120) -> None:
    import urllib.request

    since = time.monotonic()
    while time.monotonic() - since < timeout:
        with urllib.request.urlopen(server.url("/metrics", tls=False), timeout=5) as reply:
            if re.search(rb"^hps_gzip_variants_pending 0\.0$", reply.read(), re.M):
                return
        time.sleep(0.1)
    raise SystemExit("gzip variants never finished")


def start_nginx(root: Path, tmp: Path, tls: tuple[Path, Path]) -> Server:
    port, tls_port = free_port(), free_port()
    conf = tmp / "nginx-tls.conf"
    conf.write_text(nginx_conf(
        tmp, "tls", root.parent, f"listen 127.0.0.1:{port};\n"
        f"        listen 127.0.0.1:{tls_port} ssl http2 backlog=4096;",
        NGINX_TLS.format(key=tls[0], cert=tls[1]), connections=8192,
        main="\nmaster_process off;"))
    log = open(tmp / "nginx.log", "ab")  # noqa: SIM115
    process = subprocess.Popen(["taskset", "-c", "0", "nginx", "-c", str(conf), "-p", str(tmp)],
                               stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
    server = Server("nginx", process, port, tls_port)
    wait_http(server.url("/plugins/p150kb/1.0.0/plugin.wasm", tls=False), time.monotonic())
    return server


def stop(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(40)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def measured(server: Server, cmd: list[str], timeout: float,
             cpus: str = "1") -> tuple[str, float]:
    """Run a load generator on ``cpus``: (its output, server CPU seconds it cost)."""
    before = server.cpu_seconds()
    out = subprocess.run(["taskset", "-c", cpus, *cmd], capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode:
        raise SystemExit(f"{cmd[0]} failed: {out.stdout[-1000:]} {out.stderr[-1000:]}")
    return out.stdout, server.cpu_seconds() - before


# -- cases -----------------------------------------------------------------------------------

def h2load_cell(server: Server, path: str, gzip: bool, duration: int) -> dict:
    """One h2load run over TLS + HTTP/2: requests/s, server CPU per response (µs)."""
    cmd = ["h2load", f"-c{CONNECTIONS}", "-m1", "-t1", "-D", str(duration)]
    if gzip:
        cmd += ["-H", "accept-encoding: gzip"]
    out, cpu = measured(server, [*cmd, server.url(path)], duration + 60)
    if "Application protocol: h2" not in out:
        raise SystemExit(f"h2load did not negotiate h2 with {server.label}")
    done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", out).group(1))
    ok = int(re.search(r"(\d+) succeeded", out).group(1))
    rate = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    return {"rps": rate, "cpu_us": cpu / max(done, 1) * 1e6, "done": done, "ok": ok}


def wrk_cell(server: Server, path: str, gzip: bool, duration: int) -> dict:
    """One wrk run over TLS + HTTP/1.1: requests/s, server CPU per response (µs)."""
    cmd = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{duration}s"]
    if gzip:
        cmd += ["-H", "Accept-Encoding: gzip"]
    out, cpu = measured(server, [*cmd, server.url(path)], duration + 60)
    done = int(re.search(r"(\d+) requests in", out).group(1))
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return {"rps": rate, "cpu_us": cpu / max(done, 1) * 1e6, "done": done, "ok": done}


def herd_case(server: Server, herd: Path, path: str, digest: str, proto: str,
              clients: int = HERD) -> dict:
    """``clients`` gateway-like Go clients fetch ``path`` at once (bench/herd). The clients
    may use both CPUs: 1,000 TLS sessions un-gzipping and hashing 4 MB each starve on one
    (then every server, nginx too, misses the 15 s deadlines: the clients are the limit)."""
    cmd = [str(herd), "-url", server.url(path), "-sha256", digest, "-proto", proto,
           "-n", str(clients)]
    out, cpu = measured(server, cmd, 900, cpus="0,1")
    result = json.loads(out)
    result["cpu_s"] = round(cpu, 2)
    return result


def build_herd(tmp: Path) -> Path:
    target = tmp / "herd"
    subprocess.run(["go", "build", "-o", str(target), "."], cwd=REPO / "bench" / "herd",
                   check=True, env=dict(os.environ, GOFLAGS="-mod=mod",
                                        GOCACHE=str(tmp / "gocache"), GOPATH=str(tmp / "gopath")))
    return target


# -- the run ---------------------------------------------------------------------------------

def cells(servers: list[Server], cell, duration: int, rounds: int) -> dict:
    """Every (server, size, encoding) cell ``rounds`` times, alternating who goes first."""
    results: dict = {}
    for round_no in range(rounds):
        order = servers[round_no % len(servers):] + servers[:round_no % len(servers)]
        for server in order:
            for label in SIZES:
                for gz in (False, True):
                    path = f"/plugins/p{label.lower()}/1.0.0/plugin.wasm"
                    results.setdefault((server.label, label, gz), []).append(
                        cell(server, path, gz, duration))
        print(f"{cell.__name__}: round {round_no + 1} done", file=sys.stderr)
    return results


def table(name: str, results: dict, labels: list[str]) -> list[str]:
    lines = [f"{name}: median of the rounds; each cell's runs in brackets (r/s).", "",
             "| server | cell | r/s | runs | server CPU per response |", "|---|---|---|---|---|"]
    for server in labels:
        for size in SIZES:
            for gz in (False, True):
                runs = results.get((server, size, gz))
                if not runs:
                    continue
                rate = statistics.median(r["rps"] for r in runs)
                cpu = statistics.median(r["cpu_us"] for r in runs)
                spread = ", ".join(f"{r['rps']:,.0f}" for r in runs)
                lines.append(f"| {server} | {size} {'gzip' if gz else 'identity'} | "
                             f"{rate:,.0f} | {spread} | {cpu:,.0f} µs |")
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="h2,h1,herd")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="another checkout to run as hps-base")
    parser.add_argument("--herd-clients", type=int, default=HERD)
    parser.add_argument("--herd-protocols", default="h2,h1", help="h2, h1 or both")
    args = parser.parse_args()
    cases = args.cases.split(",")
    with tempfile.TemporaryDirectory(prefix="hps-tls-bench-") as name:
        tmp = Path(name)
        maker = Maker()
        root = tmp / "tree" / "plugins"
        modules = {}
        for label, size in SIZES.items():
            modules[label] = maker.module(size, size)
            write_module(root, f"p{label.lower()}", modules[label], True)
        tls = self_signed(tmp)
        herd = build_herd(tmp) if "herd" in cases else None
        servers: list[Server] = []
        try:  # a server that fails to start must not leave the others running
            servers.append(start_hps("hps", REPO, root, tmp, tls))
            if args.baseline:
                servers.append(start_hps("hps-base", args.baseline.resolve(), root, tmp, tls))
            servers.append(start_nginx(root, tmp, tls))
        except BaseException:
            for server in servers:
                stop(server)
            raise
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
        when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M")
        lines = [f"`bench/tls.py` at {commit}, {when} UTC, load average "
                 f"{os.getloadavg()[0]:.1f} at start; servers on CPU 0, load on CPU 1, "
                 f"{args.duration} s per run, {args.rounds} rounds.", ""]
        labels = [s.label for s in servers]
        try:
            if "h2" in cases:
                lines += table(f"HTTP/2 over TLS (h2load -c{CONNECTIONS} -m1)",
                               cells(servers, h2load_cell, args.duration, args.rounds), labels)
            if "h1" in cases:
                lines += table(f"HTTP/1.1 over TLS (wrk -t1 -c{CONNECTIONS})",
                               cells(servers, wrk_cell, args.duration, args.rounds), labels)
            if herd is not None:
                digest = hashlib.sha256(modules["4MB"]).hexdigest()
                lines += [f"Herd: {args.herd_clients} Go clients (bench/herd: 15 s per attempt, "
                          "5 attempts, back-off from 0.5 s, gzip), 4 MB module, at once.", "",
                          "| server | protocol | verified | attempts | errors | wall s | "
                          "p50 / p99 s | server CPU s |", "|---|---|---|---|---|---|---|---|"]
                for proto in args.herd_protocols.split(","):
                    for server in servers:
                        r = herd_case(server, herd, "/plugins/p4mb/1.0.0/plugin.wasm", digest,
                                      proto, args.herd_clients)
                        lines.append(
                            f"| {server.label} | {proto} | {r['verified']}/{r['clients']} | "
                            f"{r['attempts']} | {r['errors'] or '-'} | {r['seconds']:.1f} | "
                            f"{r['p50']:.1f} / {r['p99']:.1f} | {r['cpu_s']} |")
                        print(f"herd {proto} {server.label}: {r}", file=sys.stderr)
                lines.append("")
        finally:
            for server in servers:
                stop(server)
        print("\n".join(lines))


if __name__ == "__main__":
    main()
