"""deploy/monitoring/'s alert rules as Prometheus reads them, and its tools (promtool,
prometheus) from Debian's ``prometheus`` package."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.server import REPO

PROMETHEUS_RULE = REPO / "deploy" / "monitoring" / "prometheusrule.yaml"
_METRIC = re.compile(r"\b(hps_[a-z0-9_]+|up)\b")


def tool(name: str) -> str:
    """``promtool`` or ``prometheus``; a test that needs one fails loudly without it."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is required (apt-get install prometheus)")
    return found


def rule_spec() -> dict[str, Any]:
    """The PrometheusRule's ``spec``: a Prometheus rules file as it stands."""
    return yaml.safe_load(PROMETHEUS_RULE.read_text(encoding="utf-8"))["spec"]


def alert_rules(spec: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The rules of ``spec`` (default: the PrometheusRule's)."""
    return [rule for group in (spec or rule_spec())["groups"] for rule in group["rules"]]


def write_rules(directory: Path) -> Path:
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump(rule_spec()), encoding="utf-8")
    return path


def metric_names() -> set[str]:
    """Every series name the alert expressions read."""
    return {name for rule in alert_rules() for name in _METRIC.findall(rule["expr"])}
