#!/usr/bin/env python3
"""Where a waiting TLS connection's bytes go in a real ``twistd hps``: a breakdown by stage.

A script, not a test::

    flock /tmp/hps-bench.lock python bench/tlsmemory.py [--clients 1000] [--trace]
        [--timeline] [--baseline /other/checkout]

The server (pinned to CPU 0, the patient deadlines of ``bench/memory.py``'s waiting
case) is started with a ``sitecustomize`` hook that, on ``SIGUSR2``, writes glibc's
``mallinfo2`` (the C heap: in use and free), the live objects by type (``gc``) and, with
``--trace``, tracemalloc's total and top allocation sites (the Python share; tracemalloc
slows the server and adds its own bytes to RSS, so run once without it for RSS). The
clients (one asyncio process on CPU 1, 127.0.0.1 only) go through stages, and the server
is sampled after each:

1. ``handshake``: every client connects and finishes its TLS handshake, no request;
2. ``asked``: every client sends its GET (4 MB module) and reads nothing: 32 bodies take
   turns and fill their transport; the rest wait for a turn (``hps.bodies``);
3. ``refused``: 6 s later, the waiting ones have been answered ``503`` (after
   ``TURN_WAIT``) and wait for their client's ``close_notify``;
4. ``read``: every client reads its answer to the end and closes;
5. ``closed``: 2 s after the last close (what the process keeps: the allocator's).

``--timeline`` instead runs ``bench/clients.py --mode wait --tls`` (the waiting case as
``bench/memory.py`` runs it) and samples the server's RSS every 0.1 s, to tell when the
peak happens. ``--openssl`` measures no server: the C heap one server-side pyOpenSSL
connection keeps (memory BIOs, as Twisted's), by stage and with or without
``SSL_MODE_RELEASE_BUFFERS``, over ``--clients`` connections in this process. Prints
markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.clients import more_descriptors, read_all, tls_context  # noqa: E402
from bench.memory import MODULE, SIZE, Server, start_hps, stop  # noqa: E402
from bench.run import Maker, self_signed, write_module  # noqa: E402
from bench.tlswrites import pair  # noqa: E402

# Self-contained (no hps import): it runs in servers of any checkout (--baseline).
HOOK = '''
import collections, ctypes, gc, json, os, signal, tracemalloc

_OUT = os.environ["HPS_BREAKDOWN_OUT"]
if os.environ.get("HPS_BREAKDOWN_TRACE"):
    tracemalloc.start(1)


class _Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost").split()]


_libc = ctypes.CDLL(None)
_libc.mallinfo2.restype = _Info


_last = []


def _dump(signum, frame):
    info = _libc.mallinfo2()
    out = {"heap": info.arena, "mmapped": info.hblkhd, "in_use": info.uordblks,
           "free": info.fordblks,
           "types": dict(collections.Counter(type(o).__name__ for o in gc.get_objects()))}
    if tracemalloc.is_tracing():
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)])
        out["traced"] = tracemalloc.get_traced_memory()[0]
        out["top"] = [(str(s.traceback), s.size, s.count)
                      for s in snapshot.statistics("lineno")[:20]]
        if _last:  # what grew since the last dump
            out["grew"] = [(str(s.traceback), s.size_diff, s.count_diff)
                           for s in snapshot.compare_to(_last[0], "lineno")[:12]]
        _last[:] = [snapshot]
    with open(_OUT + ".tmp", "w") as f:
        json.dump(out, f)
    os.replace(_OUT + ".tmp", _OUT)


signal.signal(signal.SIGUSR2, _dump)

if os.environ.get("HPS_BREAKDOWN_TRIM"):  # an experiment: trim whenever much is free
    import threading, time
    _free_over = int(os.environ["HPS_BREAKDOWN_TRIM"])

    def _trimmer():
        while True:
            time.sleep(0.5)
            if _libc.mallinfo2().fordblks > _free_over:
                _libc.malloc_trim(0)

    threading.Thread(target=_trimmer, daemon=True).start()
'''

STAGES = ("idle", "handshake", "asked", "refused", "read", "closed")


def dump(server: Server, out: Path) -> dict:
    """Ask the server's hook for its figures; with RSS and HWM from /proc."""
    out.unlink(missing_ok=True)
    rss, hwm = server.status("VmRSS"), server.status("VmHWM")
    os.kill(server.process.pid, signal.SIGUSR2)
    for _ in range(600):
        if out.exists():
            break
        time.sleep(0.05)
    facts = json.loads(out.read_text())
    facts.update(rss=rss, hwm=hwm)
    return facts


async def staged(server: Server, clients: int, out: Path) -> dict[str, dict]:
    """The stages above, each sampled once the clients are all past it."""
    facts = {"idle": dump(server, out)}
    context = tls_context()

    async def connect():
        return await asyncio.open_connection("127.0.0.1", server.tls_port, ssl=context,
                                             server_hostname="localhost", limit=1 << 20)

    pairs = await asyncio.gather(*[connect() for _ in range(clients)],
                                 return_exceptions=True)
    live = [p for p in pairs if isinstance(p, tuple)]
    await asyncio.sleep(1)
    facts["handshake"] = dump(server, out)
    ask = (f"GET {MODULE} HTTP/1.1\r\nHost: bench\r\nUser-Agent: Go-http-client/1.1\r\n"
           "Connection: close\r\n\r\n").encode()
    for _reader, writer in live:
        writer.write(ask)
    await asyncio.gather(*[w.drain() for _r, w in live])
    await asyncio.sleep(1)
    facts["asked"] = dump(server, out)
    await asyncio.sleep(6)
    facts["refused"] = dump(server, out)

    got = await asyncio.gather(*[read_all(r, w) for r, w in live], return_exceptions=True)
    facts["read"] = dump(server, out)
    await asyncio.sleep(2)
    facts["closed"] = dump(server, out)
    done = [g for g in got if isinstance(g, int)]
    facts["clients"] = {"live": len(live), "bytes": sum(done),
                        "bodies": round(sum(done) / SIZE, 1)}
    return facts


def report(label: str, facts: dict, clients: int) -> list[str]:
    mib = 1 << 20
    idle = facts["idle"]
    lines = [f"{label}: {facts['clients']['live']} clients live, "
             f"{facts['clients']['bodies']} bodies' worth read", "",
             "| stage | RSS MiB | KiB per client over idle | C heap in use MiB | C heap free "
             "MiB | Python traced MiB | HWM MiB |", "|---|---|---|---|---|---|---|"]
    for stage in STAGES:
        f = facts[stage]
        per = (f["rss"] - idle["rss"]) * 1024 / clients
        traced = f"{f['traced'] / mib:.1f}" if "traced" in f else "-"
        lines.append(f"| {stage} | {f['rss']:.1f} | {per:.1f} | "
                     f"{(f['in_use'] + f['mmapped']) / mib:.1f} | {f['free'] / mib:.1f} | "
                     f"{traced} | {f['hwm']:.1f} |")
    for stage in ("handshake", "asked", "refused"):
        f, before = facts[stage], facts["idle"]
        grown = sorted(((name, n - before["types"].get(name, 0))
                        for name, n in f["types"].items()), key=lambda kv: -kv[1])
        grown = [(name, n) for name, n in grown if n >= clients // 4]
        lines += ["", f"{stage}: live objects grown since idle: "
                  + ", ".join(f"{name} {n:+,}" for name, n in grown)]
        if "top" in f:
            lines += ["", "| site | KiB | count |", "|---|---|---|"]
            lines += [f"| {site} | {size / 1024:,.0f} | {count:,} |"
                      for site, size, count in f["top"][:12]]
    return lines


WATCHED = ("PluginRequest", "TLSMemoryBIOProtocol", "Sender", "DelayedCall", "Deferred")


def timeline(server: Server, clients: int, out: Path) -> list[str]:
    """The waiting case, with the server's RSS sampled every 0.1 s (and its heap and live
    objects every 0.5 s)."""
    cmd = ["taskset", "-c", "1", sys.executable, str(REPO / "bench" / "clients.py"),
           "--port", str(server.tls_port), "--path", MODULE, "--clients", str(clients),
           "--mode", "wait", "--wait", "3", "--tls"]
    began = time.monotonic()
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    samples: list[tuple[float, float]] = []
    facts: list[tuple[float, dict]] = []
    while process.poll() is None:
        samples.append((time.monotonic() - began, server.status("VmRSS")))
        if len(samples) % 5 == 0:
            facts.append((samples[-1][0], dump(server, out)))
        time.sleep(0.1)
    outcome = json.loads(process.stdout.read())
    peak_at, peak = max(samples, key=lambda s: s[1])
    lines = [f"timeline: connect phase {outcome['connect_seconds']} s, whole run "
             f"{outcome['seconds']} s, peak {peak:.1f} MiB at {peak_at:.1f} s, HWM "
             f"{server.status('VmHWM'):.1f} MiB, {outcome['bytes'] / SIZE:.0f} bodies' worth",
             "", "| s | RSS MiB | C heap in use / free MiB | "
             + " | ".join(WATCHED) + " |", "|---|---|---|" + "---|" * len(WATCHED)]
    step = max(1, len(facts) // 40)
    mib = 1 << 20
    for at, f in facts[::step]:
        lines.append(f"| {at:.1f} | {f['rss']:.1f} | {(f['in_use'] + f['mmapped']) / mib:.1f}"
                     f" / {f['free'] / mib:.1f} | "
                     + " | ".join(str(f["types"].get(name, 0)) for name in WATCHED) + " |")
    for at, f in facts:
        if "grew" in f and f["rss"] > facts[0][1]["rss"] + 20:
            lines += ["", f"grew in the 0.5 s to {at:.1f} s (tracemalloc, KiB):"]
            lines += [f"    {size / 1024:+,.0f} ({count:+,}) {site}" for site, size, count
                      in f["grew"][:8]]
    lines += ["", "Around the peak, every sample:", "", "| s | RSS MiB |", "|---|---|"]
    lines += [f"| {at:.2f} | {rss:.1f} |" for at, rss in samples if abs(at - peak_at) <= 1.5]
    return lines


def openssl(clients: int, tmp: Path) -> list[str]:
    """C heap kept per server connection (mallinfo2 in use), in this process."""
    import gc

    from OpenSSL import SSL

    from hps.memory import heap_info

    def in_use() -> int:
        info = heap_info()
        if info is None:
            raise SystemExit("--openssl needs glibc's mallinfo2")
        return info.uordblks + info.hblkhd

    key, cert = self_signed(tmp)

    def context(release: bool, tls12: bool = False) -> SSL.Context:
        made = SSL.Context(SSL.TLS_METHOD)
        made.use_privatekey_file(str(key))
        made.use_certificate_file(str(cert))
        if release:
            made.set_mode(SSL.MODE_RELEASE_BUFFERS)
        if tls12:
            made.set_max_proto_version(SSL.TLS1_2_VERSION)
        return made

    def bare(made: SSL.Context) -> SSL.Connection:
        return SSL.Connection(made, None)

    def answered(made: SSL.Context) -> SSL.Connection:
        """Handshake, a request read and a small answer written (a 503's size)."""
        server, client = pair(made, with_client=True)
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        server.bio_write(client.bio_read(1 << 16))
        server.recv(1 << 16)
        server.send(b"x" * 300)
        server.bio_read(1 << 16)
        return server

    def kept(make, made: SSL.Context) -> float:
        gc.collect()
        before = in_use()
        held = [make(made) for _ in range(clients)]
        gc.collect()
        grown = in_use() - before
        del held
        return grown / clients / 1024

    lines = ["| server connection | KiB of C heap kept each |", "|---|---|"]
    for release in (False, True):
        label = "release buffers" if release else "no release"
        made = context(release)
        lines += [f"| `SSL_new` and two memory BIOs ({label}) | {kept(bare, made):.1f} |",
                  f"| after the TLS 1.3 handshake ({label}) | {kept(pair, made):.1f} |",
                  f"| and a request read, an answer written ({label}) | "
                  f"{kept(answered, made):.1f} |"]
    tls12 = context(True, tls12=True)
    lines.append(f"| after a TLS 1.2 handshake (release buffers) | {kept(pair, tls12):.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--trace", action="store_true", help="tracemalloc in the server")
    parser.add_argument("--timeline", action="store_true", help="RSS over the waiting case")
    parser.add_argument("--baseline", type=Path, help="another checkout of hps to run too")
    parser.add_argument("--openssl", action="store_true",
                        help="no server: pyOpenSSL connections in this process")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="set in the servers' environment only (an experiment)")
    args = parser.parse_args()
    more_descriptors()
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="hps-tlsmemory-") as name:
        tmp = Path(name)
        if args.openssl:
            print("\n".join(openssl(args.clients, tmp)))
            return
        root = tmp / "tree" / "plugins"
        write_module(root, "p4mb", Maker().module(SIZE, SIZE), True)
        tls = self_signed(tmp)
        hook = tmp / "hook"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(HOOK)
        out = tmp / "dump.json"
        os.environ["HPS_BREAKDOWN_OUT"] = str(out)
        if args.trace:
            os.environ["HPS_BREAKDOWN_TRACE"] = "1"
        patient = ("--header-timeout", "300", "--send-timeout", "300", "--idle-timeout", "300")
        checkouts = [("hps", REPO)] + ([("baseline", args.baseline)] if args.baseline else [])
        for label, repo in checkouts:
            saved = dict(os.environ)
            os.environ.update(pair.split("=", 1) for pair in args.server_env)
            try:
                server = start_hps(label, Path(f"{repo}{os.pathsep}{hook}"), root, tmp, tls,
                                   patient)
            finally:
                os.environ.clear()
                os.environ.update(saved)
            try:
                if args.timeline:
                    lines += [f"### {label}", "", *timeline(server, args.clients, out), ""]
                else:
                    os.sched_setaffinity(0, {1})
                    facts = asyncio.run(staged(server, args.clients, out))
                    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
                    lines += [f"### {label}", "", *report(label, facts, args.clients), ""]
            finally:
                stop(server)
            print(f"{label} done", file=sys.stderr)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
