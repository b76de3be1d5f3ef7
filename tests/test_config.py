"""Unit: settings from defaults, a YAML file and flags, merged, typed and checked; every
problem is one line for the operator (``twistd hps`` exits 2 with it, see test_server)."""

from __future__ import annotations

import dataclasses

import pytest

from hps.config import FIELDS, Config, ConfigError, Options, build, nested
from tests.support.server import Tree


def options(*args: str) -> Options:
    parsed = Options()
    parsed.parseOptions(list(args))
    return parsed


def test_config_file_and_flags(tree: Tree, tmp_path, harness) -> None:
    """Flags win over the file, which wins over the defaults."""
    config = tmp_path / "hps.yaml"
    config.write_text(f"root: {tmp_path}/nowhere\nlisten: ['tcp:1']\nsend_timeout: 7\n")
    parsed = options("--config", str(config), "--root", str(tree.root)).config
    assert (parsed.root, parsed.listen, parsed.send_timeout) == (str(tree.root), ("tcp:1",), 7.0)
    tree.add("basic-auth", "1.0.0")
    server = harness(tree.root, send_timeout=parsed.send_timeout)
    assert server.get("/plugins/basic-auth/1.0.0/plugin.wasm").status == 200


PULL_THROUGH = "upstream: ['oci://r.example/p/${{name}}:${{version}}']\nupstream_allow: ['*']\n"
CONFIG_ERRORS = [
    ("colour: blue\n", [], "unknown key 'colour'"),
    ("memory_budget: 64m\n", [], "hps.yaml was removed: modules are sent from disk now"),
    ("root: [1, 2]\n", [], "'root' must be a non-empty string"),
    ("listen: 8080\n", [], "'listen' must be a list"),
    ("root: {tmp}/missing\n", [], "is not a directory"),
    ("[unclosed\n", [], "is not valid YAML"),
    (PULL_THROUGH + "cache_dir: {tmp}\n", [], "and root"),  # the cache tree is the root
    (PULL_THROUGH + "root: {tmp}\ncache_dir: {tmp}/c\n", [], "must not nest"),
]
@pytest.mark.parametrize(("yaml_text", "flags", "message"), CONFIG_ERRORS)
def test_bad_config_is_one_line(tree: Tree, tmp_path, capfd, yaml_text, flags,
                                message) -> None:
    """twistd parses the same Options; its exit status is checked with a real process below."""
    config = tmp_path / "hps.yaml"
    config.write_text(yaml_text.format(tmp=tmp_path))
    args = ["--config", str(config)]
    if "root" not in yaml_text:
        args += ["--root", str(tree.root)]
    with pytest.raises(SystemExit) as ended:
        options(*args, *flags)
    assert ended.value.code == 2
    err = capfd.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(("flags", "message"), [
    ({"send_timeout": "0"}, "send-timeout: must be more than zero"),
    ({"drain_delay": "-1"}, "drain-delay: must be zero or more"),
    ({"send_timeout": "soon"}, "--send-timeout must be a number, not 'soon'"),
    ({"access_log": "xml"}, "access-log: must be one of combined, json, off"),
    ({"upstream_allow": ["ai-*"]}, "upstream-allow: needs at least one --upstream template"),
    ({"upstream": ["oci://r.example/p/${name}"], "upstream_allow": ["*"]},
     "has no ${version}"),
    ({"upstream": ["oci://r.example/${name}:${version}"], "upstream_allow": ["*"],
      "upstream_wait": "40"}, "upstream-wait: must be less than send-timeout"),
    ({"listen": [""]}, "--listen must be a list of non-empty strings"),
    ({"immutable": "perhaps"}, "--immutable must be true or false, not 'perhaps'"),
])
def test_each_bad_value_is_named(tree: Tree, flags: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as raised:
        build(None, {"root": str(tree.root), **flags})
    assert message in str(raised.value)


@pytest.mark.parametrize(("yaml_text", "message"), [
    ("send_timeout: '5'\n", "'send_timeout' must be a number"),
    ("max_connections: 2.5\n", "'max_connections' must be a whole number"),
    ("gzip: 'yes'\n", "'gzip' must be true or false"),
    ("- a list\n", "must be a mapping of settings"),
    ("root: ''\n", "'root' must be a non-empty string"),
])
def test_yaml_values_are_not_guessed(tmp_path, yaml_text: str, message: str) -> None:
    path = tmp_path / "hps.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as raised:
        build(str(path), {"root": str(tmp_path)})
    assert message in str(raised.value)


def test_an_empty_file_is_the_defaults(tree: Tree, tmp_path) -> None:
    path = tmp_path / "hps.yaml"
    path.write_text("")
    assert build(str(path), {"root": str(tree.root)}) == Config(root=str(tree.root))


def test_flags_are_derived_from_the_table(tree: Tree) -> None:
    parsed = options("--root", str(tree.root), "--no-gzip", "--immutable", "--listen", "tcp:1",
                     "--listen", "tcp:2").config
    assert (parsed.gzip, parsed.immutable) == (False, True)
    assert parsed.listen == ("tcp:1", "tcp:2")
    usage = str(Options())
    for key, spec in FIELDS.items():
        flag = key.replace("_", "-")
        assert (f"--no-{flag}" if spec.default is True else f"--{flag}") in usage, key


def test_describe_names_every_knob() -> None:
    text = Config().describe()
    assert all(f"{f.name}=" in text for f in dataclasses.fields(Config))


def test_trees_nest_when_equal_or_either_holds_the_other(tmp_path) -> None:
    """nested() holds for the same directory, a parent and a child (through symlinks too), never
    for a mere name prefix."""
    (tmp_path / "plugins2").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "plugins2")
    for one, other in (("plugins", "plugins"), ("plugins", "plugins/a/b"), ("plugins/a", ""),
                       ("link", "plugins2/x")):
        assert nested(str(tmp_path / one), str(tmp_path / other))
        assert nested(str(tmp_path / other), str(tmp_path / one))
    assert not nested(str(tmp_path / "plugins"), str(tmp_path / "plugins2"))  # a prefix only
    assert not nested(str(tmp_path / "a" / "plugins"), str(tmp_path / "b"))
