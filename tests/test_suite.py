"""The suite's own shape: real processes are few and marked, the rest runs in memory,
every module has its test file, shared helpers live in tests/support, and the suite
sleeps only to poll a real process.

A test that starts ``twistd hps`` (or the image) is marked ``process`` (the ``serve``
fixture refuses unmarked tests), so ``python -m pytest -m "not process"`` is the
in-memory loop, and the count below keeps black-box tests the exception.
"""

from __future__ import annotations

import re

import pytest

from tests.support.server import REPO

TESTS = REPO / "tests"

MAX_PROCESS_TESTS = 14
"""Start-up and exit codes, SIGTERM, TLS + HTTP/2 with curl, the browser, inotify,
the image and its multi-arch release (built, pushed, run under
qemu), the black-box differentials (sendfile, pull-through), a real Prometheus
scraping a real server (the alerts' series, a changed module after SIGHUP), and hps check
against a real server through a whole move onto hps."""

STARTS_A_PROCESS = {"serve", "replayed_image"}

MAX_SLEEPS = 5
"""``sleep(`` calls in tests/: each polls a real process (in memory the clock moves)."""


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


def test_no_test_file_imports_another() -> None:
    """A helper two test files need lives in tests/support, so each test file reads alone."""
    importing = re.compile(r"^\s*(from\s+tests\.test_\w*\s+import|import\s+tests\.test_)"
                           r"|^\s*from\s+tests\s+import\s+test_", re.M)
    assert [str(path.relative_to(REPO)) for path in sorted(TESTS.rglob("*.py"))
            if importing.search(path.read_text())] == []


def test_the_suite_sleeps_only_to_poll_real_processes() -> None:
    """At most MAX_SLEEPS ``sleep(`` calls in tests/; in memory time moves with the clock."""
    sleeps = [f"{path.relative_to(REPO)}:{number}" for path in sorted(TESTS.rglob("*.py"))
              for number, line in enumerate(path.read_text().splitlines(), 1)
              if "sleep(" in line.split("#", 1)[0] and path.name != "test_suite.py"]
    assert len(sleeps) <= MAX_SLEEPS, "\n".join(sleeps)
