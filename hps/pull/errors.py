"""The errors ``hps pull`` reports: one line each, never a traceback."""

from __future__ import annotations


class InputError(Exception):
    """Bad input from the operator (flags, properties, manifest, lock): exit 2."""


class PullError(Exception):
    """One entry could not be pulled; the message says why in one line."""


class NotFound(PullError):
    pass


class DigestMismatch(PullError):
    pass


class NotWasm(PullError):
    pass


class AuthNeeded(PullError):
    pass


class Unreachable(PullError):
    pass


class Changed(PullError):
    """The tree already serves other bytes at this version (``hps pull`` without --replace)."""

    def __init__(self, served: str, new: str) -> None:
        super().__init__(f"the tree serves sha256 {served} here, the registry has {new}; "
                         "not replaced: gateways that cached the URL would keep the old bytes "
                         "(use a new version, or --replace)")


class Drift(PullError):
    """``--locked``: what the inputs or the registry say differs from the lock."""
