"""Headless Chromium, as an operator's browser sees our pages."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

# Without the background-networking flags Chromium dials out at start; this
# machine (and CI) has no network beyond the package registries.
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1200,900",
]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("chromium not found: apt-get install -y chromium (the README's test command)")


def run_browser(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, timeout=90, check=True)


def dump_dom(url: str) -> str:
    """The DOM after the browser parsed and laid out the page."""
    return run_browser("--dump-dom", url).stdout.decode()


def screenshot(url: str, target: Path) -> Path:
    run_browser(f"--screenshot={target}", url)
    return target
