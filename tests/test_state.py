"""Unit: the server's few mutable facts: the catalog swap and why /readyz says 503."""

from __future__ import annotations

from pathlib import Path

from hps.catalog import Catalog, scan, unloaded
from hps.config import Config
from hps.state import ServerState
from tests.support.server import Tree


def test_swap_tells_every_listener_old_and_new(tmp_path: Path) -> None:
    state = ServerState(config=Config(root=str(tmp_path)), catalog=unloaded(str(tmp_path)))
    seen: list[tuple[Catalog, Catalog]] = []
    state.on_swap.append(lambda old, new: seen.append((old, new)))
    first = state.catalog
    fresh = scan(str(tmp_path))
    state.swap(fresh)
    assert seen == [(first, fresh)] and state.catalog is fresh


def test_unready_reasons_in_order(tmp_path: Path) -> None:
    """/readyz's reason: catalog not loaded, then no artifact, then ready, then draining."""
    state = ServerState(config=Config(root=str(tmp_path)), catalog=unloaded(str(tmp_path)))
    assert state.unready_reason() == "catalog not loaded yet"
    state.swap(scan(str(tmp_path)))
    assert state.unready_reason() == "catalog holds no artifact"
    Tree(tmp_path).add("a", "1.0.0")
    state.swap(scan(str(tmp_path)))
    assert state.unready_reason() is None
    state.draining = True
    assert state.unready_reason() == "draining"
