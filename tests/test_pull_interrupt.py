"""Ctrl-C, kill -9 and stale siblings: the tree and the lock still agree afterwards."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.registry import Registry, Workspace, wasm

ROOT = Path(__file__).resolve().parent.parent


class Tarpit:
    """A TCP listener on 127.0.0.1 that accepts and never answers: a pull hangs there."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.entered = threading.Event()
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            self.entered.set()

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture(name="tarpit")
def tarpit_fixture() -> Iterator[Tarpit]:
    pit = Tarpit()
    yield pit
    pit.close()


def test_ctrl_c_is_one_line_and_the_lock_describes_the_tree(
    registry: Registry, workspace: Workspace, tarpit: Tarpit
) -> None:
    names = ["m0", "m1", "m2", "m3"]
    for name in names:
        registry.push_wasm(f"int/{name}", "1.0.0", wasm(f"old {name}"))
    entries = {n: registry.ref(f"int/{n}", "1.0.0") for n in names}
    assert workspace.pull(entries).code == 0
    for name in names:
        registry.push_wasm(f"int/{name}", "1.0.0", wasm(f"new {name}"))
    # m0 and m1 are replaced, then the pull hangs on "slow"; m2 and m3 never start.
    ordered = {"m0": entries["m0"], "m1": entries["m1"]}
    ordered["slow"] = f"oci://{tarpit.host}/int/slow:1.0.0"
    ordered |= {"m2": entries["m2"], "m3": entries["m3"]}
    workspace.properties.write_text("".join(f"{n}={r}\n" for n, r in ordered.items()))
    argv = ["--properties", str(workspace.properties), "--output", str(workspace.out)]
    # The hung download would only end at --timeout: Ctrl-C must not wait for it.
    argv += ["--plain-http", "--jobs", "1", "--retries", "0", "--timeout", "300", "--replace"]
    process = subprocess.Popen(
        [sys.executable, "-m", "hps.cli", "pull", *argv],
        env={**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(workspace.root)},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert tarpit.entered.wait(30), "the pull never reached the hanging registry"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)  # not the 300 s the download could hang
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "interrupted" in err
    lock = workspace.locked()
    assert sorted(lock) == ["m0/1.0.0", "m1/1.0.0", "m2/1.0.0", "m3/1.0.0"]
    for name in names:
        tree = hashlib.sha256(workspace.module(name, "1.0.0")).hexdigest()
        assert lock[f"{name}/1.0.0"]["wasmSha256"] == tree, name
    assert workspace.module("m1", "1.0.0") == wasm("new m1")
    assert workspace.module("m2", "1.0.0") == wasm("old m2")
    assert workspace.leftovers() == []


def test_leftovers_of_a_killed_pull_are_removed_and_stale_gz_replaced(
    registry: Registry, workspace: Workspace
) -> None:
    registry.push_wasm("left/a", "1.0.0", wasm("left a"))
    version_dir = workspace.out / "a" / "1.0.0"
    version_dir.mkdir(parents=True)
    leftovers = [
        version_dir / ".plugin.wasm.x8k2_q.tmp",
        workspace.root / ".plugins.lock.json.ab.tmp",
    ]
    for path in leftovers:
        path.write_bytes(b"half a module")
    (version_dir / "plugin.wasm.gz").write_bytes(gzip.compress(b"someone else's bytes"))
    result = workspace.pull({"a": registry.ref("left/a", "1.0.0")})
    assert result.code == 0, result.err
    assert f"removed {leftovers[0]}, left by an interrupted pull" in result.err
    assert workspace.leftovers() == []
    assert gzip.decompress((version_dir / "plugin.wasm.gz").read_bytes()) == wasm("left a")
    assert json.loads(workspace.lock.read_text())["plugins"]["a/1.0.0"]["size"] == len(
        wasm("left a")
    )
