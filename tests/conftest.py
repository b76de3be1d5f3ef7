"""Fixtures shared by every test module: a plugin tree, the server in memory,
a real server, a real registry, a TLS connection pair.

They live in ``tests/support`` beside their helpers; registering them here lets a
test simply name them as arguments.
"""

import gc

import pytest

from tests.support.memory import harness
from tests.support.registry import pauses_fixture, registry_fixture, workspace_fixture
from tests.support.server import serve, tree
from tests.support.tlspair import tls_options, tls_pairs

__all__ = ["harness", "pauses_fixture", "registry_fixture", "serve", "tls_options", "tls_pairs",
           "tree", "workspace_fixture"]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Every test module is imported now: move what exists to the collector's permanent
    generation, so the ``gc.collect()`` each in-memory server's teardown runs (to let go
    of the files its connections hold) walks only what the tests make, not every module
    loaded (~0.1 s a test before)."""
    gc.collect()
    gc.freeze()
