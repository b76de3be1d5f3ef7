"""Unit: which failures of ``hps pull`` are per entry (exit 1) and which are bad input (2)."""

from __future__ import annotations

import pytest

from hps.pull import errors


@pytest.mark.parametrize("kind", [errors.NotFound, errors.DigestMismatch, errors.NotWasm,
                                  errors.AuthNeeded, errors.Unreachable, errors.Drift])
def test_entry_failures_are_pull_errors(kind: type[Exception]) -> None:
    assert issubclass(kind, errors.PullError)
    assert not issubclass(kind, errors.InputError)


def test_bad_input_is_its_own_kind() -> None:
    assert not issubclass(errors.InputError, errors.PullError)
