"""The suite's own shape: real processes are few and marked, the rest runs in memory,
and every module has its test file.

A test that starts ``twistd hps`` (or the image) is marked ``process`` (the ``serve``
fixture refuses unmarked tests), so ``python -m pytest -m "not process"`` is the
in-memory loop, and the count below keeps black-box tests the exception.
"""

from __future__ import annotations

import pytest

from tests.support.server import REPO

MAX_PROCESS_TESTS = 13
"""Start-up and exit codes, SIGTERM, TLS + HTTP/2 with curl, the browser, inotify,
the image (and its multi-arch release), and the black-box differentials (sendfile,
pull-through)."""

STARTS_A_PROCESS = {"serve", "replayed_image"}


def process_tests(items: list[pytest.Item]) -> list[pytest.Item]:
    return [item for item in items if item.get_closest_marker("process")]


def test_real_processes_are_marked_and_few(request: pytest.FixtureRequest) -> None:
    items = request.session.items
    unmarked = [item.nodeid for item in items
                if STARTS_A_PROCESS & set(getattr(item, "fixturenames", ()))
                and not item.get_closest_marker("process")]
    assert unmarked == []
    marked = [item.nodeid for item in process_tests(items)]
    assert len(marked) <= MAX_PROCESS_TESTS, "\n".join(marked)


def test_every_module_has_its_own_test_file() -> None:
    """Tests mirror modules: ``hps/x.py`` → ``tests/test_x.py``, ``hps/pull/x.py`` →
    ``tests/test_pull_x.py``."""
    package = REPO / "hps"
    modules = [path for path in package.rglob("*.py") if path.name != "__init__.py"]
    wanted = {path: "test_" + "_".join(path.relative_to(package).with_suffix("").parts) + ".py"
              for path in modules}
    assert len(wanted) > 30
    assert [str(path) for path, test in wanted.items()
            if not (REPO / "tests" / test).is_file()] == []
