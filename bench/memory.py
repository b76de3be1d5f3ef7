#!/usr/bin/env python3
"""Memory over TLS: hps against nginx (``listen ssl``) in the same run.

A script, not a test::

    flock /tmp/hps-bench.lock python bench/memory.py [--cases waiting,cgroup]
        [--clients 1000] [--herd 4000] [--cgroup-mib 256] [--baseline /other/checkout]

Needs ``nginx-light`` and ``taskset``; the ``cgroup`` case needs root and a memory cgroup
(v1 ``/sys/fs/cgroup/memory``, or v2 with the memory controller delegated). Servers run on
CPU 0, clients (Python asyncio, one process) on CPU 1, everything on 127.0.0.1, and every
server is stopped and every cgroup removed before the script exits. ``--baseline`` also
runs hps from another checkout (e.g. main before a change), in the same run.

Cases:

- ``waiting``: ``--clients`` TLS clients each connect, ask for the 4 MB module and wait 3 s
  before reading it whole (``bench/clients.py --mode wait``): the server's peak RSS
  (``VmHWM``, nginx: its worker's) and how many completed;
- ``cgroup``: the server in a fresh ``--cgroup-mib`` memory cgroup, default flags;
  ``--herd`` TLS clients each connect, ask for the 4 MB module, wait 3 s and read; a thread
  probes ``/healthz`` on the plain port every 0.25 s (1 s allowed). Reported: OOM kills,
  the cgroup's peak usage, each outcome (200 whole, 503 + Retry-After, reset, other) and
  the share of probes answered 200.

Prints a markdown report. See bench/README.md for the method and the latest figures.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.clients import more_descriptors  # noqa: E402
from bench.run import (  # noqa: E402
    Maker,
    free_port,
    nginx_conf,
    self_signed,
    wait_http,
    write_module,
)
from tests.support.server import twistd_path  # noqa: E402

MODULE = "/plugins/p4mb/1.0.0/plugin.wasm"
SIZE = 4_000_000
NGINX_TLS = """sendfile on;
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
    worker: int = 0
    """The pid whose memory counts (nginx's worker; hps itself)."""

    def status(self, key: str) -> float:
        text = Path(f"/proc/{self.worker or self.process.pid}/status").read_text()
        return int(re.search(rf"{key}:\s+(\d+)", text).group(1)) / 1024


def in_cgroup(group: Path | None) -> list[str]:
    """A prefix that moves the command into ``group`` before it starts."""
    if group is None:
        return []
    return ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh"]


def start_hps(label: str, repo: Path, root: Path, tmp: Path, tls: tuple[Path, Path],
              extra: tuple[str, ...] = (), group: Path | None = None) -> Server:
    port, tls_port = free_port(), free_port()
    cache = tempfile.mkdtemp(prefix="cache-", dir=tmp)
    cmd = [*in_cgroup(group), "taskset", "-c", "0", twistd_path(), "-n", "--pidfile=", "hps",
           "--root", str(root), "--cache-dir", cache, "--access-log", "off",
           "--listen", f"tcp:{port}:interface=127.0.0.1",
           "--listen", f"ssl:{tls_port}:interface=127.0.0.1:privateKey={tls[0]}"
                       f":certKey={tls[1]}", *extra]
    log = open(tmp / f"{label}.log", "ab")  # noqa: SIM115 - lives as long as the server
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
                               env=dict(os.environ, PYTHONPATH=str(repo)))
    server = Server(label, process, port, tls_port)
    wait_http(f"http://127.0.0.1:{port}/readyz", time.monotonic())
    time.sleep(2)  # the gzip variant's check, so the idle size is the idle size
    return server


def start_nginx(root: Path, tmp: Path, tls: tuple[Path, Path],
                group: Path | None = None) -> Server:
    port, tls_port = free_port(), free_port()
    name = f"n{port}"
    conf = tmp / f"nginx-{name}.conf"
    conf.write_text(nginx_conf(
        tmp, name, root.parent, f"listen 127.0.0.1:{port} backlog=1024;\n"
        f"        listen 127.0.0.1:{tls_port} ssl backlog=1024;",
        NGINX_TLS.format(key=tls[0], cert=tls[1]), connections=16384))
    log = open(tmp / "nginx.log", "ab")  # noqa: SIM115
    process = subprocess.Popen([*in_cgroup(group), "taskset", "-c", "0", "nginx", "-c",
                                str(conf), "-p", str(tmp)],
                               stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
    server = Server("nginx", process, port, tls_port)
    wait_http(f"http://127.0.0.1:{port}/plugins/p4mb/1.0.0/plugin.wasm", time.monotonic())
    children = [p for p in Path("/proc").iterdir() if p.name.isdigit()
                and _ppid(p) == process.pid]
    server.worker = int(children[0].name) if children else process.pid
    return server


def _ppid(proc: Path) -> int:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def stop(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(40)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


# -- cgroups ---------------------------------------------------------------------------------

@contextlib.contextmanager
def memory_cgroup(mib: int) -> Iterator[Path]:
    v1 = Path("/sys/fs/cgroup/memory")
    if (v1 / "memory.limit_in_bytes").exists():
        group, limit = v1 / f"hps-bench-{os.getpid()}", "memory.limit_in_bytes"
    else:
        group, limit = Path("/sys/fs/cgroup") / f"hps-bench-{os.getpid()}", "memory.max"
    group.mkdir()
    try:
        (group / limit).write_text(str(mib << 20))
        yield group
    finally:
        for _ in range(100):
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def cgroup_facts(group: Path) -> dict:
    facts = {"oom_kill": 0, "peak_mib": 0.0}
    for name in ("memory.oom_control", "memory.events"):
        if (group / name).exists():
            for line in (group / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    facts["oom_kill"] = int(value)
    for name in ("memory.max_usage_in_bytes", "memory.peak"):
        if (group / name).exists():
            facts["peak_mib"] = int((group / name).read_text()) / (1 << 20)
    return facts


# -- load ------------------------------------------------------------------------------------

def waiting(server: Server, clients: int) -> dict:
    cmd = ["taskset", "-c", "1", sys.executable, str(REPO / "bench" / "clients.py"),
           "--port", str(server.tls_port), "--path", MODULE, "--clients", str(clients),
           "--mode", "wait", "--wait", "3", "--tls"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    if out.returncode:
        raise SystemExit(f"clients failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


async def fetch(port: int, context: ssl.SSLContext) -> str:
    """Connect, ask, wait 3 s, read: the outcome's name."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context,
                                                      server_hostname="localhost",
                                                      limit=1 << 20)
        writer.write(f"GET {MODULE} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
                     .encode())
        await writer.drain()
        await asyncio.sleep(3)
        data = await reader.read()
        writer.close()
    except ConnectionResetError:
        return "reset"
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as err:
        return type(err).__name__
    head, _, body = data.partition(b"\r\n\r\n")
    status = head[9:12]
    if status == b"200":
        return "200 whole" if len(body) == SIZE else f"200 cut at {len(body)}"
    if status == b"503":
        return "503 + Retry-After" if b"\r\nRetry-After: " in head else "503 bare"
    return f"status {status.decode(errors='replace') or 'none'}"


async def herd(port: int, clients: int) -> collections.Counter:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    outcomes = await asyncio.gather(*[fetch(port, context) for _ in range(clients)])
    return collections.Counter(outcomes)


def probe(port: int, done: threading.Event, statuses: list[int]) -> None:
    """/healthz (hps's probe; nginx serves a file of that name) every 0.25 s, 1 s allowed."""
    while not done.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                data = b"".join(iter(lambda: sock.recv(4096), b""))
            statuses.append(int(data[9:12]) if data[:5] == b"HTTP/" else 0)
        except (OSError, ValueError):
            statuses.append(0)
        done.wait(0.25)


def herd_with_probes(server: Server, clients: int) -> dict:
    """The herd in this process's event loop (pinned to CPU 1), probes in a thread."""
    os.sched_setaffinity(0, {1})
    done, statuses = threading.Event(), []
    prober = threading.Thread(target=probe, args=(server.port, done, statuses))
    prober.start()
    began = time.monotonic()
    try:
        outcomes = asyncio.run(herd(server.tls_port, clients))
    finally:
        done.set()
        prober.join()
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    return {"outcomes": dict(outcomes), "seconds": round(time.monotonic() - began, 1),
            "probes": len(statuses), "probes_ok": statuses.count(200)}


def scrape(server: Server) -> str:
    """hps's admission decisions from /metrics: what was cut, refused, gated."""
    import urllib.error
    import urllib.request

    for _ in range(20):  # still shedding: the herd's connections are closing (503)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics",
                                        timeout=10) as reply:
                text = reply.read().decode()
            break
        except urllib.error.HTTPError as err:
            if err.code != 503:
                raise
            time.sleep(0.5)
    else:
        return "/metrics answered 503 for 10 s after the herd"
    wanted = ("hps_responses_aborted_total", "hps_memory_shed_total", "hps_connections_shed",
              "hps_tls_gate_closed_total", "hps_requests_refused_total",
              "hps_bodies_turned_away_total")
    return ", ".join(f"`{line.rsplit(' ', 1)[0]}` {float(line.rsplit(' ', 1)[1]):,.0f}"
                     for line in text.splitlines() if line.startswith(wanted))


# -- cases -----------------------------------------------------------------------------------

def case_waiting(servers: list[tuple[str, object]], clients: int) -> list[str]:
    lines = [f"Peak RSS with {clients:,} waiting TLS clients (4 MB each, all ask, wait 3 s, "
             "then read):", "", "| server | idle MiB | peak MiB | per client KiB | completed | "
             "bodies' worth read |", "|---|---|---|---|---|---|"]
    for label, begin in servers:
        server = begin()
        try:
            idle = server.status("VmRSS")
            outcome = waiting(server, clients)
            peak = server.status("VmHWM")
        finally:
            stop(server)
        per = (peak - idle) * 1024 / clients
        errors = f" ({', '.join(outcome['errors'])})" if outcome["errors"] else ""
        # "completed" counts any answer read to its end (a 503 too); bytes tell the bodies.
        lines.append(f"| {label} | {idle:.1f} | {peak:.1f} | {per:.0f} | "
                     f"{outcome['completed']}/{outcome['clients']}{errors} | "
                     f"{outcome['bytes'] / SIZE:,.0f} |")
        print(f"waiting: {label} done", file=sys.stderr)
    return lines


def case_cgroup(servers: list[tuple[str, object]], clients: int, mib: int) -> list[str]:
    lines = [f"In a {mib} MiB memory cgroup, {clients:,} TLS clients x 4 MB (ask, wait 3 s, "
             "read), default flags; /healthz probed on the plain port every 0.25 s:", "",
             "| server | OOM kills | cgroup peak MiB | outcomes | /healthz 200 | seconds |",
             "|---|---|---|---|---|---|"]
    notes: list[str] = []
    for label, begin in servers:
        with memory_cgroup(mib) as group:
            server = begin(group)
            try:
                result = herd_with_probes(server, clients)
                alive = server.process.poll() is None
                decisions = scrape(server) if alive and label != "nginx" else ""
            finally:
                stop(server)
            facts = cgroup_facts(group)
        outcomes = ", ".join(f"{count:,} {name}" for name, count in
                             sorted(result["outcomes"].items(), key=lambda kv: -kv[1]))
        share = result["probes_ok"] / max(result["probes"], 1)
        lines.append(f"| {label}{'' if alive else ' (died)'} | {facts['oom_kill']} | "
                     f"{facts['peak_mib']:.0f} | {outcomes} | {result['probes_ok']}/"
                     f"{result['probes']} ({share:.0%}) | {result['seconds']} |")
        if decisions:
            notes.append(f"{label}: {decisions}")
        print(f"cgroup: {label} done", file=sys.stderr)
    return lines + (["", *notes] if notes else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", default="waiting,cgroup")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--herd", type=int, default=4000)
    parser.add_argument("--cgroup-mib", type=int, default=256)
    parser.add_argument("--baseline", type=Path, help="another checkout of hps to run too")
    parser.add_argument("--no-nginx", action="store_true", help="hps only (a quick look)")
    args = parser.parse_args()
    more_descriptors()
    report: list[str] = []
    with tempfile.TemporaryDirectory(prefix="hps-memory-bench-") as name:
        tmp = Path(name)
        tmp.chmod(0o755)  # nginx's worker runs as nobody when started by root
        root = tmp / "tree" / "plugins"
        write_module(root, "p4mb", Maker().module(SIZE, SIZE), True)
        (root.parent / "healthz").write_text("ok\n")  # nginx's probe: a static file
        tls = self_signed(tmp)
        # The Python TLS client needs up to ~0.1 s per handshake on this shared machine and
        # the first clients read only once the last has asked: deadlines must not cut them.
        patient = ("--header-timeout", "300", "--send-timeout", "300", "--idle-timeout", "300")
        checkouts = [("hps", REPO)] + ([("baseline", args.baseline)] if args.baseline else [])

        def hps(label: str, repo: Path, extra: tuple[str, ...] = ()):
            return lambda group=None: start_hps(label, repo, root, tmp, tls, extra, group)

        def nginx(entries: list) -> list:
            return [] if args.no_nginx else entries

        cases = args.cases.split(",")
        if "waiting" in cases:
            plain_nginx = [("nginx", lambda: start_nginx(root, tmp, tls))]
            report += case_waiting([(label, hps(label, repo, patient)) for label, repo in
                                    checkouts] + nginx(plain_nginx), args.clients)
            report.append("")
        if "cgroup" in cases:
            report += case_cgroup([(label, hps(label, repo)) for label, repo in checkouts]
                                  + nginx([("nginx", lambda group: start_nginx(root, tmp, tls,
                                                                                group))]),
                                  args.herd, args.cgroup_mib)
    print("\n".join(report))


if __name__ == "__main__":
    main()
