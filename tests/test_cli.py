"""Unit: the ``hps`` console script only dispatches to its subcommands."""

from __future__ import annotations

from hps import cli


def test_no_command_is_usage_and_exit_2(capsys) -> None:
    assert cli.main([]) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: hps COMMAND") and "pull" in out and "wasmplugin" in out


def test_help_is_usage_and_exit_0(capsys) -> None:
    assert cli.main(["--help"]) == 0
    assert "twistd hps --help" in capsys.readouterr().out


def test_an_unknown_command_is_one_line_then_usage(capsys) -> None:
    assert cli.main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hps: unknown command 'serve'\n")


def test_a_command_gets_the_rest_of_the_arguments(capsys) -> None:
    assert cli.main(["pull", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: hps pull ")
