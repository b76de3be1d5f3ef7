"""``hps pull``'s command line: the console script as a process, and bad input as one line
and exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.registry import (
    Registry,
    Workspace,
    wasm,
)

ROOT = Path(__file__).resolve().parent.parent


def test_console_script_runs_as_a_process(registry: Registry, workspace: Workspace) -> None:
    registry.push_wasm("proc/a", "1.0.0", wasm("proc"))
    workspace.properties.write_text(f"a={registry.ref('proc/a', '1.0.0')}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(workspace.root)}
    argv = ["--plain-http", "--properties", str(workspace.properties)]
    argv += ["--output", str(workspace.out)]
    done = subprocess.run(
        [sys.executable, "-m", "hps.cli", "pull", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "pulled a 1.0.0" in done.stderr
    assert workspace.module("a", "1.0.0") == wasm("proc")
    assert (workspace.root / "plugins.lock.json").exists()  # beside the properties


def test_bad_input_is_one_line_and_exit_2(workspace: Workspace) -> None:
    result = workspace.pull(None)
    assert (result.code, len(result.err.splitlines())) == (2, 1)
    assert "cannot read properties" in result.err
    workspace.properties.write_text("a=oci://127.0.0.1:1/a:1.0.0\n")
    cases = [
        (["--jobs", "0"], "--jobs must be between"),
        (["--frobnicate"], "unrecognized arguments"),
        (["--manifest", str(workspace.root / "absent.yaml")], "cannot read manifest"),
    ]
    for flags, expected in cases:
        result = workspace.pull(None, None, *flags)
        assert result.code == 2, flags
        assert expected in result.err
        assert len(result.err.splitlines()) == 1, result.err
    result = workspace.pull(None, "plugins: [")
    assert (result.code, len(result.err.splitlines())) == (2, 1)
    assert "malformed YAML" in result.err
