"""Where registry credentials come from: flags/env first, then ``~/.docker/config.json``."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("hps.pull")


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


def docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker"
    return Path(base) / "config.json"


def _host_of(key: str) -> str:
    """``https://host:5000/v1/`` and ``host:5000`` both name ``host:5000``."""
    return key.split("://", 1)[-1].split("/", 1)[0]


def from_docker_config(registry: str, path: Path | None = None) -> Credentials | None:
    """Plain ``auths`` entries only; credential helpers are the operator's docker's job."""
    path = path or docker_config_path()
    try:
        auths = json.loads(path.read_text(encoding="utf-8")).get("auths") or {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError) as exc:
        # A broken docker config must not stop anonymous pulls; say so and go on.
        log.warning("ignoring %s: %s", path, exc)
        return None
    hosts = {
        registry,
        "index.docker.io" if registry in ("docker.io", "registry-1.docker.io") else registry,
    }
    for key, item in auths.items():
        if _host_of(key) in hosts and isinstance(item, dict):
            found = _decode(item)
            if found:
                return found
    return None


def _decode(item: dict) -> Credentials | None:
    if item.get("username") and item.get("password"):
        return Credentials(item["username"], item["password"])
    try:
        user, sep, password = base64.b64decode(item.get("auth") or "").decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return Credentials(user, password) if sep else None


def from_environment() -> Credentials | None:
    user = os.environ.get("HPS_REGISTRY_USERNAME")
    password = os.environ.get("HPS_REGISTRY_PASSWORD")
    return Credentials(user, password) if user and password is not None else None
