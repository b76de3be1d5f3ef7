"""Fixtures shared by every test module: a plugin tree, the server in memory,
a real server, a real registry.

They live in ``tests/support`` beside their helpers; registering them here lets a
test simply name them as arguments.
"""

from tests.support.memory import harness
from tests.support.registry import pauses_fixture, registry_fixture, workspace_fixture
from tests.support.server import serve, tree

__all__ = ["harness", "pauses_fixture", "registry_fixture", "serve", "tree", "workspace_fixture"]
