"""Unit: the bounded table of recent misses (what clients asked for that was not here)."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.task import Clock

from hps.catalog import scan
from hps.misses import Misses
from tests.support.server import Tree


def test_counts_by_pair_newest_first_at_the_clock_time() -> None:
    clock = Clock()
    misses = Misses(clock)
    misses.record("a", "1.0.0")
    clock.advance(5)
    misses.record("b", "1.0.0")
    clock.advance(5)
    misses.record("a", "1.0.0")
    assert [(m.name, m.count, m.last) for m in misses.recent()] == [("a", 2, 10.0),
                                                                   ("b", 1, 5.0)]
    assert misses.generation == 3, "every record changes what a page would show"


def test_only_the_most_recent_pairs_are_kept() -> None:
    misses = Misses(Clock(), limit=3)
    for version in ("1", "2", "3", "1", "4"):
        misses.record("p", version)
    assert [m.version for m in misses.recent()] == ["4", "1", "3"]
    misses.record("p", "2")  # pushed out before: counts from one again
    assert misses.table[("p", "2")].count == 1


def test_missing_leaves_out_what_the_catalog_now_holds(tmp_path: Path) -> None:
    tree = Tree(tmp_path)
    misses = Misses(Clock())
    misses.record("a", "1.0.0")
    misses.record("b", "1.0.0")
    tree.add("a", "1.0.0")
    assert [m.name for m in misses.missing(scan(str(tmp_path)))] == ["b"]
