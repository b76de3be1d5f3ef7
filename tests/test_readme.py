"""The README tells the truth: its commands are CI's, its config table is the code's."""

from __future__ import annotations

import dataclasses
import re

from hps.config import Config, flag_name
from tests.support.server import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def code_blocks() -> list[str]:
    return [b.strip() for b in re.findall(r"```sh\n(.*?)```", README, re.S)]


def test_readme_begins_with_the_two_commands() -> None:
    start, test = code_blocks()[:2]
    assert start == "pip install . && twistd -n hps"
    assert "pip install '.[test]'" in test and test.endswith("python -m pytest")
    assert README.index(start) < README.index(test) < README.index("## ")


def test_ci_runs_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert code_blocks()[1] in ci.splitlines()


def shown_default(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(value) + "]"
    return str(value)


def test_config_table_matches_the_code() -> None:
    table = README.split("<!-- config-table")[1].split("<!-- /config-table")[0]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip().strip("`") for c in line.strip("|").split("|")]
        if len(cells) == 4 and cells[0] not in ("key", "---"):
            rows[cells[0]] = cells
    fields = {f.name: f for f in dataclasses.fields(Config)}
    assert set(rows) == set(fields)
    for name, spec in fields.items():
        _, flag, default, _ = rows[name]
        assert flag.split("`")[0].strip() in (f"--{flag_name(name)}", f"--no-{flag_name(name)}")
        assert default == shown_default(spec.default), name


def test_linked_docs_exist() -> None:
    for target in re.findall(r"\]\(([^)#:]+)\)", README):
        assert (REPO / target).exists(), target
